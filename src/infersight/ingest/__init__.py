"""The ingester: batches of records from the bus, written to the store, with its own metrics."""

from infersight.ingest.sink import IngestMetrics, StoreSink

__all__ = ["IngestMetrics", "StoreSink"]
