"""Judge rubrics: versioned YAML files that hold everything a judge prompt is made of.

A rubric is data, not code, so that changing what the judge is asked is a reviewed file change, and
so that the file's full text can go into the judge's ``evaluator_version`` (see ``llm_judge``).
Two rubrics ship in the package (``default``, pointwise; ``pairwise``); any other is a file path.
The format is described in docs/judge.md. Loading validates strictly: every error names the file
and the key, because a typo in a rubric would otherwise surface as odd scores weeks later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml

DIMENSION_NAMES: tuple[str, ...] = (
    "relevance", "coherence", "factual_fidelity", "no_hallucination", "no_undue_refusal",
    "tone_compliance",
)
"""The quality dimensions of the whole project (each 1-5, 5 best); a rubric uses some or all."""

PAIRWISE_WINNERS: tuple[str, ...] = ("A", "B", "tie")
RubricKind = Literal["pointwise", "pairwise"]

_TOP_KEYS = {
    "name": True, "version": True, "kind": True, "description": False, "dimensions": True,
    "system_prompt": True, "user_template": True, "reference_template": False, "examples": False,
}
_REQUIRED_SLOTS: dict[str, tuple[str, ...]] = {
    "pointwise": ("question", "answer"),
    "pairwise": ("question", "answer_a", "answer_b"),
}
_KNOWN_SLOTS: dict[str, frozenset[str]] = {  # what _fill is given for each template
    "system_prompt": frozenset({"dimensions", "schema"}),
    "user_template": frozenset({"question", "answer", "answer_a", "answer_b", "reference_section"}),
    "reference_template": frozenset({"reference"}),
}
_SLOT_RE = re.compile(r"\{\{\s*(\w+)\s*\}\}")  # {{ name }} too: a Jinja habit must not reach the judge literally
_SECTION_TAGS = ("question", "reference", "answer", "answer_a", "answer_b")  # the packaged rubrics' own
# a tag name as a rubric's template writes one (``<response>``, ``</context>``): its own sections
_TEMPLATE_TAG_RE = re.compile(r"<\s*/?\s*([A-Za-z_][\w.-]*)")


def _tag_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    """Section tags as an XML reader (or a judge) would take them: spaces inside, attributes, any case."""
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"<\s*(/?)\s*({alternatives})\b([^<>]*)>", re.I)


_TAG_RE = _tag_pattern(_SECTION_TAGS)


class RubricError(ValueError):
    """A rubric file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    description: str
    anchors: tuple[str, str, str, str, str]  # the meaning of scores 1..5


@dataclass(frozen=True, slots=True)
class Example:
    """One few-shot example: inputs, then the verdict the judge should give (scores or winner)."""

    question: str
    answer: str = ""
    answer_a: str = ""
    answer_b: str = ""
    reference: str | None = None
    scores: tuple[tuple[str, int, str], ...] = ()  # (dimension, score, explanation)
    winner: str = ""
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class Rubric:
    """A loaded, validated rubric. ``text`` is the file's full text (part of the evaluator version)."""

    name: str
    version: str
    kind: RubricKind
    description: str
    dimensions: tuple[Dimension, ...]
    system_prompt: str
    user_template: str
    reference_template: str
    examples: tuple[Example, ...]
    source: str
    text: str
    # the tags content may not open or close: ours and every tag the rubric's templates write
    tags: re.Pattern[str] = _TAG_RE

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def schema(self) -> str:
        """The JSON shape the judge must reply with, as shown to it."""
        if self.kind == "pairwise":
            return '{"explanation": "<one short sentence>", "winner": "A" | "B" | "tie"}'
        rows = ",\n".join(
            f'  "{d}": {{"explanation": "<one short sentence>", "score": <integer 1-5>}}'
            for d in self.dimension_names
        )
        return "{\n" + rows + "\n}"

    def system_message(self) -> str:
        dims = "\n".join(
            f"- {d.name}: {d.description}\n"
            + "\n".join(f"    {i}: {a}" for i, a in enumerate(d.anchors, start=1))
            for d in self.dimensions
        )
        return _fill(self.system_prompt, dimensions=dims, schema=self.schema()).strip()

    def user_message(
        self, question: str, answer: str = "", reference: str | None = None, *,
        answer_a: str = "", answer_b: str = "",
    ) -> str:
        """The task message; content goes in verbatim except that our section tags are defused."""
        tags = self.tags
        ref = ""
        if reference:
            ref = _fill(self.reference_template, reference=_defuse(reference, tags))
        return _fill(
            self.user_template, question=_defuse(question, tags), answer=_defuse(answer, tags),
            answer_a=_defuse(answer_a, tags), answer_b=_defuse(answer_b, tags), reference_section=ref,
        ).strip()

    def messages(
        self, question: str, answer: str = "", reference: str | None = None, *,
        answer_a: str = "", answer_b: str = "",
    ) -> list[dict[str, str]]:
        """Chat messages: system, the few-shot examples as earlier turns, then the task."""
        out = [{"role": "system", "content": self.system_message()}]
        for ex in self.examples:
            out.append({"role": "user", "content": self.user_message(
                ex.question, ex.answer, ex.reference, answer_a=ex.answer_a, answer_b=ex.answer_b)})
            out.append({"role": "assistant", "content": self._example_reply(ex)})
        out.append({"role": "user", "content": self.user_message(
            question, answer, reference, answer_a=answer_a, answer_b=answer_b)})
        return out

    def _example_reply(self, ex: Example) -> str:
        if self.kind == "pairwise":
            return orjson.dumps({"explanation": ex.explanation, "winner": ex.winner}).decode()
        return orjson.dumps({d: {"explanation": e, "score": s} for d, s, e in ex.scores}).decode()


