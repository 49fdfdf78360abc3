"""The real-model tier, part 2: self-instruct data, LoRA SFT and DPO on SmolLM2-135M-Instruct.

One chain through the real entrypoint, as a user runs it, in the model's own chat template:
SmolLM2 writes its own training data in it (Self-Instruct proposals, ROUGE-L diversity and
held-out filters, replies until the target of complete rows is reached, the log-prob critic), a
short LoRA SFT trains on it through TRL's conversational prompt/completion format (response-only
loss, no template edits: SmolLM2's template has no {% generation %} markers), a short DPO
continues from the SFT adapter, and each adapter is loaded into an eval whose replies must differ
from the untrained model's on the same items.
Small on purpose (a handful of examples, a few steps, 16-token replies, one thread): it proves the
code paths work on real text and real weights, not that the training helps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import posttrain

pytestmark = pytest.mark.real

# The model's own chat template: the format it is evaluated in, writes its data in and trains in.
COMMON = ["model=smollm2_instruct", "prompt=chat_template", "tracking=disabled"]
EVAL = ["stage=eval", "scorer=heuristic_triage", "benchmark.limit=2", "stage.sentinel=false",
        "generation.max_new_tokens=16", "generation.batch_size=2"]
TRAIN = ["stage.override_gate=true", "stage.max_steps=4", "stage.save_steps=4", "stage.logging_steps=1",
         "stage.per_device_batch_size=2", "stage.max_length=256", "stage.learning_rate=1e-3",
         "generation.batch_size=8"]
SHORT_TASKS = ["Name a fruit that is yellow.", "Which animal says moo?", "What colour is fresh grass?",
               "Name a tool that cuts paper.", "What do bees make?", "Which season comes after winter?",
               "Name a bird that cannot fly.", "What do you call a baby dog?"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # 2 shared cores: spinning OpenMP threads only slow this down


def _replies(run: Path) -> list[str]:
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    return [t["reply"] for r in sorted(rows, key=lambda r: r["item_id"]) for t in r["turns"]]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Any]:
    """base eval -> generated data + SFT -> eval with the SFT adapter -> DPO -> eval with the DPO adapter."""
    root = tmp_path_factory.mktemp("real-chain")
    home, cache = root / "home", smollm2_dir.parent.parent

    def run(*overrides: str) -> None:
        posttrain(*COMMON, *overrides, home=home, cache=cache, env=ONE_THREAD, timeout=900)

    runs = {name: root / name for name in ("base", "sft", "sft_eval", "dpo", "dpo_eval")}
    run(*EVAL, f"hydra.run.dir={runs['base']}")
    # self-instruct keeps generating until 4 / 0.8 = 5 replies are complete (none cut at the
    # 96-token reply limit, none looping), or stops with its yield within 12 rounds of 8 proposals.
    # Short factual seed tasks: on open-ended ones ("Write a song about summer.") SmolLM2 completed 2
    # replies of 16 at 256 tokens, looping in 10 (docs/training.md)
    run("stage=sft", *TRAIN, "stage.max_length=320", "stage.data_source=generated", "stage.num_examples=4",
        "stage.max_rounds=12", "stage.instruction_max_new_tokens=32", "stage.reply_max_new_tokens=96",
        "stage.multiturn_fraction=0.5", f"stage.seed_tasks=[{','.join(SHORT_TASKS)}]", f"hydra.run.dir={runs['sft']}")
    run(*EVAL, f"model.adapter={runs['sft']}", f"hydra.run.dir={runs['sft_eval']}")
    run("stage=dpo", *TRAIN, f"stage.init_adapter={runs['sft']}", f"stage.data={runs['sft']}",
        # truncated applies to any reply, so even one real row yields a pair; a handful of pairs
        # is also too few for the leakage classifier's cross-validation to mean anything
        "stage.negative_types=[wrong_instruction,truncated]", "stage.allow_leaky_negatives=true",
        f"hydra.run.dir={runs['dpo']}")
    run(*EVAL, f"model.adapter={runs['dpo']}", f"hydra.run.dir={runs['dpo_eval']}")
    return runs


def test_self_instruct_on_real_text_is_filtered_and_counted(chain: dict[str, Any]) -> None:
    report = json.loads((chain["sft"] / "data_report.json").read_text())
    ins = report["counts"]["instructions"]
    # every proposal is accounted for: kept, surplus (beyond the target), or dropped with its reason
    # (length, keyword, format, held-out ROUGE-L, pool ROUGE-L duplicate)
    statuses = {k: v for k, v in ins.items() if k in ("kept", "surplus") or k.startswith("dropped_")}
    assert ins["proposed"] > 0 and ins.get("kept", 0) > 0
    assert ins["proposed"] == sum(statuses.values()), ins
    assert report["contamination"]["n_heldout_texts"] > 0 and report["contamination"]["rouge_threshold"] == 0.7
    assert "n_dropped_heldout" in report
    critic = report["critic"]
    assert critic["mode"] and critic["score_min"] is not None and critic["score_max"] >= critic["score_min"]
    rows = [json.loads(line) for line in (chain["sft"] / "train_data.jsonl").read_text().splitlines()]
    assert len(rows) == report["n_rows"] == 4  # the target, reached
    assert report["yield"]["complete_rows"] >= 5 and report["yield"]["generation_format"] == "chat_template"
    assert report["yield"]["conversations_generated"] <= ins["kept"]
    assert all(r["generation_format"] == "chat_template" for r in rows)
    assert all(t.get("finish_reason") != "length" for r in rows for t in r["turns"])  # none cut at the limit
    # real text: every reply has words, and every kept instruction was proposed by the model, not a seed
    assert all(t["assistant"].strip() for r in rows for t in r["turns"])
    instructions = [json.loads(line) for line in (chain["sft"] / "data" / "instructions.jsonl").read_text().splitlines()]
    assert any(r.get("status") == "kept" for r in instructions)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_adapter_trained_on_real_weights_changes_the_eval(chain: dict[str, Any], stage: str) -> None:
    adapter = chain[stage] / "adapter"
    prov = json.loads((adapter / "provenance.json").read_text())
    base_prov = json.loads((chain["base"] / "provenance.json").read_text())
    assert prov["base_revision"] == base_prov["revision"]  # trained on exactly these SmolLM2 weights
    evaluated = json.loads((chain[f"{stage}_eval"] / "provenance.json").read_text())
    assert evaluated["adapter_sha256"] == prov["adapter_sha256"]
    base, tuned = _replies(chain["base"]), _replies(chain[f"{stage}_eval"])
    assert len(base) == len(tuned) and all(base)
    assert base != tuned  # the adapter changed what the model says on the same items


def test_sft_trains_smollm2_in_its_chat_template_on_the_reply_only(chain: dict[str, Any]) -> None:
    """SFT in SmolLM2's own ChatML template: every token of every sequence was audited, and the
    trained tokens are the reply and its <|im_end|> (plus the template's newline after it); the
    system prompt, the user turn and the assistant header carry no loss."""
    summary = json.loads((chain["sft"] / "summary.json").read_text())
    assert summary["prompt_format"] == "chat_template" and summary["label_audit"]["all_ok"] is True
    assert summary["label_audit"]["n_failed"] == 0 and summary["label_audit"]["n_examples"] >= 4
    audit = (chain["sft"] / "label_audit.txt").read_text()
    blocks = [b for b in audit.split("=== example ")[1:]]
    assert blocks
    for block in blocks:
        trained = [seg.split("]]")[0] for seg in block.split("[[")[1:]]
        assert len(trained) >= 1 and all(t.endswith("<|im_end|>\n") for t in trained), trained
        assert all("<|im_start|>" not in t for t in trained)  # no header, no user turn, no system prompt
        assert "<|im_start|>user" in block.split("[[")[0]  # the prompt is there, untrained


def test_sft_in_smollm2_chat_template_without_generation(tmp_path: Path, smollm2_dir: Path) -> None:
    """The short path to the same claim, without data generation: SFT from a file of SmolLM2's own
    coherent replies (the critic fixture), two steps in its chat template; the audit of every
    sequence passes and the rendered spans are the replies with their <|im_end|>."""
    fixture = Path(__file__).parent / "fixtures" / "critic_smollm2_replies.jsonl"
    rows = [json.loads(line) for line in fixture.read_text().splitlines()]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["reply"]}) + "\n"
                            for r in rows if r["label"] == "coherent"))
    run = tmp_path / "sft"
    posttrain(*COMMON, "stage=sft", *TRAIN, "stage.max_steps=2", "stage.save_steps=2", f"stage.data={data}",
              "stage.num_examples=6", f"hydra.run.dir={run}", home=tmp_path / "home",
              cache=smollm2_dir.parent.parent, env=ONE_THREAD, timeout=900)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["prompt_format"] == "chat_template" and summary["weights_changed"] is True
    assert summary["label_audit"]["all_ok"] is True and summary["label_audit"]["n_examples"] == 6
    audit = (run / "label_audit.txt").read_text()
    blocks = audit.split("=== example ")[1:]  # the header explains [[...]]; the examples follow
    spans = [seg.split("]]")[0] for block in blocks for seg in block.split("[[")[1:]]
    assert len(spans) == 6 and all(t.endswith("<|im_end|>\n") and "<|im_start|>" not in t for t in spans)
    assert audit.count("<|im_start|>system") == 6 and audit.count("<|im_start|>user") == 6  # masked, present
