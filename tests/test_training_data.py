"""Training data that teaches the task (issue 14): complete replies only, stated constraints,
negatives that differ in content and not in form, the leakage check that stops DPO, and the
critic's log-probs at reply positions only.

The fast tests run the real pipeline functions (prepare_data, sft_examples, dpo_sources,
build_pairs, leakage_report) with the tiny model or a scripted generation backend (the network
edge of generation); the CLI test (``slow``) runs stage=dpo_only in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrain.errors import PosttrainError
from posttrain.records import read_json, read_jsonl
from posttrain.training.data import (
    constraint_pair,
    dpo_sources,
    incomplete_reason,
    prepare_data,
    sft_examples,
)
from posttrain.training.negatives import CONTENT_TYPES, FORM_TYPES, build_pairs, leakage_report, uses_word
from posttrain.training.replies import non_answer, uses_word_form

REPO = Path(__file__).resolve().parent.parent
CUT = "This answer keeps going and going and going, with more and"  # stopped by max_new_tokens
HALF = "The reply was stopped by a stop string in the middle of its"  # stopped by a stop string mid-sentence
GOOD = "Plants need daily watering; careful watering keeps roots healthy."
REWORDED = "Plants need water daily; a careful schedule keeps roots healthy."  # honours "no 'watering'"
APOLOGY = "I'm sorry for any confusion, but as an AI I don't have the ability to help with plants."


# ---------------------------------------------------------------- complete replies only

@pytest.mark.parametrize(("text", "finish", "why"), [
    ("A complete sentence.", "length", "length"),  # cut at max_new_tokens, whatever it looks like
    ("A complete sentence.", "stop", None),
    ("It ends in the middle of a", "stop", "mid_sentence"),
    ("Here are three things to pack:", "eos", "mid_sentence"),
    ("Tips:\n1. Practise daily\n2. Learn chords", "eos", None),  # a list ends without a full stop
    ("Hello!", None, None),
    ("Autumn Leaves", None, None),  # a short line (a title) is not a cut sentence
    ("", "stop", "empty"),
    # a loop is no ending, even when the model stopped by itself (SmolLM2's "Pros of Buying Used:")
    ("Pros of Buying Used: cheap.\nPros of Buying Used: cheap.\nPros of Buying Used: cheap.", "eos", "looping"),
    ("Pros of buying used cars. " * 3 + "And more", "length", "looping"),
    ("1. Tea\n2. Coffee\n" + "".join(f"{k}. Pasta\n" for k in range(3, 12)) + "12.", "length", "looping"),  # numbers too
    ("1. Tea\n2. Coffee\n3. Pasta\n4. Lentils\n5. Milk\n6. Oats\n7. Soap\n8. Rice\n9. Bread", "eos", None),
    ("Water it daily. Give it light. Water it daily. Keep it warm.", "eos", None),  # one repeat is not a loop
])
def test_incomplete_reason(text: str, finish: str | None, why: str | None) -> None:
    assert incomplete_reason(text, finish) == why


class ScriptedBackend:
    """Generation at the network edge: scripted proposals for self-instruct prompts; replies by
    instruction (a "CUT" instruction is answered up to max_new_tokens, a "HALF" one is stopped
    mid-sentence, a stated banned word is honoured)."""

    def __init__(self, proposals: list[str]):
        self.proposals = list(proposals)

    def generate(self, prompts, params):
        from posttrain.generation.backends import Generation

        out = []
        for p in prompts:
            if p.rstrip().endswith(":") and "\nTask " in p:
                text, reason = (self.proposals.pop(0) if self.proposals else "Describe a quiet village."), "stop"
            elif "CUT" in p:
                text, reason = CUT, "length"
            elif "HALF" in p:
                text, reason = HALF, "stop"
            elif params.do_sample:  # the second, sampled answer a stated constraint is made from
                text, reason = (APOLOGY if "SORRY" in p else REWORDED), "eos"
            else:
                text, reason = GOOD, "eos"
            out.append(Generation(text=text, n_prompt_tokens=1, n_new_tokens=9, finish_reason=reason))
        return out


PROPOSALS = [
    "Explain how a rainbow forms after a storm CUT.",
    "List three reasons why people enjoy gardening.",
    "Suggest a fun weekend activity for a family HALF.",
    "Compare trains and buses for a long trip CUT.",
    "Write a limerick about a forgetful penguin.",
    "Give advice to a student who is nervous before an exam.",
    "Describe the taste of a ripe mango to someone.",
    "Recommend a board game for four players.",
    "Name a good book for a long train journey.",
    "Explain why cats like to sleep in boxes.",
    "Plan a picnic menu for six friends.",
]


def _constant_critic(inputs):
    return [{"critic_score": 0.0} for _ in inputs.responses]


def _generated_cfg(compose, *extra: str):
    return compose("stage=sft", "model=tiny_base", "stage.override_gate=true", "stage.data_source=generated",
                   "stage.num_examples=6", "stage.critic_keep_fraction=1.0", "generation.batch_size=4",
                   "stage.max_rounds=6", "stage.multiturn_fraction=0", *extra)


def test_truncated_reply_never_reaches_sft_or_dpo_chosen(compose, tmp_path: Path) -> None:
    cfg = _generated_cfg(compose, "stage.constraint_fraction=0")
    run = tmp_path / "run"
    run.mkdir()
    rows, report = prepare_data(cfg, run, model=None, tokenizer=None, revision="sha256:x", source="generated",
                                gate_override=True, device="cpu", progress=False, score_fn=_constant_critic,
                                backend=ScriptedBackend(PROPOSALS))
    # generation went on until 6 complete rows: 7 instructions gave 4, so a second round asked for 4 more
    assert len(rows) == 6 and report["yield"]["complete_rows"] == 8 and report["yield"]["attempts"] == 2
    assert report["yield"]["conversations_generated"] == 11 and report["yield"]["target_complete_rows"] == 6
    # the report says what was dropped and why
    assert report["dropped_incomplete"]["length"] == 2 and report["dropped_incomplete"]["mid_sentence"] == 1
    assert report["n_dropped_incomplete"] == 3
    statuses = [r["status"] for r in read_jsonl(run / "data" / "responses.jsonl")]
    assert statuses.count("dropped_incomplete_length") == 2 and statuses.count("dropped_incomplete_mid_sentence") == 1
    assert rows and all(t["finish_reason"] == "eos" for r in rows for t in r["turns"])
    # no truncated reply is an SFT target or a DPO chosen reply, in either prompt style
    completions = [e["completion"] for e in sft_examples(rows, "instruction_cue", cfg.prompt, kind="base")]
    chosen = [s["chosen"] for s in dpo_sources(rows, "instruction_cue", cfg.prompt, kind="base")]
    assert completions and chosen
    for text in completions + chosen + [p["chosen"] for p in build_pairs(
            dpo_sources(rows, "instruction_cue", cfg.prompt, kind="base"), types=list(CONTENT_TYPES))]:
        assert CUT not in text and HALF not in text

    # rows from a file carry finish_reason too (e.g. an SFT run's train_data.jsonl): same rule
    data = tmp_path / "in.jsonl"
    file_rows = [
        {"turns": [{"user": "Say something kind.", "assistant": CUT, "finish_reason": "length"}]},
        {"turns": [{"user": "Say something calm.", "assistant": HALF}]},
        {"turns": [{"user": "Say something true.", "assistant": GOOD, "finish_reason": "eos"}]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in file_rows))
    cfg = _generated_cfg(compose, f"stage.data={data}")
    run2 = tmp_path / "run2"
    run2.mkdir()
    rows, report = prepare_data(cfg, run2, model=None, tokenizer=None, revision="sha256:x", source="generated",
                                gate_override=True, device="cpu", progress=False, score_fn=_constant_critic)
    assert [r["turns"][0]["assistant"] for r in rows] == [GOOD]
    assert report["dropped_incomplete"] == {"length": 1, "looping": 0, "mid_sentence": 1, "empty": 0}


def test_generation_stops_with_the_yield_when_the_rounds_run_out(compose, tmp_path: Path) -> None:
    """Every reply cut: no number of rounds reaches the target, so the run stops with the yield
    (complete / generated, by reason) and names the settings to change."""
    cut = [f"{t} CUT." for t in (
        "Explain how a rainbow forms", "Compare trains and buses", "Describe your favourite season",
        "Write a letter to a neighbour", "Summarise the history of tea", "Teach me to juggle three balls",
        "Argue for shorter school days", "Invent a new sandwich recipe", "Review a film about space travel",
        "Outline a week of healthy dinners", "Predict how cities will change", "Narrate a day in a lighthouse")]
    cfg = _generated_cfg(compose, "stage.constraint_fraction=0", "stage.max_rounds=3")
    with pytest.raises(PosttrainError, match=r"stage.max_rounds=3 with 0 complete conversations of 6 needed.*yield "
                                             r"0/(\d+) conversations \(\{'dropped_incomplete_length': \1\}\)"):
        prepare_data(cfg, tmp_path, model=None, tokenizer=None, revision="sha256:x", source="generated",
                     gate_override=True, device="cpu", progress=False, score_fn=_constant_critic,
                     backend=ScriptedBackend(cut))


def test_instruct_model_generates_in_its_own_chat_template(compose, tiny_paths, tmp_path: Path) -> None:
    """An instruct model training in its chat template writes its data in it too: the replies are
    asked for in ChatML, and the critic scores them in ChatML against the unconditional cue."""
    from transformers import AutoTokenizer

    from posttrain.training.data import critic_inputs

    tok = AutoTokenizer.from_pretrained(tiny_paths["instruct"])
    seen: list[str] = []

    class Recording(ScriptedBackend):
        def generate(self, prompts, params):
            seen.extend(p for p in prompts if "\nTask " not in p)
            return super().generate(prompts, params)

    cfg = compose("stage=sft", "model=tiny_instruct", "stage.override_gate=true", "stage.data_source=generated",
                  "stage.num_examples=4", "stage.critic_keep_fraction=1.0", "generation.batch_size=4",
                  "stage.max_rounds=6", "stage.multiturn_fraction=0.5", "stage.constraint_fraction=0")
    rows, report = prepare_data(cfg, tmp_path, model=None, tokenizer=tok, revision="sha256:x", source="generated",
                                gate_override=True, device="cpu", progress=False, score_fn=_constant_critic,
                                backend=Recording(PROPOSALS), prompt_format="chat_template")
    assert seen and all(p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") for p in seen)
    assert {r["generation_format"] for r in rows} == {"chat_template"} and len(rows) == 4
    assert report["yield"]["generation_format"] == "chat_template"
    inputs = critic_inputs(rows, cfg.prompt, tok)
    assert all(p.endswith("<|im_start|>assistant\n") for p in inputs.prompts)
    assert set(inputs.ends) == {"<|im_end|>"} and set(inputs.neutral_prompts) == {"<|im_start|>assistant\n"}


# ---------------------------------------------------------------- stated constraints

def test_generated_constraints_are_stated_and_the_violation_breaks_them(compose, tmp_path: Path) -> None:
    """Paired samples: GOOD (greedy) and REWORDED (sampled) answer the same plain instruction. Each has a
    word the other never uses in any form ("watering"; "schedule": not "water", which "watering" uses),
    so a seeded coin picks the chosen one and bans the other's word after the fact."""
    cfg = _generated_cfg(compose, "stage.constraint_fraction=0.9", "stage.num_examples=7")
    run = tmp_path / "run"
    run.mkdir()
    rows, report = prepare_data(cfg, run, model=None, tokenizer=None, revision="sha256:x", source="generated",
                                gate_override=True, device="cpu", progress=False, score_fn=_constant_critic,
                                backend=ScriptedBackend(PROPOSALS))
    constrained = [r["turns"][-1] for r in rows if "constraint" in r["turns"][-1]]
    assert constrained and report["n_constraint_rows"] == len(constrained)
    assert report["counts"]["responses"]["constraint_kept"] >= len(constrained)  # generated, then capped
    bans = {"watering": (REWORDED, GOOD), "schedule": (GOOD, REWORDED)}  # word -> (chosen, violation)
    for t in constrained:
        word = t["constraint"]["value"]
        assert t["constraint"] == {"kind": "banned_word", "value": word, "method": "paired_samples"}
        assert (t["assistant"], t["violation"]) == bans[word]
        assert t["user"].endswith(f"Do not use the word '{word}'.")
        assert not uses_word_form(t["assistant"], word) and uses_word(t["violation"], word)
    assert {t["constraint"]["value"] for t in constrained} == set(bans)  # the coin picked both directions
    sources = dpo_sources(rows, "instruction_cue", cfg.prompt, kind="base")
    pairs = build_pairs(sources, types=["constraint_violation"])
    assert pairs and all((p["chosen"], p["rejected"]) in bans.values() for p in pairs)  # taken as they are


