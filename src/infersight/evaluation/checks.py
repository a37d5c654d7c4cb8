"""Deterministic checks: cheap rules the eval worker runs on every task that carries content.

They need no model and no network, so they can cover 100% of traffic that keeps content, while the
LLM judge sees only a sample. Each check returns a :class:`CheckOutcome` (1.0 is good, 0.0 is bad);
:func:`run_checks` turns the applicable ones into ``EvalResult`` rows. Explanations never quote the
completion: they say which rule fired, so results can be shown to people who may not read content.
Exact rules and thresholds are in docs/checks.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Any

import orjson

from infersight.evaluation.text_classes import CJK, MARKS, SEGMENTED_WORD_PATTERN, SPACELESS
from infersight.evaluation.text_classes import WORD_PATTERN as TEXT_WORD_PATTERN
from infersight.model.evaluation import EvalResult, EvalTask

EVALUATOR = "checks"
CHECKS_REVISION = 9  # 2: URLs are not PII leaks; 3: quoted refusals, JSON data, CJK loops, length-cut JSON;
# 4: JSON checked on the raw answer by the gateway, tool calls and refusals read back; 5: broken-off
# streams are failed requests, choice 0's own finish_reason, tool-call turns not JSON-checked, native
# sentence ends, loops in Thai/Khmer/Lao/Myanmar, empathy is not a refusal ("sorry ..., I can't imagine");
# 6: 3-grams of numbers alone are not repetition, cut JSON's string values read, placeholders the
# model wrote are not masked PII (only types the masker or the screen found count); 7: list enumerators
# read as bullets for loops, current models' refusal phrasings, "can't find any errors" is no refusal;
# 8: an answer cut before it began (no text, finish_reason length) fails `truncated` only, not `empty`;
# 9: a card followed by its expiry, an e-mail after a "/" and "Phone = +1 ..." leak PII, SSE events of several
# data lines read, the prompts other choices echo are no leak
"""Bump when a check's logic changes in a way its patterns and thresholds do not show."""

PASS, FAIL = "pass", "fail"

# ---- refusal ------------------------------------------------------------------------------------

REFUSAL_WINDOW = 160
"""A refusal phrase must start within this many (normalised) characters of the completion's start."""

