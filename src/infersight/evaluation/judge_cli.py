"""What the judge commands (``eval calibrate``, ``eval compare``) share: option parsing, settings,
building the configured judge, the progress bar and stderr messages.

Kept apart so both commands fail the same way on the same mistake (a missing judge URL names
``evaluation.judge.url``; a bad rubric names ``evaluation.judge``) and draw the same progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from infersight.config import ConfigError, StorageSettings, load_judge_settings
from infersight.evaluation.rubric import Rubric
from infersight.evaluation.settings import EvaluationSettings, JudgeSettings


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def warn(message: str) -> None:
    """A note, warning or error on stderr (stdout stays the report, so ``--json`` output parses)."""
    print(f"infersight: {message}", file=sys.stderr)


def evaluation_settings(config: str | None, data_dir: str | None) -> tuple[EvaluationSettings, str]:
    """``evaluation`` and the storage path from ``--config`` (defaults without one); ``--data-dir`` wins."""
    if config:
        evaluation, storage_settings = load_judge_settings(config)
        storage = storage_settings.path
    else:
        evaluation, storage = EvaluationSettings(), StorageSettings().path
    return evaluation, data_dir or storage


def make_judge(settings: JudgeSettings, *, rubric: str | Rubric | None = None, kind: str | None = None,
               without_url: str) -> Any:
    """The configured ``LLMJudge`` (with ``rubric`` instead of ``settings.rubric`` when given; of
    rubric ``kind`` when given).

    ``without_url`` ends the error when no judge URL is configured: what else the user could do."""
    if settings.url is None:
        raise ConfigError(f"is not set: {without_url}", key="evaluation.judge.url")
    from infersight.evaluation.llm_judge import LLMJudge  # lazy: the judge pulls in HTTP clients

    try:
        return LLMJudge.from_settings(settings, rubric=rubric, kind=kind)
    except ValueError as exc:  # a missing key variable or a bad rubric
        raise ConfigError(str(exc), key="evaluation.judge") from None


def in_config_file(exc: Exception, config: Any) -> Exception:
    """A config key's error raised past the loader (the judge could not be built) with the file the
    user passed as ``--config``: every config error names the key and the file."""
    if isinstance(exc, ConfigError) and exc.path is None and config and (exc.key or "").startswith(
            ("evaluation.", "storage.")):
        return ConfigError(exc.detail, path=str(config), key=exc.key)
    return exc


def judging_progress(show: bool) -> Progress:
    """The progress bar of a live judge run, on stderr; ``show`` False draws nothing."""
    return Progress(
        TextColumn("judging"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show,
    )


Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Judged(Generic[Result]):
    """What a run of the judge gave: results and errors by item id, and what the failed calls spent
    (a ``JudgeError`` carries the tokens and cost of its attempts: they were paid for all the same)."""

    results: dict[str, Result] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    error_tokens: int = 0
    error_cost: float = 0.0


async def judge_each(
    judge: object,
    items: Sequence[Item],
    ask: Callable[[Item], Awaitable[Result]],
    *,
    item_id: Callable[[Item], str],
    concurrency: int,
    show_progress: bool,
    close_judge: bool,
) -> Judged[Result]:
    """``ask`` about every item with at most ``concurrency`` calls in flight, drawing the progress bar.

    A failed call does not stop the run: its error is kept by the item's id and the item left out,
    so one bad reply cannot cost a thousand good ones. ``close_judge``: the judge was built here and
    its HTTP client is closed at the end (``aclose``)."""
    gate = asyncio.Semaphore(concurrency)
    judged: Judged[Result] = Judged()
    progress = judging_progress(show_progress)
    task = progress.add_task("judging", total=len(items))

    async def one(item: Item) -> None:
        async with gate:
            try:
                judged.results[item_id(item)] = await ask(item)
            except Exception as exc:  # noqa: BLE001 - one bad call must not end the run
                # a JudgeError's message names statuses and error kinds only; another exception's may
                # quote the item (the CLIs print these): its type alone. (Imported here: `serve` builds
                # this CLI's parser, and the judge's module brings aiohttp into the gateway.)
                from infersight.evaluation.llm_judge import JudgeError

                judged.errors[item_id(item)] = f"JudgeError: {exc}" if isinstance(exc, JudgeError) else type(exc).__name__
                judged.error_tokens += int(getattr(exc, "prompt_tokens", 0)) + int(getattr(exc, "completion_tokens", 0))
                judged.error_cost += float(getattr(exc, "cost", 0.0))
            finally:
                progress.advance(task)

    try:
        with progress:
            await asyncio.gather(*(one(item) for item in items))
    finally:
        close = getattr(judge, "aclose", None) if close_judge else None
        if callable(close):
            await close()
    return judged
