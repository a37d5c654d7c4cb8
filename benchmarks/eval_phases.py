"""The load phases of the evaluation benchmark and the readout of the eval pipeline.

Servers run side by side for the whole phase: the simulator (the engine), the judge's simulator
(``sim-judge``, its own process at nice 19 unless ``--judge-sim shared``), a gateway with
``evaluation.enabled: false`` ("off") and one with evaluation on ("on": 5% sampled). Load is open
loop (``eval_loadgen.py``).

- **Probe**: a short segment per (rate, target) to show which rates the host keeps up with.
- **Blocks**, one per rate: per round ``direct, off, on, direct, direct, on, off, direct`` (each
  gateway segment next to a direct one; ABBA), then the on-gateway's eval pipeline is left to
  finish (every sampled task evaluated) and its /metrics are read again; the block's pipeline
  figures are the differences.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from eval_segment import OpenSpec, delta, histogram, run_open_segment, scrape, segment_row, total
from eval_sampling import check
from procs import Server
from report import Cell
from segment import Target

DIRECT, OFF, ON = "direct", "eval-off", "eval-on"
ROUND = (DIRECT, OFF, ON, DIRECT, DIRECT, ON, OFF, DIRECT)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def pipeline_counts(m: dict[Any, float]) -> dict[str, float]:
    """The eval pipeline's counters of one gateway (or the difference of two scrapes)."""
    return {
        "requests": total(m, "infersight_requests_total"),
        "sampled": total(m, "infersight_eval_sampled_total"),
        "sampled_random": total(m, "infersight_eval_sampled_total", reason="random"),
        "published": total(m, "infersight_eval_tasks_total", outcome="published"),
        "dropped": total(m, "infersight_eval_tasks_total", outcome="dropped*"),
        "evaluated": total(m, "infersight_eval_worker_tasks_total", outcome="evaluated"),
        "judge_calls": total(m, "infersight_eval_judge_seconds_count"),
        "judge_seconds_sum": total(m, "infersight_eval_judge_seconds_sum"),
        "judge_failures": total(m, "infersight_eval_judge_failures_total"),
        "judge_tokens": total(m, "infersight_eval_judge_tokens_total"),
        "judge_cost": total(m, "infersight_eval_judge_cost_total"),
        "results_judge": total(m, "infersight_eval_results_total", evaluator="llm_judge"),
        "results_checks": total(m, "infersight_eval_results_total", evaluator="checks"),
        "store_failures": total(m, "infersight_eval_store_failures_total"),
        "mask_queue": total(m, "infersight_eval_mask_queue"),
        "mask_seconds_sum": total(m, "infersight_eval_mask_seconds_sum"),
    }


def wait_settled(port: int, timeout_s: float) -> tuple[float, bool]:
    """Until every sampled task of the gateway was masked, published and evaluated (or dropped)."""
    t0 = time.monotonic()
    while True:
        c = pipeline_counts(scrape(port))
        if c["mask_queue"] == 0 and c["published"] + c["dropped"] >= c["sampled"] \
                and c["evaluated"] >= c["published"]:
            return time.monotonic() - t0, True
        if time.monotonic() - t0 > timeout_s:
            return time.monotonic() - t0, False
        time.sleep(0.25)


def run_probe(targets: dict[str, Target], sim: Server, others: dict[str, list[Server]], tmp: Path,
              rates: list[float], seg_s: float, warmup_s: float, log: Any = print) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        for name in (DIRECT, OFF, ON):
            seg = run_open_segment(targets[name], OpenSpec(rate, seg_s, warmup_s), sim, tmp, others[name])
            row = {"rate": rate, "target": name, **segment_row(seg, name == DIRECT)}
            rows.append(row)
            log(f"  probe {rate:5.0f}/s {name:9s} done {row['completed_rps']:6.1f}/s TTFT p50 "
                f"{row['ttft_p50_ms']:8.2f} p99 {row['ttft_p99_ms']:8.2f} ms in flight max {row['max_in_flight']}")
    return rows


def run_block(rate: float, targets: dict[str, Target], sim: Server, others: dict[str, list[Server]],
              on_port: int, tmp: Path, *, rounds: int, seg_s: float, warmup_s: float, arrivals: str,
              settle_timeout_s: float, sample_rate: float, log: Any = print) -> dict[str, Any]:
    m0 = scrape(on_port)
    started = now_utc()
    cells: dict[str, Cell] = {}
    segments: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for i, name in enumerate(ROUND):
            spec = OpenSpec(rate, seg_s, warmup_s, arrivals=arrivals, seed=1000 * rnd + i)
            seg_start = now_utc()
            seg = run_open_segment(targets[name], spec, sim, tmp, others[name])
            cells.setdefault(name, Cell(name, int(rate))).add(seg)
            row = {"round": rnd + 1, "position": i, "target": name, "started_at": seg_start, **segment_row(seg, name == DIRECT)}
            segments.append(row)
            log(f"  {rate:5.0f}/s r{rnd + 1} {name:9s} done {row['completed_rps']:6.1f}/s TTFT p50 "
                f"{row['ttft_p50_ms']:8.2f} p99 {row['ttft_p99_ms']:8.2f} ms, in flight max "
                f"{row['max_in_flight']}, host {row['host_busy_pct']:.0f}% (others {row['rest_cores']:.2f} cores)")
    load_ended = now_utc()
    settle_s, settled = wait_settled(on_port, settle_timeout_s)
    log(f"  eval pipeline settled {settle_s:.1f}s after the last segment" if settled
        else f"  eval pipeline NOT settled after {settle_s:.0f}s")
    m1 = scrape(on_port)
    d = delta(m1, m0)
    counts = pipeline_counts(d)
    counts["mask_queue"] = pipeline_counts(m1)["mask_queue"]
    summaries = {k: dict(v.summary(), **_open_fields(segments, k)) for k, v in cells.items()}
    return {
        "rate": rate, "rounds": rounds, "segment_s": seg_s, "warmup_s": warmup_s, "arrivals": arrivals,
        "started_at": started, "load_ended_at": load_ended, "settle_s": settle_s, "settled": settled,
        "cells": summaries, "segments": segments, "derived": derive(summaries, segments),
        "pipeline": counts, "lag_histogram": histogram(d, "infersight_eval_lag_seconds"),
        "judge_histogram": histogram(d, "infersight_eval_judge_seconds"),
        "sampling": check(int(round(counts["sampled_random"])), int(round(counts["requests"])), sample_rate),
    }


