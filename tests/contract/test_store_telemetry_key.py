"""The Store contract: telemetry is keyed per model (schema v6), on every backend."""

from __future__ import annotations

from datetime import timedelta

from infersight.model.telemetry import TelemetrySample
from infersight.store.base import Store
from tests.contract.test_store import T0


def test_two_models_of_one_instance_keep_both_samples(store: Store) -> None:
    ts = T0.isoformat()
    rows = [TelemetrySample(ts=ts, source="vllm", instance="gpu-host-1:8000", metric="kv_cache_usage",
                            value=value, model_id=model).to_dict() for model, value in (("m1", 0.25), ("m2", 0.75))]
    assert store.write_rows("telemetry", rows) == 2
    assert store.write_rows("telemetry", rows) == 0  # still idempotent
    got = {(r["model_id"], r["value"]) for r in store.telemetry_around("m1", T0, timedelta(seconds=1))}
    assert got == {("m1", 0.25)}
    got = {(r["model_id"], r["value"]) for r in store.telemetry_around("m2", T0, timedelta(seconds=1))}
    assert got == {("m2", 0.75)}
