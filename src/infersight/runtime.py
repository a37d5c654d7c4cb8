"""Wires the backends chosen by config and runs them; the only module that knows concrete classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from infersight.bus.base import Bus, Exporter
from infersight.bus.memory import MemoryBus
from infersight.config import Settings, load_settings
from infersight.exporters.jsonl import JsonlExporter
from infersight.gateway.app import GatewayApp
from infersight.gateway.upstreams.aiohttp_transport import AiohttpTransport
from infersight.gateway.upstreams.base import Transport
from infersight.gateway.upstreams.http1 import Http1Transport
from infersight.logs import configure_logging



def build_exporters(settings: Settings) -> list[Exporter]:
    exporters: list[Exporter] = [JsonlExporter(settings.storage.path)]
    if settings.tracing.otlp_endpoint:
        from infersight.tracing.otlp import OtlpHttpSpanExporter

        exporters.append(OtlpHttpSpanExporter(settings.tracing))
    return exporters


def upstream_transport(settings: Settings) -> Transport:
    """The configured upstream client; both are pooled, http1 is the faster (benchmarks/README.md)."""
    if settings.upstream.client == "aiohttp":
        return AiohttpTransport(settings.upstream)
    return Http1Transport(settings.upstream)


def build_gateway(
    settings: Settings,
    *,
    transport: Transport | None = None,
    bus: Bus | None = None,
    extra_exporters: list[Exporter] | None = None,
    clock: Callable[[], float] | None = None,
) -> GatewayApp:
    """A ready GatewayApp; the bus starts and the upstream pool closes with the ASGI lifespan."""
    transport = transport or upstream_transport(settings)
    if bus is None:
        bus = MemoryBus([*build_exporters(settings), *(extra_exporters or [])], max_queue=settings.bus_queue_size)

    async def start_bus() -> None:
        bus.start()

    async def stop_bus() -> None:
        bus.stop()

    kwargs = {"clock": clock} if clock is not None else {}
    return GatewayApp(
        settings, transport, bus, on_startup=[start_bus], on_shutdown=[transport.aclose, stop_bus], **kwargs
    )


def uvicorn_options(settings: Settings, port: int | None) -> dict[str, object]:
    return {
        "host": settings.server.host,
        "port": settings.server.port if port is None else port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_config": None,
        "lifespan": "on",
        "timeout_keep_alive": 30,
        "backlog": 4096,
    }


def serve(config_path: str, port: int | None = None, workers: int | None = None) -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM."""
    import uvicorn

    settings = load_settings(config_path)
    configure_logging(settings.logging.level)
    workers = workers or settings.server.workers
    options = uvicorn_options(settings, port)
    if workers == 1:
        uvicorn.run(build_gateway(settings), **options)  # type: ignore[arg-type]
        return
    from infersight.workers import supervise

    supervise(str(Path(config_path).resolve()), settings.server.host, int(options["port"]),  # type: ignore[arg-type]
              workers, Path(settings.storage.path) / "prometheus-multiproc")
