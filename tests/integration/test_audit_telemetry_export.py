"""Telemetry collector, Parquet export and retention under bad input: nothing wrong published, nothing lost
silently, nothing blocking.

Scrape targets are real HTTP servers on 127.0.0.1 (``http.server`` in a thread, pages in the format
prometheus_client writes for vLLM); the export and retention run on a real DuckDB file. Each test's
docstring says what went wrong before the fix (or, for the ones that fill a gap, what they guard).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pytest
from prometheus_client import CollectorRegistry

from infersight.export.parquet import export_parquet
from infersight.model import RequestRecord
from infersight.model.telemetry import TelemetrySample
from infersight.retention import RetentionLoop
from infersight.store.base import RequestFilter, RetentionPolicy
from infersight.store.duckdb_store import DuckDBStore
from infersight.telemetry.cloudwatch import CloudWatchImporter, SageMakerVariant
from infersight.telemetry.collector import TelemetryCollector, TelemetryMetrics
from infersight.telemetry.nvml import NvmlCollector
from infersight.telemetry.settings import TelemetrySettings
from tests.unit.telemetry.test_nvml import FakeNvml, h100

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NAME_MAX = 255  # bytes of one file or directory name (ext4, xfs, btrfs, tmpfs)
Route = Callable[[BaseHTTPRequestHandler], None]


# --- a scrape target: pages served over 127.0.0.1 ---------------------------------------------------


def send(status: int, body: bytes, content_type: str = "text/plain; version=0.0.4; charset=utf-8") -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return route


class Pages:
    """An HTTP server whose paths answer with ``routes[path]`` (swappable between rounds)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                route = routes.get(self.path)
                if route is None:
                    send(404, b"not found")(self)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):  # the collector gave up first
                    pass

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> Pages:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pages() -> Iterator[Pages]:
    with Pages() as server:
        yield server


def vllm_page(prompt_tokens: str = "1000", kv: str = "0.5", running: str = "3",
              ttft: tuple[str, str, str] = ("10", "20", "30"), repeat_running: bool = False) -> bytes:
    """A vLLM /metrics page as prometheus_client writes it (0.0.4), one model."""
    lab = 'engine="0",model_name="llama-3-8b"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{lab}}} {running}",
        *([f"vllm:num_requests_running{{{lab}}} {running}"] if repeat_running else []),
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{lab}}} {kv}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{lab}}} {prompt_tokens}",
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f'vllm:time_to_first_token_seconds_bucket{{{lab},le="0.1"}} {ttft[0]}',
        f'vllm:time_to_first_token_seconds_bucket{{{lab},le="1.0"}} {ttft[1]}',
        f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} {ttft[2]}',
        f"vllm:time_to_first_token_seconds_count{{{lab}}} {ttft[2]}",
        f"vllm:time_to_first_token_seconds_sum{{{lab}}} 3.5",
    ]
    return ("\n".join(lines) + "\n").encode()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def failures(registry: CollectorRegistry, instance: str, kind: str) -> float:
    return registry.get_sample_value("infersight_telemetry_scrape_failures_total",
                                     {"instance": instance, "kind": kind}) or 0.0


async def rounds(collector: TelemetryCollector, n: int = 1, between: Callable[[int], None] | None = None,
                 ) -> list[list[TelemetrySample]]:
    out = []
    async with collector.session() as session:
        for i in range(n):
            if between is not None:
                between(i)
            out.append(await collector.run_round(session))
    return out


def values(samples: list[TelemetrySample]) -> dict[str, float]:
    got: dict[str, float] = {}
    for s in samples:
        assert s.metric not in got, f"two samples of {s.metric}"
        got[s.metric] = s.value
    return got


# --- engine pages: values that are not numbers, repeated series -------------------------------------


