"""Batched greedy generation equals one-at-a-time greedy generation; stop strings trim replies."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from posttrain.config import ModelConfig, PromptConfig
from posttrain.generation.backends import HFBackend, SamplingParams, trim_at_stop
from posttrain.generation.prompts import render_prompt, stop_strings
from posttrain.models.loader import load_model


def test_trim_at_stop_takes_the_earliest() -> None:
    assert trim_at_stop("a\nUser: b\nInstruction: c", ["\nInstruction:", "\nUser:"]) == ("a", True)
    assert trim_at_stop("plain", ["\nUser:"]) == ("plain", False)


@pytest.mark.parametrize("name,kind,fmt", [("base", "base", "transcript"), ("instruct", "instruct", "chat_template"),
                                          ("alt_base", "base", "instruction_cue")])
def test_batched_equals_sequential_greedy(tiny_paths, shared_cache: Path, name: str, kind: str, fmt: str) -> None:
    cfg = OmegaConf.structured(ModelConfig(name=f"tiny_{name}", path=str(tiny_paths[name]), kind=kind, dtype="float32"))
    lm = load_model(cfg, cache_dir=shared_cache, device="cpu")
    pc = PromptConfig()
    # Prompts of very different lengths, so left padding really varies across the batch.
    prompts = [render_prompt([(f"My name is {n} and I live in Lisbon." + " Really." * (i % 7), None)], fmt, pc,
                             kind=kind, tokenizer=lm.tokenizer) for i, n in enumerate(["Alice", "Bob", "Carmen",
                                                                                        "Dmitri", "Emeka", "Fatima",
                                                                                        "Giulia", "Hiro"])]
    be = HFBackend(lm.model, lm.tokenizer, "cpu", add_special_tokens=(fmt != "chat_template"))
    params = SamplingParams(max_new_tokens=24, stop_strings=tuple(stop_strings(fmt, pc)))
    batched = be.generate(prompts, params)
    sequential = [be.generate([p], params)[0] for p in prompts]
    assert batched == sequential
    assert all(g.n_prompt_tokens > 0 and g.finish_reason in {"stop", "eos", "length"} for g in batched)
