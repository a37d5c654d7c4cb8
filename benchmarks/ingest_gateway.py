"""The gateway under ingest: its added TTFT with the ingest pipeline idle and at full rate.

Scale-out shape on one host: the simulator, ``infersight serve --workers 1`` with ``bus: redis``
(journal on), ``infersight ingest`` with the same config (it owns the DuckDB file), and
redis-server. The gateway's own records flow gateway -> Redis -> ingest -> DuckDB in every cell.
"Flood" cells add ``ingest_procs.py flood``: other gateways' traffic, XADDed into the same stream
as fast as the ingest worker takes it (it keeps the group's lag near ``--max-lag``, so the
worker always has a backlog and runs at its full rate while the stream stays bounded).

Order per round, at one concurrency (gateway_bench's load generator and segment code):

    direct, gateway | flood on | gateway, direct, direct, gateway | flood off | gateway, direct

so each mode's direct and gateway segments sit side by side (ABBA). Added TTFT = gateway's
percentile minus direct's, per mode; "noise" = the spread of that figure between the quiet
pairs (segment 1+2 against 7+8 of every round).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis as redis_lib

from ingest_phases import GW_KEY, REPO, Proc, RedisServer, _healthz_inserted, write_config
from procs import Server, cpu_delta, cpu_seconds, free_port
from report import DIRECT, GATEWAY, Cell, percentile
from segment import LoadSpec, Target, run_segment

QUIET, FLOOD = "quiet", "flood"


def _lag(client: redis_lib.Redis, stream: str, group: str) -> tuple[int, int]:
    """(entries not yet read by the group, entries read but not acked)."""
    try:
        for g in client.xinfo_groups(stream):
            if g.get("name") in (group, group.encode()):
                return int(g.get("lag") or 0), int(g.get("pending") or 0)
    except redis_lib.ResponseError:
        pass
    return 0, 0


def _wait_drained(client: redis_lib.Redis, stream: str, group: str, timeout_s: float = 120.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if _lag(client, stream, group) == (0, 0):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError("the ingest worker did not drain the stream")


def _requests_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("infersight_requests_total{"))


def _seg_ttft(seg: dict[str, Any]) -> tuple[float, float]:
    return percentile(seg["ttft_s"], 50) * 1e3, percentile(seg["ttft_s"], 99) * 1e3


def run_gateway_phase(redis: RedisServer, tmp: Path, *, concurrency: int, seg_s: float, warmup_s: float,
                      rounds: int, max_lag: int, flood_rate: float = 0.0, pin_ingest_cpu: int | None = None,
                      ingest_sched: str = "normal", control_load: float = 0.0, log: Any = print) -> dict[str, Any]:
    """``pin_ingest_cpu``: run Redis, the ingest worker and the flood on that CPU alone, and the
    simulator, the gateway and the load generator on the others (an experiment: does the change
    under flood come from sharing vCPUs?). ``ingest_sched``: ``idle`` puts every thread of the
    ingest worker and the flood under SCHED_IDLE (``idle-redis``: Redis's too). ``control_load``:
    instead of the flood, ``cpu_load.py`` processes busy that many cores in all (the control: the
    same change from CPU work that touches neither Redis, the store nor the disk?)."""
    stream, group = "infersight:requests", "infersight-ingest"
    sim_port, gw_port, ingest_port = free_port(), free_port(), free_port()
    data = tmp / "gw-data"
    cfg = write_config(tmp / "gw.yaml", data, redis_url=redis.url, stream=stream, port=gw_port, sim_port=sim_port)
    py = sys.executable
    previous_affinity = os.sched_getaffinity(0)
    if pin_ingest_cpu is not None:  # children inherit it: the sim, the gateway, every load generator
        os.sched_setaffinity(0, previous_affinity - {pin_ingest_cpu})
    sim = Server("gw-sim", [py, "-m", "infersight.cli", "sim", "--port", str(sim_port), "--seed", "1"],
                 f"http://127.0.0.1:{sim_port}/health", tmp, cwd=str(REPO)).start()
    gw = Server("gw-gateway", [py, "-m", "infersight.cli", "serve", "--config", str(cfg), "--port", str(gw_port),
                               "--workers", "1"], f"http://127.0.0.1:{gw_port}/healthz", tmp, cwd=str(REPO)).start()
    ingest = Server("gw-ingest", [py, "-m", "infersight.cli", "ingest", "--config", str(cfg), "--port", str(ingest_port)],
                    f"http://127.0.0.1:{ingest_port}/healthz", tmp, cwd=str(REPO)).start()
    servers = [sim, gw, ingest]

    def pin_ingest_side(extra: list[int]) -> None:
        if ingest_sched != "normal":
            idle = [p.pid for p in ingest.tree()] + extra
            if ingest_sched == "idle-redis":
                idle += [p.pid for p in redis.tree()]
            for pid in idle:
                _sched_idle(pid)
        if pin_ingest_cpu is not None:
            for pid in [p.pid for p in (*redis.tree(), *ingest.tree())] + extra:
                os.sched_setaffinity(pid, {pin_ingest_cpu})

    pin_ingest_side([])
    client = redis_lib.Redis.from_url(redis.url, decode_responses=True)
    targets = {DIRECT: Target(DIRECT, f"http://127.0.0.1:{sim_port}/v1/chat/completions", "", None),
               GATEWAY: Target(GATEWAY, f"http://127.0.0.1:{gw_port}/v1/chat/completions", GW_KEY, gw)}
    cells: dict[tuple[str, str], Cell] = {}
    segments: list[dict[str, Any]] = []
    flood: Proc | None = None
    loads: list[subprocess.Popen[bytes]] = []
    flood_results: list[dict[str, Any]] = []
    try:
        for s in servers:
            s.wait_ready(60)
        pin_ingest_side([])  # again: threads the ingest worker started while coming up
        order = [(DIRECT, QUIET), (GATEWAY, QUIET), "on", (GATEWAY, FLOOD), (DIRECT, FLOOD), (DIRECT, FLOOD),
                 (GATEWAY, FLOOD), "off", (GATEWAY, QUIET), (DIRECT, QUIET)]
        for rnd in range(rounds):
            for step in order:
                if step == "on" and control_load > 0:
                    loads = _start_cpu_load(control_load)
                    pin_ingest_side([p.pid for p in loads])
                    time.sleep(2.0)
                    continue
                if step == "off" and control_load > 0:
                    _stop(loads)
                    loads = []
                    time.sleep(1.0)
                    continue
                if step == "on":
                    flood = Proc("flood", ["flood", "--url", redis.url, "--stream", stream, "--group", group,
                                           "--max-lag", str(max_lag), "--rate", str(flood_rate),
                                           "--seed", str(100 + rnd)], tmp)
                    pin_ingest_side([flood.proc.pid])
                    flood.wait_mark("ready", 120)
                    time.sleep(2.0)  # the worker reaches its full rate
                    continue
                if step == "off":
                    assert flood is not None
                    flood.stop()
                    flood_results.append(flood.result())
                    flood = None
                    drained = _wait_drained(client, stream, group)
                    log(f"  flood off; backlog drained in {drained:.1f}s")
                    time.sleep(1.0)
                    continue
                name, mode = step
                side = [*redis.tree(), *ingest.tree(), *([] if flood is None else [_proc(flood.proc.pid)]),
                        *[_proc(p.pid) for p in loads]]
                rows0, c0, t0 = _healthz_inserted(ingest_port), cpu_seconds(side), time.monotonic()
                seg = run_segment(targets[name], LoadSpec(concurrency, seg_s, warmup_s), sim, tmp)
                elapsed = time.monotonic() - t0
                rows1, c1 = _healthz_inserted(ingest_port), cpu_seconds(side)
                seg.update(ingest_rows_per_s=(rows1 - rows0) / elapsed, ingest_side_cores=cpu_delta(c0, c1) / elapsed)
                cells.setdefault((name, mode), Cell(f"{name}-{mode}", concurrency)).add(seg)
                p50, p99 = _seg_ttft(seg)
                n = len(seg["total_s"])
                segments.append({"round": rnd + 1, "target": name, "mode": mode, "requests": n,
                                 "rps": n / seg["window_s"], "ttft_p50_ms": p50, "ttft_p99_ms": p99,
                                 "errors": sum(seg["errors"].values()),
                                 "ingest_rows_per_s": seg["ingest_rows_per_s"],
                                 "ingest_side_cores": seg["ingest_side_cores"],
                                 "host_busy_pct": 100 * seg["host_busy_s"] / (seg["window_s"] * seg["host_cores"])})
                log(f"  r{rnd + 1} {name:10s} {mode:5s} {n / seg['window_s']:6.1f} req/s TTFT p50 {p50:6.2f} "
                    f"p99 {p99:7.2f} ms; ingest {seg['ingest_rows_per_s']:7.0f} rows/s")
        time.sleep(1.0)
        _wait_drained(client, stream, group)
        requests_total = _requests_total(gw_port)
    finally:
        if flood is not None:
            flood.stop()
        _stop(loads)
        for s in reversed(servers):
            s.stop()  # gateway first flushes its bus into Redis; ingest then closes the store
        client.close()
        if pin_ingest_cpu is not None:
            os.sched_setaffinity(0, previous_affinity)
            for p in redis.tree():
                os.sched_setaffinity(p.pid, previous_affinity)
    rows_bench = _count_tenant(data / "infersight.duckdb", "bench")
    summaries = {f"{k[0]}-{k[1]}": dict(v.summary(), ingest_rows_per_s=_mean_seg(segments, k, "ingest_rows_per_s"),
                                        ingest_side_cores=_mean_seg(segments, k, "ingest_side_cores"))
                 for k, v in cells.items()}
    return {"concurrency": concurrency, "segment_s": seg_s, "rounds": rounds, "max_lag": max_lag,
            "flood_rate": flood_rate or None, "pin_ingest_cpu": pin_ingest_cpu, "ingest_sched": ingest_sched,
            "control_load": control_load or None,
            "cells": summaries, "segments": segments, "derived": _derive(summaries, segments),
            "flood": flood_results, "gateway_requests_total": requests_total, "gateway_rows_in_store": rows_bench}


def _start_cpu_load(cores: float) -> list[subprocess.Popen[bytes]]:
    """``cpu_load.py`` processes that together keep ``cores`` CPUs busy (whole ones, then the rest)."""
    duties = [1.0] * int(cores) + ([cores - int(cores)] if cores - int(cores) > 0.01 else [])
    return [subprocess.Popen([sys.executable, str(Path(__file__).with_name("cpu_load.py")), "--duty", f"{d:.3f}"])
            for d in duties]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _sched_idle(pid: int) -> None:
    """Every thread of ``pid`` under SCHED_IDLE (threads started later inherit it from theirs)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:
            pass


def _proc(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def _mean_seg(segments: list[dict[str, Any]], key: tuple[str, str], field: str) -> float:
    vals = [s[field] for s in segments if (s["target"], s["mode"]) == key]
    return sum(vals) / len(vals) if vals else float("nan")


def _count_tenant(path: Path, tenant: str) -> int | None:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        return int(con.execute("SELECT count(*) FROM requests WHERE tenant_id = ?", [tenant]).fetchall()[0][0])
    finally:
        con.close()


def _derive(cells: dict[str, dict[str, Any]], segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Added TTFT per mode (pooled), its change under flood, and the quiet-to-quiet noise."""
    out: dict[str, Any] = {}
    for mode in (QUIET, FLOOD):
        g, d = cells.get(f"{GATEWAY}-{mode}"), cells.get(f"{DIRECT}-{mode}")
        if g and d:
            out[f"added_ttft_p50_ms_{mode}"] = g["ttft_p50_ms"] - d["ttft_p50_ms"]
            out[f"added_ttft_p99_ms_{mode}"] = g["ttft_p99_ms"] - d["ttft_p99_ms"]
    # pairs: each gateway segment with the direct segment of the same mode next to it
    pairs: dict[str, list[dict[str, float]]] = {QUIET: [], FLOOD: []}
    for i, s in enumerate(segments):
        if s["target"] != GATEWAY:
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(segments) and segments[j]["target"] == DIRECT and segments[j]["mode"] == s["mode"] \
                    and segments[j]["round"] == s["round"]:
                pairs[s["mode"]].append({"p50": s["ttft_p50_ms"] - segments[j]["ttft_p50_ms"],
                                         "p99": s["ttft_p99_ms"] - segments[j]["ttft_p99_ms"]})
                break
    out["pairs"] = pairs
    for q in ("p50", "p99"):
        quiet = [p[q] for p in pairs[QUIET]]
        noise = max(quiet) - min(quiet) if len(quiet) > 1 else float("nan")
        out[f"noise_{q}_ms"] = noise
        a, b = out.get(f"added_ttft_{q}_ms_{QUIET}"), out.get(f"added_ttft_{q}_ms_{FLOOD}")
        if a is not None and b is not None:
            out[f"change_{q}_ms"] = b - a
            out[f"within_noise_{q}"] = b - a <= noise  # one-sided: better under flood is not a failure
    return out