def test_nan_and_inf_from_an_engine_are_no_figure_and_do_not_skew_the_next_rate(pages: Pages) -> None:
    """Was: ``+Inf``/``-Inf`` gauges were published as ``kv_cache_usage = inf`` (orjson writes it to the
    journal and the API as null), a ``+Inf`` histogram count gave NaN quantiles, and a NaN or ``+Inf``
    counter was remembered as the base, so the next finite value read as a reset: 1010 tokens after
    1000 became a rate of 101 tokens/s instead of 0.5."""
    script = [
        vllm_page("1000", "0.5", "3", ("10", "20", "30")),
        vllm_page("NaN", "+Inf", "-Inf", ("15", "25", "+Inf")),
        vllm_page("1010", "NaN", "3", ("20", "30", "50")),
        vllm_page("+Inf", "0.25", "2", ("20", "NaN", "50")),
        vllm_page("1030", "0.5", "3", ("30", "40", "70")),
    ]
    clock = Clock()
    settings = TelemetrySettings(interval_s=10, timeout_s=2, targets=[
        {"instance": "gpu-1", "kind": "vllm", "url": pages.url("/metrics"), "models": ["llama-3-8b"]}])
    collector = TelemetryCollector(settings, lambda s: None, clock=clock)

    def serve(i: int) -> None:
        clock.t = T0 + 10 * i
        pages.routes["/metrics"] = send(200, script[i])

    got = asyncio.run(rounds(collector, len(script), serve))
    assert collector.failures == 0
    for batch in got:
        assert all(math.isfinite(s.value) for s in batch), [(s.metric, s.value) for s in batch]
    assert values(got[1]) == {}  # nothing readable on that page: nothing made up
    third = values(got[2])
    assert third["prompt_tokens_per_s"] == pytest.approx(10 / 20)  # against the last finite scrape, 20 s back
    assert "kv_cache_usage" not in third and third["requests_running"] == 3
    assert third["engine_ttft_p50_s"] == pytest.approx(0.1)  # increase since round 0: (10, 10, 20), rank 10
    fourth = values(got[3])
    assert "prompt_tokens_per_s" not in fourth and "engine_ttft_p50_s" not in fourth
    assert fourth["kv_cache_usage"] == 0.25
    fifth = values(got[4])
    assert fifth["prompt_tokens_per_s"] == pytest.approx(20 / 20)  # 1010 -> 1030 over rounds 2 to 4
    assert fifth["engine_ttft_p50_s"] == pytest.approx(0.1)  # since round 2, not the NaN page: (10, 10, 20)


def test_a_series_repeated_on_a_page_counts_once(pages: Pages) -> None:
    """Was: a page that repeats a series (same name and labels) had its gauge summed twice:
    ``requests_running`` 6 for an engine running 3. Prometheus keeps the first of such duplicates."""
    pages.routes["/metrics"] = send(200, vllm_page(running="3", repeat_running=True))
    settings = TelemetrySettings(interval_s=10, timeout_s=2, targets=[
        {"instance": "gpu-1", "kind": "vllm", "url": pages.url("/metrics")}])
    got = asyncio.run(TelemetryCollector(settings, lambda s: None, clock=Clock()).collect_once())
    assert values(got)["requests_running"] == 3


# --- pages the collector cannot use, and answers that fail ------------------------------------------


HTML = b"<!DOCTYPE html>\n<html><head><title>vLLM</title></head>\n<body>Not Found</body></html>\n"


