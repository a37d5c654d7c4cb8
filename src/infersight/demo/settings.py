"""The demo's built-in configuration: three tenants, several models and use cases, one simulator."""

from __future__ import annotations

from typing import Any

from infersight.config import Settings, settings_from_dict

DEMO_TENANTS: list[dict[str, Any]] = [  # three content policies: sampled, all, and opted out
    {"id": "acme", "api_keys": ["sk-acme-demo"], "use_cases": ["chat", "summarize"], "weight": 5,
     "sample_rate": 0.2, "content": "sampled"},
    {"id": "globex", "api_keys": ["sk-globex-demo"], "use_cases": ["search", "chat"], "weight": 3,
     "sample_rate": 0.1, "content": "all"},
    {"id": "initech", "api_keys": ["sk-initech-demo"], "use_cases": ["support", "extract"], "weight": 2,
     "content": "none"},
]
DEMO_MODELS = ["sim-large", "sim-small", "sim-reasoner"]
DEMO_INSTANCE = "sim-gpu-0"


def demo_settings(sim_url: str, data_dir: str, port: int) -> Settings:
    tenants = [{k: v for k, v in t.items() if k != "weight"} for t in DEMO_TENANTS]
    base = sim_url.rstrip("/").removesuffix("/v1")
    return settings_from_dict(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "storage": {"path": data_dir},
            "backends": [{"name": "sim", "type": "openai", "url": sim_url, "models": DEMO_MODELS}],
            "tenants": tenants,
            "admin_api_keys": ["sk-admin-demo"],
            "logging": {"level": "warning", "access_log": False},
            # The simulator also serves the judge model: it knows which answers are right.
            "evaluation": {"judge": {"url": sim_url, "model": "sim-judge", "concurrency": 32,
                                     "input_price_per_1m": 0.15, "output_price_per_1m": 0.6}},
            # The simulator serves vLLM's /metrics and a dcgm-exporter page for its one simulated GPU.
            "telemetry": {"interval_s": 2, "timeout_s": 2, "targets": [
                {"instance": DEMO_INSTANCE, "kind": "vllm", "url": f"{base}/metrics", "models": DEMO_MODELS},
                {"instance": DEMO_INSTANCE, "kind": "dcgm", "url": f"{base}/dcgm/metrics", "models": DEMO_MODELS},
            ]},
        },
        source="<built-in demo config>",
    )
