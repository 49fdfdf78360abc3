"""The comparison of a sweep's models, built from their records alone.

A sweep evaluates several models on the same items; each job folder holds ``summary.json`` and
``scores.jsonl`` (one verdict per item). :func:`build_comparison` turns those records into one
JSON-ready dict (``comparison.json``): per-model success rates with Wilson intervals, every pair of
models paired by ``item_id`` (exact McNemar, Holm across pairs, Cohen's h), the same per category
with a power flag, and the gate between the first base-kind and the first instruct-kind model.
Nothing here loads a model or calls an API; human tables and plots are rendered FROM that dict
(:mod:`posttrain.report`, :mod:`posttrain.plots`). ``docs/comparisons.md`` explains every field.

Sign convention: in a pair (a, b), a comes first in sweep order, ``a_only`` counts items only a
passed, and ``cohens_h = h(success_b, success_a)`` is positive when b does better. With the base
model swept first this matches the gate's "instruct − base".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from posttrain.gates import GateThresholds, ModelScores, evaluate_gate
from posttrain.stats import cohens_h, design_power, holm, mcnemar_exact, paired_table, wilson_ci

VERSION = "comparison-v1"
UNDERPOWERED_BELOW = 0.8  # design power for the gate's effect under which a test is flagged
N_CATEGORIES = 4  # the conversation benchmark's categories, for the per-category power note

# (judge, template_version, min_kappa) -> (calibrated, reason, kappa or None)
CalibrationLookup = Callable[[str, str, float], tuple[bool, str, float | None]]


@dataclass(frozen=True)
class JobRecords:
    """One finished eval job of a sweep: its folder name, summary and score rows."""

    name: str
    summary: dict[str, Any]
    scores: list[dict[str, Any]]
    sentinel: dict[str, Any] | None = None


@dataclass(frozen=True)
class SweepRecords:
    """The jobs of a sweep that can be compared, and the ones that cannot (with the reason)."""

    sweep_dir: str
    jobs: list[JobRecords]
    missing: list[dict[str, Any]] = field(default_factory=list)
    thresholds: GateThresholds = field(default_factory=GateThresholds)


def thresholds_from(gate: Any) -> GateThresholds:
    """GateThresholds from a config node or dict with the gate's keys (missing keys: defaults)."""
    names = GateThresholds.__dataclass_fields__
    get = gate.get if hasattr(gate, "get") else (lambda k, d=None: getattr(gate, k, d))
    return GateThresholds(**{k: float(v) for k in names if (v := get(k, None)) is not None})


def default_calibration(judge: str, template_version: str, min_kappa: float, *,
                        instrument: Mapping[str, Any] | None = None,
                        min_items: int | None = None) -> tuple[bool, str, float | None]:
    """Look the judge instrument up in the calibration store (``posttrain.paths.calibration_dir()``).

    A calibration applies only to the instrument it calibrated (provider, model id, template version,
    template sha256: ``summary.json``'s ``judge_instrument``), with at least ``min_items`` labels
    (default ``gate.min_calibration_items``, 30). Without ``instrument`` the judge cannot be matched
    (the config name and template version alone do not say which model or template text judged), so
    nothing applies. The kappa is returned only when the calibration applies.
    """
    from posttrain.calibration import DEFAULT_MIN_ITEMS, calibration_status
    from posttrain.paths import calibration_dir

    if not instrument:
        return False, (f"judge {judge} ({template_version}): the run records no judge_instrument (provider, model, "
                       "template_version, template_sha256), so no calibration can be matched; rescore the run"), None
    st = calibration_status(calibration_dir(), instrument, min_kappa=min_kappa,
                            min_items=DEFAULT_MIN_ITEMS if min_items is None else min_items)
    if st["applies"]:
        return True, f"calibration {st['key']}: kappa {st['kappa']:.2f} >= {min_kappa:.2f} on n={st['n']}", st["kappa"]
    return False, str(st["reason"]), None


# ---------------------------------------------------------------------------------------------
# Blocks of comparison.json


