"""Exporters: where the bus delivers batches of records."""
