"""Weights & Biases tracking, with the run folder as the record of truth.

Offline by default, so a run never waits for a login; ``tracking.mode=online`` syncs live and
``disabled`` turns W&B off. Every metric logged here is also appended to ``metrics.jsonl`` in the
run folder (tables and the ledger series as a note of their size / this run's point: their rows are
records already), so no result depends on W&B: if W&B fails to start, the run warns and goes on.

What reaches W&B besides the metrics is built FROM the records on disk, never recomputed: the
transcript table of an eval job (items.jsonl + generations.jsonl + scores.jsonl + spot_check.json),
the ledger's spend as a cumulative series, and the sweep comparison's tables, whose run uses the
jobs' scores artifacts as inputs (lineage). The metric names are one vocabulary for every stage and
model (``METRIC_AXES``); ``posttrain-dashboard`` (posttrain/dashboard.py) builds its panels on them,
and docs/tracking.md lists what is logged where.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from posttrain.records import append_jsonl, read_json, read_jsonl, write_json

log = logging.getLogger(__name__)

# Step axes (``wandb.define_metric``): namespace glob -> the metric that is its x axis. The trainer
# rows carry ``train/global_step`` (SFT and DPO alike, so their losses share one axis); the budget
# rows carry ``budget/entry``, the ledger row number, so every run of a project draws the same
# cumulative-spend line. Other names (eval's success_rate, step0/*, final/*) are one point per run.
METRIC_AXES: dict[str, str] = {"train/*": "train/global_step", "budget/*": "budget/entry"}
TRANSCRIPTS_KEY = "eval/transcripts"  # the per-item table of an eval job
COMPARISON_TABLES = ("comparison/models", "comparison/pairs")  # the sweep comparison run's tables
ATLAS_TABLES = ("atlas/rows", "atlas/cells")  # the capability atlas run's tables (analysis/atlas.py)
TRANSCRIPT_COLUMNS = ["model", "item_id", "category", "template", "source", "conversation", "replies", "verdict",
                      "turn_verdicts", "checks", "rationale", "judge", "error", "spot_check_verdict",
                      "judges_agree"]

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
        try:
            for glob, axis in METRIC_AXES.items():
                self._run.define_metric(axis)
                self._run.define_metric(glob, step_metric=axis)
        except Exception as exc:
            log.warning("W&B define_metric failed (%s); panels fall back to the default step", exc)
        return self

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = dict(metrics) | ({"_step": step} if step is not None else {})
        append_jsonl(self.metrics_path, [row])
        if self._run is not None:
            try:
                # W&B's own step stays a row counter: it silently drops a row whose step is below the
                # counter (DPO's step-0 check comes after the negatives rows). The trainer rows carry
                # train/global_step, their x axis (METRIC_AXES); metrics.jsonl keeps ``_step``.
                self._run.log(metrics)
            except Exception as exc:
                log.warning("W&B log failed (%s); the record in metrics.jsonl is complete", exc)

    def _wandb_log(self, metrics: dict[str, Any]) -> None:
        """Log to W&B only: for rows that mirror another record (the ledger, a table of records)."""
        if self._run is not None:
            try:
                self._run.log(metrics)
            except Exception as exc:
                log.warning("W&B log failed (%s); the records on disk are complete", exc)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a W&B Table under ``key``; ``metrics.jsonl`` notes its size (the rows are records already)."""
        append_jsonl(self.metrics_path, [{f"{key}/n_rows": len(rows)}])
        if self._run is None:
            return
        try:
            import wandb

            cols: list[str | int] = list(columns)  # wandb's annotation
            self._wandb_log({key: wandb.Table(columns=cols, data=rows)})
        except Exception as exc:
            log.warning("W&B table %s failed (%s)", key, exc)

    def log_budget(self, ledger: Any, run_dir: Path, *, extra: dict[str, Any] | None = None) -> dict[str, float]:
        """The ledger as W&B metrics: this run's spend, and the cumulative series up to its row.

        Every run re-logs the series up to its own ledger row (``budget/entry`` 1..k), so the
        project's latest run draws the whole spend curve and earlier runs lie on it; the cap is
        logged on every point so a panel draws it as a flat line. ``extra`` goes into this run's
        metrics.jsonl row (e.g. ``gate_override``). Returns this run's values (empty when the
        ledger cannot be read: the ledger stays the record either way).
        """
        from posttrain.tracking.budget import run_spend, spend_series

        try:
            entries = ledger.entries()
        except Exception as exc:
            log.warning("budget metrics not logged: ledger %s unreadable (%s)", ledger.path, exc)
            return {}
        series = spend_series(entries, ledger.cap_usd)
        mine = [i for i, e in enumerate(entries) if e.get("run_dir") == str(run_dir)]
        if not mine:
            return {}
        upto = mine[-1]
        for row in series[:upto + 1]:
            self._wandb_log(row)
        values = run_spend(entries[upto]) | {k: v for k, v in series[upto].items() if k != "budget/entry"}
        # the series itself is the ledger; this run's point is here
        append_jsonl(self.metrics_path, [values | (extra or {})])
        self.summary(values)
        return values

    def log_artifact(self, paths: list[Path], name: str, kind: str, *, metadata: dict[str, Any] | None = None,
                     use: bool = False) -> None:
        """Log files as an artifact (``use=False``) or record them as this run's input (``use=True``).

        An input is rebuilt from the same files under the same name, so its digest equals the version
        the producing run logged and W&B links the two (lineage). ``run.use_artifact`` refuses offline
        runs; there the same record that online ``use_artifact`` sends for a new artifact (an
        artifact with ``use_after_commit``) goes into the offline run file and is applied by
        ``wandb sync``, which must therefore sync the producing runs first.
        """
        if self._run is None or not paths:
            return
        try:
            import wandb

            art = wandb.Artifact(name=artifact_name(name), type=kind, metadata=metadata)
            for p in paths:
                art.add_file(str(p))
            if not use:
                self._run.log_artifact(art)
            elif self._run.settings._offline:
                self._run._log_artifact(art, is_user_created=True, use_after_commit=True)
            else:
                self._run.use_artifact(art)
        except Exception as exc:
            log.warning("W&B artifact %s failed (%s)", name, exc)

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
        self.log_artifact(paths, name, kind)

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


