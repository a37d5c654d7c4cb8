"""Engine /metrics (vLLM, TGI, SGLang) -> common telemetry names, per model.

Each engine names the same facts differently, and renames them across versions (vLLM's
``gpu_cache_usage_perc`` became ``kv_cache_usage_perc``; 0.10 serves both). A spec lists, per common
metric, the candidate families in order of preference; the first one present on the page is used,
so a page serving old and new names is counted once. docs/telemetry.md has the tables.

Models are never blended: series are grouped by the engine's model label (vLLM and SGLang:
``model_name``) and every common metric is computed per model. Series of one model that differ
in other labels (vLLM ``engine`` = data-parallel rank, SGLang ranks, ``finished_reason`` ...)
are combined: gauges summed (or averaged for fractions), counter rates and histogram increases
summed. Attribution: label present -> its value, except that when config lists exactly one model
for the target and the page shows exactly one label value, the configured id is used (so
``/models/llama-3-8b`` joins requests recorded as ``llama-3-8b``); no label -> the one configured
model, or None when config lists zero or several.

Bad readings are no figure, never a wrong one: a value that is not finite (``NaN``, ``+Inf``, ``-Inf``)
gives its model no figure for that metric (rates and histograms keep the last finite scrape as their
base), as a NaN does in a PromQL ``sum``: skipping it would report a part as the whole (one
data-parallel engine's running requests as the model's, a hit rate of 0). A series the page repeats
(same name and labels) counts once, the first, as Prometheus ingests it; otherwise a gauge would be
summed twice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from infersight.model.telemetry import TelemetrySample
from infersight.telemetry.prom_text import MetricFamily, Sample
from infersight.telemetry.rates import RateTracker, hit_ratio, quantile

__all__ = ["COMMON_METRICS", "ENGINES", "EngineSpec", "map_engine", "scrape_time", "wanted_families"]

#: Common engine metric names (docs/telemetry.md): name -> unit.
COMMON_METRICS: dict[str, str] = {
    "kv_cache_usage": "fraction 0-1",
    "prefix_cache_hit_rate": "fraction 0-1",
    "requests_running": "requests",
    "requests_waiting": "requests",
    "preemptions_per_s": "1/s",
    "requests_per_s": "1/s",
    "prompt_tokens_per_s": "tokens/s",
    "generation_tokens_per_s": "tokens/s",
    "engine_ttft_p50_s": "s",
    "engine_ttft_p99_s": "s",
    "engine_itl_p50_s": "s",
    "engine_itl_p99_s": "s",
    "engine_queue_p50_s": "s",
    "engine_queue_p99_s": "s",
}

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Gauge:
    """A gauge family (first present candidate); ``mean`` for fractions, else summed."""

    metric: str
    names: tuple[str, ...]
    mean: bool = False


@dataclass(frozen=True)
class GaugeRatio:
    """numerator / denominator of two gauges (e.g. TGI's reserved tokens over its token budget)."""

    metric: str
    numerator: str
    denominator: str


@dataclass(frozen=True)
class Rate:
    """Per-second rate of counters. Each candidate is a group of families added up; ``suffix``
    picks the sample (``""``: the counter itself, with or without ``_total``; ``"_sum"``: a
    histogram's sum, e.g. TGI's token histograms)."""

    metric: str
    candidates: tuple[tuple[str, ...], ...]
    suffix: str = ""


@dataclass(frozen=True)
class HitRate:
    """Increase of hits over increase of queries; else a gauge the engine computes itself."""

    metric: str
    pairs: tuple[tuple[str, str], ...]
    fallback_gauges: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quantiles:
    """Quantiles of a histogram's increase between scrapes: ((q, metric), ...)."""

    outputs: tuple[tuple[float, str], ...]
    names: tuple[str, ...]


Spec = Gauge | GaugeRatio | Rate | HitRate | Quantiles


@dataclass(frozen=True)
class EngineSpec:
    kind: str
    model_label: str | None
    specs: tuple[Spec, ...]


def _ttft(*names: str) -> Quantiles:
    return Quantiles(((0.5, "engine_ttft_p50_s"), (0.99, "engine_ttft_p99_s")), names)


def _itl(*names: str) -> Quantiles:
    return Quantiles(((0.5, "engine_itl_p50_s"), (0.99, "engine_itl_p99_s")), names)


def _queue(*names: str) -> Quantiles:
    """Time requests waited before the engine scheduled them: the engines' own per-request queue time,
    which their OpenAI responses do not carry (TGI's ``x-queue-time`` header aside)."""
    return Quantiles(((0.5, "engine_queue_p50_s"), (0.99, "engine_queue_p99_s")), names)


ENGINES: dict[str, EngineSpec] = {
    "vllm": EngineSpec("vllm", "model_name", (
        Gauge("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), mean=True),
        Gauge("requests_running", ("vllm:num_requests_running",)),
        Gauge("requests_waiting", ("vllm:num_requests_waiting",)),
        HitRate("prefix_cache_hit_rate",
                (("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
                 ("vllm:gpu_prefix_cache_hits", "vllm:gpu_prefix_cache_queries")),
                ("vllm:gpu_prefix_cache_hit_rate",)),
        Rate("preemptions_per_s", (("vllm:num_preemptions",),)),
        Rate("requests_per_s", (("vllm:request_success",),)),
        Rate("prompt_tokens_per_s", (("vllm:prompt_tokens",),)),
        Rate("generation_tokens_per_s", (("vllm:generation_tokens",),)),
        _ttft("vllm:time_to_first_token_seconds"),
        _itl("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        _queue("vllm:request_queue_time_seconds"),
    )),
    "tgi": EngineSpec("tgi", None, (
        GaugeRatio("kv_cache_usage", "tgi_batch_current_max_tokens", "tgi_batch_max_total_tokens"),
        Gauge("requests_running", ("tgi_batch_current_size",)),
        Gauge("requests_waiting", ("tgi_queue_size",)),
        Rate("requests_per_s", (("tgi_request_success", "tgi_request_failure"),)),
        Rate("prompt_tokens_per_s", (("tgi_request_input_length",),), suffix="_sum"),
        Rate("generation_tokens_per_s", (("tgi_request_generated_tokens",),), suffix="_sum"),
        _itl("tgi_request_mean_time_per_token_duration"),
        _queue("tgi_request_queue_duration"),
    )),
    "sglang": EngineSpec("sglang", "model_name", (
        Gauge("kv_cache_usage", ("sglang:token_usage",), mean=True),
        Gauge("requests_running", ("sglang:num_running_reqs",)),
        Gauge("requests_waiting", ("sglang:num_queue_reqs",)),
        HitRate("prefix_cache_hit_rate", (("sglang:cached_tokens", "sglang:prompt_tokens"),),
                ("sglang:cache_hit_rate",)),
        Rate("preemptions_per_s", (("sglang:num_retracted_requests",),)),
        Rate("requests_per_s", (("sglang:num_requests",),)),
        Rate("prompt_tokens_per_s", (("sglang:prompt_tokens",),)),
        Rate("generation_tokens_per_s", (("sglang:generation_tokens",),)),
        _ttft("sglang:time_to_first_token_seconds"),
        _itl("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        _queue("sglang:queue_time_seconds"),
    )),
}


def wanted_families(kind: str) -> frozenset[str]:
    """Every family ``map_engine(kind, ...)`` reads: pass as ``parse_text(..., only=...)``."""
    spec = ENGINES[kind]
    names = _spec_families(spec) + [n for s in spec.specs if isinstance(s, Quantiles) for n in s.names]
    return frozenset(names + [n + "_total" for n in names])  # a page without # TYPE lines


def scrape_time(ts: datetime | float | str) -> tuple[float, str]:
    """(epoch seconds for rate maths, ISO 8601 UTC for the samples) of a scrape time."""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if isinstance(ts, datetime):
        dt = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        return dt.timestamp(), dt.astimezone(timezone.utc).isoformat()
    return float(ts), datetime.fromtimestamp(float(ts), timezone.utc).isoformat()


def _series(sample: Sample, drop: str | None = None) -> Key:
    return sample.name, tuple(kv for kv in sample.labels.items() if kv[0] != drop)


class _Models:
    """Maps a sample to its model_id (see module docstring)."""

    def __init__(self, label: str | None, families: Mapping[str, MetricFamily], spec: EngineSpec,
                 models: Sequence[str]) -> None:
        self.label = label
        self.single = models[0] if len(models) == 1 else None
        self.alias: str | None = None
        if label is not None and self.single is not None:
            seen: set[str] = set()
            for name in _spec_families(spec):
                fam = _family(families, name)
                if fam is not None:
                    seen.update(s.labels[label] for s in fam.samples if label in s.labels)
            if len(seen) == 1:
                self.alias = self.single

    def of(self, sample: Sample) -> str | None:
        raw = sample.labels.get(self.label) if self.label is not None else None
        if raw is None:
            return self.single
        return self.alias or raw


def _spec_families(spec: EngineSpec) -> list[str]:
    names: list[str] = []
    for s in spec.specs:
        if isinstance(s, Gauge):
            names += s.names
        elif isinstance(s, GaugeRatio):
            names += (s.numerator, s.denominator)
        elif isinstance(s, Rate):
            names += [n for group in s.candidates for n in group]
        elif isinstance(s, HitRate):
            names += [n for pair in s.pairs for n in pair] + list(s.fallback_gauges)
    return names  # histograms left out: only used to see which model labels a page shows


def _family(families: Mapping[str, MetricFamily], name: str) -> MetricFamily | None:
    """A family by name; a page without ``# TYPE`` lines names a counter family ``..._total``."""
    fam = families.get(name) or families.get(name + "_total")
    return fam if fam is not None and fam.samples else None


def _first(families: Mapping[str, MetricFamily], names: Sequence[str]) -> MetricFamily | None:
    for name in names:
        fam = _family(families, name)
        if fam is not None:
            return fam
    return None


def _unique(samples: Sequence[Sample]) -> list[Sample]:
    """The samples with each series (name and labels) once, the first: a page that repeats a series
    (two exporters merged, a multiprocess registry gone wrong) must not double a gauge or a rate."""
    seen: set[Key] = set()
    out: list[Sample] = []
    for s in samples:
        key = (s.name, tuple(s.labels.items()))  # labels in page order: one exporter repeats them alike
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _gauges(fam: MetricFamily, models: _Models) -> dict[str | None, list[float]]:
    """A model's gauge values; non-finite ones are kept, so its sum or mean is no figure (see module doc)."""
    out: dict[str | None, list[float]] = defaultdict(list)
    for s in _unique(fam.samples):
        if s.name == fam.name:
            out[models.of(s)].append(s.value)
    return out


class _Scrape:
    """One map_engine call: the page, who is who, and the tracker, with rates computed once per
    family (two specs may read the same counter; asking the tracker twice would see dt = 0)."""

    def __init__(self, families: Mapping[str, MetricFamily], who: _Models, tracker: RateTracker,
                 instance: str, t: float) -> None:
        self.families, self.who, self.tracker, self.instance, self.t = families, who, tracker, instance, t
        self._rates: dict[tuple[str, str], dict[str | None, float]] = {}

    def rates(self, fam: MetricFamily, suffix: str = "") -> dict[str | None, float]:
        key = (fam.name, suffix)
        got = self._rates.get(key)
        if got is None:
            got = self._rates[key] = _counter_rates(fam, suffix, self.who, self.tracker, self.instance, self.t)
        return got


def _counter_samples(fam: MetricFamily, suffix: str = "") -> list[Sample]:
    """A family's counter (or ``_sum``) samples, each series once (see _unique)."""
    wanted = (fam.name + suffix,) if suffix else (fam.name, fam.name + "_total")
    return _unique([s for s in fam.samples if s.name in wanted])


def _counter_rates(fam: MetricFamily, suffix: str, models: _Models, tracker: RateTracker,
                   instance: str, t: float) -> dict[str | None, float]:
    """Summed per-second rates of a family's counter (or ``_sum``) series, per model.

    A model with a non-finite series gets NaN (no figure); a series seen for the first time adds
    nothing yet (as in a PromQL ``sum(rate(...))``)."""
    out: dict[str | None, float] = {}
    for s in _counter_samples(fam, suffix):
        model = models.of(s)
        if not math.isfinite(s.value):
            out[model] = math.nan
            continue
        inc = tracker.counter_increase(instance, _series(s), s.value, t)
        if inc is not None:
            out[model] = out.get(model, 0.0) + inc[0] / inc[1]
    return out


def _histogram_increases(fam: MetricFamily, models: _Models, tracker: RateTracker, instance: str,
                         t: float) -> dict[str | None, list[tuple[float, float]]]:
    """Bucket increases since the previous scrape, summed over a model's series (same bounds)."""
    series: dict[Key, tuple[Sample, dict[float, float]]] = {}  # bound -> count, the first of a repeated bucket
    unreadable: set[str | None] = set()  # models with a non-finite bucket: no figure (module doc)
    bucket = fam.name + "_bucket"
    for s in fam.samples:
        le = s.labels.get("le")
        if s.name != bucket or le is None:
            continue
        key = _series(s, drop="le")
        entry = series.get(key)
        if entry is None:
            entry = series[key] = (s, {})
        try:
            entry[1].setdefault(float(le), s.value)
        except ValueError:
            continue
    out: dict[str | None, list[tuple[float, float]]] = {}
    for key, (first, by_bound) in series.items():
        buckets = sorted(by_bound.items())
        model = models.of(first)
        if not all(math.isfinite(c) for c in by_bound.values()):
            unreadable.add(model)
            continue
        inc = tracker.histogram_increase(instance, key, buckets, t)
        if inc is None:
            continue
        acc = out.get(model)
        if acc is None:
            out[model] = inc[0]
        elif [b for b, _ in acc] == [b for b, _ in inc[0]]:
            out[model] = [(b, c + d) for (b, c), (_, d) in zip(acc, inc[0])]
    for model in unreadable:
        out.pop(model, None)
    return out


def map_engine(
    kind: str,
    families: Mapping[str, MetricFamily],
    tracker: RateTracker,
    instance: str,
    ts: datetime | float | str,
    models: Sequence[str] = (),
) -> list[TelemetrySample]:
    """Common metrics of one engine scrape, one sample per (metric, model).

    ``families``: ``parse_text`` of the page. ``tracker``: kept by the caller across scrapes of
    this target (rates, hit rates and quantiles need the previous scrape; the first scrape yields
    gauges only). ``models``: the model ids config lists for this target.
    """
    spec = ENGINES.get(kind)
    if spec is None:
        raise ValueError(f"unknown engine kind {kind!r}; expected one of {sorted(ENGINES)}")
    t, iso = scrape_time(ts)
    who = _Models(spec.model_label, families, spec, models)
    scrape = _Scrape(families, who, tracker, instance, t)
    values: dict[tuple[str, str | None], float] = {}

    for s in spec.specs:
        if isinstance(s, Gauge):
            fam = _first(families, s.names)
            if fam is not None:
                for model, vals in _gauges(fam, who).items():
                    values[(s.metric, model)] = sum(vals) / len(vals) if s.mean else sum(vals)
        elif isinstance(s, GaugeRatio):
            num, den = _family(families, s.numerator), _family(families, s.denominator)
            if num is not None and den is not None:
                nums, dens = _gauges(num, who), _gauges(den, who)
                for model, n in nums.items():
                    d = sum(dens.get(model, ()))
                    ratio = sum(n) / d if 0 < d < math.inf else math.nan
                    if math.isfinite(ratio):  # min() would turn a NaN into 1.0
                        values[(s.metric, model)] = min(1.0, ratio)
        elif isinstance(s, Rate):
            for group in s.candidates:
                fams = [f for f in (_family(families, n) for n in group) if f is not None]
                if not fams:
                    continue
                for fam in fams:
                    for model, rate in scrape.rates(fam, s.suffix).items():
                        values[(s.metric, model)] = values.get((s.metric, model), 0.0) + rate
                break
        elif isinstance(s, HitRate):
            _hit_rate(s, scrape, values)
        else:
            fam = _first(families, s.names)
            if fam is not None:
                for model, buckets in _histogram_increases(fam, who, tracker, instance, t).items():
                    for q, metric in s.outputs:
                        v = quantile(q, buckets)
                        if v is not None:
                            values[(metric, model)] = v

    return [TelemetrySample(ts=iso, source=kind, instance=instance, metric=metric, value=float(v),
                            model_id=model) for (metric, model), v in values.items() if math.isfinite(v)]


def _hit_rate(s: HitRate, scrape: _Scrape, values: dict[tuple[str, str | None], float]) -> None:
    families, who = scrape.families, scrape.who
    for hits_name, queries_name in s.pairs:
        # a hits family declared without series has counted nothing yet (SGLang creates a
        # cache_source series on its first hit): 0 hits, not "no counters"
        hits = families.get(hits_name) or families.get(hits_name + "_total")
        queries = _family(families, queries_name)
        if hits is None or queries is None:
            continue
        h, q = scrape.rates(hits), scrape.rates(queries)
        with_hits = {who.of(x) for x in _counter_samples(hits)}
        for model, q_rate in q.items():
            # hits absent from the page: none yet (SGLang creates a cache_source series on its first
            # hit); present but without an increase (NaN, first seen): unknown, not 0
            h_rate = h.get(model, math.nan if model in with_hits else 0.0)
            ratio = hit_ratio(h_rate, q_rate) if math.isfinite(h_rate) and math.isfinite(q_rate) else None
            if ratio is not None:
                values[(s.metric, model)] = ratio
        return
    fam = _first(families, s.fallback_gauges)
    if fam is not None:
        for model, vals in _gauges(fam, who).items():
            mean = sum(vals) / len(vals)
            if math.isfinite(mean):  # max() and min() would turn a NaN into 0 or 1
                values[(s.metric, model)] = min(1.0, max(0.0, mean))
