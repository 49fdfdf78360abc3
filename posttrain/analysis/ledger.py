"""The ledger of gate attempts: every decision on a question, so that no attempt can be hidden.

Asking the same question again and again (another sweep, another report of the same sweep) until
the gate says PASS turns an honest test into a fishing trip: each attempt has a false-pass rate of
at most alpha, and k of them at most 1 − (1 − alpha)^k (5 attempts at alpha = .03: 14%). So every
gate decision is appended to ``$POSTTRAIN_HOME/gates.jsonl``, and the comparison shows "attempt k
on this question" with the earlier verdicts and, for k > 1, that family-wise rate.

The question is what the gate was asked, not where: the benchmark's identity (name, split, limit,
file sha256, item ids' and clusters' hashes), the two arms' model identities and the scorer's
instrument. The file is append-only and crash-safe like the budget ledger: a lock around each
read-and-append (jobs of a sweep may write at once), one complete fsynced line per decision, and a
torn last line from a killed writer dropped on read (:func:`posttrain.records.append_jsonl`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from posttrain.records import append_jsonl, read_jsonl

GATES_FILE = "gates.jsonl"
VERSION = "gate-ledger-v1"
_BENCHMARK_KEYS = ("name", "split", "limit", "sha256", "n", "item_ids_sha256", "clusters_sha256")


def gates_path() -> Path:
    """``$POSTTRAIN_HOME/gates.jsonl``."""
    from posttrain.paths import posttrain_home

    return posttrain_home() / GATES_FILE


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _identity(summary: Mapping[str, Any], label: str) -> dict[str, Any]:
    """An arm's model identity: ``summary["model_identity"]`` (weights, revision, adapter hash) and its label."""
    ident = summary.get("model_identity")
    return {"label": label, **(dict(ident) if isinstance(ident, Mapping) else {"name": summary.get("model")})}


def _instrument(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The scorer's instrument: the scorer, and the judge's identity or the exact scorer's version/hash."""
    out: dict[str, Any] = {"scorer": summary.get("scorer")}
    for key in ("judge_instrument", "scorer_instrument"):
        if isinstance(summary.get(key), Mapping):
            out[key] = dict(summary[key])
    return out


def question(control: Mapping[str, Any], treatment: Mapping[str, Any], control_label: str,
             treatment_label: str) -> dict[str, Any]:
    """The question a primary pair asks, from its two runs' summaries."""
    bench = control.get("benchmark_info") or {}
    return {"benchmark": {k: bench.get(k) for k in _BENCHMARK_KEYS},
            "control": _identity(control, control_label), "treatment": _identity(treatment, treatment_label),
            "instrument": _instrument(treatment)}


def question_key(q: Mapping[str, Any]) -> str:
    """SHA-256 of the question's canonical JSON: equal questions, equal keys."""
    return hashlib.sha256(_canonical(q).encode("utf-8")).hexdigest()


def family_wise_false_pass(alpha: float, k: int) -> float:
    """The chance that at least one of k independent honest attempts passes a false claim: 1 − (1 − α)^k."""
    return 1.0 - (1.0 - alpha) ** k


def record_attempts(comparison: Mapping[str, Any], summaries: Mapping[str, Mapping[str, Any]],
                    path: str | Path | None = None) -> list[dict[str, Any]]:
    """Append the comparison's gate decision(s) to the ledger; return each question's attempt record.

    One entry per primary pair (each is its own question). NOT_APPLICABLE (no primary pair in the
    sweep) decides nothing and is not recorded.

    Args:
        comparison: the comparison record (``build_comparison``).
        summaries: model label -> its run's summary.json.
        path: the ledger file; default :func:`gates_path`.

    Returns:
        ``[{"question_key", "question", "attempt", "earlier": [...], "family_wise_false_pass", ...}]``.
    """
    gate = comparison["gate"]
    if gate.get("verdict") == "NOT_APPLICABLE":
        return []
    results = gate.get("primaries") or [gate]
    ledger = Path(path) if path is not None else gates_path()
    from filelock import FileLock

    ledger.parent.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    with FileLock(str(ledger) + ".lock", timeout=60):  # number the attempts one writer at a time
        entries = read_jsonl(ledger, repair=True)
        rows = []
        for r in results:
            control, treatment = r["base_model"], r["instruct_model"]
            q = question(summaries.get(control, {}), summaries.get(treatment, {}), control, treatment)
            key = question_key(q)
            earlier = [{k: e.get(k) for k in ("at", "sweep_dir", "verdict", "kind", "mcnemar_p", "cluster_p",
                                              "registered")}
                       for e in entries if e.get("question_key") == key]
            alpha = float((r.get("thresholds") or {}).get("mcnemar_alpha") or 0.01)
            obs = r.get("observed") or {}
            row = {"version": VERSION, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                   "question_key": key, "question": q, "sweep_dir": comparison.get("sweep_dir"),
                   "verdict": r["verdict"], "final_verdict": gate["verdict"], "kind": r.get("kind"),
                   "mcnemar_p": obs.get("mcnemar_p"), "cluster_p": obs.get("cluster_p"), "gate_p": obs.get("gate_p"),
                   "cohens_h": obs.get("cohens_h"), "n_paired": r.get("n_paired"), "alpha": alpha,
                   "registered": gate.get("registered"), "attempt": len(earlier) + 1}
            rows.append(row)
            out.append({"question_key": key, "question": q, "attempt": len(earlier) + 1, "earlier": earlier,
                        "alpha": alpha, "family_wise_false_pass": family_wise_false_pass(alpha, len(earlier) + 1),
                        "pair": {"control": control, "treatment": treatment}, "ledger": str(ledger)})
        append_jsonl(ledger, rows)
    return out


def attempt_lines(attempts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparison.md section: attempt k on each question, the earlier verdicts, the family-wise rate."""
    lines: list[str] = []
    for a in attempts:
        k, pair = a["attempt"], a["pair"]
        lines.append(f"**Attempt {k} on this question** (`{pair['treatment']}` vs `{pair['control']}`, question "
                     f"{a['question_key'][:12]} in {a['ledger']}).")
        if k == 1:
            lines.append("No earlier gate decision on this question.")
        else:
            lines.append("Earlier verdicts: " + "; ".join(
                f"{e.get('at')} {e.get('verdict')} (sweep {e.get('sweep_dir')}, item p {_p(e.get('mcnemar_p'))}, "
                f"cluster p {_p(e.get('cluster_p'))})" for e in a["earlier"]) + ".")
            lines.append(f"{k} honest attempts at alpha = {a['alpha']:g} imply a family-wise false-pass rate of up "
                         f"to 1 − (1 − {a['alpha']:g})^{k} = {a['family_wise_false_pass']:.3f}: a PASS after earlier "
                         "attempts is weaker evidence than a first PASS.")
        lines.append("")
    return lines


def _p(x: Any) -> str:
    return "—" if x is None else f"{float(x):.3g}"
