"""Optional OpenTelemetry export: one span per request, over OTLP/HTTP JSON (see docs/tracing.md).

Trace context itself (``traceparent`` in and out) lives in ``infersight.gateway.tracecontext``; this
package only ships finished records to a collector, off the hot path.
"""

from infersight.tracing.otlp import OtlpExportError, OtlpHttpSpanExporter, build_payload, record_to_span

__all__ = ["OtlpExportError", "OtlpHttpSpanExporter", "build_payload", "record_to_span"]
