"""Engine pages built from the real catalogues, parsed and mapped to common names, per model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from infersight.model.telemetry import TelemetrySample
from infersight.telemetry.engines import COMMON_METRICS, ENGINES, map_engine, wanted_families
from infersight.telemetry.prom_text import parse_text
from infersight.telemetry.rates import RateTracker
from tests.unit.telemetry import catalogue as cat

T0 = 1_800_000_000.0
DT = 10.0
FACTOR = {"m1": 1.0, "m2": 7.0}  # per-model scale, so a blended figure could not pass
COUNTER_BASE = {  # increase per scrape of one series (x the series' scale)
    "vllm:prefix_cache_hits": 10.0, "vllm:prefix_cache_queries": 100.0,
    "sglang:cached_tokens": 10.0, "sglang:prompt_tokens": 100.0,
    "vllm:num_preemptions": 1.0, "sglang:num_retracted_requests": 1.0,
    "vllm:request_success": 2.0, "sglang:num_requests": 2.0,
    "vllm:prompt_tokens": 100.0, "vllm:generation_tokens": 40.0, "sglang:generation_tokens": 40.0,
}
QUERY_NAMES = {"vllm:prefix_cache_queries", "sglang:prompt_tokens"}  # not scaled by model
TTFT_AT = {"m1": 0.03, "m2": 0.7}
ITL_AT = {"m1": 0.03, "m2": 0.3}


def _scale(labels: Mapping[str, str]) -> tuple[float, float]:
    """(model factor, series factor): engine/rank i scales a series by i + 1."""
    f = FACTOR.get(labels.get("model_name", ""), 1.0)
    rank = labels.get("engine") or labels.get("tp_rank") or "0"
    return f, f * (1 + int(rank if rank.isdigit() else 0))


def values(k: int) -> cat.Value:
    """Scrape k's value of a series: counters grow by a known increase, gauges are known."""

    def value(m: cat.CatMetric, labels: Mapping[str, str]) -> float:
        f, x = _scale(labels)
        if m.type == "counter":
            base = COUNTER_BASE.get(m.name, 5.0)
            return base * (x / f if m.name in QUERY_NAMES else x) * k
        if m.name.endswith(("_perc", "token_usage")):
            return 0.05 * x + 0.01 * k
        return 3.0 * x + k

    return value


QUEUE_AT = {"m1": 0.02, "m2": 0.7}  # seconds each request waited
QUEUE_FAMILIES = ("vllm:request_queue_time_seconds", "sglang:queue_time_seconds", "tgi_request_queue_duration")


def observations(k: int) -> cat.Observations:
    def obs(m: cat.CatMetric, labels: Mapping[str, str]) -> Sequence[float]:
        model = labels.get("model_name", "m1")
        if "time_to_first_token" in m.name:
            return [TTFT_AT.get(model, 0.03)] * (10 * k)
        if "inter_token_latency" in m.name or "per_output_token" in m.name:
            return [ITL_AT.get(model, 0.03)] * (10 * k)
        if m.name in QUEUE_FAMILIES:
            return [QUEUE_AT.get(model, 0.3)] * (10 * k)
        return [1.0] * k

    return obs


def expected_quantile(q: float, at: float, bounds: Sequence[float]) -> float:
    """All observations at one value: linear interpolation across the bucket that holds it."""
    hi = min(b for b in bounds if b >= at)
    lo = max([b for b in bounds if b < at], default=0.0)
    return lo + (hi - lo) * q


def by_metric(samples: list[TelemetrySample]) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    for s in samples:
        assert (s.metric, s.model_id) not in out, f"two samples for {s.metric} {s.model_id}"
        assert s.metric in COMMON_METRICS
        out[(s.metric, s.model_id)] = s.value
    return out


Render = Callable[..., str]


def two_scrapes(kind: str, metrics: list[cat.CatMetric], render: Render, label_sets: cat.LabelSets,
                models: Sequence[str] = ()) -> tuple[list[TelemetrySample], list[TelemetrySample]]:
    tracker = RateTracker()
    out = []
    for k in (1, 2):
        text = render(metrics, label_sets, values(k), observations(k))
        out.append(map_engine(kind, parse_text(text), tracker, "engine-1:8000", T0 + k * DT, models))
    return out[0], out[1]


