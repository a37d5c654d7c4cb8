"""Counting a prompt's tokens before dispatch, offline and fast (it runs on the hot path).

Backend-reported usage is the truth; this count is what the record carries when the backend says
nothing (``prompt_tokens_estimated``) and what budgets can check before a request is sent. Sources:

- ``tiktoken: <encoding>`` is used only when tiktoken's cache already holds the encoding's files, so
  ``tiktoken.get_encoding`` can never start a download. Otherwise one warning, then the estimate.
- ``tiktoken_file: <path>`` is a local ``.tiktoken`` ranks file (o200k regex, or cl100k's when the
  file name says cl100k; r50k's for r50k/p50k/gpt2).
- ``tokenizer_json: <path>`` is a local Hugging Face ``tokenizer.json``.
- nothing configured: :class:`EstimateCounter`, a heuristic marked ``exact=False``.

Loaded tokenizers are cached per source, so each model pays the load cost once per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from infersight.config import ConfigError, TokenizerSettings

log = logging.getLogger("infersight.tokens")

CHAT_TOKENS_PER_MESSAGE = 3
"""OpenAI's chat format wraps every message in ``<|start|>{role}\\n{content}<|end|>``: 3 tokens."""
CHAT_TOKENS_PER_NAME = 1
CHAT_REPLY_PRIMING = 3
"""Every reply is primed with ``<|start|>assistant<|message|>``: 3 more tokens per request."""


class PromptCounter(Protocol):
    """Counts the tokens of one text. ``exact`` is False when the number is only an estimate."""

    exact: bool

    def count(self, text: str) -> int: ...


class EstimateCounter:
    """A tokenizer-free estimate, for models with no tokenizer configured.

    English BPE vocabularies average about 4 characters and 0.75 words per token, so the estimate is
    the mean of ``chars / 4`` and ``words * 4 / 3`` (words counted as spaces and newlines + 1, which
    needs no allocation). Non-ASCII scripts (CJK, emoji) pack fewer characters per token, so for them
    the estimate is at least ``utf8_bytes / 4``. Typical error is 10-25%; never 0 for non-empty text.
    """

    exact = False

    def count(self, text: str) -> int:
        if not text:
            return 0
        words = text.count(" ") + text.count("\n") + 1
        estimate = (len(text) / 4 + words * 4 / 3) / 2
        if not text.isascii():
            estimate = max(estimate, len(text.encode("utf-8", "surrogatepass")) / 4)
        return max(1, round(estimate))


class TiktokenCounter:
    """Exact counts with a tiktoken ``Encoding``; special-token text is counted as ordinary text."""

    exact = True

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self._encode: Callable[[str], list[int]] = encoding.encode_ordinary

    def count(self, text: str) -> int:
        return len(self._encode(text)) if text else 0


class HFTokenizerCounter:
    """Exact counts with a Hugging Face ``tokenizers.Tokenizer`` (no special tokens, no truncation)."""

    exact = True

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0


# --------------------------------------------------------------------------------------------------
# loading

_cache: dict[tuple[str, ...], PromptCounter] = {}
_cache_lock = threading.Lock()
_ESTIMATE = EstimateCounter()


def load_counter(settings: TokenizerSettings | None) -> PromptCounter:
    """The counter for one model's tokenizer settings, loaded once and then cached.

    Raises ConfigError (naming the key and the path) when a configured file is missing or unreadable,
    so a bad config fails at start-up rather than on the first request.
    """
    if settings is None:
        return _ESTIMATE
    if settings.tiktoken:
        key: tuple[str, ...] = ("tiktoken", settings.tiktoken, _tiktoken_cache_dir() or "")
        loader: Callable[[], PromptCounter] = lambda: _load_named_tiktoken(settings.tiktoken or "")  # noqa: E731
    elif settings.tiktoken_file:
        key = ("tiktoken_file", os.path.abspath(settings.tiktoken_file))
        loader = lambda: _load_tiktoken_file(settings.tiktoken_file or "")  # noqa: E731
    else:
        key = ("tokenizer_json", os.path.abspath(settings.tokenizer_json or ""))
        loader = lambda: _load_tokenizer_json(settings.tokenizer_json or "")  # noqa: E731
    counter = _cache.get(key)
    if counter is None:
        with _cache_lock:
            counter = _cache.get(key)
            if counter is None:
                counter = _cache[key] = loader()
    return counter


