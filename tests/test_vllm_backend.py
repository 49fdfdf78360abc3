"""vLLM request building on CPU; the engine itself runs only where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.generation.backends import SamplingParams
from posttrain.generation.vllm import engine_kwargs, sampling_kwargs, to_generation


def test_engine_kwargs_are_safe_and_cache_prefixes() -> None:
    kw = engine_kwargs(Path("/m"), dtype="bfloat16", quantization="nf4", max_context=4096, adapter=Path("/a"))
    assert kw["trust_remote_code"] is False and kw["load_format"] == "safetensors"
    assert kw["enable_prefix_caching"] is True and kw["quantization"] == "bitsandbytes"
    assert kw["enable_lora"] is True
    assert "enable_lora" not in engine_kwargs(Path("/m"), dtype="auto", quantization=None, max_context=8,
                                              adapter=None)


def test_greedy_maps_to_temperature_zero() -> None:
    kw = sampling_kwargs(SamplingParams(max_new_tokens=7, stop_strings=("\nUser:",)))
    assert kw == {"max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": ["\nUser:"],
                  "skip_special_tokens": True}
    kw = sampling_kwargs(SamplingParams(do_sample=True, temperature=0.7, top_p=0.9, seed=3))
    assert (kw["temperature"], kw["top_p"], kw["seed"], kw["stop"]) == (0.7, 0.9, 3, None)


def test_finish_reasons_match_the_hf_backend() -> None:
    assert to_generation(" hi ", 3, 2, "stop", "\nUser:", ["\nUser:"]).finish_reason == "stop"
    assert to_generation("hi", 3, 2, "stop", None, []).finish_reason == "eos"
    assert to_generation("hi", 3, 9, "length", None, []).finish_reason == "length"
    assert to_generation("a\nUser: b", 3, 9, "length", None, ["\nUser:"]).text == "a"


@pytest.mark.gpu
def test_vllm_greedy_matches_hf_on_the_tiny_model(tiny_paths, shared_cache: Path) -> None:  # pragma: no cover
    """Same weights, same prompts, greedy: the vLLM engine and the HF backend agree (GPU only).

    Kernels differ, so an exact match is not guaranteed on every prompt; at least 6 of 8 must match
    and every reply must be non-empty and finished for a known reason.
    """
    from omegaconf import OmegaConf

    from posttrain.config import ModelConfig
    from posttrain.generation.backends import HFBackend
    from posttrain.generation.vllm import VLLMBackend
    from posttrain.models.loader import load_model

    prompts = [f"User: My name is Ann and I live in city {i}.\nAssistant:" for i in range(8)]
    params = SamplingParams(max_new_tokens=16)
    cfg = OmegaConf.structured(ModelConfig(name="tiny_base", path="tiny_base", tiny="base", kind="base",
                                           dtype="float32"))
    lm = load_model(cfg, cache_dir=shared_cache, device="cuda")
    hf = HFBackend(lm.model, lm.tokenizer, "cuda").generate(prompts, params)
    vl = VLLMBackend(tiny_paths["base"], dtype="float32", quantization=None, max_context=512).generate(prompts, params)
    assert all(g.n_prompt_tokens > 0 and g.finish_reason in ("eos", "length", "stop") for g in vl)
    assert [g.n_prompt_tokens for g in vl] == [g.n_prompt_tokens for g in hf]  # same tokenisation
    same = sum(a.text == b.text for a, b in zip(hf, vl, strict=True))
    assert same >= 6, [(a.text, b.text) for a, b in zip(hf, vl, strict=True)]