def by_name(metrics: list[cat.CatMetric]) -> dict[str, cat.CatMetric]:
    return {m.name: m for m in metrics}


def test_vllm_catalogue_two_models_two_engines(extdata: Path) -> None:
    metrics = cat.load_vllm(extdata)
    labels = cat.default_label_sets(models=("m1", "m2"), engines=("0", "1"))
    first, second = two_scrapes("vllm", metrics, cat.prometheus_client_exposition, labels, models=("m1", "m2"))
    assert {s.metric for s in first} == {"kv_cache_usage", "requests_running", "requests_waiting"}
    got = by_metric(second)
    ttft = by_name(metrics)["vllm:time_to_first_token_seconds"].buckets
    itl = by_name(metrics)["vllm:inter_token_latency_seconds"].buckets
    queue = by_name(metrics)["vllm:request_queue_time_seconds"].buckets
    assert ttft and itl and queue
    for model, f in FACTOR.items():
        # engines 0 and 1 scale series by 1 and 2: sums cover 3f, means 1.5f
        assert got[("requests_running", model)] == pytest.approx(3.0 * f * 3 + 2 * 2)
        assert got[("requests_waiting", model)] == pytest.approx(3.0 * f * 3 + 2 * 2)
        assert got[("kv_cache_usage", model)] == pytest.approx(0.05 * f * 1.5 + 0.02)
        assert got[("prefix_cache_hit_rate", model)] == pytest.approx((10.0 * f * 3) / (100.0 * 3))
        assert got[("preemptions_per_s", model)] == pytest.approx(1.0 * 3 * f / DT)
        assert got[("requests_per_s", model)] == pytest.approx(2.0 * 3 * f / DT)
        assert got[("prompt_tokens_per_s", model)] == pytest.approx(100.0 * 3 * f / DT)
        assert got[("generation_tokens_per_s", model)] == pytest.approx(40.0 * 3 * f / DT)
        for q, name in ((0.5, "engine_ttft_p50_s"), (0.99, "engine_ttft_p99_s")):
            assert got[(name, model)] == pytest.approx(expected_quantile(q, TTFT_AT[model], ttft))
        for q, name in ((0.5, "engine_itl_p50_s"), (0.99, "engine_itl_p99_s")):
            assert got[(name, model)] == pytest.approx(expected_quantile(q, ITL_AT[model], itl))
        for q, name in ((0.5, "engine_queue_p50_s"), (0.99, "engine_queue_p99_s")):
            assert got[(name, model)] == pytest.approx(expected_quantile(q, QUEUE_AT[model], queue))
    assert {m for _, m in got} == {"m1", "m2"}  # never a blended (None) sample
    assert all(s.source == "vllm" and s.instance == "engine-1:8000" and s.gpu is None for s in second)
    assert second[0].ts == "2027-01-15T08:00:20+00:00"


OLD_VLLM = [  # vLLM V0 / early V1 names (0.6 - 0.10)
    cat.CatMetric("vllm:gpu_cache_usage_perc", "gauge", ("model_name",)),
    cat.CatMetric("vllm:num_requests_running", "gauge", ("model_name",)),
    cat.CatMetric("vllm:gpu_prefix_cache_hits", "counter", ("model_name",)),
    cat.CatMetric("vllm:gpu_prefix_cache_queries", "counter", ("model_name",)),
    cat.CatMetric("vllm:time_per_output_token_seconds", "histogram", ("model_name",),
                  (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)),
]


def _old_value(k: int) -> cat.Value:
    new = values(k)

    def value(m: cat.CatMetric, labels: Mapping[str, str]) -> float:
        if m.name == "vllm:gpu_prefix_cache_hits":
            return 20.0 * k
        if m.name == "vllm:gpu_prefix_cache_queries":
            return 80.0 * k
        if m.name == "vllm:gpu_cache_usage_perc":
            return 0.9
        return new(m, labels)

    return value