def _open_fields(segments: list[dict[str, Any]], name: str) -> dict[str, Any]:
    mine = [s for s in segments if s["target"] == name]
    return {"offered_rps": mine[0]["offered_rps"] if mine else None,
            "sent_in_window": sum(s["sent_in_window"] for s in mine),
            "max_in_flight": max((s["max_in_flight"] for s in mine), default=0),
            "send_late_p99_ms_worst": max((s["send_late_p99_ms"] for s in mine), default=None),
            "other_cores": sum(s["other_cores"] for s in mine) / max(1, len(mine)),
            "rest_cores": sum(s["rest_cores"] for s in mine) / max(1, len(mine))}


def derive(cells: dict[str, dict[str, Any]], segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Added TTFT per gateway mode against all direct segments of the block (pooled), the change
    with evaluation on, and the noise: the spread of the added TTFT between the eval-off pairs
    (each gateway segment minus the direct segment next to it)."""
    out: dict[str, Any] = {}
    d = cells.get(DIRECT)
    for mode in (OFF, ON):
        g = cells.get(mode)
        if g and d:
            for q in ("p50", "p99"):
                out[f"added_ttft_{q}_ms_{mode}"] = g[f"ttft_{q}_ms"] - d[f"ttft_{q}_ms"]
    pairs: dict[str, list[dict[str, float]]] = {OFF: [], ON: []}
    for i, s in enumerate(segments):
        if s["target"] == DIRECT:
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(segments) and segments[j]["target"] == DIRECT and segments[j]["round"] == s["round"]:
                pairs[s["target"]].append({"p50": s["ttft_p50_ms"] - segments[j]["ttft_p50_ms"],
                                           "p99": s["ttft_p99_ms"] - segments[j]["ttft_p99_ms"]})
                break
    out["pairs"] = pairs
    for q in ("p50", "p99"):
        offs = [p[q] for p in pairs[OFF]]
        noise = max(offs) - min(offs) if len(offs) > 1 else float("nan")
        out[f"noise_{q}_ms"] = noise
        a, b = out.get(f"added_ttft_{q}_ms_{OFF}"), out.get(f"added_ttft_{q}_ms_{ON}")
        if a is not None and b is not None:
            out[f"change_{q}_ms"] = b - a
            out[f"within_noise_{q}"] = b - a <= noise  # one-sided: lower with evaluation on is noise
    return out


# -- after the run: the on-gateway's DuckDB --------------------------------------------------------------

def read_store(path: Path, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Judged traces, exact lag (scores' evaluated_at minus request_started_at), tokens and cost,
    overall and per block (requests started inside the block's time range)."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        per_trace = """
            SELECT trace_id, min(request_started_at) AS started, max(evaluated_at) AS scored,
                   sum(judge_tokens) AS tokens, sum(judge_cost) AS cost,
                   bool_or(dimension = '_error') AS failed
            FROM eval_results WHERE evaluator = 'llm_judge' GROUP BY trace_id"""

        def summary(where: str = "TRUE", params: list[Any] | None = None) -> dict[str, Any]:
            row = con.execute(f"""
                WITH t AS ({per_trace})
                SELECT count(*), count(*) FILTER (WHERE failed),
                       quantile_cont(epoch(scored) - epoch(started), 0.5),
                       quantile_cont(epoch(scored) - epoch(started), 0.99),
                       max(epoch(scored) - epoch(started)),
                       sum(tokens), sum(cost), avg(tokens), avg(cost)
                FROM t WHERE {where}""", params or []).fetchone()
            assert row is not None
            keys = ("judged_traces", "judge_failed_traces", "lag_p50_s", "lag_p99_s", "lag_max_s",
                    "judge_tokens", "judge_cost", "tokens_per_eval", "cost_per_eval")
            return dict(zip(keys, row))

        out: dict[str, Any] = {"all": summary()}
        req = con.execute("""SELECT count(*), count(*) FILTER (WHERE sampled_for_eval),
                                    count(*) FILTER (WHERE sample_reason = 'random') FROM requests""").fetchone()
        assert req is not None
        out["requests_rows"], out["sampled_rows"], out["sampled_random_rows"] = req
        out["sampled_without_judge_row"] = con.execute(f"""
            SELECT count(*) FROM requests r
            WHERE r.sampled_for_eval AND r.trace_id NOT IN (SELECT trace_id FROM ({per_trace}))""").fetchone()[0]
        out["checks_traces"] = con.execute(
            "SELECT count(DISTINCT trace_id) FROM eval_results WHERE evaluator = 'checks'").fetchone()[0]
        out["judge_dimensions"] = [r[0] for r in con.execute(
            "SELECT DISTINCT dimension FROM eval_results WHERE evaluator = 'llm_judge' ORDER BY 1").fetchall()]
        out["blocks"] = {}
        for b in blocks:
            out["blocks"][str(b["rate"])] = summary(
                "started >= ?::TIMESTAMPTZ AND started < ?::TIMESTAMPTZ", [b["started_at"], b["load_ended_at"]])
        return out
    finally:
        con.close()
