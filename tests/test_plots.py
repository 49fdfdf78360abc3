"""A result is never lost to a plot (issue 19 §5).

statsmodels' Wilson interval puts 0/n's lower bound at 2.8e-17 and n/n's upper bound at
0.9999999999999999 for many n, so a category at 0% or at 100% used to make matplotlib's
``errorbar`` raise and the sweep lost its comparison. These tests build sweeps with such categories
and check that the comparison and the plots are written, and that a plot which does fail is
recorded in ``plot_errors`` while comparison.json and comparison.md are still written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from statsmodels.stats.proportion import proportion_confint

from posttrain.analysis import plots
from posttrain.analysis.report import main as report_main
from posttrain.analysis.report import render_markdown
from posttrain.records import append_jsonl, write_json

N_PER_CATEGORY = 14  # statsmodels' Wilson bounds for 0/14 and 14/14 fall 2.8e-17 / 1.1e-16 outside the rate
PNG = b"\x89PNG\r\n\x1a\n"


def _write_job(sweep: Path, num: int, model: str, kind: str, verdicts: dict[str, str]) -> None:
    job = sweep / f"{num}_{model}"
    append_jsonl(job / "scores.jsonl", [
        {"item_id": i, "category": i.split("-")[0], "model": model, "verdict": v, "scorer": "heuristic_triage",
         "judge": None, "template_version": None, "reply_chars": 50 + n} for n, (i, v) in enumerate(verdicts.items())])
    write_json(job / "summary.json", {
        "status": "finished", "stage": "eval", "model": model, "model_kind": kind, "scorer": "heuristic_triage",
        "judge": None, "benchmark_info": {"name": "hand-made", "split": "test", "n": len(verdicts), "sha256": "cd" * 32},
    })


@pytest.fixture()
def extreme_sweep(tmp_path: Path) -> Path:
    """Two models; category ``never`` is 0% for both, ``always`` 100% for both, ``mixed`` in between."""
    root = tmp_path / "multirun" / "2026-02-01" / "09-00-00"
    ids = {c: [f"{c}-{k:02d}" for k in range(N_PER_CATEGORY)] for c in ("never", "always", "mixed")}
    for num, (model, kind, mixed_pass) in enumerate([("tiny_base", "base", 3), ("tiny_instruct", "instruct", 11)]):
        verdicts = {i: "fail" for i in ids["never"]} | {i: "pass" for i in ids["always"]}
        verdicts |= {i: ("pass" if k < mixed_pass else "fail") for k, i in enumerate(ids["mixed"])}
        _write_job(root, num, model, kind, verdicts)
    return root


@pytest.mark.parametrize("n", [7, 9, 14, 20, 28, 130])
def test_error_bars_are_never_negative_at_0_and_100_percent(n: int) -> None:
    for k in (0, n):
        rate = k / n
        below, above = plots.error_bar(rate, proportion_confint(k, n, method="wilson"))
        assert below >= 0.0 and above >= 0.0
        assert below == 0.0 if k == 0 else above == 0.0  # the bar ends exactly at 0 or at 1


def test_error_bars_keep_an_interior_interval() -> None:
    low, high = proportion_confint(5, 20, method="wilson")
    assert plots.error_bar(0.25, (low, high)) == pytest.approx((0.25 - low, high - 0.25), abs=1e-15)
    assert plots.error_bar(0.5, (-0.1, 1.2)) == (0.5, 0.5)  # bounds outside [0, 1] are clipped


def test_a_sweep_with_categories_at_0_and_100_percent_writes_its_comparison_and_plots(
        extreme_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(extreme_sweep)]) == 0
    comp = json.loads((extreme_sweep / "comparison.json").read_text())
    rates = {m: {c: b["success_rate"] for c, b in blocks.items()} for m, blocks in comp["per_category"]["models"].items()}
    assert rates["tiny_base"]["never"] == 0.0 and rates["tiny_instruct"]["always"] == 1.0
    lows = [b["ci95"][0] for blocks in comp["per_category"]["models"].values() for c, b in blocks.items() if c == "never"]
    assert any(low > 0.0 for low in lows), "the input must carry statsmodels' 2.8e-17 lower bound"
    assert comp["plot_errors"] == []
    assert comp["files"]["plots"] == [plots.SUCCESS_PNG, plots.DISCORDANT_PNG]
    for name in comp["files"]["plots"]:
        assert (extreme_sweep / name).read_bytes()[:8] == PNG
    assert (extreme_sweep / "comparison.md").read_text() == render_markdown(comp)


def test_a_failing_plot_is_recorded_and_the_comparison_is_still_written(
        extreme_sweep: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    def broken(comparison: dict[str, Any]) -> Any:
        raise ValueError("'yerr' must not contain negative values")

    monkeypatch.setattr(plots, "discordant_figure", broken)
    assert report_main([str(extreme_sweep)]) == 0
    comp = json.loads((extreme_sweep / "comparison.json").read_text())
    assert comp["plot_errors"] == [{"plot": plots.DISCORDANT_PNG,
                                    "error": "ValueError: 'yerr' must not contain negative values"}]
    assert comp["files"]["plots"] == [plots.SUCCESS_PNG]  # the other figure is still drawn
    assert not (extreme_sweep / plots.DISCORDANT_PNG).exists()
    assert comp["gate"]["verdict"] and comp["pairs"], "the result itself is complete"
    md = (extreme_sweep / "comparison.md").read_text()
    assert md == render_markdown(comp)
    assert "## Plots not written" in md and "discordant_pairs.png: ValueError" in md
    assert any("plot discordant_pairs.png not written" in r.getMessage() for r in caplog.records)