def test_vllm_old_names_map() -> None:
    tracker = RateTracker()
    for k in (1, 2):
        text = cat.prometheus_client_exposition(OLD_VLLM, cat.default_label_sets(("m1",)), _old_value(k),
                                                observations(k))
        got = by_metric(map_engine("vllm", parse_text(text), tracker, "old", T0 + k * DT, ["m1"]))
    assert got[("kv_cache_usage", "m1")] == 0.9
    assert got[("prefix_cache_hit_rate", "m1")] == pytest.approx(20 / 80)
    bounds = OLD_VLLM[-1].buckets or ()
    assert got[("engine_itl_p50_s", "m1")] == pytest.approx(expected_quantile(0.5, ITL_AT["m1"], bounds))


def test_vllm_page_with_old_and_new_names_counts_once(extdata: Path) -> None:
    """vLLM 0.10 serves deprecated and current names side by side: the current ones win."""
    metrics = cat.load_vllm(extdata) + OLD_VLLM[:1] + OLD_VLLM[2:4]
    tracker = RateTracker()
    for k in (1, 2):
        text = cat.prometheus_client_exposition(metrics, cat.default_label_sets(("m1",)), _old_value(k),
                                                observations(k))
        got = by_metric(map_engine("vllm", parse_text(text), tracker, "both", T0 + k * DT, ["m1"]))
    assert got[("kv_cache_usage", "m1")] == pytest.approx(0.05 + 0.02)  # not the old 0.9
    assert got[("prefix_cache_hit_rate", "m1")] == pytest.approx(0.1)  # not the old 20/80


def test_vllm_v0_hit_rate_gauge_fallback() -> None:
    text = '# TYPE vllm:gpu_prefix_cache_hit_rate gauge\nvllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.42\n'
    got = by_metric(map_engine("vllm", parse_text(text), RateTracker(), "v0", T0, ["m"]))
    assert got == {("prefix_cache_hit_rate", "m"): 0.42}


def test_model_attribution() -> None:
    page = ('# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{model_name="/models/llama-3-8b",engine="0"} 4\n')
    def run(text: str, models: list[str]) -> dict[tuple[str, str | None], float]:
        return by_metric(map_engine("vllm", parse_text(text), RateTracker(), "i", T0, models))

    assert run(page, ["llama-3-8b"]) == {("requests_running", "llama-3-8b"): 4}  # one label, one model
    assert run(page, []) == {("requests_running", "/models/llama-3-8b"): 4}
    two = page + 'vllm:num_requests_running{model_name="other",engine="0"} 6\n'
    assert run(two, ["llama-3-8b"]) == {("requests_running", "/models/llama-3-8b"): 4,
                                        ("requests_running", "other"): 6}
    unlabelled = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
    assert run(unlabelled, ["only"]) == {("requests_running", "only"): 3}
    assert run(unlabelled, ["a", "b"]) == {("requests_running", None): 3}
    with pytest.raises(ValueError, match="unknown engine"):
        map_engine("ollama", {}, RateTracker(), "i", T0)


def _tgi_value(k: int) -> cat.Value:
    fixed = {"tgi_batch_current_size": 5.0, "tgi_queue_size": 7.0,
             "tgi_batch_current_max_tokens": 2000.0, "tgi_batch_max_total_tokens": 8000.0}
    errs = ("dropped", "generation", "incomplete", "overloaded", "template", "validation")

    def value(m: cat.CatMetric, labels: Mapping[str, str]) -> float:
        if m.name in fixed:
            return fixed[m.name]
        if m.name == "tgi_request_success":
            return 20.0 * k
        if m.name == "tgi_request_failure":
            return (errs.index(labels["err"]) + 1.0) * k
        return 3.0 * k

    return value


def _tgi_obs(k: int) -> cat.Observations:
    at = {"tgi_request_input_length": 500.0, "tgi_request_generated_tokens": 100.0,
          "tgi_request_mean_time_per_token_duration": 0.03, "tgi_request_queue_duration": 0.3}

    def obs(m: cat.CatMetric, labels: Mapping[str, str]) -> Sequence[float]:
        return [at.get(m.name, 1.0)] * (10 * k)

    return obs


