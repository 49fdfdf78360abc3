"""The capability atlas: base vs instruct, capability by capability, each arm under a fixed or chosen format.

One sweep (``+experiment=atlas``) evaluates, on every capability benchmark and on both of its
splits, the base model under each base-safe prompt format and the instruct model under its own
format (and, where the sweep runs them, the instruct model under the base formats: exploratory
columns of the heatmap). For each capability:

1. the base model's format is the one with the highest success rate on the **train** split (ties:
   the first in the registered ``base_formats`` order) — :func:`choose_format` sees train cells only;
2. base@that-format and instruct@its-format are compared on the **test** split with the gate's own
   code (:func:`posttrain.analysis.gates.evaluate_gate`, kind ``gap``);
3. the capabilities form one family: each gate's p (the larger of the observed and worst-case
   ``gate_p``) is Holm-adjusted across all registered capabilities (a capability without a p counts
   as p = 1), and a capability PASSes only when its gap gate PASSes and its Holm p < alpha.

Everything that decides is in ``primary.json``, written before any job runs
(:func:`atlas_registration`): the capabilities, the two models, the candidate formats, the selection
rule, the family, the thresholds, and each (benchmark, role)'s identity. Records in, dict out;
:func:`write_atlas` writes ``atlas.json``, ``atlas.md`` and the heatmap (a failing plot is recorded,
never fatal). :func:`rebuild_atlas` (``posttrain-report DIR`` on an atlas sweep) writes the same files
again from the job records alone, and refuses when the records are no longer the sealed analysis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.analysis.comparison import (
    JobRecords,
    SweepRecords,
    _judging,
    default_calibration,
    format_number,
)
from posttrain.analysis.gates import GateThresholds, evaluate_gate, item_cluster, scores_from_records
from posttrain.analysis.registration import (
    BENCHMARK_KEYS,
    NOT_REGISTERED,
    registered_thresholds,
    registration_problems,
)
from posttrain.analysis.stats import cluster_mean, holm, wilson_ci
from posttrain.records import write_json

log = logging.getLogger(__name__)

VERSION = "atlas-v1"
ROLES = ("train", "test")
SELECTION_RULE = ("base format = highest success rate on the train split among base_formats; ties go to the "
                  "first in base_formats; a format without a train result cannot be chosen")
HEATMAP = "atlas_heatmap.png"


# ---------------------------------------------------------------------------------------------
# Registration (before any job runs)


def benchmark_record(name: str, split: str, limit: int | None, path: str | None = None) -> dict[str, Any]:
    """A (benchmark, split, limit)'s identity as a job records it: file sha256, n, id and cluster hashes."""
    from posttrain.analysis.gates import cluster_info, item_ids_sha256
    from posttrain.benchmarks import load_benchmark

    out: dict[str, Any] = {"name": name, "split": split, "limit": limit}
    bench = load_benchmark(name, split=split, limit=limit, path=path)
    items = [it.to_dict() for it in bench.items]
    return out | {"sha256": bench.sha256, "n": len(items), "item_ids_sha256": item_ids_sha256([str(i["id"]) for i in items]),
                  "clusters_sha256": cluster_info(items)["clusters_sha256"]}


def resolve_arms(atlas: Mapping[str, Any], models: Sequence[str], kinds: Mapping[str, str]) -> tuple[str, str]:
    """The base and instruct model names: as configured, else the swept model of that kind, else the only one.

    Raises:
        ValueError: the arms cannot be told apart from the sweep (the message names the setting).
    """
    def pick(key: str, kind: str) -> str:
        if atlas.get(key):
            name = str(atlas[key])
            if name not in models:
                raise ValueError(f"atlas.{key}={name} is not among the swept models {list(models)}: add it to the "
                                 "sweep (model=...) or set atlas.{key} to one of them")
            return name
        of_kind = [m for m in models if kinds.get(m) == kind]
        if len(of_kind) == 1:
            return of_kind[0]
        if len(models) == 1:  # one model (SmolLM2): its base-style formats play the base arm
            return models[0]
        raise ValueError(f"cannot tell the atlas's {kind} model among {list(models)} (kinds {dict(kinds)}): set "
                         f"atlas.{key}=<model name>")
    return pick("base", "base"), pick("instruct", "instruct")


