"""Audit of the numbers the query API serves: each figure recomputed here, independently, in plain Python.

Stats (raw and rollups), the latency-by-load correlation (exact as-of join and hourly rollups) and the
diagnosis inputs, on both engines (DuckDB, and ClickHouse embedded through chdb), as the contract suite
sets them up. The reference implementations below follow the definitions in docs/store.md and
docs/telemetry.md, not the stores' SQL.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.api.app import QueryApi
from infersight.gateway.tenancy import TenantDirectory
from infersight.model import RequestRecord
from infersight.store import telemetry_sql
from infersight.store.base import STAT_FIELDS, StatsQuery, Store
from infersight.store.sketch import ALPHA
from infersight.store.telemetry_sql import CORRELATION_METRICS, NO_SAMPLE, CorrelationQuery, DiagnosisQuery
from infersight.telemetry.diagnosis import DiagnosisSettings, contention
from tests.contract.conftest import open_backend
from tests.contract.test_store import T0, rec
from tests.contract.test_store_stats import quantile  # R-7, numpy's default
from tests.integration.test_audit_store import store  # noqa: F401 - the fixture, on both engines

ENGINES = ["duckdb", "clickhouse"]
HOUR = timedelta(hours=1)
STALE = timedelta(seconds=20)


# -- references -------------------------------------------------------------------------------------


def at(r: RequestRecord) -> datetime:
    return datetime.fromisoformat(str(r.started_at))


def failed(r: RequestRecord) -> bool:
    return r.status_code >= 400 or r.error_type is not None


def stats_reference(records: list[RequestRecord], since: datetime, until: datetime) -> dict[str, Any]:
    rs = [r for r in records if since <= at(r) < until]

    def known(name: str) -> list[Any]:
        return [getattr(r, name) for r in rs if getattr(r, name) is not None]

    out: dict[str, Any] = {"requests": len(rs), "errors": sum(failed(r) for r in rs)}
    for metric, column in (("ttft_ms", "ttft_ms"), ("itl_ms", "itl_ms_mean"), ("total_ms", "total_ms")):
        for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            out[f"{metric}_{label}"] = quantile(known(column), q)
    tps = known("output_tokens_per_s")
    out["output_tokens_per_s_mean"] = sum(tps) / len(tps) if tps else None
    out["prompt_tokens_sum"] = sum(known("prompt_tokens"))
    out["completion_tokens_sum"] = sum(known("completion_tokens"))
    return out


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def correlation_reference(samples: list[dict[str, Any]], records: list[RequestRecord],
                          q: CorrelationQuery) -> dict[str, dict[str, Any]]:
    """The as-of join of docs/telemetry.md, request by request.

    A request joins the latest sample of ``q.by`` for its model at or before its start: its own
    instance's series when that instance reported samples of the model in the request's hour (or in
    the ``max_staleness`` before it), else the model-wide series (max over instances at each instant).
    Samples of one instance at one instant (its GPUs) count as their max; unlabelled samples belong to
    the models their instance reported. Older than ``max_staleness``, or none: ``no_sample``.
    """
    buckets = CORRELATION_METRICS[q.by]
    models_of: dict[str, set[str]] = {}
    for s in samples:
        if s["model_id"] is not None:
            models_of.setdefault(s["instance"], set()).add(s["model_id"])
    series: dict[tuple[str, str], dict[datetime, float]] = {}
    for s in samples:
        if s["metric"] != q.by:
            continue
        for model in ([s["model_id"]] if s["model_id"] is not None else sorted(models_of.get(s["instance"], ()))):
            for key in ((model, s["instance"]), (model, "")):
                points = series.setdefault(key, {})
                points[s["ts"]] = max(points.get(s["ts"], -math.inf), s["value"])

    def reports(model: str, instance: str, hour: datetime) -> bool:
        return any(hour - q.max_staleness <= t < hour + HOUR for t in series.get((model, instance), {}))

    chosen: dict[int, list[RequestRecord]] = {}
    for r in records:
        t = at(r)
        if not (q.since <= t < q.until) or (q.tenant_id and r.tenant_id != q.tenant_id):
            continue
        if (q.model_id and r.model_id != q.model_id) or (q.instance and r.instance != q.instance):
            continue
        own = r.instance is not None and reports(r.model_id, r.instance, _floor_hour(t))
        points = series.get((r.model_id, r.instance if own else ""), {})
        before = [p for p in points if p <= t]
        bucket = -1
        if before and t - max(before) <= q.max_staleness:
            value = points[max(before)]
            bucket = next((i for i, b in enumerate(buckets[:-1]) if b.hi is not None and value < b.hi),
                          len(buckets) - 1)
        chosen.setdefault(bucket, []).append(r)
    total = sum(len(v) for v in chosen.values())
    out = {}
    for i, label in [*((i, b.label) for i, b in enumerate(buckets)), (-1, NO_SAMPLE)]:
        rs = chosen.get(i, [])
        ttft = [r.ttft_ms for r in rs if r.ttft_ms is not None]
        itl = [r.itl_ms_mean for r in rs if r.itl_ms_mean is not None]
        out[label] = {"requests": len(rs), "errors": sum(failed(r) for r in rs),
                      "share": len(rs) / total if total else 0.0,
                      "ttft_ms_p50": quantile(ttft, 0.5), "ttft_ms_p99": quantile(ttft, 0.99),
                      "itl_ms_p50": quantile(itl, 0.5), "itl_ms_p99": quantile(itl, 0.99)}
    return out


def assert_close(got: Any, want: Any, rel: float, what: str) -> None:
    if want is None or got is None:
        assert got is None and want is None, f"{what}: got {got}, want {want}"
    elif isinstance(want, int) and not isinstance(want, bool):
        assert got == want, f"{what}: got {got}, want {want}"
    else:
        assert got == pytest.approx(want, rel=rel, abs=1e-9), f"{what}: got {got}, want {want}"


def assert_correlation(rows: list[dict[str, Any]], want: dict[str, dict[str, Any]], rel: float, tag: str) -> None:
    assert [r["bucket"] for r in rows] == list(want), tag
    for row in rows:
        for name, value in want[row["bucket"]].items():
            assert_close(row[name], value, rel, f"{tag} {row['bucket']} {name}")


def sample(ts: datetime, metric: str, value: float, instance: str, model: str | None = "m1",
           gpu: str | None = None) -> dict[str, Any]:
    return {"ts": ts, "source": "nvml" if model is None else "vllm", "instance": instance, "gpu": gpu,
            "model_id": model, "metric": metric, "value": value}


# -- stats ------------------------------------------------------------------------------------------


def traffic(n: int, hours: int, seed: int) -> list[RequestRecord]:
    """Varied records: non-streamed ones without TTFT or ITL, both kinds of errors, client disconnects,
    missing token counts, times with microseconds, a few before the windows used below."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        status = rng.choice([200] * 8 + [429, 500, 499])
        stream = rng.random() < 0.7
        out.append(rec(
            i, T0 + timedelta(seconds=rng.uniform(-1800, hours * 3600), microseconds=rng.randint(0, 999_999)),
            tenant=rng.choice(["acme", "globex"]), model=rng.choice(["m1", "m2"]), status_code=status,
            error_type="client_disconnected" if status == 499 else None, stream=stream,
            ttft_ms=rng.lognormvariate(4, 0.8) if stream else None,
            itl_ms_mean=rng.lognormvariate(2.5, 0.4) if stream and rng.random() < 0.9 else None,
            total_ms=rng.lognormvariate(6.5, 0.5), output_tokens_per_s=None if rng.random() < 0.2 else rng.uniform(5, 90),
            prompt_tokens=rng.randint(1, 900), completion_tokens=None if rng.random() < 0.1 else rng.randint(1, 400)))
    return out


