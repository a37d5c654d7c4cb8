"""Trim a Redis stream without losing anything: delete only entries every consumer group has read
and acknowledged, and only once they are older than ``bus.keep_acked_s``.

``MAXLEN`` trimming at XADD time is off because it cannot know what the groups still need: it drops
unread entries under a lagging consumer, and a pending entry it drops is lost (``dropped``). This
trimmer computes the safe bound instead:

- per group, the oldest pending id if anything is pending (delivered, not yet acknowledged), else the
  group's last-delivered-id + 1 (everything up to it was read and acknowledged);
- the safe ``MINID`` is the smallest of those, and also at most ``now - keep_acked_s`` (Redis's clock,
  since entry ids come from it), so acknowledged entries stay around for debugging and replay;
- no group at all: nothing is trimmed (a consumer that has not started yet would lose everything).

Then ``XTRIM <stream> MINID ~ <id>``: entries strictly below the bound go, and the approximate form
removes whole radix-tree nodes only, so it trims less than the bound allows, never more. Groups
only move forward (acks, reads), so a bound computed a moment ago stays safe when XTRIM runs; the
one race is a group created from id 0 in between, which would not see what was trimmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry, Counter

from infersight.bus.redis_conn import connect

if TYPE_CHECKING:
    from infersight.config import BusSettings

IDLE_CONSUMER_MS = 86_400_000  # a group member idle this long with nothing pending is forgotten
log = logging.getLogger("infersight.bus.trim")


@dataclass(frozen=True, slots=True)
class TrimResult:
    stream: str
    minid: str | None  # the bound XTRIM was given; None: nothing to trim
    trimmed: int  # entries Redis removed
    why: str  # what set the bound, or why nothing was trimmed


def _parse(stream_id: Any) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _fmt(parsed: tuple[int, int]) -> str:
    return f"{parsed[0]}-{parsed[1]}"


def safe_minid(client: redis.Redis, stream: str, keep_acked_s: float) -> tuple[str | None, str]:
    """The highest MINID that removes only entries read and acknowledged by every group and older
    than ``keep_acked_s``: (id, what set it), or (None, why not) when nothing may be trimmed."""
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None, "no stream"
        raise
    if not groups:
        return None, "no consumer group"
    bounds: list[tuple[tuple[int, int], str]] = []
    for group in groups:
        name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
        if int(group["pending"]) > 0:
            oldest: Any = client.xpending(stream, name)["min"]
            if oldest is not None:
                bounds.append((_parse(oldest), f"oldest pending of group {name}"))
                continue
        ms, seq = _parse(group["last-delivered-id"])
        bounds.append(((ms, seq + 1), f"last delivered of group {name}"))
    bound, why = min(bounds)
    seconds, micros = client.time()
    retention = (int(seconds) * 1000 + int(micros) // 1000 - int(keep_acked_s * 1000), 0)
    if retention < bound:
        bound, why = retention, f"keep_acked_s {keep_acked_s:g}"
    if bound <= (0, 1):
        return None, why  # nothing can lie below 0-1
    return _fmt(bound), why


def trim_stream(client: redis.Redis, stream: str, keep_acked_s: float, *, approximate: bool = True) -> TrimResult:
    """Compute the safe bound and XTRIM up to it (``approximate``: whole nodes only, cheap)."""
    minid, why = safe_minid(client, stream, keep_acked_s)
    if minid is None:
        return TrimResult(stream, None, 0, why)
    trimmed = int(client.xtrim(stream, minid=minid, approximate=approximate))
    return TrimResult(stream, minid, trimmed, why)


class StreamTrimmer:
    """Trims the given streams every ``interval_s`` on a daemon thread; never raises (a failure is
    logged and retried next round). ``interval_s <= 0`` disables it."""

    def __init__(
        self,
        url: str,
        streams: Sequence[str],
        *,
        keep_acked_s: float = 3600.0,
        interval_s: float = 60.0,
        registry: CollectorRegistry | None = None,
        approximate: bool = True,
    ) -> None:
        self.streams = list(dict.fromkeys(streams))
        self.keep_acked_s = keep_acked_s
        self.interval_s = interval_s
        self.approximate = approximate
        self.trimmed: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.failures = 0
        self._url = url
        self._client: redis.Redis | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = (
            Counter("infersight_bus_trimmed_entries", "Stream entries trimmed after every group acknowledged them.",
                    ("stream",), registry=registry)
            if registry is not None else None
        )  # fmt: skip

    @classmethod
    def for_settings(
        cls, url: str, bus: BusSettings, streams: Sequence[str], registry: CollectorRegistry | None = None
    ) -> StreamTrimmer:
        return cls(url, streams, keep_acked_s=bus.keep_acked_s, interval_s=bus.trim_interval_s, registry=registry)

    def run_once(self) -> list[TrimResult]:
        """Trim every stream once; a stream that fails is logged and skipped."""
        if self._client is None:
            self._client = connect(self._url)
        results: list[TrimResult] = []
        for stream in self.streams:
            try:
                result = trim_stream(self._client, stream, self.keep_acked_s, approximate=self.approximate)
            except redis.RedisError as exc:
                self.failures += 1
                log.warning("stream trim failed; retrying next round",
                            extra={"stream": stream, "error": type(exc).__name__})
                continue
            results.append(result)
            try:
                self.forget_idle_consumers(stream)
            except redis.RedisError as exc:
                log.warning("idle consumers not removed; retrying next round",
                            extra={"stream": stream, "error": type(exc).__name__})
            if result.trimmed:
                self.trimmed[stream] += result.trimmed
                if self._counter is not None:
                    self._counter.labels(stream).inc(result.trimmed)
                log.info("trimmed acknowledged stream entries",
                         extra={"stream": stream, "entries": result.trimmed, "minid": result.minid,
                                "bound": result.why})
        return results

    def forget_idle_consumers(self, stream: str) -> int:
        """Remove group members idle for a day that hold nothing: workers killed or scaled away
        (their entries were claimed by peers) would otherwise stay members forever."""
        assert self._client is not None
        forgotten = 0
        for group in self._client.xinfo_groups(stream):
            name = group["name"]
            for member in self._client.xinfo_consumers(stream, name):
                if int(member.get("pending") or 0) == 0 and int(member.get("idle") or 0) >= IDLE_CONSUMER_MS:
                    forgotten += int(self._client.xgroup_delconsumer(stream, name, member["name"]) == 0)
        return forgotten

    def start(self) -> StreamTrimmer:
        if self.interval_s > 0 and self.streams and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="infersight-stream-trim", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _loop(self) -> None:
        next_run = time.monotonic()  # once at start, then every interval
        while not self._stop.wait(max(0.0, next_run - time.monotonic())):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker
                self.failures += 1
                log.exception("stream trim failed")
            next_run = time.monotonic() + self.interval_s
