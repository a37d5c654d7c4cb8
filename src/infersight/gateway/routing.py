"""Model name -> backend. Built once from config; a lookup is one dict access."""

from __future__ import annotations

from dataclasses import dataclass

from infersight.config import Settings
from infersight.gateway.tokens import PromptCounter, load_counter

API_PATHS = {"chat": "/chat/completions", "completions": "/completions"}


@dataclass(frozen=True, slots=True)
class Route:
    backend: str
    endpoint_type: str
    urls: dict[str, str]  # api -> absolute upstream URL
    auth_header: str | None
    counter: PromptCounter


class Router:
    def __init__(self, settings: Settings) -> None:
        self._routes: dict[str, Route] = {}
        for backend in settings.backends:
            key = backend.api_key()
            urls = {api: backend.url + path for api, path in API_PATHS.items()}
            for model in backend.models:
                self._routes[model.name] = Route(
                    backend=backend.name,
                    endpoint_type=backend.type,
                    urls=urls,
                    auth_header=f"Bearer {key}" if key else None,
                    counter=load_counter(model.tokenizer),
                )
        self.models: list[tuple[str, str]] = [(m, r.backend) for m, r in self._routes.items()]

    def route(self, model: str) -> Route | None:
        return self._routes.get(model)
