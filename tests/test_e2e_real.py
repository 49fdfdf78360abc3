"""`make e2e-real`: the four-model pipeline end to end on a REAL model, SmolLM2-135M-Instruct, on CPU.

One chain through the real entrypoint, as docs/training.md writes it out:

1. ``stage=sft``: SmolLM2 writes its own data (self-instruct in its chat template, until the target of
   complete rows is reached), the critic keeps the best, LoRA SFT trains on it in its chat template;
2. ``stage=dpo`` from the SFT adapter and 3. ``stage=dpo_only`` from the untrained model, both on the
   SFT run's rows with the **default content negatives**, the leakage check passing, not overridden;
4. ``-m +experiment=four_model_smollm2``: the four models on the instruction benchmark's 130 held-out
   items, ``scorer=verifiable``, and the pre-registered gate (primary: SFT->DPO vs DPO-only,
   superiority).

The tests assert the pipeline kept its promises (the data it says it has, the leakage check run and
passed, the adapters evaluated are the ones trained, a decided gate); they do not assert what the
comparison finds: a null result is a result. ``POSTTRAIN_E2E_REAL_DIR`` keeps the folders (else a tmp
folder); the sweep's comparison.md is printed (docs/training.md quotes it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from posttrain.training.negatives import CONTENT_TYPES
from tests.helpers import posttrain

pytestmark = pytest.mark.e2e_real

COMMON = ["model=smollm2_instruct", "tracking=offline"]
# The data: 60 rows (the critic keeps 60 of 75 complete), 90% of the single-turn rows asked for a stated
# constraint and 10% continued into a conversation, so that each content type reaches the 17 pairs the
# leakage check needs (a type too small to test blocks DPO). Seed tasks that ask for short answers bearing
# facts (a planet, a weekday, a number): SmolLM2 imitates its seeds, and on the default open-ended ones
# ("Write a song", "Plan a trip") 125 of its 200 replies ran past 256 tokens (yield 0.305,
# docs/training.md), which would spend this tier's budget on replies it drops; on short answers without
# facts corrupted_facts applied to 11 of 60 rows.
SEEDS = [
    'Name the planet closest to the Sun in one sentence.',
    'Say in one sentence how many legs a spider has.',
    'Name a country in South America and its capital city.',
    'Say which month comes after March.',
    'Name two colours you can see in a rainbow.',
    'Say in one sentence in which year the first person walked on the Moon.',
    'Give the number of days in a leap year.',
    'Name a city that is famous for its canals.',
    'Say which day of the week comes after Friday.',
    'Say in one sentence which planet is known as the red one.',
    'Explain in one sentence why the sky looks blue.',
    'Name three vegetables that grow underground.',
    'Suggest a name for a friendly pet goldfish.',
    'List three things to pack for a picnic.',
    'Name two animals that live in the desert.',
]
SFT = ["stage=sft", "stage.override_gate=true", "stage.num_examples=60", "stage.max_steps=24",
       "generation.batch_size=32", "stage.constraint_fraction=0.9", "stage.multiturn_fraction=0.1",
       f"stage.seed_tasks=[{','.join(SEEDS)}]"]
# DPO on the default content negatives (wrong_instruction, constraint_violation, corrupted_facts), every type
# that applies to a row (negatives_per_example=3), 12 steps of 4 pairs for SFT->DPO and DPO-only alike.
DPO = ["stage.override_gate=true", "stage.negatives_per_example=3", "stage.max_steps=12"]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Any]:
    keep = os.environ.get("POSTTRAIN_E2E_REAL_DIR")
    root = Path(keep).resolve() if keep else tmp_path_factory.mktemp("e2e-real")
    root.mkdir(parents=True, exist_ok=True)
    home, cache = root / "home", smollm2_dir.parent.parent
    runs = {name: root / name for name in ("sft", "dpo", "dpo_only")}
    sweep = root / "four_model"
    times: dict[str, float] = {}

    def run(name: str, *overrides: str) -> None:
        t0 = time.perf_counter()
        posttrain(*COMMON, *overrides, home=home, cache=cache, timeout=1500)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"e2e-real: {name} took {times[name]:.0f} s", flush=True)

    run("sft", *SFT, f"hydra.run.dir={runs['sft']}")
    run("dpo", "stage=dpo", *DPO, f"stage.init_adapter={runs['sft']}", f"stage.data={runs['sft']}",
        f"hydra.run.dir={runs['dpo']}")
    run("dpo_only", "stage=dpo_only", *DPO, f"stage.data={runs['sft']}", f"hydra.run.dir={runs['dpo_only']}")
    run("four_model", "+experiment=four_model_smollm2", f"+adapters.sft={runs['sft']}",
        f"+adapters.dpo={runs['dpo']}", f"+adapters.dpo_only={runs['dpo_only']}", f"hydra.sweep.dir={sweep}")
    (root / "times.json").write_text(json.dumps(times, indent=2) + "\n")
    print(f"\ne2e-real: {sweep / 'comparison.md'}\n" + (sweep / "comparison.md").read_text(), flush=True)
    return {"runs": runs, "sweep": sweep, "times": times}


def test_sft_data_reached_its_target_with_complete_replies(pipeline: dict[str, Any]) -> None:
    run = pipeline["runs"]["sft"]
    report = _json(run / "data_report.json")
    rows = [json.loads(line) for line in (run / "train_data.jsonl").read_text().splitlines()]
    assert report["n_rows"] == len(rows) == 60
    y = report["yield"]
    assert y["complete_rows"] >= y["target_complete_rows"] == 75 and y["generation_format"] == "chat_template"
    assert 0 < y["yield"] <= 1 and y["conversations_generated"] >= y["complete_rows"]
    # none cut at the limit, none looping, none mid-sentence: the filter ran on every reply kept
    from posttrain.training.data import incomplete_reason

    for r in rows:
        for t in r["turns"]:
            assert t["assistant"].strip() and t.get("finish_reason") != "length"
            assert incomplete_reason(t["assistant"], t.get("finish_reason")) is None, t["assistant"][-200:]
    summary = _json(run / "summary.json")
    assert summary["prompt_format"] == "chat_template" and summary["label_audit"]["all_ok"] is True
    assert summary["weights_changed"] is True


@pytest.mark.parametrize("stage", ["dpo", "dpo_only"])
def test_dpo_trained_on_content_negatives_that_passed_the_leakage_check(pipeline: dict[str, Any], stage: str) -> None:
    run = pipeline["runs"][stage]
    report = _json(run / "negatives_report.json")
    text = json.dumps(report)
    assert "allow_leaky_negatives" not in text or '"allow_leaky_negatives": false' in text
    pairs = [json.loads(line) for line in (run / "pairs.jsonl").read_text().splitlines()]
    types = {p["negative_type"] for p in pairs}
    assert types == set(CONTENT_TYPES), types  # the default mix, every type present
    for t in types:  # each type tested (17+ pairs), none separable, nothing overridden
        assert report["per_type"][t]["checked"] is True, (t, report["per_type"][t].get("n"))
    assert report["leaky"] is False and report["too_small_types"] == []
    summary = _json(run / "summary.json")
    assert summary["weights_changed"] is True
    assert not summary.get("allow_leaky_negatives")


def test_four_model_comparison_is_decided_on_the_trained_adapters(pipeline: dict[str, Any]) -> None:
    sweep, runs = pipeline["sweep"], pipeline["runs"]
    comparison = _json(sweep / "comparison.json")
    models = {m["model"] for m in comparison["models"]}
    assert models == {"smollm2_instruct", "smollm2_instruct+sft", "smollm2_instruct+dpo",
                      "smollm2_instruct+dpo_only"}
    assert comparison["missing_jobs"] == []
    assert comparison["gate"]["verdict"] in {"PASS", "FAIL"}, comparison["gate"]
    # each variant's eval loaded the adapter its training run wrote
    for variant in ("sft", "dpo", "dpo_only"):
        summaries = [_json(p) for p in sweep.glob("*/summary.json")]
        (s,) = [s for s in summaries if s["model_identity"]["name"] == f"smollm2_instruct+{variant}"]
        trained = _json(runs[variant] / "adapter" / "provenance.json")["adapter_sha256"]
        assert s["model_identity"]["adapter_sha256"] == trained
