"""Pairwise comparison of two systems' answers by the LLM judge: the pairs file, the run, the report.

The question a platform team asks before switching models (or prompts, or engines): on our own
prompts, does B answer better than A? Each pair is judged twice with the answers' positions swapped
(``LLMJudge.compare``); a judge whose preference follows the position, not the content, gives a tie,
and those flips are counted, because a judge that flips often cannot settle the question.

B's win rate is over decisive pairs (ties left out) with a Wilson 95% interval: "B better" or "A
better" is claimed only when the interval excludes one half.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from infersight.evaluation.golden import GoldenError, read_json_lines, string_field

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile
EXAMPLE_IDS = 10


@dataclass(frozen=True, slots=True)
class Pair:
    """One prompt and the two answers to compare."""

    id: str
    prompt: str
    response_a: str
    response_b: str
    reference: str | None


@dataclass(frozen=True, slots=True)
class PairsFile:
    path: Path
    sha256: str
    pairs: list[Pair]


class PairVerdict(Protocol):
    """What ``LLMJudge.compare`` returns, as far as the report reads it."""

    @property
    def winner(self) -> str: ...
    @property
    def consistent(self) -> bool: ...
    @property
    def first_order(self) -> str: ...
    @property
    def second_order(self) -> str: ...
    @property
    def raw(self) -> tuple[str, str]: ...
    @property
    def explanations(self) -> tuple[str, str]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost(self) -> float: ...


class PairJudge(Protocol):
    """The slice of ``LLMJudge`` a comparison needs (tests pass their own object)."""

    @property
    def evaluator_version(self) -> str: ...

    async def compare(self, prompt: str, response_a: str, response_b: str,
                      reference: str | None = None) -> PairVerdict: ...


def load_pairs(path: str | Path) -> PairsFile:
    """Read a pairs file: JSON lines ``{"id", "prompt", "response_a", "response_b", "reference"?}``.

    Ids must be unique (results are reported by id); every error names the file and line."""
    file = Path(path)
    rows, digest = read_json_lines(file)
    pairs: list[Pair] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        pair_id = string_field(row, "id", file, line)
        assert pair_id is not None
        if pair_id in first_line:
            raise GoldenError(f"id {pair_id!r} is also on line {first_line[pair_id]}; ids must be unique",
                              path=file, line=line)
        first_line[pair_id] = line
        pairs.append(Pair(
            id=pair_id, prompt=string_field(row, "prompt", file, line) or "",
            response_a=string_field(row, "response_a", file, line) or "",
            response_b=string_field(row, "response_b", file, line) or "",
            reference=string_field(row, "reference", file, line, optional=True),
        ))
    return PairsFile(file, digest, pairs)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (sound near 0 and 1, unlike the normal one)."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _verdict(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "undecided"  # no decisive pair: every comparison was a tie or failed
    if interval[0] > 0.5:
        return "b_better"
    if interval[1] < 0.5:
        return "a_better"
    return "no_significant_difference"


def build_report(
    pairs_file: PairsFile,
    pairs: Sequence[Pair],
    verdicts: dict[str, PairVerdict],
    errors: dict[str, str],
    *,
    name_a: str,
    name_b: str,
    evaluator_version: str,
    judge_model: str | None,
    rubric: str | None,
    error_tokens: int = 0,
    error_cost: float = 0.0,
) -> dict[str, Any]:
    """The comparison report: counts, B's win rate with its CI, the judge's position consistency and spend."""
    judged = [verdicts[p.id] for p in pairs if p.id in verdicts]
    wins = {side: sum(1 for v in judged if v.winner == side) for side in ("a", "b", "tie")}
    flips = sum(1 for v in judged if not v.consistent)
    raw = [label for v in judged for label in v.raw if label in ("A", "B")]
    decisive = wins["a"] + wins["b"]
    interval = wilson_interval(wins["b"], decisive)
    return {
        "pairs": os.path.abspath(pairs_file.path),
        "pairs_sha256": pairs_file.sha256,
        "a": name_a,
        "b": name_b,
        "evaluator_version": evaluator_version,
        "judge_model": judge_model,
        "rubric": rubric,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_items": len(pairs),
        "n_compared": len(judged),
        "judge_errors": len(errors),
        "error_ids": list(errors)[:EXAMPLE_IDS],
        "wins": wins,
        "position_flips": flips,
        "consistency": (len(judged) - flips) / len(judged) if judged else None,
        "first_position_share": sum(1 for label in raw if label == "A") / len(raw) if raw else None,
        "b_win_rate": wins["b"] / decisive if decisive else None,
        "b_win_rate_ci": list(interval) if interval is not None else None,
        "verdict": _verdict(interval),
        # every call paid for, failed ones included (their attempts still cost tokens)
        "judge_tokens": sum(v.prompt_tokens + v.completion_tokens for v in judged) + error_tokens,
        "judge_cost": sum(v.cost for v in judged) + error_cost,
    }


def result_rows(pairs: Sequence[Pair], verdicts: dict[str, PairVerdict], errors: dict[str, str]) -> list[dict[str, Any]]:
    """One row per pair, in file order, for ``--out``: the verdict of both orders, or the error."""
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        verdict = verdicts.get(pair.id)
        if verdict is None:
            rows.append({"id": pair.id, "error": errors.get(pair.id, "not judged")})
            continue
        rows.append({
            "id": pair.id, "winner": verdict.winner, "consistent": verdict.consistent,
            "first_order": verdict.first_order, "second_order": verdict.second_order,
            "explanations": list(verdict.explanations),
            "judge_tokens": verdict.prompt_tokens + verdict.completion_tokens, "judge_cost": verdict.cost,
        })
    return rows
