"""Each arm's truncation rate is in the comparison, and a pair more than 10 points apart is flagged (issue 19 §4).

A reply cut at max_new_tokens may fail a check it would have passed with more tokens; when two
prompt formats differ in how often that happens, their comparison measures the length budget too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.analysis.comparison import TRUNCATION_FLAG, truncation_pair
from posttrain.analysis.report import main as report_main
from posttrain.analysis.report import render_markdown
from posttrain.records import append_jsonl, write_json

TURNS = 130
# (kind, cut turns of 130): base 30.0%, instruct 15.4%, alt 20.0% -> base vs instruct 14.6 points (flagged),
# base vs alt exactly 10 points (not "more than"), alt vs instruct 4.6 points
MODELS = {"tiny_base": ("base", 39), "tiny_instruct": ("instruct", 20), "tiny_alt_base": ("base", 26)}


def _job(sweep: Path, num: int, model: str, kind: str, cut: int | None) -> None:
    job = sweep / f"{num}_{model}"
    ids = [f"instr-{k:03d}" for k in range(40)]
    append_jsonl(job / "scores.jsonl", [
        {"item_id": i, "category": "format", "model": model, "verdict": "pass" if (k + num) % 3 else "fail",
         "scorer": "heuristic_triage", "judge": None, "template_version": None, "reply_chars": 80}
        for k, i in enumerate(ids)])
    summary: dict[str, Any] = {
        "status": "finished", "stage": "eval", "model": model, "model_kind": kind, "scorer": "heuristic_triage",
        "judge": None, "benchmark_info": {"name": "instructions", "split": "test", "n": 40, "sha256": "ef" * 32}}
    if cut is not None:
        summary["truncation"] = {"turns": TURNS, "length_stopped": cut, "rate": cut / TURNS}
    write_json(job / "summary.json", summary)


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-02-02" / "10-00-00"
    for num, (model, (kind, cut)) in enumerate(MODELS.items()):
        _job(root, num, model, kind, cut)
    return root


def test_each_arms_truncation_is_in_the_comparison_and_a_wide_gap_is_flagged(
        sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(sweep), "--no-plots"]) == 0
    comp = json.loads((sweep / "comparison.json").read_text())
    for m in comp["models"]:
        cut = MODELS[m["model"]][1]
        assert m["truncation"] == {"turns": TURNS, "length_stopped": cut, "rate": cut / TURNS}
    pairs = {(p["a"], p["b"]): p for p in comp["pairs"]}
    flagged = {k for k, p in pairs.items() if p["truncation_flagged"]}
    assert flagged == {("tiny_base", "tiny_instruct")}
    assert pairs["tiny_base", "tiny_instruct"]["truncation_rates"] == [39 / TURNS, 20 / TURNS]
    assert pairs["tiny_base", "tiny_alt_base"]["truncation_gap"] == pytest.approx(0.10)  # exactly 10: not flagged
    warned = [w for w in comp["warnings"] if "truncation" in w]
    assert len(warned) == 1 and warned[0].startswith("tiny_base vs tiny_instruct: truncation (finish_reason=length) "
                                                     "30.0% vs 15.4%")
    md = (sweep / "comparison.md").read_text()
    assert md == render_markdown(comp)
    assert "truncated (finish_reason=length)" in md and "0.300 (39/130)" in md and "0.154 (20/130)" in md
    assert md.count("FLAGGED: more than 10 points apart") == 1  # the primary pair's line in the gate section
    assert "| 0.3 / 0.154 FLAGGED |" in md and "| 0.3 / 0.2 |" in md


def test_records_without_truncation_are_shown_as_unknown_never_flagged(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sweep"
    _job(root, 0, "tiny_base", "base", None)
    _job(root, 1, "tiny_instruct", "instruct", 100)
    assert report_main([str(root), "--no-plots"]) == 0
    comp = json.loads((root / "comparison.json").read_text())
    (pair,) = comp["pairs"]
    assert pair["truncation_rates"] == [None, 100 / TURNS] and pair["truncation_flagged"] is False
    assert "`tiny_base` —" in (root / "comparison.md").read_text()


@pytest.mark.parametrize(("ra", "rb", "flagged"), [(0.3, 0.2, False), (0.0, 0.1, False), (0.0, 0.1001, True),
                                                    (0.95, 0.05, True), (0.5, 0.5, False)])
def test_the_flag_is_more_than_ten_points(ra: float, rb: float, flagged: bool) -> None:
    out = truncation_pair({"truncation": {"rate": ra}}, {"truncation": {"rate": rb}})
    assert out["truncation_flagged"] is flagged and TRUNCATION_FLAG == 0.10
