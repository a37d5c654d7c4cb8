"""``evaluation.flush_interval_s``: how often the embedded eval bus hands tasks to the sink, apart
from the request records' ``bus.flush_interval_s`` (each hand-off wakes the gateway's threads)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from infersight.config import settings_from_dict
from infersight.model import EvalTask
from infersight.runtime_eval import build_eval_bus
from tests.conftest import CaptureExporter, config_dict


def task(i: int) -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m",
                    prompt_text="q", completion_text="a", sample_reason="random")


def delivered_within(tmp_path: Path, evaluation: dict[str, Any], wait_s: float) -> tuple[int, int]:
    """Tasks the sink had after ``wait_s``, and after the bus stopped."""
    sink = CaptureExporter()
    got = sink.records
    settings = settings_from_dict(config_dict(tmp_path, bus={"flush_interval_s": 0.05}, evaluation=evaluation))
    bus = build_eval_bus(settings, [sink])
    bus.start()
    try:
        for i in range(3):
            bus.publish(task(i))  # type: ignore[arg-type]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and len(got) < 3:
            time.sleep(0.02)
        early = len(got)
    finally:
        bus.stop()
    return early, len(got)


def test_the_eval_bus_follows_the_record_bus_by_default(tmp_path: Path) -> None:
    assert delivered_within(tmp_path, {}, wait_s=5.0) == (3, 3)


def test_its_own_interval_holds_tasks_until_then_and_a_stop_still_delivers_them(tmp_path: Path) -> None:
    early, at_stop = delivered_within(tmp_path, {"flush_interval_s": 60}, wait_s=1.0)
    assert early == 0  # 20 record-bus flush intervals went by
    assert at_stop == 3  # nothing is left behind at stop


def test_the_eval_spool_keeps_to_bus_max_journal_mb(tmp_path: Path) -> None:
    """``bus.max_journal_mb`` capped only the requests' journal: ``spool-evals/`` grew without bound
    while the eval sink was away. With a sink that refuses everything (the judge's store down) and
    a 1 MB cap, the spool stays under about the cap, and what exceeds it is dropped and counted."""

    class Down:
        def export(self, batch: list[Any]) -> None:
            raise OSError("store away")

        def shutdown(self) -> None:
            pass

    settings = settings_from_dict(config_dict(tmp_path, bus={"max_journal_mb": 1, "flush_interval_s": 0.05},
                                              evaluation={"max_queue": 100}))
    bus = build_eval_bus(settings, [Down()])
    bus.start()
    try:
        big = "x" * 2000
        for i in range(1500):  # ~3 MB of tasks
            bus.publish(EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m",
                                 prompt_text=big, completion_text=big, sample_reason="random"))  # type: ignore[arg-type]
        time.sleep(0.5)
        spool = sum(f.stat().st_size for f in (tmp_path / "spool-evals").rglob("*") if f.is_file())
        assert spool <= 1.2 * (1 << 20), spool
        assert bus.stats().dropped > 0
    finally:
        bus.stop(timeout_s=0.5)