def test_a_non_answer_never_makes_a_constraint_pair(compose, tmp_path: Path) -> None:
    cfg = _generated_cfg(compose, "stage.constraint_fraction=0.9")
    run = tmp_path / "run"
    run.mkdir()
    proposals = [p.replace("Name a good book", "SORRY name a good book").replace("Plan a picnic", "SORRY plan a picnic")
                 for p in PROPOSALS]
    rows, report = prepare_data(cfg, run, model=None, tokenizer=None, revision="sha256:x", source="generated",
                                gate_override=True, device="cpu", progress=False, score_fn=_constant_critic,
                                backend=ScriptedBackend(proposals))
    assert report["counts"]["responses"].get("constraint_non_answer", 0) >= 1
    for r in rows:
        if "SORRY" in r["turns"][0]["user"]:
            assert "constraint" not in r["turns"][-1] and r["turns"][-1]["assistant"] == GOOD  # the plain row stays


@pytest.mark.parametrize(("text", "expected"), [
    ("I'm sorry for any confusion. I'd be happy to help with that.", True),
    ("I'm sorry for your loss. I'll do my best to assist you.", True),
    ("I'm ready to help. What can I assist you with today?", True),
    ("I'm afraid I don't have the capability to translate languages directly.", True),
    ("As an AI designed to assist with writing, I can suggest a title.", True),
    ("I cannot help with that request.", True),
    ("The largest island in the world is Greenland.", False),
    ("1. Carrots\n2. Potatoes\n3. Beets", False),
    ("Say sorry first, then explain calmly what happened and how you will fix it.", False),
    ("", False),
])
def test_non_answer(text: str, expected: bool) -> None:
    assert non_answer(text) is expected


