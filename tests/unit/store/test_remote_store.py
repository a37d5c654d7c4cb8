"""The gateway's store process (``store/remote.py``): failures keep their meaning across the pipe,
a killed child is replaced without losing what it committed, and a start that cannot open the
file says why. The whole contract suite also runs through it (tests/contract, ``duckdb-process``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from infersight.config import Settings, settings_from_dict
from infersight.store.base import RequestFilter, StoreError, StoreUnavailable
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.remote import RemoteStore, StoreProcessError
from tests.contract.test_store import T0, rec


def settings(tmp_path: Path) -> Settings:
    return settings_from_dict({
        "storage": {"path": str(tmp_path)}, "logging": {"level": "warning"},
        "backends": [{"name": "none", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
        "tenants": [{"id": "t", "api_keys": ["sk-t"]}],
    })


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteStore]:
    store = RemoteStore(settings(tmp_path))
    try:
        yield store
    finally:
        store.close()


def test_errors_raised_in_the_child_arrive_as_the_same_type(remote: RemoteStore) -> None:
    with pytest.raises(StoreError, match="write_rows takes one of"):
        remote.write_rows("requests", [{"trace_id": "x"}])
    with pytest.raises(StoreError, match="does not serve 'close'"):
        remote.process.call("close", ((), {}))  # only the Store protocol's calls are served
    assert remote.process.alive()  # a failed call fails itself, not the process


def test_a_killed_child_is_replaced_and_what_it_committed_stays(remote: RemoteStore) -> None:
    assert remote.write_requests([rec(i, T0) for i in range(5)]) == 5
    pid = remote.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # The next call waits out the restart pacing, starts a new child and goes through.
    assert remote.write_requests([rec(i, T0) for i in range(3, 8)]) == 3  # 3 and 4 were stored already
    assert remote.process.pid != pid and remote.process.starts == 2
    assert remote.count_requests(RequestFilter()) == 8
    assert remote.health() == {"up": True, "pid": remote.process.pid, "starts": 2}


def test_a_child_that_cannot_open_the_file_fails_the_start_with_the_reason(tmp_path: Path) -> None:
    holder = DuckDBStore(str(tmp_path / "infersight.duckdb"))  # this process holds DuckDB's file lock
    try:
        with pytest.raises(StoreProcessError, match="failed to start: .*lock") as caught:
            RemoteStore(settings(tmp_path))
        assert isinstance(caught.value, StoreUnavailable)  # `infersight serve` prints it and exits 3
    finally:
        holder.close()


def test_calls_after_close_fail_as_unavailable(tmp_path: Path) -> None:
    store = RemoteStore(settings(tmp_path))
    store.close()
    with pytest.raises(StoreUnavailable):
        store.count_requests(RequestFilter())


def test_the_child_runs_below_the_gateway_priority(remote: RemoteStore) -> None:
    """``store.child_nice`` (10): on a busy host the relay gets the CPU before a store write."""
    pid = remote.process.pid
    assert pid is not None
    assert os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0) == 10


def test_store_threads_sets_duckdbs_worker_threads(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "t.duckdb"), threads=1)
    try:
        assert store._read.execute("SELECT current_setting('threads')").fetchone() == (1,)
    finally:
        store.close()


def test_a_stopped_child_with_a_socket_client_exits_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Was: the demo's last screen ended in 20 lines of "nanobind: leaked 29 instances!" from the store
    process: DuckDB's bindings report at interpreter teardown every object still alive, and the
    daemon threads serving a socket client (the eval process) still held the store."""
    owner = RemoteStore(settings(tmp_path), listen=True)
    address = owner.process.address  # type: ignore[attr-defined]
    assert address is not None
    client = RemoteStore.connect(settings(tmp_path), address)
    assert client.write_requests([rec(i, T0) for i in range(4)]) == 4
    child = owner.process._process  # type: ignore[attr-defined]
    owner.close()  # waits for the child; the client is still connected, as the eval process may be
    assert child is not None and child.returncode == 0
    client.close()
    assert "nanobind" not in capfd.readouterr().err
    reopened = DuckDBStore(str(tmp_path / "infersight.duckdb"))
    try:
        assert reopened.count_requests(RequestFilter()) == 4  # everything written was kept
    finally:
        reopened.close()
