"""The data contract between layers. Pure dataclasses; imports nothing from infersight."""

from infersight.model.records import RequestRecord, SampleReason, TokenSource

__all__ = ["RequestRecord", "SampleReason", "TokenSource"]
