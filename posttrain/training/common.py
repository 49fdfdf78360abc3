"""What SFT and DPO share: the evaluation-first gate, trainer arguments per device, checkpoints
and resume, the W&B/metrics callback, LoRA weight snapshots, the label-mask audit, and saving
the adapter with its provenance.

Nothing here imports TRL or PEFT at module level (their imports take several seconds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from posttrain.errors import PosttrainError
from posttrain.records import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

GATE_REFUSAL = (
    "never train without proving the gap exists: run the three-way comparison first, or set "
    "stage.override_gate=true — recorded in every record of this run"
)
CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


# ---------------------------------------------------------------- evaluation first

def find_comparison(path: str) -> Path:
    """``stage.comparison``: a comparison.json, or a (sweep) folder holding exactly one."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "comparison.json").is_file():
            return p / "comparison.json"
        found = sorted(p.rglob("comparison.json"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise PosttrainError(f"stage.comparison={path} holds {len(found)} comparison.json files "
                                 f"({', '.join(str(f) for f in found[:5])}); point at one of them. {GATE_REFUSAL}")
    raise PosttrainError(f"stage.comparison={path}: no comparison.json there. {GATE_REFUSAL}")


def check_gate(stage: Any, model_name: str | None = None) -> dict[str, Any]:
    """Refuse unless the comparison's gate verdict is PASS, or the override is set (then say so)."""
    if stage.override_gate:
        info: dict[str, Any] = {"gate_override": True, "verdict": None, "comparison": None}
        if stage.comparison:
            info["comparison"] = stage.comparison
        return info
    if not stage.comparison:
        raise PosttrainError(f"stage={stage.name}: no stage.comparison given. {GATE_REFUSAL}. Nothing was loaded or spent.")
    path = find_comparison(stage.comparison)
    try:
        comp = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise PosttrainError(f"stage.comparison: cannot read {path} ({exc}). {GATE_REFUSAL}") from exc
    gate = comp.get("gate") if isinstance(comp, dict) else None
    verdict = gate.get("verdict") if isinstance(gate, dict) else None
    if verdict != "PASS":
        reasons = gate.get("reasons") if isinstance(gate, dict) else None
        raise PosttrainError(
            f"stage={stage.name}: the gate in {path} is {verdict!r}, not 'PASS'"
            + (f" ({'; '.join(map(str, reasons))})" if reasons else "")
            + f". {GATE_REFUSAL}. Nothing was loaded or spent.")
    assert isinstance(gate, dict)
    info = {"gate_override": False, "verdict": verdict, "comparison": str(path), "comparison_sha256": sha256_file(path),
            "gate_base_model": gate.get("base_model"), "gate_instruct_model": gate.get("instruct_model")}
    return info


# ---------------------------------------------------------------- trainer arguments

def device_args(cfg: Any, device: str) -> dict[str, Any]:
    """Precision, checkpointing and optimizer per device: QLoRA on CUDA, plain fp32 LoRA on CPU.

    Mixed precision follows ``model.dtype`` (the nf4 compute dtype too): float16 -> fp16 only,
    float32 -> neither, bfloat16 / auto -> bf16 only; never both. transformers 5 names activation
    checkpointing ``activation_checkpointing`` (``gradient_checkpointing`` is a deprecated alias
    that warns), and TRL's configs default it to on, so it is always set explicitly.
    """
    st = cfg.stage
    if device == "cuda":
        quantized = cfg.model.quantization == "nf4"
        fp16 = cfg.model.dtype == "float16"
        bf16 = cfg.model.dtype in ("bfloat16", "auto")
        return {"bf16": bf16, "fp16": fp16, "activation_checkpointing": True,
                "activation_checkpointing_kwargs": {"use_reentrant": False},
                "use_cpu": False, "optim": st.optim or ("paged_adamw_8bit" if quantized else "adamw_torch")}
    return {"bf16": False, "fp16": False, "activation_checkpointing": False, "use_cpu": True,
            "optim": st.optim or "adamw_torch"}


def common_args(cfg: Any, run_dir: Path, device: str, *, progress: bool = True) -> dict[str, Any]:
    st = cfg.stage
    return {
        "output_dir": str(run_dir / CHECKPOINT_DIR),
        "max_steps": st.max_steps, "learning_rate": st.learning_rate,
        "per_device_train_batch_size": st.per_device_batch_size,
        "gradient_accumulation_steps": st.gradient_accumulation_steps,
        "max_length": st.max_length, "logging_steps": st.logging_steps, "logging_first_step": True,
        "save_strategy": "steps", "save_steps": st.save_steps, "save_total_limit": st.save_total_limit,
        "lr_scheduler_type": st.lr_scheduler_type, "warmup_steps": st.warmup_steps,
        "max_grad_norm": st.max_grad_norm, "weight_decay": 0.0,
        "seed": cfg.seed, "data_seed": cfg.seed, "report_to": "none", "disable_tqdm": not progress,
        "dataloader_num_workers": 0, "remove_unused_columns": True,
        **device_args(cfg, device),
    }


def lora_config(st: Any) -> Any:
    """A FRESH LoraConfig (trainers mutate the one they are given)."""
    from peft import LoraConfig

    targets = st.lora_target_modules
    if not isinstance(targets, str):
        targets = list(targets)
    return LoraConfig(r=st.lora_r, lora_alpha=st.lora_alpha, lora_dropout=st.lora_dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_MANIFEST = "posttrain_manifest.json"


def checkpoint_files(path: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint folder, except the manifest and the per-rank RNG states
    (rank > 0 writes its own after rank 0 has seen the save; a bad one fails loudly in torch.load)."""
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != CHECKPOINT_MANIFEST and not f.name.startswith("rng_state")}


def write_checkpoint_manifest(path: Path, global_step: int) -> None:
    """Record the checkpoint's file hashes; written last, so its presence marks a complete checkpoint."""
    write_json(path / CHECKPOINT_MANIFEST, {"global_step": global_step, "files": checkpoint_files(path)})


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint must not be resumed from (incomplete, or changed since it was saved), or None."""
    return _verified_step(path)[1]


def _verified_step(path: Path) -> tuple[int | None, str | None]:
    """(the global step recorded in the manifest, None) for an intact checkpoint, else (None, why not)."""
    try:
        manifest = read_json(path / CHECKPOINT_MANIFEST)
    except (OSError, ValueError):
        return None, "no readable manifest (the run stopped while saving it)"
    recorded: dict[str, str] = manifest.get("files") or {}
    actual = checkpoint_files(path)
    missing = sorted(set(recorded) - set(actual))
    if missing:
        return None, f"missing files {missing}"
    changed = sorted(f for f in recorded if recorded[f] != actual[f])
    if changed:
        return None, f"files changed since they were saved (sha256 mismatch): {changed}"
    return int(manifest.get("global_step", 0)), None


def last_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The newest checkpoint whose files match its manifest, and its global step.

    A checkpoint without a manifest (killed while saving) or whose files no longer match their
    recorded sha256 (a corrupted or replaced file) is skipped with a warning, never resumed from; an
    older intact checkpoint is used instead, or none.
    """
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = []
    for p in folder.glob("checkpoint-*"):
        try:
            step = int(p.name.split("-")[-1])
        except ValueError:
            continue
        found.append((step, p))
    for step, path in sorted(found, reverse=True):
        global_step, problem = _verified_step(path)
        if problem is None:
            return path, global_step or step
        log.warning("resume: skipping checkpoint %s: %s", path, problem)
    return None


def make_manifest_callback() -> Any:
    """A TrainerCallback that writes each checkpoint's manifest right after the trainer saved it."""
    from transformers import TrainerCallback

    class ManifestCallback(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                write_checkpoint_manifest(path, state.global_step)

    return ManifestCallback()


# ---------------------------------------------------------------- metrics

def make_tracker_callback(ctx: Any, gate_override: bool, prefix: str = "train",
                          extra: dict[str, Any] | None = None) -> Any:
    """A TrainerCallback that sends every trainer log row to ctx.tracker (W&B + metrics.jsonl);
    ``extra`` (e.g. ``{"allow_leaky_negatives": True}``) is added to every row."""
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not logs:
                return
            row = {f"{prefix}/{k}": float(v) for k, v in logs.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
            if not row:
                return
            row[f"{prefix}/global_step"] = state.global_step
            if gate_override:
                row["gate_override"] = True
            row.update(extra or {})
            self.history.append(row)
            ctx.tracker.log(row, step=state.global_step)

    return TrackerCallback()


def loss_history(metrics_path: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    """(step, loss) from metrics.jsonl across every attempt of this run (a resumed run logs twice)."""
    from posttrain.records import read_jsonl

    by_step: dict[int, float] = {}
    for r in read_jsonl(metrics_path):
        if key in r:
            by_step[int(r.get("_step", r.get("train/global_step", 0)))] = float(r[key])
    return sorted(by_step.items())


# ---------------------------------------------------------------- LoRA weights

def lora_snapshot(model: Any, adapter: str = "default") -> dict[str, Any]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()
            if "lora_" in n and f".{adapter}." in n}


def weight_change(model: Any, snapshot: dict[str, Any], adapter: str = "default") -> dict[str, Any]:
    """Max |w - w0| over the adapter's weights, and max |B| (LoRA B starts at zero for a new adapter)."""
    now = lora_snapshot(model, adapter)
    if not now:
        return {"n_lora_tensors": 0, "max_abs_change": 0.0, "lora_b_max_abs": 0.0, "weights_changed": False}
    max_change = max(float((now[n] - snapshot[n]).abs().max()) for n in now if n in snapshot)
    b_max = max((float(t.abs().max()) for n, t in now.items() if "lora_B" in n), default=0.0)
    return {"n_lora_tensors": len(now), "max_abs_change": max_change, "lora_b_max_abs": b_max,
            "weights_changed": bool(max_change > 0.0)}


# ---------------------------------------------------------------- label-mask audit

def expected_trained(example: dict[str, Any], tokenizer: Any) -> list[str]:
    """What must carry loss in one SFT example, one string per reply: the completion and EOS (text
    prompt/completion), or, for a conversational example (any chat template), what the template
    renders after the generation prompt: the reply, its end-of-turn token and the template's
    separator (posttrain/training/chat.py)."""
    if isinstance(example.get("prompt"), list):
        from posttrain.training.chat import expected_completion

        return [expected_completion(tokenizer, example["prompt"], example["completion"])]
    return [example["completion"] + tokenizer.eos_token]


def label_audit(dataset: Any, tokenizer: Any, examples: list[dict[str, Any]], n_render: int = 8,
                ) -> tuple[str, dict[str, Any]]:
    """Check EVERY token of every training sequence against what should be trained, and render the
    first ``n_render`` with the trained tokens inside ``[[...]]``.

    ``examples[i]`` is the example that became ``dataset[i]``. For each, the tokens whose label is
    not -100 must form exactly one contiguous run per reply, and run k must decode to reply k plus
    its end-of-turn token (:func:`expected_trained`); every other token (prompt, user turns, system
    prompt, template markup, padding) must be masked. A token trained that should not be, or
    masked that should be trained, makes the runs differ from the replies, so the example fails.
    """
    if len(dataset) != len(examples):
        raise PosttrainError(f"label audit: {len(dataset)} tokenised sequences for {len(examples)} examples")
    blocks: list[str] = []
    failures: list[dict[str, Any]] = []
    per: list[dict[str, Any]] = []
    for i in range(len(dataset)):
        ids, labels = list(dataset[i]["input_ids"]), list(dataset[i]["labels"])
        runs: list[list[int]] = []
        prev = False
        for t, lab in zip(ids, labels, strict=True):
            trained = lab != -100
            if trained and not prev:
                runs.append([])
            if trained:
                runs[-1].append(t)
            prev = trained
        got = [tokenizer.decode(r, skip_special_tokens=False) for r in runs]
        want = expected_trained(examples[i], tokenizer)
        n_trained = sum(len(r) for r in runs)
        ok = got == want
        stats = {"n_tokens": len(ids), "n_trained": n_trained, "n_replies": len(want), "n_trained_runs": len(runs),
                 "ok": ok}
        per.append(stats)
        if not ok and len(failures) < 5:
            failures.append({"example": i, "trained": got, "expected": want})
        if i < n_render:
            parts, open_ = [], False
            for t, lab in zip(ids, labels, strict=True):
                trained = lab != -100
                if trained != open_:
                    parts.append("[[" if trained else "]]")
                    open_ = trained
                parts.append(tokenizer.decode([t], skip_special_tokens=False))
            if open_:
                parts.append("]]")
            blocks.append(f"=== example {i} ({n_trained}/{len(ids)} tokens trained; {len(want)} replies; "
                          f"{'OK' if ok else 'MISMATCH'}) ===\n" + "".join(parts))
    summary = {"n_examples": len(per), "n_checked_tokens": sum(s["n_tokens"] for s in per),
               "n_rendered": len(blocks), "n_failed": sum(not s["ok"] for s in per),
               "all_ok": bool(per) and all(s["ok"] for s in per), "failures": failures}
    header = ("Label-mask audit: tokens inside [[...]] carry loss (label != -100); everything else is masked.\n"
              f"Every token of all {len(per)} sequences was checked: each reply and its end-of-turn token trained "
              "as one run, every other token (prompt, user turns, markup) masked. "
              f"Failed: {summary['n_failed']}.\n\n")
    return header + "\n\n".join(blocks) + "\n", summary


# ---------------------------------------------------------------- adapter and provenance

def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None  # type: ignore[assignment]
    return out


def save_adapter(model: Any, run_dir: Path, provenance: dict[str, Any]) -> tuple[Path, str]:
    """Save the trained ("default") adapter to run_dir/adapter atomically, with provenance.json inside.

    ``adapter_sha256`` is the sha256 of adapter_model.safetensors and ``adapter_config_sha256`` that of
    adapter_config.json (rank, alpha, target modules); the loader verifies both.
    """
    final = run_dir / ADAPTER_DIR
    tmp = run_dir / f".{ADAPTER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["default"], safe_serialization=True)
    weights = tmp / "adapter_model.safetensors"
    if not weights.exists():
        raise PosttrainError(f"saving the adapter produced no {weights.name} in {tmp}")
    digest = sha256_file(weights)
    config = tmp / "adapter_config.json"
    write_json(tmp / "provenance.json", provenance | {
        "adapter_sha256": digest, "adapter_config_sha256": sha256_file(config) if config.exists() else None})
    if final.exists():
        old = run_dir / f".{ADAPTER_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final, digest


def stage_container(stage: Any) -> dict[str, Any]:
    return OmegaConf.to_container(stage, resolve=True)  # type: ignore[return-value]


def shared_data_ready(ctx: Any, *, poll_s: float = 2.0, log_every_s: float = 60.0) -> None:
    """On a rank > 0 of a multi-process launch, wait until rank 0 has written the training data.

    Rank 0 prepares the data (self-instruct generation with a big model can take far longer than a
    collective's timeout, so this polls the file instead of a barrier); the others then find
    ``data_report.json`` and reuse the data after checking its fingerprint and sha256. If rank 0
    dies, torchrun / accelerate launch stop this process too. Rank 0 and single processes return
    at once.
    """
    import time

    from posttrain.training.data import REPORT_FILE

    if ctx.is_main:
        return
    report = ctx.shared_dir / REPORT_FILE
    t0 = last = time.monotonic()
    while not report.exists():
        time.sleep(poll_s)
        if time.monotonic() - last >= log_every_s:
            last = time.monotonic()
            log.info("waiting for rank 0 to write %s (%.0f s)", report, last - t0)


def train_resumable(trainer: Any, run_dir: Path, snapshot: dict[str, Any],
                    stage: str) -> tuple[Any, float, dict[str, Any], int | None]:
    """Train from the last checkpoint in ``run_dir`` (if a killed run left one); check the adapter moved.

    Returns the trainer's result, the training seconds, the weight change against ``snapshot`` and
    the global step resumed from (None for a fresh start).
    """
    import logging
    import time

    from posttrain.errors import PosttrainError

    resume = last_checkpoint(run_dir)
    if resume:
        logging.getLogger(__name__).info("resume: continuing from checkpoint %s (global_step %d)", resume[0], resume[1])
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    seconds = time.time() - t0
    change = weight_change(trainer.model, snapshot)
    if not change["weights_changed"]:
        raise PosttrainError(f"{stage}: the adapter weights did not move in {trainer.state.global_step} steps "
                             f"({change}); nothing was learned (learning rate, labels?)")
    return result, seconds, change, resume[1] if resume else None
