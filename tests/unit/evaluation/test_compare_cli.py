"""``infersight eval compare`` over real HTTP against the simulated judge (``sim-judge``) on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binomtest

from infersight.cli import main as cli_main
from infersight.evaluation.compare_cli import main
from infersight.evaluation.comparison import wilson_interval
from infersight.sim.judge import sim_judge_profile
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer

PROFILES = {
    "sim-judge": sim_judge_profile(2.0),
    "judge-positional": sim_judge_profile(2.0, position_bias=1.0),
    "judge-500": dataclasses.replace(sim_judge_profile(2.0), rate_500=1.0),
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, profiles=PROFILES) as server:
        yield server


def config(tmp_path: Path, sim: SimServer, model: str = "sim-judge", **judge: Any) -> Path:
    settings = {"url": sim.url, "model": model, "max_retries": 0, "input_price_per_1m": 0.15,
                "output_price_per_1m": 0.6, **judge}
    path = tmp_path / f"{model}.yaml"
    path.write_text(json.dumps({"evaluation": {"judge": settings}}))  # JSON is YAML
    return path


def pairs_file(tmp_path: Path, rows: list[dict[str, Any]], name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def migration_pairs(b_right: int, both_right: int) -> list[dict[str, Any]]:
    """Bank questions: B right and A wrong on ``b_right`` pairs, both right on ``both_right``."""
    rows = []
    for i in range(b_right + both_right):
        q = QUESTION_BANK[i % len(QUESTION_BANK)]
        a = f"{q.correct.capitalize()}." if i >= b_right else f"It is {q.wrong[0]}."
        rows.append({"id": f"p{i}", "prompt": q.question, "response_a": a, "response_b": f"{q.correct.capitalize()}."})
    return rows


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any] | None, str]:
    code = main([*argv, "--json", "--no-progress"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (7, 10), (30, 30), (18, 40), (512, 1000)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert wilson_interval(0, 0) is None


def test_a_better_b_is_found_with_its_win_rate_ci_and_cost(sim: SimServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = migration_pairs(b_right=24, both_right=6)
    out = tmp_path / "verdicts.jsonl"
    code, report, err = run_json(capsys, ["--pairs", str(pairs_file(tmp_path, rows)), "--config",
                                          str(config(tmp_path, sim)), "--name-a", "sim-small", "--name-b",
                                          "sim-large", "--out", str(out), "--gate", "--concurrency", "4"])
    assert code == 0, err
    assert report is not None and report["a"] == "sim-small" and report["b"] == "sim-large"
    assert report["n_items"] == report["n_compared"] == 30 and report["judge_errors"] == 0
    assert report["wins"] == {"a": 0, "b": 24, "tie": 6}
    assert report["position_flips"] == 0 and report["consistency"] == 1.0
    assert report["first_position_share"] == pytest.approx(0.5)  # B won as often shown first as second
    assert report["b_win_rate"] == 1.0 and report["verdict"] == "b_better"
    expected = binomtest(24, 24).proportion_ci(method="wilson")
    assert report["b_win_rate_ci"] == pytest.approx([expected.low, expected.high])
    assert report["judge_model"] == "sim-judge" and report["rubric"] == "pairwise"
    assert report["judge_tokens"] > 30 * 2 * 100 and report["judge_cost"] > 0
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["id"] for v in verdicts] == [r["id"] for r in rows]
    assert {v["winner"] for v in verdicts[:24]} == {"b"} and {v["winner"] for v in verdicts[24:]} == {"tie"}
    assert sum(v["judge_cost"] for v in verdicts) == pytest.approx(report["judge_cost"])


def test_the_gate_blocks_a_b_that_is_significantly_worse(sim: SimServer, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    swapped = [{**r, "response_a": r["response_b"], "response_b": r["response_a"]}
               for r in migration_pairs(b_right=12, both_right=0)]
    argv = ["--pairs", str(pairs_file(tmp_path, swapped)), "--config", str(config(tmp_path, sim))]
    code, report, err = run_json(capsys, [*argv, "--gate"])
    assert code == 3 and report is not None and report["verdict"] == "a_better"
    assert report["wins"] == {"a": 12, "b": 0, "tie": 0}
    assert "gate failed: B (B) is significantly worse than A (A)" in err
    code, _, _ = run_json(capsys, argv)  # without --gate the verdict is reported, not enforced
    assert code == 0
    few = swapped[:2]  # 2 of 2 for A is not significant: the gate lets it through
    code, report, _ = run_json(capsys, ["--pairs", str(pairs_file(tmp_path, few, "few.jsonl")), "--config",
                                        str(config(tmp_path, sim)), "--gate"])
    assert code == 0 and report is not None and report["verdict"] == "no_significant_difference"


def test_a_position_biased_judge_settles_nothing_and_says_so(sim: SimServer, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rows = migration_pairs(b_right=10, both_right=0)
    code, report, err = run_json(capsys, ["--pairs", str(pairs_file(tmp_path, rows)), "--config",
                                          str(config(tmp_path, sim, "judge-positional")), "--gate"])
    assert code == 0 and report is not None
    assert report["wins"] == {"a": 0, "b": 0, "tie": 10} and report["position_flips"] == 10
    assert report["consistency"] == 0.0 and report["first_position_share"] == 1.0
    assert report["verdict"] == "undecided" and report["b_win_rate"] is None and report["b_win_rate_ci"] is None
    assert "followed the position, not the answer, in 10 of 10 pairs" in err


def test_the_table_through_the_infersight_command(sim: SimServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = migration_pairs(b_right=6, both_right=2)
    code = cli_main(["eval", "compare", "--pairs", str(pairs_file(tmp_path, rows)), "--config",
                     str(config(tmp_path, sim)), "--name-a", "old", "--name-b", "new", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "old (A) vs new (B)" in out and "B wins 6, A wins 0, ties 2" in out
    assert "B win rate 100.0% of decisive pairs, 95% CI" in out and "B answers better" in out


def test_judge_failures_are_counted_and_a_judge_down_is_exit_1(sim: SimServer, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rows = migration_pairs(b_right=3, both_right=0)
    code, report, err = run_json(capsys, ["--pairs", str(pairs_file(tmp_path, rows)), "--config",
                                          str(config(tmp_path, sim, "judge-500"))])
    assert code == 1 and report is None
    assert "the judge failed on all 3 pairs" in err


@pytest.mark.parametrize(("rows", "message"), [
    ([{"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"},
      {"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"}], "pairs.jsonl:2: id 'x' is also on line 1"),
    ([{"id": "x", "prompt": "q", "response_a": "a"}], "pairs.jsonl:1: field 'response_b' must be a string"),
    ([{"id": "", "prompt": "q", "response_a": "a", "response_b": "b"}], "field 'id' must be a non-empty string"),
])
def test_a_bad_pairs_file_is_exit_2_naming_file_and_line(sim: SimServer, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         rows: list[dict[str, Any]], message: str) -> None:
    code, report, err = run_json(capsys, ["--pairs", str(pairs_file(tmp_path, rows)), "--config",
                                          str(config(tmp_path, sim))])
    assert code == 2 and report is None and message in err


def test_a_pointwise_rubric_or_no_judge_url_is_exit_2(sim: SimServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pairs = str(pairs_file(tmp_path, migration_pairs(b_right=1, both_right=0)))
    code, _, err = run_json(capsys, ["--pairs", pairs, "--config", str(config(tmp_path, sim)), "--rubric", "default"])
    assert code == 2 and "rubric 'default' is pointwise; eval compare needs a pairwise rubric" in err
    code, _, err = run_json(capsys, ["--pairs", pairs])
    assert code == 2 and "evaluation.judge.url" in err and "needs a judge endpoint" in err


class _HalfFailingJudge:
    """Answers B on even pairs; on odd ones fails after paying for its attempts, as LLMJudge does."""

    evaluator_version = "fake-v1"
    judge_model = "fake"

    def __init__(self) -> None:
        self.calls = 0

    async def compare(self, prompt: str, response_a: str, response_b: str, reference: str | None = None) -> Any:
        from infersight.evaluation.llm_judge import JudgeError, PairwiseVerdict

        self.calls += 1
        if int(prompt) % 2:
            raise JudgeError("invalid_reply", "no JSON", attempts=3, prompt_tokens=300, completion_tokens=30, cost=0.5)
        return PairwiseVerdict(winner="b", consistent=True, first_order="b", second_order="b", raw=("B", "A"),
                               explanations=("b", "b"), prompt_tokens=200, completion_tokens=20, cost=0.25,
                               judge_model="fake", evaluator_version="fake-v1", attempts=2)


def test_failed_comparisons_still_count_what_they_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"p{i}", "prompt": str(i), "response_a": "a", "response_b": "b"} for i in range(6)]
    out = tmp_path / "v.jsonl"
    code = main(["--pairs", str(pairs_file(tmp_path, rows)), "--json", "--no-progress", "--out", str(out)],
                judge=_HalfFailingJudge())  # type: ignore[arg-type]
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0 and report["n_compared"] == 3 and report["judge_errors"] == 3
    assert report["judge_cost"] == pytest.approx(3 * 0.25 + 3 * 0.5)
    assert report["judge_tokens"] == 3 * 220 + 3 * 330
    assert "judge failed on p1: JudgeError: no JSON" in captured.err
    assert [json.loads(line).get("error") for line in out.read_text().splitlines()][:2] == [None, "JudgeError: no JSON"]


def test_an_unwritable_out_is_refused_before_the_judge_is_called(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    judge = _HalfFailingJudge()
    rows = [{"id": "p0", "prompt": "0", "response_a": "a", "response_b": "b"}]
    code = main(["--pairs", str(pairs_file(tmp_path, rows)), "--no-progress", "--out", str(tmp_path / "no" / "v.jsonl")],
                judge=judge)  # type: ignore[arg-type]
    assert code == 2 and "--out" in capsys.readouterr().err and judge.calls == 0


def test_the_gate_decides_nothing_when_the_judge_failed_on_many_pairs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Half the pairs failed: the report is printed, but ``--gate`` exits 1 instead of passing on
    the half that was judged; without ``--gate`` the run is still exit 0. Errors come in file order."""
    rows = [{"id": f"p{i}", "prompt": str(i), "response_a": "a", "response_b": "b"} for i in range(8)]
    path = pairs_file(tmp_path, rows)
    code = main(["--pairs", str(path), "--json", "--no-progress", "--gate", "--concurrency", "8"],
                judge=_HalfFailingJudge())  # type: ignore[arg-type]
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1 and report["judge_errors"] == 4
    assert "gate not decided: the judge failed on 4 of 8 pairs" in captured.err
    failed = [line.split("judge failed on ")[1].split(":")[0] for line in captured.err.splitlines()
              if "warning: judge failed on" in line]
    assert failed == sorted(failed, key=lambda pair_id: int(pair_id[1:])) and len(failed) == 4
    assert main(["--pairs", str(path), "--json", "--no-progress"], judge=_HalfFailingJudge()) == 0  # type: ignore[arg-type]
