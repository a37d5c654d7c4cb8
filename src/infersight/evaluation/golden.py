"""Golden sets (human-labelled responses) and judge score files, loaded and validated.

A golden file is JSON lines with the fields ``id, dataset, task, prompt, response, reference,
labels{...}, label_scale`` (see ``extdata/golden``). Human label names differ per data set, so each
supported data set has an explicit mapping onto the judge's dimensions (docs/calibration.md):

==================  ===============  ==================  =========================================
dataset             golden label     judge dimension     kind
==================  ===============  ==================  =========================================
SummEval            relevance        relevance           Likert 1-5 (mean of 3 experts, e.g. 4.33)
SummEval            coherence        coherence           Likert 1-5
SummEval            consistency      factual_fidelity    Likert 1-5
SummEval            fluency          (none: skipped)     the judge has no fluency dimension
HaluEval-general    hallucination    no_hallucination    binary: human "no" = 1, "yes" = 0
==================  ===============  ==================  =========================================

Any other data set may use labels named exactly after judge dimensions (1-5 numbers); they map to
themselves, and every line must carry every such label that any line carries. Every error names the file
and the line, so a broken golden set is fixed, not guessed at.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from infersight.evaluation.rubric import DIMENSION_NAMES

JUDGE_DIMENSIONS: tuple[str, ...] = DIMENSION_NAMES
"""The judge's fixed dimensions, each scored 1-5 with 5 best (owned by ``rubric``)."""

JUDGE_MIN, JUDGE_MAX = 1.0, 5.0
NO_HALLUCINATION_THRESHOLD = 3.0
"""A judge ``no_hallucination`` score at or above this counts as "no hallucination" (binary 1)."""

LabelKind = Literal["likert", "binary"]


class GoldenError(ValueError):
    """A golden or scores file that cannot be used; the message names the file and line."""

    def __init__(self, message: str, *, path: str | Path, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True, slots=True)
class LabelMapping:
    """How one golden label becomes a human value on one judge dimension."""

    label: str
    dimension: str
    kind: LabelKind = "likert"
    positive: str | None = None  # binary: the label value that counts as 1 (good)
    negative: str | None = None  # binary: the label value that counts as 0
    threshold: float | None = None  # binary: judge score >= threshold => 1

    def human_value(self, raw: Any) -> float:
        """The human value as a number (Likert 1-5 as given; binary 1/0), or ValueError."""
        if self.kind == "binary":
            if raw == self.positive:
                return 1.0
            if raw == self.negative:
                return 0.0
            raise ValueError(f"label {self.label!r} must be {self.positive!r} or {self.negative!r}, got {raw!r}")
        if not _is_number(raw):
            raise ValueError(f"label {self.label!r} must be a number, got {_show(raw)}")
        if not JUDGE_MIN <= raw <= JUDGE_MAX:
            raise ValueError(f"label {self.label!r} must be within 1-5, got {_show(raw)} "
                             "(the judge's scale: rescale labels on another scale to 1-5 first)")
        return float(raw)


def _is_number(value: Any) -> bool:
    """A JSON number that is finite. ``math.isfinite`` is not asked about ints: on one too large for
    a float (``9999...``, 400 digits) it raised OverflowError, a traceback instead of file:line."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _show(value: Any) -> str:
    """``repr`` cut short: a huge number or string is named, not printed whole."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


DATASET_MAPPINGS: dict[str, tuple[LabelMapping, ...]] = {
    "SummEval": (
        LabelMapping("relevance", "relevance"),
        LabelMapping("coherence", "coherence"),
        LabelMapping("consistency", "factual_fidelity"),
        # fluency: no judge dimension; deliberately not calibrated.
    ),
    "HaluEval-general": (
        LabelMapping(
            "hallucination", "no_hallucination", kind="binary", positive="no", negative="yes",
            threshold=NO_HALLUCINATION_THRESHOLD,
        ),
    ),
}


