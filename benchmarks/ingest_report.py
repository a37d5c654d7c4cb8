"""Aggregation, targets and markdown tables of the ingest benchmark."""

from __future__ import annotations

import math
from typing import Any

EMBEDDED_GOAL, REDIS_GOAL, BYTES_GOAL = 20_000.0, 10_000.0, 200.0


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pipeline (embedded, redis-duckdb, redis-chdb): mean, min and max records/s over repeats."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        out.setdefault(r["pipeline"], {"rates": []})["rates"].append(r["records_per_s"])
    for v in out.values():
        v.update(mean=_mean(v["rates"]), min=min(v["rates"]), max=max(v["rates"]))
    return out


def storage_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bytes per record of each store, from the first run of each pipeline that measured it."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in runs:
        st, n = r.get("storage"), r["n"]
        if not st or r["pipeline"] in seen:
            continue
        seen.add(r["pipeline"])
        if "file_bytes" in st:
            rows.append({"pipeline": r["pipeline"], "store": "DuckDB", "records": n, "rows": st["rows"],
                         "measure": "file after CHECKPOINT", "bytes": st["file_bytes"],
                         "per_record": st["file_bytes"] / n,
                         "detail": f"used blocks {st['used_block_bytes'] / n:.0f} B/record (rollups included), "
                                   f"free blocks {st['free_block_bytes'] / 2**20:.1f} MiB; the requests table "
                                   f"alone in a fresh file {st['requests_only_file_bytes'] / n:.0f} B/record"})
        else:
            rows.append({"pipeline": r["pipeline"], "store": "ClickHouse (chdb)", "records": n, "rows": st["rows"],
                         "measure": "requests parts after OPTIMIZE FINAL", "bytes": st["parts_bytes"],
                         "per_record": st["parts_bytes"] / n,
                         "detail": f"all tables (rollups too) {st['all_tables_parts_bytes'] / n:.0f} B/record; "
                                   f"uncompressed {st['uncompressed_bytes'] / n:.0f} B/record"})
    return rows


def targets(summary: dict[str, dict[str, Any]], storage: list[dict[str, Any]],
            gateway: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: str, ok: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": value, "pass": ok})

    def rate(key: str, name: str, goal: float) -> None:
        s = summary.get(key)
        if not s:
            add(name, f">= {goal:,.0f} records/s", "not measured", None)
            return
        runs = ", ".join(f"{x:,.0f}" for x in s["rates"])
        add(name, f">= {goal:,.0f} records/s", f"{s['mean']:,.0f} records/s (runs: {runs})", s["mean"] >= goal)

    rate("embedded", "ingest end to end, embedded (MemoryBus + journal -> DuckDB)", EMBEDDED_GOAL)
    rate("redis-duckdb", "ingest through Redis -> `infersight ingest` -> DuckDB", REDIS_GOAL)
    rate("redis-chdb", "ingest through Redis -> consumer -> ClickHouse (chdb)", REDIS_GOAL)
    for preference in (("embedded", "redis-duckdb", "store-duckdb"), ("redis-chdb", "store-chdb")):
        row = next((r for p in preference for r in storage if r["pipeline"] == p), None)
        if row is not None:
            add(f"storage per record, {row['store']}", f"<= {BYTES_GOAL:.0f} bytes",
                f"{row['per_record']:.0f} B ({row['measure']})", row["per_record"] <= BYTES_GOAL)
    if gateway:
        d = gateway["derived"]
        for q in ("p50", "p99"):
            a, b = d.get(f"added_ttft_{q}_ms_quiet"), d.get(f"added_ttft_{q}_ms_flood")
            noise, change = d.get(f"noise_{q}_ms"), d.get(f"change_{q}_ms")
            ok = None if change is None or noise is None or not math.isfinite(noise) else change <= noise
            add(f"gateway added TTFT {q} @{gateway['concurrency']}, {flood_label(gateway)}",
                "not worse by more than the noise",
                f"{_f(a, 2)} -> {_f(b, 2)} ms (change {_f(change, 2)}, quiet-to-quiet noise {_f(noise, 2)} ms)",
                ok)
    else:
        add("gateway added TTFT under ingest", "not worse by more than the noise", "not measured", None)
    return out


def runs_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | pipeline | records | end to end s | records/s | publish µs/record mean / p50 / p99 / max "
             "| spooled to disk | cores: producer / redis / consumer | host busy % |", "|" + "---|" * 9]
    for r in runs:
        pu = r.get("publish_us")
        publish = f"{pu['mean']:.1f} / {pu['p50']:.1f} / {pu['p99']:.1f} / {pu['max'] / 1e3:.0f} ms" if pu else "– (no bus)"
        if "cores" in r:
            c = r["cores"]
            cores = f"{c['producer']:.2f} / {c['redis']:.2f} / {c['consumer']:.2f}"
            spooled = f"{r['producer_bus']['spooled']:,}"
        else:
            where = "with its store process" if r["pipeline"] == "embedded" else "one process"
            cores = f"{r['process_cores']:.2f} ({where})"
            spooled = f"{r['bus']['spooled']:,}" if "bus" in r else "–"
        lines.append(f"| {r['run']} | {r['pipeline']} | {r['n']:,} | {r['e2e_s']:.1f} | {r['records_per_s']:,.0f} "
                     f"| {publish} | {spooled} | {cores} | {_f(r.get('host_busy_pct'), 0)} |")
    return "\n".join(lines)


