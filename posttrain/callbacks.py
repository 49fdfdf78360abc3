"""Hydra callbacks: the sweep's comparison when a multirun ends, and a preflight for adapter sweeps.

``ComparisonCallback`` is registered in ``conf/config.yaml`` (``hydra.callbacks.comparison``).
When a multirun ends it compares the jobs that wrote summaries (:func:`posttrain.analysis.report.write_comparison`)
into the sweep folder and logs the files to W&B as one ``comparison`` run in the sweep's group.
Nothing it does can fail the sweep: a problem is logged and the jobs' records stay as they are.

Hydra's basic sweeper re-raises a failed job's exception after the batch, so ``on_multirun_end``
never runs in that case; the callback therefore also rewrites the comparison after every job from
the first failure on (files only, no W&B run), listing the failed and never-started jobs.

``GpuLauncherPreflight`` (registered in ``conf/config.yaml``) stops a sweep before anything is
submitted when a SLURM launcher requests no GPU for a model that needs one: the plugin's bare
``hydra/launcher=submitit_slurm`` requests none, and each job would queue, start and then fail in the
loader. ``AdapterPreflight`` is added by the ``four_model`` experiments: before any job starts it checks
that every swept adapter variant has an adapter, and otherwise names the training run to do first.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("posttrain.analysis.comparison")

ADAPTER_ENV = {"sft": "POSTTRAIN_SFT_ADAPTER", "dpo": "POSTTRAIN_DPO_ADAPTER", "dpo_only": "POSTTRAIN_DPO_ONLY_ADAPTER"}


def _sweep_dir(config: Any) -> Path:
    return Path(str(config.hydra.sweep.dir)).expanduser().resolve()


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's runs: ``<date>_<time>`` of ``multirun/<date>/<time>`` (as cli.py names it)."""
    p = Path(sweep_dir).resolve()
    return f"{p.parent.name}_{p.name}"


def _scalars(comparison: dict[str, Any]) -> dict[str, Any]:
    """Flat W&B summary values: the gate, each model's rate, each pair's p-values and h."""
    out: dict[str, Any] = {"gate/verdict": comparison["gate"]["verdict"], "gate/kind": comparison["gate"].get("kind"),
                           "gate/registered": comparison["gate"].get("registered"),
                           "gate/attempt": max((a["attempt"] for a in comparison.get("attempts") or []), default=None),
                           "n_models": len(comparison["models"]),
                           "n_missing_jobs": len(comparison["missing_jobs"])}
    for m in comparison["models"]:
        out |= {f"success_rate/{m['model']}": m["success_rate"], f"n_error/{m['model']}": m["n_error"]}
    for p in comparison["pairs"]:
        key = f"{p['a']}_vs_{p['b']}"
        out |= {f"mcnemar_p/{key}": p["mcnemar_p"], f"p_holm/{key}": p["p_holm"], f"cohens_h/{key}": p["cohens_h"],
                f"cluster_p/{key}": p.get("cluster_p")}
    return out


def log_comparison(comparison: dict[str, Any], sweep_dir: Path, tracking: Any) -> str | None:
    """Log the comparison files to W&B as one ``comparison`` run in the sweep's group; returns its id."""
    from posttrain.tracking.tracker import Tracker

    group = sweep_group(sweep_dir)
    files = [sweep_dir / "comparison.json", sweep_dir / "comparison.md",
             *(sweep_dir / p for p in comparison.get("files", {}).get("plots", []))]
    tracker = Tracker(
        sweep_dir, mode=str(tracking.mode), project=str(tracking.project), entity=tracking.entity,
        name=f"comparison_{group}", group=group, job_type="comparison",
        tags=["comparison", *(f"model:{m['model']}" for m in comparison["models"])],
        config={"sweep_dir": str(sweep_dir), "models": [m["model"] for m in comparison["models"]],
                "thresholds": comparison["thresholds"], "missing_jobs": comparison["missing_jobs"]},
    )
    with tracker:
        from posttrain.tracking.tracker import log_comparison_records

        log_comparison_records(tracker, comparison, sweep_dir)  # inputs (lineage), tables, the sweep's spend
        tracker.summary(_scalars(comparison))
        tracker.log_files([f for f in files if f.is_file()], name=f"comparison-{group}", kind="comparison")
    return tracker.run_id


