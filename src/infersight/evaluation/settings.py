"""The ``evaluation:`` section of the config (and the per-tenant content policy it relies on).

Kept apart from ``config.py`` so that the evaluation package owns its knobs; ``config.Settings``
embeds ``EvaluationSettings``. Every key is documented in docs/config.md (a test checks it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from infersight.scheduling import CpuList

ContentPolicy = Literal["none", "sampled", "all"]
"""Which requests keep (masked, truncated) prompt and completion text beyond the gateway:
``none`` (the tenant opts out: only metadata and hashes, never content, not even to a judge),
``sampled`` (only requests sampled for evaluation) or ``all`` (every request; deterministic checks
then run on 100% of traffic)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_a_bool(value: Any) -> Any:
    """YAML reads ``yes``/``on``/``true`` as booleans, which pydantic would take as 1: a
    ``sample_rate: yes`` judged every request, a ``max_content_chars: true`` cut every text to one
    character."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not the boolean {str(value).lower()}")
    return value


Rate = Annotated[float, BeforeValidator(_not_a_bool)]
"""A number (a rate, a size) that a YAML boolean must not pass as."""
Count = Annotated[int, BeforeValidator(_not_a_bool)]


class JudgeSettings(_Strict):
    """An OpenAI-compatible judge endpoint: local vLLM or Ollama, a cloud model, or our own gateway."""

    url: str | None = Field(None, description="judge base URL ending in /v1; null disables the LLM judge")
    model: str = Field("sim-judge", min_length=1, description="judge model id sent to the endpoint")
    api_key_env: str | None = Field(None, description="env var holding the judge endpoint's key")
    rubric: str = Field("default", description="packaged rubric name or a path to a rubric YAML file")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(400, ge=16)
    json_mode: bool = Field(
        True, description="send response_format json_object (part of evaluator_version); an endpoint that "
        "refuses it is asked without, and those scores carry the version of json_mode false")
    max_retries: int = Field(2, ge=0, le=10, description="re-asks after unparseable JSON or a transient error")
    timeout_s: float = Field(60.0, gt=0)
    concurrency: int = Field(16, ge=1, le=1024, description="judge calls in flight per worker")
    max_calls_per_s: float | None = Field(
        None, gt=0, description="judge call starts per second per worker, evenly spaced (retries count); "
        "null: no pacing, a flush's calls start together")
    input_price_per_1m: float = Field(0.0, ge=0, description="judge price per 1M input tokens (judge_cost)")
    output_price_per_1m: float = Field(0.0, ge=0, description="judge price per 1M output tokens (judge_cost)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):  # '' too: only null disables the judge
            raise ValueError("must start with http:// or https:// (null disables the LLM judge)")
        return value.rstrip("/")


class CalibrationGate(_Strict):
    """Minimums a judge version must reach on a golden set to be promoted (``eval calibrate --gate``)."""

    min_n: int = Field(30, ge=2, description="fewest scored golden items per dimension a verdict may rest on")
    min_spearman: float = Field(0.3, ge=-1.0, le=1.0)
    min_kappa: float = Field(0.2, ge=-1.0, le=1.0)
    max_abs_bias: float | None = Field(None, ge=0.0, description="largest allowed mean bias (judge - human)")


class DriftSettings(_Strict):
    """When ``GET /api/v1/quality/drift`` calls a series' change drift (docs/evaluation.md)."""

    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="significance level: the false discovery rate "
                         "with the benjamini_hochberg correction, else the level of each test")
    correction: Literal["benjamini_hochberg", "none"] = Field(
        "benjamini_hochberg", description="multiple-testing correction over every test of one drift answer")
    min_n: int = Field(30, ge=2, description="fewest evaluations in each window for a series to be tested")
    min_score_delta: float = Field(0.25, ge=0.0, description="smallest change of the mean score that counts, in "
                                   "judge points (1-5); 0-1 scores use a quarter of it")
    min_failure_rate_delta: float = Field(0.02, ge=0.0, le=1.0,
                                          description="smallest change of the failure rate that counts")


