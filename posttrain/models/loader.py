"""The clean model loader: one function for every model, with guards and a provenance record.

Guards, each stopping the run before any generation:
  - a ``base`` model never has a chat template applied: its tokenizer's template (Qwen's base
    tokenizers ship ChatML) is recorded by hash and then removed, so ``apply_chat_template``
    raises; prompt rendering refuses chat special tokens for base models (see prompts.py);
  - an ``instruct`` model without a chat template is an error;
  - a pinned revision that does not match what is on disk is an error;
  - ``trust_remote_code`` is never enabled and only safetensors weights are loaded.
A deliberate ablation (base model + chat template) needs ``model.allow_chat_template_on_base``,
which is recorded in the provenance.

``preflight_model`` does every check that needs no weights (folder, revision, GPU, adapter
files and hashes) so that a run fails before it spends anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import ContaminationError, ModelUnavailable
from posttrain.records import read_json, sha256_dir, sha256_file, sha256_text

log = logging.getLogger(__name__)


@dataclass
class ResolvedModel:
    """Where a model's files are, checked before anything is loaded."""

    name: str
    kind: str
    path: Path
    revision: str | None  # commit hash (Hub) or sha256:<weights hash> (local)
    weights_sha256: str | None
    adapter_path: Path | None
    adapter_sha256: str | None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    kind: str
    name: str
    provenance: dict[str, Any]
    device: str


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("device=cuda but no CUDA GPU is visible; set device=cpu or run on a GPU machine")
    return device