def write_primary(config: Any, sweep: Path, *, models: list[str] | None = None) -> Path:
    """Seal the sweep's registration in ``<sweep>/primary.json`` (:mod:`posttrain.analysis.registration`).

    It holds the primary pair(s) with their gate kind, the secondary family, every threshold and the
    benchmark's identity. Called as each job of the multirun starts, before its task runs; the first
    job writes it, so the analysis that decides the gate is fixed before any result exists, and only
    after every ``on_multirun_start`` preflight has let the sweep go (a refused sweep leaves no
    folder). Each eval job records its sha256 in ``summary.json``; the report decides only with it
    (docs/comparisons.md). An existing file is kept (a resumed sweep must not re-register after
    seeing results).
    """
    from omegaconf import OmegaConf

    from posttrain.analysis.comparison import PRIMARY_FILE, primary_pairs, secondary_pairs, thresholds_from
    from posttrain.analysis.registration import registration_record
    from posttrain.records import write_json

    path = sweep / PRIMARY_FILE
    if path.is_file():
        return path
    gate = OmegaConf.select(config, "gate")
    if OmegaConf.select(config, "atlas") is not None:  # the capability atlas: one gap pair per capability, Holm
        # Only the atlas callback registers it, when the multirun starts (a job's config names its model alone)
        return _write_atlas_primary(config, sweep, path, models) if models is not None else path
    try:
        record = registration_record(
            primary_pairs(gate) if gate is not None else [], thresholds_from(gate if gate is not None else {}),
            secondary=secondary_pairs(gate) if gate is not None else [], benchmark=benchmark_identity(config),
            gate=OmegaConf.to_container(gate, resolve=True) if gate is not None else None)
    except ValueError as exc:  # the job's own config check refuses it, naming the setting; register nothing
        log.warning("registration not written: %s", exc)
        return path
    sweep.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def _write_atlas_primary(config: Any, sweep: Path, path: Path, models: list[str]) -> Path:
    """primary.json of an atlas sweep (:func:`posttrain.analysis.atlas.atlas_registration`); ``models``: the
    sweep's models, read when the multirun starts (each job's config names its own model only)."""
    from omegaconf import OmegaConf

    from posttrain.analysis.atlas import atlas_registration
    from posttrain.analysis.comparison import thresholds_from
    from posttrain.config import ConfigError, load_group_option
    from posttrain.records import write_json

    kinds: dict[str, str] = {}
    for name in models:
        try:
            kinds[name] = str(load_group_option("model", name).kind)
        except ConfigError:  # a model from --config-dir: the current job's own kind when it is this one
            if name == str(config.model.name):
                kinds[name] = str(config.model.kind)
    atlas = {str(k): v for k, v in (OmegaConf.to_container(config.atlas, resolve=False) or {}).items()}  # type: ignore[union-attr]
    paths = {str(c): None for c in atlas.get("capabilities") or []}
    try:
        record = atlas_registration(atlas, models=models, kinds=kinds, thresholds=thresholds_from(config.gate),
                                    gate=OmegaConf.to_container(config.gate, resolve=True), paths=paths)
    except (ValueError, OSError) as exc:  # the atlas says what is wrong; nothing registered, so nothing can PASS
        log.warning("atlas registration not written: %s", exc)
        return path
    sweep.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def benchmark_identity(config: Any) -> dict[str, Any] | None:
    """The benchmark the sweep registers: name, split, limit, and, when its file can be read now, the
    file's sha256, n and the hashes of the item ids and of their cluster (template) assignment."""
    from omegaconf import OmegaConf

    b = OmegaConf.select(config, "benchmark")
    if b is None:
        return None
    out: dict[str, Any] = {"name": b.get("name"), "split": b.get("split"), "limit": b.get("limit")}
    try:
        from posttrain.analysis.gates import cluster_info, item_ids_sha256
        from posttrain.benchmarks import load_benchmark

        bench = load_benchmark(str(b.name), split=b.get("split"), limit=b.get("limit"), path=b.get("path"))
        items = [it.to_dict() for it in bench.items]
        out |= {"sha256": bench.sha256, "n": len(items), "item_ids_sha256": item_ids_sha256([str(i["id"]) for i in items]),
                "clusters_sha256": cluster_info(items)["clusters_sha256"]}
    except Exception as exc:  # the job itself reports an unreadable benchmark; register what is known
        log.warning("registration: benchmark %s not read now (%s); registering its name, split and limit only",
                    b.get("name"), exc)
    return out


