"""stage=dpo and stage=dpo_only: DPO with TRL's DPOTrainer on LoRA adapters.

- ``dpo``: starts from the SFT adapter (``stage.init_adapter``, verified through the loader's
  resolve_adapter); TRL copies it into a frozen "ref" adapter, so the reference is the SFT policy.
- ``dpo_only``: starts from the base model with a new adapter; the reference is the base model
  (adapter disabled).

Both use the same pairs (the data of the run, or ``stage.data=<sft run>`` for the very same rows)
with typed negatives (posttrain/training/negatives.py). ``stage.eval_pairs_fraction`` of each
type's source examples are held out, never trained on, and handed to TRL as an ``eval_dataset``
dict (one entry per negative type, plus ``step0``). ``negatives_report.json`` holds the leakage
check: when a classifier over the replies alone separates chosen from rejected, overall or for a
type, or a type has too few pairs to be tested, the run stops before the trainer is built unless
``stage.allow_leaky_negatives=true`` (then recorded in every record). Before training, the step-0 sanity check evaluates (``trainer.evaluate``) the DPO
loss on the first training batches with policy == reference: it must be ln 2 (0.693) within
``stage.step0_loss_tolerance`` and the rewards ~0, else the reference is wrong and the run stops
(``dpo_step0.json``). After training, reward margins and accuracies are evaluated per negative type
on the held-out pairs. ``config_diff.json`` lists every setting in which this run differs from the
other DPO variant's defaults.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posttrain.errors import PosttrainError
from posttrain.records import append_jsonl, write_json
from posttrain.run_context import RunContext
from posttrain.training import common
from posttrain.training.data import adapters_disabled, dpo_sources, dpo_trl_rows, prepare_data

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


def config_diff(stage: Any) -> dict[str, Any]:
    """Differences between this run's effective stage config and the other DPO variant's YAML defaults."""
    from posttrain.config import TrainStageConfig
    from posttrain.paths import conf_dir

    other = "dpo_only" if stage.name == "dpo" else "dpo"
    other_yaml = conf_dir() / "stage" / f"{other}.yaml"
    values = OmegaConf.load(other_yaml)
    assert isinstance(values, DictConfig)
    values.pop("defaults", None)
    other_cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(TrainStageConfig), values), resolve=True)
    mine = OmegaConf.to_container(stage, resolve=True)
    assert isinstance(other_cfg, dict) and isinstance(mine, dict)
    diffs = {k: {stage.name: mine.get(k), other: other_cfg.get(k)}
             for k in sorted(set(mine) | set(other_cfg)) if mine.get(k) != other_cfg.get(k)}
    # What identifies the run rather than how it trains: differs by design between the two variants.
    inputs = {"name", "init_adapter", "data", "comparison", "override_gate"}
    return {"this_stage": stage.name, "other_stage": other, "compared_with": str(other_yaml),
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


REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
STEP0 = "step0"


def evaluate_split(trainer: Any, name: str) -> dict[str, float]:
    """DPO loss and reward metrics on one entry of the trainer's ``eval_dataset`` dict, no update.

    Public TRL API only: ``trainer.evaluate(eval_dataset=<name>)`` returns ``<name>_loss``, and TRL
    adds its averaged reward metrics to the same logged dict as ``eval_rewards/...``.
    """
    metrics = trainer.evaluate(eval_dataset=name, metric_key_prefix=name)
    out = {"loss": float(metrics[f"{name}_loss"])}
    for key in REWARD_KEYS:
        if f"eval_{key}" in metrics:
            out[key] = float(metrics[f"eval_{key}"])
    return out


def step0_sanity(trainer: Any) -> dict[str, Any]:
    """The DPO loss and rewards on the ``step0`` entry (the first training batches) before any update."""
    return evaluate_split(trainer, STEP0) | {"n_pairs": len(trainer.eval_dataset[STEP0])}


def per_type_metrics(trainer: Any, types: list[str]) -> dict[str, dict[str, float]]:
    """Reward margin / accuracy / loss per negative type, on its held-out pairs."""
    return {t: evaluate_split(trainer, t) | {"n": len(trainer.eval_dataset[t])} for t in types}


def run_dpo(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    from datasets import Dataset

    from posttrain.models.loader import load_model
    from posttrain.training.negatives import CONTENT_TYPES, build_pairs, leakage_report, split_pairs

    st = cfg.stage
    state = ctx.plan.state
    gate = state["gate"]
    override = bool(gate["gate_override"])
    fmt, source = state["format"], state["data_source"]
    flag: dict[str, Any] = ({"gate_override": True} if override else {}) | (
        {"allow_leaky_negatives": True} if st.allow_leaky_negatives else {})
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
                                    device=device, prompt_format=fmt)
    data_seconds = time.time() - t0
    allow = bool(cfg.model.allow_chat_template_on_base)
    sources = dpo_sources(rows, fmt, cfg.prompt, kind=cfg.model.kind, allow_chat_template_on_base=allow)
    pairs = build_pairs(sources, types=list(st.negative_types), seed=cfg.seed, per_example=st.negatives_per_example,
                        fact_pool=str(st.fact_pool))
    train_pairs, held_pairs = split_pairs(pairs, st.eval_pairs_fraction, cfg.seed)
    held_ids = {p["id"] for p in held_pairs}
    pairs_path = ctx.run_dir / "pairs.jsonl"
    pairs_path.unlink(missing_ok=True)
    append_jsonl(pairs_path, [p | {"split": "eval" if p["id"] in held_ids else "train"} | flag for p in pairs])
    leakage = leakage_report(pairs, threshold=st.leakage_threshold, seed=cfg.seed)
    per_type_counts = {t: {"train": sum(p["negative_type"] == t for p in train_pairs),
                           "eval": sum(p["negative_type"] == t for p in held_pairs)}
                       for t in sorted({p["negative_type"] for p in pairs})}
    write_json(ctx.run_dir / "negatives_report.json", leakage | {
        "n_pairs": len(pairs), "n_train_pairs": len(train_pairs), "n_eval_pairs": len(held_pairs),
        "pairs_per_type": per_type_counts, "negative_types": list(st.negative_types),
        "missing_types": sorted(set(st.negative_types) - set(per_type_counts)), "pairs_path": str(pairs_path),
        "allow_leaky_negatives": bool(st.allow_leaky_negatives), "fact_pool": str(st.fact_pool)} | flag)
    ctx.tracker.log({"negatives/overall_score": leakage["overall"].get("score") or 0.0,
                     "negatives/leaky": float(leakage["leaky"]), "negatives/n_pairs": len(pairs)}
                    | {f"negatives/score/{t}": b.get("score") or 0.0 for t, b in leakage["per_type"].items()} | flag)
    if leakage["leaky"] or leakage["too_small_types"]:
        if not st.allow_leaky_negatives:
            small = (f" A type too small to test counts as unchecked, not as passed: raise stage.num_examples so "
                     f"each type gets {leakage['min_testable_pairs']} pairs, or drop it from stage.negative_types."
                     if leakage["too_small_types"] else "")
            raise PosttrainError(
                f"stage={st.name}: {leakage['message']} (negatives_report.json). Drop the flagged types from "
                f"stage.negative_types (content-only types: {', '.join(CONTENT_TYPES)}), or set "
                f"stage.allow_leaky_negatives=true to train anyway (recorded in every record of the run).{small} The "
                "data was prepared; nothing was trained.")
        log.warning("negatives leaky or untested, trained anyway (stage.allow_leaky_negatives=true): %s",
                    leakage["message"])
    if not train_pairs:
        raise PosttrainError(f"stage={st.name}: no training pairs (types {list(st.negative_types)} applied to none "
                             f"of the {len(rows)} conversations); nothing was trained")
    prefixes = {s["id"]: s.get("prefix", "") for s in sources}
    dataset = Dataset.from_list(dpo_trl_rows(train_pairs, prefixes, fmt))
    n_step0 = min(len(train_pairs), st.step0_batches * st.per_device_batch_size)
    eval_sets = {STEP0: Dataset.from_list(dpo_trl_rows(train_pairs[:n_step0], prefixes, fmt))}
    held_types = sorted({p["negative_type"] for p in held_pairs})
    for t in held_types:
        eval_sets[t] = Dataset.from_list(dpo_trl_rows([p for p in held_pairs if p["negative_type"] == t], prefixes, fmt))

    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common.common_args(cfg, ctx.shared_dir, device), beta=st.beta,
                     precompute_ref_log_probs=st.precompute_ref_log_probs,
                     per_device_eval_batch_size=st.per_device_batch_size, eval_strategy="no")
    callback = common.make_tracker_callback(ctx, override, extra=flag)
    model.train()
    peft_config = common.lora_config(st) if st.name == "dpo_only" else None
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, eval_dataset=eval_sets,
                         processing_class=tok, peft_config=peft_config,
                         callbacks=[callback, common.make_manifest_callback()])
    reference = "sft_adapter_copy" if "ref" in getattr(trainer.model, "peft_config", {}) else "base_adapter_disabled"
    expected_ref = "sft_adapter_copy" if st.name == "dpo" else "base_adapter_disabled"

    snapshot = common.lora_snapshot(trainer.model)
    ref_snapshot = common.lora_snapshot(trainer.model, "ref") if reference == "sft_adapter_copy" else {}
    step0 = step0_sanity(trainer)
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

    per_type = per_type_metrics(trainer, held_types)
    # a configured type without held-out pairs (too few examples of it) is logged as NaN, not left out
    for t in st.negative_types:
        per_type.setdefault(t, {"loss": math.nan} | dict.fromkeys(REWARD_KEYS, math.nan) | {"n": 0})
    ctx.tracker.log({f"final/{k.replace('rewards/', '')}/{t}": v for t, m in per_type.items() for k, v in m.items()
                     if k != "n"} | flag, step=trainer.state.global_step)

    losses = common.loss_history(ctx.run_dir / "metrics.jsonl")
    provenance = {
        "stage": st.name, "base_model": cfg.model.name, "base_path": loaded.provenance["local_path"],
        "base_revision": loaded.provenance["revision"], "base_weights_sha256": loaded.provenance["weights_sha256"],
        "model_kind": cfg.model.kind, "prompt_format": fmt, "quantization": cfg.model.quantization, "device": device,
        "data_sha256": report["sha256"], "data_source": report["source"], "data_rows": report["n_rows"],
        "data_input": {"path": report.get("data_path"), "sha256": report["counts"].get("source_sha256")},
        "n_pairs": len(pairs), "n_train_pairs": len(train_pairs), "reference": reference,
        "allow_leaky_negatives": bool(st.allow_leaky_negatives), "negatives_leaky": leakage["leaky"],
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
        "step0": step0 | {"passed": ok},
        "margins_per_type": per_type, "eval_pairs": len(held_pairs), "train_pairs": len(train_pairs),
        "negatives_leaky": leakage["leaky"], "allow_leaky_negatives": bool(st.allow_leaky_negatives),
        "negatives_leakage": {"overall_score": leakage["overall"].get("score"),
                              "per_type": {t: b.get("score") for t, b in leakage["per_type"].items()},
                              "flagged_types": leakage["flagged_types"]},
        "adapter_path": str(adapter_path), "adapter_sha256": adapter_sha, "data_sha256": report["sha256"],
        "data_source": report["source"], "n_dropped_heldout": report.get("n_dropped_heldout", 0),
        "prompt_format": fmt, "device": device, "init_adapter": provenance["init_adapter"],
        "seconds": {"load": round(load_seconds, 3), "data": round(data_seconds, 3), "train": round(train_seconds, 3)},
        "gate_override": override, "gate": gate,
    }
