"""DCGM: the real counters CSVs, an exporter page built from them, blank sentinels, MIG and pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from infersight.telemetry.dcgm import (
    FAMILIES, FP64_BLANK, INT32_BLANK, INT64_BLANK, DcgmCounter, dcgm_readings, dcgm_value, is_blank,
    load_counters_csv, map_dcgm, parse_counters_csv,
)
from infersight.telemetry.prom_text import parse_text

T0 = 1_800_000_000.0
GPUS = [("0", "GPU-0a6158b5-2c1e-1e63-0068-9178c4298abd"), ("1", "GPU-8d5053b3-9280-7d1a-751b-4fd2fdd547c5")]


def _csv_rows(path: Path) -> list[list[str]]:
    """The CSV read the plain way, as a cross-check: non-comment rows split on commas."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append([c.strip() for c in line.split(",", 2)])
    return rows


@pytest.mark.parametrize("name", ["default-counters.csv", "dcp-metrics-included.csv", "1.x-compatibility-metrics.csv"])
def test_real_counters_csvs(extdata: Path, name: str) -> None:
    path = extdata / "engines" / "dcgm" / name
    counters = load_counters_csv(path)
    rows = _csv_rows(path)
    assert [(c.field, c.type) for c in counters] == [(r[0], r[1]) for r in rows]
    for c in counters:
        assert c.field == c.field.strip() and " " not in c.field and c.type in {"gauge", "counter", "label"}
        assert c.help  # every real row has a help text
    if name == "default-counters.csv":
        fields = {c.field for c in counters}
        assert "DCGM_FI_DEV_DEC_UTIL" in fields  # written "DCGM_FI_DEV_DEC_UTIL ," in the file
        assert "DCGM_FI_PROF_SM_ACTIVE" not in fields  # commented out there


def test_csv_robustness() -> None:
    text = ("\ufeff# c\n\n\t  DCGM_FI_DEV_GPU_TEMP ,\tGauge ,  \n  # DCGM_FI_X, gauge, off\r\n"
            "DCGM_FI_DEV_FB_USED,gauge,MiB, used\n")
    counters = parse_counters_csv(text)
    assert [(c.field, c.type, c.help) for c in counters] == [
        ("DCGM_FI_DEV_GPU_TEMP", "gauge", None), ("DCGM_FI_DEV_FB_USED", "gauge", "MiB, used")]
    with pytest.raises(ValueError, match="line 2"):
        parse_counters_csv("DCGM_FI_DEV_GPU_TEMP, gauge, ok\nDCGM_FI_BAD, sometype, x\n")
    assert len(parse_counters_csv("DCGM_FI_A, gauge, ok\nnot a field, gauge\n", strict=False)) == 1


def _labels(gpu: str, uuid: str, extra: str = "") -> str:
    return (f'gpu="{gpu}",UUID="{uuid}",pci_bus_id="00000000:{18 + int(gpu):02X}:00.0",device="nvidia{gpu}",'
            f'modelName="NVIDIA H100 80GB HBM3",Hostname="node-7",DCGM_FI_DRIVER_VERSION="550.90.07"{extra}')


def exporter_page(counters: list, value: dict[str, list[float]], extra: str = "") -> str:
    """A dcgm-exporter page for every gauge/counter field of a CSV (labels become labels)."""
    out = []
    for c in counters:
        if c.type == "label":
            continue
        out += [f"# HELP {c.field} {c.help}", f"# TYPE {c.field} {c.type}"]
        for i, (gpu, uuid) in enumerate(GPUS):
            v = value.get(c.field, [1.0, 2.0])[i]
            out.append(f"{c.field}{{{_labels(gpu, uuid, extra)}}} {v:g}" if v == int(v) else
                       f"{c.field}{{{_labels(gpu, uuid, extra)}}} {v}")
    return "\n".join(out) + "\n"