def mappings_for(dataset: str, labels: Collection[str]) -> tuple[LabelMapping, ...]:
    """The label mappings of a data set; unknown data sets map labels named after judge dimensions
    (``labels``: the label names of the whole file, so the mapping does not depend on line order)."""
    if dataset in DATASET_MAPPINGS:
        return DATASET_MAPPINGS[dataset]
    own = tuple(LabelMapping(name, name) for name in JUDGE_DIMENSIONS if name in labels)
    if not own:
        supported = ", ".join(sorted(DATASET_MAPPINGS))
        raise ValueError(
            f"no judge-dimension mapping for dataset {dataset!r} (supported: {supported}; "
            f"or name labels after judge dimensions: {', '.join(JUDGE_DIMENSIONS)})"
        )
    return own


@dataclass(frozen=True, slots=True)
class GoldenItem:
    """One human-labelled response; ``human`` holds the mapped values per judge dimension."""

    id: str
    dataset: str
    prompt: str
    response: str
    reference: str | None
    labels: dict[str, Any]
    human: dict[str, float]
    line: int
    task: str | None = None
    label_scale: str | None = None


@dataclass(slots=True)
class GoldenSet:
    """A validated golden file. Items whose id occurs more than once are set apart in ``duplicates``:
    scores are matched by id, so such items cannot be attributed and are excluded from calibration."""

    path: Path
    dataset: str
    mappings: tuple[LabelMapping, ...]
    items: list[GoldenItem]
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # id -> line numbers
    all_ids: frozenset[str] = frozenset()
    sha256: str = ""  # of the file's bytes as read: which revision of the golden set a report measured

    @property
    def dimensions(self) -> list[str]:
        return [m.dimension for m in self.mappings]