def _fill(template: str, **values: str) -> str:
    """Replace ``{{key}}`` slots (not ``str.format``: prompts are full of JSON braces)."""
    return _SLOT_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _defuse(text: str, tags: re.Pattern[str] = _TAG_RE) -> str:
    """Break section tags inside content, so an answer cannot open or close a section: the
    ``<`` becomes ``&lt;``, which no reader takes for a tag (``< /answer>``, what this wrote
    before, the widened pattern itself read as one). ``tags``: the rubric's (``Rubric.tags``), so a
    team rubric's ``<response>`` is defended as our ``<answer>`` is."""
    return tags.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}{m.group(3)}>", text)


def packaged_rubrics() -> list[str]:
    """Names of the rubrics shipped with infersight."""
    folder = resources.files("infersight.evaluation") / "rubrics"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_rubric(name_or_path: str | Path, kind: str | None = None) -> Rubric:
    """A packaged rubric by name (``default``, ``pairwise``), else a YAML file by path; with
    ``kind``, one of that kind (``expect_kind``)."""
    rubric = _load_rubric(name_or_path)
    if kind is not None:
        expect_kind(rubric, kind)
    return rubric


def expect_kind(rubric: Rubric, kind: str) -> Rubric:
    """``rubric``, or a ``RubricError`` naming it when it is not of ``kind``: a pairwise rubric as the
    pipeline's judge made every sampled task an ``_error`` row, a silent total loss of scores."""
    if rubric.kind != kind:
        raise RubricError(f"rubric '{rubric.source}' (name {rubric.name}) is {rubric.kind}; "
                          f"this judge needs a {kind} rubric (evaluation.judge.rubric)")
    return rubric


