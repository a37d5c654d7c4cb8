"""Expositions built from the real engine metric catalogues in $INFERSIGHT_EXTDATA/engines.

vLLM and SGLang use prometheus_client, so their pages are rendered by prometheus_client itself
(``_total`` added to counters, ``_created`` gauges, Go-style floats). TGI uses Rust's
metrics-exporter-prometheus: counters keep their bare names, rendered here by hand in that style.
Values come from callbacks, so a test can recompute what the mapping must output.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SGLANG_BASE_LABELS = ("model_name", "engine_type", "tp_rank", "pp_rank", "dp_rank")
# TGI: duration histograms use 35 geometric buckets from 0.0001 s x1.5 (SOURCE.txt); token ones
# are linear, sized from max tokens (here max_input_tokens=4096, max_total_tokens=8192).
TGI_DURATION_BUCKETS = tuple(0.0001 * 1.5**i for i in range(35))
TGI_TOKEN_BUCKETS = tuple(8192 / 100 * (i + 1) for i in range(100))


@dataclass(frozen=True)
class CatMetric:
    name: str  # as declared (vLLM/SGLang counters without _total)
    type: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None
    label_values: Mapping[str, tuple[str, ...]] | None = None  # TGI's known values per label


def _quoted(text: str) -> list[str]:
    return re.findall(r'"([^"]+)"', text)


def _bucket_list(expr: str | None, named: Mapping[str, Sequence[float]]) -> tuple[float, ...]:
    """Resolve a catalogue's bucket expression: a literal, a named constant, or a fallback list."""
    if not expr:
        return DEFAULT_BUCKETS
    key = expr.strip().upper()
    if key in named:
        return tuple(float(x) for x in named[key])
    m = re.fullmatch(r"exponential_buckets\(start=([\d.]+), width=([\d.]+), length=(\d+)\)", expr.strip())
    if m:
        start, width, n = float(m.group(1)), float(m.group(2)), int(m.group(3))
        return tuple(start * width**i for i in range(n))
    try:
        value = ast.literal_eval(expr)
        return tuple(sorted({float(x) for x in value}))
    except (ValueError, SyntaxError):
        pass
    inner = re.search(r"\[([\d.,\s]+)\]", expr)  # "... or [1, 2, 5]" defaults inside expressions
    if inner:
        return tuple(sorted({float(x) for x in inner.group(1).split(",") if x.strip()}))
    return DEFAULT_BUCKETS


def _vllm_labels(expr: str | None) -> tuple[str, ...]:
    if not expr:
        return ()
    if "labelname_" in expr:
        return tuple(re.findall(r"labelname_(\w+)", expr))
    if "CacheConfig" in expr:
        return ("block_size", "cache_dtype", "enable_prefix_caching", "engine")
    if expr.strip() == "pos_labelnames":
        return ("model_name", "engine", "position")
    quoted = _quoted(expr)
    if quoted:
        return tuple(quoted)
    m = re.search(r"\(([\w,\s]+)\)", expr)
    return tuple(x.strip() for x in m.group(1).split(",")) if m else ()


def _family_name(name: str, kind: str) -> str:
    """A counter's family name without ``_total`` (prometheus_client adds it back on the page)."""
    return name[:-6] if kind == "counter" and name.endswith("_total") else name


def load_vllm(extdata: Path) -> list[CatMetric]:
    base = extdata / "engines" / "vllm"
    named = json.loads((base / "vllm_0.33.0_histogram_buckets.json").read_text())
    named = {k.split("(")[0].upper(): v for k, v in named.items()}
    named["REQUEST_TOKENS_BUCKETS"] = named.pop("BUILD_1_2_5_BUCKETS")
    out = []
    for m in json.loads((base / "vllm_0.33.0_metrics.json").read_text()):
        buckets = _bucket_list(m["buckets"], named) if m["type"] == "histogram" else None
        kind = m["type"].split()[0]  # "gauge (info-style, value 1)"
        out.append(CatMetric(_family_name(m["name"], kind), kind, _vllm_labels(m["labelnames"]), buckets))
    return out


def load_sglang(extdata: Path) -> list[CatMetric]:
    out = []
    for m in json.loads((extdata / "engines" / "sglang" / "sglang_0.5.23_metrics.json").read_text()):
        expr = m["labelnames"] or ""
        labels = (SGLANG_BASE_LABELS if "labels.keys()" in expr else ()) + tuple(_quoted(expr))
        buckets = _bucket_list(m["buckets"], {}) if m["type"] == "histogram" else None
        out.append(CatMetric(_family_name(m["name"], m["type"]), m["type"], labels, buckets))
    return out