def test_constraint_pair_needs_both_directions_and_honours_word_forms() -> None:
    import numpy as np

    a, b = ("The sunset was breathtakingly golden over the harbour.", "eos"), \
        ("A breathtaking sunset glowed over the calm harbour.", "eos")
    # a's words: sunset (instruction), breathtakingly, golden; b's: breathtaking (a uses "breathtakingly"), glowed, calm
    pick = constraint_pair(a, b, "Describe a sunset.", np.random.default_rng(0))
    assert pick is not None
    (chosen, _), violation, word = pick
    assert not uses_word_form(chosen, word) and uses_word(violation, word)
    assert word != "breathtaking"  # b cannot be banned "breathtaking": a's "breathtakingly" uses it
    # one direction only (b's words all appear in a): no pair, whatever the coin says
    assert constraint_pair(("Cats sleep in warm boxes every afternoon.", "eos"), ("Cats sleep in boxes.", "eos"),
                           "Why do cats like boxes?", np.random.default_rng(0)) is None
    draws = {constraint_pair(a, b, "Describe a sunset.", np.random.default_rng(s))[1] for s in range(20)}  # type: ignore[index]
    assert draws == {a[0], b[0]}  # the coin, not length or style, picks the violation


def test_synthetic_constraints_each_form_banned_equally_often() -> None:
    from posttrain.training.synthetic import synthetic_rows

    plain = synthetic_rows(300, seed=0)
    rows = synthetic_rows(300, seed=0, constraint_fraction=0.3)
    assert [r["combination"] for r in rows] == [r["combination"] for r in plain]  # the constraint draw is separate
    last = [r["turns"][-1] for r in rows]
    constrained = [t for t in last if "constraint" in t]
    assert 0.2 < len(constrained) / len(rows) < 0.4
    for t in constrained:
        word = t["constraint"]["value"]
        assert not uses_word(t["assistant"], word) and uses_word(t["violation"], word)
        assert len(t["assistant"].split()) == len(t["violation"].split())  # same form, other content
    # every paraphrase is chosen about as often as it is rejected (no form marks the rejected side)
    chosen_forms = sorted(" ".join(t["assistant"].split()[:-1]) for t in constrained)
    rejected_forms = sorted(" ".join(t["violation"].split()[:-1]) for t in constrained)
    for form in set(chosen_forms):
        assert abs(chosen_forms.count(form) - rejected_forms.count(form)) <= 0.5 * chosen_forms.count(form) + 3


