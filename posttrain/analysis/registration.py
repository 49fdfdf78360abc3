"""The sealed registration: the analysis a sweep committed to before any job ran (``primary.json``).

A sweep writes ``<sweep>/primary.json`` as its first job starts, before any result exists
(:func:`posttrain.callbacks.write_primary`). It holds everything that decides the gate:

- the primary pair(s), each with its gate kind (``gap`` or ``superiority``);
- the secondary family (Holm-adjusted, reported, never deciding);
- every threshold (rates, alpha, min_paired, Cohen's h minima, kappa, error rate, the rate rule);
- the benchmark's identity (name, split, limit, and when the file could be read: its sha256, n,
  the item ids' and the cluster assignment's hashes).

Every eval job records the registration's sha256 in its ``summary.json`` (``registration_sha256``).
The report and the sweep callback then decide only with that registration: a missing or changed
file, a job that ran under another one, thresholds other than the registered ones or a benchmark
other than the registered one make the gate NOT_ELIGIBLE, and the printed analysis says it is not
the registered analysis (:func:`registration_problems`).

The sha256 is of the record's canonical JSON (sorted keys, no whitespace), so re-indenting the file
changes nothing and changing any value changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from posttrain.analysis.gates import GATE_KINDS, GateThresholds, thresholds_from

VERSION = "registration-v1"
NOT_REGISTERED = "not the registered analysis"
# benchmark_info keys compared with the registered benchmark identity, where both record them
BENCHMARK_KEYS = ("name", "split", "limit", "sha256", "n", "item_ids_sha256", "clusters_sha256")


def pair_record(p: Any) -> dict[str, str]:
    """``{"treatment", "control", "kind"}`` of a config node or dict (kind defaults to ``gap``)."""
    get = p.get if hasattr(p, "get") else (lambda k, d=None: getattr(p, k, d))
    kind = str(get("kind", None) or "gap")
    if kind not in GATE_KINDS:
        raise ValueError(f"gate pair {get('treatment', None)} vs {get('control', None)}: kind={kind!r} is not one of "
                         f"{', '.join(GATE_KINDS)}")
    return {"treatment": str(get("treatment")), "control": str(get("control")), "kind": kind}


def registration_record(primary: Sequence[Any], thresholds: GateThresholds, *, secondary: Sequence[Any] = (),
                        benchmark: Mapping[str, Any] | None = None, gate: Any = None,
                        registered_at: str | None = None) -> dict[str, Any]:
    """The content of ``primary.json``.

    Args:
        primary: the pre-registered primary pairs (``treatment``, ``control``, ``kind``).
        thresholds: the gate's numbers (already validated: :func:`posttrain.analysis.comparison.thresholds_from`).
        secondary: the secondary family's pairs (Holm-adjusted among themselves).
        benchmark: the benchmark's identity (see :data:`BENCHMARK_KEYS`).
        gate: the whole ``gate`` config as a plain dict, kept for the reader.
        registered_at: ISO time; default now.
    """
    return {"version": VERSION, "primary": [pair_record(p) for p in primary],
            "secondary": [pair_record(p) for p in secondary],
            "thresholds": asdict(thresholds), "benchmark": dict(benchmark) if benchmark else None,
            "gate": gate, "registered_at": registered_at or datetime.now(UTC).isoformat(timespec="seconds")}


def registration_sha256(record: Mapping[str, Any]) -> str:
    """SHA-256 of a registration's canonical JSON (what each job's summary records)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_registration_sha256(path: str | Path) -> str | None:
    """The sha256 of the registration in ``path`` (None when there is none or it is not JSON)."""
    p = Path(path)
    try:
        return registration_sha256(json.loads(p.read_text(encoding="utf-8"))) if p.is_file() else None
    except (OSError, ValueError):
        return None


def job_registration_sha256(run_dir: str | Path) -> str | None:
    """For an eval job: the sha256 of its sweep's ``primary.json`` (None outside a sweep or without one).

    The sweep folder comes from Hydra (``hydra.sweep.dir``) when the job runs inside a multirun,
    else it is the run folder's parent (a job folder of a sweep made by hand).
    """
    sweep: Path | None = None
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            sweep = Path(str(hc.sweep.dir)).expanduser().resolve()
    except Exception:  # not under Hydra (a test, a library call)
        sweep = None
    for folder in ([sweep] if sweep else []) + [Path(run_dir).expanduser().resolve().parent]:
        if (sha := file_registration_sha256(folder / "primary.json")) is not None:
            return sha
    return None


def registration_problems(record: Mapping[str, Any] | None, jobs: Sequence[Any],
                          given: GateThresholds | None) -> list[str]:
    """Why this analysis is not the registered one (empty when it is).

    Args:
        record: the parsed ``primary.json``; None when the sweep has none.
        jobs: the sweep's :class:`~posttrain.analysis.comparison.JobRecords` (summary, name).
        given: thresholds the caller asked for (command line, the callback's config); None: the registered ones.
    """
    if record is None:
        return ["no primary.json in the sweep folder: nothing was registered before the runs, so no pair may decide "
                "the gate; rerun the sweep with gate.primary set in its experiment config"]
    problems: list[str] = []
    if not record.get("primary"):
        problems.append("primary.json registers no primary pair: declare gate.primary in the experiment config")
    if not isinstance(record.get("thresholds"), Mapping):
        problems.append("primary.json records no thresholds (registered by an older posttrain): the numbers that "
                        "decide the gate were never fixed; rerun the sweep")
    else:
        try:
            registered = registered_thresholds(record)
        except (TypeError, ValueError) as exc:
            problems.append(f"primary.json's thresholds are not valid: {exc}")
        else:
            if given is not None and given != registered:
                diff = [f"{k} {getattr(given, k)!r} (asked) vs {getattr(registered, k)!r} (registered)"
                        for k in asdict(registered) if getattr(given, k) != getattr(registered, k)]
                problems.append("thresholds differ from the registered ones: " + "; ".join(diff))
    sha = registration_sha256(record)
    unstamped = [j.name for j in jobs if not j.summary.get("registration_sha256")]
    other = [f"{j.name} ({str(j.summary['registration_sha256'])[:12]})" for j in jobs
             if j.summary.get("registration_sha256") and j.summary["registration_sha256"] != sha]
    if unstamped:
        problems.append(f"job(s) {', '.join(unstamped)} record no registration_sha256: they did not run under this "
                        "registration; rerun them in the sweep")
    if other:
        problems.append(f"primary.json (sha256 {sha[:12]}) is not the registration job(s) {', '.join(other)} ran "
                        "under: it was edited or replaced after the runs")
    bench = record.get("benchmark") or {}
    for j in jobs:
        info = j.summary.get("benchmark_info") or {}
        off = [f"{k} {info[k]!r} vs {bench[k]!r}" for k in BENCHMARK_KEYS if k in info and k in bench
               and bench[k] is not None and info[k] != bench[k]]
        if off:
            problems.append(f"job {j.name} evaluated another benchmark than the registered one: {'; '.join(off)}")
    return problems


def registered_thresholds(record: Mapping[str, Any]) -> GateThresholds:
    """The registered thresholds, validated as a run's are."""
    return thresholds_from(record["thresholds"])
