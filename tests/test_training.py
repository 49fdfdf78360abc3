"""Training (issue 6): ROUGE-L, negatives, leakage check, critic, label masks, data pipeline, gate,
step-0 check; and (slow) the sft / dpo / dpo_only stages through the real CLI, with kill-and-resume.

The fast tests use the tiny models and fakes; the subprocess ones are marked ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from posttrain.errors import PosttrainError
from posttrain.records import read_json, read_jsonl, sha256_file
from posttrain.training.negatives import (
    CONTENT_TYPES,
    NEGATIVE_TYPES,
    build_pairs,
    find_constraint,
    leakage_report,
)
from posttrain.training.rouge import RougePool, lcs_length, rouge_l, rouge_tokens

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- ROUGE-L, worked by hand

def test_rouge_tokens_lowercase_alphanumeric() -> None:
    assert rouge_tokens("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]


def test_lcs_length_classic_example() -> None:
    # CLRS: LCS("ABCBDAB", "BDCABA") = 4 (e.g. BCBA)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


@pytest.mark.parametrize(("cand", "ref", "expected"), [
    # Lin (2004): S1 "police killed the gunman" vs S2 "police kill the gunman": LCS 3 of 4 -> P = R = F = 0.75
    ("police kill the gunman", "police killed the gunman", 0.75),
    # S3 "the gunman kill police": LCS "the gunman" = 2 -> P = R = 2/4 -> F = 0.5
    ("the gunman kill police", "police killed the gunman", 0.5),
    # LCS 5; P = 5/6, R = 5/5 -> F = 2 (5/6)(1) / (5/6 + 1) = 10/11
    ("the cat sat on the mat", "the cat on the mat", 10 / 11),
    ("Hello, World!", "hello world", 1.0),
    ("a b c d", "e f", 0.0),
    ("", "", 0.0),
])
def test_rouge_l_hand_worked(cand: str, ref: str, expected: float) -> None:
    assert rouge_l(cand, ref) == pytest.approx(expected, abs=1e-12)


def test_rouge_pool_threshold_and_closest() -> None:
    pool = RougePool(["What is the capital of France?", "Write a poem about the sea."], threshold=0.7)
    hit, score, match = pool.too_similar("what is the capital of france")
    assert hit and score == pytest.approx(1.0) and match == "What is the capital of France?"
    hit, score, _ = pool.too_similar("Explain how tides work.")
    assert not hit and score < 0.7


# ---------------------------------------------------------------- negatives

EXAMPLES = [
    {"id": "e0", "prompt": "P0", "user": "Answer in under 5 words: what is the capital of Kenya?",
     "chosen": "Nairobi is the capital."},
    {"id": "e1", "prompt": "P1", "user": "Please reply in Spanish: how do you say thank you?",
     "chosen": "Se dice gracias."},
    {"id": "e2", "prompt": "P2", "user": "My name is Alice. What is my name?", "chosen": "Your name is Alice."},
    {"id": "e3", "prompt": "P3", "user": "How many legs does a spider have?", "chosen": "A spider has 8 legs."},
    {"id": "e4", "prompt": "P4", "user": "I live in Oslo. Where do I live?", "chosen": "You live in Oslo. It is cold."},
    {"id": "e5", "prompt": "P5", "user": "Describe the sea. Do not use the word 'blue'.",
     "chosen": "The sea is wide and deep.", "constraint": {"kind": "banned_word", "value": "blue"}},
    {"id": "e6", "prompt": "P6", "user": "What is my name? Do not use the word 'name'.", "chosen": "You are called Bob.",
     "constraint": {"kind": "banned_word", "value": "name"}, "violation": "Your name is Bob."},
]


def _pairs_of(kind: str, seed: int = 0) -> list[dict]:
    return build_pairs(EXAMPLES, types=[kind], seed=seed)


def test_negatives_truncated() -> None:
    pairs = _pairs_of("truncated")
    assert pairs
    for p in pairs:
        cw, rw = p["chosen"].split(), p["rejected"].split()
        assert p["negative_type"] == "truncated" and 1 <= len(rw) < len(cw)
        assert " ".join(cw).startswith(p["rejected"]) and not p["rejected"].endswith((".", "!", "?"))


def test_negatives_wrong_instruction_is_a_permutation_of_other_prompts_answers() -> None:
    chosen_of = {e["id"]: e["chosen"] for e in EXAMPLES}
    pairs = _pairs_of("wrong_instruction")
    assert len(pairs) == len(EXAMPLES)
    for p in pairs:
        assert p["rejected"] in chosen_of.values() and p["rejected"] != chosen_of[p["source_id"]]
    # every chosen reply is some other pair's rejected one: same distribution of surface features
    assert sorted(p["rejected"] for p in pairs) == sorted(p["chosen"] for p in pairs)


def test_negatives_constraint_violation_only_where_a_constraint_is_stated() -> None:
    assert find_constraint("Answer in under 5 words: hi") == ("max_words", 5)
    assert find_constraint("Please reply in Spanish") == ("language", "spanish")
    assert find_constraint("Give me a bulleted list") == ("format", "bullet_list")
    assert find_constraint("Describe it. Do not use the word 'blue'.") == ("banned_word", "blue")
    by_id = {p["source_id"]: p for p in _pairs_of("constraint_violation")}
    # only e5 (a banned word read from the prompt) and e6 (a violation made by the data generator);
    # form constraints (word limits, a language) and unconstrained prompts give no pair
    assert set(by_id) == {"e5", "e6"}
    assert by_id["e6"]["rejected"] == "Your name is Bob." and by_id["e6"]["negative_meta"]["source"] == "data_generator"
    e5 = by_id["e5"]
    assert "blue" in e5["rejected"].split() and len(e5["rejected"].split()) == len(e5["chosen"].split())
    assert e5["rejected"].endswith(".")  # same form: one word replaced, the punctuation kept


def test_constraint_violation_from_the_data_is_cut_to_the_chosen_length() -> None:
    """The model's unconstrained reply is cut after whole sentences to the length closest to the chosen
    reply's, still using the banned word and ending as a complete reply; no cut within 2/3-3/2 of the
    chosen length gives no pair (SmolLM2's uncut violations were 2.6x longer: a length rule found 0.84)."""
    from posttrain.training.negatives import constraint_violation, length_matched

    chosen = "Bees make honey from the nectar of flowers."
    violation = ("Bees make sweet honey. The honey is stored in wax cells. Beekeepers collect honey in late "
                 "summer, and they leave enough for the bees to eat during the cold winter months ahead.")
    cut = length_matched(violation, chosen, "honey")
    assert cut == "Bees make sweet honey. The honey is stored in wax cells."
    assert 2 / 3 <= len(cut) / len(chosen) <= 3 / 2 and violation.startswith(cut)
    neg = constraint_violation("What do bees make? Do not use the word 'honey'.", chosen, violation,
                               {"kind": "banned_word", "value": "honey"}, np.random.default_rng(0))
    assert neg is not None and neg.text == cut and neg.meta["cut_from_chars"] == len(violation)
    # the word only in a sentence far past the chosen length: no cut uses it at a matching length
    late = "Bees are insects. They live in hives. They fly far. " * 3 + "They make honey."
    assert length_matched(late, chosen, "honey") is None
    assert constraint_violation("Q. Do not use the word 'honey'.", chosen, late,
                                {"kind": "banned_word", "value": "honey"}, np.random.default_rng(0)) is None
    # a reply of the chosen length is kept whole; a cut never ends on a colon (an unfinished reply)
    same = "Bees make honey from flower nectar, you see."
    assert length_matched(same, chosen, "honey") == same
    assert length_matched("Bees make honey as follows:\n- nectar is gathered.", chosen, "honey") == \
        "Bees make honey as follows:\n- nectar is gathered."


def test_negatives_corrupted_facts_same_kind_same_shape() -> None:
    """Replacements come from the chosen replies' own values of the same kind (numbers of the same
    shape); a fact with no other value in the data gives no negative."""
    more = [{"id": "m0", "prompt": "Q0", "user": "Who am I?", "chosen": "You are Carmen."},
            {"id": "m1", "prompt": "Q1", "user": "Where is it?", "chosen": "It is in Lima."},
            {"id": "m2", "prompt": "Q2", "user": "How many legs does an insect have?", "chosen": "An insect has 6 legs."}]
    by_id = {p["source_id"]: p for p in build_pairs(EXAMPLES + more, types=["corrupted_facts"], seed=0)}
    data_values = {"Alice", "Bob", "Carmen", "Nairobi", "Oslo", "Lima", "8", "6"}
    spider = by_id["e3"]["rejected"].split()
    assert spider == ["A", "spider", "has", "6", "legs."]  # the data's only other one-digit number
    name = by_id["e2"]["rejected"]
    assert name.startswith("Your name is ") and name.rstrip(".").split()[-1] in {"Bob", "Carmen"}
    city = by_id["e4"]["rejected"]
    assert city.split()[3].rstrip(".") in {"Nairobi", "Lima"} and "Oslo" not in city
    assert "e5" not in by_id  # "The sea is wide and deep." has no fact to corrupt: no negative
    for p in by_id.values():
        assert p["rejected"] != p["chosen"] and len(p["negative_meta"]["changes"]) == 1
        assert p["negative_meta"]["changes"][0].split("->")[1] in data_values  # no word the data lacks
    from posttrain.training.negatives import FACT_KINDS, corrupted_facts, fact_values

    assert corrupted_facts("A spider has 8 legs.", np.random.default_rng(0), fact_values(["A spider has 8 legs."])) \
        is None  # no other value of the kind in the data
    old = build_pairs(EXAMPLES, types=["corrupted_facts"], seed=0, fact_pool="lists")  # the fixed lists
    assert all(p["negative_meta"]["changes"][0].split("->")[1] in FACT_KINDS.get("first_name", ()) + FACT_KINDS["city"]
               or p["negative_meta"]["changes"][0].split("->")[1].isdigit() for p in old)
    # list numbering is never a fact
    neg = corrupted_facts("Steps:\n1. Boil water.\n2. Add the tea.", np.random.default_rng(0))
    assert neg is None


def test_negatives_padded_repetitive() -> None:
    for p in _pairs_of("padded_repetitive"):
        assert p["rejected"].startswith(p["chosen"]) and len(p["rejected"]) > len(p["chosen"])
        assert p["negative_meta"]["repeats"] in (2, 3)


def test_negatives_seeded_and_balanced() -> None:
    twice = EXAMPLES + [e | {"id": e["id"] + "b"} for e in EXAMPLES]
    a = build_pairs(twice, types=list(NEGATIVE_TYPES), seed=3)
    b = build_pairs(twice, types=list(NEGATIVE_TYPES), seed=3)
    c = build_pairs(twice, types=list(NEGATIVE_TYPES), seed=4)
    assert a == b and a != c
    assert {p["negative_type"] for p in a} == set(NEGATIVE_TYPES)
    counts = [sum(p["negative_type"] == t for p in a) for t in NEGATIVE_TYPES]
    assert max(counts) - min(counts) <= 2  # balanced, constraint_violation served first where it applies
    assert build_pairs(EXAMPLES, seed=0) and {p["negative_type"] for p in build_pairs(EXAMPLES)} <= set(CONTENT_TYPES)
    with pytest.raises(ValueError):
        build_pairs(EXAMPLES, types=["nonsense"])


# ---------------------------------------------------------------- leakage check

def _pair(chosen: str, rejected: str, kind: str = "x") -> dict:
    return {"chosen": chosen, "rejected": rejected, "negative_type": kind}


def test_leakage_flags_a_length_separable_set() -> None:
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    pairs = []
    for _ in range(40):
        base = " ".join(rng.choice(words, 6)) + "."
        pairs.append(_pair(base, base + " " + " ".join(rng.choice(words, 12)) + ".", "padded"))
    rep = leakage_report(pairs)
    assert rep["overall"]["longer_is_chosen"] == 0.0
    assert rep["overall"]["length_only_accuracy"] == 1.0
    assert rep["leaky"] is True and "padded" in rep["message"] and rep["flagged_types"] == ["padded"]
    assert rep["per_type"]["padded"]["separable"] is True


def test_leakage_quiet_when_only_content_differs() -> None:
    rng = np.random.default_rng(1)
    names = ["Alice", "Bob", "Carmen", "Dmitri", "Emeka", "Fatima"]
    pairs = []
    for _ in range(60):
        a, b = rng.choice(names, 2, replace=False)
        pairs.append(_pair(f"Your name is {a}.", f"Your name is {b}.", "corrupted_facts"))
    rep = leakage_report(pairs)
    assert rep["overall"]["length_only_accuracy"] <= 0.6
    assert all(m["pair_accuracy"] <= 0.6 for m in rep["overall"]["models"].values()), rep["overall"]["models"]
    assert rep["leaky"] is False


def test_leakage_word_ngrams_find_a_word_only_rejected_replies_use() -> None:
    """Same length, same form, but the rejected replies draw names from a pool the chosen ones never
    use: the surface features see nothing, the word TF-IDF and unseen-vocabulary models do."""
    rng = np.random.default_rng(2)
    mine, other = ["Alice", "Bruno", "Carla", "Diego"], ["Ralph", "Sonja", "Tilda", "Ulric"]  # all 5 letters
    pairs = [_pair(f"Your name is {rng.choice(mine)}.", f"Your name is {rng.choice(other)}.", "facts")
             for _ in range(60)]
    rep = leakage_report(pairs)
    models = rep["per_type"]["facts"]["models"]
    assert models["word_ngrams"]["separable"] and models["unseen_vocabulary"]["separable"], models
    assert models["length_rule"]["pair_accuracy"] <= 0.6 and rep["leaky"] and rep["flagged_types"] == ["facts"]


# ---------------------------------------------------------------- step-0 check and gate

def test_step0_check_accepts_ln2_and_rejects_a_wrong_reference() -> None:
    from posttrain.training.dpo import check_step0

    ok, msg = check_step0({"loss": math.log(2), "rewards/chosen": 0.0, "rewards/rejected": 0.0,
                           "rewards/margins": 0.0}, 0.05)
    assert ok, msg
    ok, msg = check_step0({"loss": 0.9, "rewards/chosen": -0.3, "rewards/rejected": 0.1, "rewards/margins": -0.4},
                          0.05)
    assert not ok and "reference model is wrong" in msg and "ln 2" in msg


def _stage(**kw):
    base = {"name": "sft", "comparison": None, "override_gate": False}
    return SimpleNamespace(**(base | kw))


def test_gate_refuses_without_a_pass(tmp_path: Path) -> None:
    from posttrain.training.common import GATE_REFUSAL, check_gate

    with pytest.raises(PosttrainError, match="never train without proving the gap exists"):
        check_gate(_stage())
    fail = tmp_path / "fail" / "comparison.json"
    fail.parent.mkdir()
    fail.write_text(json.dumps({"gate": {"verdict": "FAIL", "reasons": ["base too good"]}}))
    with pytest.raises(PosttrainError) as exc:
        check_gate(_stage(comparison=str(fail)))
    assert "FAIL" in str(exc.value) and GATE_REFUSAL in str(exc.value)


def test_gate_accepts_pass_file_or_sweep_folder_and_records_override(tmp_path: Path) -> None:
    from posttrain.training.common import check_gate

    sweep = tmp_path / "sweep"
    (sweep / "sub").mkdir(parents=True)
    comp = sweep / "sub" / "comparison.json"
    comp.write_text(json.dumps({"gate": {"verdict": "PASS", "base_model": "b", "instruct_model": "i"}}))
    info = check_gate(_stage(comparison=str(sweep)))
    assert info["verdict"] == "PASS" and info["gate_override"] is False
    assert info["comparison_sha256"] == sha256_file(comp)
    assert check_gate(_stage(override_gate=True))["gate_override"] is True


def test_plan_refuses_before_loading(compose) -> None:
    from posttrain.stages import train

    cfg = compose("stage=sft", "model=tiny_base")
    with pytest.raises(PosttrainError, match="never train without proving the gap exists"):
        train.plan(cfg)
    cfg = compose("stage=dpo", "model=tiny_base", "stage.override_gate=true")
    with pytest.raises(PosttrainError, match="stage.init_adapter"):
        train.plan(cfg)
    cfg = compose("stage=dpo_only", "model=tiny_base", "stage.override_gate=true", "stage.critic=magic")
    with pytest.raises(PosttrainError, match="stage.critic"):
        train.plan(cfg)


def test_plan_estimates_gpu_cost(compose) -> None:
    from posttrain.stages import train

    cfg = compose("stage=sft", "model=tiny_base", "stage.override_gate=true", "stage.max_steps=90",
                  "model.num_gpus=1", "model.gpu_price_per_hour=0.8", "budget.est_train_seconds_per_step=20")
    plan = train.plan(cfg)
    # synthetic data for a tiny model: no generation cost; 90 steps x 20 s = 0.5 h x 1 GPU x $0.8
    assert plan.estimate_gpu_hours == pytest.approx(0.5)
    assert plan.estimate_usd == pytest.approx(0.4)
    assert plan.state["data_source"] == "synthetic" and plan.state["gate"]["gate_override"] is True


def test_plan_checks_format_lora_length_and_yield_before_data(compose) -> None:
    """Everything knowable before data generation fails in plan() (issue 22 §2), naming the setting."""
    from posttrain.stages import train

    gen = ["stage.override_gate=true", "stage.data_source=generated"]
    plan = train.plan(compose("stage=sft", "model=tiny_instruct", *gen))
    ok = plan.state["trainable"]
    assert plan.state["format"] == "chat_template" and ok["generation_format"] == "chat_template"
    assert "<|im_end|>" in ok["template"]["end_of_turn_tokens"] and "q_proj" in ok["lora_targets"]
    assert ok["longest_example_tokens"]["total"] <= 768 and ok["max_proposals"] >= ok["complete_rows_needed"]
    assert train.plan(compose("stage=sft", "model=tiny_base", *gen)).state["trainable"]["generation_format"] is None
    with pytest.raises(PosttrainError, match=r"no module named \['query_key_value'\]"):
        train.plan(compose("stage=sft", "model=tiny_instruct", "stage.override_gate=true",
                           "stage.lora_target_modules=query_key_value"))
    # DPO: too few rows for the leakage check to test each negative type (17 pairs), unless overridden
    with pytest.raises(PosttrainError, match="fewer than the 17 the leakage check needs"):
        train.plan(compose("stage=dpo_only", "model=tiny_instruct", "stage.override_gate=true", "stage.num_examples=40"))
    small = train.plan(compose("stage=dpo_only", "model=tiny_instruct", "stage.override_gate=true",
                               "stage.num_examples=40", "stage.allow_leaky_negatives=true"))
    assert small.state["trainable"]["negatives"]["pairs_per_type_at_most"] == pytest.approx(40 / 3)
    with pytest.raises(PosttrainError, match="stage.max_length=128 is shorter"):
        train.plan(compose("stage=sft", "model=tiny_instruct", *gen, "stage.max_length=128"))
    with pytest.raises(PosttrainError, match="Raise stage.max_rounds"):
        train.plan(compose("stage=sft", "model=tiny_instruct", *gen, "stage.max_rounds=2", "generation.batch_size=4"))


def test_config_diff_between_dpo_variants(compose) -> None:
    from posttrain.training.dpo import config_diff

    diff = config_diff(compose("stage=dpo", "stage.init_adapter=/x").stage)
    assert set(diff["differences"]) == {"name", "init_adapter"} and diff["unexpected_differences"] == []
    diff = config_diff(compose("stage=dpo_only", "stage.beta=0.3").stage)
    assert diff["differences"]["beta"] == {"dpo_only": 0.3, "dpo": 0.1}
    assert diff["unexpected_differences"] == ["beta"]


# ---------------------------------------------------------------- synthetic data and the held-out slice

def test_synthetic_train_and_heldout_are_disjoint() -> None:
    from posttrain.benchmarks import load_benchmark
    from posttrain.training.synthetic import heldout_items, synthetic_rows

    rows = synthetic_rows(400, seed=0)
    items = heldout_items()
    train_combos = {json.dumps(r["combination"], sort_keys=True) for r in rows}
    held_combos = {json.dumps(it.meta["combination"], sort_keys=True) for it in items}
    assert train_combos and held_combos and not train_combos & held_combos
    bench_ids = {it.id for it in load_benchmark("conversations").items}
    assert not ({r["id"] for r in rows} | {it.id for it in items}) & bench_ids
    # the final reply repeats the fact stated in the first turn
    for r in rows[:50]:
        assert r["expected"] in r["turns"][0]["user"] and r["expected"] in r["turns"][-1]["assistant"]
        assert r["expected"] not in r["turns"][-1]["user"]


def test_heldout_file_loads_as_a_benchmark(tmp_path: Path) -> None:
    from posttrain.benchmarks import load_benchmark
    from posttrain.training.synthetic import heldout_items, write_heldout_benchmark

    path = write_heldout_benchmark(tmp_path / "h.jsonl", heldout_items(12))
    bench = load_benchmark("conversations", path=str(path))
    assert len(bench.items) == 12 and all(it.judged_turns == [2] for it in bench.items)


# ---------------------------------------------------------------- self-instruct pipeline with a fake model

class FakeBackend:
    """Answers self-instruct prompts from a script, everything else with a fixed reply."""

    def __init__(self, proposals: list[str]):
        self.proposals = list(proposals)
        self.calls = 0
        self.proposal_prompts = 0

    def generate(self, prompts, params):
        from posttrain.generation.backends import Generation

        self.calls += 1
        out = []
        for p in prompts:
            if p.rstrip().endswith(":") and "\nTask " in p:
                self.proposal_prompts += 1
                text = self.proposals.pop(0) if self.proposals else "Describe a quiet morning in a small village."
            else:
                text = "Here is a helpful and complete answer."
            out.append(Generation(text=text, n_prompt_tokens=1, n_new_tokens=5, finish_reason="stop"))
        return out


def _data_cfg(compose, *extra: str):
    return compose("stage=sft", "model=tiny_base", "stage.override_gate=true", "stage.data_source=generated",
                   "stage.num_examples=6", "stage.critic_keep_fraction=1.0", "generation.batch_size=4",
                   "stage.max_rounds=6", "stage.multiturn_fraction=0.5", *extra)


def test_self_instruct_filters_and_resumes(compose, tmp_path: Path) -> None:
    from posttrain.benchmarks.instructions import heldout_texts
    from posttrain.training.data import prepare_data

    held = heldout_texts()[0]
    proposals = [
        held,  # a held-out test instruction, verbatim: must be dropped and counted
        "Write a short poem about autumn leaves.",  # a seed task: near-duplicate of the pool
        "Draw a picture of a cat on a sofa.",  # keyword filter
        "Hi",  # too short
        "Explain how a rainbow forms after a storm passes over the hills.",
        "List three reasons why people enjoy gardening on weekends.",
        "Suggest a fun weekend activity for a family with two small children.",
        "Compare trains and buses for a long trip across the country.",
        "Write a limerick about a forgetful penguin who loves fish.",
        "Give advice to a student who is nervous before an exam.",
        "Describe the taste of a ripe mango to someone who never tried one.",
    ]
    cfg = _data_cfg(compose)
    backend = FakeBackend(proposals)

    def score(inputs):
        return [{"loglik": -float(len(r)), "critic_score": -float(len(r))} for r in inputs.responses]

    run = tmp_path / "run"
    run.mkdir()
    rows, report = prepare_data(cfg, run, model=None, tokenizer=None, revision="sha256:x", source="generated",
                                gate_override=True, device="cpu", progress=False, score_fn=score, backend=backend)
    inst = report["counts"]["instructions"]
    assert inst["dropped_heldout"] == 1 and report["n_dropped_heldout"] >= 1
    assert inst["dropped_pool_duplicate"] >= 1 and inst["dropped_keyword"] == 1 and inst["dropped_too_short"] == 1
    assert len(rows) == 6 and all(r["gate_override"] is True and "critic" in r for r in rows)
    assert any(len(r["turns"]) == 2 for r in rows)  # some multi-turn conversations
    texts = [t["user"] for r in rows for t in r["turns"]]
    assert held not in texts
    assert report["sha256"] == sha256_file(run / "train_data.jsonl")
    # rerun: the finished file is reused, the model is not called again
    calls = backend.calls
    rows2, report2 = prepare_data(cfg, run, model=None, tokenizer=None, revision="sha256:x", source="generated",
                                  gate_override=True, device="cpu", progress=False, score_fn=score, backend=backend)
    assert backend.calls == calls and report2["sha256"] == report["sha256"] and rows2 == read_jsonl(
        run / "train_data.jsonl")
    # a crash after the instructions: the instruction rows are reused, only replies are generated
    (run / "train_data.jsonl").unlink()
    (run / "data" / "responses.jsonl").unlink()
    backend2 = FakeBackend([])
    rows3, _ = prepare_data(cfg, run, model=None, tokenizer=None, revision="sha256:x", source="generated",
                            gate_override=True, device="cpu", progress=False, score_fn=score, backend=backend2)
    assert [r["turns"][0]["user"] for r in rows3] == [r["turns"][0]["user"] for r in rows]
    assert backend2.proposal_prompts == 0 and backend2.calls > 0  # no instruction proposed again; replies made


# ---------------------------------------------------------------- tiny-model tests: critic and label masks

@pytest.fixture(scope="module")
def tiny_models(shared_cache: Path):
    from posttrain.config import ModelConfig
    from posttrain.models.loader import load_model

    out = {}
    for name in ("base", "instruct"):
        mc = SimpleNamespace(**(ModelConfig().__dict__ | {
            "name": f"tiny_{name}", "path": f"tiny_{name}", "tiny": name, "kind": "base" if name == "base" else "instruct",
            "dtype": "float32", "revision": None, "adapter": None}))
        out[name] = load_model(mc, cache_dir=shared_cache, device="cpu")
    return out


def test_critic_batched_equals_one_at_a_time(tiny_models) -> None:
    from posttrain.training.critic import continuation_logprobs, judge_scores, loglik_scores

    lm = tiny_models["base"]
    prompts = ["User: My name is Alice.\nAssistant:", "Instruction: List two fruits.\nResponse:",
               "A much longer prompt about travelling from Lisbon to Oslo by train in winter.\nAssistant:", "Hi"]
    conts = [" Nice to meet you, Alice!", " Apples and pears.", " Take the night train.", " there"]
    batched = continuation_logprobs(lm.model, lm.tokenizer, prompts, conts, batch_size=4)
    single = [continuation_logprobs(lm.model, lm.tokenizer, [p], [c], batch_size=1)[0]
              for p, c in zip(prompts, conts, strict=True)]
    for (sb, nb), (ss, ns) in zip(batched, single, strict=True):
        assert nb == ns and nb > 0
        assert abs(sb - ss) < 1e-5
    ll = loglik_scores(lm.model, lm.tokenizer, prompts, conts, batch_size=3)
    assert all(math.isfinite(v) and v < 0 for v in ll)
    js = judge_scores(lm.model, lm.tokenizer, ["List two fruits."] * 2, ["Apples.", "x"], batch_size=2)
    one = judge_scores(lm.model, lm.tokenizer, ["List two fruits."], ["x"], batch_size=1)
    assert abs(js[1]["judge_logodds"] - one[0]["judge_logodds"]) < 1e-5 and 0 < js[0]["p_good"] < 1
    from posttrain.training.critic import critic_scores, keep_top

    both = critic_scores(lm.model, lm.tokenizer, prompts, conts, ["q"] * 4, ends=["\nUser:"] * 4,
                         neutral_prompts=["User: Say something.\nAssistant:"] * 4, mode="both", batch_size=2)
    assert all({"loglik", "pmi", "relevance", "ending", "judge_logodds", "p_good", "critic_score"} <= set(r)
               for r in both)
    assert abs(sum(r["critic_score"] for r in both)) < 1e-9  # mean of two z-scores: centred
    assert keep_top([0.1, 0.9, 0.5, 0.7], 0.5) == [1, 3] and keep_top([1.0, 2.0], 0.1) == [1]


def test_label_mask_prompt_masked_and_end_of_turn_trained(tiny_models, compose, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from posttrain.training.common import label_audit, lora_config
    from posttrain.training.data import sft_examples
    from posttrain.training.synthetic import synthetic_rows

    cfg = compose("stage=sft", "model=tiny_base")
    rows = synthetic_rows(3, seed=0)  # 3 conversations x 3 replies = 9 prompt/completion examples
    args = dict(output_dir=str(tmp_path / "o"), max_steps=1, report_to="none", use_cpu=True, bf16=False,
                activation_checkpointing=False, max_length=256)

    # base model: prompt/completion in the transcript format
    lm = tiny_models["base"]
    ex = sft_examples(rows, "transcript", cfg.prompt, kind="base")
    assert ex[0]["prompt"].endswith("Assistant:") and ex[0]["completion"].startswith(" ")
    ds = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in ex])
    tr = SFTTrainer(model=lm.model, args=SFTConfig(**args), train_dataset=ds, processing_class=lm.tokenizer,
                    peft_config=lora_config(cfg.stage))
    eos = lm.tokenizer.eos_token_id
    for i, e in enumerate(ex):
        ids, labels = tr.train_dataset[i]["input_ids"], tr.train_dataset[i]["labels"]
        n_prompt = len(lm.tokenizer(e["prompt"], add_special_tokens=False)["input_ids"])
        assert all(lab == -100 for lab in labels[:n_prompt])  # the prompt carries no loss
        assert ids[-1] == eos and labels[-1] == eos  # EOS after the reply is trained
        trained = lm.tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        assert trained == e["completion"] + lm.tokenizer.eos_token
    text, stats = label_audit(tr.train_dataset, lm.tokenizer, [{"prompt": e["prompt"], "completion": e["completion"]}
                                                              for e in ex], n_render=4)
    assert stats["all_ok"] and stats["n_examples"] == len(ex) > 3 and stats["n_rendered"] == 4
    assert stats["n_checked_tokens"] == sum(len(tr.train_dataset[i]["input_ids"]) for i in range(len(ex)))
    assert "[[ Nice to meet you" in text or "[[ Hello" in text or "[[ Sure" in text

    # instruct model: TRL's conversational prompt/completion in its own chat template (no
    # assistant_only_loss, so {% generation %} markers are not used): one example per reply
    im = tiny_models["instruct"]
    ex = sft_examples(rows, "chat_template", cfg.prompt, kind="instruct")
    assert len(ex) == 9 and all(e["completion"][0]["role"] == "assistant" for e in ex)
    ds = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in ex])
    tr = SFTTrainer(model=im.model, args=SFTConfig(**args), train_dataset=ds, processing_class=im.tokenizer,
                    peft_config=lora_config(cfg.stage))
    im_end = im.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, e in enumerate(ex):
        ids, labels = tr.train_dataset[i]["input_ids"], tr.train_dataset[i]["labels"]
        trained = im.tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        # the reply, its <|im_end|> and the template's newline after it; no user turn, no earlier reply
        assert trained == e["completion"][0]["content"] + "<|im_end|>\n"
        assert sum(1 for t, lab in zip(ids, labels, strict=True) if t == im_end and lab != -100) == 1
    examples = [{"prompt": e["prompt"], "completion": e["completion"]} for e in ex]
    _, stats = label_audit(tr.train_dataset, im.tokenizer, examples)
    assert stats["all_ok"] and stats["n_examples"] == len(ex)
    # the audit fails when a token of the prompt carries loss (here: the last prompt token unmasked)
    bad = [dict(tr.train_dataset[i]) for i in range(len(ex))]
    n_head = len(im.tokenizer.apply_chat_template(ex[0]["prompt"], add_generation_prompt=True))
    bad[0]["labels"] = list(bad[0]["labels"])
    bad[0]["labels"][n_head - 1] = bad[0]["input_ids"][n_head - 1]
    _, stats = label_audit(bad, im.tokenizer, examples)
    assert not stats["all_ok"] and stats["n_failed"] == 1


