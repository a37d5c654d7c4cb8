"""A deterministic, OpenAI-compatible LLM engine simulator (the engine behind demos, tests, benchmarks).

It speaks the OpenAI chat/completions wire format, paces tokens like a real engine (TTFT, prefill,
decode, queueing, prefix cache), exposes vLLM's Prometheus metrics, and answers from a question bank
so that answer quality is known. See docs/simulator.md.
"""

from infersight.sim.app import SimApp, create_sim_app
from infersight.sim.profiles import DEFAULT_PROFILES, ModelProfile
from infersight.sim.questions import QUESTION_BANK, Question
from infersight.sim.server import SimServer, run_sim

__all__ = [
    "DEFAULT_PROFILES",
    "QUESTION_BANK",
    "ModelProfile",
    "Question",
    "SimApp",
    "SimServer",
    "create_sim_app",
    "run_sim",
]
