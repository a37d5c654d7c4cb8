"""Record fields as OpenTelemetry GenAI semantic-convention values, for spans and metrics alike.

Why one place: the OTLP spans and the Prometheus histograms must name an operation and a provider
the same way, or a dashboard that joins them by ``gen_ai.operation.name`` finds nothing.
"""

from __future__ import annotations

OPERATION = {"chat": "chat", "completions": "text_completion"}
"""RequestRecord.api -> gen_ai.operation.name (well-known values from the GenAI registry)."""
PROVIDER = {"openai": "openai", "bedrock": "aws.bedrock"}
"""RequestRecord.endpoint_type -> gen_ai.provider.name where the registry has a value; else as-is."""


def operation_name(api: str) -> str:
    return OPERATION.get(api, api)


def provider_name(endpoint_type: str) -> str:
    """"" for an unknown provider (e.g. an unauthenticated request that reached no backend)."""
    return PROVIDER.get(endpoint_type, endpoint_type)