@pytest.mark.parametrize("models, model_id", [(["tgi-model"], "tgi-model"), (["a", "b"], None), ([], None)])
def test_tgi_catalogue(extdata: Path, models: list[str], model_id: str | None) -> None:
    metrics = cat.load_tgi(extdata)
    tracker = RateTracker()
    for k in (1, 2):
        text = cat.rust_exposition(metrics, cat.default_label_sets(), _tgi_value(k), _tgi_obs(k))
        got = by_metric(map_engine("tgi", parse_text(text), tracker, "tgi:80", T0 + k * DT, models))
    assert got[("requests_running", model_id)] == 5.0
    assert got[("requests_waiting", model_id)] == 7.0
    assert got[("kv_cache_usage", model_id)] == 0.25
    assert got[("requests_per_s", model_id)] == pytest.approx((20 + 21) / DT)  # bare-named counters
    assert got[("prompt_tokens_per_s", model_id)] == pytest.approx(10 * 500 / DT)
    assert got[("generation_tokens_per_s", model_id)] == pytest.approx(10 * 100 / DT)
    bounds = by_name(metrics)["tgi_request_mean_time_per_token_duration"].buckets or ()
    assert got[("engine_itl_p99_s", model_id)] == pytest.approx(expected_quantile(0.99, 0.03, bounds))
    queue = by_name(metrics)["tgi_request_queue_duration"].buckets or ()
    assert got[("engine_queue_p50_s", model_id)] == pytest.approx(expected_quantile(0.5, 0.3, queue))
    assert {m for _, m in got} == {model_id}


def test_sglang_catalogue_two_models(extdata: Path) -> None:
    metrics = cat.load_sglang(extdata)
    labels = cat.default_label_sets(models=("m1", "m2"), engines=("0", "1"))
    _, second = two_scrapes("sglang", metrics, cat.prometheus_client_exposition, labels)
    got = by_metric(second)
    ttft = by_name(metrics)["sglang:time_to_first_token_seconds"].buckets or ()
    queue = by_name(metrics)["sglang:queue_time_seconds"].buckets or ()
    for model, f in FACTOR.items():
        assert got[("requests_running", model)] == pytest.approx(3.0 * f * 3 + 4)
        assert got[("requests_waiting", model)] == pytest.approx(3.0 * f * 3 + 4)
        assert got[("kv_cache_usage", model)] == pytest.approx(0.05 * f * 1.5 + 0.02)
        assert got[("prefix_cache_hit_rate", model)] == pytest.approx(0.1 * f)
        assert got[("preemptions_per_s", model)] == pytest.approx(3 * f / DT)
        assert got[("requests_per_s", model)] == pytest.approx(2.0 * 3 * f / DT)
        assert got[("generation_tokens_per_s", model)] == pytest.approx(40.0 * 3 * f / DT)
        assert got[("prompt_tokens_per_s", model)] == pytest.approx(300 / DT)  # the queries of the hit rate
        assert got[("engine_ttft_p50_s", model)] == pytest.approx(expected_quantile(0.5, TTFT_AT[model], ttft))
        assert got[("engine_queue_p99_s", model)] == pytest.approx(expected_quantile(0.99, QUEUE_AT[model], queue))
    assert {m for _, m in got} == {"m1", "m2"}


def test_every_engine_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "telemetry.md").read_text()
    for name in COMMON_METRICS:
        assert f"`{name}`" in doc, name
    for spec in ENGINES.values():
        for s in spec.specs:
            for family in getattr(s, "names", ()) or [n for g in getattr(s, "candidates", ()) for n in g]:
                assert family in doc, family


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tgi"])
def test_parsing_only_wanted_families_maps_the_same(extdata: Path, kind: str) -> None:
    metrics = {"vllm": cat.load_vllm, "sglang": cat.load_sglang, "tgi": cat.load_tgi}[kind](extdata)
    render = cat.rust_exposition if kind == "tgi" else cat.prometheus_client_exposition
    labels = cat.default_label_sets(models=("m1", "m2"), engines=("0", "1"))
    full, part = RateTracker(), RateTracker()
    wanted = wanted_families(kind)
    for k in (1, 2):
        text = render(metrics, labels, values(k), observations(k))
        a = map_engine(kind, parse_text(text), full, "i", T0 + k * DT, ())
        fams = parse_text(text, only=wanted)
        b = map_engine(kind, fams, part, "i", T0 + k * DT, ())
        assert a == b and len(a) > 0
        assert sum(len(f.samples) for f in fams.values()) < sum(len(f.samples) for f in parse_text(text).values())
    assert {s.metric for s in a} >= {"requests_running", "requests_waiting", "generation_tokens_per_s"}
