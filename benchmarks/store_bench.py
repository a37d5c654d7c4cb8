"""Store benchmark: stats over 30 days of seed-scale traffic from the rollups, and ingest cost.

Seed scale (DESIGN.md): 50 tenants, 2M requests/day. Inserting 60M raw rows through
``write_requests`` takes about 20 minutes, so the 31 days of traffic are synthesised *inside* each
engine (SQL random functions, one day at a time) and fed through the stores' own rollup SELECTs
(``duckdb_rollup.rollup_select_sql`` / ``clickhouse_rollup.rollup_select_sql``): the rollup rows are
exactly what ingest would have written (compact, as after DuckDB compaction or ClickHouse merges).
Raw ``requests`` rows are written for the first and last day only: a "last 30 days" window reads
raw rows just for its sub-minute edges. Traffic: tenant ids skewed (tenant i gets ~(1/50)·2·(1-i/50)
of it), two models, two use cases and two backends per tenant (about 400 keys), lognormal TTFT
(per model), ITL and total latency.

The fill writes the rollups as schema step 2 did (0.5% sketches; in ClickHouse the tenant-first
layout), copies them aside (a ``v2`` schema in DuckDB, a ``<db>_v2`` database in ClickHouse), then
runs the store's own ``migrate()`` (timed: ``migrate_s``), which moves the live tables to 1% sketches
(and, in ClickHouse, the period-first layout). Each stats query is then timed on both, interleaved:
``Store.stats`` on the migrated tables, and the previous read path (``legacy_*``: SQL merge of every
bucket, quantiles from Python lists; ClickHouse: ``sumMap`` then the buckets to Python) on the
copies, so "before" and "after" share the run, the data and the machine's load. On chdb a third
path joins the interleaving, ``previous``: the SQL read that one-part-per-table replaced
(``previous_clickhouse_sql``), on the migrated tables. Python assembly is included in all. First,
``write_requests`` rows/s on fresh stores with rollups (this code) against the insert alone (the
code before rollups; ``--ingest-records 0`` skips it).

    .venv/bin/python benchmarks/store_bench.py                    # both backends, ~40 minutes
    .venv/bin/python benchmarks/store_bench.py --backends duckdb --days 3 --runs 5   # a smoke run
    # fill once (~15 min for chdb), then time as often as needed on the kept data:
    .venv/bin/python benchmarks/store_bench.py --backends chdb --ingest-records 0 --workdir /tmp/sb --reuse
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.model import RequestRecord
from infersight.store import rollup, schema
from infersight.store.arrow import records_to_arrow
from infersight.store.base import StatsQuery, Store
from infersight.store.sketch import LN_GAMMA, V2_ALPHA, gamma_of, quantiles_from_bins

UTC = timezone.utc
START = datetime(2096, 1, 1, tzinfo=UTC)
OFFSET = timedelta(hours=13, minutes=37, seconds=12, microseconds=345678)  # "now" is never aligned

# One synthetic day as SQL. {day} is the day's start, {n} the row count, {salt} separates days.
DUCK_SYNTH = """
SELECT '{day}'::TIMESTAMPTZ + to_microseconds((u_time * 86400000000)::BIGINT) AS started_at,
  md5('{salt}-' || i::VARCHAR) AS trace_id, substr(md5('s{salt}-' || i::VARCHAR), 1, 16) AS span_id,
  printf('tenant-%02d', t) AS tenant_id, 'model-' || ((t + CASE WHEN u_m < 0.7 THEN 0 ELSE 3 END) % {models}) AS model_id,
  CASE WHEN u_c < 0.6 THEN 'chat' ELSE 'summarize' END AS use_case,
  CASE WHEN u_b < 0.5 THEN 'vllm-a' ELSE 'vllm-b' END AS backend,
  CASE WHEN u_s < 0.02 THEN 500 WHEN u_s < 0.03 THEN 429 ELSE 200 END AS status_code, NULL::VARCHAR AS error_type,
  exp(3.9 + 0.1 * (t % {models}) + 0.6 * sqrt(-2 * ln(1 - z1)) * cos(2 * pi() * z2)) AS ttft_ms,
  exp(2.5 + 0.3 * sqrt(-2 * ln(1 - z3)) * cos(2 * pi() * z4)) AS itl_ms_mean,
  exp(7.0 + 0.8 * sqrt(-2 * ln(1 - z5)) * cos(2 * pi() * z6)) AS total_ms,
  CASE WHEN u_s > 0.95 THEN NULL ELSE 20 + 100 * z7 END AS output_tokens_per_s,
  (1 + 2000 * z8)::BIGINT AS prompt_tokens, (400 * z9)::BIGINT AS completion_tokens
