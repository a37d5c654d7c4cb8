"""``infersight eval compare``: which of two systems answers better, by the LLM judge, pair by pair.

Reads a pairs file (JSON lines ``{"id", "prompt", "response_a", "response_b", "reference"?}``: the
same prompts answered by A and by B), asks the configured judge with a pairwise rubric, each pair in
both orders, and prints a summary (a table, or ``--json``) with a progress bar on stderr. ``--out``
writes one verdict per pair. With ``--gate`` the command exits 3 when B is significantly worse than
A, so a model or prompt switch can be blocked in CI.

Exit codes: 0 ok, 1 the judge failed on every pair (with ``--gate``: on more than 10% of them),
2 bad input (pairs file, config, rubric) or ``--out`` could not be written (the report is printed
first), 3 gate failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from infersight.config import ConfigError
from infersight.evaluation.comparison import (
    Pair,
    PairJudge,
    PairVerdict,
    build_report,
    load_pairs,
    result_rows,
)
from infersight.evaluation.golden import GoldenError
from infersight.evaluation.rubric import Rubric, RubricError, load_rubric
from infersight.evaluation.judge_cli import (
    Judged, evaluation_settings, in_config_file, judge_each, make_judge, positive_int, warn,
)

EXIT_OK, EXIT_JUDGE, EXIT_INPUT, EXIT_GATE = 0, 1, 2, 3
LOW_CONSISTENCY = 0.8  # below this share of pairs judged alike in both orders, the verdict is shaky
# --gate decides nothing when the judge failed on more pairs than this share: 5 judged of 40 passed it
MAX_GATE_ERROR_SHARE = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``eval compare`` on ``parser``."""
    parser.add_argument("--pairs", required=True, metavar="FILE",
                        help='JSON lines {"id", "prompt", "response_a", "response_b", "reference"?} (docs/judge.md)')
    parser.add_argument("--config", metavar="FILE", help="YAML config: evaluation.judge (url, model, key, prices)")
    parser.add_argument("--rubric", default="pairwise", metavar="NAME|FILE",
                        help="a pairwise rubric: packaged name or YAML file (default: pairwise)")
    parser.add_argument("--name-a", default="A", metavar="NAME", help="what produced response_a, for the report")
    parser.add_argument("--name-b", default="B", metavar="NAME", help="what produced response_b, for the report")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N pairs")
    parser.add_argument("--concurrency", type=positive_int, metavar="N",
                        help="comparisons in flight, two judge calls each (default: half evaluation.judge.concurrency)")
    parser.add_argument("--out", metavar="FILE", help="write one verdict per pair as JSON lines")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--gate", action="store_true", help="exit 3 if B is significantly worse than A")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _run_judge(judge: PairJudge, pairs: Sequence[Pair], concurrency: int, show: bool,
                     owned: bool) -> Judged[PairVerdict]:
    async def ask(pair: Pair) -> PairVerdict:
        return await judge.compare(pair.prompt, pair.response_a, pair.response_b, pair.reference)

    return await judge_each(judge, pairs, ask, item_id=lambda pair: pair.id, concurrency=concurrency,
                            show_progress=show, close_judge=owned)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


_VERDICT_TEXT = {
    "b_better": "B answers better", "a_better": "A answers better",
    "no_significant_difference": "no significant difference", "undecided": "undecided (no decisive pair)",
}


def _print_summary(report: dict[str, Any]) -> None:
    console = Console(highlight=False)
    a, b, wins = report["a"], report["b"], report["wins"]
    console.print(f"[bold]{escape(a)} (A) vs {escape(b)} (B)[/bold]: judge {escape(str(report['judge_model']))} "
                  f"({escape(str(report['evaluator_version']))}, rubric {escape(str(report['rubric']))})")
    console.print(f"pairs {report['n_items']}, compared {report['n_compared']}, judge errors {report['judge_errors']}")
    console.print(f"B wins {wins['b']}, A wins {wins['a']}, ties {wins['tie']} "
                  f"(position flips {report['position_flips']}, consistency {_percent(report['consistency'])})")
    ci = report["b_win_rate_ci"]
    interval = f", 95% CI {_percent(ci[0])}..{_percent(ci[1])}" if ci else ""
    console.print(f"B win rate {_percent(report['b_win_rate'])} of decisive pairs{interval}: "
                  f"[bold]{_VERDICT_TEXT[report['verdict']]}[/bold]")
    console.print(f"first position picked in {_percent(report['first_position_share'])} of decisive answers "
                  "(50%: no position bias)")
    console.print(f"judge tokens {report['judge_tokens']}, cost {report['judge_cost']:.6f}")


