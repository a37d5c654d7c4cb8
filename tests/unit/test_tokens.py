"""Prompt token counting: real tokenizers built offline in tmp_path; never a download."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
from tiktoken.load import load_tiktoken_bpe
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from infersight.config import ConfigError, TokenizerSettings
from infersight.gateway import tokens
from infersight.gateway.tokens import (
    CHAT_REPLY_PRIMING,
    CHAT_TOKENS_PER_MESSAGE,
    EstimateCounter,
    count_prompt,
    load_counter,
    prompt_hash,
    prompt_text,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello tokens, hello gateway",
    "observability for inference: latency, tokens and cost",
] * 20


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    tokens.clear_cache()
    yield
    tokens.clear_cache()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test on any attempt to fetch or to open a socket."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network attempted: {args!r}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hf_tokenizer_file(tmp_path: Path) -> Path:
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]", "[CLS]"], show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def write_ranks(path: Path, merges: list[bytes]) -> Path:
    """A real .tiktoken file: all 256 single bytes, then merges in rank order."""
    ranks = [bytes([b]) for b in range(256)] + merges
    path.write_bytes(b"".join(base64.b64encode(tok) + b" %d\n" % i for i, tok in enumerate(ranks)))
    return path


TINY_MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld", b" world"]


# --- counters ------------------------------------------------------------------------------------


def test_estimate_is_cheap_and_never_zero_for_text() -> None:
    est = EstimateCounter()
    assert est.exact is False
    assert est.count("") == 0
    assert est.count("a") == 1
    # 44 chars, 9 words: mean of 11 and 12 -> 12 (rounded 11.5 -> 12 with banker's rounding)
    assert est.count("the quick brown fox jumps over the lazy dog") in (11, 12)
    assert est.count("日本語のテキストです") >= 7  # 30 UTF-8 bytes / 4
    assert load_counter(None).exact is False


def test_tokenizer_json_counts_match_the_tokenizer(hf_tokenizer_file: Path, no_network: None) -> None:
    counter = load_counter(TokenizerSettings(tokenizer_json=str(hf_tokenizer_file)))
    reference = Tokenizer.from_file(str(hf_tokenizer_file))
    assert counter.exact is True
    for text in ["hello world", "the lazy fox observes inference latency", "zzz qqq !!", ""]:
        assert counter.count(text) == len(reference.encode(text, add_special_tokens=False).ids)
    assert counter.count("hello world") > 0


def test_tokenizer_json_ignores_truncation_in_the_file(tmp_path: Path, hf_tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(str(hf_tokenizer_file))
    tok.enable_truncation(max_length=2)
    truncated = tmp_path / "truncated.json"
    tok.save(str(truncated))
    counter = load_counter(TokenizerSettings(tokenizer_json=str(truncated)))
    assert counter.count("the quick brown fox jumps over the lazy dog") > 2


def test_tiktoken_file_counts_exactly(tmp_path: Path, no_network: None) -> None:
    path = write_ranks(tmp_path / "tiny.tiktoken", TINY_MERGES)
    counter = load_counter(TokenizerSettings(tiktoken_file=str(path)))
    assert counter.exact is True
    assert counter.count("hello") == 1
    assert counter.count("hello world") == 2  # o200k regex splits "hello" | " world"
    assert counter.count("hello xyz") == 1 + 4  # " xyz" has no merges: 4 bytes
    assert counter.count("<|endoftext|>") == len(b"<|endoftext|>")  # no special tokens: plain bytes
    ranks = {tok: i for i, tok in enumerate([bytes([b]) for b in range(256)] + TINY_MERGES)}
    enc = tiktoken.Encoding("ref", pat_str=tokens._pattern_for("x"), mergeable_ranks=ranks, special_tokens={})
    for text in ["hello world hello", "worldly hellos", "über 123456"]:
        assert counter.count(text) == len(enc.encode_ordinary(text))


def test_tiktoken_file_picks_cl100k_pattern_by_name(tmp_path: Path) -> None:
    o200k = load_counter(TokenizerSettings(tiktoken_file=str(write_ranks(tmp_path / "a.tiktoken", []))))
    cl100k = load_counter(TokenizerSettings(tiktoken_file=str(write_ranks(tmp_path / "cl100k_x.tiktoken", []))))
    # o200k splits digits in runs of up to 3 as well; the difference is in contractions and case
    assert isinstance(o200k, tokens.TiktokenCounter) and isinstance(cl100k, tokens.TiktokenCounter)
    assert "(?i:[sdmt]|ll|ve|re)" in cl100k.encoding._pat_str
    assert "\\p{Lu}" in o200k.encoding._pat_str


def test_loaded_counters_are_cached(tmp_path: Path) -> None:
    path = write_ranks(tmp_path / "tiny.tiktoken", TINY_MERGES)
    settings = TokenizerSettings(tiktoken_file=str(path))
    assert load_counter(settings) is load_counter(TokenizerSettings(tiktoken_file=str(path)))


# --- named tiktoken encodings ---------------------------------------------------------------------


def test_named_encoding_not_cached_falls_back_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))

    def no_get_encoding(name: str) -> Any:
        raise AssertionError("get_encoding would download")

    monkeypatch.setattr(tiktoken, "get_encoding", no_get_encoding)
    with caplog.at_level(logging.WARNING, logger="infersight.tokens"):
        counter = load_counter(TokenizerSettings(tiktoken="o200k_base"))
        load_counter(TokenizerSettings(tiktoken="o200k_base"))  # cached: no second warning
    assert counter.exact is False
    assert counter.count("hello world") > 0
    warnings = [r for r in caplog.records if r.name == "infersight.tokens"]
    assert len(warnings) == 1
    assert warnings[0].encoding == "o200k_base"  # type: ignore[attr-defined]
    assert "o200k_base.tiktoken" in warnings[0].reason  # type: ignore[attr-defined]


def test_named_encoding_with_empty_cache_dir_setting_falls_back(
    monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken: caching disabled, always downloads
    assert load_counter(TokenizerSettings(tiktoken="cl100k_base")).exact is False


def test_unknown_encoding_is_a_config_error(no_network: None) -> None:
    with pytest.raises(ConfigError, match="tokenizer.tiktoken"):
        load_counter(TokenizerSettings(tiktoken="no_such_encoding"))


TINY_URL = "https://openaipublic.invalid/encodings/tiny_test.tiktoken"
_TINY_HASH: dict[str, str] = {}


def tiny_test_constructor() -> dict[str, Any]:
    """A tiktoken plugin-style constructor, like those in tiktoken_ext.openai_public."""
    return {
        "name": "tiny_test",
        "pat_str": tokens._encoding_spec("o200k_base")[0]["pat_str"],
        "mergeable_ranks": load_tiktoken_bpe(TINY_URL, expected_hash=_TINY_HASH["sha256"]),
        "special_tokens": {},
    }


def test_named_encoding_in_cache_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    ranks_file = write_ranks(tmp_path / "src.tiktoken", TINY_MERGES)
    data = ranks_file.read_bytes()
    _TINY_HASH["sha256"] = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tiktoken.registry.list_encoding_names()
    monkeypatch.setitem(tiktoken.registry.ENCODING_CONSTRUCTORS, "tiny_test", tiny_test_constructor)  # type: ignore[arg-type]
    assert load_counter(TokenizerSettings(tiktoken="tiny_test")).exact is False  # not cached yet

    tokens.clear_cache()
    cached = cache / hashlib.sha1(TINY_URL.encode()).hexdigest()
    cached.write_bytes(data[:-10])  # corrupt: tiktoken would re-download, so we must not use it
    assert load_counter(TokenizerSettings(tiktoken="tiny_test")).exact is False

    tokens.clear_cache()
    cached.write_bytes(data)
    try:
        counter = load_counter(TokenizerSettings(tiktoken="tiny_test"))
        assert counter.exact is True
        assert counter.count("hello world") == 2
    finally:
        tiktoken.registry.ENCODINGS.pop("tiny_test", None)


# --- config errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["tokenizer_json", "tiktoken_file"])
def test_missing_file_is_a_config_error_naming_key_and_path(tmp_path: Path, key: str) -> None:
    missing = tmp_path / "nope" / "file.bin"
    with pytest.raises(ConfigError) as info:
        load_counter(TokenizerSettings(**{key: str(missing)}))
    assert f"tokenizer.{key}" in str(info.value)
    assert str(missing) in str(info.value)
    assert info.value.key == f"tokenizer.{key}"


def test_garbage_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizer.tokenizer_json"):
        load_counter(TokenizerSettings(tokenizer_json=str(bad)))
    bad_ranks = tmp_path / "bad.tiktoken"
    bad_ranks.write_text("not-base64!! x\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_counter(TokenizerSettings(tiktoken_file=str(bad_ranks)))


# --- what gets counted ----------------------------------------------------------------------------


CHAT = {
    "model": "sim-large",
    "messages": [
        {"role": "system", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "hello world"},
                                     {"type": "image_url", "image_url": {"url": "data:..."}},
                                     {"type": "text", "text": "hello"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "hello", "arguments": "{}"}}]},
        {"role": "user", "name": "hello", "content": "world"},
    ],
}


def test_prompt_text_for_chat() -> None:
    text = prompt_text(CHAT, "chat")
    assert text.split("\n") == ["system", "hello", "user", "hello world", "hello", "assistant", "hello", "{}",
                                "user", "world"]
    assert "data:" not in text
    assert prompt_text({"messages": "oops"}, "chat") == ""


def test_chat_count_adds_openai_overhead(tmp_path: Path) -> None:
    counter = load_counter(TokenizerSettings(tiktoken_file=str(write_ranks(tmp_path / "t.tiktoken", TINY_MERGES))))
    text_tokens = sum(counter.count(t) for t in prompt_text(CHAT, "chat").split("\n"))
    name_tokens = counter.count("hello") + 1
    expected = text_tokens + name_tokens + CHAT_TOKENS_PER_MESSAGE * 4 + CHAT_REPLY_PRIMING
    assert count_prompt(counter, CHAT, "chat") == (expected, True)
    one = {"messages": [{"role": "user", "content": "hello"}]}
    assert count_prompt(counter, one, "chat") == (counter.count("user") + 1 + 3 + 3, True)


def test_chat_count_with_estimate_is_not_exact() -> None:
    count, exact = count_prompt(EstimateCounter(), CHAT, "chat")
    assert exact is False
    assert count == EstimateCounter().count(prompt_text(CHAT, "chat"))


def test_completions_prompts(tmp_path: Path) -> None:
    counter = load_counter(TokenizerSettings(tiktoken_file=str(write_ranks(tmp_path / "t.tiktoken", TINY_MERGES))))
    assert prompt_text({"prompt": "hello world"}, "completions") == "hello world"
    assert prompt_text({"prompt": ["hello", "world"]}, "completions") == "hello\nworld"
    assert prompt_text({"prompt": [1, 2, 3]}, "completions") == ""
    assert count_prompt(counter, {"prompt": "hello world"}, "completions") == (2, True)
    assert count_prompt(counter, {"prompt": ["hello", "hello world"]}, "completions") == (3, True)
    est = EstimateCounter()
    assert count_prompt(est, {"prompt": [1, 2, 3, 4, 5]}, "completions") == (5, True)
    assert count_prompt(est, {"prompt": [[1, 2], [3, 4, 5]]}, "completions") == (5, True)
    assert count_prompt(est, {"prompt": "hello world"}, "completions") == (est.count("hello world"), False)
    assert count_prompt(est, {"prompt": ["hi", [1, 2]]}, "completions") == (est.count("hi") + 2, False)
    assert count_prompt(est, {}, "completions") == (0, True)
    assert count_prompt(est, {"prompt": 42}, "completions") == (0, True)


def test_malformed_bodies_never_raise(tmp_path: Path) -> None:
    exact = load_counter(TokenizerSettings(tiktoken_file=str(write_ranks(tmp_path / "t.tiktoken", TINY_MERGES))))
    odd = {"messages": [{"role": "user", "tool_calls": 5, "content": {"x": 1}}, 3, None, {"name": 7}]}
    for counter in (exact, EstimateCounter()):
        count_prompt(counter, odd, "chat")
        count_prompt(counter, {"messages": None}, "chat")
        count_prompt(counter, {"prompt": [None, {"a": 1}]}, "completions")


def _image_request(url: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this image."}, {"type": "image_url", "image_url": {"url": url}}]}]}


KEY = bytes(range(32))


def test_the_prompt_hash_covers_images_and_token_ids_and_is_keyed() -> None:
    """Images and token ids count; the hash is an HMAC, so a plain sha256 of a guessed prompt
    does not find it, and another key gives another hash."""
    text_body = {"messages": [{"role": "user", "content": "Hello"}]}
    text = prompt_text(text_body, "chat")
    hashed = prompt_hash(text_body, "chat", text, KEY)
    assert hashed == hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()
    assert hashed != hashlib.sha256(text.encode()).hexdigest()
    assert hashed != prompt_hash(text_body, "chat", text, bytes(32))
    assert len(hashed) == 64 and prompt_hash(dict(text_body), "chat", text, KEY) == hashed  # stable
    a, b = _image_request("https://img.example/a.png"), _image_request("https://img.example/b.png")
    assert prompt_text(a, "chat") == prompt_text(b, "chat")
    assert prompt_hash(a, "chat", prompt_text(a, "chat"), KEY) != prompt_hash(b, "chat", prompt_text(b, "chat"), KEY)
    big = "data:image/png;base64," + "A" * 300_000
    c, d = _image_request(big + "B"), _image_request(big + "C")  # differ in the last bytes of a long part
    assert prompt_hash(c, "chat", "x", KEY) != prompt_hash(d, "chat", "x", KEY)
    ids1, ids2 = {"prompt": [1, 2, 3]}, {"prompt": [4, 5, 6]}
    assert prompt_text(ids1, "completions") == prompt_text(ids2, "completions") == ""
    assert prompt_hash(ids1, "completions", "", KEY) != prompt_hash(ids2, "completions", "", KEY)


def test_a_completions_suffix_is_prompt_text_and_counted() -> None:
    body = {"prompt": "def add(a, b):", "suffix": "    return total"}
    assert prompt_text(body, "completions") == "def add(a, b):\n    return total"
    counter = EstimateCounter()
    with_suffix, _ = count_prompt(counter, body, "completions")
    without, _ = count_prompt(counter, {"prompt": body["prompt"]}, "completions")
    assert with_suffix == without + counter.count(body["suffix"])