def _hub_snapshot(cfg: Any) -> tuple[Path, str]:
    """Find a Hub model in the local Hugging Face cache (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(cfg.path, revision=cfg.revision or "main", local_files_only=True,
                                   allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"])
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        hint = (f"pinned revision {cfg.revision} is not in the cache"
                if cfg.revision else "no snapshot in the cache")
        raise ModelUnavailable(
            f"model {cfg.name}: weights for {cfg.path} not found locally ({hint}). Download them on a machine "
            f"with Hub access (`huggingface-cli download {cfg.path}"
            + (f" --revision {cfg.revision}" if cfg.revision else "")
            + "`) into the Hugging Face cache (HF_HOME), or set model.path=/local/folder. Nothing was spent."
        ) from exc
    folder_path = Path(folder)
    resolved = folder_path.name  # snapshots/<commit>
    if cfg.revision and resolved != cfg.revision:
        raise ModelUnavailable(
            f"model {cfg.name}: pinned model.revision={cfg.revision} but the cache holds {resolved}; "
            "download the pinned commit or change model.revision"
        )
    return folder_path, resolved


def built_model_path(cfg: Any) -> str | None:
    """The ``model.path`` placeholder of a model posttrain builds itself (tiny or GGUF), else None.

    Such a model's weights come from the model cache, never from ``model.path``; the field only
    names it (``tiny_base``, ``smollm2_instruct``), so any other value would be silently ignored.
    """
    if cfg.tiny:
        return f"tiny_{cfg.tiny}"
    if getattr(cfg, "gguf", None) == "smollm2":
        return "smollm2_instruct"
    return None


def unused_model_settings(cfg: Any) -> list[str]:
    """The model settings this run would not use, each with what to change; empty when all are used.

    Provenance must be true: a record that says ``path=/data/my-model`` while the weights came from
    elsewhere is worse than no record. So a setting that cannot take effect is refused, not ignored.
    """
    problems = []
    placeholder = built_model_path(cfg)
    built_by = f"model.tiny={cfg.tiny}" if cfg.tiny else f"model.gguf={getattr(cfg, 'gguf', None)}"
    if placeholder is not None and str(cfg.path) != placeholder:
        problems.append(
            f"model.path={cfg.path} is not used: model {cfg.name} is built by posttrain ({built_by}) and its "
            f"weights come from the model cache. Drop the model.path override (it must stay {placeholder}), or "
            f"set {built_by.split('=')[0]}=null to load the weights in {cfg.path}")
    if cfg.tiny and getattr(cfg, "gguf", None):
        problems.append(f"model.gguf={cfg.gguf} is not used: model.tiny={cfg.tiny} builds the weights. "
                        "Set one of model.tiny / model.gguf to null")
    if cfg.kind != "base" and cfg.allow_chat_template_on_base:
        problems.append(f"model.allow_chat_template_on_base=true is not used: model {cfg.name} is kind={cfg.kind}, "
                        "and the override only applies to base models. Remove it")
    return problems


def preflight_model(cfg: Any, *, cache_dir: Path, device: str = "auto") -> ResolvedModel:
    """Locate weights, check the pinned revision, the GPU and the adapter; load nothing."""
    if cfg.trust_remote_code:
        raise ModelUnavailable("model.trust_remote_code=true is refused: posttrain never runs code shipped with weights")
    if problems := unused_model_settings(cfg):
        raise ModelUnavailable("; ".join(problems) + ". Nothing was loaded or spent.")
    revision: str | None
    if cfg.tiny:
        from posttrain.models.tiny import ensure_tiny_model

        path = ensure_tiny_model(cfg.tiny, cache_dir)
        revision = None
    elif getattr(cfg, "gguf", None):
        if cfg.gguf != "smollm2":
            raise ModelUnavailable(f"model {cfg.name}: model.gguf={cfg.gguf!r} is unknown; the only GGUF "
                                   "conversion posttrain knows is 'smollm2'. Nothing was loaded or spent.")
        from posttrain.models.smollm2 import ensure_smollm2

        # converted once into the cache; the wheel check fails here, before anything is read
        path = ensure_smollm2(cache_dir, "bfloat16" if cfg.dtype == "bfloat16" else "float32")
        revision = None
    elif Path(cfg.path).expanduser().is_dir():
        path = Path(cfg.path).expanduser()
        revision = None
    else:
        path, revision = _hub_snapshot(cfg)
    if not list(path.glob("*.safetensors")):
        raise ModelUnavailable(
            f"model {cfg.name}: no *.safetensors weights in {path}; posttrain loads safetensors only "
            "(pickled .bin weights can run code). Convert the checkpoint to safetensors."
        )
    weights = sha256_dir(path, ("*.safetensors",)) if revision is None else None
    if revision is None:
        revision = f"sha256:{weights}"
        if cfg.revision and cfg.revision != revision:
            raise ModelUnavailable(
                f"model {cfg.name}: pinned model.revision={cfg.revision} does not match the weights on disk "
                f"({revision}) in {path}; the files changed. Restore them or update model.revision."
            )
    if cfg.requires_gpu:
        import torch

        if not torch.cuda.is_available():
            raise ModelUnavailable(
                f"model {cfg.name} needs a CUDA GPU (model.requires_gpu=true; {cfg.quantization or cfg.dtype} "
                f"weights of {cfg.path}) and none is visible. Run on a GPU machine, or use a tiny model "
                "(model=tiny_base|tiny_instruct|tiny_alt_base) on CPU. Nothing was spent."
            )
    adapter_path, adapter_sha = (None, None)
    if cfg.adapter:
        adapter_path, adapter_sha = resolve_adapter(cfg.adapter)
    return ResolvedModel(cfg.name, cfg.kind, path, revision, weights, adapter_path, adapter_sha)


def resolve_adapter(adapter: str) -> tuple[Path, str]:
    """An adapter folder, or a training run folder holding ``adapter/``; verify its recorded hash."""
    p = Path(adapter).expanduser()
    if (p / "adapter").is_dir():
        p = p / "adapter"
    weights = p / "adapter_model.safetensors"
    if not weights.exists():
        raise ModelUnavailable(
            f"model.adapter={adapter}: no adapter_model.safetensors there (expected a PEFT adapter folder or a "
            "training run folder with adapter/); check the path of the training run"
        )
    digest = sha256_file(weights)
    prov = p / "provenance.json"
    if not prov.exists():
        # An adapter trained elsewhere: nothing to verify against. Its hash still goes into this
        # run's provenance, so the run names exactly which weights it used.
        log.warning("adapter %s has no provenance.json (not trained by posttrain): its integrity cannot be "
                    "checked; using it as found, sha256 %s", p, digest)
        return p, digest
    try:
        record = read_json(prov)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"adapter {p}: provenance.json is unreadable ({exc}); restore it or retrain the "
                               "adapter. It will not be used unverified.") from exc
    checks = [(weights, digest, record.get("adapter_sha256"))]
    config = p / "adapter_config.json"
    if record.get("adapter_config_sha256"):
        checks.append((config, sha256_file(config) if config.exists() else "missing", record["adapter_config_sha256"]))
    for path, actual, recorded in checks:
        if recorded and recorded != actual:
            raise ModelUnavailable(
                f"adapter {path} is corrupted or was replaced: its sha256 {actual[:12]}... differs from the "
                f"recorded {recorded[:12]}... in {prov}. Retrain it or restore the file; it will not be used."
            )
    return p, digest


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}[name]


def load_tokenizer(cfg: Any, resolved: ResolvedModel) -> tuple[Any, dict[str, Any]]:
    """Load the tokenizer and apply the chat-template guards; returns it with provenance fields."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolved.path), trust_remote_code=False)
    template = getattr(tok, "chat_template", None)
    from posttrain.models.smollm2 import conversion_record, default_system_prompt

    info: dict[str, Any] = {
        "tokenizer_sha256": sha256_dir(resolved.path, ("tokenizer*.json", "*.jinja", "vocab*", "merges*")),
        "chat_template_sha256": sha256_text(template) if isinstance(template, str) else None,
        "chat_template_removed": False,
        # e.g. SmolLM2's "You are a helpful AI assistant named SmolLM, ..." when prompt.system_prompt is null
        "chat_template_default_system_prompt": default_system_prompt(tok),
    }
    if (conversion := conversion_record(resolved.path)) is not None:
        info["conversion"] = conversion  # wheel, GGUF sha256, converter versions
    if cfg.kind == "base" and template and not cfg.allow_chat_template_on_base:
        # Qwen base tokenizers ship ChatML; applying it silently is the contamination to prevent.
        tok.chat_template = None
        info["chat_template_removed"] = True
    if cfg.kind == "instruct" and not template:
        raise ContaminationError(
            f"guard instruct-needs-template: model {cfg.name} is kind=instruct but its tokenizer has no chat "
            "template; an instruct model prompted without its template is not being tested fairly. "
            "Use a tokenizer with a template, or set model.kind=base if this is a base model."
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # Llama 3.1 base has no pad token
    tok.padding_side = "left"  # batched decoding: prompts end where generation starts
    return tok, info


@dataclass(frozen=True)
class Placement:
    """Where from_pretrained puts the weights: a device_map, a device to move to after, or FSDP's way."""

    device_map: dict[str, Any] | None
    move_to: str | None
    fsdp: bool = False


def placement_for(dev: str, *, quantization: str | None, for_training: bool,
                  env: Mapping[str, str] | None = None) -> Placement:
    """Weights placement for this process.

    - one process: GPU 0 (or the CPU);
    - a rank of a multi-process launch (accelerate/torchrun set ``LOCAL_RANK``): its own GPU,
      ``cuda:LOCAL_RANK``, so DDP ranks do not all load onto GPU 0;
    - FSDP training (``ACCELERATE_USE_FSDP=true``, set by ``accelerate launch`` with
      accelerate/fsdp_qlora.yaml): no device_map and no move, FSDP places and shards the weights;
      an nf4 model then gets bf16 quant storage so FSDP can flatten the packed 4-bit weights
      (the PEFT/bitsandbytes FSDP-QLoRA recipe).
    """
    env = os.environ if env is None else env
    if dev != "cuda":
        return Placement({"": "cpu"} if quantization else None, None if quantization else dev)
    fsdp = for_training and str(env.get("ACCELERATE_USE_FSDP", "")).lower() in ("1", "true")
    if fsdp:  # FSDP places and shards the weights itself
        return Placement(None, None, fsdp=True)
    rank = int(env.get("LOCAL_RANK", "0") or 0)
    return Placement({"": rank}, None) if quantization else Placement(None, f"cuda:{rank}")


def attn_implementation_for(setting: str, dev: str) -> str:
    """The attention kernel for ``model.attn_implementation`` on device ``dev``.

    ``auto`` is eager on the CPU and sdpa elsewhere. On an idle CPU the two decode alike at batch 1,
    but with other processes on the cores torch's CPU flash-attention kernel spent 3.8 ms per layer
    call at one query token (two thirds of a SmolLM2 decode step: 5.3 tok/s against eager's 21.6),
    while eager attention is a few small matmuls (docs/benchmarks.md).
    """
    if setting == "auto":
        return "eager" if dev == "cpu" else "sdpa"
    return setting


def load_model(cfg: Any, *, cache_dir: Path, device: str = "auto", resolved: ResolvedModel | None = None,
               for_training: bool = False) -> LoadedModel:
    """Load model + tokenizer (+ adapter) through the guards, with a provenance record."""
    resolved = resolved or preflight_model(cfg, cache_dir=cache_dir, device=device)
    tok, tok_info = load_tokenizer(cfg, resolved)  # guards run before the weights are read
    dev = resolve_device(device)

    import torch
    from transformers import AutoModelForCausalLM

    if cfg.tiny and dev == "cpu":
        # A 0.2M-parameter model gains nothing from intra-op threads, and when another process
        # holds a core, OpenMP's spinning threads made one 24-token decode take 1.3 s instead of
        # 0.024 s here. One thread for the tiny models; real models keep torch's default.
        torch.set_num_threads(1)
    attn = attn_implementation_for(getattr(cfg, "attn_implementation", "auto"), dev)
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(cfg.dtype), "trust_remote_code": False, "use_safetensors": True,
                              "attn_implementation": attn}
    placement = placement_for(dev, quantization=cfg.quantization, for_training=for_training)
    if cfg.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if dev == "cuda" else torch.float32
        storage = {"bnb_4bit_quant_storage": torch.bfloat16} if placement.fsdp else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute, **storage,
        )
        if placement.fsdp:
            kwargs["dtype"] = torch.bfloat16  # FSDP flattens the packed weights with the other bf16 tensors
    if placement.device_map is not None:
        kwargs["device_map"] = placement.device_map
    model: Any = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    if cfg.quantization is None and placement.move_to is not None:
        model.to(placement.move_to)
    if resolved.adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(resolved.adapter_path), is_trainable=for_training)
    if not for_training:
        model.eval()
    provenance = {
        "model": cfg.name, "kind": cfg.kind, "path": str(cfg.path), "local_path": str(resolved.path),
        "revision": resolved.revision, "weights_sha256": resolved.weights_sha256,
        "dtype": cfg.dtype, "quantization": cfg.quantization, "device": dev, "attn_implementation": attn,
        "adapter_path": str(resolved.adapter_path) if resolved.adapter_path else None,
        "adapter_sha256": resolved.adapter_sha256,
        "allow_chat_template_on_base": bool(cfg.allow_chat_template_on_base),
        "trust_remote_code": False, "safetensors_only": True,
        **tok_info,
    }
    return LoadedModel(model=model, tokenizer=tok, kind=cfg.kind, name=cfg.name, provenance=provenance, device=dev)
