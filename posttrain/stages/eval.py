"""stage=eval: generate every model's replies to a benchmark, then score them.

Order of work, so that nothing is spent before everything that can fail cheaply has been
checked (plan): benchmark file and schema, prompt format against the contamination guard,
weights/revision/GPU, judge key and cost estimate. Then (run): load the model, the sentinel
probe, batched multi-turn generation appended to generations.jsonl as conversations finish
(resume reuses them), scoring into scores.jsonl, and the summary metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from posttrain.errors import PosttrainError
from posttrain.items import Item
from posttrain.records import append_jsonl, read_json, read_jsonl, sha256_text, write_json, write_jsonl
from posttrain.stages import Plan, RunContext

log = logging.getLogger(__name__)


def _load_items(cfg: Any) -> Any:
    from posttrain.benchmarks import load_benchmark

    b = cfg.benchmark
    try:
        return load_benchmark(b.name, split=b.split, limit=b.limit, path=b.path)
    except ValueError as exc:
        raise PosttrainError(f"benchmark: {exc} (nothing was loaded or spent)") from exc


def plan(cfg: Any) -> Plan:
    from posttrain.generation.prompts import check_format_allowed, resolve_format
    from posttrain.models.loader import preflight_model
    from posttrain.paths import cache_dir
    from posttrain.stages import world_size

    if world_size() > 1:
        raise PosttrainError(f"stage=eval runs in one process, but this launch has WORLD_SIZE={world_size()} "
                             "(accelerate launch / torchrun): every rank would generate and judge everything. "
                             "Run the eval with plain `posttrain`, or spread models over GPUs with a sweep "
                             "(hydra/launcher=slurm, docs/scaling.md).")
    bench = _load_items(cfg)
    verifiable_plan = None
    if cfg.scorer.name == "verifiable":  # a selection it cannot decide is refused before any model loads
        from posttrain.scorers.verifiable import check_scorable

        try:
            verifiable_plan = check_scorable(bench.items, benchmark=f"{bench.name}/{bench.split}")
        except ValueError as exc:
            raise PosttrainError(f"{exc} (nothing was loaded or spent)") from exc
    fmt = resolve_format(cfg.prompt.format, cfg.model.kind)
    check_format_allowed(fmt, cfg.model.kind, cfg.model.allow_chat_template_on_base, cfg.model.name)
    from posttrain.generation.backends import check_backend_available

    check_backend_available(cfg.generation.backend)
    resolved = preflight_model(cfg.model, cache_dir=cache_dir(cfg.cache_dir), device=cfg.device)
    n_turns = sum(len(it.turns) for it in bench.items)
    n_judged = sum(len(it.judged_turns) for it in bench.items)
    # GPU estimate: every turn may run to max_new_tokens, decoded at budget.est_decode_tokens_per_s.
    gpu_hours = n_turns * cfg.generation.max_new_tokens / cfg.budget.est_decode_tokens_per_s / 3600 * cfg.model.num_gpus
    api_usd = 0.0
    judge_preflight = None
    if cfg.scorer.name == "llm":
        from posttrain.judges import check_judge_ready, estimate_cost

        if cfg.judge.mode == "pairwise":
            raise PosttrainError(
                "judge.mode=pairwise compares two runs, not one: evaluate each model with judge.mode=sync (or "
                "batch), then run `posttrain-pairwise RUN_A RUN_B --judge <name>`. Nothing was loaded or spent."
            )
        check_judge_ready(cfg.judge)
        from posttrain.judges.lifecycle import preflight_for_eval

        judge_preflight = preflight_for_eval(cfg.judge)  # retired/unknown judge model: refused here, nothing spent
        api_usd = estimate_cost(bench.items, cfg.judge) * (1 + cfg.judge.spot_check)
    gpu_usd = gpu_hours * cfg.model.gpu_price_per_hour
    from posttrain.analysis.comparison import power_note

    n_categories = len({it.category for it in bench.items})
    notes = [f"power: {power_note(len(bench.items), cfg.gate, n_categories=max(n_categories, 1))}",f"eval plan: {len(bench.items)} items ({n_turns} turns, {n_judged} judged) of {bench.name}/{bench.split}, "
             f"format={fmt}; estimate {gpu_hours:.3f} GPU-h (${gpu_usd:.2f}) + judge ${api_usd:.2f}"]
    if verifiable_plan is not None:
        notes.append(f"scorer=verifiable decides {verifiable_plan['n_verifiable']} of {verifiable_plan['n_items']} "
                     f"items; {len(verifiable_plan['not_scored'])} will be recorded not_scored")
    return Plan(estimate_usd=gpu_usd + api_usd, estimate_gpu_hours=gpu_hours, estimate_api_usd=api_usd,
                notes=notes, state={"bench": bench, "format": fmt, "resolved": resolved,
                       "judge_preflight": judge_preflight})


def _fingerprint(cfg: Any, fmt: str, provenance: dict[str, Any], bench: Any) -> str:
    """What makes generations comparable: the same weights, prompt and decoding settings."""
    gen = OmegaConf.to_container(cfg.generation, resolve=True)
    prompt = OmegaConf.to_container(cfg.prompt, resolve=True)
    blob = repr((provenance.get("revision"), provenance.get("adapter_sha256"), fmt, gen, prompt, bench.sha256))
    return sha256_text(blob)[:16]


def generate_conversations(items: Sequence[Item], backend: Any, *, fmt: str, prompt_cfg: Any, gen_cfg: Any,
                           kind: str, tokenizer: Any, model_name: str, allow_chat_template_on_base: bool,
                           fingerprint: str, on_done: Any, progress: bool = True) -> dict[str, float]:
    """Generate every item turn by turn, each model seeing its OWN earlier replies.

    Items are taken in chunks of ``batch_size``; within a chunk, turn k of every conversation is
    one batched call, so 200 conversations x 4 turns at batch 16 is 13 x 4 = 52 calls, not 800.
    Golden replies replace the model's own in the history only where the benchmark defines them.
    """
    from tqdm.auto import tqdm

    from posttrain.generation.backends import SamplingParams
    from posttrain.generation.prompts import render_prompt, stop_strings

    stops = tuple(stop_strings(fmt, prompt_cfg))
    total_turns = sum(len(it.turns) for it in items)
    bar = tqdm(total=total_turns, desc=f"{model_name} generate", unit="turn", disable=not progress, leave=True)
    n_new, seconds, done = 0, 0.0, 0
    bs = gen_cfg.batch_size
    for start in range(0, len(items), bs):
        chunk = items[start:start + bs]
        rows: list[dict[str, Any]] = [{"item_id": it.id, "category": it.category, "source": it.source, "model": model_name,
                 "prompt_format": fmt, "fingerprint": fingerprint, "turns": []} for it in chunk]
        history: list[list[tuple[str, str | None]]] = [[] for _ in chunk]
        for k in range(max(len(it.turns) for it in chunk)):
            active = [i for i, it in enumerate(chunk) if len(it.turns) > k]
            bar.set_description(f"{model_name} turn {k + 1}")
            prompts = []
            for i in active:
                history[i].append((chunk[i].turns[k].user, None))
                # an item's own system turn (system_prompt benchmark) is rendered in every format
                prompts.append(render_prompt(history[i], fmt, prompt_cfg, kind=kind, tokenizer=tokenizer,
                                             allow_chat_template_on_base=allow_chat_template_on_base,
                                             system=chunk[i].meta.get("system")))
            params = SamplingParams(max_new_tokens=gen_cfg.max_new_tokens, do_sample=gen_cfg.do_sample,
                                    temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                                    seed=gen_cfg.seed + start * 100 + k, stop_strings=stops)
            t0 = time.perf_counter()
            gens = backend.generate(prompts, params)
            seconds += time.perf_counter() - t0
            for i, prompt, g in zip(active, prompts, gens, strict=True):
                turn = chunk[i].turns[k]
                rows[i]["turns"].append({
                    "turn": k, "user": turn.user, "prompt_sha256": sha256_text(prompt), "reply": g.text,
                    "n_prompt_tokens": g.n_prompt_tokens, "n_new_tokens": g.n_new_tokens,
                    "finish_reason": g.finish_reason,
                })
                reply_in_history = turn.golden_reply if turn.golden_reply is not None else g.text
                history[i][-1] = (turn.user, reply_in_history)
                n_new += g.n_new_tokens
            bar.update(len(active))
        on_done(rows)
        done += len(chunk)
        bar.set_postfix(conversations=f"{done}/{len(items)}")
    bar.close()
    return {"n_new_tokens": n_new, "generation_seconds": seconds,
            "tokens_per_second": n_new / seconds if seconds > 0 else 0.0}


def _score(cfg: Any, items: Sequence[Item], rows: list[dict[str, Any]], ctx: RunContext) -> dict[str, Any]:
    """Score every item into scores.jsonl; returns summary fields. Judge calls are cached per turn."""
    from posttrain.paths import calibration_dir, judge_cache_dir

    partial = ctx.run_dir / "scores.partial.jsonl"
    partial.unlink(missing_ok=True)
    extra: dict[str, Any] = {}
    if cfg.scorer.name == "heuristic_triage":
        from posttrain.scorers.triage import triage_generations

        scores = triage_generations(items, rows)
        append_jsonl(partial, scores)
        extra["gate_eligible"] = False
        extra["gate_ineligible_reason"] = ("scorer=heuristic_triage is triage only and can never gate; "
                                           "rerun with scorer=llm and a calibrated judge")
        extra["judge_instrument"] = None
        extra["calibration"] = {"key": None, "kappa": None, "n": None, "applies": False,
                                "reason": "scorer=heuristic_triage has no judge to calibrate"}
    elif cfg.scorer.name == "verifiable":
        from posttrain.scorers import verifiable

        scores = verifiable.score_generations(items, rows)
        append_jsonl(partial, scores)
        extra.update(verifiable.summarise(scores))
        if extra.get("ifeval"):  # IFEval's per-instruction results, one record per (item, instruction)
            from posttrain.scorers.ifeval import instruction_records

            write_jsonl(ctx.run_dir / "ifeval.jsonl", instruction_records(scores))
        # exact checks of the instruction's own definition: nothing to calibrate (docs/judging.md)
        extra["gate_eligible"] = True
        extra["gate_ineligible_reason"] = None
        extra["judge_instrument"] = None
        extra["calibration"] = {"key": None, "kappa": None, "n": None, "applies": False,
                                "reason": "scorer=verifiable is exact: there is no judgment to calibrate"}
    else:
        from posttrain.judges import JudgeSpend, judge_generations
        from posttrain.judges.calibration import calibration_status
        from posttrain.judges.clients import request_settings
        from posttrain.judges.prompt import judge_instrument
        from posttrain.judges.runner import code_decided_summary

        spend = JudgeSpend()
        try:
            scores = judge_generations(items, rows, cfg.judge, cache_dir=judge_cache_dir(cfg.judge.cache_dir),
                                       on_row=lambda r: append_jsonl(partial, [r]), state_dir=ctx.run_dir,
                                       spend=spend)
        finally:  # a judge stopped part-way (spend limit, repeated 4xx) still paid for what it answered
            ctx.api_usd += spend.usd  # what this run paid; the rows carry what their verdicts cost when made
        extra["judge_spend"] = spend.as_dict()
        extra["code_decided"] = code_decided_summary(scores)  # facts the code decided, and where they overrode
        extra["judge_preflight"] = ctx.plan.state.get("judge_preflight")
        extra["judge_settings"] = request_settings(cfg.judge)  # thinking, effort, sampling: as sent
        instrument = judge_instrument(cfg.judge)
        extra["judge_instrument"] = instrument
        extra["calibration"] = calibration_status(calibration_dir(), instrument, min_kappa=cfg.gate.min_kappa,
                                                  min_items=cfg.gate.min_calibration_items)
        extra["gate_eligible"] = extra["calibration"]["applies"]
        extra["gate_ineligible_reason"] = extra["calibration"]["reason"]
        extra["spot_check"] = _spot_check(cfg, items, rows, scores, ctx)
        extra["verifiable_agreement"] = _verifiable_agreement(items, rows, scores)
    # scores.partial.jsonl grows in completion order (a crash trace); scores.jsonl is written whole in
    # generation-row order, so a resumed run's file is byte-identical to an uninterrupted run's
    write_jsonl(ctx.run_dir / "scores.jsonl", scores)
    partial.unlink(missing_ok=True)
    return {"scores": scores, **extra}


def _verifiable_agreement(items: Sequence[Item], rows: list[dict[str, Any]],
                          scores: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The judge's verdicts against the exact checks' on the same replies (no API call); None without
    verifiable items. The report shows kappa and every disagreeing item (analysis/agreement.py)."""
    from posttrain.scorers import verifiable

    if not any(verifiable.item_is_verifiable(it) for it in items):
        return None
    from posttrain.analysis.agreement import verdict_agreement

    exact = verifiable.score_generations(items, rows)
    return verdict_agreement({r["item_id"]: r["verdict"] for r in exact}, {r["item_id"]: r["verdict"] for r in scores})


