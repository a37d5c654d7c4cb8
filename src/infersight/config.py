"""The one settings schema, loaded from YAML and validated at start-up.

Every error names the offending key and the file, e.g.
``config error in gateway.yaml: backends.0.url: Field required``. Secrets are never stored in the
file in plain form by necessity: tenant keys may be given as ``sha256:<hex>`` and are hashed in memory
either way; upstream keys are read from the environment variable named by ``api_key_env``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infersight.evaluation.settings import ContentPolicy, EvaluationSettings, Rate
from infersight.scheduling import CpuList
from infersight.telemetry.settings import TelemetrySettings

EVAL_REQUEST_TYPE = "eval"
"""The judge's own calls (``x-infersight-request-type: eval``), never sampled: a tenant has it only by
listing it in its own ``tenants[].request_types`` (the observability tenant), never from the global list."""
DEFAULT_REQUEST_TYPES = ["interactive", "batch"]
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")  # an RFC 9110 token
_SHA256_HEX = re.compile(r"[0-9A-Fa-f]{64}")
_YAML_MERGE = "tag:yaml.org,2002:merge"


class ConfigError(Exception):
    """A configuration problem, with the key path and the file it came from."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = f" in {path}" if path else ""
        what = f"{key}: " if key else ""
        super().__init__(f"config error{where}: {what}{message}")
        self.detail = message  # without the place, so that a caller who knows more can re-raise it
        self.path = path
        self.key = key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _well_formed_keys(keys: list[str]) -> list[str]:
    for key in keys:
        # Not hex: no presented key could ever match it, and its holder would be locked out silently.
        if key.startswith("sha256:") and not _SHA256_HEX.fullmatch(key[7:]):
            raise ValueError("a sha256: key needs 64 hex digits")
    return keys


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="gateway processes sharing the port")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="413 above this")
    switch_interval_ms: float = Field(
        1.0, gt=0, le=100, description="GIL switch interval of a gateway process (Python's default is 5 ms)"
    )
    metrics_keys: list[str] = Field(
        default_factory=list,
        description="keys that may read /metrics (admin keys may too); empty: /metrics needs no key",
    )

    @field_validator("metrics_keys")
    @classmethod
    def _metrics_keys_well_formed(cls, keys: list[str]) -> list[str]:
        return _well_formed_keys(keys)


class StorageSettings(_Strict):
    path: str = "./infersight-data"


class UpstreamSettings(_Strict):
    """Pooling and timeouts for every backend connection."""

    client: Literal["http1", "aiohttp"] = Field("http1", description="upstream HTTP client implementation")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0, description="max silence between upstream bytes")
    total_timeout_s: float = Field(600.0, gt=0)
    pool_size: int = Field(1024, ge=1, description="max open connections per gateway process")
    keepalive_s: float = Field(30.0, gt=0)


