"""The judge-spend ledger: costs paid and not written survive a killed eval process, written ones
leave it, a line cut by the kill is skipped, and the file is rewritten before it grows unbounded."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from infersight.evaluation import spend_ledger
from infersight.evaluation.eval_health import LocalSpend
from infersight.evaluation.spend_ledger import SpendLedger
from infersight.model import EvalResult

DAY = datetime(2026, 11, 24, tzinfo=timezone.utc)
NOON = DAY.timestamp() + 12 * 3600


def result(trace: str) -> EvalResult:
    return EvalResult(trace_id=trace, span_id="s", tenant_id="acme", model_id="m", evaluator="llm_judge",
                      evaluator_version="v", dimension="relevance", score=4.0, evaluated_at=DAY)


def spend(path: Path, store_total: float = 0.0) -> LocalSpend:
    local = LocalSpend(seed=lambda _start: store_total, wall_clock=lambda: NOON)
    local.attach_ledger(SpendLedger(path))
    return local


def test_a_successor_counts_what_its_killed_predecessor_paid_and_never_wrote(tmp_path: Path) -> None:
    path = tmp_path / spend_ledger.LEDGER_NAME
    first = spend(path)
    first.paid({("t1", "s"): 1.0, ("t2", "s"): 2.0, ("t3", "s"): 0.5})
    first.written([result("t3")])  # its rows are in the store: the store's total has it
    with open(path, "ab") as f:
        f.write(b'{"k": ["t4", "s"], "p": "2026-')  # the kill cut this line
    successor = spend(path, store_total=0.5)
    assert successor.spend(DAY) == 0.5 + 1.0 + 2.0
    successor.paid({("t1", "s"): 1.0})  # replayed and judged again: paid again, counted again
    assert successor.spend(DAY) == 0.5 + 2.0 + 2.0
    successor.written([result("t1"), result("t2")])
    assert SpendLedger(path).load() == {}


def test_the_file_is_rewritten_with_the_live_entries_only(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(spend_ledger, "_COMPACT_SLACK", 10)
    path = tmp_path / spend_ledger.LEDGER_NAME
    local = spend(path)
    local.paid({("keep", "s"): 3.0})
    for i in range(200):
        local.paid({(f"t{i}", "s"): 0.01})
        local.written([result(f"t{i}")])
    assert len(path.read_bytes().splitlines()) < 40
    assert SpendLedger(path).load() == {("keep", "s"): (DAY, 3.0)}
