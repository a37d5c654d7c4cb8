"""Which requests go to the LLM judge: deterministic, per tenant, changeable at run time, stratified.

- **Deterministic on trace_id.** A request is sampled when ``h(trace_id) < rate``, where ``h`` maps
  the id to [0, 1) through BLAKE2b keyed with a secret every gateway shares (``sampling_key``), so
  sequential ids still spread evenly and a client that picks its trace ids cannot pick its sample.
  The same trace is sampled or not on every gateway process and after a replay.
- **Per tenant, at run time.** Rates come from config (``tenants[].sample_rate``, else
  ``evaluation.sample_rate``), overridden through the admin API with no restart.
- **Forced windows.** For an incident, a tenant (or every tenant) is sampled at 100% until a
  deadline; the window expires by itself.
- **Stratified.** Errors, guardrail hits and low-confidence answers are always sampled, whatever the
  rate; ``sample_reason`` says why (the most specific reason wins: error, guardrail, low_confidence,
  forced, random).

Overrides are shared through an ``OverrideStore`` (a file under ``storage.path`` for the processes of
one host, or a Redis key for gateways on many hosts), re-read by a poller thread every second, so an
admin call reaches every gateway, not just the one that served it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from infersight.evaluation.overrides import Overrides, OverrideStore
from infersight.evaluation.sampling_key import SamplingKeyStore
from infersight.model import SampleReason
from infersight.periodic import Periodic

log = logging.getLogger("infersight.evaluation.sampler")

ALL_TENANTS = "*"
_SCALE = float(1 << 64)


def trace_fraction(trace_id: str, key: bytes = b"") -> float:
    """The trace's fixed point in [0, 1): sampled at rate r exactly when this is below r."""
    digest = hashlib.blake2b(trace_id.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") / _SCALE


FORCED_SKEW_S = 300.0  # clock difference between hosts tolerated on a shared forced-window deadline


class Sampler:
    """Sampling decisions for the gateway; ``initial`` at request start, ``final`` before the last byte."""

    def __init__(
        self,
        default_rate: float,
        tenant_rates: dict[str, float | None] | None = None,
        *,
        overrides: OverrideStore | None = None,
        max_forced_s: float = 86_400.0,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        key_store: SamplingKeyStore | None = None,
    ) -> None:
        self.default_rate = default_rate
        self._configured = {t: r for t, r in (tenant_rates or {}).items() if r is not None}
        self._store = overrides
        self._max_forced_s = max_forced_s
        self._clock = clock
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._overrides = Overrides()
        self._poller = Periodic("infersight-sampling-overrides", lambda: self._poll_s, self.refresh, run_first=False)
        self._warned = False
        self._cuts: dict[tuple[str, float], float] = {}  # (tenant, deadline too far out) -> the first cut
        self._throttle = 1.0  # the eval breaker's factor on random sampling (1.0: closed)
        self._key_store = key_store
        self._key = b""  # unkeyed until the shared key is read (without a key store: always)
        self._key_warned = False
        self.refresh()

    # -- hot path ---------------------------------------------------------------------------------

    def rate(self, tenant_id: str) -> float:
        """The tenant's random-sampling rate in effect: its set rate, lowered while the breaker is open."""
        return self.base_rate(tenant_id) * self._throttle

    def base_rate(self, tenant_id: str) -> float:
        """The tenant's set rate (override, else config, else the default), before the breaker."""
        rate = self._overrides.rates.get(tenant_id)
        if rate is not None:
            return rate
        return self._configured.get(tenant_id, self.default_rate)

    def set_throttle(self, factor: float) -> None:
        """Called by the eval breaker: random sampling runs at ``factor`` times the set rates."""
        self._throttle = min(1.0, max(0.0, factor))

    def forced(self, tenant_id: str) -> bool:
        forced = self._overrides.forced
        if not forced:
            return False
        now = self._clock()
        return forced.get(tenant_id, 0.0) > now or forced.get(ALL_TENANTS, 0.0) > now

    def initial(self, tenant_id: str, trace_id: str) -> SampleReason | None:
        """The decision known at request start: a forced window, or the deterministic random draw."""
        if self.forced(tenant_id):
            return "forced"
        rate = self.rate(tenant_id)
        if rate > 0.0 and (rate >= 1.0 or trace_fraction(trace_id, self._key) < rate):
            return "random"
        return None

    @staticmethod
    def final(
        initial: SampleReason | None, *, error: bool, guardrail: bool, low_confidence: bool
    ) -> SampleReason | None:
        """The stratified decision once the outcome is known; the most specific reason wins."""
        if error:
            return "error"
        if guardrail:
            return "guardrail"
        if low_confidence:
            return "low_confidence"
        return initial

    # -- admin ------------------------------------------------------------------------------------

    def set_rate(self, tenant_id: str, rate: float | None) -> None:
        """Override a tenant's rate (``None`` goes back to config). Applies to every process at once."""
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        def change(overrides: Overrides) -> None:
            if rate is None:
                overrides.rates.pop(tenant_id, None)
            else:
                overrides.rates[tenant_id] = float(rate)

        self._change(change)

    def force(self, tenant_id: str | None, duration_s: float) -> float:
        """Sample 100% of a tenant (``None``: all tenants) for ``duration_s``; returns the deadline in
        force: a window already running that ends later is kept (one operator's shorter window must
        not end another's incident window; ``end_forced`` ends one early)."""
        if not 0 < duration_s <= self._max_forced_s:
            raise ValueError(f"duration_s must be in (0, {int(self._max_forced_s)}]")
        deadline = self._clock() + duration_s
        in_force: list[float] = []

        def change(overrides: Overrides) -> None:  # a shorter window opened later does not end a longer one
            key = tenant_id or ALL_TENANTS
            overrides.forced[key] = max(overrides.forced.get(key, 0.0), deadline)
            in_force[:] = [overrides.forced[key]]

        self._change(change)
        return in_force[0] if in_force else deadline

    def end_forced(self, tenant_id: str | None) -> bool:
        """End a window early; False when there was none running (one that already expired included:
        it used to count, as it stays in the shared store until the next write, and got a 200)."""
        found: list[bool] = []

        def change(overrides: Overrides) -> None:
            deadline = overrides.forced.pop(tenant_id or ALL_TENANTS, None)
            found.append(deadline is not None and deadline > self._clock())

        self._change(change)
        return found[0]

    def snapshot(self, tenants: list[str]) -> dict[str, Any]:
        """What the admin API shows: effective rate, its source and any forced window, per tenant."""
        self.refresh()
        now = self._clock()
        forced = {t: d for t, d in self._overrides.forced.items() if d > now}
        out = []
        for tenant in tenants:
            if tenant in self._overrides.rates:
                source = "override"
            elif tenant in self._configured:
                source = "config"
            else:
                source = "default"
            deadline = max(forced.get(tenant, 0.0), forced.get(ALL_TENANTS, 0.0))
            out.append({
                "tenant": tenant,
                "rate": self.base_rate(tenant),
                # a forced window samples 100% whatever the breaker does (showing the throttled rate
                # here read as if the breaker had cut the operator's window)
                "effective_rate": 1.0 if deadline > now else self.rate(tenant),
                "source": source,
                "forced_until": deadline if deadline > now else None,
            })
        return {"default_rate": self.default_rate, "tenants": out,
                "forced_all_until": forced.get(ALL_TENANTS)}

    # -- shared state -------------------------------------------------------------------------------

    def start(self) -> None:
        """Poll the shared overrides every ``poll_s`` on a daemon thread (never on the request path)."""
        if self._store is not None or self._key_store is not None:
            self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def refresh(self) -> None:
        """Read the shared overrides now; on an error keep the previous ones (and say so once).

        Under the lock, as admin changes are: the poller's swap used to land between an admin call's
        read and its write, and the write then saved the polled copy, without the change."""
        self._refresh_key()
        if self._store is None:
            return
        with self._lock:
            self._refresh_locked()

    def _refresh_key(self) -> None:
        """The shared sampling key, re-read every poll (one Redis lost is made again, and every
        gateway follows); on an error the previous one is kept, and said once."""
        if self._key_store is None:
            return
        try:
            self._key = self._key_store.get()
            self._key_warned = False
        except Exception as exc:  # noqa: BLE001 - an unreachable Redis must not stop sampling
            if not self._key_warned:
                self._key_warned = True
                log.warning("sampling key unreadable; keeping the previous one" if self._key else
                            "sampling key unreadable; drawing unkeyed until it is read",
                            extra={"fields": {"error": type(exc).__name__}})

    def _refresh_locked(self) -> None:
        assert self._store is not None
        try:
            loaded = self._store.load()
        except Exception as exc:  # noqa: BLE001 - a broken file or an unreachable Redis must not stop sampling
            if not self._warned:
                self._warned = True
                log.warning("sampling overrides unreadable; keeping the previous ones",
                            extra={"fields": {"error": type(exc).__name__}})
            return
        self._warned = False
        if loaded is None:
            self._restore_lost()
            return
        now = self._clock()
        too_far = any(d > now + self._max_forced_s + FORCED_SKEW_S for d in loaded.forced.values())
        self._cuts = {k: v for k, v in self._cuts.items() if loaded.forced.get(k[0]) == k[1]}
        loaded.forced = self._bounded(loaded.forced, now)
        if too_far:  # the cut written back, so that a restart (or another gateway) ends the window too
            try:
                self._store.update(lambda overrides: setattr(overrides, "forced", self._bounded(overrides.forced, now)),
                                   loaded)
            except Exception as exc:  # noqa: BLE001 - kept in memory meanwhile; the next poll tries again
                log.warning("a forced window cut to the longest allowed was not written back yet",
                            extra={"fields": {"error": type(exc).__name__}})
        self._overrides = loaded  # one reference swap: readers never see a half-built state

    def _bounded(self, forced: dict[str, float], now: float) -> dict[str, float]:
        """Forced windows still running, none longer than max_forced_s from when it was first seen.

        A forced window can be at most max_forced_s long (the admin API refuses longer ones, and the
        breaker never lowers forced sampling, so judge spend rides on it); a deadline further out (a
        hand-edited file, another host's clock far ahead) is cut to that, plus clock skew. The first
        cut is kept: recomputed at every poll it would move on with the clock and never end."""
        latest = now + self._max_forced_s + FORCED_SKEW_S
        bounded = {}
        for tenant, deadline in forced.items():
            if deadline > latest:
                deadline = self._cuts.setdefault((tenant, deadline), latest)
            if deadline > now:
                bounded[tenant] = deadline
        return bounded

    def _restore_lost(self) -> None:
        """The shared overrides are gone (a Redis restarted without its data, a file deleted) while
        this process holds some: write them back, so that a gateway started since (which has only
        the config) and this one agree again instead of sampling the same trace differently."""
        current = self._overrides
        if self._store is None or not (current.rates or current.forced):
            return
        try:
            self._store.update(lambda overrides: None, current)  # missing: the fallback is what is written
        except Exception as exc:  # noqa: BLE001 - the next poll tries again; sampling goes on meanwhile
            log.warning("sampling overrides lost from the shared store and not written back yet",
                        extra={"fields": {"error": type(exc).__name__}})
            return
        log.warning("sampling overrides were missing from the shared store; written back from this process")

    def _change(self, change: Callable[[Overrides], None]) -> None:
        """An admin change: to the shared store in one atomic step (``OverrideStore.update``), then
        taken as this process's overrides; expired forced windows are pruned on the way."""
        def apply(overrides: Overrides) -> None:
            change(overrides)
            overrides.forced = self._bounded(overrides.forced, self._clock())

        with self._lock:
            if self._store is None:
                current = Overrides(dict(self._overrides.rates), dict(self._overrides.forced))
                apply(current)
                self._overrides = current
                return
            self._store.update(apply, self._overrides)
            self._refresh_locked()
