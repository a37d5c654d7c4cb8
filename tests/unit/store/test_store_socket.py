"""The store process's socket (``store/store_socket.py``): the eval process writes through it to the
gateway's store process; a client without the key is refused; a killed store process is replaced
by the gateway and the socket's client reconnects to the new one."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from infersight.store.base import RequestFilter
from infersight.store.remote import RemoteStore, StoreProcessError
from tests.contract.test_store import T0, rec
from tests.unit.store.test_remote_store import settings


@pytest.fixture
def gateway_store(tmp_path: Path) -> Iterator[RemoteStore]:
    store = RemoteStore(settings(tmp_path), listen=True)
    try:
        yield store
    finally:
        store.close()


def test_a_second_process_writes_through_the_socket_and_the_gateway_reads_it(gateway_store: RemoteStore,
                                                                              tmp_path: Path) -> None:
    assert gateway_store.address is not None
    other = RemoteStore.connect(settings(tmp_path), gateway_store.address)
    try:
        assert other.write_requests([rec(i, T0) for i in range(3)]) == 3
        assert gateway_store.count_requests(RequestFilter()) == 3
        assert other.process.health() == {"connected": True, "connects": 1}
    finally:
        other.close()
    assert gateway_store.process.alive()  # closing the client leaves the store process to the gateway
    assert gateway_store.schema_version() > 0


def test_a_client_without_the_key_is_refused(gateway_store: RemoteStore, tmp_path: Path) -> None:
    assert gateway_store.address is not None
    wrong = RemoteStore.connect(settings(tmp_path), replace(gateway_store.address, authkey=os.urandom(32)))
    with pytest.raises(StoreProcessError, match="not reachable: AuthenticationError"):
        wrong.write_requests([rec(0, T0)])
    assert gateway_store.write_requests([rec(1, T0)]) == 1  # the store process goes on


def test_the_key_never_shows_in_the_address_repr(gateway_store: RemoteStore) -> None:
    assert gateway_store.address is not None
    assert gateway_store.address.authkey.hex() not in repr(gateway_store.address)


def test_no_socket_unless_asked(tmp_path: Path) -> None:
    store = RemoteStore(settings(tmp_path))
    try:
        assert store.address is None
    finally:
        store.close()


def test_the_client_reconnects_to_a_replaced_store_process(gateway_store: RemoteStore, tmp_path: Path) -> None:
    assert gateway_store.address is not None
    other = RemoteStore.connect(settings(tmp_path), gateway_store.address)
    try:
        assert other.write_requests([rec(0, T0)]) == 1
        pid = gateway_store.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(StoreProcessError):  # the bus that made the call keeps its batch
            other.write_requests([rec(1, T0)])
        assert gateway_store.write_requests([rec(2, T0)]) == 1  # the gateway's call starts a new one
        assert other.write_requests([rec(1, T0)]) == 1  # same address and key: the client is back
        assert other.process.health()["connects"] == 2
    finally:
        other.close()


def test_a_client_that_never_answers_holds_up_nobody_else(gateway_store: RemoteStore, tmp_path: Path) -> None:
    assert gateway_store.address is not None
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.connect(gateway_store.address.address)  # connects, then says nothing to the key challenge
    try:
        other = RemoteStore.connect(settings(tmp_path), gateway_store.address)
        try:
            assert other.write_requests([rec(0, T0)]) == 1  # accepted and served meanwhile
        finally:
            other.close()
    finally:
        mute.close()