def test_stats_from_rollups_and_raw_match_an_independent_reference(store: Store) -> None:
    """A 31-hour window with unaligned edges (rollups, raw sub-minute edges, pending rows) and a 5-hour
    one (raw): counts, errors and sums exact, means to float precision, quantiles within the sketches'
    documented α (about 1%) of R-7 over the same records; per hour, each bucket likewise."""
    records = traffic(2400, 33, seed=5)
    store.write_requests(records[:1200])
    store.write_requests(records[1200:])  # the second write's rollups may still be pending (DuckDB)
    for since, until in ((T0 + timedelta(minutes=7, seconds=13, microseconds=5), T0 + timedelta(hours=31, seconds=44)),
                         (T0 + timedelta(minutes=3), T0 + timedelta(hours=5, minutes=3))):
        (row,) = store.stats(StatsQuery(since, until))
        assert row["source"] == ("raw" if until - since <= timedelta(hours=6) else "rollup_6h")
        want = stats_reference(records, since, until)
        for name in STAT_FIELDS:
            rel = ALPHA if name.endswith(("_p50", "_p95", "_p99")) and row["source"] != "raw" else 1e-9
            assert_close(row[name], want[name], rel, f"{row['source']} {name}")
        hourly = store.stats(StatsQuery(since, until, resolution=HOUR))
        assert sum(r["requests"] for r in hourly) == want["requests"]
        for r in hourly:
            lo = max(since, r["bucket_start"])
            assert r["bucket_start"].utcoffset() == timedelta(0) and r["bucket_start"].minute == 0
            bucket = stats_reference(records, lo, min(until, r["bucket_start"] + HOUR))
            for name in ("requests", "errors", "prompt_tokens_sum", "completion_tokens_sum", "ttft_ms_p99"):
                rel = ALPHA if name == "ttft_ms_p99" and r["source"] != "raw" else 1e-9
                assert_close(r[name], bucket[name], rel, f"{r['bucket_start']} {name}")


