"""infersight: observability for LLM inference (quantity and quality, per tenant)."""

__version__ = "0.1.0"
