"""Layer 2 transport: the Bus takes records off the hot path and hands batches to exporters."""

from infersight.bus.base import Bus, BusStats, Exporter
from infersight.bus.memory import MemoryBus

__all__ = ["Bus", "BusStats", "Exporter", "MemoryBus"]