class TokenizerSettings(_Strict):
    """How the gateway counts a prompt before dispatch; exactly one source, all offline."""

    tiktoken: str | None = Field(None, description="encoding name, read from TIKTOKEN_CACHE_DIR")
    tiktoken_file: str | None = Field(None, description="local .tiktoken BPE ranks file")
    tokenizer_json: str | None = Field(None, description="local HF tokenizer.json")

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerSettings:
        given = [n for n in ("tiktoken", "tiktoken_file", "tokenizer_json") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("set exactly one of tiktoken, tiktoken_file, tokenizer_json")
        return self


class ModelSettings(_Strict):
    name: str
    tokenizer: TokenizerSettings | None = None


class BackendSettings(_Strict):
    name: str
    type: Literal["openai"] = "openai"
    url: str
    api_key_env: str | None = None
    models: list[ModelSettings] = Field(min_length=1)
    instance: str | None = Field(
        None, min_length=1, max_length=200,
        description="instance name of this backend's engine, as its telemetry targets name it; "
        "default: the one engine target at the same scheme, host and port, else the URL's host:port")
    instance_header: str | None = Field(
        None, description="upstream response header naming the replica that answered (behind a load balancer)")

    @field_validator("models", mode="before")
    @classmethod
    def _names_to_models(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("instance_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        # Lowercased once here: the upstream clients hand response headers over lowercased.
        if value is not None and not _HEADER_NAME.fullmatch(value):
            raise ValueError("must be an HTTP header name, e.g. x-served-by")
        return value.lower() if value is not None else None

    def api_key(self) -> str | None:
        """The upstream key, read from the environment at start-up (never from the file)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class TenantSettings(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    api_keys: list[str] = Field(min_length=1)
    use_cases: list[str] = Field(default_factory=list)
    request_types: list[str] | None = None
    sample_rate: Rate | None = Field(None, ge=0.0, le=1.0, description="judge sampling rate; null: evaluation.sample_rate")
    content: ContentPolicy = Field("sampled", description="which requests keep masked text: none (opt out), sampled, all")

    @field_validator("api_keys")
    @classmethod
    def _keys_well_formed(cls, keys: list[str]) -> list[str]:
        return _well_formed_keys(keys)


class BusSettings(_Strict):
    """How records travel from the gateway to the store: in-process (memory) or Redis Streams."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = Field(None, description="redis://host:6379/0; required for redis")
    stream: str = "infersight:requests"
    group: str = "infersight-ingest"
    max_queue: int = Field(100_000, ge=100, description="records held in memory; beyond, only on disk")
    batch_size: int = Field(1000, ge=1, description="records waiting that trigger a store write at once")
    max_batch_size: int = Field(
        10_000, ge=1, description="records per store write at most, when a backlog waits (never below batch_size)"
    )
    flush_interval_s: float = Field(
        1.0, gt=0, description="longest wait before a partial batch is written: each store write has a fixed "
        "cost (~20 ms in DuckDB), so fewer, larger writes take less CPU from the relay (benchmarks/README.md)"
    )
    consumer_nice: int = Field(
        10, ge=0, le=19, description="nice increment of `infersight ingest` and `eval-worker`: on a shared host "
        "the gateways get the CPU first; 0 leaves the priority alone"
    )
    max_deliveries: int = Field(
        5, ge=1, description="failures of a record alone, while the rest of its batch goes through, before it is "
        "dead-lettered (Redis: deliveries; the embedded bus: its exporters' refusals)")
    claim_idle_ms: int = Field(30_000, ge=100, description="pending this long on a dead consumer: reclaimed")
    journal: bool = Field(True, description="write-ahead journal under <storage.path>/spool (survives a crash)")
    max_journal_mb: int | None = Field(None, ge=1, description="cap on the journal's disk use; None: unbounded")

    @property
    def max_journal_bytes(self) -> int | None:
        """``max_journal_mb`` in bytes, the cap of each journal (the requests' and the eval spool)."""
        return self.max_journal_mb * (1 << 20) if self.max_journal_mb else None

    keep_acked_s: float = Field(3600.0, ge=0, description="acknowledged stream entries kept this long before trimming")
    trim_interval_s: float = Field(60.0, ge=0, description="how often consumers trim acknowledged entries; 0: never")

    @model_validator(mode="after")
    def _url_for_redis(self) -> BusSettings:
        if self.backend == "redis" and not self.url:
            raise ValueError("bus.url is required when bus.backend is redis")
        return self

    @property
    def write_batch(self) -> int:
        """Records per store write at most: ``max_batch_size``, never below ``batch_size``."""
        return max(self.batch_size, self.max_batch_size)


class ExporterSettings(_Strict):
    jsonl: bool = Field(False, description="also append records to <storage.path>/records/*.jsonl")


class StoreSettings(_Strict):
    """Where records are stored: embedded DuckDB (default) or ClickHouse for scale-out."""

    backend: Literal["duckdb", "clickhouse"] = "duckdb"
    path: str | None = Field(None, description="DuckDB file; default <storage.path>/infersight.duckdb")
    url: str | None = Field(None, description="ClickHouse HTTP URL, e.g. http://user:pass@host:8123")
    database: str = "infersight"
    compact_at_start_free_ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="DuckDB: rewrite the file at open when this share of it is free blocks")
    child_process: bool = Field(
        True, description="DuckDB owned by a gateway: run it in a child process of the gateway (its writes "
        "take the GIL in part, which held the relay's event loop up); false: threads in the gateway process")
    child_nice: int = Field(
        10, ge=0, le=19, description="nice increment of the gateway's store process: the relay gets the CPU "
        "first and writes catch up (the bus holds records meanwhile); 0 leaves the priority alone")
    child_cpus: CpuList | None = Field(
        None, description="CPUs (numbers, as taskset -c) the gateway's store process runs on: cores the relay "
        "does not use shield it from the writes better than priority does; null: wherever the gateway runs")
    threads: int | None = Field(
        None, ge=1, description="DuckDB worker threads; null: one per core, but 1 in the gateway's store "
        "process (a write's parallel burst took the relay's other core)")

    @model_validator(mode="after")
    def _url_for_clickhouse(self) -> StoreSettings:
        if self.backend == "clickhouse" and not self.url:
            raise ValueError("store.url is required when store.backend is clickhouse")
        return self


class RetentionSettings(_Strict):
    """Days kept per kind of data; text (prompts and completions) may be shorter per tenant."""

    requests_days: int = Field(90, ge=1)
    text_days: int = Field(30, ge=0)
    text_days_by_tenant: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    eval_results_days: int = Field(90, ge=1)
    telemetry_days: int = Field(90, ge=1)
    cost_lines_days: int = Field(455, ge=1)
    rollups_days: int = Field(455, ge=1, description="15 months")


class TracingSettings(_Strict):
    otlp_endpoint: str | None = Field(None, description="e.g. http://127.0.0.1:4318/v1/traces")
    service_name: str = "infersight-gateway"
    export_timeout_s: float = 5.0
    export_unsampled: bool = Field(
        False, description="also export the spans of requests whose caller did not sample the trace "
        "(traceparent flags 00); by default they are counted, not sent, as OpenTelemetry's parent-based sampler does")
    max_queue: int = Field(
        10_000, description="no effect, kept so that configs setting it still load: spans go out with the "
        "records' batches on the bus, which holds them (bus.max_queue, then the journal)")


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    backends: list[BackendSettings] = Field(min_length=1)
    tenants: list[TenantSettings] = Field(min_length=1)
    admin_api_keys: list[str] = Field(default_factory=list)
    request_types: list[str] = Field(default_factory=lambda: list(DEFAULT_REQUEST_TYPES))
    bus: BusSettings = BusSettings()
    exporters: ExporterSettings = ExporterSettings()
    store: StoreSettings = StoreSettings()
    retention: RetentionSettings = RetentionSettings()
    tracing: TracingSettings = TracingSettings()
    logging: LoggingSettings = LoggingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @field_validator("admin_api_keys")
    @classmethod
    def _admin_keys_well_formed(cls, keys: list[str]) -> list[str]:
        return _well_formed_keys(keys)

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        seen: dict[str, str] = {}
        for backend in self.backends:
            for model in backend.models:
                if model.name in seen:
                    raise ValueError(
                        f"model {model.name!r} is served by both {seen[model.name]!r} and {backend.name!r}"
                    )
                seen[model.name] = backend.name
        key_owner: dict[str, str] = {}
        for tenant in self.tenants:
            for key in tenant.api_keys:
                digest = hash_api_key(key)
                if digest in key_owner and key_owner[digest] != tenant.id:
                    raise ValueError(f"an API key is shared by tenants {key_owner[digest]!r} and {tenant.id!r}")
                key_owner[digest] = tenant.id
        for field, keys in (("admin_api_keys", self.admin_api_keys), ("server.metrics_keys", self.server.metrics_keys)):
            for key in keys:  # a tenant holding it would read every tenant's data (admin API, /metrics)
                if (owner := key_owner.get(hash_api_key(key))) is not None:
                    raise ValueError(f"a key in {field} is also an API key of tenant {owner!r}; give each its own")
        ids = [t.id for t in self.tenants]
        if len(ids) != len(set(ids)):
            raise ValueError("tenant ids must be unique")
        unknown = sorted(set(self.retention.text_days_by_tenant) - set(ids))
        if unknown:  # a typo would silently keep that tenant's text for the global text_days
            raise ValueError(f"retention.text_days_by_tenant names unknown tenant(s) {unknown}; use ids of tenants[]")
        shared = {self.bus.stream, f"{self.bus.stream}:dead", f"{self.bus.stream}:telemetry"}
        if self.evaluation.stream in shared:  # each consumer group would read the other's entries as poison
            raise ValueError(f"evaluation.stream: {self.evaluation.stream!r} is a stream of the request records "
                             f"(bus.stream {self.bus.stream!r}); give eval tasks a stream of their own")
        return self


def hash_api_key(key: str) -> str:
    """The stored form of a key: its sha256 hex. ``sha256:<hex>`` is taken as already hashed."""
    if key.startswith("sha256:"):
        return key[7:].lower()
    return hashlib.sha256(key.encode()).hexdigest()


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def settings_from_dict(data: Any, *, source: str = "<dict>") -> Settings:
    """Validate a parsed config, turning pydantic's errors into one ConfigError naming key and file."""
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", path=source)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


_KEYED_MESSAGE = re.compile(r"^Value error, ([a-z_][\w]*(?:\.[\w]+)*): (.*)$", re.S)
"""A cross-check raised by a section's validator names the key it is about first ("breaker.budget:
..."): relative to that section, so the error names the key, not the section."""


def _located(error: Any) -> tuple[str, str]:
    """(key, message) of one pydantic error, with a cross-check's own key taken from its message."""
    loc, msg = tuple(error["loc"]), str(error["msg"])
    keyed = _KEYED_MESSAGE.match(msg)
    if keyed:
        return _key_path(loc + tuple(keyed.group(1).split("."))), keyed.group(2)
    return _key_path(loc), msg


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    """pydantic's errors as one ConfigError naming the first key and the file."""
    located = [_located(e) for e in exc.errors()]
    err = ConfigError("; ".join(f"{key}: {msg}" for key, msg in located), path=source)
    err.key = located[0][0]
    return err


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a YAML config file."""
    return settings_from_dict(read_config(path), source=str(path))


class JudgeOnlySettings(_Strict):
    """What a command that only runs the judge needs (``eval calibrate``): no backends or tenants."""

    storage: StorageSettings = StorageSettings()
    evaluation: EvaluationSettings = EvaluationSettings()


def load_judge_settings(path: str | os.PathLike[str]) -> tuple[EvaluationSettings, StorageSettings]:
    """``evaluation`` and ``storage`` of a config file. A gateway config (it has ``backends`` or
    ``tenants``) is validated whole, so a broken one is still named; a file for the judge alone
    (e.g. a calibration job's) may leave out the sections the gateway needs."""
    data = read_config(path)
    if "backends" in data or "tenants" in data:
        settings = settings_from_dict(data, source=str(path))
        return settings.evaluation, settings.storage
    try:
        partial = JudgeOnlySettings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, str(path)) from None
    return partial.evaluation, partial.storage


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's YAML as a mapping; every failure is a ConfigError naming the file."""
    file = Path(path)
    if file.is_dir():  # was: "file not found", about a path that is there
        raise ConfigError("is a folder, not a file (pass --config FILE; see docs/config.md)", path=str(file))
    if not file.is_file():
        raise ConfigError("file not found (pass --config FILE; see docs/config.md)", path=str(file))
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}); save the file as UTF-8", path=str(file)) from None
    try:
        data = _parse_yaml(text, str(file))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {_yaml_problem(exc)}", path=str(file)) from None
    data = {} if data is None else data  # `0` or `false`: not a mapping
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", path=str(file))
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error without the snippet of the offending line it quotes: that line can hold an API key
    (a broken quote next to a tenant key printed the key at start-up). The place is kept: line, column."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what or mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            parts.append(f"{what or 'here'}{where}")
    return "; ".join(parts) or type(exc).__name__


def _parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load``, except that a repeated key is an error: PyYAML keeps the last one, so a
    second ``tenants:`` section silently dropped the first (and its tenants' keys stopped working)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, (), source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def _refuse_duplicate_keys(node: yaml.Node, loc: tuple[Any, ...], source: str, visited: set[int]) -> None:
    if id(node) in visited:  # an alias, possibly recursive: checked once
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _YAML_MERGE:
                if key.value in keys:
                    raise ConfigError(f"duplicate key (line {key.start_mark.line + 1}); only one may be given",
                                      path=source, key=_key_path((*loc, key.value)))
                keys.add(key.value)
                _refuse_duplicate_keys(value, (*loc, key.value), source, visited)
            else:
                _refuse_duplicate_keys(value, loc, source, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*loc, index), source, visited)
