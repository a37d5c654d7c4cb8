"""A ClickHouse server that cannot be reached: StoreUnavailable (retry later), never a hang."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest

from infersight.store.base import RequestFilter, StoreError, StoreUnavailable
from infersight.store.clickhouse_store import ClickHouseStore
from tests.unit.store_clickhouse.helpers import T0, rec


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_closed_port_raises_store_unavailable() -> None:
    store = ClickHouseStore.from_url(f"http://127.0.0.1:{closed_port()}", database="infersight_test")
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable):
            store.migrate()
        with pytest.raises(StoreUnavailable):
            store.write_requests([rec(1, T0)])
        with pytest.raises(StoreUnavailable):
            store.count_requests(RequestFilter())
        with pytest.raises(StoreUnavailable):
            store.telemetry_around("m1", T0, timedelta(minutes=1))
    finally:
        store.close()
    assert time.monotonic() - started < 30


def test_store_unavailable_is_a_store_error() -> None:
    # callers that only know StoreError still catch it
    assert issubclass(StoreUnavailable, StoreError)


@pytest.mark.parametrize("url", ["127.0.0.1:8123", "ftp://127.0.0.1", "http://"])
def test_a_malformed_url_is_a_store_error(url: str) -> None:
    with pytest.raises(StoreError) as info:
        ClickHouseStore.from_url(url)
    assert not isinstance(info.value, StoreUnavailable)


@pytest.mark.parametrize(("code", "unavailable"), [(252, True), (241, True), (202, True), (60, False), (516, False)])
def test_server_error_codes_split_into_retry_and_fail(code: int, unavailable: bool) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    from infersight.store.clickhouse_exec import ServerExecutor

    mapped = ServerExecutor("http://127.0.0.1:1")._map(DatabaseError("boom", code=code))
    assert isinstance(mapped, StoreUnavailable) is unavailable
    assert isinstance(mapped, StoreError)
