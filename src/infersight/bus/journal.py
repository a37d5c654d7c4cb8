"""The write-ahead journal: the bus's disk spool.

Why it exists: ``Bus.publish`` runs on the gateway's event loop and must not wait for a store, yet a
record must survive the process being SIGKILLed the moment publish returns. So publish appends one
orjson line to the journal with a single ``os.write`` on an ``O_APPEND`` descriptor (no fsync: the
bytes sit in the kernel's page cache, which outlives the process but not the machine), and the bus's
writer thread delivers from memory, or reads back from here when memory is full or after a restart.

Several processes may share one journal root (``serve --workers N`` points every worker at the same
``spool/``): each claims its own slot, the lowest one no live process holds, so a restarted worker
takes over the slot its dead predecessor left. On start a process also adopts the segments of any
other slot that no live process holds (the worker count shrank), so nothing stays stranded.
Layout::

    spool/slot-000/LOCK                      flock()ed by the owning process (the kernel frees it at exit)
    spool/slot-000/journal-000000000007.jsonl segments, one RequestRecord.to_dict() per line
    spool/slot-000/checkpoint.json           {"seq", "offset", "line"}: everything before it was delivered
    spool/slot-000/dead-letter/journal-000000000007.jsonl   unreadable lines, with line number and reason

Crash consistency rests on one invariant, kept by the bus: records are delivered in journal order.
So a segment is deleted (``ack``) only when the delivery point has moved past its end, and the
checkpoint (written after each delivered batch, atomically by rename) only ever points at records
already delivered. After a crash, replay restarts at the checkpoint: at worst it delivers again a
batch whose checkpoint was not yet written, which the store's idempotent (trace_id, span_id) writes
absorb. A torn or corrupt line is moved to dead-letter/ and counted; the lines after it still flow.

``max_bytes`` bounds the *backlog*: the bytes from the delivery point (the last checkpoint) onward,
not records already delivered that still sit in a segment nobody deleted yet. The files stay
bounded too: with a cap, a segment rotates at an eighth of it (or ``segment_bytes``, if smaller), so
what was delivered and waits for its segment's ``ack`` is at most about that much.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from infersight.model import RequestRecord

log = logging.getLogger("infersight.bus.journal")

_SEGMENT = re.compile(r"^journal-(\d{12})\.jsonl$")
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_READ_CHUNK = 1 << 20
_SEGMENTS_PER_CAP = 8  # with max_bytes, segments rotate at max_bytes / 8 at most


class JournalLocked(RuntimeError):
    """Every slot of this journal root is held by a live process."""


class JournalFull(OSError):
    """The undelivered backlog reached ``max_bytes``: the caller keeps the record in memory or drops it."""


class Position(NamedTuple):
    """A point in the journal: ``offset`` bytes and ``line`` lines into segment ``seq``."""

    seq: int
    offset: int
    line: int


class Journal:
    """Segmented append-only record log; ``append`` is thread-safe, reads belong to one thread."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 8 << 20,
        segment_age_s: float = 60.0,
        max_bytes: int | None = None,
        record_type: type[Any] = RequestRecord,
        carry: tuple[str, ...] = (),
    ) -> None:
        self.root = Path(directory)
        # append-only files of the journal's owner kept in its slot (the eval process's unwritten
        # judge spend): a departed slot's are appended to ours when its segments are adopted
        self._carry = carry
        self._record_type = record_type  # what lines decode to: RequestRecord, or EvalTask on the eval bus
        self.root.mkdir(parents=True, exist_ok=True)
        self.directory, self._lock_fd = self._claim_slot()
        self.dead_letter_dir = self.directory / "dead-letter"
        # With a cap, segments are small beside it: a delivered segment is deleted only whole (ack),
        # so the files hold at most the backlog (<= max_bytes) plus about one segment delivered.
        if max_bytes is not None:
            segment_bytes = min(segment_bytes, max(1, max_bytes // _SEGMENTS_PER_CAP))
        self._segment_bytes = segment_bytes
        self._segment_age_s = segment_age_s
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self.dead_lettered = 0
        existing = _segments(self.directory)
        self._sealed: list[int] = existing
        self._sizes = {seq: self._path(seq).stat().st_size for seq in existing}  # sealed segments
        # Numbers never repeat, even after every segment was deleted: the checkpoint names one, and
        # a reused number would make a new segment look already delivered.
        checkpoint = self.checkpointed()
        self._seq = max([*existing[-1:], *([checkpoint.seq] if checkpoint else [])], default=0) + 1
        self._adopt_orphans()
        self._bytes = sum(self._sizes.values())  # on disk, all segments not yet acked
        #: segments below this were left by an earlier process: reading them back is "replay"
        self.first_seq = self._seq
        self._fd = -1
        self._size = 0
        self._lines = 0
        self._opened_at = 0.0
        # The delivery point (the last checkpoint) and the bytes on disk before it: delivered, only
        # waiting for their segment's ack. ``_bytes - _passed`` is the backlog, what max_bytes bounds.
        self._delivered = checkpoint
        self._passed = self._passed_locked(checkpoint) if checkpoint is not None else 0

    # -- writing (any thread) --------------------------------------------------------------------

    def append(self, record: RequestRecord) -> tuple[int, int, int, int]:
        """Write one record; returns ``(seq, start, end, line_index)``. Raises OSError on I/O failure.

        orjson serializes the slotted dataclass directly, with the same keys as ``to_dict``.
        """
        data = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._lock_fd < 0:
                raise OSError(errno.EBADF, "the journal is closed")
            if self._max_bytes is not None and self._bytes - self._passed + len(data) > self._max_bytes:
                raise JournalFull(
                    errno.ENOSPC,
                    f"journal holds {self._bytes - self._passed} undelivered bytes (max_bytes {self._max_bytes})",
                )
            if self._fd < 0:
                self._open_active()
            elif self._size >= self._segment_bytes or time.monotonic() - self._opened_at >= self._segment_age_s:
                self._rotate_locked()
                self._open_active()
            start = self._size
            written = 0
            try:
                while written < len(data):  # a short write (disk full) is finished or fails loudly
                    written += os.write(self._fd, data[written:])
            except OSError:
                # Whatever part of the line landed stays at the end of a sealed segment, where a
                # reader will dead-letter it; the next append starts a clean segment.
                self._size += written
                self._bytes += written
                self._rotate_locked()
                raise
            self._size += len(data)
            self._bytes += len(data)
            self._lines += 1
            return self._seq, start, self._size, self._lines - 1

    def rotate(self) -> None:
        """Seal the active segment (if it holds anything); the next append opens a new one."""
        with self._lock:
            self._rotate_locked()

    def _open_active(self) -> None:
        self._fd = os.open(self._path(self._seq), _OPEN_FLAGS, 0o600)
        self._size = 0
        self._lines = 0
        self._opened_at = time.monotonic()

    def _rotate_locked(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._sealed.append(self._seq)
            self._sizes[self._seq] = self._size
            self._seq += 1
            self._size = 0
            self._lines = 0

    # -- bookkeeping -----------------------------------------------------------------------------

    @property
    def active_seq(self) -> int:
        return self._seq

    def active_end(self) -> Position:
        """Where the next append will land: readers must stop here (a concurrent write may be torn)."""
        with self._lock:
            return Position(self._seq, self._size, self._lines)

    def readable_end(self, seq: int) -> int | None:
        """The committed size of ``seq`` if it is the active segment (read no further), else None."""
        with self._lock:
            return self._size if seq == self._seq else None

    @property
    def size_bytes(self) -> int:
        """Bytes in all segments not yet acked (the spool's size on disk)."""
        return self._bytes

    @property
    def backlog_bytes(self) -> int:
        """Bytes from the delivery point (the last checkpoint) onward: what ``max_bytes`` bounds."""
        return self._bytes - self._passed

    def active_age_s(self) -> float:
        return time.monotonic() - self._opened_at if self._fd >= 0 else 0.0

    def pending(self) -> list[int]:
        """Segments not yet acked, oldest first (the active one included once it holds data)."""
        with self._lock:
            return [*self._sealed, *([self._seq] if self._fd >= 0 else [])]

    def ack(self, seq: int) -> None:
        """Delete a sealed segment whose every record has been delivered."""
        with self._lock:
            if seq == self._seq and self._fd >= 0:
                raise ValueError(f"segment {seq} is still being written; rotate() first")
            if seq in self._sealed:
                self._sealed.remove(seq)
                size = self._sizes.pop(seq, 0)
                self._bytes -= size
                delivered = self._delivered
                if delivered is not None and seq <= delivered.seq:  # its passed part leaves with it
                    self._passed -= size if seq < delivered.seq else min(delivered.offset, size)
        self._path(seq).unlink(missing_ok=True)

    def checkpoint(self, position: Position) -> None:
        """Record that everything before ``position`` was delivered (write + rename: never torn).

        From then on the bytes before it no longer count against ``max_bytes``.
        """
        tmp = self.directory / "checkpoint.json.tmp"
        tmp.write_bytes(orjson.dumps(position._asdict()))
        os.replace(tmp, self.directory / "checkpoint.json")
        with self._lock:
            self._delivered = position
            self._passed = self._passed_locked(position)

    def _passed_locked(self, position: Position) -> int:
        """Bytes on disk before ``position``: whole segments before its own, and its offset into that."""
        passed = sum(size for seq, size in self._sizes.items() if seq < position.seq)
        if position.seq in self._sizes:
            passed += min(position.offset, self._sizes[position.seq])
        elif position.seq == self._seq and self._fd >= 0:
            passed += min(position.offset, self._size)
        return passed

    def checkpointed(self) -> Position | None:
        return _read_checkpoint(self.directory)

    def next_segment(self, seq: int) -> int:
        """The first pending segment after ``seq``, or the active one."""
        with self._lock:
            return next((s for s in self._sealed if s > seq), self._seq)

    def is_sealed(self, seq: int) -> bool:
        return seq < self._seq

    # -- reading (the bus's writer thread) -------------------------------------------------------

    def read_batch(
        self, start: Position, max_records: int, end_offset: int | None = None
    ) -> tuple[list[tuple[RequestRecord, Position]], Position, bool]:
        """Up to ``max_records`` records from ``start``; returns (records with their end positions,
        the position after them, whether the segment is exhausted up to ``end_offset`` or its end).

        Unparsable lines go to dead-letter/ (logged with file and line number, counted) and are
        skipped. In a sealed segment a last line without its newline is torn, so it is dead-lettered
        too; in the active segment pass ``end_offset`` from ``active_end`` to stay clear of writes.
        """
        path = self._path(start.seq)
        out: list[tuple[RequestRecord, Position]] = []
        offset, line = start.offset, start.line
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return out, start, True
        with handle:
            handle.seek(offset)
            buffer = b""
            while len(out) < max_records:
                want = _READ_CHUNK if end_offset is None else min(_READ_CHUNK, end_offset - offset - len(buffer))
                chunk = handle.read(want) if want > 0 else b""
                if not chunk:
                    if buffer and end_offset is None:  # a torn last line in a sealed segment
                        self._dead_letter(start.seq, line, offset, buffer, "truncated line (no newline)")
                        offset, line = offset + len(buffer), line + 1
                    return out, Position(start.seq, offset, line), True
                buffer += chunk
                lines = buffer.split(b"\n")
                buffer = lines.pop()
                for raw in lines:
                    if len(out) >= max_records:  # the rest is read again next time
                        return out, Position(start.seq, offset, line), False
                    offset += len(raw) + 1
                    line += 1
                    record = self._decode(start.seq, line - 1, offset - len(raw) - 1, raw)
                    if record is not None:
                        out.append((record, Position(start.seq, offset, line)))
            return out, Position(start.seq, offset, line), False

    def read(self, seq: int) -> Iterator[RequestRecord]:
        """Every readable record of one segment (corrupt lines are dead-lettered on the way)."""
        position = Position(seq, 0, 0)
        end = self.active_end().offset if seq == self._seq else None
        while True:
            batch, position, done = self.read_batch(position, 1024, end)
            yield from (record for record, _ in batch)
            if done:
                return

    def _decode(self, seq: int, line: int, offset: int, raw: bytes) -> RequestRecord | None:
        if not raw.strip():
            return None
        try:
            data = orjson.loads(raw)
            identity = getattr(self._record_type, "IDENTITY", ("trace_id",))  # TelemetrySample has no trace
            if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in identity):
                raise TypeError("not a record")
            return self._record_type.from_dict(data)
        except (ValueError, TypeError) as exc:
            # the exception's text can quote the record: name only its type
            self._dead_letter(seq, line, offset, raw, f"unparsable record ({type(exc).__name__})")
            return None

    def _dead_letter(self, seq: int, line: int, offset: int, raw: bytes, reason: str) -> None:
        self.dead_lettered += 1
        name = self._path(seq).name
        log.error(
            "journal line unreadable; moved to dead-letter",
            extra={"file": name, "line": line + 1, "offset": offset, "bytes": len(raw), "reason": reason},
        )
        entry = {"file": name, "line": line + 1, "offset": offset, "reason": reason}
        entry["raw"] = raw.decode("utf-8", "backslashreplace")
        try:
            self.dead_letter_dir.mkdir(exist_ok=True)
            fd = os.open(self.dead_letter_dir / name, _OPEN_FLAGS, 0o600)
            try:
                os.write(fd, orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            finally:
                os.close(fd)
        except OSError:
            log.exception("could not write the dead-letter entry", extra={"file": name, "line": line + 1})

    def dead_letter_record(self, record: Any, reason: str) -> None:
        """Keep a record an exporter refused (the bus gave up on it) in ``dead-letter/refused.jsonl``,
        with the reason, beside the unreadable lines. Not counted here: the bus counts it."""
        entry: dict[str, Any] = {"reason": reason, "dead_at": round(time.time(), 3)}
        try:
            line = orjson.dumps({**entry, "record": record}, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # a value JSON cannot hold (e.g. an integer beyond 64 bits): keep its repr
            line = orjson.dumps({**entry, "record_repr": repr(record)[:100_000]}, option=orjson.OPT_APPEND_NEWLINE)
        try:
            self.dead_letter_dir.mkdir(exist_ok=True)
            fd = os.open(self.dead_letter_dir / "refused.jsonl", _OPEN_FLAGS, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            log.exception("could not write the dead-letter entry", extra={"file": "refused.jsonl"})

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the active segment (kept: it is not known to be delivered) and release the lock."""
        with self._lock:
            if self._fd >= 0:
                self._rotate_locked()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = -1

    def _claim_slot(self) -> tuple[Path, int]:
        """The lowest slot no live process holds; its flock is ours until close or exit."""
        for index in range(4096):
            slot = self.root / f"slot-{index:03d}"
            slot.mkdir(exist_ok=True)
            fd = _try_lock(slot)
            if fd >= 0:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                return slot, fd
        raise JournalLocked(f"every slot of journal {self.root} is held by a live process")

    def _adopt_orphans(self) -> None:
        """Move the undelivered segments of slots no live process holds into ours, after our own.

        Crash-safe: each segment is renamed (or, for the checkpointed one, its undelivered tail is
        copied) before the source is removed, so a crash half way costs duplicates, never records.
        Segments in the journal's root folder (with its LOCK and checkpoint there) are what builds
        before slots wrote: adopted the same way, so an upgrade loses none of them.
        """
        legacy = [self.root] if _segments(self.root) else []
        for slot in legacy + sorted(p for p in self.root.glob("slot-*") if p != self.directory):
            fd = _try_lock(slot)
            if fd < 0:
                continue  # a live process owns it
            try:
                theirs = _segments(slot)
                checkpoint = _read_checkpoint(slot)
                for seq in theirs:
                    source = slot / f"journal-{seq:012d}.jsonl"
                    if checkpoint is not None and seq < checkpoint.seq:
                        source.unlink(missing_ok=True)  # delivered already
                        continue
                    target = self._path(self._seq)
                    if checkpoint is not None and seq == checkpoint.seq and checkpoint.offset > 0:
                        with open(source, "rb") as src:
                            src.seek(checkpoint.offset)
                            tail = src.read()
                        if tail:
                            _write_private(target, tail)  # 0600 like every segment: it holds records
                        source.unlink()
                        if not tail:
                            continue
                    else:
                        os.replace(source, target)
                    self._sealed.append(self._seq)
                    self._sizes[self._seq] = target.stat().st_size
                    self._seq += 1
                if theirs:
                    log.warning(
                        "adopted the journal of a departed process", extra={"slot": slot.name, "segments": len(theirs)}
                    )
                (slot / "checkpoint.json").unlink(missing_ok=True)
                self._carry_over(slot)
            finally:
                os.close(fd)

    def _carry_over(self, slot: Path) -> None:
        """Append a departed slot's carried files to ours, then remove them (a crash in between
        repeats lines, never loses them)."""
        for name in self._carry:
            source = slot / name
            try:
                data = source.read_bytes()
            except FileNotFoundError:
                continue
            if data:
                if not data.endswith(b"\n"):
                    data += b"\n"  # a line the kill cut stays one bad line, not glued to the next
                fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            source.unlink()

    def _path(self, seq: int) -> Path:
        return self.directory / f"journal-{seq:012d}.jsonl"


def _segments(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _SEGMENT.match(p.name)))


def _read_checkpoint(directory: Path) -> Position | None:
    try:
        data = orjson.loads((directory / "checkpoint.json").read_bytes())
        return Position(int(data["seq"]), int(data["offset"]), int(data["line"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: replay from the oldest segment (duplicates are safe)


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only (``Path.write_bytes`` follows the umask: 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _try_lock(slot: Path) -> int:
    """An flock()ed descriptor on ``slot/LOCK``, or -1 when a live process holds it."""
    fd = os.open(slot / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return -1
    return fd