# ---------------------------------------------------------------- leakage on the default data

@pytest.fixture(scope="module")
def tiny_base(shared_cache: Path):
    from posttrain.config import ModelConfig
    from posttrain.models.loader import load_model

    mc = SimpleNamespace(**(ModelConfig().__dict__ | {
        "name": "tiny_base", "path": "tiny_base", "tiny": "base", "kind": "base", "dtype": "float32",
        "revision": None, "adapter": None}))
    return load_model(mc, cache_dir=shared_cache, device="cpu")


def test_default_data_has_no_separable_negative_type(compose, tiny_base, tmp_path: Path) -> None:
    """The default stage=dpo_only data of a tiny model (synthetic, 200 conversations, 30% with a
    stated constraint, the real critic) through the default negative mix: no classifier of the check
    (surface features, word and character n-gram TF-IDF, unseen vocabulary, length) exceeds 0.6 on
    any type. The same data with the form types added, or with corrupted_facts drawing from the old
    fixed value lists, is flagged, so the check can fail."""
    cfg = compose("stage=dpo_only", "model=tiny_base", "stage.override_gate=true")
    st = cfg.stage
    assert st.num_examples == 200 and list(st.negative_types) == list(CONTENT_TYPES) and st.leakage_threshold == 0.6
    rows, _ = prepare_data(cfg, tmp_path, model=tiny_base.model, tokenizer=tiny_base.tokenizer,
                           revision=tiny_base.provenance["revision"], source="synthetic", gate_override=True,
                           device="cpu", progress=False)
    assert len(rows) == 200
    sources = dpo_sources(rows, "transcript", cfg.prompt, kind="base")
    pairs = build_pairs(sources, types=list(st.negative_types), seed=cfg.seed)
    rep = leakage_report(pairs, threshold=st.leakage_threshold, seed=cfg.seed)
    print("\nleakage on the default data:", json.dumps(
        {t: [b["n"], {m: v["pair_accuracy"] for m, v in b["models"].items()}] for t, b in rep["per_type"].items()}))
    assert rep["leaky"] is False and rep["too_small_types"] == [], rep["message"]
    assert set(rep["per_type"]) == set(CONTENT_TYPES)
    for t, b in [*rep["per_type"].items(), ("overall", rep["overall"])]:
        assert b["n"] >= 40 and set(b["models"]) == {"surface", "word_ngrams", "char_ngrams", "unseen_vocabulary",
                                                      "length_rule"}
        assert all(m["pair_accuracy"] <= 0.6 for m in b["models"].values()), (t, b["models"])

    leaky = leakage_report(build_pairs(sources, types=list(CONTENT_TYPES) + list(FORM_TYPES), seed=cfg.seed),
                           threshold=st.leakage_threshold, seed=cfg.seed)
    assert leaky["leaky"] is True and set(FORM_TYPES) <= set(leaky["flagged_types"])
    assert leaky["per_type"]["truncated"]["strongest_feature"]["accuracy"] == 1.0

    # the old fixed pools (25 names, 30 cities against the data's 10 of each) put words in the rejected
    # replies that no chosen reply has: the unseen-vocabulary and n-gram classifiers find it
    old = leakage_report(build_pairs(sources, types=list(st.negative_types), seed=cfg.seed, fact_pool="lists"),
                         threshold=st.leakage_threshold, seed=cfg.seed)
    facts = old["per_type"]["corrupted_facts"]
    print("old value pools, corrupted_facts:", {m: v["pair_accuracy"] for m, v in facts["models"].items()})
    assert "corrupted_facts" in old["flagged_types"] and facts["models"]["unseen_vocabulary"]["separable"]