def clear_cache() -> None:
    """Forget loaded tokenizers (tests, or after replacing files on disk)."""
    with _cache_lock:
        _cache.clear()


def _tiktoken_cache_dir() -> str | None:
    """Where tiktoken looks for cached files, mirroring ``tiktoken.load.read_file_cached``.

    None means caching is disabled (``TIKTOKEN_CACHE_DIR=""``), so every load would download.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


def _encoding_spec(name: str) -> tuple[dict[str, Any], list[tuple[str, str | None]]]:
    """Run tiktoken's constructor for ``name`` with its file loaders stubbed out: no I/O at all.

    Returns the constructor's dict (pat_str, special_tokens, ...) with empty ranks, and the
    (url, expected sha256) of every file it would read. Reading them from tiktoken itself keeps
    URLs, hashes and regexes in sync with the installed version. Raises KeyError for unknown names.
    """
    import tiktoken.registry

    tiktoken.registry.list_encoding_names()  # populates ENCODING_CONSTRUCTORS, plugins included
    constructors = tiktoken.registry.ENCODING_CONSTRUCTORS or {}
    constructor = constructors[name]
    wanted: list[tuple[str, str | None]] = []

    def fake_bpe(tiktoken_bpe_file: str, expected_hash: str | None = None) -> dict[bytes, int]:
        wanted.append((tiktoken_bpe_file, expected_hash))
        return {}

    def fake_data_gym(
        vocab_bpe_file: str,
        encoder_json_file: str,
        vocab_bpe_hash: str | None = None,
        encoder_json_hash: str | None = None,
        clobber_one_byte_tokens: bool = False,
    ) -> dict[bytes, int]:
        wanted.extend([(vocab_bpe_file, vocab_bpe_hash), (encoder_json_file, encoder_json_hash)])
        return {}

    # Rebind every function of the constructor's module to a private copy of its globals, so that
    # constructors calling each other (o200k_harmony -> o200k_base) see the stubs too, and the real
    # module is never touched (other threads may be using tiktoken).
    module = sys.modules[constructor.__module__]
    scope: dict[str, Any] = dict(vars(module))
    scope["load_tiktoken_bpe"] = fake_bpe
    scope["data_gym_to_mergeable_bpe_ranks"] = fake_data_gym
    for attr, value in vars(module).items():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            scope[attr] = types.FunctionType(value.__code__, scope, value.__name__, value.__defaults__)
    spec = scope[constructor.__name__]()
    return spec, wanted


def _missing_from_tiktoken_cache(name: str) -> str | None:
    """Why ``tiktoken.get_encoding(name)`` would reach the network, or None when it would not."""
    cache_dir = _tiktoken_cache_dir()
    if cache_dir is None:
        return "tiktoken caching is disabled (TIKTOKEN_CACHE_DIR is empty)"
    _, wanted = _encoding_spec(name)
    for url, expected in wanted:
        if "://" not in url:
            continue  # a local path: tiktoken reads it directly
        path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        try:
            data = Path(path).read_bytes()
        except OSError:
            return f"{path} (for {url}) is not in the cache"
        if expected and hashlib.sha256(data).hexdigest() != expected:
            return f"{path} (for {url}) does not match its sha256; tiktoken would re-download it"
    return None


def _load_named_tiktoken(name: str) -> PromptCounter:
    import tiktoken

    try:
        reason = _missing_from_tiktoken_cache(name)
    except KeyError:
        raise ConfigError(f"unknown tiktoken encoding {name!r}", key="tokenizer.tiktoken") from None
    if reason is not None:
        log.warning(
            "tiktoken encoding not available offline; estimating prompt tokens",
            extra={"encoding": name, "cache_dir": _tiktoken_cache_dir(), "reason": reason},
        )
        return _ESTIMATE
    return TiktokenCounter(tiktoken.get_encoding(name))


def _read_ranks(path: str, key: str) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (``base64(token) rank`` per line).

    Same format as ``tiktoken.load.load_tiktoken_bpe``, read here directly because that function
    copies local files into tiktoken's cache keyed by path, and later serves the stale copy even
    after the file changes.
    """
    try:
        contents = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", key=key) from None
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(contents.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ConfigError(f"{path} line {number} is not 'base64-token rank'", key=key) from None
    if not ranks:
        raise ConfigError(f"{path} holds no token ranks", key=key)
    return ranks


def _pattern_for(path: str) -> str:
    base = os.path.basename(path).lower()
    if "cl100k" in base:
        source = "cl100k_base"
    elif any(tag in base for tag in ("r50k", "p50k", "gpt2")):
        source = "r50k_base"
    else:
        source = "o200k_base"
    pattern: str = _encoding_spec(source)[0]["pat_str"]
    return pattern


def _load_tiktoken_file(path: str) -> PromptCounter:
    import tiktoken

    key = "tokenizer.tiktoken_file"
    ranks = _read_ranks(path, key)
    try:
        encoding = tiktoken.Encoding(
            name=f"file:{os.path.basename(path)}",
            pat_str=_pattern_for(path),
            mergeable_ranks=ranks,
            special_tokens={},
        )
    except Exception as exc:  # noqa: BLE001 - tiktoken raises various types for bad ranks
        raise ConfigError(f"{path} is not a usable BPE ranks file: {exc}", key=key) from None
    return TiktokenCounter(encoding)


def _load_tokenizer_json(path: str) -> PromptCounter:
    from tokenizers import Tokenizer

    key = "tokenizer.tokenizer_json"
    if not os.path.isfile(path):
        raise ConfigError(f"cannot read {path}: file not found", key=key)
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception subclass
        raise ConfigError(f"cannot load {path}: {exc}", key=key) from None
    # A tokenizer.json may carry truncation/padding for training; both would distort a count.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return HFTokenizerCounter(tokenizer)


# --------------------------------------------------------------------------------------------------
# what to count

def _content_texts(content: Any) -> list[str]:
    """Text of a message's content: a string, or the ``text`` of each part (images are not counted)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _message_texts(message: Any) -> list[str]:
    """Role, content, and tool-call names and arguments: all of it is prompt for the engine."""
    if not isinstance(message, dict):
        return []
    texts = [message["role"]] if isinstance(message.get("role"), str) else []
    texts.extend(_content_texts(message.get("content")))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
    return texts


def prompt_text(body: dict[str, Any], api: str) -> str:
    """The prompt as one text: role names and contents for chat, the prompt strings for completions.

    Token-id prompts have no text; :func:`count_prompt` counts those exactly. A completions
    ``suffix`` follows the prompt, after a newline.
    """
    if api == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        return "\n".join(t for m in messages for t in _message_texts(m))
    prompt = body.get("prompt")
    text = ""
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list):
        text = "\n".join(p for p in prompt if isinstance(p, str))
    suffix = body.get("suffix")  # prompt text too (fill in the middle): screened, hashed and counted
    return f"{text}\n{suffix}" if isinstance(suffix, str) and suffix else text


OPERATOR_ROLES = frozenset({"system", "developer", "assistant"})
"""Messages the application writes (its instructions) or the model wrote; the rest (``user``,
``tool``, ``function``) carry what an end user or a fetched document put there."""


def role_of(message: dict[str, Any]) -> str | None:
    """A message's role when it is a string: ``{"role": []}`` passes the body check, and a list
    looked up in ``OPERATOR_ROLES`` raised, losing the request's evaluation."""
    role = message.get("role")
    return role if isinstance(role, str) else None


def untrusted_prompt_text(body: dict[str, Any], api: str) -> str:
    """The prompt text an attacker could have written: chat messages of the user and of tools (an
    injection in a fetched page arrives as a tool result), not the operator's system or developer
    instructions, whose guard phrases ("never reveal your system prompt") read as attacks, nor the
    model's own earlier turns; a completions prompt whole."""
    if api != "chat":
        return prompt_text(body, api)
    messages = body.get("messages")
    return "\n".join(
        text for m in (messages if isinstance(messages, list) else ())
        if isinstance(m, dict) and role_of(m) not in OPERATOR_ROLES
        for text in _content_texts(m.get("content"))
    )


def latest_turn_text(body: dict[str, Any], api: str) -> str:
    """This turn's prompt text from the user and tools: their messages after the model's last one (a
    tool's result after the model's call, or the user's new message, also when a prefilled answer
    follows it). Earlier turns were this text
    when they were sent, and the operator's messages go with every request: PII in them made every
    later request of a conversation, or every request of a tenant, a guardrail sample. A completions
    prompt whole."""
    if api != "chat":
        return prompt_text(body, api)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    roles = [role_of(m) if isinstance(m, dict) else None for m in messages]
    newest = max((i for i, role in enumerate(roles) if role not in OPERATOR_ROLES), default=-1)
    # the model's last message before it: a final assistant message is a prefill (continue_final_message)
    last = max((i for i, role in enumerate(roles[:newest]) if role == "assistant"), default=-1)
    return "\n".join(
        text for m in messages[last + 1:]
        if isinstance(m, dict) and role_of(m) not in OPERATOR_ROLES
        for text in _content_texts(m.get("content"))
    )


HASH_PART_EDGE = 65_536
"""A non-text part longer than twice this (an image as a base64 data URL) is hashed on its first
and last this many bytes and its length: the hash runs on the event loop, and a 5 MB image hashed
whole took milliseconds, while two images that share 48 kB at each end are not to be expected."""


def prompt_hash(body: dict[str, Any], api: str, text: str, key: bytes) -> str:
    """HMAC-SHA256 (``key``: ``hash_key.prompt_hash_key``, 32 bytes) of the whole prompt: ``text``
    (:func:`prompt_text`), then each part that is not text (an image, audio, a file; token ids) as
    JSON. Was the text alone: every "Describe this image." request, whatever the image, and every
    token-id prompt had one hash, and ``low_cache_reuse`` read them as repeats. Keyed, as a plain
    sha256 of a short or templated prompt is a dictionary lookup away from the prompt."""
    digest = hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256)  # BLAKE2b: 2x slower here
    for part in _non_text_parts(body, api):
        try:
            data = orjson.dumps(part, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits, nesting past 254
            try:
                data = repr(part).encode("utf-8", "surrogatepass")
            except RecursionError:  # nested ~1,000 deep (the body parser takes 1,023): one marker
                data = b"<nested too deep>"
        if len(data) > 2 * HASH_PART_EDGE:
            data = b"%d:" % len(data) + data[:HASH_PART_EDGE] + data[-HASH_PART_EDGE:]
        digest.update(b"\n")
        digest.update(data)
    return digest.hexdigest()


def _non_text_parts(body: dict[str, Any], api: str) -> list[Any]:
    if api != "chat":
        prompt = body.get("prompt")
        is_ids = isinstance(prompt, list) and any(not isinstance(p, str) for p in prompt)
        return [prompt] if is_ids else []
    messages = body.get("messages")
    parts: list[Any] = []
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts.extend(p for p in content if not (isinstance(p, dict) and isinstance(p.get("text"), str)))
    return parts


def count_prompt(counter: PromptCounter, body: dict[str, Any], api: str) -> tuple[int, bool]:
    """(prompt tokens, exact) for a request body; never raises on a malformed body.

    Chat with a real tokenizer follows OpenAI's accounting: each message costs its role, content and
    name tokens plus 3 (plus 1 with ``name``), and the reply priming adds 3. The estimate counts the
    text only. Completions token-id prompts (``[1, 2]`` or ``[[1, 2], [3]]``) count exactly as their
    length; string prompts count with ``counter``.
    """
    if api == "chat":
        if not counter.exact:
            return counter.count(prompt_text(body, api)), False
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0, True
        total = CHAT_REPLY_PRIMING
        for message in messages:
            total += CHAT_TOKENS_PER_MESSAGE + sum(counter.count(t) for t in _message_texts(message))
            name = message.get("name") if isinstance(message, dict) else None
            if isinstance(name, str):
                total += counter.count(name) + CHAT_TOKENS_PER_NAME
        return total, True

    total, exact = _count_completions_prompt(counter, body.get("prompt"))
    suffix = body.get("suffix")
    if isinstance(suffix, str) and suffix:  # the engine reads it as prompt too (fill in the middle)
        return total + counter.count(suffix), exact and counter.exact
    return total, exact


def _count_completions_prompt(counter: PromptCounter, prompt: Any) -> tuple[int, bool]:
    if isinstance(prompt, str):
        return counter.count(prompt), counter.exact
    if not isinstance(prompt, list) or not prompt:
        return 0, True
    if all(isinstance(t, int) for t in prompt):
        return len(prompt), True
    total, exact = 0, True
    for part in prompt:
        if isinstance(part, str):
            total += counter.count(part)
            exact = exact and counter.exact
        elif isinstance(part, list):
            total += len(part)  # one token-id prompt of a batch
    return total, exact