def atlas_registration(atlas: Mapping[str, Any], *, models: Sequence[str], kinds: Mapping[str, str],
                       thresholds: GateThresholds, gate: Any = None,
                       paths: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The content of an atlas sweep's ``primary.json``: one ``gap`` pair per capability, one Holm family.

    Args:
        atlas: the ``atlas`` config block as a dict.
        models: the swept model names; kinds: model -> "base" | "instruct".
        thresholds: the gate's numbers (validated).
        gate: the ``gate`` config as a dict (kept for the reader).
        paths: benchmark -> benchmark.path (public files); default none.

    Raises:
        ValueError: a capability without both splits, one split used for both roles, or arms that cannot be told.
    """
    from posttrain.analysis.registration import registration_record

    caps = [str(c) for c in atlas.get("capabilities") or []]
    if not caps:
        raise ValueError("atlas.capabilities is empty: name the benchmarks the atlas compares")
    splits = atlas.get("splits") or {}
    for c in caps:
        s = splits.get(c) or {}
        if not all(s.get(r) for r in ROLES):
            raise ValueError(f"atlas.splits.{c} must name a train and a test split, got {dict(s)}")
        if s["train"] == s["test"]:
            raise ValueError(f"atlas.splits.{c}: train and test are both {s['train']!r}; the base format would be "
                             "chosen on the reported items")
    base, instruct = resolve_arms(atlas, models, kinds)
    fmts, ifmt = [str(f) for f in atlas.get("base_formats") or []], str(atlas.get("instruct_format"))
    if not fmts:
        raise ValueError("atlas.base_formats is empty: name the base-safe formats to choose from")
    limits = atlas.get("limits") or {}
    benchmarks = {c: {r: benchmark_record(c, splits[c][r], limits.get(r), (paths or {}).get(c)) for r in ROLES}
                  for c in caps}
    control = f"{base}@best({'|'.join(fmts)}) on train"
    primary = [{"treatment": f"{instruct}@{ifmt}", "control": control, "kind": "gap"} for _ in caps]
    record = registration_record(primary, thresholds, benchmark=None, gate=gate)
    record["atlas"] = {
        "version": VERSION, "capabilities": caps, "base": base, "instruct": instruct, "base_formats": fmts,
        "instruct_format": ifmt, "selection": SELECTION_RULE,
        "family": {"method": "holm", "alpha": thresholds.mcnemar_alpha, "size": len(caps),
                   "p": "max(observed gate_p, worst-case gate_p); a capability without one counts as 1"},
        "splits": {c: dict(splits[c]) for c in caps}, "limits": dict(limits),
        "scorers": dict(atlas.get("scorers") or {}), "benchmarks": benchmarks,
    }
    return record


# ---------------------------------------------------------------------------------------------
# Reading the sweep


@dataclass(frozen=True)
class Cell:
    """One job of the atlas: a capability, a role (split), a model under a format, and its rate."""

    job: JobRecords
    capability: str
    role: str
    model: str
    fmt: str
    n: int  # pass + fail (errors and not_scored are outside the rate)
    n_pass: int
    rate: float | None
    ci95: tuple[float, float] | None  # cluster-robust (t on G-1 df), clipped to [0, 1]
    n_clusters: int
    wilson95: tuple[float, float] | None  # items as independent, clipped to [0, 1]: the heatmap's interval

    @property
    def label(self) -> str:
        return f"{self.model}@{self.fmt}"


def cell_of(job: JobRecords, capability: str, role: str) -> Cell:
    """A job's rate on the items it decided, with a cluster-robust interval (the template is the cluster)."""
    clusters = {str(i["id"]): item_cluster(i) for i in (job.items or [])}
    rows = list({r["item_id"]: r for r in job.scores}.values())
    decided = [r for r in rows if r.get("verdict") in ("pass", "fail")]
    ys = [1.0 if r["verdict"] == "pass" else 0.0 for r in decided]
    cl = [clusters.get(str(r["item_id"])) or str(r["item_id"]) for r in decided]
    rate = ci = wilson = None
    g = 0
    if ys:
        m = cluster_mean(ys, cl, bounds=(0.0, 1.0))
        rate, g = m.estimate, m.n_clusters
        ci = (max(0.0, min(m.low, rate)), min(1.0, max(m.high, rate)))
        # statsmodels puts Wilson's bounds for 0/n and n/n about 1e-17 outside [0, 1] (docs/comparisons.md): clip
        lo, hi = wilson_ci(int(sum(ys)), len(ys))
        wilson = (max(0.0, min(lo, rate)), min(1.0, max(hi, rate)))
    ident = job.summary.get("model_identity") or {}
    return Cell(job, capability, role, str(job.summary.get("model") or ident.get("name") or job.name),
                str(job.summary.get("prompt_format")), len(ys), int(sum(ys)), rate, ci, g, wilson)


def cells_of(jobs: Sequence[JobRecords], atlas: Mapping[str, Any]) -> tuple[list[Cell], list[str]]:
    """Place each job by its recorded benchmark (name, split) under the registered capability and role."""
    by_split = {(c, s): r for c, rs in (atlas.get("splits") or {}).items() for r, s in rs.items()}
    cells, warnings = [], []
    for j in jobs:
        info = j.summary.get("benchmark_info") or {}
        key = (str(info.get("name")), str(info.get("split")))
        if key not in by_split or key[0] not in atlas.get("capabilities", []):
            warnings.append(f"job {j.name} evaluated {key[0]}/{key[1]}, which the atlas did not register: left out")
            continue
        cells.append(cell_of(j, key[0], by_split[key]))
    return cells, warnings


def choose_format(train: Sequence[Cell], base: str, formats: Sequence[str]) -> dict[str, Any]:
    """The base model's format for one capability, from its TRAIN cells only.

    Returns ``{"format": name or None, "train_rates": {format: rate}, "reason"}``; ties go to the first
    format in ``formats`` (the registered order), so the choice is a function of the train results alone.
    """
    if any(c.role != "train" for c in train):
        raise ValueError("choose_format takes train cells only: the test split must not choose the format")
    rates = {f: next((c.rate for c in train if c.model == base and c.fmt == f and c.rate is not None), None)
             for f in formats}
    known = [(r, -i, f) for i, f in enumerate(formats) if (r := rates[f]) is not None]
    if not known:
        return {"format": None, "train_rates": rates, "reason": "no train result for any base format"}
    best = max(known)
    return {"format": best[2], "train_rates": rates,
            "reason": f"highest train success rate ({best[0]:.3f})" + (" (tie: first registered)" if
                                                                       sum(k[0] == best[0] for k in known) > 1 else "")}


def _gate_row(base: Cell, instruct: Cell, t: GateThresholds) -> dict[str, Any]:
    """The gap gate on the test split, with the comparison's own eligibility rules (calibrated judge or exact)."""
    s_base = scores_from_records(base.label, base.job.summary, base.job.scores, base.job.items)
    s_ins = scores_from_records(instruct.label, instruct.job.summary, instruct.job.scores, instruct.job.items)
    out = evaluate_gate(s_base, s_ins, t, "gap").to_dict()
    extra = []
    for role, cell in (("base", base), ("instruct", instruct)):
        j = _judging(cell.job, t, default_calibration)
        if j["scorer"] == "llm" and not j["gate_eligible"] and j["gate_ineligible_reason"]:
            extra.append(f"{role} ({cell.label}): {j['gate_ineligible_reason']}")
    if extra:
        out["reasons"] = (out["reasons"] if out["verdict"] == "NOT_ELIGIBLE" else []) + extra
        out["verdict"] = "NOT_ELIGIBLE"
    return out


def _identity_problems(cells: Sequence[Cell], atlas: Mapping[str, Any]) -> list[str]:
    """Each job against the benchmark identity registered for its (capability, role)."""
    problems = []
    for c in cells:
        reg = (atlas.get("benchmarks") or {}).get(c.capability, {}).get(c.role) or {}
        info = c.job.summary.get("benchmark_info") or {}
        off = [f"{k} {info[k]!r} vs {reg[k]!r}" for k in BENCHMARK_KEYS if k in info and reg.get(k) is not None
               and info[k] != reg[k]]
        if off:
            problems.append(f"job {c.job.name} evaluated another {c.capability}/{c.role} than the registered one: "
                            + "; ".join(off))
    return problems


def _registered_atlas(registration: Mapping[str, Any] | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """``(registration, its atlas block)``; ValueError when primary.json registers no atlas."""
    if registration is None or not isinstance(registration.get("atlas"), Mapping):
        raise ValueError("this sweep has no atlas registration (primary.json with an `atlas` block): run it with "
                         "+experiment=atlas or +experiment=atlas_smollm2")
    return registration, registration["atlas"]


def sealing_problems(registration: Mapping[str, Any] | None, jobs: Sequence[JobRecords]) -> list[str]:
    """Why ``jobs`` are not the analysis ``registration`` sealed (empty when they are).

    The checks :func:`build_atlas` makes before it lets a row decide: primary.json is the registration
    every job ran under (its sha256 is in each summary), its thresholds are valid, and each job evaluated
    the benchmark identity registered for its (capability, role).

    Raises:
        ValueError: ``registration`` has no ``atlas`` block.
    """
    registration, atlas = _registered_atlas(registration)
    return registration_problems(registration, jobs, None) + _identity_problems(cells_of(jobs, atlas)[0], atlas)


def build_atlas(jobs: Sequence[JobRecords], registration: Mapping[str, Any] | None, *,
                missing: Sequence[Mapping[str, Any]] = (), sweep_dir: str | None = None) -> dict[str, Any]:
    """The atlas record: one row per registered capability, the heatmap's cells, the registration's status."""
    registration, atlas = _registered_atlas(registration)
    t = registered_thresholds(registration)
    cells, warnings = cells_of(jobs, atlas)
    problems = registration_problems(registration, jobs, None) + _identity_problems(cells, atlas)
    base, instruct, ifmt = atlas["base"], atlas["instruct"], atlas["instruct_format"]
    rows = []
    for cap in atlas["capabilities"]:
        here = [c for c in cells if c.capability == cap]
        choice = choose_format([c for c in here if c.role == "train"], base, atlas["base_formats"])
        test = {(c.model, c.fmt): c for c in here if c.role == "test"}
        b = test.get((base, choice["format"])) if choice["format"] else None
        i = test.get((instruct, ifmt))
        row: dict[str, Any] = {"capability": cap, "base_format": choice["format"], "train_rates": choice["train_rates"],
                               "choice_reason": choice["reason"], "base": base, "instruct": f"{instruct}@{ifmt}"}
        for side, cell in (("base", b), ("instruct", i)):
            row[f"{side}_label"] = cell.label if cell else None
            row[f"{side}_rate"] = cell.rate if cell else None
            row[f"{side}_ci95"] = list(cell.ci95) if cell and cell.ci95 else None
            row[f"{side}_n"] = cell.n if cell else 0
        if b is None or i is None:
            why = ("no base format could be chosen: " + choice["reason"]) if not choice["format"] else \
                  (f"no test result for base@{choice['format']}" if b is None else f"no test result for {instruct}@{ifmt}")
            row.update(gate={"verdict": "NOT_ELIGIBLE", "reasons": [why]}, p=None)
        else:
            g = _gate_row(b, i, t)
            ps = [a["gate_p"] for a in (g.get("observed") or {}, g.get("worst_case") or {}) if a.get("gate_p") is not None]
            obs = g.get("observed") or {}
            row.update(gate=g, p=max(ps) if ps else None, diff=obs.get("diff"), diff_ci95=obs.get("diff_ci95"),
                       n_paired=g.get("n_paired"), cohens_h=g.get("cohens_h"))
        rows.append(row)
    adjusted = holm([r["p"] if r["p"] is not None else 1.0 for r in rows])
    for r, ph in zip(rows, adjusted, strict=True):
        verdict, reasons = r["gate"]["verdict"], list(r["gate"]["reasons"])
        if verdict == "PASS" and ph >= t.mcnemar_alpha:
            verdict = "FAIL"
            reasons = [f"Holm-adjusted p {ph:.3g} >= alpha {t.mcnemar_alpha} across the family of {len(rows)} "
                       "capabilities"]
        if problems and verdict != "NOT_ELIGIBLE":
            verdict, reasons = "NOT_ELIGIBLE", [f"{NOT_REGISTERED}: " + "; ".join(problems)]
        r.update(p_holm=ph, verdict=verdict, reasons=reasons)
    return {"version": VERSION, "sweep_dir": sweep_dir, "registered": not problems, "registration_problems": problems,
            "atlas": {k: atlas[k] for k in ("capabilities", "base", "instruct", "base_formats", "instruct_format",
                                            "selection", "family", "splits", "limits", "scorers")},
            "thresholds": registration.get("thresholds"), "rows": rows,
            "cells": [{"capability": c.capability, "role": c.role, "label": c.label, "model": c.model, "format": c.fmt,
                       "job": c.job.name, "n": c.n, "n_pass": c.n_pass, "rate": c.rate,
                       "ci95": list(c.ci95) if c.ci95 else None, "n_clusters": c.n_clusters,
                       "wilson95": list(c.wilson95) if c.wilson95 else None} for c in cells],
            "missing_jobs": [dict(m) for m in missing], "warnings": warnings}


# ---------------------------------------------------------------------------------------------
# Rendering and files


def _rate(rate: float | None, ci: Sequence[float] | None) -> str:
    if rate is None:
        return "—"
    return f"{rate:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{rate:.3f}"


def render_markdown(a: dict[str, Any]) -> str:
    """atlas.md, from the record alone."""
    at = a["atlas"]
    out = ["# Capability atlas", ""]
    if not a["registered"]:
        out += [f"**This is {NOT_REGISTERED}**: " + "; ".join(a["registration_problems"]), ""]
    out += [f"Base `{at['base']}` under its best of {', '.join(f'`{f}`' for f in at['base_formats'])} (chosen on each "
            f"benchmark's train split) vs instruct `{at['instruct']}@{at['instruct_format']}`, both reported on the "
            f"test split. One `gap` gate per capability; the {len(a['rows'])} capabilities are one Holm family at "
            f"alpha {at['family']['alpha']} (pre-registered in primary.json). Rates are on the items each run "
            "decided (pass + fail); intervals are cluster-robust (the template is the cluster), so a run whose items "
            "all pass or all fail shows a zero-width interval: see the Wilson interval in atlas.json and the heatmap.",
            ""]
    head = ["capability", "base format (train)", "base rate [cluster CI]", "instruct rate [cluster CI]",
            "diff [cluster CI]", "n paired", "p", "Holm p", "verdict"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in a["rows"]:
        out.append("| " + " | ".join([
            r["capability"], f"`{r['base_format']}`" if r["base_format"] else "—",
            _rate(r["base_rate"], r["base_ci95"]) + f" n={r['base_n']}",
            _rate(r["instruct_rate"], r["instruct_ci95"]) + f" n={r['instruct_n']}",
            _rate(r.get("diff"), r.get("diff_ci95")), format_number(r.get("n_paired")), format_number(r["p"]),
            format_number(r["p_holm"]), f"**{r['verdict']}**"]) + " |")
    out += ["", "## Why each verdict", ""]
    out += [f"- **{r['capability']}** ({r['verdict']}): " + "; ".join(r["reasons"]) for r in a["rows"]]
    fmts = at["base_formats"]
    out += ["", "## The format choice (train split only)", "",
            "| capability | " + " | ".join(fmts) + " | chosen |", "|" + "---|" * (len(fmts) + 2)]
    out += ["| " + r["capability"] + " | " + " | ".join(format_number(r["train_rates"].get(f)) for f in fmts)
            + " | " + (f"`{r['base_format']}` " if r["base_format"] else "none ") + f"({r['choice_reason']}) |"
            for r in a["rows"]]
    test = [c for c in a["cells"] if c["role"] == "test"]
    labels = list(dict.fromkeys(c["label"] for c in test))
    if labels:
        out += ["", "## Every model@format on the test split (exploratory)", "",
                "| capability | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
        for cap in at["capabilities"]:
            by = {c["label"]: c for c in test if c["capability"] == cap}
            out.append(f"| {cap} | " + " | ".join(_rate(by[x]["rate"], by[x]["ci95"]) if x in by else "—"
                                                  for x in labels) + " |")
    if a.get("files", {}).get("plots"):
        out += ["", *(f"![heatmap]({p})" for p in a["files"]["plots"])]
    if a.get("plot_errors"):
        out += ["", "## Plots not written", "", *(f"- {e['plot']}: {e['error']}" for e in a["plot_errors"])]
    if a["missing_jobs"] or a["warnings"]:
        out += ["", "## Missing jobs and warnings", "",
                *(f"- job {m.get('job')}: {m.get('reason')}" for m in a["missing_jobs"]), *(f"- {w}" for w in a["warnings"])]
    return "\n".join(out).rstrip() + "\n"


def heatmap_figure(a: dict[str, Any]) -> Any:
    """Capabilities x model@format on the test split; each cell its rate and cluster CI (clipped to [0, 1]);
    the two arms each row compares are outlined."""
    import numpy as np

    from posttrain.analysis.plots import _figure

    test = [c for c in a["cells"] if c["role"] == "test"]
    caps = list(a["atlas"]["capabilities"])
    labels = list(dict.fromkeys(c["label"] for c in test))
    if not labels:
        raise ValueError("no test-split results to draw")
    grid = np.full((len(caps), len(labels)), np.nan)
    text = [["" for _ in labels] for _ in caps]
    for c in test:
        i, j = caps.index(c["capability"]), labels.index(c["label"])
        if c["rate"] is not None:
            grid[i, j] = c["rate"]
            lo, hi = (min(max(float(x), 0.0), 1.0) for x in (c["wilson95"] or (c["rate"], c["rate"])))
            text[i][j] = f"{c['rate']:.2f}\n[{lo:.2f}, {hi:.2f}]"
    fig = _figure(min(16.0, 2.5 + 1.3 * len(labels)), 1.2 + 0.7 * len(caps))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(caps)), caps, fontsize=8)
    for i in range(len(caps)):
        for j in range(len(labels)):
            if text[i][j]:
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6,
                        color="white" if grid[i, j] < 0.6 else "black")
    for r in a["rows"]:
        for lab in (r["base_label"], r["instruct_label"]):
            if lab in labels:
                from matplotlib.patches import Rectangle

                ax.add_patch(Rectangle((labels.index(lab) - 0.5, caps.index(r["capability"]) - 0.5), 1, 1,
                                       fill=False, edgecolor="red", linewidth=1.5))
    ax.set_title("Test-split success rate [Wilson 95%]; outlined: the two arms each capability's gate compares",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return fig


def write_atlas(sweep_dir: str | Path, out_dir: str | Path | None = None, *, plots: bool = True,
                records: SweepRecords | None = None) -> dict[str, Any]:
    """Read the sweep, write atlas.json, atlas.md and the heatmap; return the record.

    Each capability's gate decision is appended to the ledger of attempts (as a comparison's is).
    A plot that fails is listed under ``plot_errors``; the JSON and markdown are written either way.

    Args:
        sweep_dir: the atlas sweep folder.
        out_dir: where to write; default the sweep folder.
        plots: also draw the heatmap.
        records: the sweep's records when the caller has read them already (:func:`rebuild_atlas`).
    """
    from posttrain.analysis.ledger import record_attempts
    from posttrain.analysis.sweep import load_sweep

    records = records if records is not None else load_sweep(sweep_dir)
    a = build_atlas(records.jobs, records.registration, missing=records.missing, sweep_dir=records.sweep_dir)
    by_job = {j.name: j.summary for j in records.jobs}
    for r in a["rows"]:
        g = r["gate"]
        if g.get("base_model") and g.get("instruct_model"):
            jobs = {c["label"]: by_job[c["job"]] for c in a["cells"] if c["capability"] == r["capability"]
                    and c["role"] == "test" and c["label"] in (r["base_label"], r["instruct_label"])}
            try:
                r["attempts"] = record_attempts({"gate": {**g, "verdict": r["verdict"], "registered": a["registered"]},
                                                 "sweep_dir": a["sweep_dir"]}, jobs)
            except Exception as exc:  # the ledger must not cost the atlas
                log.warning("gate ledger not updated for %s (%s)", r["capability"], exc)
    out = Path(out_dir) if out_dir is not None else Path(records.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, errors = [], []
    if plots:
        try:
            from posttrain.analysis.plots import png_bytes

            (out / HEATMAP).write_bytes(png_bytes(heatmap_figure(a)))
            images.append(HEATMAP)
        except Exception as exc:  # a plot never costs the records
            log.warning("atlas heatmap not drawn (%s: %s)", type(exc).__name__, exc)
            errors.append({"plot": HEATMAP, "error": f"{type(exc).__name__}: {exc}"})
    a["files"] = {"json": "atlas.json", "markdown": "atlas.md", "plots": images}
    a["plot_errors"] = errors
    write_json(out / "atlas.json", a)
    (out / "atlas.md").write_text(render_markdown(a), encoding="utf-8")
    return a


def atlas_sweep_signs(sweep_dir: str | Path) -> list[str]:
    """What marks ``sweep_dir`` as an atlas sweep (empty when nothing does): a primary.json with an ``atlas``
    block, an atlas.json, or a job config with an ``atlas`` block (``+experiment=atlas*``)."""
    from posttrain.analysis.comparison import PRIMARY_FILE

    sweep = Path(sweep_dir).expanduser()
    signs = []
    try:
        reg = json.loads((sweep / PRIMARY_FILE).read_text(encoding="utf-8"))
        if isinstance(reg, dict) and "atlas" in reg:
            signs.append(f"{PRIMARY_FILE} registers an atlas")
    except (OSError, ValueError):
        pass
    if (sweep / "atlas.json").is_file():
        signs.append("it holds an atlas.json")
    config = next(iter(sorted(sweep.glob("*/.hydra/config.yaml"))), None) if sweep.is_dir() else None
    if config is not None:
        from omegaconf import OmegaConf

        try:
            if OmegaConf.select(OmegaConf.load(config), "atlas") is not None:
                signs.append(f"its job config {config.parent.parent.name}/.hydra/config.yaml has an `atlas` block")
        except Exception:  # an unreadable config marks nothing; the other signs still count
            pass
    return signs


def rebuild_atlas(sweep_dir: str | Path, out_dir: str | Path | None = None, *, plots: bool = True) -> dict[str, Any]:
    """Rebuild an atlas sweep's atlas.json, atlas.md and heatmap from its job records alone.

    Reads each job folder's summary.json, scores.jsonl and items.jsonl and the sweep's primary.json;
    generates nothing, loads no model, calls no API. Unlike the sweep's callback (which always writes, and
    marks a row NOT_ELIGIBLE when the records are not the registered analysis), a rebuild is asked for
    after the fact, so it refuses to write anything when the seal is broken: no primary.json with an
    ``atlas`` block, a primary.json other than the one the jobs ran under (edited or replaced), or a job
    that evaluated another benchmark than the one registered for it. Each row's gate decision is appended
    to the ledger of attempts, as the callback's and ``posttrain-report``'s are: a rebuild is one more
    look at the same question, and the ledger counts it.

    Args:
        sweep_dir: the atlas sweep folder, e.g. multirun/2026-12-02/20-00-00.
        out_dir: where to write; default the sweep folder.
        plots: also draw the heatmap.

    Raises:
        ReportError: the folder holds no job folders, or the records are not the sealed analysis; the
            message names each problem and what to do, and nothing was written.
    """
    from posttrain.analysis.comparison import PRIMARY_FILE
    from posttrain.analysis.sweep import ReportError, load_sweep

    records = load_sweep(sweep_dir)
    sweep = records.sweep_dir
    if not records.jobs and not records.missing:
        raise ReportError(f"{sweep} holds no job folders (with summary.json or .hydra/); pass the sweep folder of a "
                          "`posttrain -m +experiment=atlas...` run, e.g. multirun/<date>/<time>")
    if records.registration is None or not isinstance(records.registration.get("atlas"), Mapping):
        found = "is missing or not JSON" if records.registration is None else "has no `atlas` block"
        if not (signs := atlas_sweep_signs(sweep)):
            raise ReportError(f"{sweep} is not an atlas sweep (its {PRIMARY_FILE} {found}): pass the folder of a "
                              "`posttrain -m +experiment=atlas...` run, or rebuild a comparison with posttrain-report; "
                              "nothing was written")
        raise ReportError(f"{sweep} is an atlas sweep ({'; '.join(signs)}), but its {PRIMARY_FILE} {found}: the "
                          "atlas's analysis was sealed there before any job ran, and without it no row can be rebuilt "
                          f"as registered. Restore the sweep's own {PRIMARY_FILE}, or rerun the sweep; nothing was "
                          "written")
    problems = sealing_problems(records.registration, records.jobs)
    if problems:
        raise ReportError(f"the records of {sweep} no longer match the registration sealed in {PRIMARY_FILE} ("
                          + "; ".join(problems) + f"). Restore the {PRIMARY_FILE} the jobs ran under, or rerun the "
                          "sweep to register a new analysis; nothing was written")
    return write_atlas(sweep, out_dir, plots=plots, records=records)


def atlas_tables(a: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The W&B tables: ``atlas/rows`` (one per capability) and ``atlas/cells`` (the heatmap, long form)."""
    rcols = ["capability", "base_format", "base_rate", "base_ci95_low", "base_ci95_high", "instruct_rate",
             "instruct_ci95_low", "instruct_ci95_high", "diff", "n_paired", "p", "p_holm", "verdict"]
    rows = [[r["capability"], r["base_format"], r["base_rate"], *(r["base_ci95"] or [None, None]), r["instruct_rate"],
             *(r["instruct_ci95"] or [None, None]), r.get("diff"), r.get("n_paired"), r["p"], r["p_holm"], r["verdict"]]
            for r in a["rows"]]
    ccols = ["capability", "role", "label", "n", "rate", "ci95_low", "ci95_high"]
    cells = [[c["capability"], c["role"], c["label"], c["n"], c["rate"], *(c["ci95"] or [None, None])]
             for c in a["cells"]]
    return {"atlas/rows": (rcols, rows), "atlas/cells": (ccols, cells)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posttrain.analysis.atlas DIR [--no-plots]``: rebuild an atlas sweep's files from its records."""
    import argparse
    import sys

    from posttrain.errors import PosttrainError

    parser = argparse.ArgumentParser(prog="python -m posttrain.analysis.atlas", description=(
        "Rebuild atlas.json, atlas.md and the heatmap of an atlas sweep from its job folders and primary.json, "
        "without loading a model or calling an API (the same as posttrain-report DIR on an atlas sweep)."))
    parser.add_argument("sweep_dir", help="the atlas sweep folder, e.g. multirun/2026-01-31/12-00-00")
    parser.add_argument("--no-plots", action="store_true", help="skip the heatmap")
    args = parser.parse_args(argv)
    try:
        a = rebuild_atlas(args.sweep_dir, plots=not args.no_plots)
    except (PosttrainError, ValueError) as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
