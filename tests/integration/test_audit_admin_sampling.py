"""Audit of the sampling admin API over real HTTP (``ThreadedServer`` on 127.0.0.1): auth, validation,
forced windows that end by themselves, two gateways sharing the overrides file, a broken shared store,
and the eval breaker next to admin changes. Each test that proves a bug says in its docstring what
happened before the fix; the others fill gaps the unit suites leave open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.api.admin import AdminApi
from infersight.config import settings_from_dict
from infersight.evaluation.overrides import FileOverrides, Overrides, RedisOverrides
from infersight.evaluation.sampler import Sampler
from infersight.gateway.tenancy import TenantDirectory
from infersight.gateway.upstreams.mock import MockTransport, ScriptedResponse
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from tests.conftest import DirectBus, config_dict

ADMIN = {"authorization": "Bearer sk-admin-test"}
URL = "/api/v1/admin/sampling"
OVERRIDES = "sampling-overrides.json"
MAX_FORCED_S = 600


def _settings(storage: Path, **evaluation: Any) -> Any:
    # no eval child process: it is not what is audited here, and it costs each gateway a start-up
    data = config_dict(storage, evaluation={"max_forced_window_s": MAX_FORCED_S, "child_process": False,
                                            **evaluation})
    data["tenants"][1]["sample_rate"] = 0.3  # globex has a configured rate; acme takes the default 0.05
    return settings_from_dict(data)


@contextmanager
def gateway(storage: Path, **evaluation: Any) -> Iterator[tuple[httpx.Client, Any]]:
    """A gateway on a real socket (lifespan on: the overrides poller runs) and a client for it."""
    app = build_gateway(_settings(storage, **evaluation), transport=MockTransport(lambda r: ScriptedResponse()),
                        bus=DirectBus(), eval_bus=DirectBus())
    with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client, app


def _tenant(snapshot: dict[str, Any], tenant: str) -> dict[str, Any]:
    return next(row for row in snapshot["tenants"] if row["tenant"] == tenant)


def _eventually(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error
    return error


# --- auth ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE"])
def test_tenant_and_missing_keys_cannot_read_or_change_sampling(tmp_path: Path, method: str) -> None:
    paths = {"GET": URL, "PUT": f"{URL}/acme", "POST": f"{URL}/force", "DELETE": f"{URL}/force/acme"}
    body = {"PUT": {"rate": 1.0}, "POST": {"tenant": "acme", "duration_s": 60}}.get(method)
    with gateway(tmp_path / "data") as (client, app):
        for headers, status in (({}, 401), ({"authorization": "Bearer sk-acme-test"}, 403),
                                ({"authorization": "Bearer sk-globex-test"}, 403),
                                ({"authorization": "Bearer sk-admin-tes"}, 401),
                                ({"authorization": "Basic sk-admin-test"}, 401)):
            got = client.request(method, paths[method], json=body, headers=headers)
            error = _openai_error(got, status)
            if status == 403:
                assert error["type"] == "permission_error"
        sampler: Sampler = app.admin.sampler
        assert sampler.base_rate("acme") == 0.05 and not sampler.forced("acme")
    assert not (tmp_path / "data" / OVERRIDES).exists()  # nothing was written on anyone's behalf


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        pytest.param(b'{"rate": -0.01}', "rate", id="negative"),
        pytest.param(b'{"rate": 1.0000001}', "rate", id="above-one"),
        pytest.param(b'{"rate": "0.5"}', "rate", id="string"),
        pytest.param(b'{"rate": true}', "rate", id="boolean"),
        pytest.param(b'{"rate": [0.5]}', "rate", id="list"),
        pytest.param(b'{"rate": NaN}', None, id="nan-literal"),
        pytest.param(b'{"rate": 1e999}', None, id="infinite"),
        pytest.param(b'{}', "rate", id="missing"),
        pytest.param(b'[{"rate": 0.5}]', None, id="not-an-object"),
        pytest.param(b'{"rate": 0.5', None, id="cut-short"),
        pytest.param(b'{"rate": 0.5, "tenant": "globex"}', "tenant", id="unknown-field"),
        pytest.param(b'{"rate": 0.5, "rat": 0.9}', "rat", id="typo-field"),
    ],
)
def test_a_bad_rate_is_a_400_and_changes_nothing(tmp_path: Path, raw: bytes, param: str | None) -> None:
    """Was (unknown fields): ``{"rate": 0.5, "tenant": "globex"}`` on ``PUT .../acme`` was a 200 that
    set acme's rate and silently ignored ``tenant``; the admin believed globex had changed."""
    with gateway(tmp_path / "data") as (client, app):
        got = client.put(f"{URL}/acme", content=raw, headers={**ADMIN, "content-type": "application/json"})
        error = _openai_error(got, 400)
        if param is not None:
            assert error["param"] == param
        assert app.admin.sampler.base_rate("acme") == 0.05
        assert app.admin.sampler.base_rate("globex") == 0.3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"tenant": "acme", "duration_s": -60}, "duration_s", id="negative"),
        pytest.param({"tenant": "acme", "duration_s": 0}, "duration_s", id="zero"),
        pytest.param({"tenant": "acme", "duration_s": MAX_FORCED_S + 1}, "duration_s", id="over-max"),
        pytest.param({"tenant": "acme", "duration_s": 1e308}, "duration_s", id="huge"),
        pytest.param({"tenant": "acme", "duration_s": "900"}, "duration_s", id="string"),
        pytest.param({"tenant": "acme", "duration_s": True}, "duration_s", id="boolean"),
        pytest.param({"tenant": "acme"}, "duration_s", id="missing-duration"),
        pytest.param({"tenant": "", "duration_s": 60}, "tenant", id="empty-tenant"),
        pytest.param({"tenant": 7, "duration_s": 60}, "tenant", id="numeric-tenant"),
        pytest.param({"tenat": "acme", "duration_s": 60}, "tenat", id="typo-tenant-key"),
        pytest.param({"duration_s": 60}, "tenant", id="tenant-left-out"),
        pytest.param({"tenant": "acme", "duration_s": 60, "rate": 1}, "rate", id="unknown-field"),
    ],
)
def test_a_bad_forced_window_is_a_400_and_forces_nobody(tmp_path: Path, body: dict[str, Any], param: str) -> None:
    """Was (typo-tenant-key, tenant-left-out): ``{"tenat": "acme", "duration_s": 60}`` read the missing
    ``tenant`` as null and opened a 100% window on every tenant (judge spend on all traffic), a 200.
    Leaving ``tenant`` out now is a 400; all tenants are forced only with an explicit ``"tenant": null``."""
    with gateway(tmp_path / "data") as (client, app):
        error = _openai_error(client.post(f"{URL}/force", json=body, headers=ADMIN), 400)
        assert error["param"] == param
        sampler: Sampler = app.admin.sampler
        assert not sampler.forced("acme") and not sampler.forced("globex")
        assert client.get(URL, headers=ADMIN).json()["forced_all_until"] is None


