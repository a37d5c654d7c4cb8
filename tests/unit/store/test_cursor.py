"""Keyset cursors: opaque, URL-safe, exact to the microsecond, and strict about what they accept."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest

from infersight.store.base import StoreError
from infersight.store.cursor import Cursor, decode_cursor, encode_cursor

AT = datetime(2026, 11, 22, 7, 20, 58, 123456, tzinfo=timezone.utc)


def test_round_trip_is_exact_and_url_safe() -> None:
    token = encode_cursor(AT, "00f067aa0ba902b7", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert decode_cursor(token) == Cursor(AT, "00f067aa0ba902b7", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert decode_cursor(token).started_at.utcoffset() is not None


def test_times_before_the_epoch_and_other_offsets() -> None:
    old = datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=timezone.utc)
    assert decode_cursor(encode_cursor(old, "s", "t")).started_at == old
    plus2 = AT.astimezone(timezone(timedelta(hours=2)))
    assert decode_cursor(encode_cursor(plus2, "s", "t")).started_at == AT


def test_a_naive_time_cannot_be_encoded() -> None:
    with pytest.raises(StoreError):
        encode_cursor(datetime(2026, 11, 22), "s", "t")


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    ["", "x", "!!!!", b64("v2|1|s|t"), b64("v1|abc|s|t"), b64("v1|1|s"), b64("v1|1||t"), b64("v1|1|s|t|u"),
     b64("v1|99999999999999999999999|s|t"), "A" * 600, base64.urlsafe_b64encode(b"\xff\xfe").decode()],
)
def test_malformed_cursors_are_invalid(token: str) -> None:
    with pytest.raises(StoreError, match="invalid cursor"):
        decode_cursor(token)
