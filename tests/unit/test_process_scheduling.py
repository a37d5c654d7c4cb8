"""Process-level scheduling: workers lower their CPU priority (`bus.consumer_nice`) and gateways
shorten the GIL switch interval (`server.switch_interval_ms`)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = "import os; from infersight.scheduling import lower_priority; b = os.nice(0); lower_priority({n}); print(b, os.nice(0))"


def _nice_before_and_after(increment: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(n=increment)], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    return before, after


def test_the_worker_raises_its_nice_value_by_the_configured_increment() -> None:
    before, after = _nice_before_and_after(7)
    assert after == min(before + 7, 19)


def test_zero_leaves_the_priority_alone() -> None:
    before, after = _nice_before_and_after(0)
    assert after == before



def test_a_gateway_process_takes_the_configured_gil_switch_interval() -> None:
    from infersight.config import Settings
    from infersight.runtime import prefer_the_event_loop

    settings = Settings.model_validate({
        "backends": [{"name": "b", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
        "tenants": [{"id": "t", "api_keys": ["k"]}],
        "server": {"switch_interval_ms": 0.5},
    })
    before = sys.getswitchinterval()
    try:
        prefer_the_event_loop(settings)
        assert sys.getswitchinterval() == 0.0005
    finally:
        sys.setswitchinterval(before)


# --- child_cpus: the gateway's children on cores of their own -----------------------------------


def _thread_cpus(pid: int) -> set[str]:
    """Cpus_allowed_list of every thread of ``pid``."""
    from pathlib import Path

    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split(":", 1)[1].strip())
    return lists


def _gateway_settings(tmp_path: object, **sections: object) -> object:
    from infersight.config import settings_from_dict

    return settings_from_dict({
        "storage": {"path": str(tmp_path)}, "logging": {"level": "warning"},
        "backends": [{"name": "b", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
        "tenants": [{"id": "t", "api_keys": ["k"]}], **sections,
    })


def test_the_eval_process_runs_every_thread_on_its_child_cpus() -> None:
    from infersight.evaluation.offload import EvalProcess, RemoteMask
    from infersight.evaluation.offload_child import MASK
    from infersight.evaluation.settings import EvaluationSettings

    proc = EvalProcess(EvaluationSettings(child_cpus=[0]), {MASK})
    proc.start()
    try:
        assert RemoteMask(proc)("a@b.com", 100)[0] == "[EMAIL]"
        assert proc.pid is not None
        assert _thread_cpus(proc.pid) == {"0"}
    finally:
        proc.stop()


def test_the_store_process_runs_every_thread_on_its_child_cpus(tmp_path: object) -> None:
    from infersight.store.remote import RemoteStore

    store = RemoteStore(_gateway_settings(tmp_path, store={"child_cpus": [0]}))  # type: ignore[arg-type]
    try:
        assert store.process.pid is not None
        assert _thread_cpus(store.process.pid) == {"0"}  # DuckDB's threads too
    finally:
        store.close()


def test_cpus_the_host_does_not_have_fail_the_start_naming_the_key(tmp_path: object) -> None:
    """An operator who asked for placement must not get a silently unplaced process."""
    import pytest

    from infersight.evaluation.offload import EvalProcess, EvalProcessError
    from infersight.evaluation.offload_child import MASK
    from infersight.evaluation.settings import EvaluationSettings
    from infersight.store.remote import RemoteStore, StoreProcessError

    with pytest.raises(EvalProcessError, match=r"evaluation.child_cpus \[65535\]"):
        EvalProcess(EvaluationSettings(child_cpus=[65535]), {MASK}).start()
    with pytest.raises(StoreProcessError, match=r"store.child_cpus \[0, 65535\]: CPUs \[65535\] are not available"):
        RemoteStore(_gateway_settings(tmp_path, store={"child_cpus": [0, 65535]}))  # type: ignore[arg-type]


def test_child_cpus_must_name_cpus(tmp_path: object) -> None:
    import pytest

    from infersight.config import ConfigError

    for bad, key in (([], "store.child_cpus"), ([-1], "store.child_cpus.0"), ("0-3", "store.child_cpus")):
        with pytest.raises(ConfigError) as caught:
            _gateway_settings(tmp_path, store={"child_cpus": bad})
        assert caught.value.key == key
    with pytest.raises(ConfigError) as caught:
        _gateway_settings(tmp_path, evaluation={"child_cpus": [True]})
    assert caught.value.key == "evaluation.child_cpus.0"


def test_cpu_lists_are_read_as_the_kernel_writes_them() -> None:
    from infersight.scheduling import parse_cpu_list

    assert parse_cpu_list("0-3,6\n") == {0, 1, 2, 3, 6}
    assert parse_cpu_list("5") == {5}
    assert parse_cpu_list("\n") == set()


_PLACED_PROBE = ("import os; os.sched_setaffinity(0, {{{here}}}); "
                 "from infersight.scheduling import pin_to_cpus, unavailable_cpus; "
                 "print(unavailable_cpus([{there}]), unavailable_cpus([{absent}])); "
                 "pin_to_cpus([{there}], 'evaluation.child_cpus'); print(sorted(os.sched_getaffinity(0)))")


def test_a_gateway_placed_on_one_cpu_may_still_put_its_children_on_another() -> None:
    """``child_cpus`` is for a gateway placed with ``taskset``: its children go to the other cores.
    Was: the check read the gateway's own affinity, so ``taskset -c 0 infersight serve`` with
    ``child_cpus: [1]`` was refused as "not available on this host"."""
    import os

    import pytest

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs a host with two CPUs to place the gateway on one and its child on another")
    here, there, absent = cpus[0], cpus[1], (os.cpu_count() or 1) + 60
    out = subprocess.run([sys.executable, "-c", _PLACED_PROBE.format(here=here, there=there, absent=absent)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [f"[] [{absent}]", f"[{there}]"]