FROM (SELECT i, random() AS u_time, floor({tenants} * (1 - sqrt(1 - random())))::INT AS t, random() AS u_m,
        random() AS u_c, random() AS u_b, random() AS u_s, random() AS z1, random() AS z2, random() AS z3,
        random() AS z4, random() AS z5, random() AS z6, random() AS z7, random() AS z8, random() AS z9
      FROM range({n}) r(i))
"""

CH_SYNTH = """
SELECT toDateTime64('{day}', 6, 'UTC') + toIntervalMicrosecond(toInt64(randCanonical(1) * 86400000000)) AS started_at,
  lower(hex(MD5(concat('{salt}-', toString(number))))) AS trace_id,
  substring(lower(hex(MD5(concat('s{salt}-', toString(number))))), 1, 16) AS span_id,
  toUInt32(floor({tenants} * (1 - sqrt(1 - randCanonical(2))))) AS t,
  concat('tenant-', leftPad(toString(t), 2, '0')) AS tenant_id,
  concat('model-', toString((t + if(randCanonical(3) < 0.7, 0, 3)) % {models})) AS model_id,
  toNullable(if(randCanonical(4) < 0.6, 'chat', 'summarize')) AS use_case,
  toNullable(if(randCanonical(5) < 0.5, 'vllm-a', 'vllm-b')) AS backend,
  randCanonical(6) AS u_s, toInt64(multiIf(u_s < 0.02, 500, u_s < 0.03, 429, 200)) AS status_code,
  CAST(NULL, 'Nullable(String)') AS error_type,
  toNullable(exp(3.9 + 0.1 * (t % {models}) + 0.6 * randNormal(0, 1, 7))) AS ttft_ms,
  toNullable(exp(2.5 + 0.3 * randNormal(0, 1, 8))) AS itl_ms_mean,
  toNullable(exp(7.0 + 0.8 * randNormal(0, 1, 9))) AS total_ms,
  if(u_s > 0.95, NULL, 20 + 100 * randCanonical(10)) AS output_tokens_per_s,
  toNullable(toInt64(1 + 2000 * randCanonical(11))) AS prompt_tokens,
  toNullable(toInt64(400 * randCanonical(12))) AS completion_tokens
