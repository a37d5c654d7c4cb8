"""The masking thread masks what arrived within ``linger_s`` in one call (one round trip to the
eval process), a text that fails drops only its own task, and a stop masks what waits."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from infersight.evaluation.masking import MaskingQueue
from infersight.evaluation.metrics import EvalGatewayMetrics
from infersight.model import EvalTask
from tests.conftest import DirectBus


class CountingMask:
    """A ``Mask`` with ``many``, as ``RemoteMask`` has: records each call's texts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, text: str, max_chars: int) -> tuple[str, dict[str, int], bool]:
        return self.many([text], max_chars)[0]

    def many(self, texts: list[str], max_chars: int) -> list[tuple[str, dict[str, int], bool]]:
        with self.lock:
            self.calls.append(list(texts))
        if any("BOOM" in t for t in texts):
            raise ValueError("the masker cannot read this text")
        return [(t.replace("jane@example.com", "[EMAIL]")[:max_chars], {"EMAIL": 1} if "jane@" in t else {},
                 len(t) > max_chars) for t in texts]


def task(i: int, completion: str = "write to jane@example.com") -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m",
                    prompt_text=f"question {i}", completion_text=completion, sample_reason="random")


def wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def queue_with(mask: CountingMask, linger_s: float) -> tuple[MaskingQueue, DirectBus, EvalGatewayMetrics]:
    bus, metrics = DirectBus(), EvalGatewayMetrics(CollectorRegistry())
    masking = MaskingQueue(bus, metrics, max_chars=40, mask=mask, linger_s=linger_s)  # type: ignore[arg-type]
    masking.start()
    return masking, bus, metrics


def test_tasks_within_the_linger_are_masked_in_one_call() -> None:
    mask = CountingMask()
    masking, bus, _ = queue_with(mask, linger_s=0.5)
    try:
        for i in range(5):
            masking.submit(task(i))
        wait_for(lambda: masking.published == 5)
        assert len(mask.calls) == 1 and len(mask.calls[0]) == 10  # prompt and completion of each task
        by_trace = {t.trace_id: t for t in bus.records}  # type: ignore[attr-defined]
        for i in range(5):
            got = by_trace[f"{i:032x}"]
            assert got.completion_text == "write to [EMAIL]" and got.prompt_text == f"question {i}"
            assert got.guardrail_hits == ["pii_completion:EMAIL"]  # each task gets its own hits
    finally:
        masking.stop()


def test_no_linger_masks_each_task_as_it_comes() -> None:
    mask = CountingMask()
    masking, _, _ = queue_with(mask, linger_s=0.0)
    try:
        for i in range(3):
            masking.submit(task(i))
            wait_for(lambda i=i: masking.published == i + 1)
        assert [len(texts) for texts in mask.calls] == [2, 2, 2]
    finally:
        masking.stop()


def test_a_text_that_fails_drops_only_its_task() -> None:
    mask = CountingMask()
    masking, bus, metrics = queue_with(mask, linger_s=0.5)
    try:
        masking.submit(task(1))
        masking.submit(task(2, completion="BOOM"))
        masking.submit(task(3))
        wait_for(lambda: masking.published + masking.dropped == 3)
        assert masking.published == 2 and masking.dropped == 1
        assert {t.trace_id for t in bus.records} == {f"{1:032x}", f"{3:032x}"}  # type: ignore[attr-defined]
        assert len(mask.calls) == 4  # the batch, then one call per task
        dropped = metrics.tasks.labels("dropped_mask_error")._value.get()
        assert dropped == 1
    finally:
        masking.stop()


def test_stop_masks_and_publishes_what_waits_in_the_linger() -> None:
    mask = CountingMask()
    masking, bus, _ = queue_with(mask, linger_s=5.0)  # far longer than the test
    for i in range(3):
        masking.submit(task(i))
    started = time.monotonic()
    masking.stop()
    assert time.monotonic() - started < 4  # the stop cut the linger short
    assert masking.published == 3 and len(bus.records) == 3  # type: ignore[attr-defined]


class CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def test_only_the_first_task_of_a_batch_wakes_the_thread() -> None:
    """Was: a ``queue.Queue``, whose every put woke the lingering thread, and each wake-up took the
    gateway's GIL from the relay (eval_bench "Discussion": wake-ups, not CPU, moved the TTFT p99)."""
    mask = CountingMask()
    bus, metrics = DirectBus(), EvalGatewayMetrics(CollectorRegistry())
    masking = MaskingQueue(bus, metrics, max_chars=40, mask=mask, linger_s=0.5)  # type: ignore[arg-type]
    masking._arrived = arrived = CountingEvent()
    masking.start()
    try:
        for i in range(20):
            masking.submit(task(i))
        wait_for(lambda: masking.published == 20)
        assert len(mask.calls) == 1
        assert arrived.sets == 1
        masking.submit(task(20))  # the next batch: one more wake-up
        wait_for(lambda: masking.published == 21)
        assert arrived.sets == 2
    finally:
        masking.stop()


def test_a_full_queue_drops_and_counts_and_a_stopped_queue_refuses() -> None:
    mask = CountingMask()
    bus, metrics = DirectBus(), EvalGatewayMetrics(CollectorRegistry())
    masking = MaskingQueue(bus, metrics, max_chars=40, mask=mask, max_queue=3, linger_s=0.0)  # type: ignore[arg-type]
    for i in range(5):  # not started: nothing drains
        masking.submit(task(i))
    assert masking.dropped == 2
    masking.start()
    wait_for(lambda: masking.published == 3)
    masking.stop()
    masking.submit(task(9))
    assert masking.dropped == 3 and masking.published == 3
