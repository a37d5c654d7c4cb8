"""RequestRecord.from_dict fills the slots directly (the ingester's hot path); it must still behave
like the dataclass constructor: defaults for absent keys, unknown keys ignored, required enforced."""

from __future__ import annotations

import pytest

from infersight.model import RequestRecord
from infersight.model.records import RECORD_FIELDS


def _full() -> RequestRecord:
    return RequestRecord(
        trace_id="t1", span_id="s1", tenant_id="acme", model_id="m", backend="b", use_case="chat",
        started_at="2026-11-22T10:00:00+00:00", ttft_ms=12.5, total_ms=100.0, prompt_tokens=7,
        completion_tokens=20, status_code=200, finish_reason="stop", stream=True, instance="gpu-0",
        engine_inference_ms=80.0, sampled_for_eval=True, sample_reason="random",
    )


def test_a_record_survives_to_dict_and_back_unchanged() -> None:
    record = _full()
    again = RequestRecord.from_dict(record.to_dict())
    assert again == record
    assert [getattr(again, n) for n in RECORD_FIELDS] == [getattr(record, n) for n in RECORD_FIELDS]


def test_absent_keys_take_the_dataclass_defaults_and_unknown_keys_are_ignored() -> None:
    data = {"trace_id": "t", "span_id": "s", "tenant_id": "x", "model_id": "m", "backend": "b",
            "a_field_from_a_newer_writer": 1}
    record = RequestRecord.from_dict(data)
    assert record == RequestRecord(trace_id="t", span_id="s", tenant_id="x", model_id="m", backend="b")
    assert record.use_case == "other" and record.ttft_ms is None and record.status_code == 0
    assert not hasattr(record, "a_field_from_a_newer_writer")


def test_a_missing_required_field_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="tenant_id"):
        RequestRecord.from_dict({"trace_id": "t", "span_id": "s", "model_id": "m", "backend": "b"})