FROM numbers({n})
"""
V2_LN_GAMMA = math.log(gamma_of(V2_ALPHA))  # step 2's sketches, which the fill writes
RAW_COLS = ("started_at", "trace_id", "span_id", "tenant_id", "model_id", "use_case", "backend", "status_code",
            "error_type", "ttft_ms", "itl_ms_mean", "total_ms", "output_tokens_per_s", "prompt_tokens",
            "completion_tokens")


def pcts(samples: list[float]) -> dict[str, float]:
    xs = sorted(samples)
    return {"p50_ms": round(statistics.median(xs) * 1e3, 1),
            "p95_ms": round(xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))] * 1e3, 1),
            "max_ms": round(xs[-1] * 1e3, 1), "runs": len(xs)}


def time_it(fn: Callable[[], Any], runs: int, warmup: int = 2) -> dict[str, Any]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return pcts(samples)


def fill(backend: str, store: Any, days: int, per_day: int, tenants: int, models: int) -> dict[str, Any]:
    """Synthesise ``days + 1`` days of traffic into the rollups, raw rows for the first and last day."""
    t0 = time.perf_counter()
    for d in range(days + 1):
        day = (START + timedelta(days=d)).strftime("%Y-%m-%d %H:%M:%S")
        fmt = dict(day=day, n=per_day, salt=d, tenants=tenants, models=models)
        raw_too = d in (0, days)
        if backend == "duckdb":
            from infersight.store.duckdb_rollup import rollup_select_sql as sel
            con = store._write
            con.execute(f"SELECT setseed({(d + 1) / (days + 2)})").fetchall()
            con.execute(f"CREATE OR REPLACE TEMP TABLE synth AS {DUCK_SYNTH.format(**fmt)}").fetchall()
            for r in schema.ROLLUPS:
                con.execute(f"INSERT INTO {r.name} ({', '.join(schema.ROLLUP_COLUMNS)}) "  # in time order, as
                            f"{sel(r.micros, 'synth', V2_LN_GAMMA)} ORDER BY period_start").fetchall()  # ingest appends
            if raw_too:
                con.execute(f"INSERT INTO requests ({', '.join(RAW_COLS)}) SELECT {', '.join(RAW_COLS)} FROM synth "
                            "ORDER BY started_at").fetchall()
            con.execute("DROP TABLE synth").fetchall()
        else:
            from infersight.store.clickhouse_rollup import rollup_select_sql as sel
            db = store.database
            synth = f"({CH_SYNTH.format(**fmt)})"
            for r in schema.ROLLUPS:
                store._exec.command(f"INSERT INTO {db}.{r.name} ({', '.join(schema.ROLLUP_COLUMNS)}) "
                                    f"SELECT * FROM ({sel(r.micros, synth, V2_LN_GAMMA)}) "
                                    "SETTINGS max_insert_threads = 2")
            if raw_too:  # the views are dropped in this database (run_backend), so this adds no rollups
                store._exec.command(f"INSERT INTO {db}.requests ({', '.join(RAW_COLS)}) "
                                    f"SELECT {', '.join(RAW_COLS)} FROM {synth}")
        print(f"  day {d + 1}/{days + 1} filled ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    # Day by day, the week (and, in ClickHouse, every) table got one partial row per key and day:
    # leave them merged, as DuckDB's compaction and ClickHouse's background merges would.
    for r in schema.ROLLUPS:
        if backend == "duckdb":
            from infersight.store.duckdb_rollup import compact

            store._write.execute("BEGIN TRANSACTION").fetchall()
            compact(store._write, r, START - timedelta(days=7), START + timedelta(days=days + 8))
            store._write.execute("COMMIT").fetchall()
        else:
            store._exec.command(f"OPTIMIZE TABLE {store.database}.{r.name} FINAL")
    if backend != "duckdb":  # the raw days too (as keep_v2_copy leaves the legacy path's): a month-old
        store._exec.command(f"OPTIMIZE TABLE {store.database}.requests FINAL")  # partition is merged
    sizes = {}
    for r in schema.ROLLUPS:
        if backend == "duckdb":
            n = store._write.execute(f"SELECT count(*) FROM {r.name}").fetchall()[0][0]
        else:
            n = store._exec.query(f"SELECT count() AS n FROM {store.database}.{r.name}").to_pylist()[0]["n"]
        sizes[r.name] = int(n)
    return {"fill_s": round(time.perf_counter() - t0, 1), "rollup_rows": sizes}


def records(n: int, seed: int) -> list[RequestRecord]:
    """Realistic records as in docs/store.md's ingest figures (50 tenants, 8 models, random ids),
    43 ms apart: the seed rate of 2M a day."""
    rng = random.Random(seed)
    t0 = START + timedelta(days=400)
    out = []
    for i in range(n):
        itl = rng.lognormvariate(2.5, 0.3)
        out.append(RequestRecord(
            trace_id=f"{rng.getrandbits(128):032x}", span_id=f"{rng.getrandbits(64):016x}",
            tenant_id=f"tenant-{int(50 * (1 - (1 - rng.random()) ** 0.5)):02d}", model_id=f"model-{rng.randrange(8)}",
            backend=rng.choice(["vllm-a", "vllm-b"]), use_case=rng.choice(["chat", "summarize"]),
            started_at=(t0 + timedelta(milliseconds=43 * i)).isoformat(), status_code=rng.choice([200] * 30 + [500]),
            ttft_ms=rng.lognormvariate(4, 0.6), itl_ms_mean=itl, total_ms=rng.lognormvariate(7, 0.8),
            output_tokens_per_s=1000 / itl, prompt_tokens=rng.randint(1, 4000), completion_tokens=rng.randint(0, 800),
            prompt_hash=f"{rng.getrandbits(256):064x}",
        ))
    return out


def ingest(write: Callable[[list[RequestRecord]], Any], recs: list[RequestRecord], batch: int,
           finish: Callable[[], Any] = lambda: None) -> float:
    """Records/s, including ``finish`` (DuckDB: folding the staged rows and compacting them)."""
    t0 = time.perf_counter()
    for start in range(0, len(recs), batch):
        write(recs[start:start + batch])
    finish()
    return len(recs) / (time.perf_counter() - t0)


def ingest_rates(backend: str, args: argparse.Namespace, workdir: str, ex: Any) -> dict[str, list[int]]:
    """``write_requests`` rows/s with rollups on against the insert alone (the pre-rollup code path)."""
    recs = records(args.ingest_records, seed=1)
    rates: dict[str, list[float]] = {}
    for batch in args.batches:
        for rnd in range(2):
            for mode in ("with_rollups", "insert_only"):
                key = f"{mode}, batches of {batch}"
                if backend == "duckdb":
                    from infersight.store.duckdb_store import DuckDBStore

                    d = DuckDBStore(os.path.join(workdir, f"ingest-{mode}-{batch}-{rnd}.duckdb"))
                    d.migrate()
                    if mode == "with_rollups":
                        rate = ingest(d.write_requests, recs, batch, d.compact_rollups)
                    else:
                        rate = ingest(lambda rs, d=d: d._insert(schema.REQUESTS, records_to_arrow(rs)), recs, batch)
                    d.close()
                else:
                    from infersight.store.clickhouse_schema import MIGRATIONS
                    from infersight.store.clickhouse_store import ClickHouseStore

                    steps = MIGRATIONS if mode == "with_rollups" else MIGRATIONS[:1]
                    c = ClickHouseStore(ex, database=f"ingest_{rnd}_{batch}_{mode}", migrations=steps)
                    c.migrate()
                    rate = ingest(c.write_requests, recs, batch)
                rates.setdefault(key, []).append(rate)
    return {m: [round(x) for x in v] for m, v in rates.items()}


def open_seed(backend: str, workdir: str, ex: Any) -> Any:
    """The filled, migrated seed store of an earlier run (``--reuse``)."""
    if backend == "duckdb":
        from infersight.store.duckdb_store import DuckDBStore

        return DuckDBStore(os.path.join(workdir, "seed.duckdb"))
    from infersight.store.clickhouse_store import ClickHouseStore

    return ClickHouseStore(ex, database="seed")


def fill_and_migrate(backend: str, args: argparse.Namespace, workdir: str, ex: Any, out: dict[str, Any]) -> Any:
    """Fill at step 2's accuracy, keep a copy for the legacy path, migrate (timed) and return the store."""
    store: Any
    if backend == "duckdb":
        from infersight.store.duckdb_schema import MIGRATIONS as DUCK_STEPS
        from infersight.store.duckdb_schema import migrate
        from infersight.store.duckdb_store import DuckDBStore

        store = DuckDBStore(os.path.join(workdir, "seed.duckdb"))
        migrate(store._write, DUCK_STEPS[:_step_before_alpha(DUCK_STEPS)])
    else:
        from infersight.store.clickhouse_schema import MIGRATIONS
        from infersight.store.clickhouse_store import ClickHouseStore

        store = ClickHouseStore(ex, database="seed", migrations=MIGRATIONS[:_step_before_alpha(MIGRATIONS)])
        store.migrate()
        for r in schema.ROLLUPS:  # the views would add the raw days twice; this fill writes rollups itself
            ex.command(f"DROP VIEW seed.{r.name}_mv")
    out["fill"] = fill(backend, store, args.days, args.per_day, args.tenants, args.models)
    t0 = time.perf_counter()
    keep_v2_copy(backend, store)
    out["copy_v2_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    if backend == "duckdb":
        store.migrate()
    else:
        store = ClickHouseStore(ex, database="seed")
        store.migrate()
        for r in schema.ROLLUPS:
            ex.command(f"DROP VIEW seed.{r.name}_mv")
    out["migrate_s"] = round(time.perf_counter() - t0, 1)
    print(f"{backend} migrated to {store.schema_version()} in {out['migrate_s']} s", file=sys.stderr, flush=True)
    return store


def run_backend(backend: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend}
    ex: Any = None
    if backend != "duckdb":
        from infersight.store.clickhouse_exec import ChdbExecutor

        ex = ChdbExecutor(os.path.join(workdir, "chdb"))
    if args.ingest_records:
        out["ingest_records_per_s"] = ingest_rates(backend, args, workdir, ex)
        print(f"{backend} ingest: {out['ingest_records_per_s']}", file=sys.stderr, flush=True)
    marker = os.path.join(workdir, f"{backend}.filled.json")
    if args.reuse and os.path.exists(marker):  # filled by an earlier run with --workdir: time only
        with open(marker) as fh:
            out["reused"] = json.load(fh)
        store = open_seed(backend, workdir, ex)
    else:
        store = fill_and_migrate(backend, args, workdir, ex, out)
        with open(marker, "w") as fh:
            json.dump({k: out[k] for k in ("fill", "copy_v2_s", "migrate_s")} | {"days": args.days,
                      "per_day": args.per_day, "tenants": args.tenants, "models": args.models}, fh)
    legacy = legacy_duckdb_stats if backend == "duckdb" else legacy_clickhouse_stats
    until = START + timedelta(days=args.days) + OFFSET
    month = until - timedelta(days=args.days)
    queries = {
        f"{args.days}d by tenant,model": StatsQuery(since=month, until=until, group_by=("tenant_id", "model_id")),
        f"{args.days}d total": StatsQuery(since=month, until=until),
        f"{args.days}d by tenant, 1d buckets": StatsQuery(since=month, until=until, group_by=("tenant_id",),
                                                       resolution=timedelta(days=1)),
        "7d by model, 1h buckets": StatsQuery(since=until - timedelta(days=7), until=until, group_by=("model_id",),
                                              resolution=timedelta(hours=1)),
        "24h by tenant,model": StatsQuery(since=until - timedelta(days=1), until=until,
                                          group_by=("tenant_id", "model_id")),
        f"{args.days}d tenant-07 by model": StatsQuery(since=month, until=until, tenant_id="tenant-07",
                                                     group_by=("model_id",)),
        "6h by tenant,model (raw, exact)": StatsQuery(since=until - timedelta(hours=6), until=until,
                                                      group_by=("tenant_id", "model_id")),
    }
    out["stats"] = {}
    for name, q in queries.items():
        rows = store.stats(q)
        if "raw" in name:
            runs = max(5, args.runs // 4)
            out["stats"][name] = {**time_it(lambda q=q: store.stats(q), runs), "rows": len(rows),
                                  "source": rows[0]["source"]}
        else:
            worst = compare(legacy(store, q), rows)
            fns = [lambda q=q: store.stats(q), lambda q=q: legacy(store, q)]
            if backend != "duckdb":  # the SQL path this code replaced, on the same (migrated) tables
                compare(previous_clickhouse_stats(store, q), rows)
                fns.append(lambda q=q: previous_clickhouse_stats(store, q))
            new, old, *prev = time_interleaved(fns, args.runs)
            out["stats"][name] = {**new, "rows": len(rows), "source": rows[0]["source"] if rows else None,
                                  "before": old, "ratio_p50": round(new["p50_ms"] / old["p50_ms"], 2),
                                  "ratio_p95": round(new["p95_ms"] / old["p95_ms"], 2),
                                  "max_quantile_diff_vs_before": round(worst, 4)}
            if prev:
                out["stats"][name]["previous"] = prev[0]
        print(f"{backend} {name}: {out['stats'][name]}", file=sys.stderr, flush=True)
    store.close()
    out["load_avg_after"] = os.getloadavg()  # other work on the machine skews every figure
    return out


def _step_before_alpha(steps: Any) -> int:
    """How many migration steps precede the one that moves sketches to 1% (the fill writes 0.5% ones)."""
    names = [getattr(m, "apply", getattr(m, "statements", None)).__name__ for m in steps]
    return next(i for i, n in enumerate(names) if n in ("to_alpha", "alpha_statements"))


def keep_v2_copy(backend: str, store: Any) -> None:
    """The filled rollup tables (and, in ClickHouse, the raw edges) copied aside for the legacy path."""
    if backend == "duckdb":
        con = store._write
        con.execute("CREATE SCHEMA IF NOT EXISTS v2").fetchall()
        for r in schema.ROLLUPS:
            con.execute(f"CREATE TABLE v2.{r.name} AS SELECT * FROM {r.name}").fetchall()
        con.execute("CHECKPOINT").fetchall()
        return
    db = store.database
    store._exec.command(f"CREATE DATABASE IF NOT EXISTS {db}_v2")
    for name in ("requests", *(r.name for r in schema.ROLLUPS)):
        store._exec.command(f"CREATE TABLE {db}_v2.{name} AS {db}.{name}")
        store._exec.command(f"INSERT INTO {db}_v2.{name} SELECT * FROM {db}.{name}")
        store._exec.command(f"OPTIMIZE TABLE {db}_v2.{name} FINAL")


def _legacy_quantiles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        for _, prefix, _ in schema.ROLLUP_SKETCHES:
            row[f"{prefix}_q"] = quantiles_from_bins(row[f"{prefix}_k"] or [], row[f"{prefix}_v"] or [],
                                                     rollup.QUANTILES, V2_ALPHA)
    return rows


def legacy_duckdb_stats(store: Any, query: StatsQuery) -> list[dict[str, Any]]:
    """The previous DuckDB read path, on the ``v2`` copies: every bucket merged in SQL (``merge_sql``:
    unnest, ``sum ... GROUP BY``, lists), then quantiles from the lists in Python."""
    from infersight.store import duckdb_rollup as dr

    plan = rollup.plan_stats(query)
    sql, params, _ = dr.stats_sql(query, plan)
    parts = sql.split(" FROM (", 1)[1].rsplit(") seg", 1)[0].replace(repr(LN_GAMMA), repr(V2_LN_GAMMA))  # raw edges
    for r in schema.ROLLUPS:
        parts = parts.replace(f" FROM {r.name} ", f" FROM v2.{r.name} ")
    keys = [(g, g) for g in query.group_by]
    if query.resolution is not None:
        keys.append((dr.bucket_sql(query.resolution // timedelta(microseconds=1), "period_start"), "bucket_start"))
    rows = store._query(dr.merge_sql(parts.split(" UNION ALL "), keys), params)
    return rollup.stats_rows(_legacy_quantiles(rows), query, plan.source)


def previous_clickhouse_sql(database: str, query: StatsQuery, plan: rollup.Plan) -> tuple[str, dict[str, Any]]:
    """``clickhouse_rollup.stats_sql`` before it read one part per table (frozen here to time it):
    one ``UNION ALL`` part per segment, raw edges aggregated per minute and key, and six
    ``arrayFirstIndex`` lambdas per sketch for the order statistics."""
    from infersight.store import clickhouse_rollup as cr
    from infersight.store.clickhouse_sql import TS_PARAM, table_ref, ts_param

    params: dict[str, Any] = {}
    where = ""
    for column in ("tenant_id", "model_id", "use_case"):
        if getattr(query, column) is not None:
            where += f" AND {column} = {{{column}:String}}"
            params[column] = getattr(query, column)
    columns = ", ".join(f"`{c}`" for c in schema.ROLLUP_COLUMNS)
    parts = []
    for i, seg in enumerate(plan.segments):
        params[f"s{i}_lo"], params[f"s{i}_hi"] = ts_param(seg.since), ts_param(seg.until)
        lo, hi = f"{{s{i}_lo:{TS_PARAM}}}", f"{{s{i}_hi:{TS_PARAM}}}"
        if seg.rollup is not None:
            parts.append(f"SELECT {columns} FROM {table_ref(database, seg.rollup.name)} "
                         f"WHERE period_start >= {lo} AND period_start < {hi}{where}")
        else:
            requests = table_ref(database, "requests")
            raw = f"(SELECT * FROM {requests} WHERE started_at >= {lo} AND started_at < {hi}{where})"
            parts.append(cr.rollup_select_sql(schema.ROLLUPS[0].micros, raw))
    keys = list(query.group_by)
    select = list(keys)
    if query.resolution is not None:
        params["res"] = query.resolution // timedelta(microseconds=1)
        select.append(f"{cr.bucket_sql('{res:Int64}', 'period_start')} AS bucket_start")
        keys.append("bucket_start")
    select += [f"sum({n}) AS agg_{n}" for n, _ in schema.ROLLUP_COUNTERS]
    select += [f"sumMap({n}) AS agg_{n}" for n, _, _ in schema.ROLLUP_SKETCHES]
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    inner = f"SELECT {', '.join(select)} FROM ({' UNION ALL '.join(parts)}){group}"
    outer = list(keys) + [f"agg_{n} AS {n}" for n, _ in schema.ROLLUP_COUNTERS]
    for n, prefix, _ in schema.ROLLUP_SKETCHES:
        m, cnt, cum = f"agg_{n}", f"{prefix}_n", f"_cum_{prefix}"
        picks = []
        for q in rollup.QUANTILES:
            j = f"toInt64(floor({q!r} * ({cnt} - 1)))"
            picks += [f"mapKeys({m})[arrayFirstIndex(c -> c > {k}, {cum})]" for k in (j, f"least({j} + 1, {cnt} - 1)")]
        outer.append(f"arrayCumSum(mapValues({m})) AS {cum}, toInt64(arraySum(mapValues({m}))) AS {cnt}, "
                     f"[{', '.join(picks)}] AS {prefix}_b")
    order = f" ORDER BY {', '.join(keys)}" if keys else ""
    return f"SELECT {', '.join(outer)} FROM ({inner}){order}", params


def previous_clickhouse_stats(store: Any, query: StatsQuery) -> list[dict[str, Any]]:
    """The read path this code replaced (``previous_clickhouse_sql``), on the same migrated tables."""
    from infersight.store.clickhouse_rollup import quantile_rows

    plan = rollup.plan_stats(query)
    sql, params = previous_clickhouse_sql(store.database, query, plan)
    return rollup.stats_rows(quantile_rows(store._rows(sql, params)), query, plan.source)


def legacy_clickhouse_stats(store: Any, query: StatsQuery) -> list[dict[str, Any]]:
    """The read path of schema step 2, on ``<db>_v2`` (tenant-first tables, 0.5% sketches):
    ``sumMap`` per group, every merged bucket to Python, quantiles there."""
    plan = rollup.plan_stats(query)
    sql, params = previous_clickhouse_sql(f"{store.database}_v2", query, plan)
    sql = sql.replace(repr(LN_GAMMA), repr(V2_LN_GAMMA))  # the raw edges' buckets, as step 2 computed them
    for n, p, _ in schema.ROLLUP_SKETCHES:
        sql = re.sub(rf"arrayCumSum\(mapValues\(agg_{n}\)\) AS _cum_{p}, .*? AS {p}_b",
                     f"mapKeys(agg_{n}) AS {p}_k, mapValues(agg_{n}) AS {p}_v", sql)
    return rollup.stats_rows(_legacy_quantiles(store._rows(sql, params)), query, plan.source)


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> float:
    """Checks both paths give the same rows and counts; the largest relative quantile difference."""
    assert len(before) == len(after), (len(before), len(after))
    worst = 0.0
    for b, a in zip(before, after, strict=True):
        for name, value in b.items():
            if name.endswith(("_p50", "_p95", "_p99")) and value:
                worst = max(worst, abs(a[name] - value) / value)
            elif name not in ("source", "output_tokens_per_s_mean"):
                assert a[name] == value, (name, a[name], value)
    return worst


def time_interleaved(fns: list[Callable[[], Any]], runs: int) -> list[dict[str, Any]]:
    """All, interleaved (a, b, ..., a, b, ...) after two warm-ups each, so load hits them alike."""
    for _ in range(2):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, xs in zip(fns, samples, strict=True):
            t0 = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t0)
    return [pcts(xs) for xs in samples]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="duckdb,chdb")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-day", type=int, default=2_000_000)
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ingest-records", type=int, default=100_000, help="0 skips the ingest comparison")
    ap.add_argument("--batches", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 10_000])
    ap.add_argument("--out", default="benchmarks/results/store-latest.json")
    ap.add_argument("--workdir", help="keep the engines' data here (outside the repo) instead of a temp dir")
    ap.add_argument("--reuse", action="store_true",
                    help="with --workdir: skip the fill and migration when an earlier run left them there")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one backend per process (chdb: one session each)
    args = ap.parse_args()
    if args.child:
        if args.workdir:
            os.makedirs(args.workdir, exist_ok=True)
            print(json.dumps(run_backend(args.child, args, args.workdir)))
            return 0
        with tempfile.TemporaryDirectory(prefix="store-bench-") as workdir:
            print(json.dumps(run_backend(args.child, args, workdir)))
        return 0
    results = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
               "args": {k: v for k, v in vars(args).items() if k != "child"}, "backends": []}
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", backend, *sys.argv[1:]]
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        results["backends"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
