"""Real-model figures for `make bench`: SmolLM2-135M-Instruct decoding speed on this CPU.

What is measured (greedy, float32, the converted folder of posttrain/models/smollm2.py):
  - tokens/s of the stages' own backend (``HFBackend.generate`` on the model from
    ``models.loader.load_model``, so the attention kernel is the one the evals use) at batch 1, 8, 16
    and 32, with 1 and 2 threads;
  - the batch-1 memory-bandwidth limit: decoding one token at batch 1 reads every weight once
    (the tied 49152 x 576 embedding is read in full as the LM head), so
    limit = measured copy bandwidth / bytes of weights; and the share of it reached;
  - where the time goes at batch 1: the model's forward passes alone (a hand-written KV-cache
    loop, with the backend's linear kernel) against ``generate`` for the same tokens; the difference
    is generate's own overhead (logits processors, stopping criteria, cache bookkeeping); and the
    rate at which the linear layers alone read their weights at batch 1, with the backend's kernel
    (oneDNN-packed weights on the CPU) and with torch's default one (MKL ``x @ W.T``), beside
    ``generate`` at batch 1 with the default kernel.

Run alone: ``python bench/real_model.py`` (prints JSON); `make bench` calls :func:`measure`.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "Explain in two sentences why the sky is blue."
BATCHES = (1, 8, 16, 32)
THREADS = (1, 2)


def copy_bandwidth(threads: int, mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write counted), median of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def _prompts(tokenizer: Any, n: int) -> list[str]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    return [text] * n


def load_smollm2(cache: Path) -> Any:
    """SmolLM2 through the loader the stages use (posttrain.models.loader.load_model), so the bench
    measures the attention kernel, dtype and thread settings that `make run` and the evals get."""
    from omegaconf import OmegaConf

    from posttrain.config import ModelConfig

    conf = Path(__file__).resolve().parent.parent / "conf" / "model" / "smollm2_instruct.yaml"
    values = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(conf)).items() if k != "defaults"}  # type: ignore[union-attr]
    from posttrain.models.loader import load_model

    return load_model(OmegaConf.structured(ModelConfig(**values)), cache_dir=cache, device="cpu")


def generate_rate(backend: Any, tokenizer: Any, batch: int, new_tokens: int, repeats: int) -> float:
    """New tokens per second of the stages' HFBackend.generate at this batch size (greedy).

    Tokens are those actually generated (``Generation.n_new_tokens``); the prompt asks for two
    sentences, so every sequence runs to ``new_tokens`` (identical prompts: greedy replies are equal).
    """
    from posttrain.generation.backends import SamplingParams

    prompts = _prompts(tokenizer, batch)
    params = SamplingParams(max_new_tokens=new_tokens, do_sample=False)
    times, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        gens = backend.generate(prompts, params)
        times.append(time.perf_counter() - t0)
        tokens = sum(g.n_new_tokens for g in gens)
    return tokens / statistics.median(times)


def forward_only_rate(backend: Any, tokenizer: Any, new_tokens: int, repeats: int) -> float:
    """Batch-1 tokens/s of the bare forward passes generate makes: prefill, then one token at a time,
    with the backend's linear kernel."""
    import torch

    model = backend.model
    ids = tokenizer(_prompts(tokenizer, 1), return_tensors="pt", add_special_tokens=False)["input_ids"]
    times = []
    with torch.inference_mode(), backend.kernels():
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            for _ in range(new_tokens - 1):  # generate also makes new_tokens - 1 decode passes after prefill
                nxt = out.logits[:, -1:].argmax(-1)
                out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            times.append(time.perf_counter() - t0)
    return new_tokens / statistics.median(times)


def linear_read_rate(model: Any, *, packed: bool, repeats: int = 5) -> float:
    """Bytes per second at which the model's linear layers read their weights at batch 1 (one token
    through every ``nn.Linear`` in turn, best of ``repeats``): the part of a decode step that the
    memory-bandwidth limit describes, with oneDNN-packed weights or torch's default kernel."""
    from contextlib import nullcontext

    import torch

    from posttrain.generation.backends import PackedLinears

    lins = [m for m in model.modules() if type(m) is torch.nn.Linear]
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in lins)
    xs = {m.in_features: torch.randn(1, 1, m.in_features) for m in lins}
    best = float("inf")
    with torch.inference_mode(), (PackedLinears()(model) if packed else nullcontext()):
        for _ in range(repeats):
            t0 = time.perf_counter()
            for m in lins:
                m(xs[m.in_features])
            best = min(best, time.perf_counter() - t0)
    return nbytes / best


