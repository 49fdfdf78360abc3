"""W&B tracking: transcript tables and budget metrics built from the records, the comparison's lineage,
and the dashboard definition, whose every panel must name a metric or table that real offline runs log.

The offline runs are read with posttrain.tracking.tracker.read_offline_run (wandb 0.31 has no reader of its own).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from posttrain.records import write_json, write_jsonl
from tests.helpers import REPO
from tests.test_sweeps import _env, tiny_sweep  # noqa: F401  (the sweep fixture, reused)


def _eval_records(run: Path) -> None:
    """Two items of an eval run, the second spot-checked by a second judge that disagrees."""
    write_jsonl(run / "items.jsonl", [
        {"id": "memory-001", "category": "memory", "source": "conversations", "meta": {"template": "mem_city"},
         "turns": [{"user": "I live in Lisbon."}, {"user": "Where do I live?"}]},
        {"id": "prefs-002", "category": "preferences", "source": "conversations", "meta": {"template": "pref_food"},
         "turns": [{"user": "I hate olives. Suggest a pizza."}]},
    ])
    write_jsonl(run / "generations.jsonl", [
        {"item_id": "prefs-002", "model": "m", "turns": [{"turn": 0, "user": "I hate olives. Suggest a pizza.",
                                                          "reply": "Olive pizza!"}]},
        {"item_id": "memory-001", "model": "m", "turns": [{"turn": 0, "user": "I live in Lisbon.", "reply": "Nice."},
                                                          {"turn": 1, "user": "Where do I live?", "reply": "Lisbon."}]},
    ])
    write_jsonl(run / "scores.jsonl", [
        {"item_id": "memory-001", "category": "memory", "model": "m", "verdict": "pass", "judge": "claude",
         "turn_verdicts": ["pass"], "checks": [{"turn": 1, "must_include": ["Lisbon"], "ok": True}],
         "rationale": "recalls Lisbon", "error": None},
        {"item_id": "prefs-002", "category": "preferences", "model": "m", "verdict": "fail", "judge": "claude",
         "turn_verdicts": ["fail"], "checks": [{"turn": 0, "must_not_include": ["olive"], "ok": False}],
         "rationale": "suggests olives", "error": None},
    ])
    write_json(run / "spot_check.json", {"items": [{"item_id": "prefs-002", "category": "preferences", "model": "m",
                                                    "primary": "fail", "second": "pass", "agree": False}]})


def test_transcript_rows_join_items_generations_scores_and_spot_check(tmp_path: Path) -> None:
    from posttrain.tracking.tracker import TRANSCRIPT_COLUMNS, transcript_rows

    _eval_records(tmp_path)
    rows = [dict(zip(TRANSCRIPT_COLUMNS, r, strict=True)) for r in transcript_rows(tmp_path)]
    assert [r["item_id"] for r in rows] == ["memory-001", "prefs-002"]  # scores order, joined by id
    mem, prefs = rows
    assert mem["conversation"] == "USER: I live in Lisbon.\n\nASSISTANT: Nice.\n\nUSER: Where do I live?\n\nASSISTANT: Lisbon."
    assert json.loads(mem["replies"]) == ["Nice.", "Lisbon."] and mem["template"] == "mem_city"
    assert (mem["verdict"], mem["spot_check_verdict"], mem["judges_agree"]) == ("pass", None, None)
    assert json.loads(prefs["checks"]) == [{"turn": 0, "must_not_include": ["olive"], "ok": False}]
    assert (prefs["category"], prefs["template"], prefs["judge"]) == ("preferences", "pref_food", "claude")
    assert (prefs["verdict"], prefs["spot_check_verdict"], prefs["judges_agree"]) == ("fail", "pass", False)


def test_comparison_tables_carry_rates_intervals_and_pair_tests() -> None:
    from posttrain.tracking.tracker import comparison_tables

    comp = {"models": [{"model": "base", "job": "0_base", "kind": "base", "n": 10, "n_pass": 2, "n_fail": 8,
                        "n_error": 1, "success_rate": 0.2, "ci95": [0.057, 0.51], "scorer": "llm",
                        "gate_eligible": True}],
            "pairs": [{"a": "base", "b": "inst", "n_paired": 10, "a_only": 0, "b_only": 6, "success_a": 0.2,
                       "success_b": 0.8, "mcnemar_p": 0.03125, "p_holm": 0.0625, "cohens_h": 1.29,
                       "underpowered": True}]}
    tables = comparison_tables(comp)
    cols, rows = tables["comparison/models"]
    assert dict(zip(cols, rows[0], strict=True)) | {} == {
        "model": "base", "job": "0_base", "kind": "base", "n": 10, "n_pass": 2, "n_fail": 8, "n_error": 1,
        "success_rate": 0.2, "ci95_low": 0.057, "ci95_high": 0.51, "scorer": "llm", "gate_eligible": True}
    cols, rows = tables["comparison/pairs"]
    assert dict(zip(cols, rows[0], strict=True))["p_holm"] == 0.0625 and len(rows) == 1


def test_offline_tracker_logs_table_budget_and_step_axes(tmp_path: Path) -> None:
    """A real offline run: the table's JSON file, the budget series up to this run's ledger row, define_metric."""
    from posttrain.tracking.budget import Ledger, Spend
    from posttrain.tracking.tracker import TRANSCRIPTS_KEY, Tracker, log_eval_records, read_offline_run

    run = tmp_path / "outputs" / "2026-01-31" / "12-00-00_eval_m"
    _eval_records(run)
    ledger = Ledger(tmp_path / "ledger.jsonl", cap_usd=10.0)
    ledger.record(Spend("earlier", "eval", "m", "A6000", 1.0, 0.79, 0.71))
    ledger.record(Spend(str(run), "eval", "m", "A6000", 0.5, 0.395, 0.105))
    ledger.record(Spend("later", "eval", "m", "A6000", 9.0, 9.0, 0.0))  # a job that finished after: not plotted
    tracker = Tracker(run, mode="offline", project="posttrain-test", entity=None, name="t", group="g",
                      job_type="eval", tags=[], config={})
    with tracker:
        tracker.log({"negatives/n_pairs": 3})
        tracker.log({"step0/loss": 0.69}, step=0)  # a step below W&B's counter: W&B alone would drop it
        log_eval_records(tracker, run)
        values = tracker.log_budget(ledger, run)
    assert values["budget/cum_usd"] == pytest.approx(2.0) and values["budget/remaining_usd"] == pytest.approx(8.0)
    assert values["budget/run_usd"] == pytest.approx(0.5)

    rec = read_offline_run(next((run / "wandb").glob("offline-run-*")))
    assert rec["metrics"]["budget/*"] == "budget/entry" and rec["metrics"]["train/*"] == "train/global_step"
    assert {"negatives/n_pairs", "step0/loss"} <= {k for h in rec["history"] for k in h}
    table = rec["tables"][TRANSCRIPTS_KEY]
    assert [r[1] for r in table["data"]] == ["memory-001", "prefs-002"] and "spot_check_verdict" in table["columns"]
    series = [h for h in rec["history"] if "budget/entry" in h]
    assert [(h["budget/entry"], h["budget/cum_usd"], h["budget/cap_usd"]) for h in series] == [
        (1, pytest.approx(1.5), 10.0), (2, pytest.approx(2.0), 10.0)]
    assert rec["summary"]["budget/run_gpu_hours"] == pytest.approx(0.5)
    art = next(a for a in rec["artifacts"] if a["type"] == "scores")
    assert art["name"] == "scores-outputs_2026-01-31_12-00-00_eval_m" and not art["use_after_commit"]
    assert sorted(art["files"]) == ["generations.jsonl", "items.jsonl", "scores.jsonl", "spot_check.json"]


# ----------------------------------------------------------------------------- the dashboard


def _dashboard(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "dashboard.json"
    proc = subprocess.run([sys.executable, "-m", "posttrain.dashboard", "--dry-run", "--project", "posttrain",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing was saved to W&B" in proc.stdout and "posttrain-dashboard --project posttrain" in proc.stdout
    return json.loads(out.read_text())


def test_dashboard_dry_run_writes_sections_panels_and_the_workspace_spec(tmp_path: Path) -> None:
    d = _dashboard(tmp_path)
    assert d["sections"] == ["Budget", "Losses", "Success rates", "Comparison", "Transcripts", "Capability atlas"]
    spec = d["wandb_workspaces_spec"]["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in spec] == d["sections"]
    spec_text = json.dumps(spec)
    for p in d["panels"]:
        if p["kind"] != "MarkdownPanel":
            assert p["metrics"] or p["tables"], p  # a chart naming nothing would draw nothing
        for name in p["metrics"] + p["tables"]:
            assert json.dumps(name) in spec_text, name  # the manifest describes the spec W&B would store
    by_section = {s: [p for p in d["panels"] if p["section"] == s] for s in d["sections"]}
    assert any("budget/cap_usd" in p["metrics"] and "budget/cum_usd" in p["metrics"] for p in by_section["Budget"])
    assert {"comparison/models", "comparison/pairs"} <= {t for p in by_section["Comparison"] for t in p["tables"]}
    assert [t for p in by_section["Transcripts"] for t in p["tables"]] == ["eval/transcripts"]


def _logged_names(runs: list[Path]) -> set[str]:
    """Every metric and table name the offline runs hold (history, summary, table keys)."""
    from posttrain.tracking.tracker import read_offline_run

    names: set[str] = set()
    for run in runs:
        rec = read_offline_run(run)
        names |= {k for h in rec["history"] for k in h} | set(rec["summary"]) | set(rec["tables"])
    return names


@pytest.mark.slow
def test_tiny_sweep_runs_hold_tables_budget_and_comparison_lineage(tiny_sweep: tuple[Path, float]) -> None:  # noqa: F811
    from posttrain.tracking.tracker import TRANSCRIPTS_KEY, read_offline_run, scores_artifact

    sweep, _ = tiny_sweep
    jobs = ["0_tiny_base", "1_tiny_instruct", "2_tiny_alt_base"]
    outputs = {}
    for job in jobs:
        rec = read_offline_run(next((sweep / job / "wandb").glob("offline-run-*")))
        table = rec["tables"][TRANSCRIPTS_KEY]
        scores = [json.loads(x) for x in (sweep / job / "scores.jsonl").read_text().splitlines()]
        col = {c: i for i, c in enumerate(table["columns"])}
        assert [(r[col["item_id"]], r[col["verdict"]]) for r in table["data"]] == [
            (s["item_id"], s["verdict"]) for s in scores]  # the records, row for row
        assert all(r[col["template"]] and r[col["conversation"]].startswith("USER: ") for r in table["data"])
        budget = [h for h in rec["history"] if "budget/entry" in h]
        assert [h["budget/entry"] for h in budget] == list(range(1, jobs.index(job) + 2))  # the ledger up to this job
        assert all(h["budget/cap_usd"] > 0 for h in budget) and "budget/run_usd" in rec["summary"]
        (out,) = [a for a in rec["artifacts"] if a["type"] == "scores"]
        assert out["name"] == scores_artifact(sweep / job)[0] and not out["use_after_commit"]
        outputs[out["name"]] = out["digest"]

    comp = read_offline_run(next((sweep / "wandb").glob("offline-run-*")))
    used = {a["name"]: a["digest"] for a in comp["artifacts"] if a["use_after_commit"]}
    assert used == outputs  # same names and digests: W&B links the comparison to the jobs' records
    assert [a["name"] for a in comp["artifacts"] if a["type"] == "comparison"]
    models = comp["tables"]["comparison/models"]
    assert [r[0] for r in models["data"]] == ["tiny_base", "tiny_instruct", "tiny_alt_base"]
    assert len(comp["tables"]["comparison/pairs"]["data"]) == 3
    assert comp["summary"]["budget/sweep_usd"] >= 0.0


@pytest.mark.slow
def test_every_dashboard_panel_names_what_the_runs_log(tiny_sweep: tuple[Path, float], tmp_path: Path,  # noqa: F811
                                                       shared_cache: Path) -> None:
    """Eval, budget, comparison and transcript panels against the sweep's runs; losses against a DPO run."""
    sweep, _ = tiny_sweep
    run = tmp_path / "dpo"
    proc = subprocess.run([sys.executable, "-m", "posttrain", f"cache_dir={shared_cache}", "stage=dpo_only",
                           "model=tiny_base", "stage.override_gate=true", "stage.data_source=synthetic",
                           "stage.num_examples=8", "stage.max_steps=2", "stage.save_steps=2", "stage.logging_steps=1",
                           "stage.allow_leaky_negatives=true",  # 8 rows: too few pairs to test each type
                           f"hydra.run.dir={run}"], cwd=REPO, env=_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logged = _logged_names([*sweep.glob("**/wandb/offline-run-*"), *(run / "wandb").glob("offline-run-*")])
    d = _dashboard(tmp_path)
    from posttrain.tracking.tracker import ATLAS_TABLES

    # the atlas tables are logged by an atlas sweep's run: tests/test_atlas.py checks them there
    named = {n for p in d["panels"] for n in p["metrics"] + p["tables"]} - set(ATLAS_TABLES)
    assert named and named - logged == set(), sorted(named - logged)


def test_dashboard_online_without_a_login_says_what_to_do(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "posttrain.dashboard", "--project", "posttrain"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "wandb login" in proc.stderr and "--dry-run" in proc.stderr
    assert "Nothing was saved" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dashboard.json").exists()
