"""Audit of the query API (/api/v1) over real HTTP: pagination, filters, windows, parameters, OpenAPI.

The API is served as `infersight ingest` serves it (``IngestApp`` on a real 127.0.0.1 socket through
``ThreadedServer``) over a real DuckDB store, and ClickHouse on chdb where a backend could page
differently. Data goes in through the store API. tests/integration/test_audit_api_isolation.py covers
the tenant-isolation basics (shared trace ids, cross-tenant cursors, hostile numbers): not repeated here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from infersight.api.app import QueryApi
from infersight.config import settings_from_dict
from infersight.gateway.tenancy import TenantDirectory
from infersight.ingest.worker import IngestApp
from infersight.model import RequestRecord
from infersight.serving import ThreadedServer
from infersight.store.base import RequestFilter, Store
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.contract.conftest import open_backend

T0 = datetime(2096, 11, 20, 12, 0, tzinfo=timezone.utc)  # in the future: ClickHouse TTL keeps it
ACME = {"authorization": "Bearer sk-acme-test"}
GLOBEX = {"authorization": "Bearer sk-globex-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}
WINDOW = {"since": "2096-11-20T11:00:00Z", "until": "2096-11-20T13:00:00Z"}


def _record(i: int, at: datetime, tenant: str = "acme", *, span: int | None = None, model: str = "sim-large",
            use_case: str = "chat", status: int = 200) -> RequestRecord:
    return RequestRecord(
        trace_id=f"{i:032x}", span_id=f"{(i if span is None else span):016x}", tenant_id=tenant, model_id=model,
        backend="sim", use_case=use_case, started_at=at.isoformat(), ttft_ms=20.0 + i % 13, total_ms=200.0 + i,
        itl_ms_mean=4.0, status_code=status, prompt_tokens=50, completion_tokens=80, stream=True,
        error_type=None if status < 400 else f"upstream_{status}")


def _traffic() -> list[RequestRecord]:
    """Bursty traffic: 45 requests share one microsecond (9 of them one span id, as retried spans do),
    the rest spread over a minute, two tenants, two models, two use cases, some errors."""
    burst = [_record(i, T0, span=7 if i % 5 == 0 else None) for i in range(45)]
    spread = [_record(100 + i, T0 + timedelta(seconds=i % 60, microseconds=i % 3),
                      "acme" if i % 4 else "globex", model="sim-small" if i % 3 else "sim-large",
                      use_case="summarize" if i % 2 else "chat", status=(200, 200, 429, 500)[i % 4])
              for i in range(120)]
    return burst + spread


@contextmanager
def _serve(store: Store, tmp_path: Path) -> Iterator[httpx.Client]:
    """The query API as `infersight ingest` serves it, on 127.0.0.1."""
    settings = settings_from_dict(config_dict(tmp_path / "data"))
    tenants = TenantDirectory(settings)
    app = IngestApp(CollectorRegistry(), QueryApi(store, tenants), dict, tenants)
    with ThreadedServer(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def duck(tmp_path: Path) -> Iterator[Store]:
    store = DuckDBStore(str(tmp_path / "audit.duckdb"))
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def api(duck: Store, tmp_path: Path) -> Iterator[httpx.Client]:
    duck.write_requests(_traffic())
    with _serve(duck, tmp_path) as client:
        yield client


def _error(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a 4xx, checked for shape."""
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _walk(client: httpx.Client, params: dict[str, str], headers: dict[str, str]) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        resp = client.get("/api/v1/requests", params={**params, **({"cursor": cursor} if cursor else {})},
                          headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 500, "pagination does not terminate"


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["started_at"], row["span_id"], row["trace_id"]


# -- bugs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/api/v1/requests", {"window": "5m"}, "window"),  # /requests has no window: it listed everything
    ("/api/v1/requests", {"tenat": "globex"}, "tenat"),  # an admin's typo: every tenant's rows
    ("/api/v1/requests", {"offset": "100"}, "offset"),
    ("/api/v1/stats", {**WINDOW, "status": "500"}, "status"),  # stats has no status filter: all requests
    ("/api/v1/quality", {**WINDOW, "judge_model": "x"}, "judge_model"),
    ("/api/v1/telemetry", {**WINDOW, "gpu": "0"}, "gpu"),
    (f"/api/v1/requests/{1:032x}", {"tenant": "globex"}, "tenant"),
])
def test_an_unknown_parameter_is_a_400_naming_it(api: httpx.Client, path: str, params: dict[str, str],
                                                 param: str) -> None:
    """Before the fix unknown parameters were ignored: ``/requests?window=5m`` answered 200 with every
    row, ``/stats?status=500`` the stats of all requests. Now a 400 names the parameter (docs/api.md)."""
    resp = api.get(path, params=params, headers=ADMIN)
    assert resp.status_code == 400, resp.text[:200]
    error = _error(resp)
    assert error["param"] == param and error["code"] == "invalid_value" and "unknown" in error["message"]