def test_types_too_small_to_test_are_reported() -> None:
    """A type with fewer pairs than a 0.8 leak needs to reach p < 0.01 (17) is too small to test,
    never counted as passed."""
    from posttrain.training.negatives import min_testable_pairs

    assert min_testable_pairs() == 17
    pairs = [{"chosen": f"Your name is {a}.", "rejected": f"Your name is {b}.", "negative_type": "corrupted_facts"}
             for a, b in zip("ABCDEFGHIJ", "BCDEFGHIJA", strict=True)]
    rep = leakage_report(pairs)
    assert rep["too_small_types"] == ["corrupted_facts"] and rep["per_type"]["corrupted_facts"]["checked"] is False
    assert "too small to test" in rep["message"]


# ---------------------------------------------------------------- critic: reply positions only

def test_critic_logprobs_only_at_reply_positions(tiny_base) -> None:
    """token_logprobs asks the model for the logits of the reply positions only (logits_to_keep =
    longest continuation + 1) and matches a full-sequence log_softmax computed one at a time."""
    import torch

    from posttrain.training.critic import token_logprobs

    model, tok = tiny_base.model, tiny_base.tokenizer
    prompts = ["User: My name is Alice. I live in a small house near the river.\nAssistant:", "User: Hi\nAssistant:"]
    conts = [" Nice to meet you, Alice!", " Hello there, how can I help you today?"]
    seen = []
    forward = model.forward

    def spy(*args, **kw):
        out = forward(*args, **kw)
        seen.append((kw.get("logits_to_keep"), kw["input_ids"].shape[1], out.logits.shape[1]))
        return out

    model.forward = spy
    try:
        got = token_logprobs(model, tok, prompts, conts, batch_size=2)
    finally:
        del model.forward
    n_cont = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in conts]
    keep, width, n_logits = seen[0]
    assert keep == max(n_cont) + 1 == n_logits < width  # never the whole sequence
    for p, c, lp in zip(prompts, conts, got, strict=True):
        ids = [tok.bos_token_id] * (tok.bos_token_id is not None) + tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        full = torch.tensor([ids + c_ids])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=full).logits[0].float(), dim=-1)
        want = [float(ref[len(ids) - 1 + j, t]) for j, t in enumerate(c_ids)]
        assert len(lp) == len(want) and max(abs(a - b) for a, b in zip(lp, want, strict=True)) < 1e-4


