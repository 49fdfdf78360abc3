"""The sentinel check: how one model's behaviour changes with the prompt format.

The seed found that a base model rambles on raw prompts yet follows instructions once given the
cue ``Instruction: X\\nResponse:``. So next to every comparison, each evaluated model answers a
small fixed probe set in several formats, and we record per format how often it stops on its own
(versus running to the token limit) and how often the reply contains the expected answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.generation.backends import Backend, SamplingParams
from posttrain.generation.prompts import render_prompt, stop_strings

# (probe, accepted answers): short, unambiguous, checkable by substring.
PROBES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Translate 'thank you' into Spanish.", ("gracias",)),
    ("What is 12 plus 7? Answer with the number only.", ("19", "nineteen")),
    ("Name the capital of Japan.", ("tokyo",)),
    ("Write the word 'apple' in capital letters.", ("APPLE",)),
    ("List three primary colors.", ("red", "blue", "yellow")),
    ("What is the opposite of 'hot'?", ("cold",)),
)
PROBES_VERSION = "sentinel-v1"


def run_sentinel(backend: Backend, formats: Sequence[str], prompt_cfg: Any, *, kind: str, tokenizer: Any,
                 max_new_tokens: int, allow_chat_template_on_base: bool = False) -> dict[str, Any]:
    """Answer every probe in every format (one batched call per format); summarise per format."""
    results: dict[str, Any] = {}
    for fmt in formats:
        if fmt == "chat_template" and (kind == "base" and not allow_chat_template_on_base):
            results[fmt] = {"skipped": "base model: chat template refused by the contamination guard"}
            continue
        if fmt == "chat_template" and not getattr(tokenizer, "chat_template", None):
            results[fmt] = {"skipped": "tokenizer has no chat template"}
            continue
        prompts = [render_prompt([(q, None)], fmt, prompt_cfg, kind=kind, tokenizer=tokenizer,
                                 allow_chat_template_on_base=allow_chat_template_on_base) for q, _ in PROBES]
        gens = backend.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens,
                                                        stop_strings=tuple(stop_strings(fmt, prompt_cfg))))
        rows: list[dict[str, Any]] = []
        for (q, answers), g in zip(PROBES, gens, strict=True):
            hit = any((a in g.text) if a.isupper() else (a in g.text.lower()) for a in answers)
            rows.append({"probe": q, "reply": g.text, "finish_reason": g.finish_reason,
                         "n_new_tokens": g.n_new_tokens, "contains_answer": hit})
        n = len(rows)
        results[fmt] = {
            "stopped_rate": sum(r["finish_reason"] != "length" for r in rows) / n,
            "answer_rate": sum(r["contains_answer"] for r in rows) / n,
            "mean_new_tokens": sum(r["n_new_tokens"] for r in rows) / n,
            "probes": rows,
        }
    return {"version": PROBES_VERSION, "n_probes": len(PROBES), "formats": results}