def measure(cache: Path, *, new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Every real-model figure of docs/benchmarks.md; ``cache`` is posttrain's model cache.

    ``new_tokens`` is `make run`'s budget (64). Each batch also pays its prompt's prefill, which at
    batch 32 is compute of the same order as 32 decoded tokens: with 32 new tokens batch 32 measured
    7.8x batch 1 (2026-12-02, idle), a figure about the prefill share as much as about decoding.
    """
    # torch's default thread count in a fresh process: this one may have been pinned (the tiny models'
    # loader sets one thread, and `make bench` measures them first).
    import subprocess
    import sys

    import torch

    from posttrain.generation.backends import HFBackend

    default_threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                         capture_output=True, text=True, check=True).stdout)
    lm = load_smollm2(cache)
    model, tok = lm.model, lm.tokenizer
    backend = HFBackend(model, tok, "cpu", add_special_tokens=False)
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out: dict[str, Any] = {"model": "SmolLM2-135M-Instruct (float32)", "n_parameters": n_params,
                           "weight_bytes": weight_bytes, "new_tokens": new_tokens, "repeats": repeats,
                           "attn_implementation": lm.provenance.get("attn_implementation"),
                           "default_threads": default_threads, "linear_kernel": backend.linear_kernel,
                           "threads": {}}
    for threads in THREADS:
        torch.set_num_threads(threads)
        bw = copy_bandwidth(threads)
        generate_rate(backend, tok, 1, 4, 1)  # warm-up: allocator, kernels
        rates = {str(b): generate_rate(backend, tok, b, new_tokens, repeats) for b in BATCHES}
        fwd = forward_only_rate(backend, tok, new_tokens, repeats)
        limit = bw / weight_bytes
        out["threads"][str(threads)] = {
            "copy_bandwidth_gb_s": bw / 1e9, "batch1_limit_tok_s": limit,
            "batch1_share_of_limit": rates["1"] / limit, "tokens_per_s": rates,
            "batched_over_batch1": {b: r / rates["1"] for b, r in rates.items()},
            "batch1_forward_only_tok_s": fwd,
            # share of generate's batch-1 time spent outside the model's forward passes
            "batch1_generate_overhead": 1 - rates["1"] / fwd,
            "linears_read_gb_s": {"onednn_packed": linear_read_rate(model, packed=True) / 1e9,
                                  "torch": linear_read_rate(model, packed=False) / 1e9},
        }
    torch.set_num_threads(default_threads)
    out["torch_kernel_batch1_tok_s"] = generate_rate(HFBackend(model, tok, "cpu", add_special_tokens=False,
                                                               packed_linears=False), tok, 1, new_tokens, repeats)
    out["sdpa_batch1_tok_s"] = sdpa_batch1_rate(cache, tok, new_tokens, repeats, default_threads)
    return out


def sdpa_batch1_rate(cache: Path, tokenizer: Any, new_tokens: int, repeats: int, threads: int) -> float:
    """Batch-1 tokens/s with torch's sdpa attention instead (the loader's choice on a GPU), for the
    record of why the CPU default is eager."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.generation.backends import HFBackend

    torch.set_num_threads(threads)
    folder = load_smollm2(cache).provenance["local_path"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    return generate_rate(HFBackend(model, tokenizer, "cpu", add_special_tokens=False), tokenizer, 1, new_tokens,
                         repeats)


def targets(real: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 23: at the default thread count, batch 1 >= 50% of the bandwidth limit measured in the same
    run, and batch 32 >= 8x batch 1."""
    default = str(real.get("default_threads", 2))
    row = real["threads"].get(default) or max(real["threads"].values(), key=lambda v: v["tokens_per_s"]["1"])
    share = row["batch1_share_of_limit"]
    speedup = row["batched_over_batch1"]["32"]
    return [(f"SmolLM2 batch 1 >= 50% of the memory-bandwidth limit ({default} threads, the default)",
             f"{100 * share:.0f}%", share >= 0.5),
            (f"SmolLM2 batch 32 >= 8x batch-1 tokens/s ({default} threads)", f"{speedup:.1f}x", speedup >= 8.0)]


def render(real: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section, rendered from the recorded numbers."""
    gb = real["weight_bytes"] / 1e9
    lines = ["## Real model: SmolLM2-135M-Instruct on this CPU",
             f"{real['model']}, {real['n_parameters'] / 1e6:.1f}M parameters = {gb:.3f} GB of weights read per "
             f"decoded token at batch 1. Greedy `HFBackend.generate` (the stages' backend, attention `{real.get('attn_implementation')}`, "
             f"linear kernel `{real.get('linear_kernel', 'torch')}`), up to {real['new_tokens']} new tokens per sequence (counted as generated), "
             f"median of {real['repeats']} runs; one chat prompt repeated to fill the batch.", "",
             "| threads | copy bandwidth GB/s | batch-1 limit tok/s | " + " | ".join(f"batch {b} tok/s" for b in BATCHES)
             + " | batch 1 / limit | best batch / batch 1 | forward-only batch 1 tok/s | generate overhead |",
             "|---" * (7 + len(BATCHES)) + "|"]
    if real.get("note"):  # conditions of the measurement that the numbers alone do not show
        lines[3:3] = [f"**Note:** {real['note']}", ""]
    for t, v in real["threads"].items():
        rates = " | ".join(f"{v['tokens_per_s'][str(b)]:.1f}" for b in BATCHES)
        best = max(x for b, x in v["batched_over_batch1"].items() if b != "1")
        lines.append(f"| {t} | {v['copy_bandwidth_gb_s']:.1f} | {v['batch1_limit_tok_s']:.1f} | {rates} | "
                     f"{100 * v['batch1_share_of_limit']:.0f}% | {best:.1f}x | {v['batch1_forward_only_tok_s']:.1f} | "
                     f"{100 * v['batch1_generate_overhead']:.0f}% |")
    if any("linears_read_gb_s" in v for v in real["threads"].values()):
        lines += ["", "Where a batch-1 step goes: the linear layers alone (one token through all of them) read their "
                  "weights at " + "; ".join(
                      f"{t} thread{'s' if t != '1' else ''}: {v['linears_read_gb_s']['onednn_packed']:.1f} GB/s packed "
                      f"(oneDNN), {v['linears_read_gb_s']['torch']:.1f} GB/s with torch's default kernel"
                      for t, v in real["threads"].items() if "linears_read_gb_s" in v) + "."]
    if real.get("torch_kernel_batch1_tok_s"):
        lines += ["", f"Batch 1 with torch's default linear kernel ({real.get('default_threads')} threads): "
                  f"{real['torch_kernel_batch1_tok_s']:.1f} tok/s (`HFBackend(packed_linears=False)`)."]
    if real.get("sdpa_batch1_tok_s"):
        lines += ["", f"sdpa batch 1 ({real.get('default_threads')} threads): {real['sdpa_batch1_tok_s']:.1f} tok/s "
                  f"(the loader's default on the CPU is `{real.get('attn_implementation')}`)."]
    lines += ["", "The limit assumes the weights stream from memory once per token (a 538 MB model does not fit in "
              "cache) at the measured copy bandwidth; the KV cache of a short prompt adds well under 1% to it.", "",
              "| target (issue 13) | measured | met |", "|---|---|---|"]
    lines += [f"| {n} | {m} | {'yes' if ok else 'no (see below)'} |" for n, m, ok in targets(real)]
    for paragraph in WHY:
        lines += ["", paragraph]
    lines.append("")
    return lines


# Why a target can be missed and what would fix it, stated once (docs/benchmarks.md renders it).
WHY = [
    "**The attention kernel**: the loader uses eager attention on the CPU (`model.attn_implementation=auto`). "
    "On this machine idle, sdpa decodes batch 1 about as fast (the `sdpa batch 1` figure above); with other "
    "processes on the cores (load average about 10) torch's CPU flash-attention kernel took 3.8 ms per call at "
    "one query token, two thirds of the step, and batch 1 fell to 5.3 tok/s against eager's 21.6 (batch 32: "
    "172 against 241 tok/s). Eager is the choice that does not collapse when the machine is shared.",
    "**Batch 1 and the bandwidth limit**: decoding one sequence is, per layer, a few matrix-vector products "
    "over the weights, so it is bound by how fast the linear kernels read them (the `where a batch-1 step "
    "goes` line above). torch's default CPU kernel (MKL on `x @ W.T`) read SmolLM2's 538 MB of linear weights "
    "at about 15 GB/s on this project's 2-core AMD EPYC: batch 1 sat at a third of the limit, and "
    "`torch.compile` of the decode step with a static KV cache (tried: 41 s to compile, 23.2 against 22.2 "
    "tok/s) did not change that, because the products, not the dispatch, took the time (a profile of one "
    "packed step: 80% in the linear kernels). The backend now packs each float32 weight once into oneDNN's "
    "blocked layout and decodes through `mkldnn._linear_pointwise` (`generation/backends.py: PackedLinears`), "
    "for every stage that generates: `make run`, the evals and self-instruct. The layout matters: in a separate "
    "timing of SmolLM2's 211 weight shapes (random values, 2 threads), weights packed with a batch-size hint of 1 "
    "read at 28 GB/s, packed without a hint at 43 GB/s; the backend packs without one. The rest "
    "of a step (attention, norms, `generate`'s bookkeeping: the forward-only and overhead columns) is what "
    "separates the packed rate from the limit.",
    "**When batching gains less than 5x**: a batch shares each weight read, so until compute binds, tokens/s "
    "should grow almost linearly with the batch; on 2 cores the 135M-parameter step becomes compute-bound "
    "(about 0.27 GFLOP per token) after a few sequences, and with other processes on the cores the threads "
    "wait on each other. What would fix it: more cores, or a GPU (the vLLM backend).",
    "These numbers move with anything else running on the machine; the lead reruns `make bench` on an idle one.",
]


if __name__ == "__main__":
    import argparse

    from posttrain.models.smollm2 import ensure_smollm2
    from posttrain.paths import cache_dir

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    ensure_smollm2(cache_dir())
    result = measure(cache_dir(), new_tokens=args.new_tokens, repeats=args.repeats)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