def _counts(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n_pass = sum(r["verdict"] == "pass" for r in rows)
    n_fail = sum(r["verdict"] == "fail" for r in rows)
    n = n_pass + n_fail
    return {"n": n, "n_items": len(rows), "n_pass": n_pass, "n_fail": n_fail,
            "n_error": sum(r["verdict"] == "error" for r in rows),
            "success_rate": n_pass / n if n else None, "ci95": list(wilson_ci(n_pass, n))}


def _judging(job: JobRecords, min_kappa: float, lookup: CalibrationLookup) -> dict[str, Any]:
    """Scorer, judge, template and whether this run can gate (recomputed now, not at run time)."""
    scorer = job.summary.get("scorer") or next((r.get("scorer") for r in job.scores if r.get("scorer")), None)
    judges = sorted({str(r["judge"]) for r in job.scores if r.get("judge")})
    templates = sorted({str(r["template_version"]) for r in job.scores if r.get("template_version")})
    out: dict[str, Any] = {"scorer": scorer, "judge": judges[0] if len(judges) == 1 else (judges or None),
                           "template_version": templates[0] if len(templates) == 1 else (templates or None),
                           "calibration_kappa": None, "calibration": None, "gate_eligible": False,
                           "gate_ineligible_reason": None}
    if scorer == "heuristic_triage":
        out["gate_ineligible_reason"] = "scorer=heuristic_triage is triage only and can never gate; rerun with scorer=llm"
    elif scorer != "llm":
        out["gate_ineligible_reason"] = f"unknown scorer={scorer!r}; only scorer=llm can gate"
    elif len(judges) != 1 or len(templates) != 1:
        out["gate_ineligible_reason"] = (f"scores mix judges {judges} / templates {templates}; "
                                         "rescore the run with one judge and one template")
    else:
        ok, reason, kappa = lookup(judges[0], templates[0], min_kappa)
        out.update(calibration_kappa=kappa, gate_eligible=ok, gate_ineligible_reason=None if ok else reason,
                   calibration=reason)
    return out


def _unpaired(va: Mapping[str, str], vb: Mapping[str, str], a: str, b: str) -> list[dict[str, str]]:
    out = []
    for i in sorted(va.keys() | vb.keys()):
        if i not in vb:
            out.append({"item_id": i, "reason": f"not scored for {b}"})
        elif i not in va:
            out.append({"item_id": i, "reason": f"not scored for {a}"})
        elif va[i] == "error" or vb[i] == "error":
            who = " and ".join(m for m, v in ((a, va[i]), (b, vb[i])) if v == "error")
            out.append({"item_id": i, "reason": f"verdict=error for {who}"})
    return out


def _paired_stats(va: Mapping[str, str], vb: Mapping[str, str], t: GateThresholds) -> dict[str, Any]:
    """2x2 counts over ids scored (without error) for both, McNemar, h (b − a) and design power."""
    usable = [i for i in va.keys() & vb.keys() if va[i] != "error" and vb[i] != "error"]
    table = paired_table({i: va[i] == "pass" for i in usable}, {i: vb[i] == "pass" for i in usable})
    mc = mcnemar_exact(table.a_only, table.b_only)
    power = design_power(t.base_max_success, t.instruct_min_success, table.n_paired, t.mcnemar_alpha).power
    return {"n_paired": table.n_paired, "a_only": table.a_only, "b_only": table.b_only, "both": table.both,
            "neither": table.neither, "n_discordant": mc.n_discordant,
            "success_a": table.success_a if table.n_paired else None,
            "success_b": table.success_b if table.n_paired else None,
            "mcnemar_p": mc.p_value, "mcnemar_mid_p": mc.mid_p_value,
            "cohens_h": cohens_h(table.success_b, table.success_a) if table.n_paired else None,
            "design_power": power, "underpowered": power < UNDERPOWERED_BELOW}


def _gate(models: list[dict[str, Any]], verdicts: Mapping[str, Mapping[str, str]],
          t: GateThresholds) -> dict[str, Any]:
    base = next((m for m in models if m["kind"] == "base"), None)
    instruct = next((m for m in models if m["kind"] == "instruct"), None)
    if base is None or instruct is None:
        kinds = ", ".join(f"{m['model']}={m['kind']}" for m in models) or "no models"
        reason = f"the gate needs one base-kind and one instruct-kind model; this sweep has {kinds}"
        return {"verdict": "NOT_APPLICABLE", "reason": reason, "reasons": [reason]}

    def scores(m: dict[str, Any]) -> ModelScores:
        return ModelScores(m["model"], dict(verdicts[m["model"]]), m["scorer"] or "unknown", m["calibration_kappa"])

    out = evaluate_gate(scores(base), scores(instruct), t).to_dict()
    extra = [f"{role} ({m['model']}): {m['gate_ineligible_reason']}" for role, m in (("base", base), ("instruct", instruct))
             if m["scorer"] == "llm" and not m["gate_eligible"] and m["gate_ineligible_reason"]]
    if extra:  # the calibration store's own words say what to run next
        out["verdict"] = "NOT_ELIGIBLE"
        out["reasons"] = out["reasons"] + [r for r in extra if r not in out["reasons"]]
    out["calibration"] = {m["model"]: {k: m.get(k) for k in ("judge", "template_version", "calibration_kappa",
                                                             "gate_eligible", "gate_ineligible_reason")}
                          for m in (base, instruct)}
    return out


def build_comparison(jobs: Sequence[JobRecords], thresholds: GateThresholds | None = None, *,
                     missing: Sequence[dict[str, Any]] = (), calibration: CalibrationLookup | None = None,
                     sweep_dir: str | None = None) -> dict[str, Any]:
    """Compare the models of finished eval jobs, paired by item id.

    Args:
        jobs: the jobs in sweep order (the order fixes pair orientation and which model gates).
        thresholds: the gate's numbers (also the effect whose power flags underpowered tests).
        missing: jobs of the sweep that could not be compared, each ``{"job", "reason"}``.
        calibration: judge calibration lookup; default the store under ``POSTTRAIN_HOME``.
        sweep_dir: recorded as is.

    Returns:
        The comparison record (see ``docs/comparisons.md``); plain JSON types only.
    """
    t = thresholds or GateThresholds()
    lookup = calibration or default_calibration
    warnings: list[str] = []
    labels = [j.summary.get("model") or j.name for j in jobs]
    labels = [lab if labels.count(lab) == 1 else f"{lab}@{j.name}" for lab, j in zip(labels, jobs, strict=True)]
    rows: dict[str, list[dict[str, Any]]] = {}  # label -> one score row per item id (the last one)
    verdicts: dict[str, dict[str, str]] = {}
    category: dict[str, str] = {}
    models: list[dict[str, Any]] = []
    for label, job in zip(labels, jobs, strict=True):
        rows[label] = list({r["item_id"]: r for r in job.scores}.values())
        if len(rows[label]) != len(job.scores):
            warnings.append(f"{label}: scores.jsonl repeats item ids; the last row of each id is used")
        verdicts[label] = {r["item_id"]: r["verdict"] for r in rows[label]}
        category |= {r["item_id"]: r.get("category") or "uncategorised" for r in rows[label]}
        info = job.summary.get("benchmark_info") or {}
        models.append({"model": label, "job": job.name, "kind": job.summary.get("model_kind"),
                       **_counts(rows[label]),
                       **_judging(job, t.min_kappa, lookup),
                       "benchmark": {k: info.get(k) for k in ("name", "split", "n", "sha256")}})
    if len({(m["benchmark"]["sha256"], m["benchmark"]["split"], m["benchmark"]["n"]) for m in models}) > 1:
        warnings.append("the jobs did not evaluate the same items (benchmark sha256/split/n differ); "
                        "only ids scored for both models of a pair are compared")
    cats = sorted(set(category.values()))

    pairs, cat_pairs = [], []
    for a, b in itertools.combinations(labels, 2):
        va, vb = verdicts[a], verdicts[b]
        pairs.append({"a": a, "b": b, **_paired_stats(va, vb, t), "unpaired": _unpaired(va, vb, a, b)})
        for c in cats:
            ca = {i: v for i, v in va.items() if category[i] == c}
            cb = {i: v for i, v in vb.items() if category[i] == c}
            cat_pairs.append({"a": a, "b": b, "category": c, **_paired_stats(ca, cb, t)})
    for p, adj in zip(pairs, holm([p["mcnemar_p"] for p in pairs]), strict=True):
        p["p_holm"] = adj
    per_model_cat = {m: {c: _counts([r for r in rows[m] if category[r["item_id"]] == c]) for c in cats}
                     for m in labels}
    gate = _gate(models, verdicts, t)
    n_items = gate.get("n_paired") or max((m["n"] for m in models), default=0)
    return {
        "version": VERSION,
        "sweep_dir": sweep_dir,
        "thresholds": asdict(t),
        "models": models,
        "pairs": pairs,
        "per_category": {"categories": cats, "models": per_model_cat, "pairs": cat_pairs},
        "gate": gate,
        "power": ({"n_items": n_items, **asdict(design_power(t.base_max_success, t.instruct_min_success, n_items,
                                                             t.mcnemar_alpha)),
                   "note": power_note(n_items, t)} if n_items else None),
        "sentinel": {m: j.sentinel for m, j in zip(labels, jobs, strict=True) if j.sentinel},
        "length_bias": {m: j.summary["length_bias"] for m, j in zip(labels, jobs, strict=True)
                        if j.summary.get("length_bias")},
        "spot_check": {m: j.summary["spot_check"] for m, j in zip(labels, jobs, strict=True)
                       if isinstance(j.summary.get("spot_check"), dict)},
        "missing_jobs": list(missing),
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------------------
# Power before spending


def power_note(n_items: int, gate: Any, n_categories: int = N_CATEGORIES) -> str:
    """One paragraph: the power of the paired design for the gate's effect, overall and per category.

    The effect is base at ``gate.base_max_success`` vs instruct at ``gate.instruct_min_success``,
    tested by the exact McNemar test at ``gate.mcnemar_alpha`` (``stats.design_power``, which
    assumes independent outcomes within an item: conservative when they correlate positively).

    Args:
        n_items: conversations every model answers (the pairs of the design).
        gate: anything with ``base_max_success``, ``instruct_min_success`` and ``mcnemar_alpha``
            (``GateThresholds``, the ``gate`` config node).
        n_categories: categories the items split into evenly (4 for the conversation benchmark).
    """
    if n_items < 1:
        raise ValueError(f"n_items={n_items} must be >= 1 (the number of paired conversations)")
    pb, pi, alpha = float(gate.base_max_success), float(gate.instruct_min_success), float(gate.mcnemar_alpha)
    d = design_power(pb, pi, n_items, alpha)
    n80, n90 = d.n_for_80, d.n_for_90
    if n80 is None or n90 is None:
        return (f"The gate's rates are equal (base {pb:.0%}, instruct {pi:.0%}): no number of conversations gives "
                f"the McNemar test power beyond alpha={alpha:g}.")
    h = cohens_h(pi, pb)
    per = n_items // n_categories
    dc = design_power(pb, pi, per, alpha) if per else None
    text = (f"With {n_items} paired conversations, the exact McNemar test at alpha={alpha:g} has {d.power:.0%} power "
            f"to detect the gate's effect (base {pb:.0%} vs instruct {pi:.0%}, Cohen's h = {h:.2f}; outcomes assumed "
            f"independent within an item, which is conservative). 80% power needs {n80} conversations and "
            f"90% needs {n90}. ")
    if dc is None:
        return text + f"Split into {n_categories} categories, fewer than one conversation per category is left."
    text += (f"Per category ({n_items} / {n_categories} = {per} conversations each) the power is {dc.power:.0%}; "
             f"80% and 90% per category need {n80} and {n90} conversations per category "
             f"({n80 * n_categories} and {n90 * n_categories} in all).")
    if dc.power < UNDERPOWERED_BELOW:
        text += " Per-category tests are underpowered: read them as descriptive, not as evidence."
    return text


def format_number(x: Any, digits: int = 3) -> str:
    """A table cell: None as an em dash, floats to ``digits`` significant figures, p-values as 1e-05."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, float):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"