def _spot_check(cfg: Any, items: Sequence[Item], rows: list[dict[str, Any]], scores: list[dict[str, Any]],
                ctx: RunContext) -> dict[str, Any]:
    """The spot check's summary block: always present, with ``status`` ran / off / skipped and why."""
    from posttrain.judges.spot_check import run_spot_check
    from posttrain.paths import judge_cache_dir

    block, result = run_spot_check(items, {cfg.model.name: rows}, scores, cfg.judge, seed=cfg.seed,
                                   cache_dir_of=lambda second: judge_cache_dir(second.cache_dir))
    if result is not None:
        ctx.api_usd += float(result.get("spent_usd") or 0.0)
        write_json(ctx.run_dir / "spot_check.json", result)
    return block


def decoding_record(gen_cfg: Any, stops: Sequence[str]) -> dict[str, Any]:
    """The decoding settings the replies were made with, as used (``summary["decoding"]``).

    Greedy decoding uses no temperature, top_p or seed (the backends drop them), so they are
    recorded as None there: two greedy runs whose configs differ only in an unused temperature made
    their replies the same way. The comparison refuses a pair whose records differ in any field.
    """
    sampled = bool(gen_cfg.do_sample)
    return {"do_sample": sampled, "temperature": float(gen_cfg.temperature) if sampled else None,
            "top_p": float(gen_cfg.top_p) if sampled else None, "max_new_tokens": int(gen_cfg.max_new_tokens),
            "stop_strings": list(stops), "seed": int(gen_cfg.seed) if sampled else None,
            "backend": str(gen_cfg.backend)}


