"""The vLLM generation backend (``generation.backend=vllm``; ``pip install -e .[vllm]`` on a GPU).

Offline ``LLM.generate`` with prefix caching: the multi-turn loop re-sends each conversation's
growing prefix every turn, and prefix caching turns that into a KV-cache hit instead of a
re-prefill. A PEFT adapter is served through ``LoRARequest`` on the base weights instead of a
merged copy (each job of a sweep still builds its own engine). The request building below is pure and unit-tested on
CPU; the engine itself needs a GPU (tests marked ``gpu``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.errors import ModelUnavailable
from posttrain.generation.backends import Generation, SamplingParams, trim_at_stop


def engine_kwargs(local_path: Path, *, dtype: str, quantization: str | None, max_context: int,
                  adapter: Path | None, lora_rank: int = 64, seed: int = 0) -> dict[str, Any]:
    """Arguments for ``vllm.LLM``: safetensors only, never remote code, prefix caching on."""
    kw: dict[str, Any] = {
        "model": str(local_path), "tokenizer": str(local_path), "trust_remote_code": False,
        "load_format": "safetensors", "dtype": "auto" if dtype == "auto" else dtype,
        "max_model_len": max_context, "enable_prefix_caching": True, "seed": seed,
    }
    if quantization == "nf4":
        kw["quantization"] = "bitsandbytes"  # vLLM's in-flight 4-bit for bitsandbytes checkpoints
    if adapter is not None:
        kw.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    return kw


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments equivalent to our HF decoding settings."""
    return {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature if params.do_sample else 0.0,  # 0 = greedy in vLLM
        "top_p": params.top_p if params.do_sample else 1.0,
        "seed": params.seed if params.do_sample else None,
        "stop": list(params.stop_strings) or None,
        "skip_special_tokens": True,
    }


def to_generation(text: str, n_prompt: int, n_new: int, finish_reason: str, stop_reason: Any,
                  stops: Sequence[str]) -> Generation:
    """Map a vLLM completion onto our record (vLLM already cut at the stop string)."""
    text, found = trim_at_stop(text, stops)
    if finish_reason == "length":
        reason = "length"
    elif isinstance(stop_reason, str) or found:
        reason = "stop"
    else:
        reason = "eos"
    return Generation(text=text.strip(), n_prompt_tokens=n_prompt, n_new_tokens=n_new, finish_reason=reason)


class VLLMBackend:
    def __init__(self, local_path: Path, *, dtype: str, quantization: str | None, max_context: int,
                 adapter: Path | None = None, seed: int = 0):
        try:
            import vllm
        except ImportError as exc:
            raise ModelUnavailable(
                "generation.backend=vllm needs the vllm package on a CUDA machine: `pip install -e .[vllm]` "
                "(or use generation.backend=hf). Nothing was spent."
            ) from exc
        self._vllm = vllm
        self.llm = vllm.LLM(**engine_kwargs(local_path, dtype=dtype, quantization=quantization,
                                            max_context=max_context, adapter=adapter, seed=seed))
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Generation]:
        sp = self._vllm.SamplingParams(**sampling_kwargs(params))
        outs = self.llm.generate(list(prompts), sp, lora_request=self.lora, use_tqdm=False)
        results = []
        for out in outs:
            c = out.outputs[0]
            results.append(to_generation(c.text, len(out.prompt_token_ids or []), len(c.token_ids),
                                         c.finish_reason, getattr(c, "stop_reason", None), params.stop_strings))
        return results
