"""Realistic synthetic RequestRecords for the ingest benchmark (no prompt or completion text).

Shaped like what the gateway writes (``gateway/proxy.py``): 50 tenants (Zipf-like traffic shares),
5 models on 3 backends, 4 use cases, 3 request types; status 200 for ~97.5% with 400/429/499/500/
502/503/504 errors; lognormal TTFT, inter-token latency, queue time and token counts; full-precision
float timings (the gateway does not round them); random hex trace/span ids and a sha256-sized
``prompt_hash``; ``started_at`` an ISO-8601 UTC string with microseconds, in time order with the
jitter of requests that finish out of order. Built column-wise with numpy so that 300,000 records
take ~2 s, outside every measured window.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np

from infersight.model import RequestRecord

TENANTS = [f"tenant-{i:02d}" for i in range(50)]
MODELS = ["llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "qwen2.5-32b-instruct", "mistral-small-24b",
          "gpt-oss-20b"]
MODEL_WEIGHTS = [0.40, 0.20, 0.15, 0.15, 0.10]
BACKEND_OF = {"llama-3.1-8b-instruct": "vllm-a", "llama-3.1-70b-instruct": "vllm-b",
              "qwen2.5-32b-instruct": "vllm-b", "mistral-small-24b": "sglang-a", "gpt-oss-20b": "sglang-a"}
USE_CASES = ["chat", "summarize", "extract", "classify"]
USE_CASE_WEIGHTS = [0.55, 0.2, 0.15, 0.1]
REQUEST_TYPES = ["interactive", "batch", "eval"]
REQUEST_TYPE_WEIGHTS = [0.8, 0.17, 0.03]
# (status, error_type, share of all requests); the rest is 200
ERRORS = [(400, "bad_request", 0.004), (429, "rate_limited", 0.008), (499, "client_disconnected", 0.003),
          (500, "upstream_error", 0.004), (502, "upstream_unreachable", 0.002), (503, "upstream_overloaded", 0.002),
          (504, "upstream_timeout", 0.002)]


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    raw = rng.bytes(n * nbytes).hex()
    w = 2 * nbytes
    return [raw[i:i + w] for i in range(0, n * w, w)]


def _pick(rng: np.random.Generator, values: list[str], weights: list[float], n: int) -> list[str]:
    p = np.asarray(weights, dtype=float)
    idx = rng.choice(len(values), size=n, p=p / p.sum())
    return [values[i] for i in idx]


def _opt(values: np.ndarray, mask: np.ndarray) -> list[float | None]:
    """Floats (numpy -> Python) with None where ``mask`` is False."""
    return [float(v) if m else None for v, m in zip(values.tolist(), mask.tolist())]


def make_records(n: int, seed: int = 1, start_ts: float | None = None, rate_per_s: float = 200.0,
                 id_prefix: str = "") -> list[RequestRecord]:
    """``n`` records starting at ``start_ts`` (default: ``n / rate_per_s`` seconds ago), ~``rate_per_s``
    apart on average. ``id_prefix`` (hex) replaces the start of each trace id, keeping ids unique
    between generator runs that share a seed."""
    rng = np.random.default_rng(seed)
    if start_ts is None:
        start_ts = time.time() - n / rate_per_s
    starts = start_ts + np.cumsum(rng.exponential(1.0 / rate_per_s, n)) + rng.normal(0.0, 0.05, n)
    tenant_w = [1.0 / (i + 1) ** 0.9 for i in range(len(TENANTS))]
    tenants = _pick(rng, TENANTS, tenant_w, n)
    models = _pick(rng, MODELS, MODEL_WEIGHTS, n)
    use_cases = _pick(rng, USE_CASES, USE_CASE_WEIGHTS, n)
    request_types = _pick(rng, REQUEST_TYPES, REQUEST_TYPE_WEIGHTS, n)

    status = np.full(n, 200, dtype=np.int64)
    error_type: list[str | None] = [None] * n
    u = rng.random(n)
    edge = 0.0
    for code, kind, share in ERRORS:
        hit = np.flatnonzero((u >= edge) & (u < edge + share))
        status[hit] = code
        for i in hit.tolist():
            error_type[i] = kind
        edge += share
    ok = status == 200
    streamed = rng.random(n) < 0.8
    early_fail = ~ok & (rng.random(n) < 0.7)  # most errors happen before the first token

    queue = rng.lognormal(np.log(2.0), 1.2, n)
    ttft = rng.lognormal(np.log(180.0), 0.7, n) + queue
    itl = rng.lognormal(np.log(25.0), 0.35, n)
    completion = np.maximum(1, rng.lognormal(np.log(180.0), 0.9, n).astype(np.int64))
    completion[early_fail] = 0
    prompt = np.maximum(1, rng.lognormal(np.log(600.0), 1.1, n).astype(np.int64))
    cached = np.where(rng.random(n) < 0.3, (prompt * rng.random(n)).astype(np.int64), 0)
    estimate = np.maximum(1, (prompt * rng.uniform(0.85, 1.15, n)).astype(np.int64))
    decode_ms = itl * np.maximum(completion - 1, 0)
    total = np.where(early_fail, rng.lognormal(np.log(40.0), 1.0, n), ttft + decode_ms)
    itl_p50 = itl * rng.uniform(0.85, 1.0, n)
    itl_p99 = itl * rng.uniform(1.5, 4.0, n)
    tps = np.where(decode_ms > 0, (completion - 1) / np.maximum(decode_ms, 1e-9) * 1000.0, 0.0)
    has_timing = streamed & ~early_fail
    has_itl = has_timing & (completion > 1)
    finish = np.where(rng.random(n) < 0.85, "stop", "length")
    sampled_random = rng.random(n) < 0.01
    sampled_error = ~ok & (rng.random(n) < 0.2)
    has_parent = rng.random(n) < 0.2
    disconnected = status == 499

    trace_ids = _hex(rng, n, 16)
    if id_prefix:
        trace_ids = [id_prefix + t[len(id_prefix):] for t in trace_ids]
    span_ids = _hex(rng, n, 8)
    parent_ids = _hex(rng, n, 8)
    hashes = _hex(rng, n, 32)
    started = [datetime.fromtimestamp(t, timezone.utc).isoformat() for t in starts.tolist()]
    ttft_l, total_l = _opt(ttft, has_timing), total.tolist()
    itl_l, p50_l, p99_l = _opt(itl, has_itl), _opt(itl_p50, has_itl), _opt(itl_p99, has_itl)
    tps_l = _opt(tps, has_itl)
    for i in np.flatnonzero(ok & ~streamed).tolist():  # non-streamed: tokens over the whole request
        tps_l[i] = float(completion[i] / total[i] * 1000.0)
    queue_l = queue.tolist()
    completion_l, prompt_l, cached_l, est_l = completion.tolist(), prompt.tolist(), cached.tolist(), estimate.tolist()
    status_l, ok_l, stream_l = status.tolist(), ok.tolist(), streamed.tolist()
    finish_l, parent_l, disc_l = finish.tolist(), has_parent.tolist(), disconnected.tolist()
    random_l, error_l = sampled_random.tolist(), sampled_error.tolist()
    gpt_oss = "gpt-oss-20b"
    out: list[RequestRecord] = []
    for i in range(n):
        model = models[i]
        good = ok_l[i]
        out.append(RequestRecord(
            trace_id=trace_ids[i], span_id=span_ids[i], tenant_id=tenants[i], model_id=model,
            backend=BACKEND_OF[model], endpoint_type="openai", use_case=use_cases[i],
            request_type=request_types[i], api="chat", parent_span_id=parent_ids[i] if parent_l[i] else None,
            started_at=started[i], ttft_ms=ttft_l[i], total_ms=total_l[i], itl_ms_mean=itl_l[i],
            itl_ms_p50=p50_l[i], itl_ms_p99=p99_l[i], output_tokens_per_s=tps_l[i], queue_ms=queue_l[i],
            prompt_tokens=prompt_l[i], completion_tokens=completion_l[i] if good or completion_l[i] else None,
            cached_prompt_tokens=cached_l[i], reasoning_tokens=completion_l[i] // 3 if model == gpt_oss else None,
            prompt_tokens_estimated=est_l[i], prompt_tokens_estimate_kind="heuristic", token_source="backend",
            status_code=status_l[i], error_type=error_type[i], finish_reason=finish_l[i] if good else None,
            stream=stream_l[i], client_disconnected=disc_l[i], prompt_hash=hashes[i],
            sampled_for_eval=random_l[i] or error_l[i],
            sample_reason="error" if error_l[i] else ("random" if random_l[i] else None),
        ))
    return out