def test_a_repeated_parameter_is_a_400_not_the_last_value(api: httpx.Client) -> None:
    """Before the fix ``model=sim-large&model=sim-small`` answered with sim-small's rows only (the
    last value won, the others were dropped silently)."""
    resp = api.get("/api/v1/requests?model=sim-large&model=sim-small", headers=ADMIN)
    assert resp.status_code == 400 and _error(resp)["param"] == "model"
    metrics = api.get("/api/v1/telemetry", params=[("metric", "a"), ("metric", "b"), *WINDOW.items()],
                      headers=ADMIN)
    assert metrics.status_code == 400 and "comma" in _error(metrics)["message"]


@pytest.mark.parametrize("until", ["2096-11-20T11:59:00Z", "2096-11-20T12:00:00Z"])
def test_a_request_list_window_that_ends_before_it_starts_is_a_400(api: httpx.Client, until: str) -> None:
    """Before the fix ``/requests`` with ``since`` after (or equal to) ``until`` answered 200 with no
    rows, where ``/stats`` says 400: a client that swapped the two saw "no traffic"."""
    resp = api.get("/api/v1/requests", params={"since": "2096-11-20T12:00:00Z", "until": until}, headers=ACME)
    assert resp.status_code == 400 and _error(resp)["param"] == "since"


def test_a_request_list_window_wholly_before_1970_is_an_empty_page(api: httpx.Client) -> None:
    """Both ends clamp to 1970 and compare equal: the order check must not read that as since >= until."""
    resp = api.get("/api/v1/requests", params={"since": "1960-01-01T00:00:00Z", "until": "1965-01-01T00:00:00Z"},
                   headers=ACME)
    assert resp.status_code == 200 and resp.json() == {"data": [], "next_cursor": None}


@pytest.mark.parametrize("path", ["/api/v1/stats", "/api/v1/quality", "/api/v1/telemetry", "/api/v1/diagnosis",
                                  "/api/v1/correlation"])
def test_since_and_window_together_are_a_400(api: httpx.Client, path: str) -> None:
    """Before the fix ``since`` with ``window`` silently ignored the window (stats from ``since`` to
    now, not the 5 minutes asked for). ``until`` with ``window`` stays the way to move a window back."""
    extra = {"by": "kv_cache_usage"} if path.endswith("correlation") else {}
    resp = api.get(path, params={"since": "2096-11-20T12:00:00Z", "window": "5m", **extra}, headers=ADMIN)
    assert resp.status_code == 400 and _error(resp)["param"] == "window"
    back = api.get(path, params={"until": "2096-11-20T12:01:00Z", "window": "5m", **extra}, headers=ADMIN)
    assert back.status_code == 200 and back.json()["since"] == "2096-11-20T11:56:00Z"


_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "number": (int, float), "integer": (int,),
                                            "boolean": (bool,), "null": (type(None),), "array": (list,),
                                            "object": (dict,)}


