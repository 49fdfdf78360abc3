"""stage=dpo and stage=dpo_only: DPO with TRL's DPOTrainer on LoRA adapters.

- ``dpo``: starts from the SFT adapter (``stage.init_adapter``, verified through the loader's
  resolve_adapter); TRL copies it into a frozen "ref" adapter, so the reference is the SFT policy.
- ``dpo_only``: starts from the base model with a new adapter; the reference is the base model
  (adapter disabled).

Both use the same pairs (the data of the run, or ``stage.data=<sft run>`` for the very same rows)
with typed negatives (posttrain/training/negatives.py); ``negatives_report.json`` holds the
leakage check. Before training, the step-0 sanity check evaluates the DPO loss on the first
batches with policy == reference: it must be ln 2 (0.693) within ``stage.step0_loss_tolerance``
and the rewards ~0, else the reference is wrong and the run stops (``dpo_step0.json``). At the end,
reward margins and accuracies are evaluated per negative type. ``config_diff.json`` lists every
setting in which this run differs from the other DPO variant's defaults.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posttrain.errors import PosttrainError
from posttrain.records import append_jsonl, write_json
from posttrain.stages import RunContext
from posttrain.training import common
from posttrain.training.data import adapters_disabled, dpo_sources, dpo_trl_rows, prepare_data

log = logging.getLogger(__name__)
LN2 = math.log(2.0)
CONF_STAGE_DIR = Path(__file__).resolve().parent.parent.parent / "conf" / "stage"


def config_diff(stage: Any) -> dict[str, Any]:
    """Differences between this run's effective stage config and the other DPO variant's YAML defaults."""
    from posttrain.config import TrainStageConfig

    other = "dpo_only" if stage.name == "dpo" else "dpo"
    values = OmegaConf.load(CONF_STAGE_DIR / f"{other}.yaml")
    assert isinstance(values, DictConfig)
    values.pop("defaults", None)
    other_cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(TrainStageConfig), values), resolve=True)
    mine = OmegaConf.to_container(stage, resolve=True)
    assert isinstance(other_cfg, dict) and isinstance(mine, dict)
    diffs = {k: {stage.name: mine.get(k), other: other_cfg.get(k)}
             for k in sorted(set(mine) | set(other_cfg)) if mine.get(k) != other_cfg.get(k)}
    # What identifies the run rather than how it trains: differs by design between the two variants.
    inputs = {"name", "init_adapter", "data", "comparison", "override_gate"}
    return {"this_stage": stage.name, "other_stage": other, "compared_with": str(CONF_STAGE_DIR / f"{other}.yaml"),
            "differences": diffs, "expected_differences": sorted(inputs & set(diffs)),
            "unexpected_differences": sorted(set(diffs) - inputs),
            "note": "unexpected_differences are training settings in which this run differs from the other variant's "
                    "defaults; the comparison dpo vs dpo_only is clean only when that list is empty"}


def check_step0(stats: dict[str, float], tolerance: float) -> tuple[bool, str]:
    """Policy == reference at step 0: loss = ln 2 and rewards = 0, within ``tolerance``."""
    problems = []
    if abs(stats["loss"] - LN2) > tolerance:
        problems.append(f"loss {stats['loss']:.4f} is not ln 2 = {LN2:.4f} within {tolerance}")
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        if abs(stats.get(key, 0.0)) > tolerance:
            problems.append(f"{key} {stats[key]:.4f} is not 0 within {tolerance}")
    if problems:
        return False, ("step-0 DPO sanity check failed: " + "; ".join(problems) + ". With the policy equal to the "
                       "reference before any update, the DPO loss must be ln 2 and the implicit rewards 0; the "
                       "reference model is wrong (e.g. the reference is not the starting policy: for stage=dpo it "
                       "must be the SFT adapter, for stage=dpo_only the base model with the adapter disabled).")
    return True, f"step-0 DPO loss {stats['loss']:.4f} = ln 2 within {tolerance}; rewards ~0: the reference is right"


def _batch_stats(trainer: Any, rows: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """DPO loss and reward metrics of ``rows`` (trainer dataset rows) in eval mode, no update."""
    import torch

    keys = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    batch = trainer.data_collator([{k: r[k] for k in keys if k in r} for r in rows])
    batch = trainer._prepare_inputs(batch)
    model = trainer.model
    was_training = model.training
    model.eval()
    trainer._metrics["eval"].clear()
    try:
        with torch.no_grad():
            loss = float(trainer.compute_loss(model, batch))
        m = {k: float(v[-1]) for k, v in trainer._metrics["eval"].items() if v}
    finally:
        trainer._metrics["eval"].clear()
        model.train(was_training)
    return loss, m


def step0_sanity(trainer: Any, n_batches: int, batch_size: int) -> dict[str, Any]:
    ds = trainer.train_dataset
    losses, per = [], []
    for b in range(n_batches):
        rows = [ds[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(ds)))]
        if not rows:
            break
        loss, m = _batch_stats(trainer, rows)
        losses.append(loss)
        per.append({"batch": b, "n": len(rows), "loss": loss} | m)
    n = sum(p["n"] for p in per)
    agg = {"loss": sum(p["loss"] * p["n"] for p in per) / n}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        vals = [p[key] * p["n"] for p in per if key in p]
        if vals:
            agg[key] = sum(vals) / n
    return {"batches": per, **agg, "n_pairs": n}


def per_type_metrics(trainer: Any, batch_size: int) -> dict[str, dict[str, float]]:
    """Reward margin / accuracy / loss per negative type, over every pair of that type."""
    ds = trainer.train_dataset
    types = ds["negative_type"]
    out: dict[str, dict[str, float]] = {}
    for t in sorted(set(types)):
        idx = [i for i, x in enumerate(types) if x == t]
        tot: dict[str, float] = {}
        for s in range(0, len(idx), batch_size):
            rows = [ds[i] for i in idx[s:s + batch_size]]
            loss, m = _batch_stats(trainer, rows)
            for k, v in ({"loss": loss} | m).items():
                tot[k] = tot.get(k, 0.0) + v * len(rows)
        out[t] = {k: v / len(idx) for k, v in tot.items()
                  if k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")}
        out[t]["n"] = len(idx)
    return out


def run_dpo(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    from datasets import Dataset

    from posttrain.models.loader import load_model
    from posttrain.training.negatives import build_pairs, leakage_report

    st = cfg.stage
    state = ctx.plan.state
    gate = state["gate"]
    override = bool(gate["gate_override"])
    fmt, source = state["format"], state["data_source"]
    flag = {"gate_override": True} if override else {}
    write_json(ctx.run_dir / "config_diff.json", config_diff(st) | flag)

    t0 = time.time()
    model_cfg = state["model_cfg"]  # cfg.model, with adapter=<init adapter> for stage=dpo
    loaded = load_model(model_cfg, cache_dir=ctx.cache_dir, device=cfg.device, resolved=state["resolved"],
                        for_training=True)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    load_seconds = time.time() - t0

    t0 = time.time()
    common.shared_data_ready(ctx)  # a rank > 0 reuses the data rank 0 prepares
    with adapters_disabled(model):  # data always comes from the BASE model
        model.eval()
        rows, report = prepare_data(cfg, ctx.shared_dir, model=model, tokenizer=tok,
                                    revision=loaded.provenance["revision"], source=source, gate_override=override,
                                    device=device)
    data_seconds = time.time() - t0
    allow = bool(cfg.model.allow_chat_template_on_base)
    sources = dpo_sources(rows, fmt, cfg.prompt, kind=cfg.model.kind, allow_chat_template_on_base=allow)
    pairs = build_pairs(sources, types=list(st.negative_types), seed=cfg.seed, per_example=st.negatives_per_example)
    pairs_path = ctx.run_dir / "pairs.jsonl"
    pairs_path.unlink(missing_ok=True)
    append_jsonl(pairs_path, [p | flag for p in pairs])
    leakage = leakage_report(pairs, threshold=st.leakage_threshold, seed=cfg.seed)
    write_json(ctx.run_dir / "negatives_report.json", leakage | {"n_pairs": len(pairs), "pairs_path": str(pairs_path)}
               | flag)
    if leakage["warn"]:
        log.warning("negatives leakage: %s", leakage["message"])
    ctx.tracker.log({"negatives/length_only_accuracy": leakage["overall"]["length_only_accuracy"],
                     "negatives/surface_cv_accuracy": leakage["overall"]["surface_cv_accuracy"] or 0.0,
                     "negatives/warn": float(leakage["warn"]), "negatives/n_pairs": len(pairs)} | flag)
    prefixes = {s["id"]: s.get("prefix", "") for s in sources}
    dataset = Dataset.from_list(dpo_trl_rows(pairs, prefixes, fmt))

    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common.common_args(cfg, ctx.shared_dir, device), beta=st.beta,
                     precompute_ref_log_probs=st.precompute_ref_log_probs)
    callback = common.make_tracker_callback(ctx, override)
    model.train()
    peft_config = common.lora_config(st) if st.name == "dpo_only" else None
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tok,
                         peft_config=peft_config, callbacks=[callback, common.make_manifest_callback()])
    reference = "sft_adapter_copy" if "ref" in getattr(trainer.model, "peft_config", {}) else "base_adapter_disabled"
    expected_ref = "sft_adapter_copy" if st.name == "dpo" else "base_adapter_disabled"

    snapshot = common.lora_snapshot(trainer.model)
    ref_snapshot = common.lora_snapshot(trainer.model, "ref") if reference == "sft_adapter_copy" else {}
    step0 = step0_sanity(trainer, st.step0_batches, st.per_device_batch_size)
    ok, message = check_step0(step0, st.step0_loss_tolerance)
    if reference != expected_ref:
        ok, message = False, (f"stage={st.name} expects reference {expected_ref} but the trainer set up {reference}; "
                              + message)
    write_json(ctx.run_dir / "dpo_step0.json", step0 | {"passed": ok, "message": message, "ln2": LN2,
                                                         "tolerance": st.step0_loss_tolerance, "reference": reference,
                                                         "stage": st.name} | flag)
    ctx.tracker.log({"step0/loss": step0["loss"], "step0/rewards_margins": step0.get("rewards/margins", 0.0),
                     "step0/passed": float(ok)} | flag, step=0)
    if not ok:
        raise PosttrainError(message)
    log.info(message)

    result, train_seconds, change, resumed_step = common.train_resumable(trainer, ctx.shared_dir, snapshot, st.name)
    ref_unchanged = None
    if ref_snapshot:
        ref_unchanged = common.weight_change(trainer.model, ref_snapshot, "ref")["max_abs_change"] == 0.0

    per_type = per_type_metrics(trainer, st.per_device_batch_size)
    ctx.tracker.log({f"final/{k.replace('rewards/', '')}/{t}": v for t, m in per_type.items() for k, v in m.items()
                     if k != "n"} | flag, step=trainer.state.global_step)

    losses = common.loss_history(ctx.run_dir / "metrics.jsonl")
    provenance = {
        "stage": st.name, "base_model": cfg.model.name, "base_path": loaded.provenance["local_path"],
        "base_revision": loaded.provenance["revision"], "base_weights_sha256": loaded.provenance["weights_sha256"],
        "model_kind": cfg.model.kind, "prompt_format": fmt, "quantization": cfg.model.quantization, "device": device,
        "data_sha256": report["sha256"], "data_source": report["source"], "data_rows": report["n_rows"],
        "data_input": {"path": report.get("data_path"), "sha256": report["counts"].get("source_sha256")},
        "n_pairs": len(pairs), "reference": reference,
        "init_adapter": loaded.provenance.get("adapter_path"), "init_adapter_sha256": loaded.provenance.get("adapter_sha256"),
        "stage_config": common.stage_container(st), "prompt_config": common.stage_container(cfg.prompt),
        "seed": cfg.seed, "gate": gate, "gate_override": override, "global_step": trainer.state.global_step,
        "libraries": common.library_versions(),
    }
    adapter_path, adapter_sha = common.save_adapter(trainer.model, ctx.run_dir, provenance)
    write_json(ctx.run_dir / "provenance.json", provenance | {"adapter_sha256": adapter_sha,
                                                              "adapter_path": str(adapter_path)})
    return {
        "train_loss_first": losses[0][1] if losses else None, "train_loss_last": losses[-1][1] if losses else None,
        "train_loss_mean": float(result.training_loss), "steps": trainer.state.global_step,
        "pairs": len(pairs), "conversations": len(rows), "reference": reference,
        "weights_changed": change["weights_changed"], "max_abs_weight_change": change["max_abs_change"],
        "lora_b_max_abs": change["lora_b_max_abs"], "ref_adapter_unchanged": ref_unchanged,
        "resumed_from_step": resumed_step,
        "step0": {k: step0[k] for k in step0 if k != "batches"} | {"passed": ok},
        "margins_per_type": per_type, "negatives_leakage_warn": leakage["warn"],
        "negatives_leakage": {"length_only_accuracy": leakage["overall"]["length_only_accuracy"],
                              "surface_cv_accuracy": leakage["overall"]["surface_cv_accuracy"],
                              "flagged_types": leakage["flagged_types"]},
        "adapter_path": str(adapter_path), "adapter_sha256": adapter_sha, "data_sha256": report["sha256"],
        "data_source": report["source"], "n_dropped_heldout": report.get("n_dropped_heldout", 0),
        "prompt_format": fmt, "device": device, "init_adapter": provenance["init_adapter"],
        "seconds": {"load": round(load_seconds, 3), "data": round(data_seconds, 3), "train": round(train_seconds, 3)},
        "gate_override": override, "gate": gate,
    }
