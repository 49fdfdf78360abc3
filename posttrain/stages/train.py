"""stage=sft | dpo | dpo_only: post-train the base model with LoRA adapters (issue 6).

plan() does every check that needs no weights, so a run fails before it spends anything:
evaluation first (a comparison.json whose gate verdict is PASS, or stage.override_gate=true,
then recorded in every record of the run), ranges of the stage settings, the prompt format
against the contamination guard, the base model's files/revision/GPU, the init adapter of
stage=dpo (hash-verified, trained on the same base weights), the data file, the seed tasks
against the held-out split, and the GPU cost estimate:

    (stage.max_steps x budget.est_train_seconds_per_step + data-generation seconds)
        / 3600 x model.num_gpus x model.gpu_price_per_hour

run() hands over to posttrain/training/sft.py or posttrain/training/dpo.py.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import OmegaConf

from posttrain.errors import PosttrainError
from posttrain.stages import Plan, RunContext

log = logging.getLogger(__name__)


def _check_ranges(st: Any) -> None:
    from posttrain.training.negatives import NEGATIVE_TYPES

    problems = []
    if st.data_source not in ("auto", "generated", "synthetic"):
        problems.append(f"stage.data_source={st.data_source!r}: choose auto, generated or synthetic")
    from posttrain.training.critic import CRITIC_MODES

    if st.critic not in CRITIC_MODES:
        problems.append(f"stage.critic={st.critic!r}: choose one of {', '.join(CRITIC_MODES)}")
    if not 0.0 < st.critic_keep_fraction <= 1.0:
        problems.append(f"stage.critic_keep_fraction={st.critic_keep_fraction} must lie in (0, 1]")
    if not 0.0 < st.rouge_threshold <= 1.0:
        problems.append(f"stage.rouge_threshold={st.rouge_threshold} must lie in (0, 1]")
    for key in ("constraint_fraction", "eval_pairs_fraction"):
        if not 0.0 <= st[key] < 1.0:
            problems.append(f"stage.{key}={st[key]} must lie in [0, 1)")
    if not 0.5 <= st.leakage_threshold < 1.0:
        problems.append(f"stage.leakage_threshold={st.leakage_threshold} must lie in [0.5, 1) (0.5 = chance)")
    if not 0.0 <= st.multiturn_fraction <= 1.0:
        problems.append(f"stage.multiturn_fraction={st.multiturn_fraction} must lie in [0, 1]")
    for key in ("num_examples", "save_steps", "logging_steps", "gradient_accumulation_steps", "lora_alpha",
                "step0_batches", "negatives_per_example", "fewshot_k", "max_rounds", "label_audit_examples",
                "reply_max_new_tokens", "instruction_max_new_tokens"):
        if st[key] is None or st[key] <= 0:
            problems.append(f"stage.{key}={st[key]!r} must be a positive number")
    if st.fact_pool not in ("data", "lists"):
        problems.append(f"stage.fact_pool={st.fact_pool!r}: choose data (the chosen replies' own values) or lists")
    if not 0.0 < st.constraint_temperature <= 2.0:
        problems.append(f"stage.constraint_temperature={st.constraint_temperature} must lie in (0, 2]")
    if not 1.0 <= st.reply_repetition_penalty <= 2.0:
        problems.append(f"stage.reply_repetition_penalty={st.reply_repetition_penalty} must lie in [1, 2] (1 = off)")
    if st.step0_loss_tolerance <= 0:
        problems.append(f"stage.step0_loss_tolerance={st.step0_loss_tolerance} must be > 0")
    bad = sorted(set(st.negative_types) - set(NEGATIVE_TYPES))
    if bad or not st.negative_types:
        problems.append(f"stage.negative_types={list(st.negative_types)}: choose from {list(NEGATIVE_TYPES)}")
    if st.name != "sft" and st.negatives_per_example > len(st.negative_types):
        problems.append("stage.negatives_per_example cannot exceed the number of stage.negative_types")
    from posttrain.training.synthetic import TEMPLATES

    bad_t = sorted(set(st.synthetic_templates) - set(TEMPLATES))
    if bad_t or not st.synthetic_templates:
        problems.append(f"stage.synthetic_templates={list(st.synthetic_templates)}: choose from {list(TEMPLATES)}")
    if problems:
        raise PosttrainError("invalid stage settings (nothing was loaded or spent):\n  - " + "\n  - ".join(problems))


def _check_seed_tasks(st: Any) -> None:
    from posttrain.training.data import ContaminationFilter

    filt = ContaminationFilter(st.rouge_threshold)
    bad = [(s, filt.reason(s)) for s in st.seed_tasks if filt.reason(s)]
    if bad:
        raise PosttrainError("stage.seed_tasks: these seed tasks are near held-out or benchmark texts (ROUGE-L >= "
                             f"{st.rouge_threshold}) and would leak them into training: "
                             + "; ".join(f"{s!r} ({why})" for s, why in bad))
    if not st.seed_tasks:
        raise PosttrainError("stage.seed_tasks is empty; self-instruct needs a few human-written seed tasks")


LORA_KEYS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
             "lora_target_modules": "target_modules"}


def _check_lora_matches(st: Any, adapter_path: Any) -> None:
    """stage=dpo continues training the SFT adapter, so its LoRA shape is the adapter's: refuse
    stage.lora_* settings that differ instead of silently ignoring them."""
    from posttrain.records import read_json

    if adapter_path is None:
        return
    prov_path, cfg_path = adapter_path / "provenance.json", adapter_path / "adapter_config.json"
    sft_stage = read_json(prov_path).get("stage_config") if prov_path.exists() else None
    peft_cfg = read_json(cfg_path) if cfg_path.exists() else {}
    mismatch = []
    for key, peft_key in LORA_KEYS.items():
        mine = OmegaConf.to_container(st[key]) if OmegaConf.is_config(st[key]) else st[key]
        if isinstance(sft_stage, dict) and key in sft_stage:
            theirs = sft_stage[key]
        elif peft_key in peft_cfg and key != "lora_target_modules":
            theirs = peft_cfg[peft_key]
        else:
            continue
        same = sorted(mine) == sorted(theirs) if isinstance(mine, list) and isinstance(theirs, list) else mine == theirs
        if not same:
            mismatch.append(f"stage.{key}={mine!r} but the adapter has {theirs!r}")
    if mismatch:
        raise PosttrainError(
            f"stage=dpo trains the SFT adapter {adapter_path} further, so its LoRA settings are the adapter's: "
            + "; ".join(mismatch) + ". Drop these overrides or set them to the adapter's values (a different "
            "shape needs stage=dpo_only, a new adapter on the base). Nothing was loaded or spent.")


# ---------------------------------------------------------------- evaluation first: the gate, recomputed

_MAX_DIFFS_NAMED = 8


def _same(a: Any, b: Any) -> bool:
    """Equal after a JSON round trip: same type and value (NaN equals NaN; True is not 1)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