class ComparisonCallback(Callback):
    """Writes comparison.json / comparison.md / plots into the sweep folder when a multirun ends.

    Args:
        enabled: set ``hydra.callbacks.comparison.enabled=false`` to skip the comparison.
        plots: write the PNG plots.
        wandb: log the comparison run to W&B (mode from ``tracking.mode``).
    """

    def __init__(self, enabled: bool = True, plots: bool = True, wandb: bool = True) -> None:
        self.enabled, self.plots, self.wandb = enabled, plots, wandb
        self._sweep: Path | None = None
        self._failed: list[str] = []

    def _write(self, config: Any) -> dict[str, Any] | None:
        from posttrain.analysis.comparison import thresholds_from
        from posttrain.analysis.report import load_sweep, write_comparison

        sweep = self._sweep or _sweep_dir(config)
        try:
            records = load_sweep(sweep)
            if not records.jobs and all(m.get("status") == "not_eval" for m in records.missing):
                log.info("no eval jobs in %s: nothing to compare", sweep)  # e.g. a sweep of training runs
                return None
            return write_comparison(sweep, plots=self.plots, thresholds=thresholds_from(config.gate))
        except Exception as exc:  # the comparison must never take the sweep down
            log.warning("comparison of %s not written (%s: %s); rebuild it with `posttrain-report %s`",
                        sweep, type(exc).__name__, exc, sweep)
            return None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._sweep = _sweep_dir(config)
        self._failed = []

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        # Hydra runs the on_multirun_start callbacks in config order and the experiments' preflights
        # come after this one, so registering here (before the job's task) never writes into a sweep
        # that a preflight is about to refuse.
        from omegaconf import OmegaConf

        if OmegaConf.select(config, "hydra.mode") is not None and str(config.hydra.mode) == "RunMode.MULTIRUN":
            write_primary(config, _sweep_dir(config))

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if not self.enabled or self._sweep is None:  # a single run (no on_multirun_start): nothing to compare
            return
        if job_return.status == JobStatus.FAILED:
            self._failed.append(str(config.hydra.job.get("num")))
        if self._failed:  # on_multirun_end will not run: keep a comparison of what finished
            if self._write(config) is not None:
                log.warning("job(s) %s failed; wrote a partial comparison to %s", ", ".join(self._failed),
                            self._sweep or _sweep_dir(config))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep = self._sweep or _sweep_dir(config)
        comparison = self._write(config)
        if comparison is None:
            return
        for m in comparison["missing_jobs"]:
            log.warning("not compared: job %s: %s", m["job"], m["reason"])
        log.info("comparison: %s (gate %s)", sweep / "comparison.md", comparison["gate"]["verdict"])
        if self.wandb:
            try:
                log_comparison(comparison, sweep, config.tracking)
            except Exception as exc:
                log.warning("W&B comparison run failed (%s); the files in %s are complete", exc, sweep)


