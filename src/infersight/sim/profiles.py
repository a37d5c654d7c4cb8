"""Performance and quality profiles of the simulated models.

A profile is the whole "personality" of a simulated model: how long prefill and decode take, how
it degrades under load, how often it answers correctly and how often it fails. The defaults are
chosen so that the demo shows visibly different models side by side (a slow accurate one, a fast
sloppy one, a reasoner) and the benchmark has a near-free engine (``sim-bench``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

FAULT_KINDS: tuple[str, ...] = ("429", "500", "timeout", "disconnect")
MALFORMED_KINDS: tuple[str, ...] = (
    "fenced", "prose", "trailing_comma", "single_quotes", "string_scores",  # a client can repair these
    "garbage", "truncated", "missing_dimension",  # these need a re-ask
)


@dataclass(frozen=True)
class JudgeProfile:
    """Knobs of a simulated LLM judge (``infersight.sim.judge``); set on a profile, they make it a judge.

    Scores are the truth (is the judged answer the bank's correct one?) plus ``bias`` plus Gaussian
    ``noise`` (std dev, seeded like every sim draw), rounded and clamped to 1-5. ``malformed_rate``
    is the share of replies broken in one of ``malformed_kinds``. In pairwise prompts,
    ``position_bias`` is the chance of preferring whichever answer is shown first.
    """

    noise: float = 0.3
    bias: float = 0.0
    malformed_rate: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    position_bias: float = 0.0

    def __post_init__(self) -> None:
        """Every builder (``sim_judge_profile``, ``with_judge``) gets the same checks, each naming its knob."""
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"judge noise must be a finite number >= 0, not {self.noise!r}")
        if not math.isfinite(self.bias):
            raise ValueError(f"judge bias must be a finite number, not {self.bias!r}")
        for knob in ("malformed_rate", "position_bias"):
            value = getattr(self, knob)
            if not 0.0 <= value <= 1.0:  # NaN fails this too
                raise ValueError(f"judge {knob} is a probability in [0, 1], not {value!r}")
        unknown = set(self.malformed_kinds) - set(MALFORMED_KINDS)
        if unknown:
            raise ValueError(f"unknown malformed_kinds {sorted(unknown)}; choose from {MALFORMED_KINDS}")
        if self.malformed_rate > 0 and not self.malformed_kinds:  # every broken reply drew from nothing
            raise ValueError("judge malformed_rate > 0 needs at least one of malformed_kinds")


@dataclass(frozen=True)
class ModelProfile:
    """Latency, capacity, quality and fault knobs of one simulated model.

    Latency model: TTFT = queue wait + ``ttft_base_ms`` + ``prefill_ms_per_token`` x uncached
    prompt tokens (+ up to ``jitter_ms``). Each output token then takes ``decode_ms_per_token``
    x (1 + ``load_slowdown`` x other running sequences) +/- ``jitter_ms``.
    """

    ttft_base_ms: float
    prefill_ms_per_token: float
    decode_ms_per_token: float
    jitter_ms: float = 0.0
    max_num_seqs: int = 64
    load_slowdown: float = 0.0
    p_correct: float = 0.8
    typical_output_tokens: int = 80
    typical_reasoning_tokens: int = 0  # > 0 makes the model emit reasoning_content first
    max_model_len: int = 8192
    kv_cache_blocks: int = 8192  # 16-token KV blocks; drives vllm:kv_cache_usage_perc
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_disconnect: float = 0.0
    judge: JudgeProfile | None = None  # set: this model is an LLM judge (sim/judge.py), not a chat model

    def __post_init__(self) -> None:
        for knob in ("ttft_base_ms", "prefill_ms_per_token", "decode_ms_per_token", "jitter_ms", "load_slowdown"):
            value = getattr(self, knob)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{knob} must be a finite number >= 0, not {value!r}")
        if self.max_num_seqs < 1:  # no slot: every request would wait for one forever
            raise ValueError(f"max_num_seqs must be at least 1, not {self.max_num_seqs!r}")

    @property
    def is_reasoner(self) -> bool:
        return self.typical_reasoning_tokens > 0

    def fault_rates(self) -> tuple[tuple[str, float], ...]:
        """(kind, probability) pairs in the fixed order used for the per-request draw."""
        return (
            ("429", self.rate_429),
            ("500", self.rate_500),
            ("timeout", self.rate_timeout),
            ("disconnect", self.rate_disconnect),
        )

    def with_fault_rate(self, fault_rate: float) -> ModelProfile:
        """Copy with ``fault_rate`` spread evenly over the four fault kinds."""
        each = max(0.0, fault_rate) / len(FAULT_KINDS)
        return dataclasses.replace(
            self, rate_429=each, rate_500=each, rate_timeout=each, rate_disconnect=each
        )


DEFAULT_PROFILES: dict[str, ModelProfile] = {
    # Big, careful model: ~120 ms TTFT, ~35 tok/s, right 9 times out of 10.
    "sim-large": ModelProfile(
        ttft_base_ms=120.0,
        prefill_ms_per_token=0.25,
        decode_ms_per_token=1000.0 / 35.0,
        jitter_ms=4.0,
        max_num_seqs=32,
        load_slowdown=0.01,
        p_correct=0.9,
        typical_output_tokens=120,
    ),
    # Small, fast model: ~30 ms TTFT, ~90 tok/s, right 6 times out of 10.
    "sim-small": ModelProfile(
        ttft_base_ms=30.0,
        prefill_ms_per_token=0.06,
        decode_ms_per_token=1000.0 / 90.0,
        jitter_ms=2.0,
        max_num_seqs=64,
        load_slowdown=0.005,
        p_correct=0.6,
        typical_output_tokens=80,
    ),
    # Reasoning model: thinks (reasoning_content) before it answers.
    "sim-reasoner": ModelProfile(
        ttft_base_ms=80.0,
        prefill_ms_per_token=0.15,
        decode_ms_per_token=1000.0 / 60.0,
        jitter_ms=3.0,
        max_num_seqs=32,
        load_slowdown=0.01,
        p_correct=0.95,
        typical_output_tokens=80,
        typical_reasoning_tokens=150,
    ),
    # Benchmark engine: as cheap as possible so the gateway's own overhead shows.
    "sim-bench": ModelProfile(
        ttft_base_ms=5.0,
        prefill_ms_per_token=0.0,
        decode_ms_per_token=1.0,
        jitter_ms=0.05,
        max_num_seqs=1024,
        load_slowdown=0.0,
        p_correct=0.8,
        typical_output_tokens=100,
        kv_cache_blocks=65536,
    ),
    # Benchmark engine that answers at once: at low concurrency the proxy's own latency bounds throughput.
    "sim-instant": ModelProfile(
        ttft_base_ms=0.0,
        prefill_ms_per_token=0.0,
        decode_ms_per_token=0.0,
        max_num_seqs=1024,
        p_correct=0.8,
        typical_output_tokens=100,
        kv_cache_blocks=65536,
    ),
    # LLM judge: scores answers to bank questions as JSON; ~1 s per call, as a hosted judge takes.
    "sim-judge": ModelProfile(
        ttft_base_ms=1000.0,
        prefill_ms_per_token=0.0,
        decode_ms_per_token=0.0,  # latency is all "prefill": ttft_base_ms, whatever the reply length
        max_num_seqs=256,
        typical_output_tokens=150,
        kv_cache_blocks=65536,
        judge=JudgeProfile(),
    ),
}
