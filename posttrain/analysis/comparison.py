"""The comparison of a sweep's models, built from their records alone.

A sweep evaluates several models on the same items; each job folder holds ``summary.json``,
``scores.jsonl`` (one verdict per item) and ``items.jsonl`` (the items, with their cluster).
:func:`build_comparison` turns those records into one JSON-ready dict (``comparison.json``):
per-model success rates with Wilson intervals, every pair of models paired by ``item_id`` (exact
McNemar at the item level, a cluster sign-flip test at the cluster level, cluster-robust intervals,
Cohen's h, what was dropped), the same per category, and the gate on the pre-registered primary
pair (``primary.json``, written into the sweep folder before any job runs). Secondary pairs and
per-category tests are Holm-adjusted within their family and labelled exploratory. Nothing here
loads a model or calls an API; human tables and plots are rendered FROM that dict
(:mod:`posttrain.analysis.report`, :mod:`posttrain.analysis.plots`). ``docs/comparisons.md`` explains every field.

Sign convention: in a pair (a, b), a comes first in sweep order, ``a_only`` counts items only a
passed, and ``cohens_h = h(success_b, success_a)`` is positive when b does better. With the base
model swept first this matches the gate's "instruct − base".
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from posttrain.analysis.agreement import sweep_agreement
from posttrain.analysis.gates import (
    GATE_KINDS,
    GateThresholds,
    ModelScores,
    decoding_differences,
    evaluate_gate,
    item_cluster,
    scores_from_records,
    thresholds_from,  # noqa: F401  (re-exported: report, callbacks and tests import it from here)
)
from posttrain.analysis.stats import (
    cluster_mean,
    cluster_permutation_test,
    cohens_h,
    design_power,
    holm,
    icc_anova,
    mcnemar_exact,
    paired_power,
    paired_table,
    wilson_ci,
)

VERSION = "comparison-v2"
UNDERPOWERED_BELOW = 0.8  # power for the observed effect under which a test is flagged
N_CATEGORIES = 4  # the conversation benchmark's categories, for the per-category power note
PRIMARY_FILE = "primary.json"  # the pre-registered primary pair(s), written by the sweep callback
# A pair whose arms' truncation rates (turns cut at max_new_tokens) differ by more than this is
# flagged: a format that talks longer is then measured partly on the length budget, not on the format.
TRUNCATION_FLAG = 0.10

# (judge, template_version, min_kappa, *, instrument=summary.judge_instrument) -> (calibrated, reason, kappa or None)
CalibrationLookup = Callable[..., tuple[bool, str, float | None]]


@dataclass(frozen=True)
class JobRecords:
    """One finished eval job of a sweep: its folder name, summary, score rows and items (if kept)."""

    name: str
    summary: dict[str, Any]
    scores: list[dict[str, Any]]
    sentinel: dict[str, Any] | None = None
    items: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class SweepRecords:
    """The jobs of a sweep that can be compared, and the ones that cannot (with the reason)."""

    sweep_dir: str
    jobs: list[JobRecords]
    missing: list[dict[str, Any]] = field(default_factory=list)
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    primary: list[dict[str, str]] | None = None
    registration: dict[str, Any] | None = None  # primary.json as read; None: the sweep has none


def _pairs(gate: Any, key: str) -> list[dict[str, str]]:
    get = gate.get if hasattr(gate, "get") else (lambda k, d=None: getattr(gate, k, d))
    out = []
    for p in get(key, None) or []:
        kind = str((p.get("kind", None) if hasattr(p, "get") else None) or "gap")
        if kind not in GATE_KINDS:
            raise ValueError(f"gate.{key}: {p['treatment']} vs {p['control']} has kind={kind!r}; choose one of "
                             f"{list(GATE_KINDS)}")
        out.append({"treatment": str(p["treatment"]), "control": str(p["control"]), "kind": kind})
    return out


def primary_pairs(gate: Any) -> list[dict[str, str]]:
    """The pre-registered primary pairs of a ``gate`` config node: ``[{"treatment", "control", "kind"}]``."""
    return _pairs(gate, "primary")


def secondary_pairs(gate: Any) -> list[dict[str, str]]:
    """The registered secondary family of a ``gate`` config node (Holm-adjusted, never deciding)."""
    return _pairs(gate, "secondary")


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
    from posttrain.judges.calibration import DEFAULT_MIN_ITEMS, calibration_status
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
    n_error = sum(r["verdict"] == "error" for r in rows)
    n_not = sum(r["verdict"] == "not_scored" for r in rows)  # scorer=verifiable: left to a judge
    n = n_pass + n_fail
    return {"n": n, "n_items": len(rows), "n_pass": n_pass, "n_fail": n_fail, "n_error": n_error,
            "n_not_scored": n_not, "error_rate": n_error / (len(rows) - n_not) if len(rows) > n_not else None,
            "success_rate": n_pass / n if n else None, "ci95": list(wilson_ci(n_pass, n))}


def _judging(job: JobRecords, t: GateThresholds, lookup: CalibrationLookup) -> dict[str, Any]:
    """Scorer, judge, template and whether this run can gate (recomputed now, not at run time)."""
    scorer = job.summary.get("scorer") or next((r.get("scorer") for r in job.scores if r.get("scorer")), None)
    judges = sorted({str(r["judge"]) for r in job.scores if r.get("judge")})
    templates = sorted({str(r["template_version"]) for r in job.scores if r.get("template_version")})
    out: dict[str, Any] = {"scorer": scorer, "judge": judges[0] if len(judges) == 1 else (judges or None),
                           "template_version": templates[0] if len(templates) == 1 else (templates or None),
                           "judge_instrument": job.summary.get("judge_instrument"),
                           "calibration_kappa": None, "calibration": None, "gate_eligible": False,
                           "gate_ineligible_reason": None}
    if scorer == "heuristic_triage":
        out["gate_ineligible_reason"] = "scorer=heuristic_triage is triage only and can never gate; rerun with scorer=llm"
    elif scorer == "verifiable":  # exact checks of the instruction's definition: nothing to calibrate
        out.update(gate_eligible=True, calibration="scorer=verifiable is exact: there is no judgment to calibrate",
                   judge_instrument=job.summary.get("scorer_instrument"))
    elif scorer != "llm":
        out["gate_ineligible_reason"] = f"unknown scorer={scorer!r}; only scorer=llm or scorer=verifiable can gate"
    elif len(judges) != 1 or len(templates) != 1:
        out["gate_ineligible_reason"] = (f"scores mix judges {judges} / templates {templates}; "
                                         "rescore the run with one judge and one template")
    else:
        ok, reason, kappa = lookup(judges[0], templates[0], t.min_kappa, instrument=job.summary.get("judge_instrument"),
                                   min_items=t.min_calibration_items)
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
        elif "not_scored" in (va[i], vb[i]):
            out.append({"item_id": i, "reason": "not_scored (not declared verifiable)"})
        elif va[i] == "error" or vb[i] == "error":
            who = " and ".join(m for m, v in ((a, va[i]), (b, vb[i])) if v == "error")
            out.append({"item_id": i, "reason": f"verdict=error for {who}"})
    return out


def _paired_stats(va: Mapping[str, str], vb: Mapping[str, str], clusters: Mapping[str, str],
                  t: GateThresholds) -> dict[str, Any]:
    """Item- and cluster-level statistics of b vs a over ids scored (without error) for both.

    ``power_observed``: Connor power of the exact McNemar test at this n for the OBSERVED discordance
    (p10 = a_only/n, p01 = b_only/n), divided by the design effect of the paired differences.
    """
    usable = sorted(i for i in va.keys() & vb.keys() if va[i] in ("pass", "fail") and vb[i] in ("pass", "fail"))
    table = paired_table({i: va[i] == "pass" for i in usable}, {i: vb[i] == "pass" for i in usable})
    mc = mcnemar_exact(table.a_only, table.b_only)
    n = table.n_paired
    out: dict[str, Any] = {
        "n_paired": n, "a_only": table.a_only, "b_only": table.b_only, "both": table.both, "neither": table.neither,
        "n_discordant": mc.n_discordant, "success_a": table.success_a if n else None,
        "success_b": table.success_b if n else None, "mcnemar_p": mc.p_value, "mcnemar_mid_p": mc.mid_p_value,
        "cohens_h": cohens_h(table.success_b, table.success_a) if n else None,
        "n_clusters": 0, "cluster_p": 1.0, "cluster_method": None, "p": mc.p_value, "diff": None,
        "diff_ci95": None, "diff_ci95_iid": None, "icc": None, "design_effect": 1.0,
        "power_observed": 0.0, "underpowered": True}
    if not n:
        return out
    xa = np.array([va[i] == "pass" for i in usable])
    xb = np.array([vb[i] == "pass" for i in usable])
    cl = [clusters.get(i, i) for i in usable]
    perm = cluster_permutation_test(xb, xa, cl)
    d = xb.astype(float) - xa.astype(float)
    ci = cluster_mean(d, cl)
    z = 1.959963984540054
    deff = icc_anova(d, cl)
    power = paired_power(table.b_only / n, table.a_only / n, max(1, math.floor(n / deff.design_effect)),
                         t.mcnemar_alpha)
    out.update(n_clusters=len(set(cl)), cluster_p=perm.p_value, cluster_method=perm.method,
               p=max(mc.p_value, perm.p_value), diff=ci.estimate, diff_ci95=[ci.low, ci.high],
               diff_ci95_iid=[max(-1.0, ci.estimate - z * ci.se_iid), min(1.0, ci.estimate + z * ci.se_iid)]
               if math.isfinite(ci.se_iid) else None,
               icc=deff.icc, design_effect=deff.design_effect, power_observed=power,
               underpowered=power < UNDERPOWERED_BELOW)
    return out


def _dropped(va: Mapping[str, str], vb: Mapping[str, str]) -> dict[str, int]:
    """How many items a pair lost, and why (each item counted once)."""
    shared = va.keys() & vb.keys()
    return {"error": sum(1 for i in shared if "error" in (va[i], vb[i])),
            "unpaired": len(va.keys() ^ vb.keys()),
            "not_scored": sum(1 for i in shared if "not_scored" in (va[i], vb[i]) and "error" not in (va[i], vb[i]))}


def _find_primaries(primary: Sequence[Mapping[str, str]] | None, models: list[dict[str, Any]],
                    warnings: list[str]) -> tuple[list[tuple[str, str, str]], str, str | None]:
    """(control, treatment, kind) of the primary pairs, where they came from, and why none (if so)."""
    labels = [m["model"] for m in models]
    if primary:
        absent = [p for p in primary if p["control"] not in labels or p["treatment"] not in labels]
        if absent:
            named = "; ".join(f"{p['treatment']} vs {p['control']}" for p in absent)
            return [], "pre-registered", (f"the pre-registered primary pair(s) {named} are not in this sweep "
                                          f"(models: {', '.join(labels) or 'none'}); the gate needs exactly those runs")
        return [(p["control"], p["treatment"], str(p.get("kind") or "gap")) for p in primary], "pre-registered", None
    base = next((m for m in models if m["kind"] == "base"), None)
    instruct = next((m for m in models if m["kind"] == "instruct"), None)
    if base is None or instruct is None:
        kinds = ", ".join(f"{m['model']}={m['kind']}" for m in models) or "no models"
        return [], "none", f"the gate needs one base-kind and one instruct-kind model; this sweep has {kinds}"
    warnings.append(f"no pre-registered primary pair ({PRIMARY_FILE}): the gate uses the first base-kind and the "
                    "first instruct-kind model; declare gate.primary in the experiment config")
    return ([(base["model"], instruct["model"], "gap")], "first base-kind vs first instruct-kind (not pre-registered)",
            None)


def _gate(models: list[dict[str, Any]], scores: Mapping[str, ModelScores], primaries: list[tuple[str, str, str]],
          source: str, none_reason: str | None, t: GateThresholds) -> dict[str, Any]:
    """The gate on the primary pair(s); with k primaries each is tested at alpha / k (Bonferroni)."""
    if none_reason is not None:
        return {"verdict": "NOT_APPLICABLE", "reason": none_reason, "reasons": [none_reason],
                "primary_source": source}
    k = len(primaries)
    tk = dataclasses.replace(t, mcnemar_alpha=t.mcnemar_alpha / k) if k > 1 else t
    by_model = {m["model"]: m for m in models}
    results = []
    for control, treatment, kind in primaries:
        s_base, s_ins = scores[control], scores[treatment]
        extra = [f"{role} ({m['model']}): {m['gate_ineligible_reason']}"
                 for role, m in (("base", by_model[control]), ("instruct", by_model[treatment]))
                 if m["scorer"] == "llm" and not m["gate_eligible"] and m["gate_ineligible_reason"]]
        out = evaluate_gate(s_base, s_ins, tk, kind).to_dict()
        if extra:  # the calibration store's own words say what to run next
            kept = out["reasons"] if out["verdict"] == "NOT_ELIGIBLE" else []  # PASS/FAIL reasons are the checks
            out["verdict"] = "NOT_ELIGIBLE"
            out["reasons"] = kept + [r for r in extra if r not in kept]
        out["calibration"] = {m["model"]: {k2: m.get(k2) for k2 in ("judge", "template_version", "calibration_kappa",
                                                                   "gate_eligible", "gate_ineligible_reason")}
                              for m in (by_model[control], by_model[treatment])}
        out["primary_source"] = source
        out["n_primaries"] = k
        results.append(out)
    gate = dict(results[0])
    if k > 1:
        gate["primaries"] = results
        if any(r["verdict"] != "PASS" for r in results) and gate["verdict"] == "PASS":
            gate["verdict"] = "FAIL"
            gate["reasons"] = [f"primary {r['instruct_model']} vs {r['base_model']}: {r['verdict']}" for r in results
                               if r["verdict"] != "PASS"]
    return gate


def truncation_pair(summary_a: Mapping[str, Any], summary_b: Mapping[str, Any]) -> dict[str, Any]:
    """Each arm's truncation rate, their gap, and whether it exceeds :data:`TRUNCATION_FLAG`."""
    ra, rb = ((s.get("truncation") or {}).get("rate") for s in (summary_a, summary_b))
    gap = abs(ra - rb) if ra is not None and rb is not None else None
    # rounded so that 0.3 - 0.2 (0.09999999999999998) and exactly 10 points are not "more than"
    return {"truncation_rates": [ra, rb], "truncation_gap": gap,
            "truncation_flagged": gap is not None and round(gap, 12) > TRUNCATION_FLAG}


