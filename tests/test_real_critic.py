"""The critic on a real model (SmolLM2-135M-Instruct, ``real`` tier): how well it ranks SmolLM2's
own replies, measured as an AUC on a labelled fixture.

``tests/fixtures/critic_smollm2_replies.jsonl`` holds 31 replies SmolLM2 wrote itself, greedy, in
its chat template with its default system prompt: 18 prompts answered with up to 200 new tokens
(``model.generate(do_sample=False)`` on the converted weights, batches of 6, 2026-12-02) and 13
replies from the eval of ``+experiment=formats_smollm2 prompt=chat_template`` (64 new tokens).
Each was labelled by reading it (``note`` says why):

- ``coherent`` (11): ended by the model (EOS), on topic, no loop; replies that ended but answered
  wrongly or not at all ("Je m'aime." for "thank you" in French) are left out: the critic is no
  fact checker;
- ``cut`` (9): stopped by the token limit mid-sentence (finish_reason ``length``), no loop;
- ``looping`` (5): repeats itself until the limit ("Boil an egg:" 29 times, "11. Pasta 12. Pasta");
- ``off_topic`` (6): a coherent reply of the fixture under another of its prompts.

The score is the one the data pipeline uses (``stage.critic=pmi``, posttrain/training/critic.py),
rendered as the pipeline renders generated rows of an instruct model (its chat template; the end
of a reply is ``<|im_end|>``, EOS; the PMI baseline is the unconditional reply cue). The AUC is the
probability that a coherent reply scores above a bad one (ties half), per bad kind and overall;
docs/training.md reports the numbers. Plain mean log-likelihood (``loglik``) is measured beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "critic_smollm2_replies.jsonl"
BAD = ("cut", "looping", "off_topic")


def auc(good: list[float], bad: list[float]) -> float:
    """P(a good score > a bad score), ties counting half (the Mann-Whitney AUC)."""
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def test_auc_hand_worked() -> None:
    assert auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert auc([1.0], [2.0]) == 0.0


def test_fixture_is_labelled_and_large_enough() -> None:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    labels = [r["label"] for r in rows]
    assert len(rows) >= 30 and set(labels) == {"coherent", *BAD}
    assert all(labels.count(k) >= 5 for k in ("coherent", *BAD))
    from posttrain.training.data import incomplete_reason

    for r in rows:  # the labels agree with what the pipeline's completeness filter sees
        why = incomplete_reason(r["reply"], r["finish_reason"])
        if r["label"] in ("coherent", "off_topic"):
            assert why is None, r
        elif r["label"] == "cut":
            assert why == "length", r


@pytest.mark.real
def test_critic_ranks_smollm2_replies(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.config import PromptConfig
    from posttrain.training.critic import critic_scores
    from posttrain.training.data import critic_inputs

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    data = [{"turns": [{"user": r["prompt"], "assistant": r["reply"]}], "generation_format": "chat_template"}
            for r in rows]
    inputs = critic_inputs(data, PromptConfig(), tok)
    assert set(inputs.ends) == {"<|im_end|>"} and set(inputs.neutral_prompts) == {"<|im_start|>assistant\n"}
    scores = critic_scores(model, tok, inputs.prompts, inputs.responses, inputs.instructions, ends=inputs.ends,
                           neutral_prompts=inputs.neutral_prompts, mode="pmi", batch_size=8)
    table = {}
    for key in ("pmi", "loglik", "ending", "relevance"):
        by = {k: [s[key] for s, r in zip(scores, rows, strict=True) if r["label"] == k] for k in ("coherent", *BAD)}
        table[key] = {k: round(auc(by["coherent"], by[k]), 3) for k in BAD} | {
            "all": round(auc(by["coherent"], [v for k in BAD for v in by[k]]), 3)}
    print("\ncritic AUC (coherent vs bad) on", len(rows), "SmolLM2 replies:", json.dumps(table))
    # the critic separates what the completeness filter cannot see (off-topic) and what it can
    assert table["pmi"]["all"] >= 0.75, table
    assert min(table["pmi"][k] for k in BAD) >= 0.6, table
    # a reply that ended at its end-of-turn token is not scored as cut: ending counts EOS
    ended = [s["ending"] for s, r in zip(scores, rows, strict=True) if r["label"] == "coherent"]
    cut = [s["ending"] for s, r in zip(scores, rows, strict=True) if r["label"] == "cut"]
    assert min(ended) > max(cut), (ended, cut)
