"""Pure pieces of the simulator: tokenizer, prefix cache, question bank, profiles, planning."""

from __future__ import annotations

import random

import pytest

from infersight.sim.engine import CONTENT, REASONING, Simulator, pick_question
from infersight.sim.metrics import SimMetrics
from infersight.sim.prefix_cache import PrefixCache
from infersight.sim.profiles import DEFAULT_PROFILES, ModelProfile
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.text import compose_answer, count_tokens, split_chunks, tokenize
from infersight.sim.engine import ModelEngine


def test_tokenizer_splits_words_and_punctuation() -> None:
    assert tokenize("Hello, world! It's 42.") == ["Hello", ",", "world", "!", "It", "'", "s", "42", "."]
    assert count_tokens("  ") == 0


def test_chunks_keep_leading_space_and_rejoin_exactly() -> None:
    text = "The answer is Paris. It is, indeed, Paris."
    chunks = split_chunks(text)
    assert "".join(chunks) == text
    assert chunks[:4] == ("The", " answer", " is", " Paris")
    assert len(chunks) == count_tokens(text)


def test_composed_answer_has_exact_length_and_states_answer_first() -> None:
    q = QUESTION_BANK[0]
    for n in (1, 7, 150):
        chunks = compose_answer(random.Random(n), q.correct, q, n)
        assert len(chunks) == n
    assert q.correct in "".join(compose_answer(random.Random(1), q.correct, q, 50))


def test_prefix_cache_hits_only_matching_full_block_chains() -> None:
    cache = PrefixCache(max_blocks=100)
    prompt = [f"t{i}" for i in range(50)]  # 3 full blocks + 2 tokens
    assert cache.lookup_and_insert(prompt) == 0
    assert cache.lookup_and_insert(prompt) == 48
    changed_first = ["x", *prompt[1:]]  # a changed first block invalidates the chain after it
    assert cache.lookup_and_insert(changed_first) == 0
    longer = prompt + [f"u{i}" for i in range(20)]
    assert cache.lookup_and_insert(longer) == 48
    exact = prompt[:48]  # fully cached prompt: the last block is recomputed, as in vLLM
    assert cache.lookup_and_insert(exact) == 32


def test_prefix_cache_evicts_least_recently_used() -> None:
    cache = PrefixCache(max_blocks=2)
    a, b = [f"a{i}" for i in range(17)], [f"b{i}" for i in range(17)]
    cache.lookup_and_insert(a)
    cache.lookup_and_insert(b)
    cache.lookup_and_insert([f"c{i}" for i in range(17)])  # evicts a
    assert len(cache) == 2
    assert cache.lookup_and_insert(b) == 16
    assert cache.lookup_and_insert(a) == 0


def test_question_bank_is_well_formed() -> None:
    assert len(QUESTION_BANK) >= 30
    assert len({q.id for q in QUESTION_BANK}) == len(QUESTION_BANK)
    for q in QUESTION_BANK:
        assert 1 <= len(q.wrong) <= 3 and q.correct not in q.wrong and q.topic
    q = QUESTION_BANK[5]
    assert pick_question(f"Please answer: {q.question}", "whatever") is q
    assert pick_question("no bank text", "p") is pick_question("no bank text", "p")


def test_default_profiles_match_the_spec() -> None:
    p = DEFAULT_PROFILES
    assert {"sim-large", "sim-small", "sim-reasoner", "sim-bench"} <= set(p)
    assert p["sim-large"].p_correct > p["sim-small"].p_correct
    assert p["sim-large"].ttft_base_ms > p["sim-small"].ttft_base_ms > p["sim-bench"].ttft_base_ms
    assert p["sim-large"].decode_ms_per_token > p["sim-small"].decode_ms_per_token
    assert p["sim-reasoner"].is_reasoner and not p["sim-large"].is_reasoner
    bench = p["sim-bench"]
    assert bench.decode_ms_per_token == 1.0 and sum(r for _, r in bench.fault_rates()) == 0
    instant = p["sim-instant"]  # gateway_bench's short-answer cells: no engine latency at all
    assert (instant.ttft_base_ms, instant.prefill_ms_per_token, instant.decode_ms_per_token, instant.jitter_ms) \
        == (0, 0, 0, 0) and sum(r for _, r in instant.fault_rates()) == 0
    spread = p["sim-small"].with_fault_rate(0.2)
    assert [r for _, r in spread.fault_rates()] == pytest.approx([0.05] * 4)


def _simulator(seed: int, profile: ModelProfile) -> Simulator:
    metrics = SimMetrics(lambda: [])
    return Simulator(seed, {"m": ModelEngine("m", profile, metrics.for_model("m"))})


def test_plan_is_a_function_of_seed_body_and_repeat_count() -> None:
    prof = DEFAULT_PROFILES["sim-reasoner"]
    toks = tokenize("hello")

    def texts(seed: int) -> list[str]:
        sim = _simulator(seed, prof)
        return [
            "".join(t for _, t in sim.plan("m", b, toks, "p", "", 500, False).tokens)
            for b in (b"a", b"b", b"a", b"a")
        ]

    first = texts(1)
    assert first == texts(1)
    assert first != texts(2)
    assert len({first[0], first[2], first[3]}) > 1  # repeats of one body differ from each other


def test_plan_honours_max_tokens_ignore_eos_and_reasoning_order() -> None:
    sim = _simulator(0, DEFAULT_PROFILES["sim-reasoner"])
    plan = sim.plan("m", b"x", ["a"], "a", "", 400, True)
    assert len(plan.tokens) == 400 and plan.finish_reason == "length"
    kinds = [k for k, _ in plan.tokens]
    assert kinds == sorted(kinds) and kinds[0] == REASONING and kinds[-1] == CONTENT
    short = sim.plan("m", b"y", ["a"], "a", "", 3, False)
    assert len(short.tokens) == 3 and short.finish_reason == "length"