def read_json_lines(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """The file's JSON object lines with their numbers, and the sha256 of its bytes."""
    if path.is_dir():
        raise GoldenError("is a folder, not a file; name the JSON lines file in it", path=path)
    if not path.is_file():
        raise GoldenError("file not found", path=path)
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GoldenError(f"cannot be read ({exc.strerror or exc})", path=path) from None
    digest = hashlib.sha256(data).hexdigest()
    data = data.removeprefix(codecs.BOM_UTF8)  # editors on Windows save one; json.loads refuses it
    for number, raw in enumerate(data.splitlines(), start=1):
        try:  # line by line, so that a bad byte is reported with its line (was a UnicodeDecodeError)
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GoldenError(f"not UTF-8 text (byte {exc.start} of the line); save the file as UTF-8",
                              path=path, line=number) from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GoldenError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=number) from None
        except RecursionError:
            raise GoldenError("invalid JSON: nested too deeply", path=path, line=number) from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits (int's conversion limit)
            raise GoldenError(f"invalid JSON: {str(exc)[:80]}", path=path, line=number) from None
        if not isinstance(row, dict):
            raise GoldenError("each line must be a JSON object", path=path, line=number)
        rows.append((number, row))
    if not rows:
        raise GoldenError("no items", path=path)
    return rows, digest


def string_field(row: dict[str, Any], key: str, path: Path, line: int, *, optional: bool = False) -> str | None:
    """A text field of a JSON-lines row; a wrong type raises ``GoldenError`` naming the file and line."""
    value = row.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (key == "id" and not value):
        kind = "a string or null" if optional else "a non-empty string" if key == "id" else "a string"
        raise GoldenError(f"field {key!r} must be {kind}", path=path, line=line)
    return value


def load_golden(path: str | Path) -> GoldenSet:
    """Read and validate a golden JSONL file (one data set per file)."""
    file = Path(path)
    items: list[GoldenItem] = []
    lines_by_id: dict[str, list[int]] = {}
    dataset: str | None = None
    mappings: tuple[LabelMapping, ...] = ()
    rows, digest = read_json_lines(file)
    first = rows[0][1].get("dataset")  # the mapping of a file of its own labels is the union over its lines
    label_names = {name for _, row in rows if row.get("dataset") == first and isinstance(row.get("labels"), dict)
                   for name in row["labels"]}
    for line, row in rows:
        item_id = string_field(row, "id", file, line)
        name = string_field(row, "dataset", file, line)
        assert item_id is not None and name is not None
        labels = row.get("labels")
        if not isinstance(labels, dict):
            raise GoldenError("field 'labels' must be an object", path=file, line=line)
        if dataset is None:
            dataset = name
            try:
                mappings = mappings_for(name, label_names)
            except ValueError as exc:
                raise GoldenError(str(exc), path=file, line=line) from None
        elif name != dataset:
            raise GoldenError(f"mixed datasets: {name!r} after {dataset!r}; use one file per dataset",
                              path=file, line=line)
        human: dict[str, float] = {}
        for mapping in mappings:
            if mapping.label not in labels:
                calibrated = ", ".join(m.label for m in mappings)
                raise GoldenError(f"missing label {mapping.label!r} (every line needs every calibrated label: "
                                  f"{calibrated})", path=file, line=line)
            try:
                human[mapping.dimension] = mapping.human_value(labels[mapping.label])
            except ValueError as exc:
                raise GoldenError(str(exc), path=file, line=line) from None
        response = string_field(row, "response", file, line)
        assert response is not None
        items.append(GoldenItem(
            id=item_id, dataset=name, prompt=string_field(row, "prompt", file, line) or "", response=response,
            reference=string_field(row, "reference", file, line, optional=True), labels=labels, human=human, line=line,
            task=row.get("task") if isinstance(row.get("task"), str) else None,
            label_scale=row.get("label_scale") if isinstance(row.get("label_scale"), str) else None,
        ))
        lines_by_id.setdefault(item_id, []).append(line)
    assert dataset is not None
    duplicates = {i: lines for i, lines in lines_by_id.items() if len(lines) > 1}
    unique = [item for item in items if item.id not in duplicates]
    return GoldenSet(file, dataset, mappings, unique, duplicates, frozenset(lines_by_id), digest)


@dataclass(slots=True)
class ScoresFile:
    """Judge scores keyed by golden id: ``{"id": ..., "scores": {dimension: value | null}}`` per line.

    An id given more than once is ambiguous (which score is the judge's?), so it is kept out of
    ``scores`` and listed in ``duplicates``; its golden item then counts as missing a score."""

    path: Path
    scores: dict[str, dict[str, float | None]]
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # id -> line numbers


def load_scores(path: str | Path) -> ScoresFile:
    """Read a scores file; values must be numbers within 1-5 (null: the judge gave none)."""
    file = Path(path)
    scores: dict[str, dict[str, float | None]] = {}
    lines_by_id: dict[str, list[int]] = {}
    for line, row in read_json_lines(file)[0]:
        item_id = row.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise GoldenError("field 'id' must be a non-empty string", path=file, line=line)
        lines_by_id.setdefault(item_id, []).append(line)
        raw = row.get("scores")
        if not isinstance(raw, dict):
            raise GoldenError("field 'scores' must be an object of dimension: number", path=file, line=line)
        parsed: dict[str, float | None] = {}
        for dim, value in raw.items():
            if value is None:
                parsed[dim] = None
                continue
            if not _is_number(value):
                raise GoldenError(f"score {dim!r} must be a number or null, got {_show(value)}", path=file, line=line)
            if not JUDGE_MIN <= value <= JUDGE_MAX:
                raise GoldenError(f"score {dim!r} must be within 1-5, got {_show(value)}", path=file, line=line)
            parsed[dim] = float(value)
        scores[item_id] = parsed
    duplicates = {i: lines for i, lines in lines_by_id.items() if len(lines) > 1}
    for item_id in duplicates:
        del scores[item_id]
    return ScoresFile(file, scores, duplicates)