@pytest.mark.parametrize("body, content_type", [
    (HTML, "text/html"),
    (b'{"object": "list", "data": [{"id": "llama-3-8b"}]}', "application/json"),
    (b"Internal Server Error\n", "text/plain"),
])
def test_a_200_page_that_is_not_prometheus_text_is_a_failure(pages: Pages, body: bytes, content_type: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Was: a mistyped URL answering 200 with HTML or JSON counted as a healthy scrape of no samples:
    no failure, no log line, a target that silently never reports."""
    caplog.set_level(logging.INFO, logger="infersight.telemetry")
    pages.routes["/ui"] = send(200, body, content_type)
    pages.routes["/metrics"] = send(200, vllm_page())
    pages.routes["/empty"] = send(200, b"# HELP vllm:num_requests_running Nothing observed yet.\n"
                                       b"# TYPE vllm:num_requests_running gauge\n")
    registry = CollectorRegistry()
    settings = TelemetrySettings(interval_s=10, timeout_s=2, targets=[
        {"instance": "wrong-url", "kind": "vllm", "url": pages.url("/ui")},
        {"instance": "fresh", "kind": "vllm", "url": pages.url("/empty")},
        {"instance": "good", "kind": "vllm", "url": pages.url("/metrics")},
    ])
    collector = TelemetryCollector(settings, lambda s: None, TelemetryMetrics(registry), clock=Clock())
    got = asyncio.run(rounds(collector, 2))
    assert failures(registry, "wrong-url", "vllm") == 2
    assert failures(registry, "fresh", "vllm") == 0  # an exporter with nothing observed yet is fine
    assert collector.down == {("wrong-url", "vllm"): "not Prometheus text"}
    down = [r for r in caplog.records if r.getMessage().startswith("telemetry target down")]
    assert [r.fields["instance"] for r in down] == ["wrong-url"]  # once, not per round
    assert all(values(batch)["requests_running"] == 3 for batch in got)  # the good target reports on


DCGM_PAGE = (b"# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
             b'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1",modelName="NVIDIA H100"} 37\n')


def test_a_page_of_another_kind_is_a_failure_not_silence(pages: Pages) -> None:
    """Was: a dcgm-exporter page configured as ``vllm`` (or a vLLM page as ``dcgm``) parsed as healthy
    exposition text with nothing of its kind: no samples, no failure, no log line."""
    pages.routes["/dcgm"] = send(200, DCGM_PAGE)
    pages.routes["/vllm"] = send(200, vllm_page())
    registry = CollectorRegistry()
    settings = TelemetrySettings(interval_s=10, timeout_s=2, targets=[
        {"instance": "gpu-node", "kind": "vllm", "url": pages.url("/dcgm")},
        {"instance": "engine", "kind": "dcgm", "url": pages.url("/vllm")},
        {"instance": "gpu-node-ok", "kind": "dcgm", "url": pages.url("/dcgm")},
    ])
    collector = TelemetryCollector(settings, lambda s: None, TelemetryMetrics(registry), clock=Clock())
    got = asyncio.run(collector.collect_once())
    assert failures(registry, "gpu-node", "vllm") == 1 and failures(registry, "engine", "dcgm") == 1
    assert failures(registry, "gpu-node-ok", "dcgm") == 0
    assert collector.down == {("gpu-node", "vllm"): "no vllm metrics on the page (is the target's kind right?)",
                              ("engine", "dcgm"): "no dcgm metrics on the page (is the target's kind right?)"}
    assert {s.instance for s in got} == {"gpu-node-ok"}


def test_bad_answers_are_counted_and_never_block(pages: Pages) -> None:
    """Fills a gap (refused, hung and 404 are covered elsewhere): a 500, a body cut short, a body that
    trickles past the timeout and a page over the 32 MiB cap each count a failure, within the timeout,
    while the healthy target reports."""

    def truncated(h: BaseHTTPRequestHandler) -> None:
        body = vllm_page()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body) + 500))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        h.close_connection = True

    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(60):
            h.wfile.write(b"# slow\n")
            h.wfile.flush()
            time.sleep(0.05)

    huge = vllm_page() + b"# padding " + b"x" * (33 << 20) + b"\n"  # 33 MiB: over the 32 MiB cap
    pages.routes.update({"/metrics": send(200, vllm_page()), "/500": send(500, b"boom"), "/cut": truncated,
                         "/slow": trickle, "/huge": send(200, huge)})
    registry = CollectorRegistry()
    settings = TelemetrySettings(interval_s=10, timeout_s=1.5, targets=[  # the huge page needs < 1.5 s
        {"instance": "good", "kind": "vllm", "url": pages.url("/metrics")},
        *({"instance": name, "kind": "vllm", "url": pages.url(f"/{name}")} for name in ("500", "cut", "slow", "huge")),
    ])
    collector = TelemetryCollector(settings, lambda s: None, TelemetryMetrics(registry), clock=Clock())
    started = time.monotonic()
    got = asyncio.run(collector.collect_once())
    assert time.monotonic() - started < 1.5 + 1.0  # bounded by the timeout (plus a busy host), not the 3 s trickle
    for name in ("500", "cut", "slow", "huge"):
        assert failures(registry, name, "vllm") == 1, name
    down = collector.down
    assert down[("500", "vllm")] == "HTTP 500" and down[("slow", "vllm")] == "timeout"
    assert "larger than" in down[("huge", "vllm")] and "Payload" in down[("cut", "vllm")]
    assert values(got)["requests_running"] == 3


def test_a_slow_page_to_parse_does_not_time_out_the_other_targets(pages: Pages) -> None:
    """Was: each page was parsed on the collector's loop as soon as it arrived, while the other fetches
    were in flight; a big page (a 20 MiB page takes about 2 s to parse) held their responses unread
    until their timeout had passed, so healthy targets were counted as timed out."""

    def late(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.2)  # answers well within the timeout
        send(200, vllm_page())(h)

    pages.routes.update({"/big": send(200, vllm_page(running="7")), "/late": late})
    registry = CollectorRegistry()
    settings = TelemetrySettings(interval_s=10, timeout_s=0.8, targets=[
        {"instance": "big", "kind": "vllm", "url": pages.url("/big")},
        {"instance": "late", "kind": "vllm", "url": pages.url("/late")},
    ])
    collector = TelemetryCollector(settings, lambda s: None, TelemetryMetrics(registry), clock=Clock())
    parse = collector._map

    def slow_parse(target: Any, body: bytes, ts: float) -> list[TelemetrySample]:
        if target.instance == "big":
            time.sleep(1.2)  # the CPU a huge page costs, on the collector's loop
        return parse(target, body, ts)

    collector._map = slow_parse  # type: ignore[method-assign]
    got = asyncio.run(collector.collect_once())
    assert failures(registry, "late", "vllm") == 0, collector.down
    assert {(s.instance, s.value) for s in got if s.metric == "requests_running"} == {("big", 7), ("late", 3)}


# --- NVML ---------------------------------------------------------------------------------------------


class LyingNvml(FakeNvml):
    """nvidia-ml-py decodes the driver's strings; a bad one raises UnicodeDecodeError, not NVMLError."""

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802 - pynvml's name
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


class BrokenInitNvml(FakeNvml):
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's name
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")


def test_nvml_errors_that_are_not_nvmlerror_cost_no_engine_samples(pages: Pages,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Was: NVML's start caught only ``NVMLError``; anything else the binding raised escaped
    ``collect()`` into the round, which then published nothing, not even the engines' samples, round
    after round (logged once as a bug)."""
    caplog.set_level(logging.INFO)
    pages.routes["/metrics"] = send(200, vllm_page())
    settings = TelemetrySettings(interval_s=10, timeout_s=2, targets=[
        {"instance": "gpu-1", "kind": "vllm", "url": pages.url("/metrics")},
        {"instance": "this-host", "kind": "nvml"}])
    published: list[TelemetrySample] = []
    collector = TelemetryCollector(settings, published.append, TelemetryMetrics(CollectorRegistry()), clock=Clock(),
                                   nvml=NvmlCollector("this-host", clock=Clock(), nvml=LyingNvml([h100(0)])))
    got = asyncio.run(rounds(collector, 2))
    for batch in got:
        by_source = {s.source for s in batch}
        assert by_source == {"vllm", "nvml"}  # the GPU is read without its UUID
        assert {s.metric for s in batch if s.source == "nvml"} >= {"gpu_utilization", "gpu_memory_used_bytes"}
    assert len(published) == sum(len(b) for b in got)
    assert not [r for r in caplog.records if "round failed" in r.getMessage()]

    collector = TelemetryCollector(settings, lambda s: None, TelemetryMetrics(CollectorRegistry()), clock=Clock(),
                                   nvml=NvmlCollector("this-host", nvml=BrokenInitNvml([h100(0)])))
    got = asyncio.run(rounds(collector, 2))
    assert all({s.source for s in batch} == {"vllm"} for batch in got)
    assert collector.nvml is not None and collector.nvml.available is False  # stood down, said once
    assert sum("GPU telemetry (NVML) is off" in r.getMessage() for r in caplog.records) == 1
    collector.stop()


# --- CloudWatch: malformed answers at the client seam ---------------------------------------------------


class FakeCloudWatch:
    """A client with ``get_metric_data``; returns what it is given (botocore passes CBOR values through)."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        return self.answer(request)


def test_a_malformed_cloudwatch_datapoint_loses_one_page_of_one_query(caplog: pytest.LogCaptureFixture) -> None:
    """Was: one value that is not a number (or a timestamp that is not one) raised out of ``collect()``:
    every query of the request stayed unread and was asked again, failing the same way, poll after poll."""
    caplog.set_level(logging.WARNING)
    start = datetime.fromtimestamp(T0, timezone.utc)
    stamps = [start + timedelta(minutes=i) for i in range(3)]

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        results = []
        for q in request["MetricDataQueries"]:
            qid = q["Id"]
            if qid.endswith("_invocations"):  # a value that is not a number
                times, vals = stamps, [10.0, None, 30.0]
            elif qid.endswith("_modellatency"):  # which value is at which time?
                times, vals = stamps[:2], [1.0, 2.0, 3.0]
            else:
                times, vals = stamps, [40.0, 50.0, 60.0]
            results.append({"Id": qid, "Timestamps": times, "Values": vals, "StatusCode": "Complete"})
        return {"MetricDataResults": results}

    client = FakeCloudWatch(answer)
    target = SageMakerVariant("llm-prod", gpus_per_instance=1)
    importer = CloudWatchImporter(client, [target], clock=lambda: T0 + 600, lookback_s=600, settle_s=120,
                                  region="us-east-1")
    samples = importer.collect()
    assert {s.metric for s in samples} == {"gpu_utilization", "gpu_memory_utilization", "overhead_latency_ms",
                                           "errors_4xx_per_s", "errors_5xx_per_s"}
    assert len(samples) == 5 * 3
    assert "malformed" in importer.failed[target]  # counted by the collector, not silent
    assert sum("not (timestamp, number) pairs" in r.getMessage() for r in caplog.records) == 2
    assert set(importer.watermarks()) == {q.id for q in importer.queries}  # every query moved on
    assert importer.collect() == [] and len(client.calls) == 1  # the same window is not asked again


# --- Parquet export ------------------------------------------------------------------------------------


EXPORT_T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=timezone.utc)
ODD = [("../../etc", "a/b"), ("..", ".."), ("ten=ant", "m%2Fx"), ("sp ace", "mödel ü"),
       ("日本", "m=1/2 #?"), ("a\\b", ""), (".", "~x")]
LONG = ["m" * 256, "/" * 256, "日本語" * 85, "日本語" * 84 + "x", "模" * 100]


def write_records(store: DuckDBStore, pairs: list[tuple[str, str]]) -> None:
    store.write_requests([RequestRecord(
        trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", tenant_id=tenant, model_id=model, backend="sim",
        started_at=(EXPORT_T0 + timedelta(seconds=i)).isoformat(), status_code=200, prompt_tokens=i)
        for i, (tenant, model) in enumerate(pairs)])


def test_export_partitions_any_id_inside_out_and_reads_back(tmp_path: Path) -> None:
    """Was: a model id whose encoded directory name passed 255 bytes (any 250-character id, 28 CJK
    characters, 84 slashes: whatever a client sends as ``model`` is recorded, up to 256 characters)
    failed the whole export with ``OSError: File name too long``. Odd ids (``..``, ``/``, ``=``, ``%``,
    spaces, non-ASCII) stay inside ``--out`` and read back identical with pyarrow and DuckDB."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    pairs = ODD + [("acme", m) for m in LONG]
    write_records(store, pairs)
    out = tmp_path / "export"
    summary = export_parquet(store, None, None, out, chunk_rows=4)
    store.close()
    assert summary.rows == len(pairs)
    files = sorted(out.rglob("*.parquet"))
    assert len(files) == summary.files
    assert {p for p in tmp_path.rglob("*.parquet")} == set(files)  # nothing written outside --out
    for f in files:
        assert f.resolve().is_relative_to(out.resolve())
        assert all(len(part.encode()) <= NAME_MAX for part in f.relative_to(out).parts)

    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    rows = table.select(["tenant", "tenant_id", "model", "model_id"]).to_pylist()
    assert sorted((r["tenant_id"], r["model_id"]) for r in rows) == sorted(pairs)  # full ids, every row
    for r in rows:
        if r["model_id"] in LONG:
            assert r["model"] != r["model_id"] and r["model"].split("~")[0] in r["model_id"]
        else:
            assert (r["tenant"], r["model"]) == (r["tenant_id"], r["model_id"])
    assert len({r["model"] for r in rows if r["model_id"] in LONG}) == len(LONG)  # distinct ids stay apart

    in_duckdb = duckdb.sql(f"SELECT tenant, tenant_id, model, model_id FROM read_parquet('{out}/**/*.parquet', "
                           "hive_partitioning=true)").fetchall()
    assert sorted(in_duckdb, key=repr) == sorted(((r["tenant"], r["tenant_id"], r["model"], r["model_id"])
                                                  for r in rows), key=repr)


def test_export_of_an_empty_window_or_an_unknown_tenant_writes_nothing(tmp_path: Path) -> None:
    """Fills a gap: an export that matches nothing says 0 and leaves no files (so a reader of the folder
    never sees a half-written dataset); an export into a folder that already holds an export adds to it
    without touching the files there."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    write_records(store, [("acme", "m1"), ("globex", "m2")])
    out = tmp_path / "export"
    first = export_parquet(store, None, None, out)
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    assert first.rows == 2 and len(before) == 2
    assert export_parquet(store, None, None, out, tenant_id="nobody").rows == 0
    empty = export_parquet(store, EXPORT_T0 - timedelta(days=2), EXPORT_T0 - timedelta(days=1), out)
    assert (empty.rows, empty.files) == (0, 0)
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    again = export_parquet(store, None, None, out, tenant_id="acme")
    store.close()
    assert again.rows == 1
    after = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    assert len(after) == 3 and all(after[p] == data for p, data in before.items())


# --- retention -----------------------------------------------------------------------------------------


def test_retention_while_writes_land_keeps_every_recent_row(tmp_path: Path) -> None:
    """Fills a gap: the retention loop deleting and nulling text on DuckDB while the writer inserts
    (the store's two locks): no write fails, every recent row stays, old rows and the text of a tenant
    with ``text_days`` 0 go, whatever the interleaving."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    now = datetime.now(timezone.utc)

    def record(i: int) -> RequestRecord:
        age = timedelta(days=100 if i % 2 else 0, seconds=i)
        return RequestRecord(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", tenant_id="strict" if i % 3 == 0
                             else "acme", model_id="m", backend="b", started_at=(now - age).isoformat(),
                             status_code=200, prompt_text="secret", completion_text="answer")

    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in range(8):
                store.write_requests([record(batch * 25 + j) for j in range(25)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    loop = RetentionLoop(store, RetentionPolicy(requests_days=90, text_days=30, text_days_by_tenant={"strict": 0}),
                         interval_s=0.005)
    thread = threading.Thread(target=writer)
    loop.start()
    thread.start()
    thread.join()
    loop.stop()
    loop.run_once()
    rows = store.list_requests(RequestFilter(), limit=1000).data
    store.close()
    assert not errors and loop.runs >= 2
    assert sorted(int(r["trace_id"], 16) - 1 for r in rows) == [i for i in range(200) if i % 2 == 0]
    assert {(r["tenant_id"], r["prompt_text"]) for r in rows} == {("acme", "secret"), ("strict", None)}