def test_chat_template_check_refuses_templates_that_cannot_train(tiny_models) -> None:
    """check_template passes ChatML (tiny instruct) and refuses, before any data is made, a template
    that renders the prompt differently once a reply follows, and one that never ends a turn."""
    import copy

    from posttrain.training.chat import check_template

    tok = tiny_models["instruct"].tokenizer
    info = check_template(tok, None, "tiny_instruct")
    assert "<|im_end|>" in info["end_of_turn_tokens"] and info["after_reply"].startswith("<|im_end|>")
    drifting = copy.deepcopy(tok)  # a "last user turn" marker that moves once the reply follows
    drifting.chat_template = (
        "{% for m in messages %}{% if loop.last and m['role'] == 'user' %}LAST {% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(PosttrainError, match="not prefix-preserving"):
        check_template(drifting, None, "drifting")
    endless = copy.deepcopy(tok)  # replies never closed by an end-of-turn token
    endless.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(PosttrainError, match="never learn to stop"):
        check_template(endless, None, "endless")


# ---------------------------------------------------------------- the CLI, in subprocesses

def _env(home: Path) -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "POSTTRAIN_HOME": str(home),
                         "TOKENIZERS_PARALLELISM": "false"}


def _cli(*overrides: str, home: Path, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posttrain", f"cache_dir={cache}", *overrides],
                          capture_output=True, text=True, cwd=REPO, env=_env(home), timeout=timeout)