class AtlasCallback(Callback):
    """The capability atlas at the end of the sweep: atlas.json, atlas.md, the heatmap and one W&B run.

    Added by ``+experiment=atlas*`` (which switches the comparison callback off: the atlas's jobs
    span several benchmarks, which one comparison cannot pair). Registration (primary.json) happens
    when the multirun starts, before any job is launched. Like the comparison, it never fails the sweep; after
    a failed job it rewrites the files after every job (files only), since ``on_multirun_end`` will not run.
    """

    def __init__(self, enabled: bool = True, plots: bool = True, wandb: bool = True) -> None:
        self.enabled, self.plots, self.wandb = enabled, plots, wandb
        self._sweep: Path | None = None
        self._failed: list[str] = []

    def _write(self, config: Any) -> dict[str, Any] | None:
        from posttrain.analysis.atlas import write_atlas

        sweep = self._sweep or _sweep_dir(config)
        try:
            return write_atlas(sweep, plots=self.plots)
        except Exception as exc:  # the atlas must never take the sweep down
            log.warning("atlas of %s not written (%s: %s)", sweep, type(exc).__name__, exc)
            return None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        # Registered here, before any job is launched: only now does the config hold the whole sweep (a job's
        # config names its own model alone), and a launcher's workers (joblib, SLURM) never see this object.
        # This callback comes after conf/config.yaml's preflights, so a refused sweep registers nothing. An
        # existing primary.json is kept: a resumed sweep cannot re-register after seeing results.
        self._sweep, self._failed = _sweep_dir(config), []
        write_primary(config, self._sweep, models=swept_variants(config, "model") or [str(config.model.name)])

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if not self.enabled or self._sweep is None:
            return
        if job_return.status == JobStatus.FAILED:
            self._failed.append(str(config.hydra.job.get("num")))
        if self._failed:
            self._write(config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep = self._sweep or _sweep_dir(config)
        atlas = self._write(config)
        if atlas is None:
            return
        log.info("atlas: %s (%s)", sweep / "atlas.md", ", ".join(f"{r['capability']} {r['verdict']}" for r in atlas["rows"]))
        if self.wandb:
            try:
                log_atlas(atlas, sweep, config.tracking)
            except Exception as exc:
                log.warning("W&B atlas run failed (%s); the files in %s are complete", exc, sweep)


def log_atlas(atlas: dict[str, Any], sweep_dir: Path, tracking: Any) -> str | None:
    """Log the atlas as one ``atlas`` run in the sweep's group: its two tables, verdicts and files."""
    from posttrain.analysis.atlas import atlas_tables
    from posttrain.tracking.tracker import Tracker

    group = sweep_group(sweep_dir)
    tracker = Tracker(sweep_dir, mode=str(tracking.mode), project=str(tracking.project), entity=tracking.entity,
                      name=f"atlas_{group}", group=group, job_type="atlas", tags=["atlas"],
                      config={"sweep_dir": str(sweep_dir), **atlas["atlas"]})
    with tracker:
        for key, (columns, rows) in atlas_tables(atlas).items():
            tracker.log_table(key, columns, rows)
        tracker.summary({"atlas/registered": atlas["registered"],
                         **{f"atlas/verdict/{r['capability']}": r["verdict"] for r in atlas["rows"]},
                         **{f"atlas/diff/{r['capability']}": r.get("diff") for r in atlas["rows"]}})
        files = [sweep_dir / "atlas.json", sweep_dir / "atlas.md", *(sweep_dir / p for p in atlas["files"]["plots"])]
        tracker.log_files([f for f in files if f.is_file()], name=f"atlas-{group}", kind="atlas")
    return tracker.run_id


def swept_variants(config: Any, key: str = "experiment/variant") -> list[str]:
    """The values of ``key`` (a config group, with or without ``+``) across the sweep's jobs."""
    from omegaconf import OmegaConf

    from posttrain.analysis.sweep import sweep_jobs

    params = OmegaConf.to_container(config.hydra.sweeper.params, resolve=False) or {}
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False) or []
    values: list[str] = []
    for job in sweep_jobs(params, task):  # type: ignore[arg-type]
        for o in job:
            name, _, value = o.partition("=")
            if name.lstrip("+~") == key and value not in values:
                values.append(value)
    return values


