"""The secret key of ``prompt_hash``: a keyed hash, so that a stored hash cannot be reversed.

A plain sha256 of a prompt is a lookup away from the prompt when the prompt is short or shaped: "yes",
a template with a CPF in it (10^9 candidates, seconds of work). An opted-out tenant keeps "only
metadata and hashes", and records go to the store, to exporters and to ClickHouse: the hash must not
give the prompt back to whoever reads them. Keyed (HMAC-SHA256 with a 32-byte key), it is as good for
what it is for (telling repeated prompts apart, ``low_cache_reuse``) and worthless without the key.

The key comes from ``$INFERSIGHT_PROMPT_HASH_KEY`` (every gateway of a scale-out deployment must be
given the same one, or each hashes the same prompt differently), else from ``prompt-hash.key`` in
``storage.path``, made on first start (32 random bytes, mode 0600) and kept, so that hashes stay
comparable across restarts and across the ``--workers`` of a host.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from infersight.config import ConfigError
from infersight.keyfile import load_or_create_key, parse_key

PROMPT_HASH_KEY_ENV = "INFERSIGHT_PROMPT_HASH_KEY"
KEY_FILE = "prompt-hash.key"
KEY_BYTES = 32
MIN_ENV_KEY_CHARS = 16


def prompt_hash_key(storage_path: str | os.PathLike[str], config: str | None = None) -> bytes:
    """The 32-byte key: from the environment when set, else the data directory's key file."""
    given = _environment_key(config)
    if given is not None:
        return given
    path = Path(storage_path) / KEY_FILE
    try:
        return load_or_create_key(path, KEY_BYTES)
    except ValueError:
        raise ConfigError(f"{path} is not a key of 64 hex digits; remove it to make a new one (prompt hashes "
                          "then change)", path=config, key="storage.path") from None


def check_prompt_hash_key(storage_path: str | os.PathLike[str], config: str | None = None) -> None:
    """What ``prompt_hash_key`` would refuse, refused before anything starts (``serve``,
    ``check-config``), making no file."""
    if _environment_key(config) is not None:
        return
    path = Path(storage_path) / KEY_FILE
    try:
        if path.exists():
            parse_key(path.read_bytes(), KEY_BYTES)
    except ValueError:
        prompt_hash_key(storage_path, config)  # raises the error naming the file


def prompt_hash_key_source(storage_path: str | os.PathLike[str], shared_bus: bool) -> str:
    """Where the key comes from, for ``check-config`` and the start-up log. With a Redis bus there
    may be other gateway hosts, and a key each host made for itself hashes the same prompt
    differently on each: said here, as nothing else would show it."""
    if os.environ.get(PROMPT_HASH_KEY_ENV):
        return f"${PROMPT_HASH_KEY_ENV}"
    where = f"{Path(storage_path) / KEY_FILE} (this host's own"
    if hosts_may_disagree(shared_bus):
        return f"{where}: gateways on other hosts hash prompts differently unless all share ${PROMPT_HASH_KEY_ENV})"
    return f"{where})"


def hosts_may_disagree(shared_bus: bool) -> bool:
    """Whether gateways on other hosts (a Redis bus) may hash prompts with keys of their own."""
    return shared_bus and not os.environ.get(PROMPT_HASH_KEY_ENV)


def _environment_key(config: str | None) -> bytes | None:
    given = os.environ.get(PROMPT_HASH_KEY_ENV, "")
    if not given:
        return None
    if len(given) < MIN_ENV_KEY_CHARS:  # a guessable key gives the prompts back as a plain hash would
        raise ConfigError(f"needs at least {MIN_ENV_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)",
                          path=config, key=f"${PROMPT_HASH_KEY_ENV}")
    return hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
