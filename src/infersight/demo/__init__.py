"""``infersight demo``: the simulator, the gateway and synthetic multi-tenant traffic, with a live table."""

from infersight.demo.runner import run_demo

__all__ = ["run_demo"]
