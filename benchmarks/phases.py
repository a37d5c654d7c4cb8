"""The memory phase (N concurrent slow streams through a fresh gateway) and the optional profile."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from procs import MB, RssSampler, Server, raise_fd_limit
from segment import LOADGEN, LoadSpec, Target, run_segment


def run_memory(gateway: Server, url: str, key: str, streams: int, rounds: int, max_tokens: int,
               token_ms: float, tmp: Path) -> dict[str, Any]:
    """``rounds`` waves of ``streams`` concurrent streams; RSS sampled every 0.5 s, of the gateway
    process (which holds the streams) and of its tree (with its eval process)."""
    marks: list[dict[str, Any]] = []
    ok = errors = 0
    ttfts: list[float] = []
    all_open = True
    with RssSampler(gateway, interval_s=0.5) as rss:
        time.sleep(2.0)
        for r in range(rounds):
            out = Path(tempfile.mkstemp(suffix=".json", dir=tmp)[1])
            cmd = [sys.executable, str(LOADGEN), "--mode", "hold", "--url", url, "--key", key,
                   "--model", "sim-slow", "--concurrency", str(streams), "--max-tokens", str(max_tokens),
                   "--timeout", "300", "--out", str(out)]
            t_start = rss.mark()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit)
            assert proc.stdout is not None
            t_open = None
            for line in proc.stdout:
                if line.strip() == "ALL_OPEN":
                    t_open = rss.mark()
            proc.wait()
            t_end = rss.mark()
            data = orjson.loads(out.read_bytes())
            out.unlink()
            all_open = all_open and t_open is not None
            ok += len(data["total_s"])
            errors += sum(data["errors"].values())
            ttfts += data["ttft_s"]
            time.sleep(2.0)
            marks.append({"round": r + 1, "start_s": t_start, "all_open_s": t_open, "done_s": t_end,
                          "rss_after_mb": rss.root_samples[-1][1] / MB,
                          "tree_rss_after_mb": rss.samples[-1][1] / MB, "errors": data["errors"]})
        start_tree_mb = rss.samples[0][1] / MB
        start_mb = rss.root_samples[0][1] / MB
    series = [(round(t, 2), round(b / MB, 1)) for t, b in rss.root_samples]
    tree = [(round(t, 2), round(b / MB, 1)) for t, b in rss.samples]
    after = [m["rss_after_mb"] for m in marks]
    growth = after[-1] - after[0]
    ttfts.sort()
    return {
        "streams": streams, "rounds": rounds, "max_tokens": max_tokens, "token_ms": token_ms,
        "ok": ok, "errors": errors, "all_open": all_open,
        "stream_ttft_p50_ms": ttfts[len(ttfts) // 2] * 1e3 if ttfts else None,
        "start_mb": start_mb, "peak_mb": max(b for _, b in series), "end_mb": series[-1][1],
        "after_round_mb": after, "growth_mb": growth,
        "flat": growth <= max(20.0, 0.10 * after[0]),
        "tree_start_mb": start_tree_mb, "tree_peak_mb": max(b for _, b in tree), "tree_end_mb": tree[-1][1],
        "tree_processes": len(rss.server.tree()),
        "rounds_detail": marks, "rss_series_mb": series, "tree_rss_series_mb": tree,
    }


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def _frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarize_profile(raw: str, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed ("raw") output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_key(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
    share = lambda c: [(k, round(100.0 * v / total, 1)) for k, v in c.most_common(top)]  # noqa: E731
    return {"samples": total, "self_pct": share(self_c), "inclusive_pct": share(incl_c)}


def run_profile(py_spy: str, gateway: Server, target: Target, spec: LoadSpec, sim: Server,
                tmp: Path, out_dir: Path) -> dict[str, Any]:
    """py-spy (non-blocking, 200 Hz) on the gateway during an extra, unreported segment."""
    raw_path = out_dir / "gateway-profile.txt"
    seconds = int(spec.warmup_s + spec.duration_s + 2)
    cmd = [py_spy, "record", "--pid", str(gateway.pid), "--duration", str(seconds), "--rate", "200",
           "--nonblocking", "--format", "raw", "--output", str(raw_path)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    seg = run_segment(target, spec, sim, tmp)
    _, err = spy.communicate(timeout=seconds + 30)
    if spy.returncode != 0 or not raw_path.exists():
        return {"error": f"py-spy failed ({spy.returncode}): {err.strip()[-500:]}"}
    summary = summarize_profile(raw_path.read_text())
    summary["rps_while_profiled"] = len(seg["total_s"]) / seg["window_s"]
    summary["raw_file"] = str(raw_path)  # in the temp dir: kept with --keep-tmp
    return summary