async def test_stats_over_the_api_are_the_reference_figures(tmp_path: Path, settings: Any) -> None:
    """``GET /api/v1/stats`` end to end on both engines: a window given with a +02:00 offset, grouped by
    tenant; the JSON figures are the reference's (the window's start is inclusive, its end exclusive)."""
    records = traffic(300, 4, seed=9)
    records.append(rec(9000, T0 + timedelta(hours=1), tenant="acme", ttft_ms=1.0, total_ms=2.0))  # == since
    records.append(rec(9001, T0 + timedelta(hours=3), tenant="acme", ttft_ms=1.0, total_ms=2.0))  # == until
    since, until = T0 + HOUR, T0 + timedelta(hours=3)
    local = timezone(timedelta(hours=2))
    for engine in ENGINES:
        (tmp_path / engine).mkdir()
        s = open_backend(engine, tmp_path / engine)
        s.migrate()
        try:
            s.write_requests(records)
            api = QueryApi(s, TenantDirectory(settings))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
                resp = await client.get("/api/v1/stats", headers={"authorization": "Bearer sk-admin-test"}, params={
                    "since": since.astimezone(local).isoformat(), "until": until.astimezone(local).isoformat(),
                    "group_by": "tenant"})
            assert resp.status_code == 200, resp.text
            rows = resp.json()["data"]
            assert [r["tenant_id"] for r in rows] == ["acme", "globex"]
            for row in rows:
                want = stats_reference([r for r in records if r.tenant_id == row["tenant_id"]], since, until)
                for name in STAT_FIELDS:
                    assert_close(row[name], want[name], 1e-9, f"{engine} {row['tenant_id']} {name}")
        finally:
            s.close()


# -- correlation ------------------------------------------------------------------------------------

A, B, UNKNOWN = "replica-a:8000", "replica-b:8000", "renamed:8000"


def fleet(hours: int, outage: tuple[int, int] | None, seed: int) -> tuple[list[dict[str, Any]], list[RequestRecord]]:
    """m1 on replicas A and B scraped 3 s apart every 10 s (KV usage, queue depth, two GPUs' memory
    without a model label), m2 on B part of each hour; requests of both tenants served by A, B, an
    instance telemetry does not know, or none recorded. ``outage``: hours in which B's collector is down."""
    rng = random.Random(seed)
    samples = []
    for sec in range(0, hours * 3600, 10):
        down = outage is not None and outage[0] * 3600 <= sec < outage[1] * 3600
        for inst, offset in ((A, 0), (B, 3)):
            if inst == B and down:
                continue
            t = T0 + timedelta(seconds=sec + offset)
            load = 0.15 if inst == A else 0.96
            samples.append(sample(t, "kv_cache_usage", min(1.0, load + rng.uniform(-0.1, 0.1)), inst))
            samples.append(sample(t, "requests_waiting", float(rng.randint(0, 40)), inst))
            for g in ("0", "1"):
                samples.append(sample(t, "gpu_memory_utilization", rng.random(), inst, model=None, gpu=g))
        if sec % 3600 < 2400 and not down:
            samples.append(sample(T0 + timedelta(seconds=sec + 5), "kv_cache_usage", rng.random(), B, model="m2"))
    records = []
    for i in range(hours * 120):
        model = rng.choice(["m1", "m1", "m2"])
        records.append(rec(
            i, T0 + timedelta(seconds=rng.uniform(0, hours * 3600), microseconds=rng.randint(0, 999_999)),
            tenant=rng.choice(["acme", "globex"]), model=model,
            instance=rng.choice([A, B, B, UNKNOWN, None]) if model == "m1" else rng.choice([B, None]),
            ttft_ms=None if rng.random() < 0.3 else rng.lognormvariate(4, 1),
            itl_ms_mean=None if rng.random() < 0.2 else rng.lognormvariate(2, 0.5),
            status_code=rng.choice([200] * 9 + [500])))
    return samples, records


QUERIES: list[dict[str, Any]] = [{}, {"model_id": "m1"}, {"tenant_id": "acme"}, {"instance": B}, {"model_id": "m2"}]