_I_AM = r"i(?:'m| am)"
_EN_CANT = (  # "i'm unable to": the contraction has no space after "i", unlike "i can't"
    r"(?:i (?:can't|cannot|can not|won't|will not)(?: and (?:can't|cannot|won't|will not))?(?: be able to)?"
    rf"|{_I_AM} (?:unable|not able|not going) to)"
)
_EN_HELP_IDIOM = r"(?:but|it|myself|(?:feel|think|notic|wonder|laugh|smil|worry|worri|admir|agree|imagin)ing)\b"
""""I can't help noticing / wondering / laughing": cannot stop oneself, not a refusal to help."""
_EN_NOT_WAIT = (  # "I can't wait", "I can't believe", "I can't help but": enthusiasm, not refusal
    r"(?!\s*(?:wait|believe|blame you|agree more|say enough|tell you how (?!to\b)|express how|stress"
    rf"|emphasi[sz]e|overstate|thank|get enough|give (?:up|in)\b|help {_EN_HELP_IDIOM}))"
)
_EN_EMPATHY = r"(?!\s*(?:(?:even|really|possibly|begin to) )*(?:imagine|fathom))"
""""I'm sorry you're going through this, I can't imagine how ...": sympathy, not an apology for refusing
(after an AI disclaimer, "I cannot imagine playing a game" still is one)."""
_EN_FAULTS = (
    r"(?:errors?|mistakes?|issues?|problems?|bugs?|typos?|faults?|flaws?|wrong|incorrect|crash(?:es)?"
    r"|inconsistenc(?:y|ies)|discrepanc(?:y|ies))"
)
_EN_NO_FAULT = (
    r"(?!\s*(?:(?:seem to|really|actually|immediately) )*"
    r"(?:find|see|spot|locate|identify|detect|notice|pinpoint|think of|reproduce)"
    rf"\b(?: [\w'-]+){{0,3}}? {_EN_FAULTS}\b)"
)
""""Sorry, I can't find any errors in your code" / "I can't see anything wrong" / "I can't reproduce the
bug": the answer (nothing is wrong), not a refusal."""
_EN_INABILITY = (
    r"(?:i (?:can't|cannot|can not|won't|will not|must decline"
    r"|(?:don't|do not) have (?:the )?(?:ability|capability|capacity|access))"
    rf"|{_I_AM} (?:unable|not able|not (?:capable|authorized|allowed|permitted)))\b{_EN_NOT_WAIT}{_EN_NO_FAULT}"
)
_EN_BARE_INABILITY = (
    r"(?:and|but|so) (?:can't|cannot|can not|won't|will not|am unable|am not able"
    rf"|(?:don't|do not) have (?:the )?(?:ability|capability|capacity|access))\b{_EN_NOT_WAIT}{_EN_NO_FAULT}"
)
"""After an AI self-description the subject is often not repeated: "I'm a text-based AI and can't help"."""
_REFUSAL_VERBS_EN = (
    r"help|assist|provide|comply|fulfill|fulfil|support|engage|answer|respond|share|generate|create"
    r"|write|produce|do that|do this|complete|continue|discuss|talk about|participate|accommodate|offer|reproduce"
    r"|draw|browse|access|view|open|display|search|look up|visit|execute|send|play|render|translate"
    r"|give(?! (?:up|in)\b)|run(?! (?:away|out)\b)"  # "I won't give up / give in / run away": resolve
    r"|make(?! (?:it|sense|out|up|you|(?:any |no )?(?:promises|guarantees)"  # "I can't make it / any promises"
    r"|(?:this|that|it) (?:any|much|work))\b)"
    r"|explain(?! why\b| how (?!to\b))"  # "I can't explain why it fails / how much ...": not knowing, idiom
    r"|tell you\b(?! (?:how (?!to\b)|what (?:an?|to do)|enough|for sure|for certain|exactly|whether|if|which)\b)"
    r"|recommend(?= (?:any|specific|particular|individual|a specific|a particular|products?|brands?"
    r"|stocks?|investments?|medications?|drugs?|treatments?|doctors?|lawyers?)\b)"  # not "can't recommend it enough"
)
_EN_COMFORT_VERBS = (
    r"(?:provid|help|writ|creat|generat|shar|giv|answer|discuss|talk|do|engag|assist|produc|mak|respond|continu"
    r"|speculat|offer|recommend|describ|explain|participat|role-?play|pretend|repeat|reproduc|translat|fulfill)ing\b"
)
_PT_NOT_WAIT = r"(?!\s*(?:esperar|acreditar|deixar de))"
_ES_NOT_WAIT = r"(?!\s*(?:esperar|creer|dejar de))"
_PT_EMPATHY, _ES_EMPATHY = r"(?!\s*(?:(?:nem|sequer) )?imaginar)", r"(?!\s*(?:(?:ni|siquiera) )?imaginar)"
_AI = (  # "as an AI", "I'm just a language model", "I'm a text-based AI", "as a large language model"
    r"(?:(?:as|i'm|i am)(?: (?:just|only|merely|simply|but))? an? (?:[\w-]+ ){0,2}?"
    r"(?:ai|language model|llm|chat ?bot)\b"
    r"|como (?:um |una? )?(?:modelo de (?:linguagem|lenguaje)|assistente de ia|asistente de ia|ia)\b)"
)

