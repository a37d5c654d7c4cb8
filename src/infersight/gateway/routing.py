"""Model name -> backend. Built once from config; a lookup is one dict access.

Each route also carries the backend's instance name, resolved here once at start-up so that the hot
path only copies a string into the record. Requests join telemetry by that name (docs/telemetry.md,
"Collecting"), so it defaults to what the backend's own telemetry target calls the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from infersight.config import BackendSettings, ConfigError, Settings, TokenizerSettings
from infersight.gateway.tokens import PromptCounter, load_counter

API_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
#: Telemetry kinds that scrape the engine itself (so share its origin); dcgm pages sit on another port.
ENGINE_KINDS = frozenset({"vllm", "tgi", "sglang"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EngineTarget(Protocol):
    """What routing reads of a telemetry target (``telemetry.targets[]``); the gateway imports no telemetry."""

    @property
    def instance(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def url(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Route:
    backend: str
    endpoint_type: str
    urls: dict[str, str]  # api -> absolute upstream URL
    auth_header: str | None
    counter: PromptCounter
    instance: str = ""  # the engine instance's name; replaced per response when instance_header names a replica
    instance_header: str | None = None  # lowercased response header naming the replica that answered


class Router:
    def __init__(self, settings: Settings) -> None:
        self._routes: dict[str, Route] = {}
        targets = settings.telemetry.targets
        for b, backend in enumerate(settings.backends):
            key = backend.api_key()
            urls = {api: backend.url + path for api, path in API_PATHS.items()}
            instance = backend_instance(backend, targets)
            for m, model in enumerate(backend.models):
                self._routes[model.name] = Route(
                    backend=backend.name,
                    endpoint_type=backend.type,
                    urls=urls,
                    auth_header=f"Bearer {key}" if key else None,
                    counter=_counter(model.tokenizer, f"backends.{b}.models.{m}"),
                    instance=instance,
                    instance_header=backend.instance_header,
                )
        self.models: list[tuple[str, str]] = [(m, r.backend) for m, r in self._routes.items()]

    def route(self, model: str) -> Route | None:
        return self._routes.get(model)


def _counter(tokenizer: TokenizerSettings | None, where: str) -> PromptCounter:
    """The model's counter; a tokenizer error names the model's full key (``tokenizer.tokenizer_json``
    alone did not say which of the models had the bad file)."""
    try:
        return load_counter(tokenizer)
    except ConfigError as exc:
        raise ConfigError(exc.detail, path=exc.path, key=f"{where}.{exc.key or 'tokenizer'}") from None


def backend_instance(backend: BackendSettings, targets: Iterable[EngineTarget]) -> str:
    """The backend's instance name: explicit; else its engine target's; else its URL's ``host:port``.

    An engine's metrics page is served by the engine's own HTTP server, so a vllm, tgi or sglang target
    at the backend's scheme, host and port scrapes that very engine. Two names there (say, the same
    engine listed twice) are ambiguous, and ``host:port`` (Prometheus' default ``instance``) applies.
    """
    if backend.instance:
        return backend.instance
    origin = url_origin(backend.url)
    names = {t.instance for t in targets if t.kind in ENGINE_KINDS and t.url and url_origin(t.url) == origin}
    if len(names) == 1:
        return names.pop()
    return origin[1]


def url_origin(url: str) -> tuple[str, str]:
    """(scheme, ``host:port``) with the scheme's default port filled in and the host lowercased."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # a port out of range: keep the URL's text, it cannot match anything anyway
        port = None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)
    if ":" in host:  # IPv6 literal: bracketed, as in a URL and in Prometheus' instance label
        host = f"[{host}]"
    return scheme, f"{host}:{port}"
