"""One job: validate, plan, check the budget, run the stage inside one W&B run, record the spend.

``posttrain.cli`` is the entrypoint (Hydra and the command line); this module is what a job does
once its config is composed. Heavy libraries load only inside :func:`run_job`, when a stage runs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posttrain.config import ConfigError, validate

log = logging.getLogger("posttrain")


def _sweep_info() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    is_multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return {
        "multirun": is_multirun,
        "job_num": hc.job.get("num") if is_multirun else None,  # type: ignore[attr-defined]
        "sweep_dir": str(Path(hc.sweep.dir).resolve()) if is_multirun else None,
        "output_dir": hc.runtime.output_dir,
        "overrides": list(hc.overrides.task),
    }


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Validate, plan, check the budget, then run the stage inside one W&B run. Returns the summary."""
    from posttrain.paths import cache_dir, ledger_path
    from posttrain.records import RunLock, write_json
    from posttrain.stages import RunContext, stage_module
    from posttrain.tracking.budget import Ledger, Spend, gpu_cost
    from posttrain.tracking.tracker import Tracker

    validate(cfg)
    sweep = _sweep_info()
    run_dir = Path(sweep["output_dir"])
    if int(os.environ.get("RANK", "0")) != 0:
        return _run_secondary_rank(cfg, run_dir, sweep)
    with RunLock(run_dir):
        module = stage_module(cfg.stage.name)
        plan = module.plan(cfg)  # every check that needs no weights or API calls
        ledger = Ledger(ledger_path(cfg.budget.ledger_path), cfg.budget.cap_usd)
        if cfg.budget.enforce:
            ledger.check(plan.estimate_usd, what=f"stage={cfg.stage.name} model={cfg.model.name}")
        for note in plan.notes:
            log.info(note)
        from posttrain.callbacks import sweep_group

        # A sweep's jobs and its comparison run share one group; a single run uses tracking.group.
        group = sweep_group(sweep["sweep_dir"]) if sweep["sweep_dir"] else cfg.tracking.group
        tracker = Tracker(
            run_dir, mode=cfg.tracking.mode, project=cfg.tracking.project, entity=cfg.tracking.entity,
            name=run_dir.name, group=group, job_type=cfg.stage.name,
            tags=[f"model:{cfg.model.name}", f"benchmark:{cfg.benchmark.name}", f"scorer:{cfg.scorer.name}"],
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        )
        ctx = RunContext(run_dir=run_dir, cache_dir=cache_dir(cfg.cache_dir), tracker=tracker, plan=plan,
                         sweep=sweep)
        t0 = time.time()
        metrics: dict[str, Any] = {}
        status = "failed"
        with tracker:
            try:
                metrics = module.run(cfg, ctx)
                status = "finished"
            finally:
                # Spend is recorded even when the run dies: GPU time was used either way.
                wall = time.time() - t0
                gpu_hours, gpu_usd = gpu_cost(wall, cfg.model.num_gpus, cfg.model.gpu_price_per_hour)
                ledger.record(Spend(str(run_dir), cfg.stage.name, cfg.model.name, cfg.model.gpu_type,
                                    gpu_hours, gpu_usd, ctx.api_usd, note=status))
                # budget/* metrics: this run and the cumulative ledger; an ungated training run says so
                # in this row too, like in every other record it writes
                override = bool(cfg.stage.get("override_gate", False))
                tracker.log_budget(ledger, run_dir, extra={"gate_override": True} if override else None)
                summary = {
                    "status": status,
                    "model": cfg.model.name, "model_kind": cfg.model.kind, "stage": cfg.stage.name,
                    "benchmark": cfg.benchmark.name, "scorer": cfg.scorer.name,
                    "judge": cfg.judge.name if cfg.scorer.name == "llm" else None,
                    "seed": cfg.seed, "wall_seconds": round(wall, 3),
                    "gpu_hours": gpu_hours, "gpu_usd": gpu_usd, "api_usd": ctx.api_usd,
                    "cost_usd": gpu_usd + ctx.api_usd, "estimated_cost_usd": plan.estimate_usd,
                    "budget_cap_usd": ledger.cap_usd, "budget_spent_usd": ledger.spent_usd(),
                    "budget_remaining_usd": ledger.remaining_usd(),
                    "sweep": sweep, **metrics,
                }
                write_json(run_dir / "summary.json", summary)
                tracker.summary({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
    log.info("summary: %s", run_dir / "summary.json")
    return summary


def _run_secondary_rank(cfg: DictConfig, run_dir: Path, sweep: dict[str, Any]) -> dict[str, Any]:
    """A rank > 0 of a multi-process training launch: computes, writes no records.

    Rank 0 alone locks the run folder and writes the records, the ledger and the W&B run. This rank
    writes its own files into a scratch folder that is removed afterwards, and shares the run
    folder with rank 0 only for the training data (rank 0 prepares it first) and the checkpoints.
    """
    import shutil
    import tempfile

    from posttrain.paths import cache_dir
    from posttrain.stages import RunContext, stage_module
    from posttrain.tracking.tracker import Tracker

    module = stage_module(cfg.stage.name)
    plan = module.plan(cfg)
    scratch = Path(tempfile.mkdtemp(prefix=f"posttrain-rank{os.environ.get('RANK')}-"))
    try:
        quiet = Tracker(scratch, mode="disabled", project="", entity=None, name="", group=None, job_type="",
                        tags=[], config={})
        module.run(cfg, RunContext(run_dir=scratch, cache_dir=cache_dir(cfg.cache_dir), tracker=quiet, plan=plan,
                                   sweep=sweep, train_dir=run_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to change: printed without a traceback, exit status 2."""
    from posttrain.errors import PosttrainError
    from posttrain.judges import JudgeConfigError
    from posttrain.records import RunFolderLocked
    from posttrain.tracking.budget import BudgetExceeded

    return (ConfigError, PosttrainError, BudgetExceeded, RunFolderLocked, JudgeConfigError)
