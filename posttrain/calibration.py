"""Human calibration of an LLM judge: export a sample to label, import the labels, store kappa.

A judge's verdicts only count towards the gate once a person has labelled a sample of the same
conversations and the two agree (Cohen's kappa >= ``gate.min_kappa``). The workflow:

1. ``posttrain-calibrate export RUN_DIR [RUN_DIR...] --out sample.csv`` draws a stratified
   sample (by category and model) of judged conversations and writes a CSV to label. The
   judge's verdict is not in it, so it cannot anchor the labeller; it goes to the sidecar
   ``sample.csv.key.json``, which the labeller should not open.
2. The labeller fills ``human_label`` with pass/fail.
3. ``posttrain-calibrate import sample.csv`` compares the labels with the judge's verdicts and
   stores ``<judge>__<template_version>.json`` under ``$POSTTRAIN_HOME/calibrations``, where
   :func:`is_calibrated` finds it. A new template version needs its own calibration.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from statsmodels.stats.inter_rater import cohens_kappa

from posttrain.items import Expectation, Item, item_from_dict
from posttrain.paths import calibration_dir
from posttrain.records import write_json
from posttrain.scorers.checks import language_name
from posttrain.scorers.diagnostics import spot_check_sample

CSV_COLUMNS = (
    "sample_id",
    "run",
    "model",
    "item_id",
    "category",
    "conversation",
    "expectations",
    "human_label",
    "notes",
)
_LABELS = {
    "pass": "pass",
    "fail": "fail",
    "1": "pass",
    "0": "fail",
    "y": "pass",
    "n": "fail",
    "yes": "pass",
    "no": "fail",
}
_EXCEL_CELL_LIMIT = 32_000  # Excel silently splits longer cells (its limit is 32,767 characters)


_FORMATS = {
    "bullet_list": "is a bulleted list",
    "numbered_list": "is a numbered list",
    "json": "is valid JSON",
    "single_line": "is a single line",
    "all_caps": "is in capital letters only",
    "no_commas": "has no commas",
}


class CalibrationError(ValueError):
    """Bad input to export or import: the message says which file, row or id."""


def default_store_dir() -> Path:
    """Where calibrations are stored unless told otherwise: ``$POSTTRAIN_HOME/calibrations``."""
    return calibration_dir()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise CalibrationError(f"{path}: not found")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise CalibrationError(f"{path}:{i}: not JSON ({exc})") from exc
    return rows


def _describe(expect: Expectation) -> str:
    """An expectation in plain English, for a person."""
    parts = []
    for group in expect.must_include:
        if group:
            alts = f" (or {', '.join(group[1:])})" if len(group) > 1 else ""
            parts.append(f"mentions {group[0]}{alts}")
    if expect.must_not_include:
        parts.append("does not mention " + ", ".join(expect.must_not_include))
    for c in expect.constraints:
        if c.description:
            parts.append(c.description)
        elif c.kind == "max_words":
            parts.append(f"is at most {c.value} words")
        elif c.kind == "min_words":
            parts.append(f"is at least {c.value} words")
        elif c.kind == "language":
            parts.append(f"is written in {language_name(str(c.value))}")
        elif c.kind == "format":
            parts.append(_FORMATS.get(str(c.value), f"has the format {c.value}"))
        else:
            verb = "matches" if c.kind == "must_match" else "does not match"
            parts.append(f"{verb} the pattern /{c.value}/")
    text = "The reply " + "; ".join(parts) + "." if parts else "No explicit requirement."
    return text + (f" Notes: {expect.notes}" if expect.notes else "")


def _render(gen: dict[str, Any], judged: set[Any], item: Item | None) -> tuple[str, str]:
    """(conversation, expectations) cells for one generation row; turns numbered from 1."""
    turns = list(gen.get("turns") or [])
    under_test = [i for i, t in enumerate(turns) if t.get("turn", i) in judged]
    replies = [str(t.get("reply") or "") for t in turns]
    if sum(map(len, replies)) > _EXCEL_CELL_LIMIT:
        # Earlier context turns give way first: the replies under test are shown in full.
        replies = [
            r
            if i in under_test or len(r) <= 2000
            else r[:2000] + f" [... {len(r) - 2000} characters cut ...]"
            for i, r in enumerate(replies)
        ]
    blocks = []
    for i, t in enumerate(turns):
        mark = "  <<< TURN UNDER TEST: label this reply" if i in under_test else ""
        blocks.append(f"=== Turn {i + 1}{mark} ===\nUSER: {t.get('user', '')}\n\nASSISTANT: {replies[i]}")
    if item is None:
        expectations = "(item text not available: see the benchmark item) Turns under test: " + ", ".join(
            str(i + 1) for i in under_test
        )
    else:
        expectations = "\n".join(
            f"Turn {i + 1}: {_describe(item.turns[i].expect)}"  # type: ignore[arg-type]
            for i in under_test
            if i < len(item.turns) and item.turns[i].expect is not None
        )
    return "\n\n".join(blocks), expectations


def _run_labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [Path(d).name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def export_sample(
    run_dirs: Sequence[Path], out: Path, n: int = 30, seed: int = 0, *, items: Sequence[Item] | None = None
) -> Path:
    """Write a CSV of about ``n`` judged conversations to label, and its key.

    Reads ``scores.jsonl`` and ``generations.jsonl`` of each run folder; rows with verdict
    ``"error"`` are skipped. The sample is stratified by category and model (at least one per
    stratum, so more than ``n`` rows when there are more strata). Expectations are written in
    plain English from ``items`` or, failing that, from a run folder's ``items.jsonl``.

    Returns:
        The CSV path; the key is ``<out>.key.json``.

    Raises:
        CalibrationError: a missing file, a score row without its generation, a run scored
            without a judge (triage), several judges or template versions, or nothing to sample.
    """
    if n < 1:
        raise CalibrationError(f"n must be >= 1, got {n}")
    known = {it.id: it for it in items or ()}
    pool: list[dict[str, Any]] = []
    for label, run_dir in zip(_run_labels(run_dirs), run_dirs, strict=True):
        run_dir = Path(run_dir)
        gens = {(g.get("item_id"), g.get("model")): g for g in _read_jsonl(run_dir / "generations.jsonl")}
        if items is None and (run_dir / "items.jsonl").is_file():
            for d in _read_jsonl(run_dir / "items.jsonl"):
                known.setdefault(d["id"], item_from_dict(d))
        for s in _read_jsonl(run_dir / "scores.jsonl"):
            if s.get("verdict") not in ("pass", "fail"):
                continue
            if not s.get("judge"):
                raise CalibrationError(
                    f"{run_dir}: scored by {s.get('scorer')!r} without a judge: nothing to calibrate"
                )
            gen = gens.get((s["item_id"], s.get("model")))
            if gen is None:
                raise CalibrationError(
                    f"{run_dir}: no generation for item {s['item_id']} model {s.get('model')}"
                )
            pool.append({**s, "_run": label, "_run_dir": str(run_dir.resolve()), "_gen": gen})
    if not pool:
        raise CalibrationError("no judged (pass/fail) conversation in " + ", ".join(map(str, run_dirs)))
    judges = sorted({(r["judge"], r.get("judge_model"), r.get("template_version")) for r in pool}, key=str)
    if len(judges) > 1:
        raise CalibrationError(f"runs mix judges/template versions {judges}: calibrate one judge at a time")

    rng = np.random.default_rng(seed)
    sample = spot_check_sample(pool, min(1.0, n / len(pool)), rng)
    # Shuffle so that rows of one run or model do not come in a block the labeller can read into.
    sample = [sample[i] for i in rng.permutation(len(sample))]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key: dict[str, Any] = {}
    with out.open("w", encoding="utf-8-sig", newline="") as f:  # BOM: spreadsheets read UTF-8 right
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for k, r in enumerate(sample, start=1):
            sid = f"s{k:03d}"
            judged = {tv.get("turn") for tv in r.get("turn_verdicts") or []}
            conversation, expectations = _render(r["_gen"], judged, known.get(r["item_id"]))
            writer.writerow(
                {
                    "sample_id": sid,
                    "run": r["_run"],
                    "model": r.get("model"),
                    "item_id": r["item_id"],
                    "category": r.get("category"),
                    "conversation": conversation,
                    "expectations": expectations,
                    "human_label": "",
                    "notes": "",
                }
            )
            key[sid] = {
                "run": r["_run"],
                "run_dir": r["_run_dir"],
                "item_id": r["item_id"],
                "model": r.get("model"),
                "category": r.get("category"),
                "judge": r["judge"],
                "judge_model": r.get("judge_model"),
                "template_version": r.get("template_version"),
                "judge_verdict": r["verdict"],
            }
    meta = {"created": datetime.now(UTC).isoformat(), "csv": out.name, "seed": seed, "n_requested": n}
    write_json(Path(f"{out}.key.json"), {**meta, "samples": key})
    return out


def _store_path(store_dir: Path, judge: str, template_version: str) -> Path:
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", s) for s in (judge, template_version)]
    return Path(store_dir) / f"{safe[0]}__{safe[1]}.json"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def import_labels(labelled_csv: Path, *, store_dir: Path, key: Path | None = None) -> dict[str, Any]:
    """Compare human labels with the judge's verdicts; store and return Cohen's kappa.

    Labels are pass/fail, case-insensitive; 1/0, y/n and yes/no are accepted too. The table
    has human labels as rows and judge verdicts as columns, both in the order (pass, fail).
    Kappa and its 95% interval come from ``statsmodels.stats.inter_rater.cohens_kappa``;
    kappa is None when undefined (both raters put everything in one class).

    Args:
        labelled_csv: the exported CSV with ``human_label`` filled.
        store_dir: where ``<judge>__<template_version>.json`` is written (atomically; it
            replaces an earlier calibration of the same judge and template).
        key: the sidecar; default ``<labelled_csv>.key.json``.

    Returns:
        ``kappa``, ``ci95``, ``n``, ``agreement``, ``table`` and the stored record's other fields.

    Raises:
        CalibrationError: a missing key, an unknown/duplicate/missing sample id, an empty or
            invalid label (the message names the spreadsheet row, header = row 1, and sample
            id), or a sample mixing judges or template versions.
    """
    labelled_csv = Path(labelled_csv)
    key_path = Path(key) if key is not None else Path(f"{labelled_csv}.key.json")
    if not key_path.is_file():
        raise CalibrationError(f"key file {key_path} not found (pass --key if the CSV was renamed)")
    samples: dict[str, dict[str, Any]] = json.loads(key_path.read_text(encoding="utf-8"))["samples"]
    if not labelled_csv.is_file():
        raise CalibrationError(f"{labelled_csv}: not found")
    with labelled_csv.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"sample_id", "human_label"} <= rows[0].keys():
        raise CalibrationError(f"{labelled_csv}: needs the columns sample_id and human_label")

    errors: list[str] = []
    labels: dict[str, str] = {}
    for rownum, row in enumerate(rows, start=2):
        sid = (row.get("sample_id") or "").strip()
        raw = (row.get("human_label") or "").strip()
        where = f"row {rownum} (sample_id={sid or '?'})"
        if sid not in samples:
            errors.append(f"{where}: sample_id not in {key_path.name}")
        elif sid in labels:
            errors.append(f"{where}: sample_id appears twice")
        elif raw.lower() not in _LABELS:
            errors.append(
                f"{where}: human_label {raw!r} is not pass/fail" if raw else f"{where}: human_label is empty"
            )
        else:
            labels[sid] = _LABELS[raw.lower()]
    missing = sorted(set(samples) - set(labels) - {(r.get("sample_id") or "").strip() for r in rows})
    if missing:
        errors.append(f"sample(s) missing from the CSV: {', '.join(missing)}")
    if errors:
        raise CalibrationError(f"{labelled_csv}: " + "; ".join(errors))
    if not labels:
        raise CalibrationError(f"{labelled_csv}: no labelled row")

    judges = sorted(
        {(samples[s]["judge"], samples[s].get("judge_model"), samples[s]["template_version"]) for s in labels}
    )
    if len(judges) > 1:
        raise CalibrationError(f"sample mixes judges/template versions {judges}: one calibration per judge")
    judge, judge_model, template_version = judges[0]

    order = ("pass", "fail")
    table = np.zeros((2, 2), dtype=int)
    for sid, human in labels.items():
        table[order.index(human), order.index(samples[sid]["judge_verdict"])] += 1
    with np.errstate(divide="ignore", invalid="ignore"):  # undefined kappa comes back as NaN
        res = cohens_kappa(table)
    n = int(table.sum())
    kappa = _finite(res.kappa)
    ci95 = [_finite(res.kappa_low), _finite(res.kappa_upp)] if kappa is not None else None
    record = {
        "judge": judge,
        "judge_model": judge_model,
        "template_version": template_version,
        "n": n,
        "date": datetime.now(UTC).isoformat(),
        "kappa": kappa,
        "ci95": ci95,
        "se": _finite(res.std_kappa) if kappa is not None else None,
        "agreement": float(np.trace(table)) / n,
        "table": table.tolist(),
        "table_layout": "rows: human (pass, fail); columns: judge (pass, fail)",
        "source_csv": str(labelled_csv.resolve()),
        "labels": [{"sample_id": s, **samples[s], "human_label": labels[s]} for s in sorted(labels)],
    }
    path = _store_path(store_dir, judge, template_version)
    write_json(path, record)
    return {**record, "path": str(path)}


def load_calibration(store_dir: Path, judge: str, template_version: str) -> dict[str, Any] | None:
    """The stored calibration of ``judge`` with ``template_version``, or None."""
    path = _store_path(store_dir, judge, template_version)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CalibrationError(f"{path}: corrupt calibration ({exc})") from exc


def is_calibrated(
    store_dir: Path, judge: str, template_version: str, min_kappa: float = 0.7
) -> tuple[bool, str]:
    """Whether the judge's stored kappa reaches ``min_kappa``; the reason says why (not)."""
    cal = load_calibration(store_dir, judge, template_version)
    if cal is None:
        return False, (
            f"no calibration for judge={judge} template={template_version}: run "
            f"`posttrain-calibrate export RUN_DIR --out sample.csv`, label it, then "
            f"`posttrain-calibrate import sample.csv`"
        )
    kappa = cal.get("kappa")
    if kappa is None:
        return (
            False,
            f"kappa undefined for judge={judge} template={template_version} (one class only); label a more varied sample",
        )
    if kappa < min_kappa:
        return False, f"kappa {kappa:.2f} < {min_kappa:.2f}"
    return True, f"kappa {kappa:.2f} >= {min_kappa:.2f} (n={cal.get('n')}, {cal.get('date', '')[:10]})"