REFUSAL_PATTERNS: tuple[str, ...] = (
    # English. Text is normalised first: lowercase, accents stripped, curly quotes made straight.
    rf"\b{_EN_CANT} (?!help {_EN_HELP_IDIOM}){_EN_NO_FAULT}(?:{_REFUSAL_VERBS_EN})\b(?! but)",
    rf"\b(?:i'm sorry|i am sorry|sorry|i apologi[sz]e|unfortunately|i'm afraid)\b"
    rf"[^.!?\n]{{0,80}}?\b{_EN_INABILITY}{_EN_EMPATHY}",
    rf"\b{_AI}[^.!?\n]{{0,80}}?\b(?:{_EN_INABILITY}|{_EN_BARE_INABILITY})",
    r"\bi must (?:respectfully )?decline\b",
    rf"\bi (?:must )?refuse to (?:{_REFUSAL_VERBS_EN})\b",
    rf"\bnot something i(?: can| could| will|'m able to| am able to|(?:'m| am) (?:allowed|permitted|going) to)"
    rf" (?:{_REFUSAL_VERBS_EN}|do)\b(?! but)",
    rf"\bi(?:(?:'m| am) not(?: feeling)?| (?:don't|do not|wouldn't|would not) feel) comfortable"
    rf" (?:(?:with|about) )?(?:{_EN_COMFORT_VERBS}|(?:that|this|it|such)\b|(?:your|the|this|that) request)",
    r"\b(?:beyond|outside(?: of)?) my (?:current )?(?:scope|capabilit(?:y|ies)|capacity)\b",
    # Portuguese.
    r"\bnao (?:posso|consigo|sou capaz de) (?:(?:te|lhe) )?(?:ajudar|fornecer|atender|responder|cumprir|gerar"
    r"|criar|auxiliar|fazer isso|compartilhar|fornece-lo|fornece-la)\b",
    rf"\b(?:desculpe|sinto muito|lamento|infelizmente)\b[^.!?\n]{{0,80}}?\bnao (?:posso|consigo|sou capaz|tenho"
    rf" (?:acesso|a capacidade|capacidade)){_PT_NOT_WAIT}{_PT_EMPATHY}",
    rf"\b{_AI}[^.!?\n]{{0,80}}?\bnao (?:posso|consigo|sou capaz|tenho (?:acesso|a capacidade|capacidade))"
    rf"{_PT_NOT_WAIT}",
    r"\bnao me e possivel (?:ajudar|fornecer|atender|responder)\b",
    # Spanish.
    r"\bno (?:(?:te|le|les) puedo|puedo|soy capaz de) (?:ayudar|ayudarte|proporcionar|brindar|cumplir|responder"
    r"|asistir|generar|crear|hacer eso|compartir|ofrecer)\b",
    rf"\b(?:lo siento|lo lamento|disculpa|disculpe|lamentablemente|desafortunadamente)\b[^.!?\n]{{0,80}}?\bno"
    rf" (?:puedo|me es posible|soy capaz|tengo (?:acceso|la capacidad|capacidad)){_ES_NOT_WAIT}{_ES_EMPATHY}",
    rf"\b{_AI}[^.!?\n]{{0,80}}?\bno (?:puedo|soy capaz|tengo (?:acceso|la capacidad|capacidad)){_ES_NOT_WAIT}",
    r"\bno me es posible (?:ayudar|proporcionar|brindar|responder)\b",
)
PIVOT_PATTERN = (
    r"\b(?:however|instead|that said|but i can|but here|but as a general|here is|here's|here are|below is|below are"
    r"|as follows|i can (?:provide|give|offer|describe|suggest|share|explain|recommend)"
    r"|sin embargo|en su lugar|pero puedo|aqui (?:tienes|esta|hay)|no entanto|porem|em vez disso|mas posso)\b"
)
PARTIAL_MIN_CHARS = 80
"""A refusal followed by a pivot and at least this many more characters is a partial refusal."""

QUOTED_PATTERN = (
    r"```.*?(?:```|\Z)|`[^`\n]*`|^[ \t]*>[^\n]*"  # code (fenced or inline), Markdown block quotes
    r"|\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d|\u00ab[^\u00bb\n]*\u00bb"  # "...", curly double, guillemets
    r"|(?<!\w)'(?:[^'\n]|(?<=\w)'(?=\w))*'(?!\w)"  # '...' (apostrophes inside words do not end it)
)
"""Quoted text is not the model speaking: a refusal phrase inside it does not count."""

_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS))
_PIVOT_RE = re.compile(PIVOT_PATTERN)
_QUOTED_RE = re.compile(QUOTED_PATTERN, re.DOTALL | re.MULTILINE)

# ---- repetition ---------------------------------------------------------------------------------

