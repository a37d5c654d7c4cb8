"""Audit of the latest concurrency changes (6f16a38): bounded sends to child processes, and raw
prompts cut before masking (``tap._kept``).

Real components: real child processes (``python -m`` a tiny module written under ``tmp_path``
that serves calls with ``childproc.Replies``/``incoming`` as the real children do, and the real
``StoreProcess`` with its DuckDB store), a child frozen with SIGSTOP (a hung process: a stalled
disk, a deadlock, a debugger), and the gateway on 127.0.0.1 in front of a scripted engine with the
store read back through ``GET /api/v1/requests/{trace}``.

The commit says "sends to a child that stopped reading are bounded (scrapes, breaker calls, the
stop's goodbye; a call that cannot be sent kills the child)". ``submit`` bounds only the wait for
the send *lock*; the send itself (``conn.send`` once the socket's buffer is full) still waits for
ever, holding the lock. And the lock is now taken and released by hand, on two paths only.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.childproc import ChildProcess
from infersight.config import Settings
from infersight.evaluation.owner import SCRAPE_TIMEOUT_S, ProcessLag, ProcessMetrics
from infersight.evaluation.screen import screen
from infersight.store.remote import RemoteStore, StoreProcess
from tests.integration.test_audit_pii_privacy import kept_content
from tests.scripted_engine import ScriptedEngine, embedded_gateway, engine  # noqa: F401 (engine: the fixture)

CHILD = '''
import sys, time
from multiprocessing.connection import Connection
from infersight.childproc import Replies, incoming


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    conn.recv()
    replies = Replies(conn)
    replies.send(0, True, {"ready": True})
    for call_id, op, payload in incoming(conn):
        if op == "metrics":
            replies.send(call_id, True, [])
        else:
            replies.send(call_id, True, payload)


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ChildProcess]]:
    """A real ChildProcess serving ``echo`` and ``metrics``; every one made is stopped afterwards."""
    (tmp_path / "audit_tiny_child.py").write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    made: list[ChildProcess] = []

    def make(**kwargs: Any) -> ChildProcess:
        process = ChildProcess("audit_tiny_child", None, **kwargs)
        process.start()
        made.append(process)
        return process

    yield make
    for process in made:
        pid = process.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)  # a frozen child: no goodbye to wait for
            except ProcessLookupError:
                pass
        process.stop(2)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def fill_send_buffer(process: ChildProcess) -> None:
    """Submit small calls to a frozen child until its socket's send buffer is full, each of them
    sent whole (the kernel takes a send while less than SO_SNDBUF is queued): the send lock is free,
    and the next send of any size blocks. This is what asynchronous hand-offs to a frozen eval
    process leave behind between two batches."""
    conn = process._conn  # noqa: SLF001 - the socket's fill level is read from its descriptor
    assert conn is not None
    fd = conn.fileno()
    probe = socket.socket(fileno=os.dup(fd))
    try:
        sndbuf = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        probe.close()

    def queued() -> int:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])

    while queued() < sndbuf:
        process.submit("echo", b"x" * 100)


# ---- childproc.ChildProcess.submit / call ----------------------------------------------------------

def test_a_payload_that_cannot_be_pickled_does_not_wedge_the_child(child: Callable[..., ChildProcess]) -> None:
    """``submit`` now acquires the send lock by hand and releases it only after a send that
    succeeded or raised ``OSError``/``ValueError``. Pickling fails with ``TypeError`` (a lock, a
    socket, a generator in the payload), ``pickle.PicklingError``, ``AttributeError`` (a local
    object) or ``RecursionError`` (a deeply nested value): the lock is never released. Every later
    call then waits ``call_timeout_s`` for it, is counted as a child that "did not answer", and
    kills a healthy child (a store process, with its folds; an eval process, with its bus). Before
    the change ``with self._send_lock`` released it on every path."""
    process = child(call_timeout_s=2.0, restart_interval_s=0.1)
    assert process.call("echo", "hello") == "hello"
    with pytest.raises(TypeError):
        process.call("echo", {"oops": threading.Lock()})  # the caller's bug: its own call fails
    pid = process.pid
    started = time.monotonic()
    assert process.call("echo", "still here") == "still here"  # raises ChildGone on the current code
    assert time.monotonic() - started < 1.0
    assert process.pid == pid and process.starts == 1  # the healthy child was not killed


def test_a_call_whose_own_send_blocks_on_a_frozen_child_is_bounded(settings: Settings) -> None:
    """Spec: childproc.call, "A call past ``call_timeout_s`` kills the child", and the commit: "a
    call that cannot be sent kills the child". A store process frozen (SIGSTOP) while the bus
    writer sends it a batch larger than the socket's buffer (a few hundred ``request_content`` rows
    of 2,000 characters): ``conn.send`` blocks in ``submit``, before the timed ``future.result``,
    and nothing bounds it. With no second caller to hit ``SendBlocked`` and kill the child, the
    writer is stuck for good: no batch is written, retried or journaled again, and the store child
    is never replaced."""
    process = StoreProcess(settings, call_timeout_s=2.0, restart_interval_s=0.2)
    store = RemoteStore(settings, process)
    try:
        assert store.schema_version() > 0
        os.kill(process.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        rows = [{"trace_id": f"t{i:05d}", "span_id": "s", "tenant_id": "acme", "prompt_text": f"{i:05d}" + "p" * 1995,
                 "completion_text": f"{i:05d}" + "c" * 1995} for i in range(500)]  # distinct: ~2 MB pickled
        thread, out = in_thread(lambda: store.write_rows("request_content", rows))
        thread.join(process.call_timeout_s + 8.0)
        assert not thread.is_alive(), "write_rows to a frozen store process never returned"
        assert out and process.starts == 2, (out, process.starts)  # the frozen child was replaced
    finally:
        if process.pid is not None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.stop(2)


def test_a_metrics_scrape_is_bounded_when_its_own_send_blocks(child: Callable[..., ChildProcess]) -> None:
    """Spec: docs/evaluation.md ("The eval process") and ``ProcessMetrics``: "A child that is down
    or slow leaves them out of that scrape rather than holding it"; the commit: "sends to a child
    that stopped reading are bounded (scrapes, ...)". ``collect`` passes ``SCRAPE_TIMEOUT_S`` as the
    send timeout, which bounds only the wait for the send lock. When the frozen child's socket
    buffer is full and no other sender holds the lock (hand-offs are sent asynchronously: the last
    one that fit returned), the scrape's own ``conn.send`` blocks with no bound: ``/metrics``
    hangs (one default-executor thread for good) and the scrape holds the lock meanwhile."""
    process = child(call_timeout_s=2.0)
    assert process.call("metrics", None) == []
    os.kill(process.pid, signal.SIGSTOP)  # type: ignore[arg-type]
    fill_send_buffer(process)
    thread, out = in_thread(lambda: list(ProcessMetrics(process).collect()))  # type: ignore[arg-type]
    thread.join(SCRAPE_TIMEOUT_S + 3.0)
    assert not thread.is_alive(), f"the scrape did not return within {SCRAPE_TIMEOUT_S + 3:.0f} s"
    assert out == [("ok", [])]


def test_the_breakers_lag_call_is_bounded_when_its_own_send_blocks(child: Callable[..., ChildProcess]) -> None:
    """Spec: docs/evaluation.md, "Hangs": "A call the breaker makes (``lag``, ``spend``) that cannot
    even be sent within the call timeout kills the child, which the next call replaces". With the
    frozen child's buffer full and the send lock free, ``ProcessLag.oldest_age_s`` (``call(LAG)``)
    blocks in its own ``conn.send`` with no bound: the breaker's thread is stuck, the child is never
    killed nor replaced, and sampling is never lowered however large the lag grows."""
    process = child(call_timeout_s=2.0)
    os.kill(process.pid, signal.SIGSTOP)  # type: ignore[arg-type]
    fill_send_buffer(process)
    thread, out = in_thread(lambda: ProcessLag(process).oldest_age_s(time.monotonic()))  # type: ignore[arg-type]
    thread.join(process.call_timeout_s + 6.0)
    assert not thread.is_alive(), "the breaker's lag call to a frozen child never returned"
    assert out and process.starts == 2, (out, process.starts)  # the frozen child was replaced


# ---- a raw prompt is masked whole: it was cut before masking for a while (tap._kept, now gone) ----------

TENANTS = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"}]
KEEPS_ALL = {"authorization": "Bearer sk-acme-test"}
# a mailing list to deduplicate: each 65-character line masks to 8 characters ("[EMAIL]\n"), so the
# whole prompt masks to about 1,100 characters, well within the 2,000 kept
LINE = "alexandra.konstantinopoulou.personal@mail.examplecorporation.com\n"
VICTIM_LOCAL = "maria.fernanda.oliveira.santos"
VICTIM = f"{VICTIM_LOCAL}@privatebank-clients.example.com"
QUESTION = "\nRemove the duplicates from this mailing list and say how many addresses remain."


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("child_sends") / "data") as url:
        yield url


def _mailing_list_prompt() -> str:
    """126 addresses, then one more whose local part and domain straddle character 8,256 of the
    gateway's prompt text ("user\\n" + content): where ``_kept`` cuts a raw prompt (4 x 2,000 + 256)."""
    cut = 4 * 2000 + 256
    starts_at = cut - len(f"{VICTIM_LOCAL}@priv")  # the cut falls inside the domain
    lines = LINE * ((starts_at - len("user\n")) // len(LINE))
    pad = starts_at - len("user\n") - len(lines)
    content = lines + " " * (pad - 1) + "\n" + VICTIM + QUESTION
    assert ("user\n" + content)[starts_at:cut] == f"{VICTIM_LOCAL}@priv"
    return content


def _send(base: str, content: str) -> str:
    body = {"model": "sim-large", "messages": [{"role": "user", "content": content}]}
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, headers=KEEPS_ALL, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-trace-id"]


def test_a_prompt_that_masking_shrinks_keeps_its_question(gateway: str) -> None:
    """Spec: issue 4, "content truncated to 2,000 characters by default", and pii.mask: it "reads
    further only while placeholders shorten the text" so that the output can be full. ``_kept``
    now cuts the raw prompt at 4 x 2,000 + 256 characters before masking, assuming placeholders
    shrink text at most fourfold; a list of e-mail addresses (or card numbers, IBANs) shrinks
    eightfold. This prompt masks to ~1,100 characters, so the store must keep it whole, with the
    user's instruction at the end (what the judge's question section and the debug view show).
    Instead the stored prompt silently ends at the cut: the question is gone, with no ellipsis
    and ``content_truncated`` false (masking saw a "complete" text)."""
    content = _mailing_list_prompt()
    trace = _send(gateway, content)
    row = kept_content(gateway, trace)
    kept = row["prompt_text"] or ""
    assert len(kept) < 2000, len(kept)  # masked, it fits: nothing had to be cut
    assert QUESTION.strip() in kept, kept[-200:]


def test_a_prompt_cut_before_masking_keeps_no_half_address_in_the_clear(gateway: str) -> None:
    """Spec: issue 4, "PII masking before content leaves the gateway's trust boundary, i.e.
    before it reaches the store", and pii.mask: "Masking comes first so that a number cut in half
    by the truncation is never leaked." ``_kept`` cuts the raw prompt first, in the middle of an
    address; masking then reads the stub ``maria.fernanda.oliveira.santos@priv`` (no domain: not
    an e-mail) as a complete text and stores it in the clear, naming the customer, although the
    gateway's own screen flags the prompt for ``pii_prompt:EMAIL``."""
    content = _mailing_list_prompt()
    assert "pii_prompt:EMAIL" in screen("user\n" + content, None)
    trace = _send(gateway, content)
    kept = kept_content(gateway, trace)["prompt_text"] or ""
    assert VICTIM_LOCAL not in kept, kept[-200:]
