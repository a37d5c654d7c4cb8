"""The retention loop: applies the configured retention to the store on a schedule.

DuckDB has no TTL, so this scheduled delete is how the embedded store forgets; on ClickHouse the
tables' TTL clauses do the same job at merge time and this loop only makes it exact and prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from infersight.config import RetentionSettings, TenantSettings
from infersight.periodic import Periodic
from infersight.store.base import RetentionPolicy, Store

log = logging.getLogger("infersight.retention")


def policy_from(settings: RetentionSettings, tenants: Iterable[TenantSettings] = ()) -> RetentionPolicy:
    """The store's retention. Text is kept not at all for a tenant whose content policy is now
    ``none``: text stored before it opted out goes at the next pass (and never longer than its
    request: ``RetentionPolicy`` caps it)."""
    by_tenant = dict(settings.text_days_by_tenant)
    by_tenant.update({t.id: 0 for t in tenants if t.content == "none"})
    return RetentionPolicy(
        requests_days=settings.requests_days,
        text_days=settings.text_days,
        text_days_by_tenant=by_tenant,
        eval_results_days=settings.eval_results_days,
        telemetry_days=settings.telemetry_days,
        cost_lines_days=settings.cost_lines_days,
        rollups_days=settings.rollups_days,
    )


class RetentionLoop:
    """Runs ``apply_retention`` at start and then every ``interval_s`` on a daemon thread.

    ``leader`` (e.g. ``runtime_telemetry.FileLeader`` on a lock file under ``storage.path``) is asked
    before each scheduled run: with ``--workers N`` on a shared ClickHouse every worker has a loop,
    and without it each ran the same deletes, N times at every start and every hour."""

    def __init__(self, store: Store, policy: RetentionPolicy, interval_s: float = 3600.0,
                 leader: Callable[[], bool] | None = None,
                 sweeps: dict[str, Callable[[datetime], int]] | None = None) -> None:
        self.store = store
        self.policy = policy
        # text kept outside the store (the eval dead letters): name -> a pass that drops what is past
        # the same retention, run after the store's
        self.sweeps = sweeps or {}
        self.interval_s = interval_s
        self.leader = leader
        self.runs = 0
        self._periodic = Periodic("infersight-retention", lambda: self.interval_s, self._scheduled)

    def _scheduled(self) -> None:
        if self.leader is None or self.leader():
            self.run_once()

    def run_once(self, now: datetime | None = None) -> dict[str, int]:
        now = now or datetime.now(timezone.utc)
        removed = self.store.apply_retention(now, self.policy)
        for name, sweep in self.sweeps.items():
            try:
                removed[name] = sweep(now)
            except Exception:  # noqa: BLE001 - the store's pass stands; the next run tries again
                log.exception("retention sweep failed", extra={"fields": {"sweep": name}})
        self.runs += 1
        log.info("retention applied", extra={"fields": {"removed": removed}})
        return removed

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