def test_the_longest_window_and_the_all_tenants_window_are_accepted(tmp_path: Path) -> None:
    with gateway(tmp_path / "data") as (client, app):
        got = client.post(f"{URL}/force", json={"tenant": "acme", "duration_s": MAX_FORCED_S}, headers=ADMIN)
        assert got.status_code == 200 and got.json()["forced"]["tenant"] == "acme"
        assert not app.admin.sampler.forced("globex")
        everyone = client.post(f"{URL}/force", json={"tenant": None, "duration_s": 60}, headers=ADMIN)
        assert everyone.status_code == 200 and everyone.json()["forced_all_until"] is not None
        assert app.admin.sampler.forced("globex")


def test_unknown_tenants_are_404_on_every_call(tmp_path: Path) -> None:
    with gateway(tmp_path / "data") as (client, app):
        _openai_error(client.put(f"{URL}/initech", json={"rate": 0.5}, headers=ADMIN), 404)
        _openai_error(client.post(f"{URL}/force", json={"tenant": "initech", "duration_s": 60}, headers=ADMIN), 404)
        _openai_error(client.delete(f"{URL}/force/initech", headers=ADMIN), 404)
    assert not (tmp_path / "data" / OVERRIDES).exists()


def test_a_huge_body_is_a_413_before_it_is_read(tmp_path: Path) -> None:
    with gateway(tmp_path / "data") as (client, app):
        raw = b'{"rate": 0.5, "pad": "' + b"x" * (64 * 1024) + b'"}'
        _openai_error(client.put(f"{URL}/acme", content=raw, headers=ADMIN), 413)
        assert app.admin.sampler.base_rate("acme") == 0.05


