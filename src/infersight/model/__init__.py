"""The data contract between layers. Pure dataclasses; imports nothing from infersight."""

from infersight.model.evaluation import EvalResult, EvalTask
from infersight.model.records import RequestRecord, SampleReason, TokenSource
from infersight.model.telemetry import TelemetrySample

__all__ = ["EvalResult", "EvalTask", "RequestRecord", "SampleReason", "TelemetrySample", "TokenSource"]