def gate_differences(claimed: Any, recomputed: Any, path: str = "gate") -> list[str]:
    """Every field where a comparison.json's gate block differs from the recomputed one, as
    ``gate.observed.cluster_p: 0.01 in comparison.json, 0.0625 recomputed`` (verdict first)."""
    if isinstance(claimed, dict) and isinstance(recomputed, dict):
        keys = sorted(claimed.keys() | recomputed.keys(), key=lambda k: (k != "verdict", str(k)))
        out: list[str] = []
        for k in keys:
            sub = f"{path}.{k}"
            if k not in recomputed:
                out.append(f"{sub}: in comparison.json but not in the recomputed gate")
            elif k not in claimed:
                out.append(f"{sub}: missing from comparison.json (recomputed: {recomputed[k]!r:.80})")
            else:
                out += gate_differences(claimed[k], recomputed[k], sub)
        return out
    if isinstance(claimed, list) and isinstance(recomputed, list) and len(claimed) == len(recomputed):
        return [d for i, (a, b) in enumerate(zip(claimed, recomputed, strict=True))
                for d in gate_differences(a, b, f"{path}[{i}]")]
    if _same(claimed, recomputed):
        return []
    return [f"{path}: {claimed!r:.80} in comparison.json, {recomputed!r:.80} recomputed"]


def _sweep_of(comparison: Any, comp: dict[str, Any]) -> Any:
    """The sweep whose records the gate is recomputed from: the folder holding comparison.json, or
    the ``sweep_dir`` it records (``posttrain-report --out`` writes it elsewhere)."""
    from pathlib import Path

    def is_sweep(d: Path) -> bool:
        return d.is_dir() and ((d / "primary.json").is_file()
                               or any((j / "summary.json").is_file() for j in d.iterdir() if j.is_dir()))

    for cand in (Path(comparison).parent, Path(str(comp.get("sweep_dir") or ""))):
        if str(cand) and is_sweep(cand):
            return cand.resolve()
    return None