def _load_rubric(name_or_path: str | Path) -> Rubric:
    ref = str(name_or_path)
    path = Path(ref)
    if re.fullmatch(r"[\w-]+", ref):  # a packaged name; else a file of that name (``faith``, no extension)
        res = resources.files("infersight.evaluation") / "rubrics" / f"{ref}.yaml"
        if res.is_file():
            return parse_rubric(res.read_text(encoding="utf-8"), source=str(res))
        if not path.is_file():
            raise RubricError(
                f"rubric '{ref}' is neither a packaged rubric ({', '.join(packaged_rubrics())}) "
                "nor a file path"
            )
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise RubricError(f"rubric file '{path}': cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:  # was a bare UnicodeDecodeError that named no file
        raise RubricError(f"rubric file '{path}': not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return parse_rubric(text, source=str(path))


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load``, but a repeated key is an error: PyYAML keeps the last one, so a second
    ``system_prompt:`` or ``dimensions:`` replaced the first without a word (as in ``config``)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "", source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def _refuse_duplicate_keys(node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    """Walk the YAML nodes before they become a dict (which keeps only the last of two keys)."""
    if id(node) in seen:  # an alias (possibly recursive): checked once
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            where = f"{path}.{name}" if path else name
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    raise RubricError(f"rubric file '{source}': key '{where}': "
                                      f"given twice (line {key.start_mark.line + 1}); only one may be given")
                keys.add(key.value)
            _refuse_duplicate_keys(value, where, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{index}]", source, seen)


def parse_rubric(text: str, source: str = "<string>") -> Rubric:
    """Validate rubric YAML ``text``; ``source`` names it in errors.

    The text is normalised first (a UTF-8 BOM dropped, CRLF and CR line ends made LF), as packaged
    rubrics are read: the same rubric saved on Windows is the same judge, so the same
    ``evaluator_version`` (the hash covers ``Rubric.text``)."""
    def fail(key: str, problem: str) -> RubricError:
        return RubricError(f"rubric file '{source}': key '{key}': {problem}")

    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    try:
        data = _safe_load(text, source)
    except yaml.YAMLError as e:
        raise RubricError(f"rubric file '{source}': not valid YAML: {e}") from None
    except RecursionError:  # PyYAML's composer on deeply nested flow collections: not a YAMLError
        raise RubricError(f"rubric file '{source}': nested too deeply to read") from None
    if not isinstance(data, dict):
        raise RubricError(f"rubric file '{source}': the top level must be a mapping")
    for key in data:
        if not isinstance(key, str) or key not in _TOP_KEYS:
            raise fail(str(key), f"unknown key (allowed: {', '.join(_TOP_KEYS)})")
    for key, required in _TOP_KEYS.items():
        if required and key not in data:
            raise fail(key, "missing")

    def text_of(key: str, value: Any, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            hint = " (quote it: YAML reads 2026-11-22 as a date)" if key == "version" else ""
            raise fail(key, f"must be a non-empty string{hint}")
        return value

    name = text_of("name", data["name"])
    version = text_of("version", data["version"])
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in _REQUIRED_SLOTS:  # a list here raised TypeError (unhashable)
        raise fail("kind", "must be 'pointwise' or 'pairwise'")
    dims = _dimensions(data["dimensions"], fail)
    system = text_of("system_prompt", data["system_prompt"])
    user = text_of("user_template", data["user_template"])
    user_slots = set(_SLOT_RE.findall(user))  # {{ name }} is a slot too, as _fill reads it
    for slot in _REQUIRED_SLOTS[kind]:
        if slot not in user_slots:
            raise fail("user_template", f"must contain {{{{{slot}}}}}")
    ref_tpl = text_of("reference_template", data.get("reference_template", ""), allow_empty=True)
    if ref_tpl and "reference" not in _SLOT_RE.findall(ref_tpl):
        raise fail("reference_template", "must contain {{reference}}")
    if ref_tpl and "reference_section" not in user_slots:
        raise fail("user_template", "must contain {{reference_section}} when a reference_template is set")
    for key, template in (("system_prompt", system), ("user_template", user), ("reference_template", ref_tpl)):
        unknown = sorted(set(_SLOT_RE.findall(template)) - _KNOWN_SLOTS[key])
        if unknown:  # a typo'd slot would reach the judge literally: its scores off, with no word
            raise fail(key, f"unknown slot {{{{{unknown[0]}}}}} (known: "
                            f"{', '.join('{{' + x + '}}' for x in sorted(_KNOWN_SLOTS[key]))})")
    examples = _examples(data.get("examples") or [], kind, tuple(d.name for d in dims), fail)
    for i, example in enumerate(examples):
        if example.reference and not ref_tpl:  # the judge would be shown its verdict, not its grounds
            raise fail(f"examples[{i}].reference", "needs a reference_template to be shown to the judge; "
                                                   "add one (with {{reference}}) or remove the reference")
    own_tags = _TEMPLATE_TAG_RE.findall(user + "\n" + ref_tpl)
    desc = data.get("description") or ""
    return Rubric(
        name=name, version=version, kind=kind, description=text_of("description", desc, True).strip(),
        dimensions=dims, system_prompt=system, user_template=user, reference_template=ref_tpl,
        examples=examples, source=source, text=text,
        tags=_TAG_RE if set(own_tags) <= set(_SECTION_TAGS) else _tag_pattern((*_SECTION_TAGS, *own_tags)),
    )


def _dimensions(raw: Any, fail: Any) -> tuple[Dimension, ...]:
    if not isinstance(raw, list) or not raw:
        raise fail("dimensions", "must be a non-empty list")
    out: list[Dimension] = []
    for i, d in enumerate(raw):
        key = f"dimensions[{i}]"
        if not isinstance(d, dict):
            raise fail(key, "must be a mapping with name, description, anchors")
        extra = set(d) - {"name", "description", "anchors"}
        if extra:  # sorted as text: an int and a str key together raised TypeError
            raise fail(f"{key}.{sorted(map(str, extra))[0]}", "unknown key (allowed: name, description, anchors)")
        name = d.get("name")
        if name not in DIMENSION_NAMES:
            raise fail(f"{key}.name", f"{name!r} is not one of {', '.join(DIMENSION_NAMES)}")
        if any(o.name == name for o in out):
            raise fail(f"{key}.name", f"{name!r} is listed twice")
        desc = d.get("description")
        if not isinstance(desc, str) or not desc.strip():
            raise fail(f"{key}.description", "must be a non-empty string")
        anchors = d.get("anchors")
        if not isinstance(anchors, dict):
            raise fail(f"{key}.anchors", "must map each score 1-5 to its meaning")
        if set(anchors) != {1, 2, 3, 4, 5}:
            missing = sorted({1, 2, 3, 4, 5} - set(anchors))
            problem = f"missing anchor {missing[0]}" if missing else "keys must be exactly 1, 2, 3, 4, 5"
            raise fail(f"{key}.anchors", problem)
        for score, meaning in anchors.items():
            if not isinstance(meaning, str) or not meaning.strip():
                raise fail(f"{key}.anchors.{score}", "must be a non-empty string")
        texts = tuple(anchors[s].strip() for s in range(1, 6))
        out.append(Dimension(name, desc.strip(), texts))  # type: ignore[arg-type]
    return tuple(out)


def _examples(raw: Any, kind: str, dims: tuple[str, ...], fail: Any) -> tuple[Example, ...]:
    if not isinstance(raw, list):
        raise fail("examples", "must be a list")
    out: list[Example] = []
    inputs = ("question", "answer") if kind == "pointwise" else ("question", "answer_a", "answer_b")
    verdict = ("scores",) if kind == "pointwise" else ("winner", "explanation")
    for i, ex in enumerate(raw):
        key = f"examples[{i}]"
        if not isinstance(ex, dict):
            raise fail(key, "must be a mapping")
        allowed = {*inputs, *verdict, "reference"}
        extra = set(ex) - allowed
        if extra:
            raise fail(f"{key}.{sorted(map(str, extra))[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in (*inputs, *verdict):
            if k not in ex:
                raise fail(f"{key}.{k}", "missing")
        for k in (*inputs, "explanation"):  # required text: an empty YAML value (null) raised AttributeError
            if k in ex and not isinstance(ex[k], str):
                raise fail(f"{key}.{k}", "must be a string")
        if ex.get("reference") is not None and not isinstance(ex["reference"], str):
            raise fail(f"{key}.reference", "must be a string")
        fields = {k: ex[k].strip() for k in inputs}
        ref = ex.get("reference")
        if kind == "pairwise":
            if ex["winner"] not in PAIRWISE_WINNERS:
                raise fail(f"{key}.winner", "must be A, B or tie")
            out.append(Example(**fields, reference=ref, winner=ex["winner"], explanation=ex["explanation"]))
            continue
        scores = ex["scores"]
        if not isinstance(scores, dict) or set(scores) != set(dims):
            raise fail(f"{key}.scores", f"must score exactly the rubric's dimensions: {', '.join(dims)}")
        rows: list[tuple[str, int, str]] = []
        for d in dims:
            value = scores[d]
            if isinstance(value, dict):
                value = [value.get("score"), value.get("explanation")]
            if (not isinstance(value, list) or len(value) != 2 or type(value[0]) is not int
                    or not 1 <= value[0] <= 5 or not isinstance(value[1], str)):
                raise fail(f"{key}.scores.{d}", "must be [score 1-5, explanation]")
            rows.append((d, value[0], value[1]))
        out.append(Example(**fields, reference=ref, scores=tuple(rows)))
    return tuple(out)


__all__ = [
    "DIMENSION_NAMES", "Dimension", "Example", "Rubric", "RubricError", "load_rubric",
    "packaged_rubrics", "parse_rubric",
]