def artifact_name(name: str) -> str:
    """A W&B artifact name: letters, digits, ``_.-`` only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def scores_artifact(run_dir: Path) -> tuple[str, list[Path]]:
    """The name and files of an eval job's scores artifact, derived from its run folder alone.

    Named after the folder's last three path parts (``multirun/DATE/TIME/N_MODEL`` ->
    ``scores-DATE_TIME_N_MODEL``), so that the job and the sweep's comparison run, which rebuilds
    it from the same files as its input, arrive at the same name without talking to each other.
    """
    run_dir = Path(run_dir).resolve()
    name = "scores-" + "_".join(p for p in (run_dir.parent.parent.name, run_dir.parent.name, run_dir.name) if p)
    files = [run_dir / f for f in ("items.jsonl", "generations.jsonl", "scores.jsonl", "spot_check.json")]
    return artifact_name(name), [f for f in files if f.is_file()]


def _conversation(turns: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"USER: {t.get('user', '')}\n\nASSISTANT: {t.get('reply', '')}" for t in turns)


def transcript_rows(run_dir: Path) -> list[list[Any]]:
    """One row per scored item (``TRANSCRIPT_COLUMNS``), joined by item id from the eval's records.

    Nested values (replies, per-turn verdicts, checks) are JSON strings, so the table stays
    filterable as text; the spot-check columns are empty for items the second judge did not see.
    """
    import json

    run_dir = Path(run_dir)
    items = {r["id"]: r for r in read_jsonl(run_dir / "items.jsonl")}
    gens = {r["item_id"]: r for r in read_jsonl(run_dir / "generations.jsonl")}
    spot_path = run_dir / "spot_check.json"
    spot = {(s["model"], s["item_id"]): s for s in (read_json(spot_path).get("items", []) if spot_path.is_file()
                                                    else [])}
    rows = []
    for s in read_jsonl(run_dir / "scores.jsonl"):
        item, gen = items.get(s["item_id"], {}), gens.get(s["item_id"], {})
        turns = gen.get("turns", [])
        second = spot.get((s.get("model"), s["item_id"]), {})
        rows.append([
            s.get("model"), s["item_id"], s.get("category"), (item.get("meta") or {}).get("template"),
            item.get("source") or gen.get("source"), _conversation(turns),
            json.dumps([t.get("reply", "") for t in turns], ensure_ascii=False), s.get("verdict"),
            json.dumps(s.get("turn_verdicts"), ensure_ascii=False), json.dumps(s.get("checks"), ensure_ascii=False),
            s.get("rationale"), s.get("judge") or s.get("scorer"), s.get("error"),
            second.get("second"), second.get("agree"),
        ])
    return rows


def log_eval_records(tracker: Tracker, run_dir: Path) -> None:
    """End of an eval: the transcript table and the scores artifact, both read from the run folder."""
    tracker.log_table(TRANSCRIPTS_KEY, TRANSCRIPT_COLUMNS, transcript_rows(run_dir))
    name, files = scores_artifact(run_dir)
    tracker.log_artifact(files, name, "scores")


def comparison_tables(comparison: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """``comparison/models`` (rates with Wilson 95% intervals) and ``comparison/pairs`` (paired tests)."""
    mcols = ["model", "job", "kind", "n", "n_pass", "n_fail", "n_error", "success_rate", "ci95_low", "ci95_high",
             "scorer", "gate_eligible"]
    models = [[m.get("model"), m.get("job"), m.get("kind"), m.get("n"), m.get("n_pass"), m.get("n_fail"),
               m.get("n_error"), m.get("success_rate"), *(list(m.get("ci95") or [None, None])[:2]), m.get("scorer"),
               m.get("gate_eligible")] for m in comparison.get("models", [])]
    pcols = ["a", "b", "n_paired", "a_only", "b_only", "success_a", "success_b", "mcnemar_p", "p_holm", "cohens_h",
             "underpowered"]
    pairs = [[p.get(c) for c in pcols] for p in comparison.get("pairs", [])]
    return {COMPARISON_TABLES[0]: (mcols, models), COMPARISON_TABLES[1]: (pcols, pairs)}


def log_comparison_records(tracker: Tracker, comparison: dict[str, Any], sweep_dir: Path) -> None:
    """The comparison run's inputs (the jobs' scores artifacts), tables and the sweep's spend."""
    sweep_dir = Path(sweep_dir)
    inputs = []
    for m in comparison.get("models", []):
        name, files = scores_artifact(sweep_dir / str(m["job"]))
        tracker.log_artifact(files, name, "scores", use=True)
        inputs.append(name)
    for key, (columns, rows) in comparison_tables(comparison).items():
        tracker.log_table(key, columns, rows)
    spend = {"budget/sweep_gpu_hours": 0.0, "budget/sweep_gpu_usd": 0.0, "budget/sweep_api_usd": 0.0}
    for job in sweep_dir.iterdir():
        if (job / "summary.json").is_file():
            s = read_json(job / "summary.json")
            spend["budget/sweep_gpu_hours"] += float(s.get("gpu_hours") or 0.0)
            spend["budget/sweep_gpu_usd"] += float(s.get("gpu_usd") or 0.0)
            spend["budget/sweep_api_usd"] += float(s.get("api_usd") or 0.0)
    spend["budget/sweep_usd"] = spend["budget/sweep_gpu_usd"] + spend["budget/sweep_api_usd"]
    tracker.summary(spend | {"comparison/inputs": ",".join(inputs)})


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """What an offline W&B run folder (``wandb/offline-run-*``) holds, for checks and the dashboard.

    wandb 0.31 ships no reader for its ``.wandb`` files, so this decodes the record log itself:
    the LevelDB log format (32 KiB blocks of ``crc32 | length | type`` + data, after a 7-byte
    ``:W&B`` header) wrapping ``wandb_internal_pb2.Record`` messages. The CRCs are not checked.

    Returns:
        ``{"history": [{key: value}], "summary": {key: value}, "metrics": {name: step_metric}, "artifacts": [{"name", "type",
        "metadata", "files", "use_after_commit"}], "tables": {key: {"columns", "data"}}}``; tables come
        from the ``files/media/table`` JSON files that the history rows point at.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    path = next(run_dir.glob("run-*.wandb"))
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no :W&B header)")
    block, pos, buf = 32768, 7, b""
    raws: list[bytes] = []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # FULL
            raws.append(chunk)
        elif kind == 2:  # FIRST
            buf = chunk
        elif kind == 3:  # MIDDLE
            buf += chunk
        elif kind == 4:  # LAST
            raws.append(buf + chunk)
    out: dict[str, Any] = {"history": [], "summary": {}, "metrics": {}, "artifacts": [], "tables": {}}
    for raw in raws:
        rec = pb.Record()  # type: ignore[attr-defined]  # generated protobuf code
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            out["history"].append(row)
        elif kind == "summary":
            out["summary"] |= {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.summary.update}
        elif kind == "metric":
            out["metrics"][rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
        elif kind == "artifact":
            a = rec.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "digest": a.digest, "metadata": json.loads(a.metadata or "null"),
                                     "files": [e.path for e in a.manifest.contents],
                                     "use_after_commit": a.use_after_commit})
    for row in out["history"]:
        for key, value in row.items():
            if key.endswith("/_type") and value == "table-file":
                table = key[: -len("/_type")]
                out["tables"][table] = json.loads((run_dir / "files" / row[f"{table}/path"]).read_text())
    return out