def verify_gate(st: Any, model_name: str | None = None) -> dict[str, Any]:
    """Evaluation first: a PASS recomputed from the sweep's records, confirmed by a person.

    ``stage.override_gate=true`` bypasses all of it and is recorded (training.common.check_gate).
    Otherwise the comparison.json named by ``stage.comparison`` must say PASS, the gate recomputed
    from its sweep's records and primary.json with the report's own code
    (:func:`posttrain.analysis.report.recompute_gate`) must equal its gate block field by field,
    and ``review.json`` in the sweep must hold a confirmation (``posttrain-review --confirm``) of
    exactly that gate (:func:`posttrain.analysis.review.gate_sha256`).
    """
    from posttrain.analysis.report import ReportError, recompute_gate
    from posttrain.analysis.review import confirm_commands, gate_sha256, read_confirmations
    from posttrain.records import read_json
    from posttrain.training.common import GATE_REFUSAL, check_gate

    info = check_gate(st, model_name)  # the override, a missing or unreadable file, a verdict that is not PASS
    if info["gate_override"]:
        return info
    path = info["comparison"]
    nothing = "Nothing was loaded or spent."
    comp = read_json(path)
    sweep = _sweep_of(path, comp)
    if sweep is None:
        raise PosttrainError(
            f"stage.comparison={st.comparison}: {path} says PASS, but no sweep records are beside it or at its "
            f"sweep_dir ({comp.get('sweep_dir')!r}), so the gate cannot be recomputed; a verdict is only taken from "
            f"the records (point stage.comparison at the sweep folder). {GATE_REFUSAL}. {nothing}")
    try:
        recomputed = recompute_gate(sweep)
    except ReportError as exc:
        raise PosttrainError(f"stage.comparison={st.comparison}: the gate cannot be recomputed from {sweep} ({exc}). "
                             f"{GATE_REFUSAL}. {nothing}") from exc
    diffs = gate_differences(comp.get("gate"), recomputed)
    if diffs:
        more = f" (and {len(diffs) - _MAX_DIFFS_NAMED} more)" if len(diffs) > _MAX_DIFFS_NAMED else ""
        raise PosttrainError(
            f"stage.comparison={st.comparison}: {path} does not match the gate recomputed from the records of "
            f"{sweep} (recomputed verdict {recomputed.get('verdict')}): " + "; ".join(diffs[:_MAX_DIFFS_NAMED]) + more
            + f". Training takes only the recomputed gate; rerun `posttrain-report {sweep}` if the records or the "
            f"calibration changed since. {nothing}")
    digest = gate_sha256(recomputed)
    confirmations = read_confirmations(sweep)
    match = next((c for c in reversed(confirmations) if c.get("gate_sha256") == digest), None)
    if match is None:
        if confirmations:
            last = confirmations[-1]
            why = (f"review.json confirms gate sha256 {str(last.get('gate_sha256'))[:12]}... (by "
                   f"{last.get('reviewer')} at {last.get('confirmed_at')}), but the gate recomputed now is "
                   f"{digest[:12]}...: the records, primary.json or the calibration changed since that review")
        else:
            why = f"no person has confirmed it (no confirmation in {sweep / 'review.json'})"
        raise PosttrainError(
            f"stage={st.name}: the gate of {sweep} is PASS, but {why}. Training needs a PASS and a confirmation: run "
            f"{confirm_commands(sweep)}; or set stage.override_gate=true (recorded in every record). {nothing}")
    return info | {"sweep_dir": str(sweep), "gate_recomputed": True, "gate_sha256": digest,
                   "review": {k: match.get(k) for k in ("reviewer", "confirmed_at", "n_reviewed", "n_shown",
                                                         "gate_sha256")}}


