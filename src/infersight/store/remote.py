"""RemoteStore: the gateway's embedded DuckDB store, run in a child process (``store.child_process``).

Why: a DuckDB write takes the GIL for part of its run (its scan of the Arrow batch calls back into
Python), so in the gateway process every bus flush held the relay's event loop up by up to the
write's length. With every store write made a no-op, eval-off's added TTFT p99 at 231 req/s fell
from ~4-5 ms to 1.3 ms (benchmarks/README.md). In a child the writes, the Arrow conversion and the
API's queries run under another GIL, and the gateway no longer loads DuckDB at all.

Each method is one blocking call over a socket pair (``childproc``), made from the bus writer
thread, a sink's thread, or the API's ``to_thread``: never from the event loop. Failures keep the
store's contract: the child's ``StoreError`` is raised as such, and a child that is gone raises
``StoreProcessError`` (a ``StoreUnavailable``), so the bus keeps the batch and retries it, and the
next call starts a new child (paced). Writes are idempotent, so a write resent after a crash
cannot make a second row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from infersight.childproc import ChildGone, ChildProcess
from infersight.config import Settings
from infersight.model import RequestRecord
from infersight.store.base import Page, RequestFilter, RetentionPolicy, StatsQuery, StoreUnavailable
from infersight.store.store_socket import StoreAddress, StoreSocketCaller

if TYPE_CHECKING:
    from infersight.store.evaluations_sql import EvaluationFilter
    from infersight.store.quality_sql import QualityQuery
    from infersight.store.telemetry_sql import CorrelationQuery, DiagnosisInputs, DiagnosisQuery, TelemetryQuery

CALL_TIMEOUT_S = 900.0  # a retention delete over months of rows is the longest call; past it the child is killed
STOP_TIMEOUT_S = 60.0  # closing folds the staged rollup rows first


class StoreProcessError(ChildGone, StoreUnavailable):
    """The store process is not there: it failed to start, exited, or did not answer in time."""

    reason = "store_process"


class StoreProcess(ChildProcess):
    name = "store process"
    reader_name = "infersight-store-process-reader"
    error = StoreProcessError

    def __init__(self, settings: Settings, *, listen: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("call_timeout_s", CALL_TIMEOUT_S)
        kwargs.setdefault("restart_interval_s", 1.0)
        # ``listen``: a second way in for the gateway's eval process (store_socket.py); a restarted
        # child listens at the same address with the same key, so that client just reconnects.
        self.address = StoreAddress.new() if listen else None
        super().__init__("infersight.store.store_child", (settings, settings.logging.level, self.address), **kwargs)


class StoreCaller(Protocol):
    """How ``RemoteStore`` reaches the store process: the gateway's pipe or the eval process's socket."""

    def start(self) -> None: ...

    def call(self, op: str, payload: Any, *, timed: bool = True) -> Any: ...

    def health(self) -> dict[str, object]: ...

    def stop(self, timeout_s: float = ...) -> None: ...


class RemoteStore:
    """The ``Store`` protocol through the store process; ``close`` stops the child (it closes the store)."""

    def __init__(self, settings: Settings, process: StoreCaller | None = None, *, listen: bool = False) -> None:
        self.process: StoreCaller = process or StoreProcess(settings, listen=listen)
        self.process.start()

    @property
    def address(self) -> StoreAddress | None:
        """Where the store process takes the eval process's calls (None: it does not)."""
        return getattr(self.process, "address", None)

    @classmethod
    def connect(cls, settings: Settings, where: StoreAddress) -> RemoteStore:
        """The store process of another process (the gateway's), through its socket."""
        return cls(settings, StoreSocketCaller(where, StoreProcessError, CALL_TIMEOUT_S))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.process.call(method, (args, kwargs))

    def health(self) -> dict[str, object]:
        return self.process.health()

    def migrate(self) -> int:
        return int(self._call("migrate"))

    def schema_version(self) -> int:
        return int(self._call("schema_version"))

    def write_requests(self, records: list[RequestRecord]) -> int:
        return int(self._call("write_requests", records))

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        return int(self._call("write_rows", table, rows))

    def get_requests(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("get_requests", trace_id, tenant_id)
        return rows

    def list_requests(self, flt: RequestFilter, limit: int = 100, cursor: str | None = None) -> Page:
        page: Page = self._call("list_requests", flt, limit, cursor)
        return page

    def count_requests(self, flt: RequestFilter) -> int:
        return int(self._call("count_requests", flt))

    def stored_keys(self, table: str, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {tuple(key) for key in self._call("stored_keys", table, rows)}

    def eval_results_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("eval_results_for", trace_id, tenant_id)
        return rows

    def content_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("content_for", trace_id, tenant_id)
        return rows

    def telemetry_around(self, model_id: str, at: datetime, window: timedelta) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("telemetry_around", model_id, at, window)
        return rows

    def stats(self, query: StatsQuery) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("stats", query)
        return rows

    def list_evaluations(self, flt: EvaluationFilter, limit: int = 100, cursor: str | None = None) -> Page:
        page: Page = self._call("list_evaluations", flt, limit, cursor)
        return page

    def quality(self, query: QualityQuery) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("quality", query)
        return rows

    def telemetry(self, query: TelemetryQuery) -> tuple[list[dict[str, Any]], bool]:
        rows, more = self._call("telemetry", query)
        return rows, bool(more)

    def correlation(self, query: CorrelationQuery) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("correlation", query)
        return rows

    def build_correlation_rollups(self, now: datetime | None = None, max_periods: int | None = None,
                                  lookback: timedelta | None = None) -> int:
        return int(self._call("build_correlation_rollups", now, max_periods, lookback))

    def diagnosis_inputs(self, query: DiagnosisQuery) -> DiagnosisInputs:
        inputs: DiagnosisInputs = self._call("diagnosis_inputs", query)
        return inputs

    def apply_retention(self, now: datetime, policy: RetentionPolicy) -> dict[str, int]:
        removed: dict[str, int] = self._call("apply_retention", now, policy)
        return removed

    def close(self) -> None:
        self.process.stop(STOP_TIMEOUT_S)