def _mismatches(value: Any, schema: dict[str, Any], spec: dict[str, Any], where: str) -> list[str]:
    """What in ``value`` the schema does not describe: types, formats and undeclared properties."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    ok = any(isinstance(value, _JSON_TYPES[k]) and not (isinstance(value, bool) and k != "boolean") for k in kinds)
    if kinds and not ok:
        return [f"{where}: {value!r} is not {kinds}"]
    if schema.get("format") == "date-time" and isinstance(value, str):
        datetime.fromisoformat(value)
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in enum"]
    out = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                out.append(f"{where}.{key}: not in the schema")
            else:
                out += _mismatches(item, schema["properties"][key], spec, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value[:50]):
            out += _mismatches(item, schema["items"], spec, f"{where}[{i}]")
    return out


def test_openapi_describes_what_the_endpoints_return(duck: Store, tmp_path: Path) -> None:
    """Before the fix the document said quality's ``first_evaluated_at``/``last_evaluated_at`` were
    numbers (they are date-time strings), left stats' ``source`` out, typed nullable group columns
    (use_case, backend, model of an eval result) as plain strings and did not mark correlation's
    ``by`` as required, though leaving it out is a 400."""
    duck.write_requests([*_traffic(), _record(900, T0, use_case=None)])  # type: ignore[arg-type]
    duck.write_rows("eval_results", [{
        "trace_id": f"{i:032x}", "span_id": f"{i:016x}", "tenant_id": "acme", "model_id": None,
        "evaluator": "checks", "evaluator_version": "v1", "dimension": "empty", "score": 1.0, "label": "pass",
        "evaluated_at": T0 + timedelta(minutes=1), "request_started_at": T0} for i in range(3)])
    duck.write_rows("telemetry", [{"ts": T0 - timedelta(seconds=s), "source": "vllm", "instance": "gpu-host-1:8000",
                                   "gpu": None, "model_id": "sim-large", "metric": "kv_cache_usage", "value": 0.5}
                                  for s in (1, 2)])
    duck.write_rows("request_content", [{"trace_id": f"{1:032x}", "span_id": f"{1:016x}", "tenant_id": "acme",
                                         "model_id": "sim-large", "started_at": T0, "prompt_text": "[EMAIL] hi",
                                         "completion_text": "ok"}])
    with _serve(duck, tmp_path) as client:
        spec = client.get("/api/v1/openapi.json").json()
        calls = {
            "/api/v1/requests": {"limit": "5"},
            "/api/v1/stats": {**WINDOW, "group_by": "tenant,model,use_case,backend", "resolution": "1m"},
            "/api/v1/quality": {**WINDOW, "group_by": "tenant,model,use_case"},
            "/api/v1/telemetry": WINDOW,
            "/api/v1/correlation": {**WINDOW, "by": "kv_cache_usage"},
            "/api/v1/diagnosis": WINDOW,
            "/api/v1/requests/{trace_id}": {},
        }
        wrong: list[str] = []
        for path, params in calls.items():
            url = path.replace("{trace_id}", f"{1:032x}")
            resp = client.get(url, params=params, headers=ADMIN)
            assert resp.status_code == 200, (path, resp.text[:200])
            schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            wrong += _mismatches(resp.json(), schema, spec, path)
            body = resp.json()
            assert body.get("data") or body.get("content"), f"{path}: nothing to check the schema against"
        by = {p["name"]: p for p in spec["paths"]["/api/v1/correlation"]["get"]["parameters"]}["by"]
        missing_by = client.get("/api/v1/correlation", params=WINDOW, headers=ADMIN)
    assert not wrong, "\n".join(wrong)
    assert missing_by.status_code == 400 and by["required"] is True


def test_openapi_bounds_are_the_bounds_enforced(api: httpx.Client) -> None:
    """The documented integer ranges are those the endpoints accept (before the fix none were stated)."""
    spec = api.get("/api/v1/openapi.json").json()
    for path, name in (("/api/v1/requests", "limit"), ("/api/v1/requests", "status"), ("/api/v1/telemetry", "limit")):
        schema = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}[name]["schema"]
        low, high = schema["minimum"], schema["maximum"]
        extra = WINDOW if path.endswith("telemetry") else {}
        for value, status in ((low, 200), (high, 200), (low - 1, 400), (high + 1, 400)):
            resp = api.get(path, params={**extra, name: str(value)}, headers=ADMIN)
            assert resp.status_code == status, (path, name, value, resp.text[:200])


def test_every_documented_parameter_is_accepted(api: httpx.Client) -> None:
    """The other half of the unknown-parameter check: nothing documented is refused as unknown."""
    spec = api.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/requests", "/api/v1/stats", "/api/v1/quality", "/api/v1/telemetry",
                 "/api/v1/correlation", "/api/v1/diagnosis"):
        for param in spec["paths"][path]["get"]["parameters"]:
            resp = api.get(path, params={param["name"]: ""}, headers=ADMIN)  # blank: the default
            if resp.status_code == 400:
                assert "unknown" not in _error(resp)["message"], (path, param["name"])


# -- gaps --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["duckdb", "clickhouse"])
@pytest.mark.parametrize(("params", "headers"), [
    ({"limit": "7"}, ACME),  # the 45-row burst straddles six page boundaries
    ({"limit": "1"}, ACME),
    ({"limit": "1000"}, ADMIN),
    ({"limit": "4", "model": "sim-small", "use_case": "summarize", "status": "500"}, ADMIN),
    ({"limit": "3", "tenant": "globex", "model": "sim-large"}, ADMIN),
    ({"limit": "6", "since": "2096-11-20T12:00:00Z", "until": "2096-11-20T12:00:30.000001Z"}, ACME),
])
def test_pages_cover_every_row_once_and_sum_to_the_count(backend: str, params: dict[str, str],
                                                         headers: dict[str, str], tmp_path: Path) -> None:
    store = open_backend(backend, tmp_path)
    store.migrate()
    try:
        store.write_requests(_traffic())
        with _serve(store, tmp_path) as client:
            pages = _walk(client, params, headers)
        tenant = params.get("tenant", "acme" if headers is ACME else None)
        since, until = (datetime.fromisoformat(params[k]) if k in params else None for k in ("since", "until"))
        flt = RequestFilter(tenant_id=tenant, model_id=params.get("model"), use_case=params.get("use_case"),
                            status_code=int(params["status"]) if "status" in params else None, since=since, until=until)
        count = store.count_requests(flt)
    finally:
        store.close()
    rows = [r for page in pages for r in page]
    limit = int(params["limit"])
    assert all(len(p) == limit for p in pages[:-1]) and 0 < len(pages[-1]) <= limit
    assert len(rows) == count > 0 and len({r["trace_id"] for r in rows}) == count
    keys = [_key(r) for r in rows]
    assert keys == sorted(keys, reverse=True), "not newest first by (started_at, span_id, trace_id)"
    if tenant is not None:
        assert {r["tenant_id"] for r in rows} == {tenant}
    for name, column in (("model", "model_id"), ("use_case", "use_case"), ("status", "status_code")):
        if name in params:
            assert {str(r[column]) for r in rows} == {params[name]}


def test_rows_arriving_between_pages_neither_repeat_nor_hide_existing_ones(duck: Store, tmp_path: Path) -> None:
    """Mid-walk writes: newer requests, requests at the very microsecond of the page's last row (with
    span ids on both sides of it) and older ones. Every row present at the start is seen exactly once."""
    duck.write_requests(_traffic())
    with _serve(duck, tmp_path) as client:
        before = {r["trace_id"] for p in _walk(client, {"limit": "1000"}, ACME) for r in p}
        seen: list[dict[str, Any]] = []
        cursor, n = None, 0
        while True:
            body = client.get("/api/v1/requests", params={"limit": "8", **({"cursor": cursor} if cursor else {})},
                              headers=ACME).json()
            seen += body["data"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
            at = datetime.fromisoformat(body["data"][-1]["started_at"])
            n += 1
            duck.write_requests([_record(1000 + 10 * n, at + timedelta(minutes=5)),
                                 _record(1001 + 10 * n, at, span=0),
                                 _record(1002 + 10 * n, at, span=(1 << 60) + n),
                                 _record(1003 + 10 * n, at - timedelta(hours=1))])
    ids = [r["trace_id"] for r in seen]
    assert len(ids) == len(set(ids)), "a row came twice"
    assert before <= set(ids), f"rows present from the start were skipped: {sorted(before - set(ids))[:5]}"
    keys = [_key(r) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_one_instant_in_every_spelling_selects_the_same_rows(api: httpx.Client) -> None:
    """``Z``, ``+00:00``, no offset (UTC), another offset, a ``+`` left unencoded (it arrives as a
    space) and a space between date and time all name 12:00:30 UTC."""
    spellings = ["2096-11-20T12:00:30Z", "2096-11-20T12:00:30+00:00", "2096-11-20T12:00:30",
                 "2096-11-20T17:30:30+05:30", "2096-11-20T07:00:30-05:00", "2096-11-20 12:00:30Z"]
    answers = []
    for text in spellings:
        resp = api.get("/api/v1/requests", params={"since": text, "limit": "1000"}, headers=ADMIN)
        assert resp.status_code == 200, (text, resp.text)
        answers.append(sorted(r["trace_id"] for r in resp.json()["data"]))
    raw = api.get("/api/v1/requests?since=2096-11-20T12:00:30+00:00&limit=1000", headers=ADMIN)
    answers.append(sorted(r["trace_id"] for r in raw.json()["data"]))
    assert all(a == answers[0] for a in answers) and 0 < len(answers[0]) < 165
    stats = [api.get("/api/v1/stats", params={"since": s, "until": "2096-11-20T14:00:00+01:00"}, headers=ADMIN)
             .json()["data"][0]["requests"] for s in spellings]
    assert stats == [len(answers[0])] * len(spellings)


@pytest.mark.parametrize("limit", ["1.5", "1e2", "ten", " 5", "0x10", "0"])
def test_a_limit_that_is_not_a_whole_number_in_range_is_a_400(api: httpx.Client, limit: str) -> None:
    resp = api.get("/api/v1/requests", params={"limit": limit}, headers=ACME)
    assert resp.status_code == 400 and _error(resp)["param"] == "limit"


def test_a_blank_limit_is_the_default_page(api: httpx.Client) -> None:
    body = api.get("/api/v1/requests", params={"limit": ""}, headers=ADMIN).json()
    assert len(body["data"]) == 100 and body["next_cursor"] is not None


def test_tampered_cursors_are_a_400_or_a_page_of_ones_own_rows_never_a_500(api: httpx.Client) -> None:
    """Every prefix of a real cursor, every one-character change, and well-formed tokens carrying odd
    fields (NUL, quotes, huge or negative times, extra fields)."""
    token = api.get("/api/v1/requests", params={"limit": "3"}, headers=ACME).json()["next_cursor"]
    assert token
    variants = {token[:i] for i in range(1, len(token))}
    variants |= {token[:i] + c + token[i + 1:] for i in range(len(token)) for c in "A_-"}
    odd = ["v1|0|\x00|'", "v1|-62135596800000000|a|b", "v1|253402300800000000|a|b", "v1|1|a|b|c", "v2|1|a|b",
           "v1||a|b", "v1|1||b", "v1|1|a\\|b", "v1|1_0|a|b", "\xff\xfe"]
    variants |= {base64.urlsafe_b64encode(o.encode("utf-8", "surrogatepass")).decode().rstrip("=") for o in odd}
    variants |= {token + "=", token + "==", "x" * 600, token.upper()}
    wrong = []
    for variant in sorted(variants):
        resp = api.get("/api/v1/requests", params={"cursor": variant, "limit": "1000"}, headers=ACME)
        if resp.status_code == 200:
            if any(r["tenant_id"] != "acme" for r in resp.json()["data"]):
                wrong.append((variant, "another tenant's rows"))
        elif resp.status_code != 400 or _error(resp)["param"] != "cursor":
            wrong.append((variant, resp.status_code, resp.text[:120]))
    assert not wrong, wrong


def test_empty_results_have_the_documented_shape(api: httpx.Client) -> None:
    """A window with no traffic: stats without group_by is one zero row, grouped stats and quality are
    empty lists, the request list an empty page; a tenant key gets the same shape."""
    empty = {"since": "2096-11-21T00:00:00Z", "until": "2096-11-21T01:00:00Z"}
    for headers in (ADMIN, GLOBEX):
        (row,) = api.get("/api/v1/stats", params=empty, headers=headers).json()["data"]
        assert row["requests"] == 0 and row["errors"] == 0 and row["ttft_ms_p50"] is None
        assert row["prompt_tokens_sum"] == 0 and row["completion_tokens_sum"] == 0
        assert api.get("/api/v1/stats", params={**empty, "group_by": "model"}, headers=headers).json()["data"] == []
        assert api.get("/api/v1/stats", params={**empty, "resolution": "5m"}, headers=headers).json()["data"] == []
        assert api.get("/api/v1/quality", params=empty, headers=headers).json()["data"] == []
        page = api.get("/api/v1/requests", params=empty, headers=headers).json()
        assert page == {"data": [], "next_cursor": None}


def test_admin_and_tenant_views_add_up(api: httpx.Client) -> None:
    """An admin's list and stats are the union of the tenants' own; ``tenant=`` gives an admin exactly
    a tenant's view, and a tenant naming itself changes nothing."""
    def ids(params: dict[str, str], headers: dict[str, str]) -> set[str]:
        return {r["trace_id"] for p in _walk(api, {"limit": "1000", **params}, headers) for r in p}

    acme, globex, everyone = ids({}, ACME), ids({}, GLOBEX), ids({}, ADMIN)
    assert acme and globex and acme.isdisjoint(globex) and acme | globex == everyone
    assert ids({"tenant": "globex"}, ADMIN) == globex and ids({"tenant": "acme"}, ACME) == acme

    def requests(headers: dict[str, str], **extra: str) -> int:
        return sum(r["requests"] for r in api.get("/api/v1/stats", params={**WINDOW, **extra},
                                                  headers=headers).json()["data"])

    assert requests(ADMIN) == len(everyone) == requests(ACME) + requests(GLOBEX)
    assert requests(ADMIN, tenant="globex") == len(globex)
