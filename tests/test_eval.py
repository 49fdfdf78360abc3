"""stage=eval end to end through the real entrypoint on the tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.records import read_jsonl
from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI
from tests.helpers import REPO, files_with_secrets, posttrain

FAST = ["generation.max_new_tokens=12", "generation.batch_size=4"]


def test_instruct_eval_uses_the_chat_template(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    posttrain("stage=eval", "model=tiny_instruct", "scorer=heuristic_triage", "benchmark.limit=6", *FAST,
              f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("model", "model_kind", "stage", "benchmark", "scorer", "judge", "cost_usd", "gpu_hours",
                "budget_remaining_usd", "n_items", "n_pass", "n_fail", "n_error", "success_rate", "ci95"):
        assert key in summary, key
    assert summary["prompt_format"] == "chat_template" and summary["model_kind"] == "instruct"
    assert summary["gate_eligible"] is False and "heuristic_triage" in summary["gate_ineligible_reason"]
    assert summary["benchmark_info"]["n"] == 6 and len(summary["benchmark_info"]["sha256"]) == 64
    assert summary["generation"]["tokens_per_second"] > 0
    rows = read_jsonl(run / "generations.jsonl")
    assert len(rows) == 6 and all(3 <= len(r["turns"]) <= 5 for r in rows)
    assert all(len(t["prompt_sha256"]) == 64 for r in rows for t in r["turns"])
    assert len(read_jsonl(run / "scores.jsonl")) == 6
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["chat_template_sha256"] and prov["revision"].startswith("sha256:")
    assert (run / "sentinel.json").exists() and (run / ".hydra" / "config.yaml").exists()
    ledger = read_jsonl(posttrain_home / "ledger.jsonl")
    assert len(ledger) == 1 and ledger[0]["model"] == "tiny_instruct"


def test_base_model_with_chat_template_fails_fast(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    proc = posttrain("model=tiny_base", "prompt=chat_template", f"hydra.run.dir={run}", home=posttrain_home,
                     cache=shared_cache, check=False)
    assert proc.returncode == 2
    assert "guard base-no-chat-template" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "generations.jsonl").exists() and not (run / "summary.json").exists()


def test_budget_refusal_spends_nothing(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    proc = posttrain("model=tiny_base", "model.num_gpus=1", "model.gpu_price_per_hour=1000", "budget.cap_usd=0.01",
                     f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode == 2
    assert "budget:" in proc.stderr and "only $0.01" in proc.stderr and "Nothing was started or spent" in proc.stderr
    assert not (run / "generations.jsonl").exists()
    assert not (posttrain_home / "ledger.jsonl").exists()


def test_resume_reuses_finished_conversations_and_matches(tmp_path: Path, posttrain_home: Path,
                                                          shared_cache: Path) -> None:
    """A torn last line (a kill mid-write) is dropped; the rerun regenerates only what is missing,
    and the records equal an uninterrupted run's, row for row."""
    args = ("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=8", "stage.sentinel=false", *FAST)
    full, cut = tmp_path / "full", tmp_path / "cut"
    posttrain(*args, f"hydra.run.dir={full}", home=posttrain_home, cache=shared_cache)
    lines = (full / "generations.jsonl").read_text().splitlines(keepends=True)
    cut.mkdir()
    # cut inside a chunk (batch_size 4): the rest is regrouped into other batches on resume
    (cut / "generations.jsonl").write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    proc = posttrain(*args, f"hydra.run.dir={cut}", home=posttrain_home, cache=shared_cache)
    assert "reusing 5 finished conversations" in proc.stdout + proc.stderr
    assert (cut / "generations.jsonl").read_text() == (full / "generations.jsonl").read_text()
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["generation"]["reused"] == 5 and summary["generation"]["generated"] == 3


@pytest.mark.slow
def test_kill_9_during_generation_then_rerun(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-m", "posttrain", f"cache_dir={shared_cache}", "model=tiny_base",
            "scorer=heuristic_triage", "benchmark.limit=24", "stage.sentinel=false",
            "generation.max_new_tokens=24", "generation.batch_size=4", f"hydra.run.dir={run}"]
    env = os.environ | {"POSTTRAIN_HOME": str(posttrain_home), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gen = run / "generations.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (gen.exists() and len(read_jsonl(gen)) >= 8):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(read_jsonl(gen))
    assert 8 <= done < 24, done
    posttrain("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=24", "stage.sentinel=false",
              "generation.max_new_tokens=24", "generation.batch_size=4", f"hydra.run.dir={run}",
              home=posttrain_home, cache=shared_cache)
    rows = read_jsonl(gen)
    assert len(rows) == 24 and len({r["item_id"] for r in rows}) == 24
    assert json.loads((run / "summary.json").read_text())["generation"]["reused"] == done
    clean = tmp_path / "clean"  # the same run, never killed: the same bytes (greedy decoding)
    posttrain("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=24", "stage.sentinel=false",
              "generation.max_new_tokens=24", "generation.batch_size=4", f"hydra.run.dir={clean}",
              home=posttrain_home, cache=shared_cache)
    for name in ("generations.jsonl", "scores.jsonl", "items.jsonl"):
        assert (run / name).read_bytes() == (clean / name).read_bytes(), name


def test_changed_settings_in_the_same_folder_are_refused(tmp_path: Path, posttrain_home: Path,
                                                         shared_cache: Path) -> None:
    run = tmp_path / "run"
    args = ("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=2", "stage.sentinel=false")
    posttrain(*args, "generation.max_new_tokens=8", f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    proc = posttrain(*args, "generation.max_new_tokens=9", f"hydra.run.dir={run}", home=posttrain_home,
                     cache=shared_cache, check=False)
    assert proc.returncode == 2 and "made with other settings" in proc.stderr


def test_no_secret_reaches_any_file(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    posttrain("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=2", *FAST, f"hydra.run.dir={run}",
              home=posttrain_home, cache=shared_cache,
              env={"ANTHROPIC_API_KEY": CANARY_ANTHROPIC, "OPENAI_API_KEY": CANARY_OPENAI})
    assert files_with_secrets(run, posttrain_home) == []
    assert list(run.glob("wandb/offline-run-*"))  # W&B really ran (offline) and wrote its files


@pytest.mark.parametrize("bench,fixture", [("mt_bench", "mt_bench_question.jsonl"), ("mt_bench_101", "mtbench101.jsonl")])
def test_public_benchmarks_from_original_files(tmp_path: Path, posttrain_home: Path, shared_cache: Path,
                                               bench: str, fixture: str) -> None:
    run = tmp_path / "run"
    posttrain("model=tiny_instruct", f"benchmark={bench}", f"benchmark.path={REPO / 'tests' / 'fixtures' / fixture}",
              "benchmark.limit=10", "scorer=heuristic_triage", "stage.sentinel=false", *FAST,
              f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    rows = read_jsonl(run / "generations.jsonl")
    assert len(rows) == 10 and all(r["source"] == bench for r in rows)


def test_missing_public_file_says_which_setting(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    proc = posttrain("benchmark=mt_bench", f"hydra.run.dir={tmp_path / 'r'}", home=posttrain_home,
                     cache=shared_cache, check=False)
    assert proc.returncode == 2 and "benchmark.path" in proc.stderr