def adapter_problem(variant: str, path: str | None, base_model: str) -> str | None:
    """Why ``path`` cannot serve as the ``variant`` adapter (None when it can)."""
    todo = (f"run `posttrain stage={variant} model={base_model}` first, then pass its run folder as "
            f"+adapters.{variant}=<run_dir> (or export {ADAPTER_ENV.get(variant, 'the path')}=<run_dir>)")
    if not path:
        return f"{variant}: no adapter given: {todo}"
    p = Path(str(path)).expanduser()
    if not ((p / "adapter" / "adapter_model.safetensors").is_file() or (p / "adapter_model.safetensors").is_file()):
        return f"{variant}: {p} holds no adapter/adapter_model.safetensors: {todo}"
    return None


class AdapterPreflight(Callback):
    """Stops an adapter sweep before any job runs when a swept variant has no adapter.

    Args:
        base_model: the base model the adapters were trained on (named in the message).
        adapters: variant -> adapter run folder (or adapter folder); None when not given.
        variant_key: the config group swept over the variants.
    """

    def __init__(self, base_model: str, adapters: dict[str, str | None],
                 variant_key: str = "experiment/variant") -> None:
        self.base_model, self.adapters, self.variant_key = base_model, dict(adapters), variant_key

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        variants = [v for v in swept_variants(config, self.variant_key) if v != "base"]
        problems = [p for v in variants if (p := adapter_problem(v, self.adapters.get(v), self.base_model))]
        if problems:
            print("posttrain: error: this sweep evaluates adapters that do not exist yet (nothing was run):\n  - "
                  + "\n  - ".join(problems), file=sys.stderr)
            sys.exit(2)


_GPU_KEYS = ("gpus_per_node", "gpus_per_task", "gres")


def launcher_gpu_problem(config: Any) -> str | None:
    """Why this sweep's launcher cannot run its models, or None.

    A SLURM launcher (``_target_`` ending in ``SlurmLauncher``) with none of ``gpus_per_node``,
    ``gpus_per_task``, ``gres`` set, sweeping a model with ``requires_gpu``, is a problem; every other
    launcher and every CPU-only sweep (the tiny models) passes.
    """
    from omegaconf import OmegaConf

    from posttrain.config import ConfigError, load_group_option

    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=False) or {}
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):  # type: ignore[union-attr]
        return None
    if any(launcher.get(k) for k in _GPU_KEYS):  # type: ignore[union-attr]
        return None
    models = swept_variants(config, "model") or [str(config.model.name)]
    needy = []
    for name in models:
        try:
            needs = bool(load_group_option("model", name).requires_gpu)
        except ConfigError:  # an unknown model fails in its job with the list of options
            needs = False
        if needs:
            needy.append(name)
    if not needy:
        return None
    return (f"hydra.launcher requests no GPU (none of {', '.join(_GPU_KEYS)} is set) but {', '.join(needy)} "
            "need a CUDA GPU, so every job would queue, start and fail in the loader. Use hydra/launcher=slurm "
            "(1 GPU per job, docs/scaling.md) or add hydra.launcher.gpus_per_node=1. Nothing was submitted.")


class GpuLauncherPreflight(Callback):
    """Refuses a SLURM sweep that requests no GPU for models that need one (see launcher_gpu_problem)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        problem = launcher_gpu_problem(config)
        if problem:
            print(f"posttrain: error: {problem}", file=sys.stderr)
            sys.exit(2)
