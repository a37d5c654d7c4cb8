"""Correlation benchmark: ``Store.correlation`` over N days of traffic, from the hourly rollups and exactly.

Seed scale (DESIGN.md): 2M requests/day; 8 models, each on 2 instances with 2 GPUs. Every 10 s each
instance reports 14 engine metrics labelled with its model and each GPU 7 unlabelled GPU metrics:
28 samples per instance per scrape, 3.9M telemetry rows a day. Inserting that through the stores
would take hours, so both tables are synthesised *inside* each engine (SQL random functions, one
day at a time, appended in time order as ingest does). KV cache usage follows a daily wave per model
and TTFT grows with it, so the buckets show a trend. ClickHouse's rollup views are dropped first:
correlation reads only raw rows, and they would only slow the fill.

Then it builds the hourly correlation rollups (``build_correlation_rollups``, timed per hour) and times
``Store.correlation`` (Python assembly included; long windows read the rollups), the exact raw join of
the same query as the baseline, ``diagnosis_inputs`` and ``telemetry``.

    .venv/bin/python benchmarks/correlation_bench.py --days 3                    # both backends
    .venv/bin/python benchmarks/correlation_bench.py --backends duckdb --days 30 # seed scale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from store_bench import pcts  # noqa: E402

from infersight.store import schema, telemetry_sql  # noqa: E402
from infersight.store.telemetry_sql import CorrelationQuery, DiagnosisQuery, TelemetryQuery  # noqa: E402

UTC = timezone.utc
START = datetime(2096, 1, 1, tzinfo=UTC)
ENGINE = ("kv_cache_usage", "requests_waiting", "requests_running", "prefix_cache_hit_rate", "preemptions_per_s",
          "requests_per_s", "prompt_tokens_per_s", "generation_tokens_per_s", "engine_ttft_p50_s",
          "engine_ttft_p99_s", "engine_itl_p50_s", "engine_itl_p99_s", "num_engines", "engine_up")
GPU = ("gpu_utilization", "gpu_memory_utilization", "gpu_memory_used_bytes", "gpu_memory_total_bytes",
       "gpu_temperature_c", "gpu_power_w", "gpu_sm_clock_mhz")
WAVE = "(0.55 + 0.4 * sin(2 * pi() * ({secs}) / 86400.0 + {model}))"  # a model's KV usage at a moment

DUCK_REQUESTS = """
INSERT INTO requests (started_at, trace_id, span_id, tenant_id, model_id, backend, status_code, ttft_ms, itl_ms_mean,
                      prompt_hash, instance)
SELECT '{day}'::TIMESTAMPTZ + to_microseconds(us) AS started_at, md5('{salt}-' || i::VARCHAR),
  substr(md5('s{salt}-' || i::VARCHAR), 1, 16), printf('tenant-%02d', (i % 50)::INT), 'model-' || m::VARCHAR, 'vllm',
  CASE WHEN u_s < 0.02 THEN 500 ELSE 200 END,
  exp(3.9 + 0.6 * sqrt(-2 * ln(1 - z1)) * cos(2 * pi() * z2)) * (1 + 4 * greatest(0, {wave} - 0.8)),
  exp(2.5 + 0.3 * sqrt(-2 * ln(1 - z3)) * cos(2 * pi() * z4)),
  'p' || floor(random() * 3000000)::BIGINT::VARCHAR, 'host-' || (m * 2 + i % 2)::VARCHAR || ':8000'
FROM (SELECT i, (random() * 86400000000)::BIGINT AS us, (random() * {models})::INT % {models} AS m, random() AS u_s,
        random() AS z1, random() AS z2, random() AS z3, random() AS z4 FROM range({n}) r(i))