def phases_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | pipeline | publish phase s (records/s) | in Redis after s | in store after s "
             "| in store.write_requests s (share) | store writes (records each) |", "|" + "---|" * 7]
    for r in runs:
        pub = f"{r['publish_s']:.1f} ({r['n'] / r['publish_s']:,.0f})" if "publish_s" in r else "–"
        redis = f"{r['in_redis_s']:.1f}" if "in_redis_s" in r else "–"
        w = r.get("store_write_s")
        write = f"{w:.1f} ({100 * w / r['e2e_s']:.0f}%)" if isinstance(w, float) and math.isfinite(w) else "–"
        b = r.get("store_batches")
        batches = f"{b:,.0f} ({r['n'] / b:,.0f})" if isinstance(b, (int, float)) and b and math.isfinite(b) else "–"
        lines.append(f"| {r['run']} | {r['pipeline']} | {pub} | {redis} | {r['e2e_s']:.1f} | {write} | {batches} |")
    return "\n".join(lines)


def storage_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| store | records | measured | bytes | bytes/record | detail |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['store']} ({r['pipeline']}) | {r['records']:,} | {r['measure']} | {r['bytes']:,} "
                     f"| {r['per_record']:.0f} | {r['detail']} |")
    return "\n".join(lines)


def gateway_tables(g: dict[str, Any]) -> str:
    lines = [f"Concurrency {g['concurrency']}, {g['rounds']} round(s), {g['segment_s']:.0f} s per segment, each "
             "cell pooled over its segments.", "",
             "| cell | req/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | errors | gateway (or sim) cores "
             "| ingest rows/s | ingest side cores (redis + ingest + flood) | host busy % |", "|" + "---|" * 10]
    for name in ("direct-quiet", "infersight-quiet", "direct-flood", "infersight-flood"):
        c = g["cells"].get(name)
        if not c:
            continue
        lines.append(f"| {name} | {c['rps']:.1f} | {c['ttft_p50_ms']:.2f} | {c['ttft_p99_ms']:.2f} "
                     f"| {c['total_p50_ms']:.1f} | {c['errors']} | {c['server_cores']:.2f} "
                     f"| {c['ingest_rows_per_s']:,.0f} | {c['ingest_side_cores']:.2f} | {c['host_cpu_busy_pct']:.0f} |")
    d = g["derived"]
    lines += ["", "| | added TTFT p50 ms | added TTFT p99 ms |", "|---|---|---|",
              f"| quiet (ingest idle) | {_f(d.get('added_ttft_p50_ms_quiet'), 2)} | {_f(d.get('added_ttft_p99_ms_quiet'), 2)} |",
              f"| flood ({flood_label(g)}) | {_f(d.get('added_ttft_p50_ms_flood'), 2)} "
              f"| {_f(d.get('added_ttft_p99_ms_flood'), 2)} |",
              f"| change | {_f(d.get('change_p50_ms'), 2)} | {_f(d.get('change_p99_ms'), 2)} |",
              f"| noise (spread between quiet pairs) | {_f(d.get('noise_p50_ms'), 2)} | {_f(d.get('noise_p99_ms'), 2)} |"]
    pairs = d.get("pairs", {})
    for mode in ("quiet", "flood"):
        vals = ", ".join(f"{p['p50']:.2f}/{p['p99']:.2f}" for p in pairs.get(mode, []))
        lines.append(f"\nPer adjacent pair (gateway minus direct segment, p50/p99 ms), {mode}: {vals}")
    rows, total = g.get("gateway_rows_in_store"), g.get("gateway_requests_total")
    lines.append(f"\nGateway requests counted on /metrics: {_f(total, 0)}; rows of its tenant in DuckDB: {_f(rows)}.")
    return "\n".join(lines)


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for r in rows:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r["pass"]]
        lines.append(f"| {r['target']} | {r['goal']} | {r['measured']} | {verdict} |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    parts = ["### Throughput runs", "", runs_table(result["runs"]), "", "### Phases", "",
             phases_table(result["runs"]), "", "### Storage", "", storage_table(result["storage"])]
    if result.get("gateway"):
        parts += ["", "### Gateway under ingest", "", gateway_tables(result["gateway"])]
    parts += ["", "### Targets", "", targets_table(result["targets"])]
    for name, prof in (result.get("profiles") or {}).items():
        if prof and "self_pct" in prof:
            parts += ["", f"### Profile: {name} (py-spy, self time)", ""]
            parts += [f"- {pct:5.1f}%  {fn}" for fn, pct in prof["self_pct"][:12]]
    for note in result.get("notes", []):
        parts.append(f"\nNote: {note}")
    return "\n".join(parts)


def flood_label(gateway: dict[str, Any]) -> str:
    """What the flood cells ran: the worker's full rate, a paced flood (``--flood-rate``), or the
    synthetic CPU load of the control (``--control-load``)."""
    if gateway.get("control_load"):
        return f"control: synthetic CPU load of {gateway['control_load']:g} cores, ingest idle"
    rate = gateway.get("flood_rate")
    return f"ingest at {rate:,.0f} records/s" if rate else "ingest at full rate"
