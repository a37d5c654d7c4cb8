"""Opaque keyset cursors for ``Store.list_requests``.

A page ends at a row; the next page starts strictly after its sort key
``(started_at, span_id, trace_id)`` in descending order. Keyset (not OFFSET) paging is why a cursor
stays valid when newer rows arrive between pages and why deep pages cost no more than the first.
``trace_id`` breaks ties between spans that share a start time and a span id, so the order is total.

The token is URL-safe base64 of ``v1|<epoch microseconds>|<span_id>|<trace_id>``: clients must treat
it as opaque; the version prefix lets the format change without misreading old tokens.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from infersight.store.base import InvalidQuery

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_VERSION = "v1"
_MAX_LEN = 512


class Cursor(NamedTuple):
    """Where the previous page ended: rows sorting strictly after this come next."""

    started_at: datetime  # aware UTC
    span_id: str
    trace_id: str


def encode_cursor(started_at: datetime, span_id: str, trace_id: str) -> str:
    """The cursor for a page whose last row has this sort key."""
    if started_at.tzinfo is None:
        raise InvalidQuery("cursor time must be timezone-aware")
    micros = (started_at - _EPOCH) // timedelta(microseconds=1)
    raw = f"{_VERSION}|{micros}|{span_id}|{trace_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """Parse a token from ``encode_cursor``; anything else raises ``InvalidQuery("invalid cursor")`` (a ``StoreError``)."""
    try:
        if not token or len(token) > _MAX_LEN:
            raise ValueError
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
        version, micros, span_id, trace_id = raw.split("|")
        if version != _VERSION or not span_id:
            raise ValueError
        started_at = _EPOCH + timedelta(microseconds=int(micros))
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise InvalidQuery("invalid cursor") from None
    return Cursor(started_at, span_id, trace_id)
