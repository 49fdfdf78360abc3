"""The critic on a real model (SmolLM2-135M-Instruct, ``real`` tier): for three prompts it ranks a
coherent reply above a truncated, a repetitive and an off-topic one.

The score is the one the data pipeline uses (``stage.critic=pmi``, posttrain/training/critic.py):
mean pointwise mutual information between the prompt and each reply token (length-normalised:
nats per reply token) plus the end-of-reply marker's log-probability / 10. The replies are
rendered as the pipeline renders them (transcript format, end marker "\\nUser:").

Plain mean log-likelihood, the critic this replaced, is checked too: it prefers the repetitive
reply, which is why it is not the default.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CASES = {
    "What is the capital of France?": {
        "coherent": "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
        "truncated": "The capital of France is Paris. It is known for the Eiffel",
        "repetitive": "The capital of France is Paris. The capital of France is Paris. The capital of France is Paris.",
        "off_topic": "Bananas are rich in potassium and grow best in warm, humid tropical climates.",
    },
    "Give me a tip for learning to play the guitar.": {
        "coherent": "Practice a few minutes every day. Short, regular sessions build finger strength faster than "
                    "one long weekly session.",
        "truncated": "Practice a few minutes every day. Short, regular sessions build finger strength faster than",
        "repetitive": "Practice a few minutes every day. Practice a few minutes every day. Practice a few minutes "
                      "every day. Practice every day.",
        "off_topic": "The French Revolution began in 1789 and changed the political map of Europe for decades.",
    },
    "Explain why bread goes stale.": {
        "coherent": "Bread goes stale because the starch molecules slowly recrystallise and push water out, so the "
                    "crumb becomes firm and dry.",
        "truncated": "Bread goes stale because the starch molecules slowly recrystallise and push",
        "repetitive": "Bread goes stale. Bread goes stale. Bread goes stale. Bread goes stale. Bread goes stale. "
                      "Bread goes stale.",
        "off_topic": "Jupiter is the largest planet in the solar system and has dozens of moons.",
    },
}


@pytest.mark.real
def test_critic_ranks_a_coherent_reply_first(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.config import PromptConfig
    from posttrain.training.critic import critic_scores
    from posttrain.training.data import critic_inputs

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    rows, labels = [], []
    for question, replies in CASES.items():
        for label, reply in replies.items():
            rows.append({"turns": [{"user": question, "assistant": reply}], "generation_format": "transcript"})
            labels.append((question, label))
    inputs = critic_inputs(rows, PromptConfig())
    assert set(inputs.ends) == {"\nUser:"}
    scores = critic_scores(model, tok, inputs.prompts, inputs.responses, inputs.instructions, ends=inputs.ends,
                           neutral_prompts=inputs.neutral_prompts, mode="pmi", batch_size=4)
    by_case: dict[str, dict[str, dict[str, float]]] = {}
    for (question, label), s in zip(labels, scores, strict=True):
        by_case.setdefault(question, {})[label] = s
    repetitive_wins_on_loglik = 0
    for question, s in by_case.items():
        ranking = sorted(s, key=lambda k: -s[k]["critic_score"])
        print(question, {k: round(v["critic_score"], 3) for k, v in s.items()})
        assert ranking[0] == "coherent", (question, ranking)
        # each failure is caught by the part of the score meant for it
        assert s["truncated"]["ending"] < s["coherent"]["ending"] - 5  # the end marker after a cut is improbable
        assert s["repetitive"]["relevance"] < s["coherent"]["relevance"]  # repeated tokens add no information
        assert s["off_topic"]["relevance"] < s["coherent"]["relevance"]  # the prompt does not explain them
        repetitive_wins_on_loglik += s["repetitive"]["loglik"] > s["coherent"]["loglik"]
    assert repetitive_wins_on_loglik == len(CASES)  # why plain likelihood is not the critic