# --- expiry -------------------------------------------------------------------------------------------


def test_a_forced_window_ends_by_itself_with_no_call_in_between(tmp_path: Path) -> None:
    """Nothing but time passes: no request, no admin call, no poll of a changed file.

    Was (the last line): ending the expired window was a 200, as it stays in the shared file until the
    next write; the admin read that as having ended a window that was still running."""
    with gateway(tmp_path / "data") as (client, app):
        got = client.post(f"{URL}/force", json={"tenant": "acme", "duration_s": 1.5}, headers=ADMIN).json()
        sampler: Sampler = app.admin.sampler
        assert sampler.initial("acme", "0" * 32) == "forced" and _tenant(got, "acme")["forced_until"] is not None
        assert _tenant(got, "acme")["forced_until"] == got["forced"]["until"]
        assert _eventually(lambda: not sampler.forced("acme"), within_s=10)
        assert sampler.initial("acme", "0" * 32) in (None, "random")
        assert _tenant(client.get(URL, headers=ADMIN).json(), "acme")["forced_until"] is None
        _openai_error(client.delete(f"{URL}/force/acme", headers=ADMIN), 404)  # nothing left to end


def test_the_view_shows_the_later_of_a_tenant_and_an_all_tenants_window(tmp_path: Path) -> None:
    with gateway(tmp_path / "data") as (client, _):
        client.post(f"{URL}/force", json={"tenant": "acme", "duration_s": 300}, headers=ADMIN)
        everyone = client.post(f"{URL}/force", json={"tenant": None, "duration_s": 60}, headers=ADMIN).json()
        acme, globex = _tenant(everyone, "acme"), _tenant(everyone, "globex")
        assert globex["forced_until"] == everyone["forced_all_until"]
        assert acme["forced_until"] > everyone["forced_all_until"]  # ISO-8601 in UTC sorts as time
        ended = client.delete(f"{URL}/force/acme", headers=ADMIN).json()
        assert _tenant(ended, "acme")["forced_until"] == ended["forced_all_until"]  # still under "*"


# --- two gateways sharing the overrides file ------------------------------------------------------------


def test_a_change_through_one_gateway_reaches_the_other_within_the_poll(tmp_path: Path) -> None:
    """Two gateways on one ``storage.path`` (``--workers 2``): the second sees the change by polling,
    without any call reaching it; clearing the override goes back to the configured rate on both."""
    with gateway(tmp_path / "data") as (first, a), gateway(tmp_path / "data") as (second, b):
        assert first.put(f"{URL}/globex", json={"rate": 0.9}, headers=ADMIN).status_code == 200
        assert first.post(f"{URL}/force", json={"tenant": "acme", "duration_s": 60}, headers=ADMIN).status_code == 200
        other: Sampler = b.admin.sampler
        assert _eventually(lambda: other.base_rate("globex") == 0.9 and other.forced("acme"))
        assert first.put(f"{URL}/globex", json={"rate": None}, headers=ADMIN).status_code == 200
        assert _eventually(lambda: other.base_rate("globex") == 0.3)
        row = _tenant(second.get(URL, headers=ADMIN).json(), "globex")
        assert (row["rate"], row["source"]) == (0.3, "config")