def build_comparison(jobs: Sequence[JobRecords], thresholds: GateThresholds | None = None, *,
                     missing: Sequence[dict[str, Any]] = (), calibration: CalibrationLookup | None = None,
                     sweep_dir: str | None = None,
                     primary: Sequence[Mapping[str, str]] | None = None,
                     registration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compare the models of finished eval jobs, paired by item id.

    The gate decides only with the sealed registration (``primary.json``, see
    :mod:`posttrain.analysis.registration`): its pairs, kinds and thresholds. Without one, or when
    the jobs ran under another one, or ``thresholds`` differ from the registered ones, everything is
    still computed and shown, but the record says ``registration.registered: false`` ("not the
    registered analysis") and the gate is NOT_ELIGIBLE with the reasons.

    Args:
        jobs: the jobs in sweep order (the order fixes pair orientation).
        thresholds: the gate's numbers asked for; None: the registered ones (defaults without a registration).
        missing: jobs of the sweep that could not be compared, each ``{"job", "reason"}``.
        calibration: judge calibration lookup; default the store under ``POSTTRAIN_HOME``.
        sweep_dir: recorded as is.
        primary: without a registration only: the primary pairs ``[{"treatment", "control", "kind"}]``
            to show; None: the first base-kind vs the first instruct-kind model. Either way NOT_ELIGIBLE.
        registration: the parsed ``primary.json``.

    Returns:
        The comparison record (see ``docs/comparisons.md``); plain JSON types only.
    """
    from posttrain.analysis.registration import (
        NOT_REGISTERED,
        registered_thresholds,
        registration_problems,
        registration_sha256,
    )

    reg_problems = registration_problems(registration, jobs, thresholds)
    secondary: list[dict[str, str]] = []
    t = thresholds or GateThresholds()
    if registration is not None:
        primary = list(registration.get("primary") or [])
        secondary = list(registration.get("secondary") or [])
        if thresholds is None:
            try:
                t = registered_thresholds(registration)
            except (KeyError, TypeError, ValueError):
                t = GateThresholds()  # registration_problems already names the defect
    lookup = calibration or default_calibration
    warnings: list[str] = []
    labels = [j.summary.get("model") or j.name for j in jobs]
    # One model under several prompt formats (a sweep over prompt=): the format names each run
    fmts = [(lab, j.summary.get("prompt_format")) for lab, j in zip(labels, jobs, strict=True)]
    labels = [lab if labels.count(lab) == 1 else f"{lab}@{f}" if f and fmts.count((lab, f)) == 1 else f"{lab}@{j.name}"
              for (lab, f), j in zip(fmts, jobs, strict=True)]
    rows: dict[str, list[dict[str, Any]]] = {}  # label -> one score row per item id (the last one)
    verdicts: dict[str, dict[str, str]] = {}
    category: dict[str, str] = {}
    clusters: dict[str, str] = {}
    models: list[dict[str, Any]] = []
    scores: dict[str, ModelScores] = {}
    for label, job in zip(labels, jobs, strict=True):
        rows[label] = list({r["item_id"]: r for r in job.scores}.values())
        n_dup = len(job.scores) - len(rows[label])
        if n_dup:
            warnings.append(f"{label}: scores.jsonl repeats item ids ({n_dup} extra row(s)); such a run cannot gate")
        verdicts[label] = {r["item_id"]: r["verdict"] for r in rows[label]}
        category |= {r["item_id"]: r.get("category") or "uncategorised" for r in rows[label]}
        clusters |= {str(it["id"]): c for it in (job.items or []) if (c := item_cluster(it))}
        info = job.summary.get("benchmark_info") or {}
        judging = _judging(job, t, lookup)
        models.append({"model": label, "job": job.name, "kind": job.summary.get("model_kind"),
                       **_counts(rows[label]), "n_duplicate_rows": n_dup, **judging,
                       "truncation": job.summary.get("truncation"),  # None: a record from before it was kept
                       "benchmark": {k: info.get(k) for k in ("name", "split", "limit", "n", "sha256")}})
        scores[label] = scores_from_records(label, job.summary, job.scores, job.items,
                                            calibration_kappa=judging["calibration_kappa"])
    if len({(m["benchmark"]["sha256"], m["benchmark"]["split"], m["benchmark"]["n"]) for m in models}) > 1:
        warnings.append("the jobs did not evaluate the same items (benchmark sha256/split/n differ); "
                        "only ids scored for both models of a pair are compared, and no such pair can gate")
    if models and not clusters:
        warnings.append("no item clusters recorded (items.jsonl with meta.template / meta.task): each item is "
                        "treated as its own cluster, so cluster-level results equal item-level ones")
    cats = sorted(set(category.values()))
    primaries, source, none_reason = _find_primaries(primary, models, warnings)
    primary_keys = {frozenset(p[:2]) for p in primaries}
    # The registered secondary family; without one every non-primary pair is secondary (as before)
    secondary_keys = {frozenset((p["control"], p["treatment"])): p for p in secondary}
    summaries = dict(zip(labels, (j.summary for j in jobs), strict=True))

    pairs, cat_pairs = [], []
    for a, b in itertools.combinations(labels, 2):
        va, vb = verdicts[a], verdicts[b]
        key = frozenset((a, b))
        family = ("primary" if key in primary_keys else "secondary" if key in secondary_keys or not secondary_keys
                  else "exploratory")
        pair = {"a": a, "b": b, "family": family, "exploratory": family != "primary",
                **_paired_stats(va, vb, clusters, t), "dropped": _dropped(va, vb), "unpaired": _unpaired(va, vb, a, b),
                "prompt_formats": [summaries[a].get("prompt_format"), summaries[b].get("prompt_format")],
                "decoding_differs": decoding_differences(summaries[a].get("decoding"), summaries[b].get("decoding"),
                                                         (summaries[a].get("prompt_format"),
                                                          summaries[b].get("prompt_format"))),
                **truncation_pair(summaries[a], summaries[b])}
        if pair["truncation_flagged"]:
            ra, rb = pair["truncation_rates"]
            warnings.append(f"{a} vs {b}: truncation (finish_reason=length) {ra:.1%} vs {rb:.1%}, more than "
                            f"{TRUNCATION_FLAG * 100:.0f} points apart: the arms differ in how often max_new_tokens cut the reply, "
                            "so the comparison is confounded with the length budget; rerun with a larger "
                            "generation.max_new_tokens")
        if key in secondary_keys:  # the registered direction: treatment > control
            hyp = secondary_keys[key]
            pair["hypothesis"] = f"{hyp['treatment']} > {hyp['control']}"
            pair["direction"] = 1 if hyp["treatment"] == b else -1
        pairs.append(pair)
        for c in cats:
            ca = {i: v for i, v in va.items() if category[i] == c}
            cb = {i: v for i, v in vb.items() if category[i] == c}
            cat_pairs.append({"a": a, "b": b, "category": c, "family": "per_category", "exploratory": True,
                              **_paired_stats(ca, cb, clusters, t)})
    for fam in ("primary", "secondary", "exploratory"):  # Holm on the conservative p, within each family
        members = [p for p in pairs if p["family"] == fam]
        for p, adj in zip(members, holm([p["p"] for p in members]), strict=True):
            p["p_holm"] = adj
    for p in pairs:  # a registered secondary hypothesis holds when Holm-significant in its direction
        if "hypothesis" in p:
            p["supported"] = bool(p["diff"] is not None and p["diff"] * p["direction"] > 0
                                  and p["p_holm"] < t.mcnemar_alpha)
    for p, adj in zip(cat_pairs, holm([p["p"] for p in cat_pairs]), strict=True):
        p["p_holm"] = adj
    per_model_cat = {m: {c: _counts([r for r in rows[m] if category[r["item_id"]] == c]) for c in cats}
                     for m in labels}
    gate = _gate(models, scores, primaries, source, none_reason, t)
    if reg_problems:  # shown, never deciding: the analysis is not the one registered before the data
        gate["registered"] = False
        if gate["verdict"] != "NOT_APPLICABLE":
            kept = gate["reasons"] if gate["verdict"] == "NOT_ELIGIBLE" else []
            gate["verdict"] = "NOT_ELIGIBLE"
            gate["reasons"] = [f"{NOT_REGISTERED}: {r}" for r in reg_problems] + kept
    else:
        gate["registered"] = True
    n_items = gate.get("n_paired") or max((m["n"] for m in models), default=0)
    deff = ((gate.get("observed") or {}).get("design_effect") or 1.0)
    return {
        "version": VERSION,
        "sweep_dir": sweep_dir,
        "thresholds": asdict(t) | {"min_paired_required": t.required_paired},
        "primary": {"pairs": [{"control": c, "treatment": tr, "kind": k} for c, tr, k in primaries], "source": source,
                    "secondary": secondary},
        "registration": {"registered": not reg_problems, "problems": reg_problems,
                         "sha256": registration_sha256(registration) if registration is not None else None,
                         "registered_at": (registration or {}).get("registered_at"),
                         "benchmark": (registration or {}).get("benchmark")},
        "models": models,
        "pairs": pairs,
        "per_category": {"categories": cats, "models": per_model_cat, "pairs": cat_pairs},
        "gate": gate,
        "power": ({"n_items": n_items, "design_effect": deff,
                   **asdict(design_power(t.base_max_success, t.instruct_min_success, n_items, t.mcnemar_alpha)),
                   "note": power_note(n_items, t, design_effect=deff)} if n_items else None),
        "sentinel": {m: j.sentinel for m, j in zip(labels, jobs, strict=True) if j.sentinel},
        "length_bias": {m: j.summary["length_bias"] for m, j in zip(labels, jobs, strict=True)
                        if j.summary.get("length_bias")},
        "spot_check": {m: j.summary["spot_check"] for m, j in zip(labels, jobs, strict=True)
                       if isinstance(j.summary.get("spot_check"), dict)},
        "missing_jobs": list(missing),
        # verifiable vs LLM-judge verdicts on the same replies: kappa and the disagreeing items
        "scorer_agreement": sweep_agreement([(lab, j.summary, j.scores) for lab, j in zip(labels, jobs, strict=True)]),
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------------------
# Power before spending


def power_note(n_items: int, gate: Any, n_categories: int = N_CATEGORIES, design_effect: float = 1.0) -> str:
    """One paragraph: the power of the paired design for the gate's effect, overall and per category.

    The effect is base at ``gate.base_max_success`` vs instruct at ``gate.instruct_min_success``,
    tested by the exact McNemar test at ``gate.mcnemar_alpha`` (``stats.design_power``, which
    assumes independent outcomes within an item: conservative when they correlate positively).
    Clustered items are worth fewer independent ones: with a design effect D (from the observed
    intra-cluster correlation, ``stats.icc_anova``) the power is that of n / D items and the
    conversations needed are D times as many.

    Args:
        n_items: conversations every model answers (the pairs of the design).
        gate: anything with ``base_max_success``, ``instruct_min_success`` and ``mcnemar_alpha``
            (``GateThresholds``, the ``gate`` config node).
        n_categories: categories the items split into evenly (4 for the conversation benchmark).
        design_effect: 1 + (m0 − 1)·ICC of the paired differences; 1.0 before any data.
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
    if design_effect > 1.0:
        n_eff = max(1, math.floor(n_items / design_effect))
        de = design_power(pb, pi, n_eff, alpha)
        text += (f"Items come in clusters: the observed design effect {design_effect:.2f} makes them worth "
                 f"{n_items} / {design_effect:.2f} = {n_eff} independent ones ({de.power:.0%} power); 80% power needs "
                 f"{math.ceil(n80 * design_effect)} conversations. ")
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
