"""The simulated GPU follows the load; the memory-pressure scenario shows memory high, utilization low
and latency tails that grow; the exposition has dcgm-exporter's names, labels and units."""

from __future__ import annotations

import asyncio
import re

import httpx

from infersight.sim.app import create_sim_app
from infersight.sim.gpu import GpuSpec, SimGpu


def parse(exposition: bytes) -> dict[str, float]:
    out = {}
    for line in exposition.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = re.match(r"^(\w+)\{[^}]*\} (\S+)$", line).groups()  # type: ignore[union-attr]
            out[name] = float(value)
    return out


def test_utilization_and_memory_follow_load() -> None:
    load = {"running": 0, "kv": 0.0}
    gpu = SimGpu(lambda: [("m", load["running"], load["kv"])], GpuSpec())
    idle = gpu.state()
    load.update(running=16, kv=0.9)
    busy = gpu.state()
    assert idle.utilization == 0.0 and 0.8 < busy.utilization < 1.0
    assert busy.fb_used_mib > idle.fb_used_mib and busy.power_w > idle.power_w
    total = GpuSpec().memory_mib
    assert abs(busy.fb_used_mib + busy.fb_free_mib + busy.fb_reserved_mib - total) <= 1
    values = parse(gpu.exposition())
    assert values["DCGM_FI_DEV_GPU_UTIL"] == round(busy.utilization * 100)
    assert values["DCGM_FI_DEV_FB_USED"] == busy.fb_used_mib
    assert b'gpu="0",UUID="GPU-' in gpu.exposition() and b"# TYPE DCGM_FI_DEV_FB_FREE gauge" in gpu.exposition()


async def _load(app, n: int) -> list[float]:
    """n concurrent streamed requests to sim-large; returns each request's wall time to first byte."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim", timeout=60) as client:
        async def one() -> float:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            body = {"model": "sim-large", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            return loop.time() - t0
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.15)
        mid = (await client.get("/dcgm/metrics")).content
        times = await asyncio.gather(*tasks)
    app.mid_scrape = parse(mid)
    return sorted(times)


async def test_memory_pressure_scenario() -> None:
    normal, pressure = create_sim_app(seed=1), create_sim_app(seed=1, scenario="memory_pressure")
    t_normal = await _load(normal, 24)
    t_pressure = await _load(pressure, 24)
    n, p = normal.mid_scrape, pressure.mid_scrape
    p_mem = p["DCGM_FI_DEV_FB_USED"] / (p["DCGM_FI_DEV_FB_USED"] + p["DCGM_FI_DEV_FB_FREE"])
    assert p_mem > 0.85 and p["DCGM_FI_DEV_GPU_UTIL"] < 50  # memory-bound
    assert n["DCGM_FI_DEV_GPU_UTIL"] > p["DCGM_FI_DEV_GPU_UTIL"]
    assert t_pressure[-1] > 2 * t_normal[-1]  # the tail grows: requests queue for the few slots