ORDER BY started_at
"""
DUCK_TELEMETRY = """
INSERT INTO telemetry (ts, source, instance, gpu, model_id, metric, value)
SELECT '{day}'::TIMESTAMPTZ + to_seconds(k * 10 + h.inst % 7) AS ts, src, 'host-' || h.inst::VARCHAR || ':8000', g,
  CASE WHEN g IS NULL THEN 'model-' || (h.inst // 2)::VARCHAR END,
  metric, CASE metric WHEN 'kv_cache_usage' THEN least(1, greatest(0, {wave_t} + 0.05 * (random() - 0.5)))
                      WHEN 'gpu_memory_utilization' THEN 0.9 + 0.02 * random()
                      WHEN 'requests_waiting' THEN floor(greatest(0, {wave_t} - 0.7) * 60 * random())
                      ELSE random() END
FROM range(8640) t(k), (SELECT unnest(range({instances})) AS inst) h,
  (SELECT 'vllm' AS src, NULL AS g, unnest({engine}) AS metric
   UNION ALL SELECT 'nvml', g::VARCHAR, unnest({gpu}) FROM range(2) gg(g)) m
ORDER BY ts
"""
CH_REQUESTS = """
INSERT INTO {db}.requests (started_at, trace_id, span_id, tenant_id, model_id, backend, status_code, ttft_ms,
                           itl_ms_mean, prompt_hash, instance)
SELECT started_at, trace_id, span_id, tenant_id, model_id, backend, status_code, ttft_ms, itl_ms_mean, prompt_hash,
  instance FROM (
SELECT toDateTime64('{day}', 6, 'UTC') + toIntervalMicrosecond(us) AS started_at,
  lower(hex(MD5(concat('{salt}-', toString(number))))) AS trace_id,
  substring(lower(hex(MD5(concat('s{salt}-', toString(number))))), 1, 16) AS span_id,
  concat('tenant-', toString(number % 50)) AS tenant_id, concat('model-', toString(m)) AS model_id,
  toNullable('vllm') AS backend, toInt64(if(randCanonical(3) < 0.02, 500, 200)) AS status_code,
  toNullable(exp(3.9 + 0.6 * randNormal(0, 1, 4)) * (1 + 4 * greatest(0, {wave} - 0.8))) AS ttft_ms,
  toNullable(exp(2.5 + 0.3 * randNormal(0, 1, 5))) AS itl_ms_mean,
  toNullable(concat('p', toString(rand(6) % 3000000))) AS prompt_hash,
  toNullable(concat('host-', toString(m * 2 + number % 2), ':8000')) AS instance,
  toInt64(randCanonical(1) * 86400000000) AS us, toUInt32(rand(2) % {models}) AS m
FROM numbers({n})) ORDER BY started_at
"""
CH_TELEMETRY = """
INSERT INTO {db}.telemetry (ts, source, instance, gpu, model_id, metric, value)
SELECT toDateTime64('{day}', 6, 'UTC') + toIntervalSecond(k * 10 + inst % 7) AS ts, src,
  concat('host-', toString(inst), ':8000'), g, if(g IS NULL, concat('model-', toString(intDiv(inst, 2))), NULL), metric,
  multiIf(metric = 'kv_cache_usage', least(1, greatest(0, {wave_t} + 0.05 * (randCanonical(1) - 0.5))),
          metric = 'gpu_memory_utilization', 0.9 + 0.02 * randCanonical(2),
          metric = 'requests_waiting', floor(greatest(0, {wave_t} - 0.7) * 60 * randCanonical(3)), randCanonical(4))
FROM (SELECT number AS k FROM numbers(8640)) AS t
CROSS JOIN (SELECT number AS inst FROM numbers({instances})) AS h
CROSS JOIN (SELECT 'vllm' AS src, CAST(NULL, 'Nullable(String)') AS g, arrayJoin({engine}) AS metric
            UNION ALL SELECT 'nvml', toNullable(toString(number)), arrayJoin({gpu}) FROM numbers(2)) AS mm
ORDER BY ts
"""


def fill(backend: str, store: Any, days: int, per_day: int, models: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    instances = models * 2
    for d in range(days):
        day = (START + timedelta(days=d)).strftime("%Y-%m-%d %H:%M:%S")
        if backend == "duckdb":
            wave = WAVE.format(secs="us / 1e6", model="m")
            wave_t = WAVE.format(secs="k * 10", model="(h.inst // 2)")
            con = store._write
            con.execute(f"SELECT setseed({(d + 1) / (days + 2)})").fetchall()
            con.execute(DUCK_REQUESTS.format(day=day, salt=d, n=per_day, models=models, wave=wave)).fetchall()
            con.execute(DUCK_TELEMETRY.format(day=day, instances=instances, wave_t=wave_t, engine=list(ENGINE),
                                              gpu=list(GPU))).fetchall()
        else:
            db = store.database
            wave = WAVE.format(secs="us / 1e6", model="m")
            wave_t = WAVE.format(secs="k * 10", model="intDiv(inst, 2)")
            store._exec.command(CH_REQUESTS.format(db=db, day=day, salt=d, n=per_day, models=models, wave=wave))
            store._exec.command(CH_TELEMETRY.format(db=db, day=day, instances=instances, wave_t=wave_t,
                                                    engine=list(ENGINE), gpu=list(GPU)))
        print(f"  day {d + 1}/{days} filled ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if backend == "duckdb":
        store._write.execute("CHECKPOINT").fetchall()
    else:
        store._exec.command(f"OPTIMIZE TABLE {store.database}.requests FINAL")
        store._exec.command(f"OPTIMIZE TABLE {store.database}.telemetry FINAL")
    return {"seconds": round(time.perf_counter() - t0, 1), "requests": per_day * days,
            "telemetry_rows": days * 8640 * instances * (len(ENGINE) + 2 * len(GPU))}


def build_rollups(backend: str, store: Any, days: int) -> dict[str, Any]:
    """The hourly request counts (the fill bypassed the write path), then every correlation hour."""
    hourly = schema.ROLLUPS[1]
    t0 = time.perf_counter()
    if backend == "duckdb":
        from infersight.store.duckdb_rollup import insert_rollups_sql

        store._write.execute(insert_rollups_sql(hourly, "requests")).fetchall()
    else:
        from infersight.store.clickhouse_rollup import rollup_select_sql

        db = store.database
        select = rollup_select_sql(hourly.micros, f"{db}.requests")
        store._exec.command(f"INSERT INTO {db}.{hourly.name} ({', '.join(schema.ROLLUP_COLUMNS)}) {select}")
    counted = time.perf_counter() - t0
    t0 = time.perf_counter()
    end = START + timedelta(days=days)
    periods = store.build_correlation_rollups(now=end + timedelta(hours=1), lookback=timedelta(days=days + 1))
    built = time.perf_counter() - t0
    print(f"  {periods} correlation hours built in {built:.0f} s", file=sys.stderr)
    return {"request_counts_s": round(counted, 1), "periods": periods, "build_s": round(built, 1),
            "build_s_per_hour": round(built / max(periods, 1), 3)}


def time_it(fn: Any, runs: int) -> dict[str, Any]:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return pcts(samples)


def open_store(backend: str, folder: str) -> Any:
    if backend == "duckdb":
        from infersight.store.duckdb_store import DuckDBStore

        store: Any = DuckDBStore(os.path.join(folder, "bench.duckdb"))
        store.migrate()
        return store
    from infersight.store.clickhouse_store import ClickHouseStore

    store = ClickHouseStore.embedded(os.path.join(folder, "chdb"))
    store.migrate()
    for name in ("1m", "1h", "6h", "1d", "7d"):  # the rollup views: not read here, they would slow the fill
        store._exec.command(f"DROP VIEW IF EXISTS {store.database}.request_rollups_{name}_mv")
    return store


def reopen_store(backend: str, folder: str) -> Any:
    if backend == "duckdb":
        from infersight.store.duckdb_store import DuckDBStore

        return DuckDBStore(os.path.join(folder, "bench.duckdb"))
    from infersight.store.clickhouse_store import ClickHouseStore

    return ClickHouseStore.embedded(os.path.join(folder, "chdb"))


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        folder = os.path.join(args.keep, backend) if args.keep else scratch
        marker = os.path.join(folder, "filled.json")
        if os.path.exists(marker):  # --keep: a store filled by an earlier run with the same arguments
            store = reopen_store(backend, folder)
            out: dict[str, Any] = {"fill": json.load(open(marker))}
        else:
            os.makedirs(folder, exist_ok=True)
            store = open_store(backend, folder)
            out = {"fill": fill(backend, store, args.days, args.per_day, args.models)}
            out["rollups"] = build_rollups(backend, store, args.days)
            if args.keep:
                with open(marker, "w") as fh:
                    json.dump(out["fill"], fh)
        end = START + timedelta(days=args.days)
        whole = (START, end)
        day = (end - timedelta(days=1), end)
        hour = (end - timedelta(hours=1), end)
        queries = {
            f"correlation_kv_cache_model_{args.days}d": lambda: store.correlation(
                CorrelationQuery(*whole, by="kv_cache_usage", model_id="model-3")),
            f"correlation_gpu_memory_model_{args.days}d": lambda: store.correlation(
                CorrelationQuery(*whole, by="gpu_memory_utilization", model_id="model-3")),
            f"correlation_requests_waiting_all_models_{args.days}d": lambda: store.correlation(
                CorrelationQuery(*whole, by="requests_waiting")),
            "correlation_kv_cache_model_1d": lambda: store.correlation(
                CorrelationQuery(*day, by="kv_cache_usage", model_id="model-3")),
            "correlation_kv_cache_tenant_1d": lambda: store.correlation(
                CorrelationQuery(*day, by="kv_cache_usage", tenant_id="tenant-07")),
            "diagnosis_model_1h": lambda: store.diagnosis_inputs(DiagnosisQuery(*hour, model_id="model-3")),
            "telemetry_model_kv_1h": lambda: store.telemetry(
                TelemetryQuery(*hour, metrics=("kv_cache_usage",), model_id="model-3")),
        }
        for name, fn in queries.items():
            out[name] = time_it(fn, args.runs)
            print(f"  {name}: {out[name]}", file=sys.stderr)
        exact_q = CorrelationQuery(*whole, by="kv_cache_usage", model_id="model-3")  # the baseline: no rollups
        name = f"correlation_kv_cache_model_{args.days}d_exact_raw"
        out[name] = time_it(lambda: telemetry_sql.correlation(store._telemetry_reader(), exact_q), 1)
        out["rollup_speedup_kv_cache_model"] = round(
            out[name]["p50_ms"] / out[f"correlation_kv_cache_model_{args.days}d"]["p50_ms"], 1)
        print(f"  {name}: {out[name]}", file=sys.stderr)
        out["example"] = [{k: r[k] for k in ("bucket", "requests", "ttft_ms_p50", "ttft_ms_p99", "source")}
                          for r in store.correlation(CorrelationQuery(*whole, by="kv_cache_usage", model_id="model-3"))]
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="duckdb,clickhouse")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--per-day", type=int, default=2_000_000)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", default=None, help="keep the filled stores in this folder and reuse them next time")
    ap.add_argument("--dir", default=None, help="where the scratch stores go (default: the temp folder)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "correlation-latest.json"))
    args = ap.parse_args()
    results: dict[str, Any] = {"days": args.days, "per_day": args.per_day, "models": args.models,
                               "cpus": os.cpu_count()}
    for backend in args.backends.split(","):
        print(f"{backend}:", file=sys.stderr)
        results[backend] = run(backend, args)
    text = json.dumps(results, indent=2, default=str)
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
