"""Sampling: deterministic on trace_id, per tenant, shared overrides, forced windows, stratification."""

from __future__ import annotations

import math
import secrets
from pathlib import Path

import pytest

from infersight.evaluation.overrides import FileOverrides, RedisOverrides
from infersight.evaluation.sampler import FORCED_SKEW_S, Sampler, trace_fraction


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(check: object, timeout_s: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_decision_is_deterministic_per_trace() -> None:
    a, b = Sampler(0.3), Sampler(0.3)
    ids = [secrets.token_hex(16) for _ in range(500)]
    assert [a.initial("t", i) for i in ids] == [b.initial("t", i) for i in ids]
    # monotone in the rate: whatever is sampled at 10% is sampled at 30%
    low = Sampler(0.1)
    assert all(a.initial("t", i) == "random" for i in ids if low.initial("t", i) == "random")


def test_observed_rate_within_binomial_99_interval() -> None:
    n, rate = 20_000, 0.05
    sampler = Sampler(rate)
    hits = sum(sampler.initial("t", f"{i:032x}") == "random" for i in range(n))  # sequential ids, worst case
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(hits - n * rate) <= 2.576 * sd


def test_trace_fraction_is_uniform_enough() -> None:
    values = sorted(trace_fraction(f"{i:032x}") for i in range(4000))
    # Kolmogorov-Smirnov against U(0,1): D below the 99% critical value 1.63/sqrt(n)
    d = max(max(v - i / len(values), (i + 1) / len(values) - v) for i, v in enumerate(values))
    assert d < 1.63 / math.sqrt(len(values))


def test_tenant_rates_config_then_default() -> None:
    sampler = Sampler(0.0, {"acme": 1.0, "globex": None})
    assert sampler.initial("acme", "ab" * 16) == "random"
    assert sampler.initial("globex", "ab" * 16) is None
    assert sampler.rate("globex") == 0.0


def test_override_applies_without_restart_and_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "overrides.json"
    admin, other = Sampler(0.0, overrides=FileOverrides(path)), Sampler(0.0, overrides=FileOverrides(path), poll_s=0.02)
    other.start()  # the other process's poller re-reads the shared state
    try:
        admin.set_rate("acme", 1.0)
        assert wait_until(lambda: other.initial("acme", "cd" * 16) == "random")
        admin.set_rate("acme", None)
        assert wait_until(lambda: other.initial("acme", "cd" * 16) is None)
    finally:
        other.stop()
    with pytest.raises(ValueError):
        admin.set_rate("acme", 1.5)


def test_forced_window_expires_by_itself(tmp_path: Path) -> None:
    clock = Clock()
    sampler = Sampler(0.0, overrides=FileOverrides(tmp_path / "o.json"), clock=clock, max_forced_s=3600)
    deadline = sampler.force("acme", 600)
    assert deadline == clock.now + 600
    assert sampler.initial("acme", "ef" * 16) == "forced"
    assert sampler.initial("globex", "ef" * 16) is None
    clock.now += 601
    assert sampler.initial("acme", "ef" * 16) is None
    sampler.force(None, 60)  # every tenant
    assert sampler.initial("globex", "ef" * 16) == "forced"
    assert sampler.end_forced(None) is True
    assert sampler.initial("globex", "ef" * 16) is None
    with pytest.raises(ValueError):
        sampler.force("acme", 7200)


def test_a_forced_deadline_beyond_the_longest_window_is_cut_to_it(tmp_path: Path) -> None:
    """A hand-edited (or far-ahead-clock) deadline would force 100% sampling, and judge spend, for
    years: the breaker never lowers forced windows. It is cut to max_forced_s plus clock skew."""
    clock = Clock()
    path = tmp_path / "o.json"
    path.write_text('{"rates": {}, "forced": {"acme": %f}}' % (clock.now + 10 * 365 * 86_400))
    sampler = Sampler(0.0, overrides=FileOverrides(path), clock=clock, max_forced_s=3600)
    sampler.refresh()
    assert sampler.initial("acme", "ef" * 16) == "forced"
    clock.now += 3600 + FORCED_SKEW_S + 1
    assert sampler.initial("acme", "ef" * 16) is None


def test_stratified_reasons_most_specific_wins() -> None:
    final = Sampler.final
    assert final(None, error=False, guardrail=False, low_confidence=False) is None
    assert final("random", error=False, guardrail=False, low_confidence=False) == "random"
    assert final(None, error=False, guardrail=False, low_confidence=True) == "low_confidence"
    assert final("forced", error=False, guardrail=True, low_confidence=True) == "guardrail"
    assert final("random", error=True, guardrail=True, low_confidence=False) == "error"


def test_unreadable_overrides_keep_the_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    sampler = Sampler(0.0, overrides=FileOverrides(path))
    sampler.set_rate("acme", 1.0)
    path.write_text("{not json")
    sampler.refresh()
    assert sampler.rate("acme") == 1.0


def test_overrides_shared_through_a_real_redis(tmp_path: Path) -> None:
    from infersight.bus.redis_conn import connect
    from tests.redis_server import RedisServer, find_redis_server

    server = RedisServer(tmp_path / "redis", binary=find_redis_server())
    server.start()
    try:
        host_a = Sampler(0.0, overrides=RedisOverrides(connect(server.url), key="k"))
        host_b = Sampler(0.0, overrides=RedisOverrides(connect(server.url), key="k"), poll_s=0.02)
        host_b.start()
        try:
            host_a.force("acme", 60)
            assert wait_until(lambda: host_b.initial("acme", "ab" * 16) == "forced")
        finally:
            host_b.stop()
    finally:
        server.stop()


def _concurrent_admin_changes(make_store) -> tuple[Sampler, Sampler]:  # type: ignore[no-untyped-def]
    """Two processes' samplers (pollers on) changing two tenants' rates at the same time, 150 times."""
    import threading

    first, second = Sampler(0.0, overrides=make_store(), poll_s=0.001), Sampler(0.0, overrides=make_store(), poll_s=0.001)
    first.start()
    second.start()
    try:
        threads = [threading.Thread(target=lambda s=s, t=t: [s.set_rate(t, i / 1000) for i in range(150)])
                   for s, t in ((first, "acme"), (second, "globex"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first.force("acme", 60)  # and an end state both must see
    finally:
        first.stop()
        second.stop()
    return first, second


def test_admin_changes_at_the_same_time_on_two_workers_both_take_effect(tmp_path: Path) -> None:
    """Was: each call read, changed and saved the shared file on its own, so one worker's write could
    undo the other's change to another tenant (and a poll landing mid-call could drop its own)."""
    path = tmp_path / "o.json"
    first, second = _concurrent_admin_changes(lambda: FileOverrides(path))
    stored = FileOverrides(path).load()
    assert stored is not None and stored.rates == {"acme": 0.149, "globex": 0.149} and "acme" in stored.forced
    for sampler in (first, second):
        sampler.refresh()
        assert sampler.base_rate("acme") == sampler.base_rate("globex") == 0.149


def test_admin_changes_at_the_same_time_through_redis_both_take_effect(tmp_path: Path) -> None:
    from infersight.bus.redis_conn import connect
    from tests.redis_server import RedisServer, find_redis_server

    server = RedisServer(tmp_path / "redis", binary=find_redis_server())
    server.start()
    try:
        _concurrent_admin_changes(lambda: RedisOverrides(connect(server.url), key="k"))
        stored = RedisOverrides(connect(server.url), key="k").load()
        assert stored is not None and stored.rates == {"acme": 0.149, "globex": 0.149}
    finally:
        server.stop()


def test_an_admin_change_replaces_an_unreadable_shared_file(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    sampler = Sampler(0.0, overrides=FileOverrides(path))
    sampler.set_rate("acme", 0.5)
    path.write_text("{cut sh")
    sampler.set_rate("globex", 0.25)  # starts from the last good overrides, not from nothing
    stored = FileOverrides(path).load()
    assert stored is not None and stored.rates == {"acme": 0.5, "globex": 0.25}