def test_correlation_raw_join_matches_an_independent_as_of_join(store: Store) -> None:
    """Short windows (exact join): every bucket's counts, errors, shares and quantiles, by a fraction
    metric, a queue metric and an unlabelled GPU metric, unscoped and scoped by model, tenant, instance."""
    samples, records = fleet(3, None, seed=11)
    store.write_rows("telemetry", samples)
    store.write_requests(records)
    since, until = T0 + timedelta(minutes=17, seconds=3), T0 + timedelta(hours=2, minutes=1)
    for by in ("kv_cache_usage", "requests_waiting", "gpu_memory_utilization"):
        for scope in QUERIES:
            q = CorrelationQuery(since, until, by=by, **scope)
            rows = store.correlation(q)
            assert {r["source"] for r in rows} == {"raw"}
            assert_correlation(rows, correlation_reference(samples, records, q), 1e-9, f"{by} {scope}")


def test_correlation_answer_does_not_depend_on_the_window_or_the_rollups(store: Store) -> None:
    """B's collector is down for three hours. Its requests then have no sample of B: they must be
    counted the same way by a one-hour read, a nine-hour exact read and the nine-hour rollup read.

    Before: the exact read decided "its instance has samples" over the whole window (B's outage
    requests -> ``no_sample``), the hourly rollups per hour (-> the model-wide series, i.e. A's load,
    0.15, although B ran at 0.96): the 9-hour answer moved 200+ requests between buckets depending on
    whether rollups were built, and ``instance=B`` reads disagreed too (their samples were limited to B).
    """
    hours = 9
    samples, records = fleet(hours, (3, 6), seed=3)
    store.write_rows("telemetry", samples)
    store.write_requests(records)
    since, until = T0 + timedelta(minutes=20), T0 + timedelta(hours=hours) - timedelta(minutes=20)
    exact: dict[str, list[dict[str, Any]]] = {}
    for scope in QUERIES:
        q = CorrelationQuery(since, until, by="kv_cache_usage", **scope)
        exact[str(scope)] = telemetry_sql.correlation(store._telemetry_reader(), q)  # type: ignore[attr-defined]
        assert_correlation(exact[str(scope)], correlation_reference(samples, records, q), 1e-9, f"exact {scope}")
        one_hour = CorrelationQuery(T0 + timedelta(hours=4), T0 + timedelta(hours=5), by="kv_cache_usage", **scope)
        assert_correlation(store.correlation(one_hour), correlation_reference(samples, records, one_hour), 1e-9,
                           f"1h {scope}")
    assert store.build_correlation_rollups(now=T0 + timedelta(hours=hours + 1), lookback=timedelta(days=1)) == hours
    for scope in QUERIES:
        q = CorrelationQuery(since, until, by="kv_cache_usage", **scope)
        rows = store.correlation(q)
        assert {r["source"] for r in rows} == {"rollup_1h"}
        assert_correlation(rows, correlation_reference(samples, records, q), ALPHA, f"rollup {scope}")
        for got, want in zip(rows, exact[str(scope)], strict=True):
            assert (got["requests"], got["errors"]) == (want["requests"], want["errors"]), (scope, got["bucket"])


# -- diagnosis --------------------------------------------------------------------------------------


def test_contention_needs_min_requests_with_a_ttft(store: Store) -> None:
    """The TTFT ratio is over streamed requests only (non-streamed ones have no TTFT). 25 non-streamed
    requests and 3 streamed ones (10, 10, 2000 ms) are 3 values, not "at least 20": before, the
    signal fired (p99/p50 = 196) with ``enough_data`` true; now it cannot tell."""
    records = [rec(i, T0 + timedelta(seconds=i), ttft_ms=None, total_ms=300.0, stream=False) for i in range(25)]
    records += [rec(100 + i, T0 + timedelta(seconds=40 + i), ttft_ms=v, total_ms=3000.0, stream=True)
                for i, v in enumerate((10.0, 10.0, 2000.0))]
    store.write_requests(records)
    inputs = store.diagnosis_inputs(DiagnosisQuery(T0, T0 + timedelta(minutes=5)))
    assert (inputs.ttft_ms_p50, inputs.ttft_ms_p99) == (10.0, pytest.approx(quantile([10.0, 10.0, 2000.0], 0.99)))
    assert inputs.requests == 3
    signal = contention(inputs, DiagnosisSettings())
    assert not signal["enough_data"] and not signal["firing"]
    # 20 streamed requests with the same tail: enough data, and the signal fires
    store.write_requests([rec(200 + i, T0 + timedelta(seconds=60 + i), ttft_ms=10.0, stream=True) for i in range(17)])
    inputs = store.diagnosis_inputs(DiagnosisQuery(T0, T0 + timedelta(minutes=5)))
    assert inputs.requests == 20
    assert contention(inputs, DiagnosisSettings())["firing"]