class BreakerSettings(_Strict):
    """The eval circuit breaker: random sampling is lowered while the pipeline lags or overspends."""

    enabled: bool = Field(True, description="lower random sampling on lag or spend; false: never")
    max_lag_s: float = Field(300.0, gt=0, description="open when the oldest unevaluated task is older than this")
    recover_lag_s: float = Field(60.0, gt=0, description="close again only once the oldest is younger than this")
    budget: float | None = Field(None, gt=0, description="judge spend allowed per budget_period (judge price currency)")
    budget_period: Literal["day", "month"] = Field("day", description="UTC calendar period the budget covers")
    reduced_factor: float = Field(0.1, ge=0.0, lt=1.0, description="random sampling rates are multiplied by this while open")
    check_interval_s: float = Field(5.0, gt=0, le=300, description="how often lag and spend are read")

    @model_validator(mode="after")
    def _hysteresis(self) -> BreakerSettings:
        if self.recover_lag_s > self.max_lag_s:
            raise ValueError("recover_lag_s must not exceed max_lag_s")
        return self


class EvaluationSettings(_Strict):
    enabled: bool = Field(True, description="sample, check and judge; false: the gateway publishes no eval tasks")
    sample_rate: Rate = Field(0.05, ge=0.0, le=1.0, description="default per-tenant judge sampling rate")
    max_content_chars: Count = Field(2000, ge=1, description="prompt and completion text are truncated to this")
    embedding_model_dir: str | None = Field(
        None, min_length=1, description="a LOCAL sentence-transformers model directory: reference answers also get "
        "embedding_similarity rows (optional extra: pip install sentence-transformers; nothing is downloaded)")
    embedding_device: str = Field(
        "cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$",
        description="where the embedding model runs: cpu (default: on a GPU node the GPU's memory is the engine's; "
        "sentence-transformers' own default took the GPU whenever CUDA was there), cuda, cuda:N or mps")
    low_confidence_entropy: float = Field(
        1.5, gt=0, description="mean token entropy (nats, from logprobs) above which an answer is low confidence"
    )
    max_forced_window_s: int = Field(86_400, ge=60, le=31_536_000,
                                     description="longest forced 100% sampling window (at most a year)")
    guardrail_scan: bool = Field(
        True, description="screen every request's prompt and completion for PII and injection (force-samples hits)"
    )
    checks: bool = Field(True, description="run the deterministic checks on every task with content")
    child_process: bool = Field(
        True, description="mask, check and judge in a child process of the gateway (off the relay's GIL; "
        "Presidio's memory outside the gateway); false: threads in the gateway process"
    )
    child_nice: int = Field(
        10, ge=0, le=19, description="nice increment of the eval process: on a busy host the relay gets the "
        "CPU first and evaluation catches up (lag is in seconds); 0 leaves the priority alone"
    )
    child_sched_idle: bool = Field(
        True, description="run the eval process under SCHED_IDLE (Linux): the scheduler gives it a CPU only "
        "when no normal thread wants one, so a relay thread that wakes never waits behind evaluation; false: nice alone"
    )
    child_cpus: CpuList | None = Field(
        None, description="CPUs (numbers, as taskset -c) the eval process runs on: cores the relay does not use "
        "shield it better than priority does; null: wherever the gateway runs"
    )
    judge: JudgeSettings = JudgeSettings()
    gate: CalibrationGate = CalibrationGate()
    drift: DriftSettings = DriftSettings()
    breaker: BreakerSettings = BreakerSettings()
    stream: str = Field("infersight:evals", description="Redis stream of eval tasks (bus.backend: redis)")
    group: str = Field("infersight-eval", description="consumer group of `infersight eval-worker`")
    max_queue: int = Field(10_000, ge=10, description="eval tasks held in memory; beyond, only on disk")
    flush_interval_s: float | None = Field(
        None, gt=0, le=60, description="how often the embedded eval bus hands tasks to the eval sink; null: "
        "bus.flush_interval_s. Each hand-off is a few round trips (checks, judge, store) that wake the "
        "gateway's threads, and eval lag is measured in seconds")
    mask_linger_s: float = Field(
        0.25, ge=0, le=5, description="how long a sampled task waits for others to be masked with it in one "
        "call (one round trip to the eval process, fewer wake-ups of the gateway's threads); 0: one at a time")

    @model_validator(mode="after")
    def _budget_has_a_price(self) -> EvaluationSettings:
        judge = self.judge
        if self.breaker.budget is not None and judge.url is not None \
                and judge.input_price_per_1m == 0 and judge.output_price_per_1m == 0:
            raise ValueError("breaker.budget: is set, but the judge has no price (evaluation.judge."
                             "input_price_per_1m and output_price_per_1m are 0), so spend stays 0 and the "
                             "budget never opens the breaker; set the judge's prices")
        return self
