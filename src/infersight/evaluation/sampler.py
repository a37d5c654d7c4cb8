"""Which requests go to the LLM judge: deterministic, per tenant, changeable at run time, stratified.

- **Deterministic on trace_id.** A request is sampled when ``h(trace_id) < rate``, where ``h`` maps
  the id to [0, 1) through BLAKE2b (so client-chosen or sequential ids still spread evenly). The same
  trace is sampled or not on every gateway process and after a replay: decisions are reproducible.
- **Per tenant, at run time.** Rates come from config (``tenants[].sample_rate``, else
  ``evaluation.sample_rate``), overridden through the admin API with no restart.
- **Forced windows.** For an incident, a tenant (or every tenant) is sampled at 100% until a
  deadline; the window expires by itself.
- **Stratified.** Errors, guardrail hits and low-confidence answers are always sampled, whatever the
  rate; ``sample_reason`` says why (the most specific reason wins: error, guardrail, low_confidence,
  forced, random).

Overrides are shared by every gateway process on a host through one small JSON file under
``storage.path`` (written atomically; each process re-reads it at most once a second when its mtime
changes), so an admin call reaches every ``--workers`` process, not just the one that served it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from infersight.model import SampleReason

log = logging.getLogger("infersight.evaluation.sampler")

ALL_TENANTS = "*"
_RELOAD_EVERY_S = 1.0
_SCALE = float(1 << 64)


def trace_fraction(trace_id: str) -> float:
    """The trace's fixed point in [0, 1): sampled at rate r exactly when this is below r."""
    digest = hashlib.blake2b(trace_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass
class Overrides:
    """Run-time changes on top of config: rates per tenant and forced windows (epoch deadlines)."""

    rates: dict[str, float] = field(default_factory=dict)
    forced: dict[str, float] = field(default_factory=dict)  # tenant or "*" -> deadline (epoch seconds)

    def to_json(self) -> bytes:
        return orjson.dumps({"rates": self.rates, "forced": self.forced})

    @classmethod
    def from_json(cls, raw: bytes) -> Overrides:
        data = orjson.loads(raw) if raw.strip() else {}
        rates = {str(k): float(v) for k, v in (data.get("rates") or {}).items()}
        forced = {str(k): float(v) for k, v in (data.get("forced") or {}).items()}
        return cls(rates, forced)


class Sampler:
    """Sampling decisions for the gateway; ``initial`` at request start, ``final`` before the last byte."""

    def __init__(
        self,
        default_rate: float,
        tenant_rates: dict[str, float | None] | None = None,
        *,
        overrides_path: str | os.PathLike[str] | None = None,
        max_forced_s: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.default_rate = default_rate
        self._configured = {t: r for t, r in (tenant_rates or {}).items() if r is not None}
        self._path = Path(overrides_path) if overrides_path is not None else None
        self._max_forced_s = max_forced_s
        self._clock = clock
        self._lock = threading.Lock()
        self._overrides = Overrides()
        self._mtime: float | None = None
        self._next_reload = 0.0
        self._reload(force=True)

    # -- hot path ---------------------------------------------------------------------------------

    def rate(self, tenant_id: str) -> float:
        """The tenant's current random-sampling rate (override, else config, else the default)."""
        self._maybe_reload()
        rate = self._overrides.rates.get(tenant_id)
        if rate is not None:
            return rate
        return self._configured.get(tenant_id, self.default_rate)

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
        if rate > 0.0 and (rate >= 1.0 or trace_fraction(trace_id) < rate):
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
        with self._lock:
            self._reload(force=True)
            if rate is None:
                self._overrides.rates.pop(tenant_id, None)
            else:
                self._overrides.rates[tenant_id] = float(rate)
            self._save()

    def force(self, tenant_id: str | None, duration_s: float) -> float:
        """Sample 100% of a tenant (``None``: all tenants) for ``duration_s``; returns the deadline."""
        if not 0 < duration_s <= self._max_forced_s:
            raise ValueError(f"duration_s must be in (0, {int(self._max_forced_s)}]")
        deadline = self._clock() + duration_s
        with self._lock:
            self._reload(force=True)
            self._overrides.forced[tenant_id or ALL_TENANTS] = deadline
            self._save()
        return deadline

    def end_forced(self, tenant_id: str | None) -> bool:
        with self._lock:
            self._reload(force=True)
            found = self._overrides.forced.pop(tenant_id or ALL_TENANTS, None) is not None
            self._save()
        return found

    def snapshot(self, tenants: list[str]) -> dict[str, Any]:
        """What the admin API shows: effective rate, its source and any forced window, per tenant."""
        self._reload(force=True)
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
                "rate": self.rate(tenant),
                "source": source,
                "forced_until": deadline if deadline > now else None,
            })
        return {"default_rate": self.default_rate, "tenants": out,
                "forced_all_until": forced.get(ALL_TENANTS)}

    # -- shared state -------------------------------------------------------------------------------

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if now < self._next_reload:
            return
        self._next_reload = now + _RELOAD_EVERY_S
        self._reload()

    def _reload(self, force: bool = False) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if not force and mtime == self._mtime:
            return
        try:
            overrides = Overrides.from_json(self._path.read_bytes())
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("sampling overrides unreadable; keeping the previous ones",
                        extra={"fields": {"path": str(self._path), "error": type(exc).__name__}})
            return
        now = self._clock()
        overrides.forced = {t: d for t, d in overrides.forced.items() if d > now}
        self._overrides, self._mtime = overrides, mtime

    def _save(self) -> None:
        now = self._clock()
        self._overrides.forced = {t: d for t, d in self._overrides.forced.items() if d > now}
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(self._overrides.to_json())
        os.replace(tmp, self._path)
        self._mtime = self._path.stat().st_mtime_ns
