"""``infersight eval calibrate``: check a judge against human labels before trusting its scores.

Two modes. Live (the default) runs the configured LLM judge over the golden items, with a progress
bar. ``--scores FILE`` reads scores a judge already produced (JSON lines ``{"id", "scores"}``), so a
calibration can be repeated, shared and gated in CI without calling a model. The report is printed
(a rich table, or ``--json``) and stored per evaluator version under
``<storage.path>/calibration/<evaluator_version>/<golden stem>-<path hash>.json``. With ``--gate`` the command
exits 3 when any dimension misses ``evaluation.gate``, so a judge version can be blocked from use.

Exit codes: 0 ok, 1 the judge failed on every item (nothing stored), 2 bad input (golden, scores or
config file), 3 gate failed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infersight.config import ConfigError
from infersight.evaluation.calibration import DEFAULT_RESAMPLES, build_report, report_json, write_report
from infersight.evaluation.golden import JUDGE_MAX, JUDGE_MIN, GoldenError, GoldenItem, load_golden, load_scores
from infersight.evaluation.judge_cli import (
    evaluation_settings,
    in_config_file,
    judge_each,
    make_judge,
    non_negative_int,
    positive_int,
    warn,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_JUDGE, EXIT_INPUT, EXIT_GATE = 0, 1, 2, 3
Scores = dict[str, dict[str, float | None]]


class Verdict(Protocol):
    """What a judge returns: a 1-5 score per dimension it rated."""

    @property
    def scores(self) -> Mapping[str, float]: ...


class Judge(Protocol):
    """The slice of ``LLMJudge`` calibration needs (tests pass their own object)."""

    @property
    def evaluator_version(self) -> str: ...

    async def score(self, prompt: str, response: str, reference: str | None) -> Verdict: ...


MAX_RESAMPLES = 100_000  # each resample is a 5x5 table per dimension: 10^7 of them ran out of memory


def _resamples(text: str) -> int:
    value = non_negative_int(text)
    if value > MAX_RESAMPLES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_RESAMPLES:,} (the CI moves little past 10,000)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``eval calibrate`` (and ``func=run``) on ``parser``."""
    parser.add_argument("--golden", required=True, metavar="FILE",
                        help="golden set, JSON lines (see docs/calibration.md)")
    parser.add_argument("--scores", metavar="FILE",
                        help='judge scores, JSON lines {"id": ..., "scores": {dimension: 1-5}}; default: run the judge')
    parser.add_argument("--evaluator-version", metavar="NAME",
                        help="name the judge behind --scores (default: the scores file's sha256[:16])")
    parser.add_argument("--config", metavar="FILE", help="YAML config: evaluation.judge, evaluation.gate, storage.path")
    parser.add_argument("--data-dir", metavar="DIR", help="override storage.path (where reports are stored)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N golden items")
    parser.add_argument("--concurrency", type=positive_int, metavar="N",
                        help="judge calls in flight (default: evaluation.judge.concurrency)")
    parser.add_argument("--bootstrap", type=_resamples, default=DEFAULT_RESAMPLES, metavar="N",
                        help=f"bootstrap resamples for the kappa CI (default {DEFAULT_RESAMPLES}; 0: no CI)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed, 0 or more (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--gate", action="store_true", help="exit 3 if any dimension misses evaluation.gate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _clean(scores: Mapping[str, Any]) -> dict[str, float | None]:
    """Keep 1-5 numbers; anything else from a judge counts as no score for that dimension."""
    out: dict[str, float | None] = {}
    for dim, value in scores.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and JUDGE_MIN <= value <= JUDGE_MAX:
            out[dim] = float(value)
        else:
            log.warning("judge gave %r for %s; counted as missing", value, dim)
            out[dim] = None
    return out


async def _run_judge(judge: Judge, items: Sequence[GoldenItem], concurrency: int, show: bool,
                     owned: bool) -> tuple[Scores, dict[str, str], tuple[int, float]]:
    """Scores and errors by golden id, and what the judge cost: (tokens, cost), failed calls included."""

    async def ask(item: GoldenItem) -> Verdict:
        return await judge.score(item.prompt, item.response, item.reference)

    judged = await judge_each(judge, items, ask, item_id=lambda item: item.id, concurrency=concurrency,
                              show_progress=show, close_judge=owned)
    verdicts = judged.results.values()
    tokens = sum(int(getattr(v, "prompt_tokens", 0)) + int(getattr(v, "completion_tokens", 0)) for v in verdicts)
    cost = sum(float(getattr(v, "cost", 0.0)) for v in verdicts)
    scores = {item_id: _clean(v.scores) for item_id, v in judged.results.items()}
    return scores, judged.errors, (tokens + judged.error_tokens, cost + judged.error_cost)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.3f}" if value < 0 else f"{value:.3f}"
    return str(value)


