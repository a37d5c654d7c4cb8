"""GPU and engine telemetry: collectors (NVML, DCGM exporter, engine /metrics, CloudWatch), the
mapping of each source's metric names to common ones, and rate/quantile maths. See docs/telemetry.md."""
