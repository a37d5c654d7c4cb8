"""Audit of ``infersight eval compare`` as a team A/B-testing two models would run it: the simulated
judge (``sim-judge``) over real HTTP on 127.0.0.1, the packaged pairwise rubric, the real CLI.

Only tests that fail because of a defect are kept here."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infersight.cli import main as cli_main
from infersight.sim.judge import sim_judge_profile
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=11, profiles={"sim-judge": sim_judge_profile(2.0)}) as server:
        yield server


def _config(tmp_path: Path, sim: SimServer) -> Path:
    path = tmp_path / "judge.yaml"
    path.write_text(json.dumps({"evaluation": {"judge": {
        "url": sim.url, "model": "sim-judge", "max_retries": 0,
        "input_price_per_1m": 0.15, "output_price_per_1m": 0.6}}}))
    return path


def _pairs(tmp_path: Path, n: int = 12) -> Path:
    """B right and A wrong on every bank question: B is clearly better."""
    rows = []
    for i in range(n):
        q = QUESTION_BANK[i % len(QUESTION_BANK)]
        rows.append({"id": f"p{i}", "prompt": q.question, "response_a": f"It is {q.wrong[0]}.",
                     "response_b": f"{q.correct.capitalize()}."})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _compare(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = cli_main(["eval", "compare", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_a_failed_out_write_after_a_paid_run_still_prints_the_report(
        sim: SimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: when writing ``--out`` fails at the end (disk full, folder removed meanwhile, quota),
    ``run`` returns exit 2 *before* printing the report, so the whole comparison the team just paid
    the judge for (every pair, both orders) is thrown away: stdout is empty, no win rate, no verdict,
    no spend. ``_check_writable`` cannot foresee such failures, so the report must not depend on the
    verdict file: it should still be printed (and the failure reported with a non-zero exit)."""
    code, out, err = _compare(capsys, ["--pairs", str(_pairs(tmp_path)), "--config", str(_config(tmp_path, sim)),
                                       "--json", "--out", "/dev/full"])
    assert "cannot write /dev/full" in err
    assert code != 0
    assert out.strip(), f"the judged comparison was discarded; stderr: {err}"
    report = json.loads(out)
    assert report["n_compared"] == 12 and report["verdict"] == "b_better"


def test_out_naming_the_pairs_file_is_refused_before_it_overwrites_the_input(
        sim: SimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: ``--out`` equal to ``--pairs`` (a one-word slip in a CI script) passes
    ``_check_writable``, the judge is paid for every pair, and then the verdict rows overwrite the
    team's pairs file: the two systems' answers are gone, and the report's ``pairs`` /
    ``pairs_sha256`` (there for reproducibility) name a file that no longer holds the pairs. The docs
    say ``--out`` is "checked before the judge is called"; the same file as the input should be
    refused there with exit 2 (compare resolved paths)."""
    pairs = _pairs(tmp_path)
    before = pairs.read_bytes()
    code, out, err = _compare(capsys, ["--pairs", str(pairs), "--config", str(_config(tmp_path, sim)),
                                       "--json", "--out", str(pairs)])
    after = pairs.read_bytes()
    assert after == before, (f"exit {code}: the pairs file was overwritten by the verdicts; its sha256 is now "
                             f"{hashlib.sha256(after).hexdigest()[:12]}, the report says "
                             f"{json.loads(out)['pairs_sha256'][:12] if out.strip() else '-'}")
    assert code == 2 and "--out" in err


def test_a_bad_rubric_given_with_dash_dash_rubric_is_not_blamed_on_the_config_file(
        sim: SimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: a ``--rubric FILE`` that is missing or invalid is reported as
    ``config error in judge.yaml: evaluation.judge: rubric file '...'``: ``make_judge`` raises it
    under key ``evaluation.judge`` and ``in_config_file`` pins it on ``--config``. The config file is
    fine and its ``evaluation.judge`` was never at fault; the option the user typed was. A wrong
    kind of rubric from the same option is rightly named ``--rubric`` (compare_cli.run), so the same
    mistake is attributed differently depending on what is wrong with the file. The error should
    name ``--rubric`` (and the rubric file), not the config file's key."""
    config = _config(tmp_path, sim)
    broken = tmp_path / "our_pairwise.yaml"
    broken.write_text("name: ours\nkind: pairwise\n")  # no version, dimensions, prompts
    code, out, err = _compare(capsys, ["--pairs", str(_pairs(tmp_path, 2)), "--config", str(config),
                                       "--rubric", str(broken)])
    assert code == 2 and not out
    assert str(broken) in err
    assert "--rubric" in err, err
    assert f"config error in {config}" not in err, err
