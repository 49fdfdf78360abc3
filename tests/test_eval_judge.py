"""stage=eval with scorer=llm through the real entrypoint, the real SDK clients and a loopback
API server that fails about a third of its calls."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from posttrain.judges.calibration import main as calibrate
from posttrain.records import read_jsonl
from tests.conftest import CANARY_ANTHROPIC
from tests.helpers import files_with_secrets, posttrain
from tests.llm_server import FakeLLMServer, sensible_verdict

# The tiny model's greedy replies are only newlines, which fail without a judge call (non_empty); at
# temperature 10 it writes words (seeded, so reruns generate the same text), which the judge then grades.
FAST = ["model=tiny_instruct", "generation.max_new_tokens=8", "generation.batch_size=6", "stage.sentinel=false",
        "generation.do_sample=true", "generation.temperature=10.0", "generation.top_p=1.0"]
FAULTS = ("429", "529", "500", "drop", "malformed", "refusal", "missing_verdict", "bad_json")


def coin_verdict(prompt: str) -> dict:
    """Tiny models fail everything a sensible judge checks; a coin gives both classes.

    The coin is keyed on the conversation's first user message, so every turn of one item gets the same
    side: an item passes with probability 1/2 however many judged turns it has (a coin per turn made a
    sample of multi-turn items all-fail, and kappa undefined). The answer is the sensible judge's
    checklist forced to pass or fail, so it holds the evidence rules (named checks, quotes from the reply);
    a fact the code failed still fails the turn.
    """
    start = prompt.find("[User 1]")
    key = prompt[start:start + 400].split("\n\n")[0] if start >= 0 else prompt
    return sensible_verdict(prompt, force=hashlib.sha256(key.encode()).digest()[0] % 2 == 0)


def error_turns(scores: list[dict]) -> int:
    """Turns with no judge answer: "error", or failed by a code fact while the judge call failed (judge_error)."""
    return sum(tv["verdict"] == "error" or "judge_error" in tv for s in scores for tv in s["turn_verdicts"])


def test_faulty_judge_records_every_item_once_and_rerun_is_free(tmp_path: Path, posttrain_home: Path,
                                                                 shared_cache: Path) -> None:
    run = tmp_path / "run"
    args = (*FAST, "scorer=llm", "judge=claude", "judge.max_retries=1", "judge.max_reasks=1", "benchmark.limit=50",
            "judge.spot_check=0", f"hydra.run.dir={run}")  # the spot check has its own test below
    with FakeLLMServer(fault_rate=0.33, fault_kinds=FAULTS, seed=3) as srv:
        posttrain(*args, f"judge.base_url={srv.url}", home=posttrain_home, cache=shared_cache)
        first_calls = srv.model_calls
        scores = read_jsonl(run / "scores.jsonl")
        assert sorted(s["item_id"] for s in scores) == sorted({s["item_id"] for s in scores}) and len(scores) == 50
        assert {s["verdict"] for s in scores} <= {"pass", "fail", "error"}
        summary = json.loads((run / "summary.json").read_text())
        assert summary["n_pass"] + summary["n_fail"] + summary["n_error"] == 50
        assert summary["api_usd"] > 0 and summary["cost_usd"] >= summary["api_usd"]
        assert summary["judge"] == "claude"
        assert sum(s["n_parse_failures"] for s in scores) > 0 and srv.faults_served
        assert summary["gate_eligible"] is False and "no calibration" in summary["gate_ineligible_reason"]
        # the key really went to the judge (the canary from conftest), and into no file of ours
        assert CANARY_ANTHROPIC in srv.keys_seen
        assert files_with_secrets(run, posttrain_home) == []
        ledger = read_jsonl(posttrain_home / "ledger.jsonl")
        assert ledger[-1]["api_usd"] == pytest.approx(summary["api_usd"])
        n_err_turns = error_turns(scores)
        # The same command again, faults off: only the turns that ended as error are asked again.
        srv.fault_rate = 0.0
        posttrain(*args, f"judge.base_url={srv.url}", home=posttrain_home, cache=shared_cache)
        assert srv.model_calls - first_calls == n_err_turns
        assert json.loads((run / "summary.json").read_text())["n_error"] == 0


def test_missing_key_fails_before_generation(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    proc = posttrain(*FAST, "scorer=llm", "judge=claude", "benchmark.limit=2", f"hydra.run.dir={run}",
                     home=posttrain_home, cache=shared_cache, env={"ANTHROPIC_API_KEY": ""}, check=False)
    assert proc.returncode == 2 and "ANTHROPIC_API_KEY" in proc.stderr
    assert not (run / "generations.jsonl").exists()


def test_spot_check_calibration_and_gate_eligibility(tmp_path: Path, posttrain_home: Path,
                                                     shared_cache: Path) -> None:
    run = tmp_path / "run"
    with FakeLLMServer(verdict_fn=coin_verdict) as srv:
        env = {"OPENAI_BASE_URL": srv.openai_url}
        args = (*FAST, "scorer=llm", "judge=claude", f"judge.base_url={srv.url}", "judge.spot_check=0.5",
                "benchmark.limit=12", "gate.min_calibration_items=10", f"hydra.run.dir={run}")
        posttrain(*args, home=posttrain_home, cache=shared_cache, env=env)
        spot = json.loads((run / "spot_check.json").read_text())
        assert spot["second_judge"] == "gpt4" and spot["n"] >= 4 and 0 <= spot["agreement"] <= 1
        assert srv.count("POST /v1/chat/completions") > 0  # the second judge really went to OpenAI's API

        # Human calibration: export, a person labels (here: agrees with the judge), import.
        sheet = tmp_path / "label.csv"
        assert calibrate(["export", str(run), "--out", str(sheet), "--n", "10"]) == 0
        key = json.loads(Path(str(sheet) + ".key.json").read_text())["samples"]
        rows = list(csv.DictReader(sheet.open(encoding="utf-8-sig")))
        assert "verdict" not in " ".join(rows[0].keys()).lower()  # the judge's verdict is hidden
        for r in rows:
            r["human_label"] = key[r["sample_id"]]["judge_verdict"]
        with sheet.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        assert calibrate(["import", str(sheet)]) == 0
        calls = srv.model_calls
        posttrain(*args, home=posttrain_home, cache=shared_cache, env=env)
        assert srv.model_calls == calls  # everything cached
        summary = json.loads((run / "summary.json").read_text())
        assert summary["gate_eligible"] is True, summary["gate_ineligible_reason"]
        cal, inst = summary["calibration"], summary["judge_instrument"]
        assert cal["applies"] is True and cal["n"] >= 10 and cal["key"].startswith(f"anthropic__{inst['model']}__")
        assert summary["spot_check"]["status"] == "ran" and summary["spot_check"]["second_judge"] == "gpt4"


@pytest.mark.slow
def test_kill_9_during_judging_then_rerun_pays_only_for_the_rest(tmp_path: Path, posttrain_home: Path,
                                                                 shared_cache: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    run = tmp_path / "run"
    cache_dir = posttrain_home / "judge_cache"
    args = [*FAST, "scorer=llm", "judge=claude", "judge.concurrency=2", "judge.spot_check=0", "benchmark.limit=12",
            f"hydra.run.dir={run}"]
    with FakeLLMServer(latency_s=0.3) as srv:
        env = os.environ | {"POSTTRAIN_HOME": str(posttrain_home), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        proc = subprocess.Popen([sys.executable, "-m", "posttrain", f"cache_dir={shared_cache}", *args,
                                 f"judge.base_url={srv.url}"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and len(list(cache_dir.rglob("*.json"))) < 6:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        cached = len(list(cache_dir.rglob("*.json")))
        assert cached >= 6 and not (run / "scores.jsonl").exists()
        calls_before = srv.model_calls
        posttrain(*args, f"judge.base_url={srv.url}", home=posttrain_home, cache=shared_cache)
        scores = read_jsonl(run / "scores.jsonl")
        judged = sum(len(s["turn_verdicts"]) for s in scores)
        assert len(scores) == 12 and {s["verdict"] for s in scores} <= {"pass", "fail"}
        assert srv.model_calls - calls_before == judged - cached  # nothing judged before the kill is paid twice
        spend = json.loads((run / "summary.json").read_text())["judge_spend"]
        assert spend["cache_hits"] == cached and spend["paid_answers"] == judged - cached

        # The same run uninterrupted, with an empty judge cache, records the same bytes.
        fresh_home, clean = tmp_path / "home2", tmp_path / "clean"
        args_clean = [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={clean}" for a in args]
        posttrain(*args_clean, f"judge.base_url={srv.url}", home=fresh_home, cache=shared_cache)
    for name in ("generations.jsonl", "scores.jsonl"):
        assert (run / name).read_bytes() == (clean / name).read_bytes(), name
    assert CANARY_ANTHROPIC in srv.keys_seen  # a killed run and its rerun leave the key in no file either
    assert files_with_secrets(run, clean, posttrain_home, fresh_home) == []
    assert json.loads((clean / "summary.json").read_text())["judge_spend"]["paid_answers"] == judged


def test_pairwise_between_two_runs(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    from posttrain.analysis.pairwise import main as pairwise

    runs = {}
    for model in ("tiny_base", "tiny_instruct"):
        runs[model] = tmp_path / model
        posttrain(f"model={model}", "scorer=heuristic_triage", "benchmark.limit=4", "stage.sentinel=false",
                  "generation.max_new_tokens=8", f"hydra.run.dir={runs[model]}", home=posttrain_home,
                  cache=shared_cache)
    with FakeLLMServer() as srv:
        import os

        os.environ["ANTHROPIC_BASE_URL"] = srv.url
        try:
            assert pairwise([str(runs["tiny_base"]), str(runs["tiny_instruct"]), "--out", str(tmp_path / "pw")]) == 0
        finally:
            del os.environ["ANTHROPIC_BASE_URL"]
        judged = sum(1 for r in read_jsonl(tmp_path / "pw" / "pairwise.jsonl") for _ in r["turn_results"])
        assert srv.model_calls == 2 * judged  # both orders for every judged turn
    s = json.loads((tmp_path / "pw" / "pairwise.json").read_text())
    assert s["n"] == 4 and s["wins_a"] + s["wins_b"] + s["ties"] + s["errors"] == 4
    # the judge model's lifecycle was asked before any pairwise call, as in the eval stage
    assert s["judge_preflight"]["checked"] is True and s["judge_preflight"]["status"] == "active"


def test_pairwise_mode_on_a_single_eval_is_refused(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    proc = posttrain("scorer=llm", "judge.mode=pairwise", f"hydra.run.dir={tmp_path / 'r'}", home=posttrain_home,
                     cache=shared_cache, check=False)
    assert proc.returncode == 2 and "posttrain-pairwise" in proc.stderr