# ---------------------------------------------------------------- the CLI: DPO refuses leaky negatives

def _cli(*overrides: str, home: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "POSTTRAIN_HOME": str(home),
                        "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "posttrain", f"cache_dir={cache}", *overrides],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


@pytest.mark.slow
def test_dpo_refuses_leaky_negatives_and_runs_after_the_override(tmp_path: Path, shared_cache: Path) -> None:
    args = ["stage=dpo_only", "model=tiny_base", "stage.override_gate=true", "tracking=offline",
            "stage.num_examples=40", "stage.max_steps=3", "stage.save_steps=3", "stage.learning_rate=1e-2",
            "stage.negative_types=[truncated,corrupted_facts]"]
    refused = tmp_path / "refused"
    proc = _cli(*args, f"hydra.run.dir={refused}", home=tmp_path / "home", cache=shared_cache)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "separable from the replies alone" in proc.stderr and "truncated" in proc.stderr
    assert "stage.allow_leaky_negatives=true" in proc.stderr and "nothing was trained" in proc.stderr
    report = read_json(refused / "negatives_report.json")
    assert report["leaky"] is True and "truncated" in report["flagged_types"]
    assert report["per_type"]["truncated"]["strongest_feature"]["name"] in report["features"]
    assert not (refused / "checkpoints").exists() and not (refused / "adapter").exists()

    run = tmp_path / "run"
    proc = _cli(*args, "stage.allow_leaky_negatives=true", f"hydra.run.dir={run}", home=tmp_path / "home",
                cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = read_json(run / "summary.json")
    assert s["status"] == "finished" and s["weights_changed"] is True and s["lora_b_max_abs"] > 0
    assert s["allow_leaky_negatives"] is True and s["negatives_leaky"] is True
    # recorded in every record of the run
    for name in ("negatives_report.json", "dpo_step0.json", "config_diff.json", "provenance.json",
                 "adapter/provenance.json"):
        assert read_json(run / name)["allow_leaky_negatives"] is True, name
    assert all(p["allow_leaky_negatives"] is True for p in read_jsonl(run / "pairs.jsonl"))
    trainer_rows = [r for r in read_jsonl(run / "metrics.jsonl") if any(k.startswith("train/") for k in r)]
    assert trainer_rows and all(r.get("allow_leaky_negatives") is True for r in trainer_rows)
    # held-out pairs per type, evaluated through TRL's eval_dataset dict
    pairs = read_jsonl(run / "pairs.jsonl")
    held = {p["negative_type"] for p in pairs if p["split"] == "eval"}
    assert held == {"truncated", "corrupted_facts"} and set(s["margins_per_type"]) == held
    assert all(s["margins_per_type"][t]["n"] == sum(p["split"] == "eval" and p["negative_type"] == t for p in pairs)
               for t in held)


# ---------------------------------------------------------------- small mends of point 6

def test_dpo_refuses_lora_settings_that_differ_from_the_sft_adapter(compose, tmp_path: Path) -> None:
    from posttrain.errors import PosttrainError
    from posttrain.stages.train import _check_lora_matches

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "provenance.json").write_text(json.dumps({"stage": "sft", "stage_config": {
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_modules": "all-linear"}}))
    _check_lora_matches(compose("stage=dpo").stage, adapter)  # the defaults match: no refusal
    with pytest.raises(PosttrainError, match=r"stage.lora_r=8 but the adapter has 16.*Nothing was loaded"):
        _check_lora_matches(compose("stage=dpo", "stage.lora_r=8").stage, adapter)


@pytest.mark.parametrize(("dtype", "quant", "bf16", "fp16"), [
    ("float16", "nf4", False, True), ("bfloat16", "nf4", True, False), ("auto", None, True, False),
    ("float32", "nf4", False, False)])
def test_cuda_precision_never_sets_both_flags(compose, dtype: str, quant: str | None, bf16: bool, fp16: bool) -> None:
    from posttrain.training.common import device_args

    cfg = compose("stage=sft", f"model.dtype={dtype}", f"model.quantization={quant or 'null'}")
    args = device_args(cfg, "cuda")
    assert (args["bf16"], args["fp16"]) == (bf16, fp16)
    assert args["activation_checkpointing"] is True and "gradient_checkpointing" not in args  # the deprecated alias


def test_dpo_refuses_the_old_value_pools_from_the_command_line(shared_cache: Path, tmp_path: Path) -> None:
    """`stage=dpo_only stage.fact_pool=lists` (corrupted_facts drawing from the old fixed lists of 25 names
    and 30 cities) on the default data: the leakage check flags corrupted_facts and the run stops after
    the data, before any training, saying what to change; nothing is trained and the report says why."""
    from tests.helpers import posttrain

    run = tmp_path / "dpo_only"
    proc = posttrain("stage=dpo_only", "model=tiny_base", "stage.override_gate=true", "stage.fact_pool=lists",
                     "tracking=disabled", f"hydra.run.dir={run}", home=tmp_path / "home", cache=shared_cache,
                     check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "corrupted_facts" in out and "nothing was trained" in out, out[-2000:]
    report = read_json(run / "negatives_report.json")
    assert report["fact_pool"] == "lists" and report["leaky"] is True
    assert report["flagged_types"] == ["corrupted_facts"], report["flagged_types"]
    assert not (run / "adapter").exists() and not (run / "checkpoints").exists()


def test_new_data_settings_are_refused_before_anything_loads(compose) -> None:
    """stage.fact_pool, stage.reply_repetition_penalty and stage.constraint_temperature out of range: the
    range check names each setting and says nothing was loaded; the defaults pass it."""
    from posttrain.stages.train import _check_ranges

    _check_ranges(compose("stage=dpo_only", "model=tiny_base").stage)  # the defaults pass
    cfg = compose("stage=dpo_only", "model=tiny_base", "stage.fact_pool=pool", "stage.reply_repetition_penalty=0.5",
                  "stage.constraint_temperature=0")
    with pytest.raises(PosttrainError) as err:
        _check_ranges(cfg.stage)
    msg = str(err.value)
    assert "stage.fact_pool='pool'" in msg and "stage.reply_repetition_penalty=0.5 must lie in [1, 2]" in msg
    assert "stage.constraint_temperature=0.0 must lie in (0, 2]" in msg
    assert "nothing was loaded or spent" in msg
