"""Weights & Biases tracking, with the run folder as the record of truth.

Offline by default, so a run never waits for a login; ``tracking.mode=online`` syncs live and
``disabled`` turns W&B off. Everything logged here is also appended to ``metrics.jsonl`` in the
run folder, so no result depends on W&B: if W&B fails to start, the run warns and goes on.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from posttrain.records import append_jsonl, write_json

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)$", re.IGNORECASE)


def scrub(obj: Any) -> Any:
    """Drop values under secret-looking keys (config never holds keys, but users can add any)."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


class Tracker:
    """One W&B run per job. Use as a context manager; ``finish`` is always called."""

    def __init__(
        self,
        run_dir: Path,
        *,
        mode: str,
        project: str,
        entity: str | None,
        name: str,
        group: str | None,
        job_type: str,
        tags: list[str],
        config: dict[str, Any],
    ) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._run: Any = None
        self._kwargs = dict(
            mode=mode, project=project, entity=entity, name=name, group=group, job_type=job_type,
            tags=tags, config=scrub(config),
        )
        self.wandb_error: str | None = None

    def __enter__(self) -> Tracker:
        kw = self._kwargs
        if kw["mode"] == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
            return self
        try:
            import wandb

            self._run = wandb.init(
                dir=str(self.run_dir), mode=kw["mode"], project=kw["project"], entity=kw["entity"],
                name=kw["name"], group=kw["group"], job_type=kw["job_type"], tags=kw["tags"],
                config=kw["config"], reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        except Exception as exc:  # W&B must never take a run down: the records are complete without it
            self.wandb_error = f"{type(exc).__name__}: {exc}"
            log.warning("W&B unavailable (%s); continuing with records only", self.wandb_error)
            self._run = None
        return self

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = dict(metrics) | ({"_step": step} if step is not None else {})
        append_jsonl(self.metrics_path, [row])
        if self._run is not None:
            try:
                self._run.log(metrics, step=step)
            except Exception as exc:
                log.warning("W&B log failed (%s); the record in metrics.jsonl is complete", exc)

    def summary(self, values: dict[str, Any]) -> None:
        if self._run is not None:
            try:
                for k, v in values.items():
                    if isinstance(v, (int, float, str, bool)) or v is None:
                        self._run.summary[k] = v
            except Exception as exc:
                log.warning("W&B summary failed (%s)", exc)

    def log_files(self, paths: list[Path], name: str, kind: str = "result") -> None:
        """Attach files (tables, plots) to the W&B run as an artifact; they already sit in the run folder."""
        if self._run is None or not paths:
            return
        try:
            import wandb

            art = wandb.Artifact(name=re.sub(r"[^A-Za-z0-9_.-]", "-", name), type=kind)
            for p in paths:
                art.add_file(str(p))
            self._run.log_artifact(art)
        except Exception as exc:
            log.warning("W&B artifact failed (%s)", exc)

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else str(self._run.id)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._run is not None:
            try:
                self._run.finish(exit_code=0 if exc_type is None else 1)
            except Exception as e:  # pragma: no cover - defensive
                log.warning("W&B finish failed (%s)", e)
        write_json(self.run_dir / "tracking.json", {"wandb_run_id": self.run_id, "wandb_error": self.wandb_error,
                                                    "mode": self._kwargs["mode"]})
