"""Reading a sweep folder: its job folders' records, the jobs it meant to run, and its registration.

Shared by every reader of a finished sweep (``posttrain-report``'s comparison, the capability atlas,
the review page, the sweep callbacks), so that none of them needs another's module: records in,
:class:`~posttrain.analysis.comparison.SweepRecords` out, no model loaded and no API called.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.analysis.comparison import PRIMARY_FILE, JobRecords, SweepRecords, thresholds_from
from posttrain.analysis.gates import GateThresholds
from posttrain.errors import PosttrainError
from posttrain.records import read_json, read_jsonl


class ReportError(PosttrainError):
    """The folder is not a sweep folder, or holds nothing to compare."""


def _job_key(d: Path) -> tuple[int, str]:
    head = d.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, d.name)


def sweep_jobs(params: dict[str, Any], task: Sequence[str]) -> list[list[str]]:
    """Each job's overrides, in job-number order, as Hydra's basic sweeper expands them.

    ``hydra.sweeper.params`` first, then the command-line overrides; the last value of a key wins;
    jobs come in the cartesian-product order of the keys.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in task]
    final: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        final[key] = [f"{key}={v}" for v in values]
    return [list(combo) for combo in itertools.product(*final.values())]


def expected_jobs(multirun_yaml: str | Path) -> list[list[str]] | None:
    """The jobs a sweep meant to run, from the ``multirun.yaml`` Hydra saves; None when it cannot tell."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(multirun_yaml)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False) or {}
        task = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False) or []
        return sweep_jobs(params, task)  # type: ignore[arg-type]
    except Exception:  # an unusual sweeper or a hand-made folder: report what is there
        return None


def load_sweep(sweep_dir: str | Path) -> SweepRecords:
    """Read a sweep folder's job folders; jobs that cannot be compared go to ``missing`` with the reason."""
    sweep = Path(sweep_dir).expanduser().resolve()
    if not sweep.is_dir():
        raise ReportError(f"{sweep} is not a folder; pass a sweep folder such as multirun/<date>/<time>")
    folders = sorted((d for d in sweep.iterdir() if d.is_dir() and ((d / "summary.json").is_file()
                                                                     or (d / ".hydra").is_dir())), key=_job_key)
    jobs: list[JobRecords] = []
    missing: list[dict[str, Any]] = []
    for d in folders:
        if not (d / "summary.json").is_file():
            missing.append({"job": d.name, "status": "no_summary",
                            "reason": f"no summary.json: the job failed or is still running (see {d.name}/*.log)"})
            continue
        summary = read_json(d / "summary.json")
        if summary.get("status", "finished") != "finished":
            missing.append({"job": d.name, "status": "failed", "reason": f"the job ended with status={summary.get('status')}"})
        elif not (d / "scores.jsonl").is_file():
            missing.append({"job": d.name, "status": "not_eval",
                            "reason": f"no scores.jsonl (stage={summary.get('stage')}): not an eval job"})
        else:
            sentinel = read_json(d / "sentinel.json") if (d / "sentinel.json").is_file() else None
            items = read_jsonl(d / "items.jsonl") if (d / "items.jsonl").is_file() else None
            jobs.append(JobRecords(d.name, summary, read_jsonl(d / "scores.jsonl"), sentinel, items))
    expected = expected_jobs(sweep / "multirun.yaml") if (sweep / "multirun.yaml").is_file() else None
    for num, overrides in enumerate(expected or []):
        if not any(d.name == str(num) or d.name.startswith(f"{num}_") for d in folders):
            missing.append({"job": str(num), "status": "never_started", "overrides": overrides,
                            "reason": "never started: the sweep stopped before this job"})
    thresholds = GateThresholds()
    config = next((d / ".hydra" / "config.yaml" for d in folders if (d / ".hydra" / "config.yaml").is_file()), None)
    if config is not None:
        from omegaconf import OmegaConf

        gate = OmegaConf.select(OmegaConf.load(config), "gate")
        try:  # shown only when nothing was registered; the registered thresholds decide
            thresholds = thresholds_from(gate) if gate is not None else thresholds
        except ValueError:
            thresholds = GateThresholds()
    registration = _read_registration(sweep / PRIMARY_FILE)
    primary = registration.get("primary") if registration is not None else None
    return SweepRecords(str(sweep), jobs, missing, thresholds, primary, registration)


def _read_registration(path: Path) -> dict[str, Any] | None:
    """primary.json as written before the runs; None when missing or unreadable (then nothing is registered)."""
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