def plan(cfg: Any) -> Plan:
    from posttrain.generation.prompts import check_format_allowed, resolve_format
    from posttrain.models.loader import preflight_model, resolve_adapter
    from posttrain.paths import cache_dir
    from posttrain.training.data import resolve_data_path, resolve_source

    st = cfg.stage
    if st.name not in ("sft", "dpo", "dpo_only"):
        raise PosttrainError(f"posttrain.stages.train cannot run stage={st.name}")
    gate = verify_gate(st, cfg.model.name)  # evaluation first: before anything else is looked at
    _check_ranges(st)
    if cfg.model.adapter:
        raise PosttrainError(f"model.adapter={cfg.model.adapter} is for evaluation; training stages start from the "
                             "base model (stage=dpo takes the SFT adapter as stage.init_adapter)")
    if st.name == "dpo" and not st.init_adapter:
        raise PosttrainError("stage=dpo starts from the SFT adapter: set stage.init_adapter=<sft run folder or adapter "
                             "folder>; for DPO from the base model use stage=dpo_only. Nothing was loaded or spent.")
    if st.name != "dpo" and st.init_adapter:
        raise PosttrainError(f"stage={st.name} starts from the base model; stage.init_adapter is only for stage=dpo")
    fmt = resolve_format(cfg.prompt.format, cfg.model.kind)
    check_format_allowed(fmt, cfg.model.kind, cfg.model.allow_chat_template_on_base, cfg.model.name)
    source = resolve_source(st, cfg.model)
    if st.data:
        resolve_data_path(st.data)
    elif source == "generated":
        _check_seed_tasks(st)

    model_cfg = cfg.model
    adapter_note = ""
    if st.name == "dpo":
        model_cfg = OmegaConf.merge(cfg.model, {"adapter": st.init_adapter})
        resolve_adapter(st.init_adapter)  # exists, and its hash matches its provenance
    resolved = preflight_model(model_cfg, cache_dir=cache_dir(cfg.cache_dir), device=cfg.device)
    if st.name == "dpo":
        from posttrain.records import read_json

        prov_path = resolved.adapter_path / "provenance.json" if resolved.adapter_path else None
        if prov_path is not None and prov_path.exists():
            prov = read_json(prov_path)
            base_rev = prov.get("base_revision")
            if base_rev and resolved.revision and base_rev != resolved.revision:
                raise PosttrainError(
                    f"stage.init_adapter={st.init_adapter} was trained on base weights {base_rev} but model="
                    f"{cfg.model.name} resolves to {resolved.revision}; DPO must start from an adapter of the same base")
            if prov.get("stage") not in (None, "sft"):
                log.warning("stage.init_adapter comes from a stage=%s run, not sft", prov.get("stage"))
        _check_lora_matches(st, resolved.adapter_path)
        adapter_note = f", init adapter {resolved.adapter_path} (sha256 {str(resolved.adapter_sha256)[:12]}...)"
    from posttrain.training.preflight import check_trainable

    # template, format, LoRA targets, sequence length, data yield: all before any data is generated
    trainable = check_trainable(cfg, fmt, source, resolved)

    # GPU cost estimate: training steps plus, when the data is generated, decoding at the budget's rate.
    train_s = st.max_steps * cfg.budget.est_train_seconds_per_step
    data_s = 0.0
    if not st.data and source == "generated":
        target = math.ceil(st.num_examples / st.critic_keep_fraction * 1.1)
        proposals = target * 3  # about a third of the proposals survive the filters
        # replies: one per turn, plus the second reply of the prompts that state a constraint
        tokens = (proposals * st.instruction_max_new_tokens
                  + target * st.reply_max_new_tokens
                  * (1 + st.multiturn_fraction * st.followup_turns + st.constraint_fraction))
        data_s = tokens / cfg.budget.est_decode_tokens_per_s
    gpu_hours = (train_s + data_s) / 3600 * cfg.model.num_gpus
    usd = gpu_hours * cfg.model.gpu_price_per_hour
    notes = [f"{st.name} plan: {st.max_steps} steps x batch {st.per_device_batch_size} x accum "
             f"{st.gradient_accumulation_steps}, LoRA r={st.lora_r}, format={fmt}, data="
             f"{st.data or source}{adapter_note}; estimate {gpu_hours:.3f} GPU-h (${usd:.2f}: {train_s:.0f} s "
             f"training + {data_s:.0f} s data generation)"]
    if gate["gate_override"]:
        notes.append("GATE OVERRIDDEN (stage.override_gate=true): training without a PASS of the three-way "
                     "comparison; gate_override=true is written into every record of this run")
    else:
        notes.append(f"gate PASS in {gate['comparison']}, recomputed from the records (sha256 "
                     f"{gate['gate_sha256'][:12]}...) and confirmed by {gate['review']['reviewer']} at "
                     f"{gate['review']['confirmed_at']} ({gate['review']['n_reviewed']} items read)")
    if st.name != "sft" and st.allow_leaky_negatives:
        notes.append("LEAKY NEGATIVES ALLOWED (stage.allow_leaky_negatives=true): DPO trains even if a surface "
                     "classifier separates chosen from rejected; allow_leaky_negatives=true is written into every record")
    return Plan(estimate_usd=usd, estimate_gpu_hours=gpu_hours, notes=notes,
                state={"gate": gate, "format": fmt, "data_source": source, "resolved": resolved,
                       "model_cfg": model_cfg, "trainable": trainable})


def run(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    if cfg.stage.name == "sft":
        from posttrain.training.sft import run_sft

        return run_sft(cfg, ctx)
    from posttrain.training.dpo import run_dpo

    return run_dpo(cfg, ctx)
