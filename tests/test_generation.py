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


def test_packed_linears_match_the_default_kernel_and_leave_the_model_untouched(tiny_paths, shared_cache: Path) -> None:
    """The CPU decode kernel (oneDNN-packed weights) gives the default kernel's greedy text and tokens,
    restores every module afterwards, and repacks a weight that changed between calls."""
    import torch

    from posttrain.generation.backends import PackedLinears

    cfg = OmegaConf.structured(ModelConfig(name="tiny_base", path=str(tiny_paths["base"]), kind="base", dtype="float32"))
    lm = load_model(cfg, cache_dir=shared_cache, device="cpu")
    pc = PromptConfig()
    prompts = [render_prompt([(f"My name is {n}." + " Really." * i, None)], "transcript", pc, kind="base")
               for i, n in enumerate(["Alice", "Bob", "Carmen", "Dmitri"])]
    params = SamplingParams(max_new_tokens=16, stop_strings=tuple(stop_strings("transcript", pc)))
    plain = HFBackend(lm.model, lm.tokenizer, "cpu", packed_linears=False)
    packed = HFBackend(lm.model, lm.tokenizer, "cpu")
    assert (plain.linear_kernel, packed.linear_kernel) == ("torch", "onednn_packed")
    assert packed.generate(prompts, params) == plain.generate(prompts, params)
    linears = [m for m in lm.model.modules() if type(m) is torch.nn.Linear]
    assert linears and not any("forward" in m.__dict__ for m in linears)  # restored after generate

    # the kernel itself, on decode, batch and prefill shapes
    pl = PackedLinears()
    lin = linears[0]
    with torch.inference_mode(), pl(lm.model):
        assert "forward" in lin.__dict__
        for shape in [(1, 1, lin.in_features), (8, 1, lin.in_features), (3, 17, lin.in_features)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    # a weight changed in place (training between two calls) is repacked, never decoded stale
    with torch.no_grad():
        lin.weight.mul_(2.0)
    x = torch.randn(2, 1, lin.in_features)
    with torch.inference_mode(), pl(lm.model):
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        lin.weight.mul_(0.5)