VALUES = {
    "DCGM_FI_DEV_GPU_UTIL": [87.0, 3.0], "DCGM_FI_DEV_FB_USED": [61000.0, 500.0],
    "DCGM_FI_DEV_FB_FREE": [19000.0, 80000.0], "DCGM_FI_DEV_FB_RESERVED": [559.0, 559.0],
    "DCGM_FI_DEV_GPU_TEMP": [71.0, 33.0], "DCGM_FI_DEV_POWER_USAGE": [612.25, 71.5],
    "DCGM_FI_DEV_SM_CLOCK": [1980.0, 345.0], "DCGM_FI_PROF_SM_ACTIVE": [0.8125, 0.0],
}


def _by(samples: list) -> dict[tuple[str, str | None], float]:
    return {(s.metric, s.gpu): s.value for s in samples}


def test_exporter_page_from_default_counters(extdata: Path) -> None:
    counters = load_counters_csv(extdata / "engines" / "dcgm" / "default-counters.csv")
    counters += [c for c in load_counters_csv(extdata / "engines" / "dcgm" / "dcp-metrics-included.csv")
                 if c.field not in {x.field for x in counters}]
    counters.append(DcgmCounter("DCGM_FI_PROF_SM_ACTIVE", "gauge", "ratio"))  # commented out by default
    fams = parse_text(exporter_page(counters, VALUES))
    for c in counters:
        if c.type != "label":
            assert fams[c.field].type == c.type and len(fams[c.field].samples) == len(GPUS)
    samples = map_dcgm(fams, "node-7:9400", T0, models=["llama"])
    assert samples == map_dcgm(parse_text(exporter_page(counters, VALUES), only=FAMILIES), "node-7:9400", T0,
                               models=["llama"])  # a collector parses only what it maps
    got = _by(samples)
    for i, (gpu, uuid) in enumerate(GPUS):
        v = {k: x[i] for k, x in VALUES.items()}
        total = v["DCGM_FI_DEV_FB_USED"] + v["DCGM_FI_DEV_FB_FREE"] + v["DCGM_FI_DEV_FB_RESERVED"]
        assert got[("gpu_utilization", gpu)] == v["DCGM_FI_DEV_GPU_UTIL"] / 100
        assert got[("gpu_memory_used_bytes", gpu)] == v["DCGM_FI_DEV_FB_USED"] * 2**20
        assert got[("gpu_memory_total_bytes", gpu)] == total * 2**20
        assert got[("gpu_memory_utilization", gpu)] == pytest.approx(v["DCGM_FI_DEV_FB_USED"] / total)
        assert got[("gpu_temperature_c", gpu)] == v["DCGM_FI_DEV_GPU_TEMP"]
        assert got[("gpu_power_w", gpu)] == v["DCGM_FI_DEV_POWER_USAGE"]
        assert got[("gpu_sm_clock_mhz", gpu)] == v["DCGM_FI_DEV_SM_CLOCK"]
        assert got[("gpu_sm_active", gpu)] == v["DCGM_FI_PROF_SM_ACTIVE"]
        assert got[("gpu_index", uuid)] == float(gpu)
    assert len(samples) == len(got) == 9 * len(GPUS)
    assert {s.model_id for s in samples if s.metric != "gpu_index"} == {"llama"}
    assert all(s.source == "dcgm" and s.instance == "node-7:9400" for s in samples)


def test_memory_utilization_without_reserved() -> None:
    page = ('DCGM_FI_DEV_FB_USED{gpu="0"} 3000\nDCGM_FI_DEV_FB_FREE{gpu="0"} 1000\n')
    got = _by(map_dcgm(parse_text(page), "n", T0))
    assert got[("gpu_memory_utilization", "0")] == 0.75