def _check_writable(path: str, pairs: str) -> None:
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError("cannot be written (a folder, or its folder is missing or read-only)", key="--out")
    if target.resolve() == Path(pairs).resolve():  # the verdicts would replace both systems' answers
        raise ConfigError(f"names the pairs file {pairs}; write the verdicts to another file", key="--out")


def _cli_rubric(ref: str) -> Rubric:
    """The ``--rubric`` named on the command line; its errors name that option, not the config file."""
    try:
        return load_rubric(ref)
    except RubricError as exc:
        raise ConfigError(str(exc), key="--rubric") from None


def _write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    Path(path).write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def run(args: argparse.Namespace, judge: PairJudge | None = None) -> int:
    """Compare and report; returns the exit code. ``judge`` replaces the configured LLM judge."""
    try:
        evaluation, _ = evaluation_settings(args.config, None)
        pairs_file = load_pairs(args.pairs)
        pairs = pairs_file.pairs[: args.limit] if args.limit else pairs_file.pairs
        if args.out:  # refused now, not after the judge was paid for every pair
            _check_writable(args.out, args.pairs)
        owned = judge is None
        live: Any = judge if judge is not None else make_judge(
            evaluation.judge, rubric=_cli_rubric(args.rubric), without_url="a comparison needs a judge endpoint")
        rubric = getattr(live, "rubric", None)
        if rubric is not None and rubric.kind != "pairwise":
            raise ConfigError(f"rubric '{rubric.name}' is {rubric.kind}; eval compare needs a pairwise rubric "
                              "(--rubric pairwise, or a file with kind: pairwise)", key="--rubric")
    except (GoldenError, ConfigError) as exc:
        warn(str(in_config_file(exc, args.config)))
        return EXIT_INPUT
    concurrency = args.concurrency or max(1, evaluation.judge.concurrency // 2)
    judged = asyncio.run(_run_judge(live, pairs, concurrency, not args.no_progress, owned))
    verdicts = judged.results
    errors = {pair.id: judged.errors[pair.id] for pair in pairs if pair.id in judged.errors}  # file order
    if len(errors) == len(pairs):
        warn(f"the judge failed on all {len(pairs)} pairs (first error: {next(iter(errors.values()))}); "
             f"judge tokens {judged.error_tokens}, cost {judged.error_cost:.6f}")
        return EXIT_JUDGE
    for pair_id, message in list(errors.items())[:5]:
        warn(f"warning: judge failed on {pair_id}: {message}")
    report = build_report(pairs_file, pairs, verdicts, errors, name_a=args.name_a, name_b=args.name_b,
                          evaluator_version=live.evaluator_version, judge_model=getattr(live, "judge_model", None),
                          rubric=rubric.name if rubric is not None else None,
                          error_tokens=judged.error_tokens, error_cost=judged.error_cost)
    if report["consistency"] is not None and report["consistency"] < LOW_CONSISTENCY:
        warn(f"warning: the judge's preference followed the position, not the answer, in "
             f"{report['position_flips']} of {report['n_compared']} pairs; treat the verdict with care")
    if args.json:  # printed before --out is written: a failed write must not lose a paid-for report
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_summary(report)
    if args.out:
        try:
            _write_rows(args.out, result_rows(pairs, verdicts, errors))
        except OSError as exc:
            warn(f"cannot write {args.out}: {exc.strerror or exc}; the report above is complete")
            return EXIT_INPUT
    if args.gate and len(errors) > MAX_GATE_ERROR_SHARE * len(pairs):
        warn(f"gate not decided: the judge failed on {len(errors)} of {len(pairs)} pairs (more than "
             f"{MAX_GATE_ERROR_SHARE:.0%}); the verdict rests on too few of them")
        return EXIT_JUDGE
    if args.gate and report["verdict"] == "a_better":
        ci = report["b_win_rate_ci"]
        warn(f"gate failed: {args.name_b} (B) is significantly worse than {args.name_a} (A): "
             f"win rate {report['b_win_rate']:.3f}, 95% CI {ci[0]:.3f}..{ci[1]:.3f}")
        return EXIT_GATE
    return EXIT_OK


def main(argv: list[str] | None = None, *, judge: PairJudge | None = None) -> int:
    """Standalone entry point: ``python -m infersight.evaluation.compare_cli --pairs FILE ...``."""
    parser = argparse.ArgumentParser(prog="infersight eval compare",
                                     description="Compare two systems' answers with the LLM judge, pairwise.")
    add_arguments(parser)
    return run(parser.parse_args(argv), judge=judge)


if __name__ == "__main__":
    raise SystemExit(main())
