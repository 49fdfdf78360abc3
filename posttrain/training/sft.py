"""stage=sft: LoRA (QLoRA on CUDA) supervised fine-tuning of the base model with TRL's SFTTrainer.

Loss on the reply tokens only, one example per assistant turn: base models train on text
``{"prompt", "completion"}`` pairs in their evaluation format (transcript by default; TRL appends
EOS and masks the prompt), instruct models on TRL's conversational prompt/completion examples in
their own chat template (TRL masks the rendered prompt; no {% generation %} markers and no
template edits needed; posttrain/training/chat.py, checked in plan()). The label-mask audit (label_audit.txt) shows the trained spans of a few examples and the run stops if
any token of any training sequence is trained that should not be (prompt, user turns, markup) or
masked that should be trained (each reply and its end-of-turn token).

Checkpoints go to <run>/checkpoints every ``stage.save_steps``; rerunning the same command with
the same ``hydra.run.dir`` resumes from the newest complete one. The final adapter is saved to
<run>/adapter with provenance.json (base revision, data sha256, stage config, adapter sha256).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.records import write_json
from posttrain.run_context import RunContext
from posttrain.training import common
from posttrain.training.data import adapters_disabled, prepare_data, sft_examples

log = logging.getLogger(__name__)


def run_sft(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    from datasets import Dataset

    from posttrain.models.loader import load_model

    state = ctx.plan.state
    gate = state["gate"]
    override = bool(gate["gate_override"])
    fmt, source = state["format"], state["data_source"]
    t0 = time.time()
    loaded = load_model(cfg.model, cache_dir=ctx.cache_dir, device=cfg.device, resolved=state["resolved"],
                        for_training=True)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    load_seconds = time.time() - t0

    t0 = time.time()
    common.shared_data_ready(ctx)  # a rank > 0 reuses the data rank 0 prepares
    with adapters_disabled(model):
        model.eval()
        rows, report = prepare_data(cfg, ctx.shared_dir, model=model, tokenizer=tok,
                                    revision=loaded.provenance["revision"], source=source, gate_override=override,
                                    device=device, prompt_format=fmt)
    data_seconds = time.time() - t0
    examples = sft_examples(rows, fmt, cfg.prompt, kind=cfg.model.kind, tokenizer=tok,
                            allow_chat_template_on_base=bool(cfg.model.allow_chat_template_on_base))
    columns = ("prompt", "completion")  # text, or conversational (lists of messages) for chat_template
    dataset = Dataset.from_list([{k: e[k] for k in columns} for e in examples])
    log.info("sft: %d conversations -> %d training examples (format %s)", len(rows), len(examples), fmt)

    from trl import SFTConfig, SFTTrainer

    # completion-only loss (TRL's default for prompt/completion data) masks the prompt in both formats
    args = SFTConfig(**common.common_args(cfg, ctx.shared_dir, device), completion_only_loss=True, packing=False)
    callback = common.make_tracker_callback(ctx, override)
    model.train()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                         peft_config=common.lora_config(cfg.stage), callbacks=[callback, common.make_manifest_callback()])

    audit_text, audit = common.label_audit(trainer.train_dataset, tok, [{k: e[k] for k in columns} for e in examples],
                                           n_render=cfg.stage.label_audit_examples)
    audit_path = ctx.run_dir / "label_audit.txt"
    if override:
        audit_text = "gate_override: true (stage.override_gate=true; no gate PASS behind this run)\n" + audit_text
    audit_path.write_text(audit_text, encoding="utf-8")
    ctx.tracker.log_files([audit_path], name=f"label_audit-{ctx.run_dir.name}", kind="label_audit")
    ctx.tracker.log({"label_audit/all_ok": float(audit["all_ok"]), "label_audit/n_failed": audit["n_failed"],
                     "label_audit/n_examples": audit["n_examples"]}
                    | ({"gate_override": True} if override else {}))
    if not audit["all_ok"]:
        raise PosttrainError(
            f"label-mask audit failed on {audit['n_failed']} of {audit['n_examples']} sequences ({audit_path}; first: "
            f"{audit['failures'][:1]}): some token is trained that should be masked (prompt, user turn) or masked "
            "that should be trained (a reply or its end-of-turn token, e.g. cut by stage.max_length). Training "
            "would teach the model to write prompts or never to stop; check the prompt format / chat template "
            "and stage.max_length. Nothing was trained.")

    snapshot = common.lora_snapshot(trainer.model)
    result, train_seconds, change, resumed_step = common.train_resumable(trainer, ctx.shared_dir, snapshot, "sft")

    losses = common.loss_history(ctx.run_dir / "metrics.jsonl")
    provenance = {
        "stage": "sft", "base_model": cfg.model.name, "base_path": loaded.provenance["local_path"],
        "base_revision": loaded.provenance["revision"], "base_weights_sha256": loaded.provenance["weights_sha256"],
        "model_kind": cfg.model.kind, "prompt_format": fmt, "quantization": cfg.model.quantization,
        "device": device, "data_sha256": report["sha256"], "data_source": report["source"],
        "data_input": {"path": report.get("data_path"), "sha256": report["counts"].get("source_sha256")},
        "data_rows": report["n_rows"], "stage_config": common.stage_container(cfg.stage),
        "prompt_config": common.stage_container(cfg.prompt), "seed": cfg.seed,
        "gate": gate, "gate_override": override, "global_step": trainer.state.global_step,
        "libraries": common.library_versions(), "init_adapter": None,
    }
    adapter_path, adapter_sha = common.save_adapter(trainer.model, ctx.run_dir, provenance)
    write_json(ctx.run_dir / "provenance.json", provenance | {"adapter_sha256": adapter_sha,
                                                              "adapter_path": str(adapter_path)})
    metrics = {
        "train_loss_first": losses[0][1] if losses else None, "train_loss_last": losses[-1][1] if losses else None,
        "train_loss_mean": float(result.training_loss), "steps": trainer.state.global_step,
        "examples": len(examples), "conversations": len(rows), "epochs": float(trainer.state.epoch or 0.0),
        "weights_changed": change["weights_changed"], "max_abs_weight_change": change["max_abs_change"],
        "lora_b_max_abs": change["lora_b_max_abs"], "resumed_from_step": resumed_step,
        "adapter_path": str(adapter_path), "adapter_sha256": adapter_sha, "data_sha256": report["sha256"],
        "data_source": report["source"], "n_dropped_heldout": report.get("n_dropped_heldout", 0),
        "label_audit": audit | {"path": str(audit_path)}, "prompt_format": fmt, "device": device,
        "seconds": {"load": round(load_seconds, 3), "data": round(data_seconds, 3), "train": round(train_seconds, 3)},
        "gate_override": override, "gate": gate,
    }
    ctx.tracker.log({"sft/weights_changed": float(change["weights_changed"]),
                     "sft/max_abs_weight_change": change["max_abs_change"]}
                    | ({"gate_override": True} if override else {}), step=trainer.state.global_step)
    return metrics
