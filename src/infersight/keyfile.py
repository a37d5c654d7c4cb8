"""A random secret kept in a file: made once, atomically, private (0600), then read by every process.

Used for the keys that must stay the same across restarts and across the processes of one host (the
sampling draw's key, ``evaluation/sampling_key.py``; the prompt hash's, ``gateway/hash_key.py``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def parse_key(raw: bytes | str | None, size: int) -> bytes | None:
    """The key in ``raw`` (hex), None when ``raw`` is None; ValueError when it is not ``size`` bytes of hex."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    key = bytes.fromhex(text.strip())  # ValueError on anything else
    if len(key) != size:
        raise ValueError(f"a key of {size} bytes, hex-encoded, is expected")
    return key


def load_or_create_key(path: str | os.PathLike[str], size: int) -> bytes:
    """The key in ``path``, made at random first if there is none. Processes starting at once all
    keep the first one written; a damaged file raises ValueError (a new key would silently change
    what the old one decided)."""
    path = Path(path)
    try:
        found = parse_key(path.read_bytes(), size)
    except FileNotFoundError:
        found = None
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:  # a full disk fails the write: the temporary goes too (one was left at every poll)
        try:
            data = os.urandom(size).hex().encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, f"short write of {path.name}")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # whole or absent: two processes starting at once keep the first
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    key = parse_key(path.read_bytes(), size)
    assert key is not None
    return key