_CJK = CJK
WORD_PATTERN = TEXT_WORD_PATTERN
"""Words (for 3-grams): runs of word characters and combining marks (a Hindi vowel sign is part of its
word), but each Chinese/Japanese character on its own (no spaces there, so a whole sentence would be
one "word")."""
TOKEN_PATTERN = rf"{SEGMENTED_WORD_PATTERN}|[^\w\s]"
"""Loop tokens: words, with Thai, Lao, Khmer and Myanmar also cut into letter clusters (no spaces
there either), and single punctuation marks."""
VALUE_LITERALS = frozenset({"true", "false", "null", "none", "nil", "nan", "n", "a", "na"})
"""Data values, not language: a unit of punctuation and only these ("false ,", "| n / a") is no loop."""
MAX_PERIOD = 50
"""Longest loop period (tokens) the loop detector looks for; keeps it O(n * MAX_PERIOD)."""
LOOP_MIN_REPEATS = 3
"""A word stutter, a repeated sentence, or a unit of >= LONG_UNIT tokens must come this many times in a row."""
SHORT_LOOP_MIN_REPEATS = 5
"""Other short units (e.g. 'the nightlife ,') must come this many times in a row: tables and chord
charts legitimately repeat a short unit three or four times."""
LONG_UNIT = 8
LETTER_MIN_REPEATS = 12
"""One Thai, Lao, Khmer or Myanmar letter cluster must come this many times in a row: it is a letter,
and informal Thai stretches a word by repeating its last one ("มากกกกก", like "sooo")."""
DUP3_FAIL_ABOVE = 0.6
"""Fail when more than this fraction of word 3-grams repeat an earlier one (three copies of a passage)."""
DUP3_MIN_TOKENS = 20
MAX_CHARS = 50_000
"""Only this many leading characters are analysed (the gateway keeps 2,000 by default)."""

ENUMERATOR_PATTERN = (
    r"^([ \t]*)(?:\d{1,3}(?:\.\d{1,3})*[.)]|(?:[a-z]|[ivx]{2,5})[.)]"
    r"|\((?:\d{1,3}|[a-z]|[ivx]{2,5})\))(?=[ \t])"
)
"""A list enumerator at the start of a line ("1.", "2)", "1.2.", "a)", "iv.", "(3)"): read as a bullet ("-")
before looking for repetition, so a list stuck on one item ("1. Drink water. 2. Drink water. ...") is the
loop it is as bullets, while the items of a genuine list still differ."""

_TOKEN_RE = re.compile(TOKEN_PATTERN)
_ENUMERATOR_RE = re.compile(ENUMERATOR_PATTERN, re.MULTILINE)
_WORD_RE = re.compile(WORD_PATTERN)
_CJK_RE = re.compile(f"[{_CJK}]")
_SPACELESS_RE = re.compile(f"[{SPACELESS}]")
_ALPHA_WORD_RE = re.compile(rf"(?:[^\W\d_]|[{MARKS}])+")
_HAS_LETTER_RE = re.compile(r"[^\W\d_]")
_TERMINATORS = frozenset(".!?\u2026\u203c\u2047\u2048\u2049"  # ASCII, ellipsis, double marks
                          "\u3002\uff0e\uff61\uff01\uff1f"  # Chinese / Japanese full-width and half-width
                          "\u0964\u0965\u061f\u06d4\u0589"  # Devanagari danda, Arabic ?, Urdu, Armenian
                          "\u1362\u1367\u104b\u17d4\u0f0d")  # Ethiopic, Myanmar, Khmer, Tibetan
"""Sentence ends: a repeated unit holding one is a sentence (a loop from three repeats)."""
BLOCK_CLOSERS = frozenset({"end", "fi", "done", "esac", "endif", "endfor", "endwhile", "endfunction", "endcase",
                           "endmodule", "endsub", "wend"})
"""Keywords that close a code block: nested blocks close with the same one on consecutive lines."""
CLOSER_MIN_REPEATS = 12
"""Closers (``end``, a closing tag ``</div>``) must come this many times in a row to be a loop:
three ``end`` close nested Ruby or Julia blocks, five ``</div>`` ordinary HTML."""

# ---- pii and json -------------------------------------------------------------------------------

FALLBACK_PLACEHOLDER_PATTERN = (
    r"\[(EMAIL|PHONE|CARD_NUMBER|IBAN|US_SSN|CPF|ACCOUNT_NUMBER|IP_ADDRESS|URL|CRYPTO_WALLET)\]"
)
PII_HIT_PREFIX = "pii_completion:"
LENGTH_FINISH_REASONS = frozenset({"length", "max_tokens"})
"""OpenAI says ``length``; Anthropic and Bedrock say ``max_tokens``."""