@pytest.mark.parametrize("field, blank", [
    ("DCGM_FI_DEV_GPU_UTIL", INT32_BLANK),
    ("DCGM_FI_DEV_GPU_UTIL", INT32_BLANK + 2),  # NOT_SUPPORTED
    ("DCGM_FI_DEV_GPU_UTIL", 4294967295),  # NVIDIA/DCGM#199: not a percentage
    ("DCGM_FI_DEV_GPU_TEMP", INT64_BLANK),
    ("DCGM_FI_DEV_FB_USED", INT64_BLANK),
    ("DCGM_FI_DEV_POWER_USAGE", FP64_BLANK),
    ("DCGM_FI_DEV_SM_CLOCK", INT64_BLANK + 1),
    ("DCGM_FI_PROF_SM_ACTIVE", FP64_BLANK),
])
def test_blank_sentinels_become_no_value(field: str, blank: float) -> None:
    page = f'# TYPE {field} gauge\n{field}{{gpu="0",UUID="GPU-x"}} {blank}\n'
    page += '# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n' if field != "DCGM_FI_DEV_GPU_TEMP" else ""
    page += 'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-x"} 40\n' if field != "DCGM_FI_DEV_GPU_TEMP" else ""
    samples = map_dcgm(parse_text(page), "n", T0)
    assert all(s.value < INT32_BLANK for s in samples)
    metrics = {s.metric for s in samples}
    assert not metrics & {"gpu_utilization", "gpu_memory_used_bytes", "gpu_power_w", "gpu_sm_clock_mhz",
                          "gpu_sm_active"}
    if field != "DCGM_FI_DEV_GPU_TEMP":
        assert ("gpu_temperature_c", "0") in _by(samples)  # the GPU's other readings survive


def test_is_blank_rules() -> None:
    assert is_blank(None) and is_blank("") and is_blank(" <<<NULL>>> ") and is_blank(float("nan"))
    assert is_blank(INT64_BLANK, "i") and is_blank(float(INT64_BLANK)) and is_blank(str(INT64_BLANK))
    assert is_blank(FP64_BLANK, "d") and is_blank(FP64_BLANK + 3) and is_blank(2.0**48, "d")
    assert is_blank(INT32_BLANK, "i32") and is_blank(INT32_BLANK + 15)
    # Without DCGM's "at or above blank" rule, a big real counter is a number, not a blank.
    assert not is_blank(2.0**48) and not is_blank(2147483700.0) and not is_blank(3e9, "i")
    assert dcgm_value("42") == 42.0 and dcgm_value("<<<NULL>>>") is None and dcgm_value(INT32_BLANK, "i32") is None


def test_mig_pods_and_model_of() -> None:
    base = 'gpu="0",UUID="GPU-a",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1"'
    page = "# TYPE DCGM_FI_PROF_SM_ACTIVE gauge\n"
    mig = 'GPU_I_PROFILE="3g.40gb",GPU_I_ID'
    page += f'DCGM_FI_PROF_SM_ACTIVE{{{base},{mig}="1",pod="vllm-a-0",namespace="llm",container="vllm"}} 0.5\n'
    page += (f'DCGM_FI_PROF_SM_ACTIVE{{{base},{mig}="2",pod_name="vllm-b-0",pod_namespace="llm",'
             'container_name="vllm"} 0.25\n')
    fams = parse_text(page)
    readings = {r.gpu: r for r in dcgm_readings(fams)}
    assert set(readings) == {"0/1", "0/2"}
    assert (readings["0/1"].pod, readings["0/1"].namespace, readings["0/1"].container) == ("vllm-a-0", "llm", "vllm")
    assert readings["0/2"].pod == "vllm-b-0" and readings["0/2"].gpu_model == "NVIDIA A100-SXM4-80GB"
    pods = {"vllm-a-0": "model-a", "vllm-b-0": "model-b"}
    samples = map_dcgm(fams, "n1", T0, models=["x", "y"], model_of=lambda r: pods.get(r.pod or ""))
    assert {(s.gpu, s.model_id, s.value) for s in samples} == {("0/1", "model-a", 0.5), ("0/2", "model-b", 0.25)}
    assert {s.model_id for s in map_dcgm(fams, "n1", T0, models=["x", "y"])} == {None}


def test_exporter_1x_names() -> None:
    page = ('dcgm_gpu_utilization{gpu="0",uuid="GPU-a"} 55\ndcgm_fb_used{gpu="0",uuid="GPU-a"} 1024\n'
            'dcgm_fb_free{gpu="0",uuid="GPU-a"} 3072\ndcgm_gpu_temp{gpu="0",uuid="GPU-a"} 60\n')
    got = _by(map_dcgm(parse_text(page), "old", T0))
    assert got[("gpu_utilization", "0")] == 0.55 and got[("gpu_memory_utilization", "0")] == 0.25
    assert got[("gpu_temperature_c", "0")] == 60 and got[("gpu_index", "GPU-a")] == 0