def test_concurrent_changes_through_two_gateways_both_survive(tmp_path: Path) -> None:
    with gateway(tmp_path / "data") as (first, _), gateway(tmp_path / "data") as (second, b):
        def hammer(client: httpx.Client, tenant: str) -> None:
            for i in range(1, 31):
                assert client.put(f"{URL}/{tenant}", json={"rate": i / 100}, headers=ADMIN).status_code == 200

        threads = [threading.Thread(target=hammer, args=(c, t)) for c, t in ((first, "acme"), (second, "globex"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = FileOverrides(tmp_path / "data" / OVERRIDES).load()
        assert stored is not None and stored.rates == {"acme": 0.3, "globex": 0.3}
        view = second.get(URL, headers=ADMIN).json()
        assert (_tenant(view, "acme")["rate"], _tenant(view, "globex")["rate"]) == (0.3, 0.3)


# --- a broken shared store --------------------------------------------------------------------------------


def test_a_corrupt_file_at_start_neither_crashes_nor_is_taken_as_no_overrides_for_good(tmp_path: Path) -> None:
    """A gateway that starts on a truncated file serves, shows config rates, and the next admin write
    replaces the file with a readable one every process can use."""
    path = tmp_path / "data" / OVERRIDES
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"rates": {"acme": 0.')
    with gateway(tmp_path / "data") as (client, app):
        assert client.get("/healthz").status_code == 200
        view = client.get(URL, headers=ADMIN).json()
        assert _tenant(view, "acme")["source"] == "default"
        assert client.put(f"{URL}/globex", json={"rate": 0.7}, headers=ADMIN).status_code == 200
    stored = FileOverrides(path).load()
    assert stored is not None and stored.rates == {"globex": 0.7}
    # Was: the unreadable file was written over, and whatever it held (a hand edit gone wrong, a
    # write cut short) was gone. It is kept beside the new one for whoever repairs it.
    aside = list(path.parent.glob(OVERRIDES + ".unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b'{"rates": {"acme": 0.'


def test_an_admin_call_waiting_on_the_shared_store_never_stalls_the_gateway(tmp_path: Path) -> None:
    """Was: the admin API read and wrote the shared overrides on the event loop, so while another
    process held the file's lock (or Redis did not answer) every stream of the gateway waited too."""
    import fcntl
    import os

    with gateway(tmp_path / "data") as (client, app):
        lock = tmp_path / "data" / (OVERRIDES + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another gateway process in the middle of a change
        answers: list[int] = []
        try:
            writer = threading.Thread(target=lambda: answers.append(
                client.put(f"{URL}/acme", json={"rate": 0.4}, headers=ADMIN).status_code))
            writer.start()
            time.sleep(0.3)  # the PUT is now waiting on the lock
            assert not answers
            with httpx.Client(base_url=str(client.base_url), timeout=2) as other:
                assert other.get("/healthz").status_code == 200
                completion = other.post("/v1/chat/completions", headers={"authorization": "Bearer sk-acme-test"},
                                        json={"model": "sim-large", "messages": [{"role": "user", "content": "hi"}]})
                assert completion.status_code == 200
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        writer.join(10)
        assert answers == [200] and app.admin.sampler.base_rate("acme") == 0.4


def test_a_missing_shared_value_is_not_taken_as_an_empty_one_on_the_next_write(tmp_path: Path) -> None:
    """Was: the poller kept the last overrides when the shared file (or the Redis key, after a Redis
    restart without persistence) was gone, but the next admin write started from nothing: changing
    acme silently reset globex's override on every gateway."""
    with gateway(tmp_path / "data") as (client, app):
        assert client.put(f"{URL}/globex", json={"rate": 0.9}, headers=ADMIN).status_code == 200
        (tmp_path / "data" / OVERRIDES).unlink()
        app.admin.sampler.refresh()  # the poll: keeps 0.9
        assert app.admin.sampler.base_rate("globex") == 0.9
        view = client.put(f"{URL}/acme", json={"rate": 0.2}, headers=ADMIN).json()
        assert (_tenant(view, "acme")["rate"], _tenant(view, "globex")["rate"]) == (0.2, 0.9)
    stored = FileOverrides(tmp_path / "data" / OVERRIDES).load()
    assert stored is not None and stored.rates == {"acme": 0.2, "globex": 0.9}


def test_a_write_the_store_refuses_is_a_503_in_the_openai_shape(tmp_path: Path) -> None:
    """Was: an I/O error of the shared store (here the file's path is a directory; in production a full
    disk, a read-only volume or Redis down) escaped the admin API: uvicorn answered a bare
    ``500 Internal Server Error`` in text, and the admin could not tell a bad request from a down store."""
    with gateway(tmp_path / "data") as (client, app):
        assert client.put(f"{URL}/acme", json={"rate": 0.2}, headers=ADMIN).status_code == 200
        path = tmp_path / "data" / OVERRIDES
        path.unlink()
        path.mkdir()
        error = _openai_error(client.put(f"{URL}/globex", json={"rate": 0.5}, headers=ADMIN), 503)
        assert error["type"] == "api_error"
        _openai_error(client.post(f"{URL}/force", json={"tenant": "acme", "duration_s": 60}, headers=ADMIN), 503)
        assert app.admin.sampler.base_rate("globex") == 0.3 and not app.admin.sampler.forced("acme")
        assert client.get(URL, headers=ADMIN).status_code == 200  # reading still works: the last good state


def test_redis_down_on_an_admin_write_is_a_503_and_the_state_survives(tmp_path: Path) -> None:
    """Was: a bare 500 (redis ``ConnectionError`` escaped). Scale-out shape: overrides in a Redis key."""
    from infersight.bus.redis_conn import connect
    from tests.redis_server import RedisServer, find_redis_server

    server = RedisServer(tmp_path / "redis", binary=find_redis_server())
    server.start()
    try:
        sampler = Sampler(0.05, overrides=RedisOverrides(connect(server.url), key="k"))
        api = AdminApi(sampler, TenantDirectory(_settings(tmp_path / "data")), ["acme", "globex"])
        with ThreadedServer(_with_lifespan(api)) as srv, httpx.Client(base_url=srv.base_url, timeout=10) as client:
            assert client.put(f"{URL}/acme", json={"rate": 0.4}, headers=ADMIN).status_code == 200
            server.stop()
            _openai_error(client.put(f"{URL}/globex", json={"rate": 0.5}, headers=ADMIN), 503)
            assert sampler.base_rate("acme") == 0.4  # the last good overrides stay in effect
            server.start()
            assert client.put(f"{URL}/globex", json={"rate": 0.5}, headers=ADMIN).status_code == 200
        stored = RedisOverrides(connect(server.url), key="k").load()
        assert stored == Overrides({"acme": 0.4, "globex": 0.5}, {})
    finally:
        server.stop()


def test_an_unreadable_redis_value_is_kept_aside_on_the_next_write(tmp_path: Path) -> None:
    """As the file is: the admin's change replaces the unreadable value, which stays under a key of its own."""
    from infersight.bus.redis_conn import connect
    from tests.redis_server import RedisServer, find_redis_server

    server = RedisServer(tmp_path / "redis", binary=find_redis_server())
    server.start()
    try:
        client = connect(server.url)
        client.set("k", b'{"rates": {"acme": 7}}')  # out of range: nothing the admin API writes
        store = RedisOverrides(client, key="k")
        written = store.update(lambda o: o.rates.__setitem__("globex", 0.5), Overrides())
        assert written == Overrides({"globex": 0.5}, {}) and store.load() == written
        aside = client.keys("k:unreadable-*")
        assert len(aside) == 1 and client.get(aside[0]) == b'{"rates": {"acme": 7}}'
    finally:
        server.stop()


def _with_lifespan(app: Callable[..., Any]) -> Callable[..., Any]:
    """The admin API alone on a socket (the gateway answers the ASGI lifespan for it)."""
    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while True:
            message = await receive()
            done = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{done}.complete"})
            if done == "shutdown":
                return

    return serve


# --- the eval breaker next to admin changes ---------------------------------------------------------------


def test_a_forced_window_is_not_throttled_and_the_view_says_so(tmp_path: Path) -> None:
    """Was: while the breaker was open, a forced tenant was sampled at 100% but ``GET`` showed its
    ``effective_rate`` throttled (0.05 x 0.1), as if the breaker had cut the operator's window."""
    with gateway(tmp_path / "data", breaker={"reduced_factor": 0.1}) as (client, app):
        sampler: Sampler = app.admin.sampler
        sampler.set_throttle(0.1)  # what the breaker does when it opens
        view = client.put(f"{URL}/globex", json={"rate": 0.8}, headers=ADMIN).json()
        assert _tenant(view, "globex")["rate"] == 0.8
        assert _tenant(view, "globex")["effective_rate"] == pytest.approx(0.08)  # the new rate, throttled
        view = client.post(f"{URL}/force", json={"tenant": "acme", "duration_s": 60}, headers=ADMIN).json()
        assert _tenant(view, "acme")["effective_rate"] == 1.0
        assert all(sampler.initial("acme", f"{i:032x}") == "forced" for i in range(200))
        sampler.set_throttle(1.0)  # the breaker closes: the override, not the config, comes back
        assert sampler.rate("globex") == 0.8