_FENCE_RE = re.compile(r"\A\s*```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?```\s*\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One check's verdict: score in [0, 1] (1 is good), ``pass``/``fail``, a content-free reason."""

    dimension: str
    score: float
    label: str
    explanation: str


def _normalise(text: str) -> str:
    """Lowercase, strip accents and straighten quotes, so one pattern covers 'não'/'nao' and ’/'."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = plain.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'")
    return re.sub(r"[ \t]+", " ", plain.lower()).strip()


def _blank_quotes(norm: str) -> str:
    """``norm`` with quoted spans and code blanked to spaces (same length, so positions hold)."""
    return _QUOTED_RE.sub(lambda m: " " * len(m.group()), norm)


def check_refusal(text: str) -> CheckOutcome:
    """Refusal phrase (en/pt/es) near the start: 0.0 for a refusal, 0.5 when it then offers an alternative."""
    norm = _normalise(text[: REFUSAL_WINDOW * 4])
    match = _REFUSAL_RE.search(_blank_quotes(norm))
    if match is None or match.start() >= REFUSAL_WINDOW:
        return CheckOutcome("refusal", 1.0, PASS, "no refusal phrase near the start")
    where = f"refusal phrase at character {match.start()}"
    rest = _normalise(text)[match.end() :]
    pivot = _PIVOT_RE.search(rest)
    if pivot is not None and len(rest) - pivot.end() >= PARTIAL_MIN_CHARS:
        return CheckOutcome("refusal", 0.5, FAIL, f"partial refusal: {where}, then offers an alternative")
    return CheckOutcome("refusal", 0.0, FAIL, where)


def check_empty(text: str | None) -> CheckOutcome:
    """A successful request whose completion is missing or only whitespace."""
    if text is None:
        return CheckOutcome("empty", 0.0, FAIL, "no completion text on a successful response")
    if not text.strip():
        return CheckOutcome("empty", 0.0, FAIL, f"completion is whitespace only ({len(text)} characters)")
    return CheckOutcome("empty", 1.0, PASS, "completion has content")


def check_truncated(finish_reason: str) -> CheckOutcome:
    """The engine stopped at the token limit, so the answer is probably cut off."""
    if finish_reason in LENGTH_FINISH_REASONS:
        return CheckOutcome("truncated", 0.0, FAIL, f"finish_reason={finish_reason}: stopped at the token limit")
    return CheckOutcome("truncated", 1.0, PASS, f"finish_reason={finish_reason}")


@dataclass(frozen=True, slots=True)
class Loop:
    """The strongest back-to-back repeat found: ``period`` tokens, ``repeats`` times in a row."""

    period: int
    repeats: int
    kind: str  # "word" (a word stutter), "sentence", "long" (>= LONG_UNIT tokens) or "short"


@dataclass(frozen=True, slots=True)
class RepetitionStats:
    """What :func:`check_repetition` decides on (exposed for tests and the docs' examples).

    ``loop_redundancy`` is the share of all tokens that are extra copies inside the strongest loop.
    """

    words: int
    distinct_3gram_ratio: float
    loop: Loop | None
    loop_redundancy: float = 0.0


def _loop_kind(unit: Sequence[str], repeats: int) -> str | None:
    """Classify a back-to-back repeated unit, or None when it does not count as a loop."""
    words = [t for t in unit if _ALPHA_WORD_RE.fullmatch(t)]
    if not words:
        return None  # numbers and punctuation (tables, IP addresses, separators) repeat legitimately
    if _closes_blocks(unit, words) and repeats < CLOSER_MIN_REPEATS:
        return None
    if len(unit) > 1 and all(w in VALUE_LITERALS for w in words):
        return None  # "[false, false, false, ...]", "| N/A | N/A | ...": data
    if len(unit) == 1:
        # One CJK character is a syllable, not a word: "哈哈哈" is laughter, so it needs more repeats;
        # a Thai/Khmer letter cluster even more ("มากกกก" stretches a word).
        needed = (SHORT_LOOP_MIN_REPEATS if _CJK_RE.fullmatch(unit[0])
                  else LETTER_MIN_REPEATS if _SPACELESS_RE.match(unit[0]) else LOOP_MIN_REPEATS)
        return "word" if repeats >= needed else None
    if any(t in _TERMINATORS for t in unit) and repeats >= LOOP_MIN_REPEATS:
        return "sentence"
    if len(unit) >= LONG_UNIT and repeats >= LOOP_MIN_REPEATS:
        return "long"
    return "short" if repeats >= SHORT_LOOP_MIN_REPEATS else None


def _closes_blocks(unit: Sequence[str], words: Sequence[str]) -> bool:
    """A unit of block-closing keywords (``end``), or one closing tag (``< / div >``, in any rotation)."""
    if all(w.lower() in BLOCK_CLOSERS for w in words):
        return True
    return len(words) == 1 and "/" in unit and set(unit) - {words[0]} <= {"<", "/", ">"}


def find_loop(tokens: Sequence[str]) -> tuple[Loop | None, int]:
    """The back-to-back repeat with the most extra copied tokens, and that count, over periods
    1..MAX_PERIOD: O(n * MAX_PERIOD).

    For each period p, a maximal run of L positions with ``tokens[i] == tokens[i + p]`` is a stretch
    of L + p tokens that repeats its first p tokens (L + p) // p times.
    """
    best: Loop | None = None
    best_extra = 0
    n = len(tokens)
    for period in range(1, min(MAX_PERIOD, n // LOOP_MIN_REPEATS) + 1):
        run = 0
        for i in range(n - period + 1):
            if i < n - period and tokens[i] == tokens[i + period]:
                run += 1
                continue
            if run >= period * (LOOP_MIN_REPEATS - 1):
                span = run + period
                repeats = span // period
                start = i - run
                kind = _loop_kind(tokens[start : start + period], repeats)
                if kind is not None and span - period > best_extra:
                    best, best_extra = Loop(period, repeats, kind), span - period
            run = 0
    return best, best_extra


def repetition_stats(text: str) -> RepetitionStats:
    """Distinct word-3-gram ratio and the strongest loop of ``text`` (first MAX_CHARS characters)."""
    text = _ENUMERATOR_RE.sub(r"\1-", text[:MAX_CHARS].lower())
    words = _WORD_RE.findall(text)
    # 3-grams of numbers alone repeat legitimately (a zero matrix, a table's columns), as in loops
    grams = [g for g in zip(words, words[1:], words[2:]) if any(_HAS_LETTER_RE.search(w) for w in g)]
    ratio = len(set(grams)) / len(grams) if grams else 1.0
    tokens = _TOKEN_RE.findall(text)
    loop, extra = find_loop(tokens)
    return RepetitionStats(len(words), ratio, loop, extra / len(tokens) if tokens else 0.0)


def check_repetition(text: str, *, cut: bool = False) -> CheckOutcome:
    """Degeneration loops. Score: 1 - the larger redundant share (repeated word 3-grams, loop copies);
    label: fail on any loop, or when repeated 3-grams exceed DUP3_FAIL_ABOVE.

    A completion that is a JSON object or array (bare or in one code fence) is data: identical
    records and labels repeat by design, so only its string values are checked, each on its own.
    ``cut``: the text was cut (by the gateway, or at the token limit), so JSON may no longer parse;
    its complete string values are then read without parsing the whole.
    """
    values = _json_string_values(text)
    if values is None and cut:
        values = _cut_json_string_values(text)
    if values is None:
        return _repetition_outcome(repetition_stats(text))
    outcomes = [_repetition_outcome(repetition_stats(v)) for v in values if v.strip()]
    if not outcomes:
        return CheckOutcome("repetition", 1.0, PASS, "JSON without text values")
    worst = min(outcomes, key=lambda o: (o.label == PASS, o.score))
    return CheckOutcome("repetition", worst.score, worst.label, f"JSON string values: {worst.explanation}")


def _json_string_values(text: str) -> list[str] | None:
    """The string values (not keys) of ``text`` when it is a JSON object or array, else None."""
    if len(text) > MAX_CHARS or not text.lstrip().startswith(("{", "[", "`")):
        return None
    fenced = _FENCE_RE.match(text)
    try:
        doc = orjson.loads(fenced.group(1) if fenced is not None else text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, (dict, list)):
        return None
    out: list[str] = []
    stack: list[object] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return out


_JSON_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*(:?)')


def _cut_json_string_values(text: str) -> list[str] | None:
    """The complete string values (not keys) of what starts as a JSON object or array but was cut."""
    body = text.lstrip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    if not re.match(r'[{\[]\s*["{\[]', body):  # '{"', '["', '[{': JSON, not "[1] a footnote"
        return None
    out = []
    for match in _JSON_STRING_RE.finditer(body[:MAX_CHARS]):
        if match.group(2):
            continue  # a key
        try:
            out.append(orjson.loads(f'"{match.group(1)}"'))
        except orjson.JSONDecodeError:
            return None  # not JSON after all
    return out or None


def _repetition_outcome(stats: RepetitionStats) -> CheckOutcome:
    duplicated = 1.0 - stats.distinct_3gram_ratio
    score = round(1.0 - max(duplicated, stats.loop_redundancy), 4)
    loop = stats.loop
    if loop is not None:
        if loop.kind == "word":
            why = f"a word repeated {loop.repeats} times in a row"
        else:
            what = {"sentence": "a sentence", "long": "a passage", "short": "a phrase"}[loop.kind]
            why = f"{what} of {loop.period} tokens repeated {loop.repeats} times in a row"
        return CheckOutcome("repetition", score, FAIL, why)
    if stats.words >= DUP3_MIN_TOKENS and duplicated > DUP3_FAIL_ABOVE:
        return CheckOutcome("repetition", score, FAIL, f"{duplicated:.0%} of word 3-grams repeat earlier ones")
    return CheckOutcome("repetition", score, PASS, f"no loop; {duplicated:.0%} of word 3-grams repeated")


@cache
def placeholder_re() -> re.Pattern[str]:
    """The gateway masker's placeholder pattern, or our fallback while evaluation.pii lacks one."""
    try:
        from infersight.evaluation.pii import PLACEHOLDER_RE
    except ImportError:
        return re.compile(FALLBACK_PLACEHOLDER_PATTERN)
    return PLACEHOLDER_RE if isinstance(PLACEHOLDER_RE, re.Pattern) else re.compile(str(PLACEHOLDER_RE))


def _entity(match: re.Match[str]) -> str:
    if match.re.groups and match.group(1):
        return match.group(1)
    return re.sub(r"\W", "", match.group(0))


NOT_LEAKS = frozenset({"URL"})
"""Masked but not a leak: answers link to documentation all the time; a URL names no person."""


def check_pii_leak(text: str | None, guardrail_hits: Sequence[str] = ()) -> CheckOutcome:
    """PII in the completion, seen as ``pii_completion:*`` guardrail hits (the screen's, and the
    masker's for each type it replaced) and counted as its placeholders in the text (URLs are masked
    but not counted as a leak).

    A placeholder of a type with no hit is not counted: the masker did not write it, the model did
    (an e-mail template: "write to [EMAIL]"), and no PII was there."""
    hits = sorted({h[len(PII_HIT_PREFIX) :] or "UNKNOWN" for h in guardrail_hits
                   if h.startswith(PII_HIT_PREFIX) and h[len(PII_HIT_PREFIX):] not in NOT_LEAKS})
    found: Counter[str] = Counter()
    if text and hits:
        found.update(e for e in (_entity(m) for m in placeholder_re().finditer(text)) if e in hits)
    if not hits:
        return CheckOutcome("pii_leak", 1.0, PASS, "no PII in the completion")
    parts = []
    if found:
        parts.append("masked in completion: " + ", ".join(f"{k} x{v}" for k, v in sorted(found.items())))
    if hits:
        parts.append("guardrail: " + ", ".join(hits))
    return CheckOutcome("pii_leak", 0.0, FAIL, "; ".join(parts))


def check_json(text: str, *, content_truncated: bool = False) -> CheckOutcome | None:
    """JSON mode: the raw completion must parse (strict RFC 8259; whitespace around it is fine).

    A completion wrapped in a Markdown code fence fails with score 0.5 ("fenced"): clients that
    asked for JSON mode parse the raw text. Returns None (not applicable) when the text was cut (by
    the gateway, or by the engine at the token limit) and does not parse: the cut broke it.
    """
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if content_truncated:
            return None
        fenced = _FENCE_RE.match(text)
        if fenced is not None and _parses(fenced.group(1)):
            return CheckOutcome("invalid_json", 0.5, FAIL, "fenced: valid JSON inside a Markdown code fence")
        reason = "empty completion" if not text.strip() else f"does not parse: {str(exc).split(':')[0]}"
        return CheckOutcome("invalid_json", 0.0, FAIL, reason)
    return CheckOutcome("invalid_json", 1.0, PASS, "parses as JSON")


def raw_json_check(text: str | None, *, cut: bool) -> dict[str, Any]:
    """``check_json`` on the raw completion, as ``EvalTask.json_check`` carries it: the gateway runs
    it before masking, which makes a valid answer with a numeric id (``{"cpf": 52998224725}``)
    unparseable (``{"cpf": [CPF]}``). ``cut``: the capture overflowed or the engine hit its limit."""
    outcome = check_json(text or "", content_truncated=cut)
    return {} if outcome is None else {"score": outcome.score, "label": outcome.label,
                                       "explanation": outcome.explanation}


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


@cache
def evaluator_version() -> str:
    """A hash of every pattern and threshold: changing any of them starts a new score series."""
    params = {
        "revision": CHECKS_REVISION,
        "refusal": [REFUSAL_PATTERNS, PIVOT_PATTERN, QUOTED_PATTERN, REFUSAL_WINDOW, PARTIAL_MIN_CHARS],
        "repetition": [TOKEN_PATTERN, sorted(VALUE_LITERALS), MAX_PERIOD, LOOP_MIN_REPEATS, SHORT_LOOP_MIN_REPEATS,
                       LONG_UNIT, DUP3_FAIL_ABOVE, DUP3_MIN_TOKENS, MAX_CHARS, sorted(BLOCK_CLOSERS),
                       CLOSER_MIN_REPEATS, WORD_PATTERN, LETTER_MIN_REPEATS, "".join(sorted(_TERMINATORS)),
                       ENUMERATOR_PATTERN],
        "pii": [placeholder_re().pattern, PII_HIT_PREFIX],
        "truncated": sorted(LENGTH_FINISH_REASONS),
        "json": ["orjson", _FENCE_RE.pattern],
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def task_outcomes(task: EvalTask) -> list[CheckOutcome]:
    """The outcomes of the checks that apply to ``task`` (see docs/checks.md for when each applies)."""
    if task.prompt_text is None and task.completion_text is None:
        return []  # the tenant keeps no content: a missing completion says nothing about the model
    failed = task.answer_incomplete
    text = task.completion_text
    out: list[CheckOutcome] = []
    if not failed:
        # A reasoning model that spent max_tokens on its reasoning answers "" with finish_reason length:
        # one fault, one failure (`truncated`), as for cut JSON; `empty` counted it twice.
        cut_before_answer = task.finish_reason in LENGTH_FINISH_REASONS and not (text or "").strip()
        # a response past the gateway's 1 MiB capture may not parse back: no text is not "empty" then
        if not cut_before_answer and (text is not None or (200 <= task.status_code < 300
                                                           and not task.content_truncated)):
            out.append(check_empty(text))
        if task.finish_reason:
            out.append(check_truncated(task.finish_reason))
        if text is not None and text.strip():
            out.append(check_refusal(text))
            out.append(check_repetition(text, cut=task.content_truncated
                                        or task.finish_reason in LENGTH_FINISH_REASONS))
        if task.json_check is not None:  # run on the raw text by the gateway (see raw_json_check)
            if task.json_check and (text is not None or 200 <= task.status_code < 300):
                out.append(CheckOutcome("invalid_json", float(task.json_check["score"]),
                                        str(task.json_check["label"]), str(task.json_check["explanation"])))
        elif task.json_requested and (text is not None or 200 <= task.status_code < 300):
            # Cut at the token limit, the JSON is broken because `truncated` fails: one fault, one row.
            cut = task.content_truncated or task.finish_reason in LENGTH_FINISH_REASONS
            json_outcome = check_json(text or "", content_truncated=cut)
            if json_outcome is not None:
                out.append(json_outcome)
    if text is not None or any(h.startswith(PII_HIT_PREFIX) for h in task.guardrail_hits):
        out.append(check_pii_leak(text, task.guardrail_hits))
    return out


def run_checks(task: EvalTask) -> list[EvalResult]:
    """EvalResult rows (evaluator ``checks``) for every check that applies to ``task``."""
    outcomes = task_outcomes(task)
    if not outcomes:
        return []
    version = evaluator_version()
    now = datetime.now(timezone.utc).isoformat()
    return [
        EvalResult.for_task(task, evaluator=EVALUATOR, evaluator_version=version, dimension=o.dimension,
                            evaluated_at=now, score=o.score, label=o.label, explanation=o.explanation)
        for o in outcomes
    ]