def _cell(failures: list[str], dim: str, stat: str, stats: Mapping[str, Any]) -> str:
    """The statistic as text, in red when the gate failed on it."""
    text = _fmt(stats[stat])
    bad = any(f.startswith((f"{dim}: {stat}", f"{dim}: |{stat}|")) for f in failures)
    return f"[red]{text}[/red]" if bad else text


def _print_table(report: dict[str, Any], path: Path) -> None:
    console = Console()
    dims: dict[str, dict[str, Any]] = report["dimensions"]
    binary = any(s["kind"] == "binary" for s in dims.values())
    columns = ["dimension", "n", "rho", "tau-b", "kappa", "kappa CI", "bias"]
    columns += ["acc", "f1"] if binary else []
    # names and paths are the user's: rich reads "[/...]" in them as markup (a MarkupError after the
    # report was stored, or a folder "golden[v2]" printed as "golden")
    table = Table(title=f"{escape(str(report['dataset']))}: judge {escape(str(report['evaluator_version']))}",
                  caption="rho: Spearman; tau-b: Kendall; kappa: quadratic-weighted, 95% bootstrap CI; "
                          "bias: judge - human",
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for name in columns:
        table.add_column(name, justify="left" if name == "dimension" else "right", no_wrap=True)
    failures: list[str] = report["gate"]["failures"]
    for dim, s in dims.items():
        ci = s["kappa_ci"]
        row = [escape(dim), _cell(failures, dim, "n", s), _cell(failures, dim, "spearman", s), _fmt(s["kendall"]),
               _cell(failures, dim, "kappa", s), f"{ci[0]:.2f}..{ci[1]:.2f}" if ci else "-",
               _cell(failures, dim, "bias", s)]
        row += [_fmt(s.get("accuracy")), _fmt(s.get("f1"))] if binary else []
        table.add_row(*row)
    verdict = "[green]passed[/green]" if report["gate"]["passed"] else "[red]failed[/red]"
    console.print(table)
    console.print(f"golden: {report['golden']}", highlight=False, markup=False)
    counts = [f"items {report['n_items']}", f"scored {report['n_scored']}",
              f"missing scores {report['missing_scores']}", f"unmatched score ids {report['unmatched_scores']}"]
    counts += [f"duplicate golden ids {len(report['duplicate_ids'])}"] if report["duplicate_ids"] else []
    counts += [f"duplicate score ids {len(report['duplicate_score_ids'])}"] if report["duplicate_score_ids"] else []
    counts += [f"judge errors {report['judge_errors']}"] if report["mode"] == "live" else []
    if report.get("judge_tokens") is not None:
        counts.append(f"judge tokens {report['judge_tokens']}, cost {report['judge_cost']:.6f}")
    console.print(", ".join(counts), highlight=False)
    gate = report["gate"]
    bias = f", max |bias| {gate['max_abs_bias']}" if gate["max_abs_bias"] is not None else ""
    console.print(f"gate {verdict} (min n {gate['min_n']}, min spearman {gate['min_spearman']}, min kappa {gate['min_kappa']}{bias})",
                  highlight=False)
    for failure in failures:
        console.print(f"  [red]{escape(failure)}[/red]", highlight=False)
    console.print(f"report: {path}", highlight=False, markup=False)


def _no_overlap(scores_path: Path, golden_path: Path, scores: Scores, items: Sequence[GoldenItem],
                limit: int | None) -> str:
    """Why nothing can be calibrated: no id of the scores file names a golden item in scope."""
    seen = next(iter(scores), None)
    example = f" (e.g. {seen!r}; golden ids look like {items[0].id!r})" if seen is not None else ""
    scope = f"the first {limit} items" if limit else "the items"
    return (f"{scores_path}: no score id matches {scope} of {golden_path}{example}; "
            "pass the scores the judge gave for this golden file; nothing stored")


def _coverage_warnings(report: Mapping[str, Any], scores_path: str | None) -> None:
    """Items the statistics leave out, on stderr too: with --json they were only inside the report."""
    if scores_path and report["missing_scores"]:
        warn(f"warning: {report['missing_scores']} of {report['n_items']} golden items have no score in "
              f"{scores_path} (e.g. {report['missing_ids'][0]!r}); the statistics cover the rest")
    if report["unmatched_scores"]:
        warn(f"warning: {report['unmatched_scores']} score ids are not in the golden file "
              f"(e.g. {report['unmatched_ids'][0]!r}); ignored")


def _judged_dimensions(judge: Judge) -> tuple[str, ...] | None:
    """The dimensions the judge's rubric asks for (an ``LLMJudge``); None when it does not say."""
    names = getattr(getattr(judge, "rubric", None), "dimension_names", None)
    return tuple(names) if names else None


def run(args: argparse.Namespace, judge: Judge | None = None) -> int:
    """Calibrate and report; returns the exit code. ``judge`` replaces the configured LLM judge."""
    try:
        evaluation, storage = evaluation_settings(args.config, args.data_dir)
        golden = load_golden(args.golden)
        for dup, lines in golden.duplicates.items():
            warn(f"warning: {golden.path}: id {dup!r} occurs on lines {lines}; excluded (scores match by id)")
        items = golden.items[: args.limit] if args.limit else golden.items
        if not items:
            warn(f"{golden.path}: no item to calibrate (every id occurs more than once; ids must be unique)")
            return EXIT_INPUT
        errors: dict[str, str] = {}
        spend: tuple[int, float] | None = None
        judged: tuple[str, ...] | None = None
        score_dups: list[str] = []
        if args.scores:
            loaded = load_scores(args.scores)
            scores: Scores = loaded.scores
            version = args.evaluator_version or hashlib.sha256(Path(args.scores).read_bytes()).hexdigest()[:16]
            unmatched = [i for i in scores if i not in golden.all_ids]
            mode = "scores"
            score_dups = sorted(loaded.duplicates)
            for dup, lines in loaded.duplicates.items():
                warn(f"warning: {loaded.path}: id {dup!r} occurs on lines {lines}; ignored as ambiguous")
            if not any(item.id in scores for item in items):  # the wrong file: storing it would hide that
                warn(_no_overlap(loaded.path, golden.path, scores, items, args.limit))
                return EXIT_INPUT
        else:
            if args.evaluator_version:
                warn("--evaluator-version applies only with --scores (a live judge names its own version)")
                return EXIT_INPUT
            owned = judge is None
            live: Judge = judge if judge is not None else make_judge(
                evaluation.judge, kind="pointwise", without_url="live calibration needs a judge endpoint (or pass --scores FILE)")
            judged = _judged_dimensions(live)
            labelled = [m.dimension for m in golden.mappings]
            if judged is not None and not set(judged) & set(labelled):
                warn(f"the judge's rubric scores {', '.join(judged)}; {golden.path} labels "
                     f"{', '.join(labelled)}: nothing to compare; use a rubric or a golden file that share a "
                     "dimension; nothing stored")
                return EXIT_INPUT
            concurrency = args.concurrency or evaluation.judge.concurrency
            scores, errors, spend = asyncio.run(_run_judge(live, items, concurrency, not args.no_progress, owned))
            version, unmatched, mode = live.evaluator_version, [], "live"
            if len(errors) == len(items):  # an outage must not overwrite a stored calibration
                first = next(iter(errors.values()))
                warn(f"the judge failed on all {len(items)} items (first error: {first}); nothing stored")
                return EXIT_JUDGE
        report = build_report(
            golden, items, scores, evaluator_version=version, gate=evaluation.gate, mode=mode,
            judged_dimensions=judged if mode == "live" else None,
            unmatched_ids=unmatched, duplicate_score_ids=score_dups, judge_errors=len(errors), judge_spend=spend,
            n_resamples=args.bootstrap, seed=args.seed,
            scores_path=str(args.scores) if args.scores else None,
        )
        try:
            path = write_report(report, storage)
        except OSError as exc:  # was a traceback (e.g. --data-dir names a file, or a read-only folder)
            warn(f"cannot store the report under {storage}: {exc.strerror or exc}; "
                  "pass --data-dir DIR (a writable folder) or set storage.path")
            return EXIT_INPUT
    except (GoldenError, ConfigError) as exc:
        warn(str(in_config_file(exc, args.config)))
        return EXIT_INPUT
    for item_id, message in list(errors.items())[:5]:
        warn(f"warning: judge failed on {item_id}: {message}")
    _coverage_warnings(report, report["scores"])
    if report["skipped_dimensions"]:
        warn(f"note: the judge's rubric does not score {', '.join(report['skipped_dimensions'])}; "
             "those labels are left out of the statistics and the gate")
    for dim, stats in report["dimensions"].items():
        if stats["n"] == 0:
            warn(f"warning: no judge scores for dimension {dim!r}")
    if args.json:
        print(report_json(report))
        warn(f"report written to {path}")
    else:
        _print_table(report, path)
    if args.gate and not report["gate"]["passed"]:
        for failure in report["gate"]["failures"]:
            warn(f"gate failed: {failure}")
        return EXIT_GATE
    return EXIT_OK


def main(argv: list[str] | None = None, *, judge: Judge | None = None) -> int:
    """Standalone entry point: ``python -m infersight.evaluation.calibrate_cli --golden FILE ...``."""
    parser = argparse.ArgumentParser(prog="infersight eval calibrate",
                                     description="Check an LLM judge against human-labelled golden data.")
    add_arguments(parser)
    return run(parser.parse_args(argv), judge=judge)


if __name__ == "__main__":
    raise SystemExit(main())
