"""The bad-input battery: each invalid setting stops the real entrypoint before any model load
or API call, names the setting and its valid range, exits non-zero, and leaves no records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import posttrain

CASES = [
    (["generation.max_new_tokens=0"], "generation.max_new_tokens", "positive"),
    (["generation.max_new_tokens=-3"], "generation.max_new_tokens", "positive"),
    (["generation.batch_size=0"], "generation.batch_size", "positive"),
    (["benchmark.limit=0"], "benchmark.limit", "positive"),
    (["gate.instruct_min_success=1.2"], "gate.instruct_min_success", "[0, 1]"),
    (["gate.base_max_success=-0.1"], "gate.base_max_success", "[0, 1]"),
    (["model.revision=main"], "model.revision", "40-character commit hash"),
    (["model.revision=abc123"], "model.revision", "40-character commit hash"),
    (["budget.cap_usd=-5"], "budget.cap_usd", ">= 0"),
    (["judge.price_output_per_mtok=-1"], "judge.price_output_per_mtok", ">= 0"),
    (["benchmark=mt_bench"], "benchmark.path", "set benchmark.path"),
    (["benchmark=mt_bench", "benchmark.path=/no/such/question.jsonl"], "question.jsonl", ""),
    (["benchmark.split=nope"], "split", "pilot"),
    # a judge model with no known price: Claude's prices would silently budget another model
    (["scorer=llm", "judge.model=some-new-model"], "judge.prices_for", "USD per 1M tokens, >= 0"),
]


@pytest.mark.parametrize("overrides,setting,valid", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_stops_before_anything(tmp_path: Path, posttrain_home: Path, shared_cache: Path,
                                          overrides: list[str], setting: str, valid: str) -> None:
    run = tmp_path / "run"
    proc = posttrain(*overrides, "model=tiny_base", f"hydra.run.dir={run}", home=posttrain_home,
                     cache=shared_cache, check=False)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert setting in proc.stderr and valid in proc.stderr
    assert "Traceback" not in proc.stderr
    written = {p.name for p in run.iterdir()} if run.exists() else set()
    assert written <= {".hydra", "cli.log", ".posttrain.lock"}, written  # Hydra's own files only
    assert not (posttrain_home / "ledger.jsonl").exists()


def test_malformed_benchmark_file_names_the_line(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    bad = tmp_path / "question.jsonl"
    bad.write_text('{"question_id": 1, "category": "writing", "turns": ["hi"]}\n{"question_id": 2, "turns": 5}\n')
    proc = posttrain("benchmark=mt_bench", f"benchmark.path={bad}", "model=tiny_base",
                     f"hydra.run.dir={tmp_path / 'run'}", home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode == 2 and "question.jsonl:2" in proc.stderr
    assert "Traceback" not in proc.stderr
    run = tmp_path / "run"
    written = {p.name for p in run.iterdir()} if run.exists() else set()
    assert written <= {".hydra", "cli.log", ".posttrain.lock"}, written
    assert not (posttrain_home / "ledger.jsonl").exists()


def test_bad_value_with_a_judge_makes_no_api_call(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    """With scorer=llm and a reachable judge, a bad setting still stops before any request is sent."""
    from tests.llm_server import FakeLLMServer

    with FakeLLMServer() as srv:
        proc = posttrain("model=tiny_base", "scorer=llm", "judge=claude", f"judge.base_url={srv.anthropic_url}",
                         "generation.max_new_tokens=0", f"hydra.run.dir={tmp_path / 'run'}", home=posttrain_home,
                         cache=shared_cache, check=False)
        assert srv.model_calls == 0 and sum(srv.counts.values()) == 0
    assert proc.returncode == 2 and "generation.max_new_tokens" in proc.stderr
    assert not (posttrain_home / "ledger.jsonl").exists()


def test_typo_in_a_key_fails_at_composition(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    proc = posttrain("generation.max_new_token=5", f"hydra.run.dir={tmp_path / 'run'}", home=posttrain_home,
                     cache=shared_cache, check=False)
    assert proc.returncode != 0 and "max_new_token" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_null_judge_price_fails_at_composition(tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    """A price set to null is a type error for the schema: refused before anything runs."""
    proc = posttrain("scorer=llm", "judge.price_input_per_mtok=null",
                     f"hydra.run.dir={tmp_path / 'run'}", home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode != 0 and "price_input_per_mtok" in proc.stderr
    assert not (tmp_path / "run").exists()


