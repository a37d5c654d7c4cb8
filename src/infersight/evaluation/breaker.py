"""The eval circuit breaker: lower random sampling while evaluation lags or overspends.

Two signals, read every ``check_interval_s`` on the breaker's own thread (never on the request path):

- **lag**, the age of the oldest eval task handed on and not yet written (``lag_sources``: the
  gateway's pending tasks when evaluation runs in-process, the eval stream's oldest undelivered or
  unacknowledged entry in the scale-out shape);
- **spend**, the judge cost of the current UTC day or month, against ``budget``.

The breaker opens when lag passes ``max_lag_s`` or spend reaches the budget; random sampling rates are
then multiplied by ``reduced_factor``. It closes when both have recovered: lag under
``recover_lag_s`` (hysteresis, so it does not flap at the threshold) and spend under the budget (a
new period starts at zero). Errors, guardrail hits, low-confidence answers and forced windows are
never lowered: they are the samples an incident needs, and the operator asked for the window.
An unreadable signal keeps the last state (and is logged once): a Redis hiccup neither opens nor
closes the breaker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from infersight.evaluation.settings import BreakerSettings
from infersight.periodic import Periodic

log = logging.getLogger("infersight.evaluation.breaker")


class LagSource(Protocol):
    def oldest_age_s(self, now: float) -> float | None:
        """Seconds since the oldest unevaluated task was made; None when nothing waits."""
        ...


class SpendSource(Protocol):
    def spend(self, period_start: datetime) -> float:
        """Judge cost since ``period_start`` (the start of the current budget period)."""
        ...


class Throttled(Protocol):
    def set_throttle(self, factor: float) -> None: ...


class BreakerGauges(Protocol):
    def publish(self, state: BreakerState) -> None: ...


def period_start(now: float, period: str) -> datetime:
    """The UTC start of the day or month that contains ``now``."""
    at = datetime.fromtimestamp(now, timezone.utc)
    at = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(day=1) if period == "month" else at


@dataclass
class BreakerState:
    open: bool = False
    reasons: tuple[str, ...] = ()
    lag_s: float | None = None
    spend: float = 0.0
    opened_at: float | None = None
    checked_at: float | None = None
    errors: dict[str, str] = field(default_factory=dict)


class EvalBreaker:
    def __init__(
        self,
        cfg: BreakerSettings,
        sampler: Throttled,
        lag: LagSource | None,
        spend: SpendSource | None,
        gauges: BreakerGauges | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.sampler = sampler
        self.lag = lag
        self.spend_source = spend
        self.gauges = gauges
        self._clock = clock
        self.state = BreakerState()
        self.trips = 0
        self._periodic = Periodic("infersight-eval-breaker", lambda: self.cfg.check_interval_s, self.check)

    def check(self) -> BreakerState:
        """Read both signals and open or close the breaker; returns the new state."""
        now = self._clock()
        prev = self.state
        errors: dict[str, str] = {}
        lag_s, spend = prev.lag_s, prev.spend
        if self.lag is not None:
            try:
                lag_s = self.lag.oldest_age_s(now)
            except Exception as exc:  # noqa: BLE001 - keep the last reading, say so once
                errors["lag"] = type(exc).__name__
        if self.spend_source is not None and self.cfg.budget is not None:
            try:
                spend = self.spend_source.spend(period_start(now, self.cfg.budget_period))
            except Exception as exc:  # noqa: BLE001
                errors["spend"] = type(exc).__name__
        over_budget = self.cfg.budget is not None and spend >= self.cfg.budget
        # the hysteresis holds the breaker open for lag only when lag opened it: one opened for the
        # budget closes when the budget recovers, with a lag that never passed max_lag_s
        lag_open = prev.open and "lag" in prev.reasons
        lagging = lag_s is not None and lag_s > (self.cfg.recover_lag_s if lag_open else self.cfg.max_lag_s)
        reasons = tuple(r for r, on in (("lag", lagging), ("budget", over_budget)) if on)
        is_open = self.cfg.enabled and bool(reasons)
        state = BreakerState(open=is_open, reasons=reasons, lag_s=lag_s, spend=spend,
                             opened_at=(prev.opened_at or now) if is_open else None, checked_at=now, errors=errors)
        if errors and errors != prev.errors:
            log.warning("eval breaker signal unreadable; keeping the last reading", extra={"fields": errors})
        if is_open != prev.open:
            self._transition(state)
        self.state = state
        if self.gauges is not None:
            self.gauges.publish(state)
        return state

    def _transition(self, state: BreakerState) -> None:
        fields: dict[str, Any] = {"reasons": ",".join(state.reasons), "lag_s": state.lag_s, "spend": state.spend,
                                  "budget": self.cfg.budget}
        if state.open:
            self.trips += 1
            self.sampler.set_throttle(self.cfg.reduced_factor)
            log.warning("eval breaker open: random sampling lowered",
                        extra={"fields": {**fields, "factor": self.cfg.reduced_factor}})
        else:
            self.sampler.set_throttle(1.0)
            log.warning("eval breaker closed: sampling restored", extra={"fields": fields})

    def snapshot(self) -> dict[str, Any]:
        """What the admin API shows."""
        s = self.state
        return {"enabled": self.cfg.enabled, "open": s.open, "reasons": list(s.reasons),
                "factor": self.cfg.reduced_factor if s.open else 1.0, "lag_s": s.lag_s,
                "max_lag_s": self.cfg.max_lag_s, "recover_lag_s": self.cfg.recover_lag_s, "spend": s.spend,
                "budget": self.cfg.budget, "budget_period": self.cfg.budget_period}

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
