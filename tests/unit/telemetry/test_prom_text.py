"""The exposition parser: real catalogues round-trip, and every format quirk collectors meet."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infersight.telemetry.prom_text import PromParseError, parse_text
from tests.unit.telemetry import catalogue as cat


def _observe_each_bucket(m: cat.CatMetric, labels: object) -> list[float]:
    return [b * 0.9 for b in (m.buckets or ())] + [1e12]  # one per bucket and one in +Inf


def _flat(families: dict) -> set[tuple[str, tuple, float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families.values() for s in f.samples}


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_every_catalogue_family_parses(extdata: Path, engine: str) -> None:
    metrics = cat.load_vllm(extdata) if engine == "vllm" else cat.load_sglang(extdata)
    label_sets = cat.default_label_sets(models=("m1", "m2"), engines=("0", "1"))
    text = cat.prometheus_client_exposition(metrics, label_sets, observations=_observe_each_bucket)
    fams = parse_text(text)
    for m in metrics:
        fam = fams[m.name]
        assert fam.type == m.type, m.name
        n_series = len(label_sets(m))
        if m.type == "histogram":
            assert m.buckets
            buckets = [s for s in fam.samples if s.name == m.name + "_bucket"]
            assert len(buckets) == n_series * (len(m.buckets) + 1), m.name
            inf = [s for s in buckets if s.labels["le"] == "+Inf"]
            assert len(inf) == n_series and all(s.value == len(m.buckets) + 1 for s in inf)
            assert {s.name for s in fam.samples} == {m.name + x for x in ("_bucket", "_sum", "_count")}
        elif m.type == "counter":
            assert [s.name for s in fam.samples] == [m.name + "_total"] * n_series, m.name
            # prometheus_client's 0.0.4 _created gauges, unless disabled process-wide (the gateway's
            # metrics module calls disable_created_metrics() when imported)
            created = fams.get(m.name + "_created")
            assert created is None or created.type == "gauge", m.name
        else:
            assert len(fam.samples) == n_series, m.name
        for s in fam.samples:
            assert set(s.labels) - {"le"} == set(m.labels), m.name
    # Same samples as prometheus_client's own parser reads from the page.
    theirs = {(s.name, tuple(sorted(s.labels.items())), s.value)
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert _flat(fams) == theirs


def test_tgi_counters_without_total(extdata: Path) -> None:
    metrics = cat.load_tgi(extdata)
    text = cat.rust_exposition(metrics, cat.default_label_sets(), observations=_observe_each_bucket)
    fams = parse_text(text)
    for m in metrics:
        assert fams[m.name].type == m.type
        if m.type == "counter":
            assert {s.name for s in fams[m.name].samples} == {m.name}  # bare name, no _total
            values = set(m.label_values.values()).pop() if m.label_values else ("",)
            assert len(fams[m.name].samples) == len(values)
    failure = fams["tgi_request_failure"]
    assert {s.labels["err"] for s in failure.samples} == {
        "dropped", "generation", "incomplete", "overloaded", "template", "validation"}


QUIRKS = (
    "# HELP vllm:num_requests_running Number of requests\\nrunning.\r\n"
    "# TYPE vllm:num_requests_running gauge\r\n"
    'vllm:num_requests_running{model_name="a",engine="0"} 3.0\r\n'
    "\r\n"
    "   \n"
    "# TYPE tgi_request_count counter\n"
    "tgi_request_count 17\n"
    "# TYPE esc gauge\n"
    'esc{path="C:\\\\dir\\"x\\" }{,#",nl="a\\nb"} -Inf 1700000000000\n'
    "# TYPE lat histogram\n"
    'lat_bucket{le="0.5"} 1 # {trace_id="abc def"} 0.4 1700000000.5\n'
    'lat_bucket{le="+Inf"} 2\n'
    "lat_sum 2.9\n"
    "lat_count 2\n"
    "lat_created 1.7e9\n"
    "# TYPE rpc summary\n"
    'rpc{quantile="0.99"} NaN\n'
    "rpc_sum 1.5\n"
    "rpc_count 3\n"
    "# TYPE om counter\n"
    "# UNIT om bytes\n"
    "om_total 5 1700000000.25\n"
    "om_created 1700000000.0\n"
    "# TYPE build info\n"
    'build_info{version="1"} 1\n'
    "# TYPE thing unknown\n"
    "thing +Inf\n"
    "no_type_here{ a = \"1\" , } 2\n"
    "# EOF\n"
    "garbage after eof is ignored {\n"
)


def test_format_quirks() -> None:
    fams = parse_text(QUIRKS.encode())
    running = fams["vllm:num_requests_running"]
    assert running.help == "Number of requests\nrunning."
    assert running.samples[0].labels == {"model_name": "a", "engine": "0"} and running.samples[0].value == 3.0
    assert fams["tgi_request_count"].type == "counter" and fams["tgi_request_count"].samples[0].value == 17
    esc = fams["esc"].samples[0]
    assert esc.labels == {"path": 'C:\\dir"x" }{,#', "nl": "a\nb"}
    assert esc.value == -math.inf and esc.timestamp == 1700000000000
    lat = fams["lat"]
    assert [(s.name, s.value) for s in lat.samples] == [
        ("lat_bucket", 1), ("lat_bucket", 2), ("lat_sum", 2.9), ("lat_count", 2), ("lat_created", 1.7e9)]
    assert lat.samples[0].timestamp is None  # the exemplar's timestamp is not the sample's
    rpc = fams["rpc"]
    assert rpc.type == "summary" and math.isnan(rpc.samples[0].value) and len(rpc.samples) == 3
    om = fams["om"]
    assert om.type == "counter" and [s.name for s in om.samples] == ["om_total", "om_created"]
    assert om.samples[0].timestamp == 1700000000.25
    assert fams["build"].type == "gauge" and fams["build"].samples[0].name == "build_info"
    assert fams["thing"].type == "untyped" and fams["thing"].samples[0].value == math.inf
    assert fams["no_type_here"].type == "untyped" and fams["no_type_here"].samples[0].labels == {"a": "1"}
    assert "garbage" not in str(fams)


def test_samples_away_from_their_type_line_join_their_family() -> None:
    text = "# TYPE a_total counter\n# TYPE h histogram\nh_count 1\na_total 4\nh_sum 2\n"
    fams = parse_text(text)
    assert [s.name for s in fams["a"].samples] == ["a_total"]
    assert [s.name for s in fams["h"].samples] == ["h_count", "h_sum"]


@pytest.mark.parametrize("line, lineno", [
    ("ok 1\nbad{a=\"1\" 2\n", 2),
    ("ok 1\n\nbad{a=1} 2\n", 3),
    ("bad value\n", 1),
    ("bad 1 2 3\n", 1),
    ("bad{a=\"unterminated} 1\n", 1),
    ("{a=\"1\"} 1\n", 1),
])
def test_malformed_lines(line: str, lineno: int) -> None:
    with pytest.raises(PromParseError) as err:
        parse_text(line)
    assert err.value.lineno == lineno
    fams = parse_text(line + "good 7\n", strict=False)  # lenient: the rest of the page survives
    assert fams["good"].samples[0].value == 7


def test_parsed_labels_are_private_copies() -> None:
    text = 'x{a="1"} 1\nx{a="1"} 2\n'
    first = parse_text(text)["x"].samples
    first[0].labels["a"] = "changed"
    assert first[1].labels == {"a": "1"}
    assert parse_text(text)["x"].samples[0].labels == {"a": "1"}