def load_tgi(extdata: Path) -> list[CatMetric]:
    lines = (extdata / "engines" / "tgi" / "tgi_metrics_from_source.tsv").read_text().splitlines()
    out = []
    for row in lines[1:]:
        name, kind, label, values = (row.split("\t") + ["", "", ""])[:4]
        buckets = None
        if kind == "histogram":
            buckets = TGI_DURATION_BUCKETS if name.endswith("duration") else TGI_TOKEN_BUCKETS
        label_values = {label: tuple(values.split(","))} if label else None
        out.append(CatMetric(name, kind, (label,) if label else (), buckets, label_values))
    return out


LabelSets = Callable[[CatMetric], list[dict[str, str]]]
Value = Callable[[CatMetric, Mapping[str, str]], float]
Observations = Callable[[CatMetric, Mapping[str, str]], Sequence[float]]


def default_label_sets(models: Sequence[str] = ("model-a",), engines: Sequence[str] = ("0",)) -> LabelSets:
    """One series per model and engine; other labels get a fixed value (TGI: every known value)."""

    def sets(m: CatMetric) -> list[dict[str, str]]:
        if m.label_values:
            (label, values), = m.label_values.items()
            return [{label: v} for v in values]
        out = []
        for model in models if "model_name" in m.labels else ("",):
            for engine in engines if ({"engine", "tp_rank"} & set(m.labels)) else ("",):
                labels = {}
                for name in m.labels:
                    labels[name] = {"model_name": model, "engine": engine, "tp_rank": engine}.get(name, "x")
                out.append(labels)
        return out

    return sets


def default_value(m: CatMetric, labels: Mapping[str, str]) -> float:
    """A deterministic, label-dependent value (a fraction for *_perc / *usage gauges)."""
    h = sum(ord(c) * (i + 1) for i, c in enumerate(m.name + repr(sorted(labels.items()))))
    if m.name.endswith(("_perc", "usage", "_rate", "utilization")):
        return (h % 97) / 100
    return float(h % 1000)


def no_observations(m: CatMetric, labels: Mapping[str, str]) -> Sequence[float]:
    return ()


def prometheus_client_exposition(
    metrics: Sequence[CatMetric],
    label_sets: LabelSets,
    value: Value = default_value,
    observations: Observations = no_observations,
) -> str:
    """The page prometheus_client (as vLLM and SGLang use it) would serve for these metrics."""
    reg = CollectorRegistry()
    for m in metrics:
        kind = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[m.type]
        kwargs = {"buckets": m.buckets} if m.type == "histogram" else {}
        metric = kind(m.name, f"{m.name} help", labelnames=m.labels, registry=reg, **kwargs)
        for labels in label_sets(m):
            child = metric.labels(**labels) if m.labels else metric
            if m.type == "counter":
                child.inc(value(m, labels))
            elif m.type == "gauge":
                child.set(value(m, labels))
            else:
                for x in observations(m, labels):
                    child.observe(x)
    return generate_latest(reg).decode()


def _fmt(x: float) -> str:
    return "+Inf" if x == float("inf") else repr(float(x))


def _labels_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + body + "}"


def rust_exposition(
    metrics: Sequence[CatMetric],
    label_sets: LabelSets,
    value: Value = default_value,
    observations: Observations = no_observations,
) -> str:
    """The page metrics-exporter-prometheus (TGI) serves: bare counter names, no HELP."""
    out: list[str] = []
    for m in metrics:
        out.append(f"# TYPE {m.name} {m.type}")
        for labels in label_sets(m):
            if m.type != "histogram":
                out.append(f"{m.name}{_labels_text(labels)} {_fmt(value(m, labels))}")
                continue
            obs = list(observations(m, labels))
            for le in [*(m.buckets or ()), float("inf")]:
                n = sum(1 for x in obs if x <= le)
                out.append(f"{m.name}_bucket{_labels_text({**labels, 'le': _fmt(le)})} {n}")
            out.append(f"{m.name}_sum{_labels_text(labels)} {_fmt(sum(obs))}")
            out.append(f"{m.name}_count{_labels_text(labels)} {len(obs)}")
        out.append("")
    return "\n".join(out)
