"""Layer 4: the query API under /api/v1 (documented by /api/v1/openapi.json)."""

from infersight.api.app import QueryApi

__all__ = ["QueryApi"]