def model_identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """Which weights answered (``summary["model_identity"]``), from the loader's provenance record."""
    return {"name": provenance.get("model"), "path": provenance.get("path"), "revision": provenance.get("revision"),
            "adapter": provenance.get("adapter_path"), "adapter_sha256": provenance.get("adapter_sha256")}


def truncation_record(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many turns stopped at max_new_tokens (finish_reason ``length``), over every generated turn.

    A reply cut by the length budget may fail a check it would have passed with more tokens, so a
    format that talks longer is then measured partly on the budget (docs/comparisons.md).
    """
    turns = [t for r in rows for t in r["turns"]]
    k = sum(t.get("finish_reason") == "length" for t in turns)
    return {"turns": len(turns), "length_stopped": k, "rate": k / len(turns) if turns else None}


def summarise_scores(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts, success rate = pass / (pass + fail) with a Wilson 95% interval, per category too.

    ``n_not_scored`` counts items a verifiable run left undecided; like errors they are outside the rate.
    """
    from posttrain.analysis.stats import wilson_ci

    def block(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n_pass = sum(r["verdict"] == "pass" for r in rows)
        n_fail = sum(r["verdict"] == "fail" for r in rows)
        n_err = sum(r["verdict"] == "error" for r in rows)
        n_not = sum(r["verdict"] == "not_scored" for r in rows)  # scorer=verifiable: left to a judge
        n = n_pass + n_fail
        return {"n_items": len(rows), "n_pass": n_pass, "n_fail": n_fail, "n_error": n_err, "n_not_scored": n_not,
                "success_rate": n_pass / n if n else None, "ci95": list(wilson_ci(n_pass, n))}

    cats = sorted({r["category"] for r in scores})
    return block(scores) | {"per_category": {c: block([r for r in scores if r["category"] == c]) for c in cats}}


def _open_backend(cfg: Any, ctx: RunContext, fmt: str) -> tuple[Any, Any]:
    """The loader (guards + provenance) and a generation backend over the same weights."""
    from posttrain.models.loader import LoadedModel, load_model, load_tokenizer

    resolved = ctx.plan.state["resolved"]
    if cfg.generation.backend == "vllm":
        from posttrain.generation.vllm import VLLMBackend

        tok, info = load_tokenizer(cfg.model, resolved)  # the guards run on the tokenizer either way
        backend: Any = VLLMBackend(resolved.path, dtype=cfg.model.dtype, quantization=cfg.model.quantization,
                              max_context=cfg.model.max_context, adapter=resolved.adapter_path, seed=cfg.seed)
        prov = {"model": cfg.model.name, "kind": cfg.model.kind, "path": str(cfg.model.path),
                "local_path": str(resolved.path), "revision": resolved.revision, "backend": "vllm",
                "adapter_path": str(resolved.adapter_path) if resolved.adapter_path else None,
                "adapter_sha256": resolved.adapter_sha256, **info}
        return LoadedModel(model=None, tokenizer=tok, kind=cfg.model.kind, name=cfg.model.name, provenance=prov,
                           device="cuda"), backend
    from posttrain.generation.backends import HFBackend

    loaded = load_model(cfg.model, cache_dir=ctx.cache_dir, device=cfg.device, resolved=resolved)
    # A chat template already holds its special tokens; adding BOS again would double it.
    backend = HFBackend(loaded.model, loaded.tokenizer, loaded.device, add_special_tokens=(fmt != "chat_template"))
    return loaded, backend


def run(cfg: Any, ctx: RunContext) -> dict[str, Any]:
    from posttrain.analysis.gates import cluster_info, item_ids_sha256
    from posttrain.analysis.registration import job_registration_sha256
    from posttrain.generation.prompts import stop_strings
    from posttrain.scorers.diagnostics import length_bias

    bench, fmt = ctx.plan.state["bench"], ctx.plan.state["format"]
    loaded, backend = _open_backend(cfg, ctx, fmt)
    write_json(ctx.run_dir / "provenance.json", loaded.provenance)
    allow = bool(cfg.model.allow_chat_template_on_base)

    if cfg.stage.sentinel and not (ctx.run_dir / "sentinel.json").exists():
        from posttrain.generation.sentinel import run_sentinel

        formats = list(cfg.stage.sentinel_formats) + (["chat_template"] if cfg.model.kind == "instruct" else [])
        sentinel = run_sentinel(backend, formats, cfg.prompt, kind=cfg.model.kind, tokenizer=loaded.tokenizer,
                                max_new_tokens=min(cfg.generation.max_new_tokens, 64),
                                allow_chat_template_on_base=allow)
        write_json(ctx.run_dir / "sentinel.json", sentinel | {"model": cfg.model.name})

    items_path = ctx.run_dir / "items.jsonl"
    # the exact items scored, for calibration exports and re-analysis (whole-file atomic write)
    write_jsonl(items_path, [it.to_dict() for it in bench.items])
    gen_path = ctx.run_dir / "generations.jsonl"
    fp = _fingerprint(cfg, fmt, loaded.provenance, bench)
    previous = read_jsonl(gen_path, repair=True)  # a torn last line from a kill is dropped here
    stale = [r["item_id"] for r in previous if r.get("fingerprint") != fp]
    if stale:
        raise PosttrainError(
            f"{gen_path} holds {len(stale)} generations made with other settings (model weights, prompt, "
            "generation or benchmark changed). Use a new hydra.run.dir, or delete the file to regenerate."
        )
    wanted = {it.id for it in bench.items}
    done = {r["item_id"] for r in previous if r["item_id"] in wanted}
    pending = [it for it in bench.items if it.id not in done]
    if done:
        log.info("resume: reusing %d finished conversations from %s; generating %d", len(done), gen_path, len(pending))
    stats = generate_conversations(
        pending, backend, fmt=fmt, prompt_cfg=cfg.prompt, gen_cfg=cfg.generation, kind=cfg.model.kind,
        tokenizer=loaded.tokenizer, model_name=cfg.model.name, allow_chat_template_on_base=allow,
        fingerprint=fp, on_done=lambda rows: append_jsonl(gen_path, rows),
    )
    ctx.tracker.log({"generation/tokens_per_second": stats["tokens_per_second"],
                     "generation/n_new_tokens": stats["n_new_tokens"]})
    by_id = {r["item_id"]: r for r in read_jsonl(gen_path)}
    rows = [by_id[it.id] for it in bench.items]

    scored = _score(cfg, bench.items, rows, ctx)
    scores = scored.pop("scores")
    metrics = summarise_scores(scores)
    metrics["length_bias"] = length_bias(scores)
    ctx.tracker.log({"success_rate": metrics["success_rate"], "n_pass": metrics["n_pass"],
                     "n_error": metrics["n_error"], "success_rate_ci95_low": metrics["ci95"][0],
                     "success_rate_ci95_high": metrics["ci95"][1]}
                    | {f"success_rate/{c}": v["success_rate"] for c, v in metrics["per_category"].items()})
    from posttrain.tracking.tracker import log_eval_records

    log_eval_records(ctx.tracker, ctx.run_dir)  # transcript table + scores artifact, read from the records
    return {
        **metrics, **scored,
        "benchmark_info": {"name": bench.name, "split": bench.split, "n": len(bench.items), "sha256": bench.sha256,
                           "version": bench.version, "source_path": str(bench.source_path),
                           # the gate checks each run holds exactly these items (gates.scores_from_records)
                           "limit": cfg.benchmark.limit, "item_ids_sha256": item_ids_sha256([it.id for it in bench.items]),
                           # the cluster (template) assignment is evidence too: the gate checks it against items.jsonl
                           **cluster_info([it.to_dict() for it in bench.items])},
        # the sweep's sealed registration (primary.json) this job ran under; the report decides only with it
        "registration_sha256": job_registration_sha256(ctx.run_dir),
        "prompt_format": fmt,
        "generation": {"reused": len(done), "generated": len(pending), **stats,
                       "batch_size": cfg.generation.batch_size, "max_new_tokens": cfg.generation.max_new_tokens,
                       # the kernel and thread count the replies were decoded with (generation/backends.py)
                       "linear_kernel": getattr(backend, "linear_kernel", None),
                       "threads": getattr(backend, "threads", None)},
        # what a pair's two arms must share (decoding) and what tells them apart (model identity)
        "decoding": decoding_record(cfg.generation, stop_strings(fmt, cfg.prompt)),
        "model_identity": model_identity(loaded.provenance),
        "truncation": truncation_record(rows),
        "provenance": read_json(ctx.run_dir / "provenance.json"),
    }