def test_cli_refuses_training_without_gate(tmp_path: Path, shared_cache: Path) -> None:
    proc = _cli("stage=sft", "model=tiny_base", f"hydra.run.dir={tmp_path / 'run'}", home=tmp_path / "home",
                cache=shared_cache, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "never train without proving the gap exists" in proc.stderr
    assert "stage.override_gate=true" in proc.stderr
    assert not (tmp_path / "run" / "adapter").exists()


TRAIN = ["model=tiny_base", "stage.override_gate=true", "tracking=offline", "stage.num_examples=75",
         "stage.max_steps=12", "stage.save_steps=6", "stage.learning_rate=1e-2", "stage.lora_r=8",
         "stage.lora_alpha=16", "generation.batch_size=8"]


def _train(*changes: str) -> list[str]:
    """TRAIN with some overrides replaced (Hydra refuses a key given twice)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [t for t in TRAIN if t.split("=", 1)[0] not in keys] + list(changes)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sft")
    run, home = root / "sft", root / "home"
    proc = _cli("stage=sft", *TRAIN, f"hydra.run.dir={run}", home=home, cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"run": run, "home": home, "root": root}


@pytest.mark.slow
def test_sft_changes_weights_and_saves_adapter_with_provenance(sft_run: dict[str, Path]) -> None:
    from posttrain.models.loader import resolve_adapter

    run = sft_run["run"]
    s = read_json(run / "summary.json")
    assert s["status"] == "finished" and s["steps"] == 12 and s["weights_changed"] is True
    assert s["lora_b_max_abs"] > 0 and s["train_loss_last"] < s["train_loss_first"]
    assert s["gate_override"] is True and s["data_source"] == "synthetic"
    prov = read_json(run / "adapter" / "provenance.json")
    assert prov["adapter_sha256"] == sha256_file(run / "adapter" / "adapter_model.safetensors")
    assert prov["data_sha256"] == sha256_file(run / "train_data.jsonl") == s["data_sha256"]
    assert prov["base_revision"].startswith("sha256:") and prov["stage_config"]["max_steps"] == 12
    assert prov["gate_override"] is True
    path, digest = resolve_adapter(str(run))
    assert path == run / "adapter" and digest == prov["adapter_sha256"]
    # every record of an overridden run says so
    assert all(r["gate_override"] is True for r in read_jsonl(run / "train_data.jsonl"))
    metrics = read_jsonl(run / "metrics.jsonl")
    assert metrics and all(r.get("gate_override") is True for r in metrics)
    assert any("train/loss" in r and "train/mean_token_accuracy" in r and "train/learning_rate" in r for r in metrics)
    audit = (run / "label_audit.txt").read_text()
    assert "[[" in audit and "<|endoftext|>]]" in audit
    assert (run / "data_report.json").exists() and read_json(run / "data_report.json")["n_dropped_heldout"] == 0


@pytest.mark.slow
def test_adapter_feeds_the_eval_stage(sft_run: dict[str, Path], shared_cache: Path) -> None:
    run = sft_run["root"] / "eval"
    proc = _cli("stage=eval", "model=tiny_base", f"model.adapter={sft_run['run']}", "scorer=heuristic_triage",
                "benchmark.limit=4", "stage.sentinel=false", "generation.max_new_tokens=8", "tracking=disabled",
                f"hydra.run.dir={run}", home=sft_run["home"], cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prov = read_json(run / "summary.json")["provenance"]
    assert prov["adapter_sha256"] == read_json(sft_run["run"] / "adapter" / "provenance.json")["adapter_sha256"]


@pytest.mark.slow
def test_dpo_from_sft_adapter(sft_run: dict[str, Path], shared_cache: Path) -> None:
    run = sft_run["root"] / "dpo"
    proc = _cli("stage=dpo", *TRAIN, f"stage.init_adapter={sft_run['run']}", f"stage.data={sft_run['run']}",
                f"hydra.run.dir={run}", home=sft_run["home"], cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = read_json(run / "summary.json")
    assert s["reference"] == "sft_adapter_copy" and s["weights_changed"] and s["ref_adapter_unchanged"] is True
    step0 = read_json(run / "dpo_step0.json")
    assert step0["passed"] and abs(step0["loss"] - math.log(2)) < 1e-4 and abs(step0["rewards/margins"]) < 1e-4
    neg = read_json(run / "negatives_report.json")
    assert set(neg["per_type"]) == set(CONTENT_TYPES) and neg["leaky"] is False
    assert set(s["margins_per_type"]) == set(CONTENT_TYPES) and s["eval_pairs"] > 0
    diff = read_json(run / "config_diff.json")
    assert set(diff["differences"]) >= {"name", "init_adapter"}
    prov = read_json(run / "adapter" / "provenance.json")
    assert prov["init_adapter_sha256"] == read_json(sft_run["run"] / "adapter" / "provenance.json")["adapter_sha256"]
    assert prov["data_input"]["sha256"] == sha256_file(sft_run["run"] / "train_data.jsonl")  # the SFT run's rows
    sft_rows = read_jsonl(sft_run["run"] / "train_data.jsonl")
    assert [(r["id"], r["turns"]) for r in read_jsonl(run / "train_data.jsonl")] == [(r["id"], r["turns"]) for r in sft_rows]


@pytest.mark.slow
def test_dpo_only_from_base(sft_run: dict[str, Path], shared_cache: Path) -> None:
    run = sft_run["root"] / "dpo_only"
    proc = _cli("stage=dpo_only", *TRAIN, f"stage.data={sft_run['run']}", "stage.precompute_ref_log_probs=true",
                f"hydra.run.dir={run}", home=sft_run["home"], cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = read_json(run / "summary.json")
    assert s["reference"] == "base_adapter_disabled" and s["weights_changed"] and s["lora_b_max_abs"] > 0
    assert read_json(run / "dpo_step0.json")["passed"]
    assert s["gate_override"] is True and read_json(run / "adapter" / "provenance.json")["gate_override"] is True
    dpo_pairs = read_jsonl(sft_run["root"] / "dpo" / "pairs.jsonl") if (sft_run["root"] / "dpo").exists() else None
    if dpo_pairs is not None:  # same data, same seed: the very same pairs as stage=dpo
        strip = [{k: p[k] for k in ("prompt", "chosen", "rejected", "negative_type")} for p in dpo_pairs]
        assert strip == [{k: p[k] for k in ("prompt", "chosen", "rejected", "negative_type")}
                         for p in read_jsonl(run / "pairs.jsonl")]


@pytest.mark.slow
def test_sft_killed_after_a_checkpoint_resumes(tmp_path: Path, shared_cache: Path) -> None:
    run, home = tmp_path / "run", tmp_path / "home"
    kill_args = _train("stage.max_steps=150", "stage.save_steps=5", "stage.per_device_batch_size=8",
                       "stage.learning_rate=2e-3")
    args = [sys.executable, "-m", "posttrain", f"cache_dir={shared_cache}", "stage=sft", *kill_args,
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt = run / "checkpoints" / "checkpoint-5" / "posttrain_manifest.json"  # written last: the checkpoint is complete
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the deadline"
    assert not (run / "adapter").exists(), "the run finished before it could be killed"
    from posttrain.training.common import last_checkpoint

    _, killed_at = last_checkpoint(run)
    assert 5 <= killed_at < 150
    with open(run / "metrics.jsonl", "a") as f:  # the kill also tore the last metrics row
        f.write('{"train/loss": 1.2, "train/glo')
    proc2 = _cli("stage=sft", *kill_args, f"hydra.run.dir={run}", home=home, cache=shared_cache)
    assert proc2.returncode == 0, proc2.stderr[-4000:]
    s = read_json(run / "summary.json")
    assert s["resumed_from_step"] == killed_at and s["steps"] == 150
    assert "resume: continuing from checkpoint" in proc2.stderr + proc2.stdout + (run / "cli.log").read_text()
    state = json.loads((run / "checkpoints" / "checkpoint-150" / "trainer_state.json").read_text())
    assert state["global_step"] == 150
    assert read_jsonl(run / "metrics.jsonl") and s["train_loss_last"] is not None  # the torn row was cut, not kept


@pytest.mark.slow
def test_corrupted_checkpoint_is_detected_and_never_resumed_from(sft_run: dict[str, Path], tmp_path: Path,
                                                                 shared_cache: Path, caplog) -> None:
    """The newest checkpoint's adapter changes after it was saved: the rerun skips it (its recorded
    sha256 no longer matches), says so, and resumes from the older intact checkpoint."""
    from posttrain.training.common import CHECKPOINT_MANIFEST, checkpoint_problem, last_checkpoint

    run = tmp_path / "run"
    shutil.copytree(sft_run["run"], run, ignore=shutil.ignore_patterns("adapter", "summary.json", "wandb"))
    assert last_checkpoint(run) == (run / "checkpoints" / "checkpoint-12", 12)
    weights = run / "checkpoints" / "checkpoint-12" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # eight bytes of one tensor zeroed: still a loadable file, silently wrong weights
    weights.write_bytes(bytes(data))
    assert "sha256 mismatch" in (checkpoint_problem(weights.parent) or "")
    with caplog.at_level("WARNING"):
        assert last_checkpoint(run) == (run / "checkpoints" / "checkpoint-6", 6)
    assert "skipping checkpoint" in caplog.text and "adapter_model.safetensors" in caplog.text

    proc = _cli("stage=sft", *TRAIN, f"hydra.run.dir={run}", home=tmp_path / "home", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = read_json(run / "summary.json")
    assert s["resumed_from_step"] == 6 and s["steps"] == 12
    assert "skipping checkpoint" in (run / "cli.log").read_text()
    # the retrained checkpoint-12 replaced the corrupted one, with a fresh manifest
    assert checkpoint_problem(run / "checkpoints" / "checkpoint-12") is None
    (run / "checkpoints" / "checkpoint-6" / CHECKPOINT_MANIFEST).unlink()  # as if killed while saving it
    weights.write_bytes(b"junk")
    assert last_checkpoint(run) is None


def test_step0_sanity_on_a_real_trainer_catches_a_wrong_reference(tiny_models, compose, tmp_path: Path) -> None:
    """An SFT-like adapter (non-zero B) as the policy: with TRL's copied reference the step-0 loss is
    ln 2; once the reference adapter is perturbed (a wrong reference), the check fails."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from trl import DPOConfig, DPOTrainer

    from posttrain.training.common import lora_config
    from posttrain.training.dpo import check_step0, step0_sanity

    cfg = compose("stage=dpo", "model=tiny_base")
    lm = tiny_models["base"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm.provenance["local_path"], dtype=torch.float32)
    model = get_peft_model(model, lora_config(cfg.stage))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained-looking adapter, so policy != base
    pairs = [{"prompt": f"User: My name is {n}.\nAssistant:", "chosen": f" Hi {n}!", "rejected": f" Bye {n}"}
             for n in ("Alice", "Bob", "Carmen", "Hiro")]
    args = DPOConfig(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2, report_to="none",
                     per_device_eval_batch_size=2, use_cpu=True, bf16=False, activation_checkpointing=False,
                     max_length=64)
    ds = Dataset.from_list(pairs)
    tr = DPOTrainer(model=model, args=args, train_dataset=ds, eval_dataset={"step0": ds}, processing_class=lm.tokenizer)
    ok, msg = check_step0(step0_sanity(tr), 0.05)
    assert ok, msg
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if ".ref." in n and "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.5)
    stats = step0_sanity(tr)
    ok, msg = check_step0(stats, 0.05)
    assert not ok and "reference model is wrong" in msg, stats


@pytest.mark.gpu
@pytest.mark.slow
def test_qlora_sft_on_cuda(tmp_path: Path, shared_cache: Path) -> None:
    """QLoRA path (nf4 weights through the loader, bf16, gradient checkpointing, paged 8-bit AdamW).
    Skipped without a CUDA GPU."""
    run = tmp_path / "run"
    proc = _cli("stage=sft", *_train("model.quantization=nf4", "model.dtype=bfloat16", "device=cuda"),
                f"hydra.run.dir={run}", home=tmp_path / "home", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = read_json(run / "summary.json")
    assert s["device"] == "cuda" and s["weights_changed"] is True
    assert read_json(run / "adapter" / "provenance.json")["quantization"] == "nf4"