def main(argv: Sequence[str] | None = None) -> int:
    """``posttrain-calibrate export ...`` / ``posttrain-calibrate import ...``; exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="posttrain-calibrate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a CSV of judged conversations to label")
    ex.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--n", type=int, default=30)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument(
        "--items", type=Path, help="items JSONL for the expectations (default: RUN_DIR/items.jsonl)"
    )
    im = sub.add_parser("import", help="compute kappa from a labelled CSV and store it")
    im.add_argument("csv", type=Path)
    im.add_argument("--store", type=Path, default=None, help="default: $POSTTRAIN_HOME/calibrations")
    im.add_argument("--key", type=Path, default=None, help="default: <CSV>.key.json")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "export":
            items = [item_from_dict(d) for d in _read_jsonl(args.items)] if args.items else None
            out = export_sample(args.run_dirs, args.out, n=args.n, seed=args.seed, items=items)
            n_rows = len(json.loads(Path(f"{out}.key.json").read_text(encoding="utf-8"))["samples"])
            print(f"wrote {n_rows} conversations to {out}; fill human_label with pass/fail.")
            print(f"the judge's verdicts are in {out}.key.json: do not show it to the labeller.")
            print(f"then: posttrain-calibrate import {out}")
        else:
            res = import_labels(args.csv, store_dir=args.store or default_store_dir(), key=args.key)
            k = "undefined" if res["kappa"] is None else f"{res['kappa']:.2f}"
            ci = "" if res["ci95"] is None else f" [95% CI {res['ci95'][0]:.2f}, {res['ci95'][1]:.2f}]"
            print(f"judge={res['judge']} ({res['judge_model']}) template={res['template_version']}")
            print(f"kappa {k}{ci}, agreement {res['agreement']:.0%} on n={res['n']}; stored {res['path']}")
    except (CalibrationError, OSError, csv.Error, KeyError, ValueError) as exc:
        print(f"posttrain-calibrate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
