"""Inspect and replay the dead-letter stream (``<stream>:dead``) after the cause was fixed.

The consumer moves a message there when it was undecodable (poison) or failed ``max_deliveries``
times; the entry holds metadata (``source_id``, ``reason``, ``deliveries``, ``dead_at`` ...) and the
original fields prefixed ``field:`` (see ``redis_consumer._dead_letter``).

Replay re-XADDs the original fields to the main stream, so the consumer group reads it as a new
message with a fresh delivery count, then XDELs the dead entry, only after the XADD was answered.
A crash in between leaves the record in both streams; replaying it again is harmless because
store writes are idempotent by (trace_id, span_id), telemetry samples by (ts, source, instance,
gpu, model_id, metric). Not MULTI/EXEC: Redis would run the XDEL even if the XADD failed inside
the transaction.

Poison entries (they do not decode as a record now either) are skipped unless asked for: they
would only die again. Listing shows ids, reasons, counts and ages, never the payload (prompts can
be inside).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from infersight.bus.redis_conn import PoisonMessage, decode
from infersight.model import RequestRecord

FIELD_PREFIX = b"field:"
_PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry. ``fields`` is the original payload: never print it."""

    dead_id: str
    source_id: str
    reason: str
    deliveries: int
    dead_at: float  # unix seconds
    consumer: str
    poison: bool  # does not decode as a record: a replay would die again
    fields: dict[bytes, bytes] = field(repr=False)

    @property
    def kind(self) -> str:
        return reason_kind(self.reason)

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.dead_at)


@dataclass(slots=True)
class ReplayResult:
    replayed: int = 0  # XADDed back and deleted from the dead stream (or would be, in a dry run)
    skipped_poison: int = 0  # undecodable, left in place (--include-poison replays them)
    failed: int = 0  # 1 when an XADD or XDEL failed; the replay stopped there (error says which)
    error: str | None = None
    replayed_ids: list[tuple[str, str]] = field(default_factory=list)  # (dead id, new id in the main stream)


def reason_kind(reason: str) -> str:
    """A stable category for counting: the reasons themselves carry counts and parser details."""
    if reason.startswith("undecodable"):
        return "undecodable"
    if reason.startswith("delivered"):
        return "max_deliveries"
    if reason.startswith("sink failed"):
        return "sink_failed"
    return "other"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _parse(dead_id: Any, raw: dict[Any, Any], record_type: type[Any]) -> DeadLetter:
    meta: dict[str, Any] = {}
    original: dict[bytes, bytes] = {}
    for key, value in raw.items():
        key_b = key if isinstance(key, bytes) else str(key).encode()
        if key_b.startswith(FIELD_PREFIX):
            original[key_b[len(FIELD_PREFIX) :]] = value
        else:
            meta[key_b.decode(errors="replace")] = value
    did = _text(dead_id)
    reason = _text(meta.get("reason", ""))
    try:
        dead_at = float(_text(meta["dead_at"]))
    except (KeyError, ValueError):
        dead_at = int(did.partition("-")[0]) / 1000.0  # the dead entry's id is its time
    try:
        deliveries = int(_text(meta.get("deliveries", 0)))
    except ValueError:
        deliveries = 0
    poison = reason.startswith("undecodable") or not original
    if not poison:
        try:
            decode(original, record_type)
        except PoisonMessage:
            poison = True
    return DeadLetter(did, _text(meta.get("source_id", "")), reason, deliveries, dead_at,
                      _text(meta.get("consumer", "")), poison, original)  # fmt: skip


def iter_dead_letters(
    client: redis.Redis, dead_stream: str, *, reason: str | None = None, record_type: type[Any] = RequestRecord
) -> Iterator[DeadLetter]:
    """Oldest first, paged. ``reason`` keeps entries whose kind equals it or whose reason contains it
    (case-insensitive): ``undecodable``, ``max_deliveries``, ``sink_failed`` or any substring."""
    wanted = reason.lower() if reason else None
    start: str = "-"
    while True:
        page: Any = client.xrange(dead_stream, min=start, max="+", count=_PAGE)
        for dead_id, raw in page:
            letter = _parse(dead_id, raw, record_type)
            if wanted is None or wanted == letter.kind or wanted in letter.reason.lower():
                yield letter
        if len(page) < _PAGE:
            return
        start = "(" + _text(page[-1][0])  # exclusive: after the last one seen


def list_dead_letters(
    client: redis.Redis,
    dead_stream: str,
    *,
    limit: int | None = None,
    reason: str | None = None,
    record_type: type[Any] = RequestRecord,
) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    for letter in iter_dead_letters(client, dead_stream, reason=reason, record_type=record_type):
        if limit is not None and len(out) >= limit:
            break
        out.append(letter)
    return out


def count_by_kind(letters: list[DeadLetter]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.kind] = counts.get(letter.kind, 0) + 1
    return dict(sorted(counts.items()))


def replay(
    client: redis.Redis,
    stream: str,
    dead_stream: str,
    *,
    limit: int | None = None,
    reason: str | None = None,
    include_poison: bool = False,
    dry_run: bool = False,
    record_type: type[Any] = RequestRecord,
) -> ReplayResult:
    """Re-XADD up to ``limit`` matching dead letters to ``stream``, oldest first; XDEL each from
    ``dead_stream`` only after its XADD succeeded. Poison is counted and skipped unless included.
    A dry run counts what would be replayed and writes nothing."""
    result = ReplayResult()
    for letter in iter_dead_letters(client, dead_stream, reason=reason, record_type=record_type):
        if limit is not None and result.replayed + result.failed >= limit:
            break
        if letter.poison and (not include_poison or not letter.fields):
            result.skipped_poison += 1  # an entry without fields cannot be replayed at all
            continue
        if dry_run:
            result.replayed += 1
            continue
        try:
            new_id = _text(client.xadd(stream, letter.fields))  # type: ignore[arg-type]
        except redis.RedisError as exc:
            result.failed, result.error = 1, f"XADD failed: {type(exc).__name__}"
            break  # nothing changed for this entry; Redis is likely down, so stop here
        try:
            client.xdel(dead_stream, letter.dead_id)
        except redis.RedisError as exc:
            # replayed but still here: replaying it again only makes a duplicate the store absorbs
            result.failed, result.error = 1, f"XDEL failed after the XADD: {type(exc).__name__}"
            break
        result.replayed += 1
        result.replayed_ids.append((letter.dead_id, new_id))
    return result
