"""``posttrain-report DIR [--out DIR]``: rebuild a sweep's comparison from its records alone.

Reads each job folder's ``summary.json``, ``scores.jsonl`` and ``sentinel.json`` (loading no
model, calling no API), pairs items by ``item_id``, and writes ``comparison.json``, the
``comparison.md`` tables rendered FROM it, and the plots. The Hydra callback
(:mod:`posttrain.callbacks`) calls the same :func:`write_comparison` when a multirun ends.

An atlas sweep (``+experiment=atlas*``: its primary.json registers an atlas) is not one comparison:
for it the command rebuilds ``atlas.json``, ``atlas.md`` and the heatmap instead
(:func:`posttrain.analysis.atlas.rebuild_atlas`), and refuses when the records no longer match the
sealed registration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.analysis.comparison import (
    TRUNCATION_FLAG,
    CalibrationLookup,
    SweepRecords,
    build_comparison,
    format_number,
)
from posttrain.analysis.gates import GateThresholds
from posttrain.analysis.sweep import ReportError, load_sweep
from posttrain.errors import PosttrainError
from posttrain.records import write_json

MAX_UNPAIRED_SHOWN = 20  # per pair in the tables; comparison.json lists them all


def _compare(records: SweepRecords, thresholds: GateThresholds | None,
             calibration: CalibrationLookup | None) -> dict[str, Any]:
    """The comparison record: the registered analysis when the sweep has a registration.

    ``thresholds`` are the ones asked for (command line, the callback's config): they are compared
    with the registered ones, never silently used instead. Without a registration the first job's
    config thresholds are shown, and the gate is NOT_ELIGIBLE.
    """
    asked = thresholds if records.registration is not None else (thresholds or records.thresholds)
    return build_comparison(records.jobs, asked, missing=records.missing, calibration=calibration,
                            sweep_dir=records.sweep_dir, primary=records.primary, registration=records.registration)


def write_comparison(sweep_dir: str | Path, out_dir: str | Path | None = None, *, plots: bool = True,
                     thresholds: GateThresholds | None = None,
                     calibration: CalibrationLookup | None = None) -> dict[str, Any]:
    """Build and write comparison.json, comparison.md and the plots; returns the comparison record.

    The gate decision is appended to the ledger of attempts (``$POSTTRAIN_HOME/gates.jsonl``,
    :mod:`posttrain.analysis.ledger`) and the record shows which attempt on its question this is.

    Args:
        sweep_dir: the sweep folder (its job folders hold the records).
        out_dir: where to write; default the sweep folder.
        plots: also write the PNGs.
        thresholds: the gate's numbers asked for; default the registered ones (primary.json). Others make
            the gate NOT_ELIGIBLE ("not the registered analysis").
        calibration: judge calibration lookup; default the store under ``POSTTRAIN_HOME``.
    """
    records = load_sweep(sweep_dir)
    if not records.jobs and not records.missing:
        raise ReportError(f"{records.sweep_dir} holds no job folders (with summary.json or .hydra/); "
                          "pass the sweep folder of a `posttrain -m ...` run, e.g. multirun/<date>/<time>")
    comparison = _compare(records, thresholds, calibration)
    # Every gate decision goes into the ledger of attempts before anything is shown (never hidden)
    from posttrain.analysis.ledger import record_attempts

    labels = {m["job"]: m["model"] for m in comparison["models"]}
    comparison["attempts"] = record_attempts(comparison, {labels[j.name]: j.summary for j in records.jobs
                                                          if j.name in labels})
    out = Path(out_dir) if out_dir is not None else Path(records.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    plot_errors: list[dict[str, str]] = []
    if plots and comparison["models"]:
        from posttrain.analysis.plots import write_plots

        images, plot_errors = write_plots(comparison, out)  # a failing plot is recorded, never fatal
    comparison["files"] = {"json": "comparison.json", "markdown": "comparison.md", "plots": [p.name for p in images]}
    comparison["plot_errors"] = plot_errors
    write_json(out / "comparison.json", comparison)
    (out / "comparison.md").write_text(render_markdown(comparison), encoding="utf-8")
    return comparison


def recompute_gate(sweep_dir: str | Path, *, calibration: CalibrationLookup | None = None) -> dict[str, Any]:
    """The sweep's gate block, exactly as ``comparison.json`` carries it, recomputed from the records.

    Reads only the job folders' records and ``primary.json`` (the registration), with the same code
    as :func:`write_comparison`, writes nothing and appends nothing to the gate ledger. Training
    (``stage=sft|dpo|dpo_only``) calls it and compares the result with the comparison.json it was
    handed. The dict is passed through JSON so it compares equal to ``read_json(comparison.json)["gate"]``.

    Args:
        sweep_dir: the sweep folder.
        calibration: judge calibration lookup; default the store under ``POSTTRAIN_HOME``.

    Raises:
        ReportError: the folder is not a sweep folder or holds no job folders.
    """
    records = load_sweep(sweep_dir)
    if not records.jobs and not records.missing:
        raise ReportError(f"{records.sweep_dir} holds no job folders (with summary.json or .hydra/); "
                          "pass the sweep folder of a `posttrain -m ...` run, e.g. multirun/<date>/<time>")
    comparison = _compare(records, None, calibration)
    gate: dict[str, Any] = json.loads(json.dumps(comparison["gate"], default=str))
    return gate


# ---------------------------------------------------------------------------------------------
# comparison.md, rendered from the record


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cell = lambda x: format_number(x).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(x) for x in r) + " |" for r in rows), ""]


def _ci(block: dict[str, Any]) -> str:
    if block.get("success_rate") is None:
        return "—"
    lo, hi = block["ci95"]
    return f"{block['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]"


def unpaired_lines(comparison: dict[str, Any], limit: int | None = MAX_UNPAIRED_SHOWN) -> list[str]:
    """One line per unpaired item and pair: ``a vs b: item_id: reason``."""
    lines = []
    for p in comparison["pairs"]:
        items = p["unpaired"]
        for u in items[:limit]:
            lines.append(f"{p['a']} vs {p['b']}: {u['item_id']}: {u['reason']}")
        if limit is not None and len(items) > limit:
            lines.append(f"{p['a']} vs {p['b']}: ... and {len(items) - limit} more (see comparison.json)")
    return lines


def _rate_ci(rate: float | None, ci: list[float] | None) -> str:
    if rate is None:
        return "—"
    return f"{rate:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{rate:.3f}"


def _roles(g: dict[str, Any]) -> tuple[str, str]:
    """What the two arms are called: base/instruct under the gap rule, control/treatment under superiority."""
    return ("control", "treatment") if g.get("kind") == "superiority" else ("base", "instruct")


def _side_by_side(g: dict[str, Any]) -> list[str]:
    """The gate's numbers on the observed pairs and with every error item imputed against the claim."""
    obs, worst = g.get("observed"), g.get("worst_case")
    if not obs or not obs.get("n_paired"):
        return []
    cols = [obs, worst or obs]
    b, i = _roles(g)

    def row(label: str, f: Any) -> list[Any]:
        return [label, *(f(a) for a in cols)]

    rows = [row("paired items", lambda a: a["n_paired"]),
            row("clusters", lambda a: a["n_clusters"] if g.get("clusters_recorded") else f"{a['n_clusters']} (none recorded)"),
            row(f"{b} success [cluster 95% CI]", lambda a: _rate_ci(a["base_success"], a["base_ci95"])),
            row(f"{b} success, one-sided 95% upper bound", lambda a: a.get("base_upper95")),
            row(f"{i} success, one-sided 95% lower bound", lambda a: a.get("instruct_lower95")),
            row(f"{i} success [cluster 95% CI]", lambda a: _rate_ci(a["instruct_success"], a["instruct_ci95"])),
            row(f"{i} − {b} [cluster 95% CI]", lambda a: _rate_ci(a["diff"], a["diff_ci95"])),
            row(f"{i} − {b} [item-level 95% CI]", lambda a: _rate_ci(a["diff"], a["diff_ci95_iid"])),
            row(f"{i} only / {b} only", lambda a: f"{a['instruct_only']} / {a['base_only']}"),
            row("item-level exact McNemar p", lambda a: a["mcnemar_p"]),
            row("cluster-level p (" + str(obs.get("cluster_method")) + ")", lambda a: a["cluster_p"]),
            row("cluster-adjusted McNemar p (Obuchowski, reported only)", lambda a: a["obuchowski_p"]),
            row("p the gate uses (the larger)", lambda a: a["gate_p"]),
            row("Cohen's h", lambda a: a["cohens_h"]),
            row("ICC of the paired difference / design effect",
                lambda a: f"{format_number(a['icc'])} / {format_number(a['design_effect'])}"),
            row("all checks hold", lambda a: "yes" if a["checks"] and all(k["passed"] for k in a["checks"]) else "no")]
    head = ["", "observed (errors dropped)", f"worst case ({g.get('n_error_items', 0)} error items against the claim)"]
    return _table(head, rows)


def _truncation(block: dict[str, Any] | None) -> str:
    """A model's truncation record as ``rate (k/n)``; — for records made before it was kept."""
    if not block or block.get("rate") is None:
        return "—"
    return f"{block['rate']:.3f} ({block['length_stopped']}/{block['turns']})"


def _arms(g: dict[str, Any]) -> list[str]:
    """Each arm of the primary pair: which weights, which prompt format, which decoding."""
    arms = g.get("arms") or {}
    if not arms:
        return []

    def ident(a: dict[str, Any]) -> str:
        i = a.get("model_identity") or {}
        return ", ".join(f"{k}={i[k]}" for k in ("name", "path", "revision", "adapter", "adapter_sha256")
                         if i.get(k)) or "not recorded"

    def dec(a: dict[str, Any]) -> str:
        d = a.get("decoding")
        return ", ".join(f"{k}={d[k]}" for k in sorted(d)) if d else "not recorded"

    return _table(["arm", "model", "model identity", "prompt format", "decoding", "clusters"],
                  [[role, a.get("model"), ident(a), a.get("prompt_format"), dec(a), a.get("cluster_source")]
                   for role, a in arms.items()])


def render_markdown(c: dict[str, Any]) -> str:
    """The human tables of a comparison record: models, primary test, dropped items, pairs, categories, power."""
    out = [f"# Comparison: {c.get('sweep_dir') or 'sweep'}", ""]
    reg = c.get("registration") or {}
    if reg and not reg.get("registered"):  # said first: nothing below may be read as the registered test
        out += ["> **This is not the registered analysis**: the gate cannot decide (NOT_ELIGIBLE).",
                *(f"> - {r}" for r in reg.get("problems") or []), ""]
    elif reg:
        out += [f"The registered analysis (primary.json sha256 {str(reg.get('sha256'))[:12]}, registered "
                f"{reg.get('registered_at')}).", ""]
    for w in c["warnings"]:
        out.append(f"> warning: {w}")
    for m in c["missing_jobs"]:
        out.append(f"> missing job {m['job']}: {m['reason']}" + (f" ({' '.join(m['overrides'])})" if m.get("overrides") else ""))
    out += ["", "## Models", ""]
    out += _table(["model", "kind", "scorer", "items", "pass", "fail", "error", "error rate",
                   "truncated (finish_reason=length)", "success [Wilson 95% CI]", "gate-eligible"],
                  [[m["model"], m["kind"], m["scorer"], m["n_items"], m["n_pass"], m["n_fail"], m["n_error"],
                    m.get("error_rate"), _truncation(m.get("truncation")), _ci(m),
                    "yes" if m["gate_eligible"] else f"no: {m['gate_ineligible_reason']}"] for m in c["models"]])
    g = c["gate"]
    prim = c.get("primary") or {}
    out += ["## Gate: the primary test", ""]
    named = ", ".join(f"`{p['treatment']}` vs `{p['control']}` ({p.get('kind', 'gap')})"
                      for p in prim.get("pairs", [])) or "none"
    out += [f"Primary pair(s): {named} ({prim.get('source', 'unknown')}). Only this test decides the gate; every other "
            "pair and every per-category test is exploratory.", ""]
    trunc = {m["model"]: m.get("truncation") for m in c["models"]}
    for p in prim.get("pairs", []):  # each arm's length-budget cuts, beside the verdict they may confound
        arms = [p["treatment"], p["control"]]
        line = "Truncation (turns cut at max_new_tokens): " + ", ".join(f"`{a}` {_truncation(trunc.get(a))}" for a in arms)
        flagged = any(q.get("truncation_flagged") and {q["a"], q["b"]} == set(arms) for q in c["pairs"])
        out += [line + (f" — FLAGGED: more than {TRUNCATION_FLAG * 100:.0f} points apart, the format is confounded with the "
                        "length budget" if flagged else ""), ""]
    if g["verdict"] == "NOT_APPLICABLE":
        out += [f"**NOT_APPLICABLE**: {g['reason']}", ""]
    else:
        b, i = _roles(g)
        out += [f"**{g['verdict']}**: {b} `{g['base_model']}` vs {i} `{g['instruct_model']}` "
                f"on {g['n_paired']} paired items (min_paired {g.get('min_paired')})", ""]
        out += [f"- {r}" for r in g["reasons"]] + [""]
        for r in g.get("primaries") or [g]:
            if r.get("rule"):
                out += [f"Decided by the **{r.get('kind')}** rule for `{r['instruct_model']}` vs `{r['base_model']}`: "
                        f"{r['rule']}.", ""]
        out += _arms(g)
        out += _side_by_side(g)
        worst_checks = {k["name"]: k for k in ((g.get("worst_case") or {}).get("checks") or [])}
        out += _table(["check", "observed", "worst case", "must be", "threshold", "holds (observed / worst)"],
                      [[k["name"], k["value"], worst_checks.get(k["name"], {}).get("value"), k["op"], k["threshold"],
                        ("yes" if k["passed"] else "no") + " / "
                        + ("yes" if worst_checks.get(k["name"], k)["passed"] else "no")] for k in g["checks"]])
    if attempts := c.get("attempts"):
        from posttrain.analysis.ledger import attempt_lines

        out += ["## Gate attempts on this question", "", *attempt_lines(attempts)]
    out += ["## What each pair dropped", "",
            "Success rates here are on the paired set each test used (both models scored, no error), not on each "
            "model's own non-error items.", ""]
    err = {m["model"]: m.get("error_rate") for m in c["models"]}
    out += _table(["a", "b", "dropped: error", "dropped: unpaired", "n paired", "error rate a", "error rate b",
                   "truncated a / b", "success a (paired)", "success b (paired)"],
                  [[p["a"], p["b"], p["dropped"]["error"], p["dropped"]["unpaired"], p["n_paired"], err.get(p["a"]),
                    err.get(p["b"]), " / ".join(format_number(r) for r in p.get("truncation_rates") or [None, None])
                    + (" FLAGGED" if p.get("truncation_flagged") else ""), p["success_a"], p["success_b"]]
                   for p in c["pairs"]])
    out += ["## Pairs: item level and cluster level", "",
            "`a_only`: items only a passed. Cohen's h = h(b) − h(a) and diff = b − a: positive when b does better. "
            "`p` is the larger of the item-level exact McNemar p and the cluster sign-flip p; Holm adjusts it within "
            "its family (primary / secondary). Secondary pairs are exploratory.", ""]
    out += _table(["a", "b", "family", "n paired", "clusters", "a only", "b only", "McNemar p (item)",
                   "cluster p", "p", "Holm p", "diff b − a [cluster CI]", "Cohen's h", "unpaired", "prompt format a / b",
                   "registered hypothesis"],
                  [[p["a"], p["b"], p["family"] + (" (exploratory)" if p["exploratory"] else ""), p["n_paired"],
                    p["n_clusters"], p["a_only"], p["b_only"], p["mcnemar_p"], p["cluster_p"], p["p"], p["p_holm"],
                    _rate_ci(p["diff"], p["diff_ci95"]), p["cohens_h"], len(p["unpaired"]),
                    " / ".join(str(f) for f in p.get("prompt_formats") or [None, None]),
                    (f"{p['hypothesis']}: " + ("supported" if p.get("supported") else "not supported"))
                    if p.get("hypothesis") else "—"] for p in c["pairs"]])
    pc = c["per_category"]
    out += ["## Per category (exploratory)", "",
            "Holm adjusts across all per-category tests. Power is for the OBSERVED effect at this n, divided by the "
            "design effect; below 0.8 the row is UNDERPOWERED: descriptive, not evidence.", ""]
    order = [m["model"] for m in c["models"]]  # JSON objects come back key-sorted: keep the sweep's order
    out += _table(["model", *pc["categories"]],
                  [[m, *(f"{_ci(b)} n={b['n']}" for b in (pc["models"][m][k] for k in pc["categories"]))]
                   for m in order if m in pc["models"]])
    out += _table(["a", "b", "category", "n paired", "a only", "b only", "McNemar p", "cluster p", "Holm p",
                   "Cohen's h", "power (observed effect)", "underpowered"],
                  [[p["a"], p["b"], p["category"], p["n_paired"], p["a_only"], p["b_only"], p["mcnemar_p"],
                    p["cluster_p"], p["p_holm"], p["cohens_h"], p["power_observed"],
                    "UNDERPOWERED" if p["underpowered"] else "no"] for p in pc["pairs"]])
    if c.get("power"):
        out += ["## Power of the design", "", c["power"]["note"], ""]
    if c["sentinel"]:
        out += ["## Sentinel: format sensitivity", ""]
        out += _table(["model", "format", "stopped rate", "answer rate", "mean new tokens"],
                      [[m, f, r.get("stopped_rate"), r.get("answer_rate"), r.get("mean_new_tokens") or r.get("skipped")]
                       for m in order if m in c["sentinel"]
                       for f, r in sorted(c["sentinel"][m].get("formats", {}).items())])
    if c["length_bias"]:
        out += ["## Length bias", ""]
        out += _table(["model", "n", "AUC (length predicts fail)", "flagged", "note"],
                      [[m, b.get("n"), b.get("auc"), "FLAGGED" if b.get("flagged") else "no", b.get("reason") or ""]
                       for m in order if (b := c["length_bias"].get(m))])
    if c.get("spot_check"):
        out += ["## Spot check: second judge", ""]
        out += _table(["model", "status", "second judge", "n compared", "agreement", "kappa", "note"],
                      [[m, s.get("status", "ran"), s.get("second_judge"), s.get("n_compared"), s.get("agreement"),
                        s.get("kappa"), s.get("reason") or s.get("kappa_reason") or ""]
                       for m in order if (s := c["spot_check"].get(m))])
    if agreement := c.get("scorer_agreement"):  # issue 19: the exact scorer against the LLM judge
        out += ["## Verifiable scorer vs LLM judge", "",
                "The same replies decided by the instruction's own definition and by the judge, on the items both "
                "decided. Each disagreement is listed: the judge is lenient or strict exactly there.", ""]
        out += _table(["verifiable", "judge", "n", "both pass", "both fail", "exact pass, judge fail",
                       "exact fail, judge pass", "agreement", "Cohen's kappa"],
                      [[a["verifiable"], a["judge"], a["n"], a["both_pass"], a["both_fail"], a["exact_pass_judge_fail"],
                        a["exact_fail_judge_pass"], a["observed_agreement"], a["kappa"]] for a in agreement])
        for a in agreement:
            shown = [f"`{d['item_id']}` (verifiable {d['verifiable']}, judge {d['judge']})"
                     for d in a["disagreements"][:MAX_UNPAIRED_SHOWN]]
            more = len(a["disagreements"]) - len(shown)
            if shown:
                out += [f"Disagreements, {a['verifiable']} vs {a['judge']}: " + ", ".join(shown)
                        + (f", and {more} more (comparison.json)" if more > 0 else ""), ""]
    if plots := (c.get("files") or {}).get("plots"):
        out += ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]
    if plot_errors := c.get("plot_errors"):
        out += ["## Plots not written", "", *(f"- {e['plot']}: {e['error']}" for e in plot_errors), ""]
    if lines := unpaired_lines(c):
        out += ["## Unpaired items", "", *(f"- {line}" for line in lines), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``posttrain-report DIR [--out DIR] [--no-plots]``."""
    parser = argparse.ArgumentParser(prog="posttrain-report", description=(
        "Rebuild a sweep's comparison (comparison.json, comparison.md, plots) from its job folders' records, "
        "without loading a model or calling an API. On an atlas sweep (+experiment=atlas*), rebuild its "
        "atlas.json, atlas.md and heatmap instead."))
    parser.add_argument("sweep_dir", help="the sweep folder, e.g. multirun/2026-01-31/12-00-00")
    parser.add_argument("--out", default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    from posttrain.analysis.atlas import atlas_sweep_signs

    if atlas_sweep_signs(args.sweep_dir):
        return _atlas_main(args.sweep_dir, args.out, plots=not args.no_plots)
    try:
        comparison = write_comparison(args.sweep_dir, args.out, plots=not args.no_plots)
    except PosttrainError as exc:
        print(f"posttrain-report: error: {exc}", file=sys.stderr)
        return 2
    lines = unpaired_lines(comparison, limit=None)
    print(f"could not pair {len(lines)} item(s)" + (":" if lines else "."))
    for line in lines:
        print(f"  {line}")
    print()
    print(render_markdown(comparison))
    print(f"wrote {Path(args.out or comparison['sweep_dir']) / 'comparison.json'}", file=sys.stderr)
    return 0


def _atlas_main(sweep_dir: str, out_dir: str | None, *, plots: bool) -> int:
    """``posttrain-report`` on an atlas sweep: rebuild and print atlas.md, or say why it may not."""
    from posttrain.analysis.atlas import rebuild_atlas
    from posttrain.analysis.atlas import render_markdown as render_atlas

    try:
        atlas = rebuild_atlas(sweep_dir, out_dir, plots=plots)
    except PosttrainError as exc:
        print(f"posttrain-report: error: {exc}", file=sys.stderr)
        return 2
    print(render_atlas(atlas))
    print(f"wrote {Path(out_dir or atlas['sweep_dir']) / 'atlas.json'} (an atlas sweep: atlas.json, atlas.md"
          + (", the heatmap" if atlas["files"]["plots"] else "") + "; no comparison)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
