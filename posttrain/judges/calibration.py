"""Human calibration of an LLM judge: export a sample to label, import the labels, store kappa.

A judge's verdicts only count towards the gate once a person has labelled a sample of the same
conversations and the two agree (Cohen's kappa >= ``gate.min_kappa``). The workflow:

1. ``posttrain-calibrate export RUN_DIR [RUN_DIR...] --out sample.csv`` draws a stratified
   sample (by category and model) of judged conversations and writes a CSV to label. The
   judge's verdict is not in it, so it cannot anchor the labeller; it goes to the sidecar
   ``sample.csv.key.json``, which the labeller should not open.
2. The labeller fills ``human_label`` with pass/fail.
3. ``posttrain-calibrate import sample.csv`` compares the labels with the judge's verdicts and
   stores them under ``$POSTTRAIN_HOME/calibrations``, keyed by the judge instrument.
4. ``posttrain-calibrate status [judge=NAME] [judge.model=...]`` lists the stored calibrations and
   says whether one applies to a judge config, and why not.
5. ``posttrain-calibrate migrate --from judge=claude --to judge=gpt4 [judge.model=...]`` moves a
   calibration to a new judge when the old one is retired (:func:`migrate`): the human labels stay
   valid, so the labelled conversations are re-scored by the new judge, and the new instrument is
   calibrated only if it agrees with the humans; the record names the calibration it came from.

A calibration is bound to the instrument it calibrated: provider, model id, template version and the
template's sha256 (:func:`posttrain.judges.prompt.template_sha256`: template text, rubric, renderer
source, schema). It applies only to that exact instrument, with at least ``gate.min_calibration_items``
labelled items (default 30) and kappa >= ``gate.min_kappa``. The stored record keeps every label and
the judge's verdict beside it; kappa is recomputed from them whenever a calibration is read, so a
hand-edited kappa or a record without labels counts for nothing.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from posttrain.items import Expectation, Item, item_from_dict
from posttrain.judges.prompt import INSTRUMENT_KEYS, INSTRUMENT_ROW_FIELDS
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


DEFAULT_MIN_ITEMS = 30  # gate.min_calibration_items


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
            if any(not s.get(f) for f in INSTRUMENT_ROW_FIELDS.values()):
                raise CalibrationError(
                    f"{run_dir}: score rows do not record the judge instrument ({', '.join(INSTRUMENT_ROW_FIELDS.values())}): "
                    "they were scored by an older posttrain; rescore the run, then export"
                )
            gen = gens.get((s["item_id"], s.get("model")))
            if gen is None:
                raise CalibrationError(
                    f"{run_dir}: no generation for item {s['item_id']} model {s.get('model')}"
                )
            pool.append({**s, "_run": label, "_run_dir": str(run_dir.resolve()), "_gen": gen})
    if not pool:
        raise CalibrationError("no judged (pass/fail) conversation in " + ", ".join(map(str, run_dirs)))
    judges = sorted({(r["judge"], *(r[f] for f in INSTRUMENT_ROW_FIELDS.values())) for r in pool}, key=str)
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
                **{f: r[f] for f in INSTRUMENT_ROW_FIELDS.values()},
                "judge_verdict": r["verdict"],
            }
    meta = {"created": datetime.now(UTC).isoformat(), "csv": out.name, "seed": seed, "n_requested": n}
    write_json(Path(f"{out}.key.json"), {**meta, "samples": key})
    return out


def instrument_key(instrument: Mapping[str, Any]) -> str:
    """The calibration key of a judge instrument: ``provider__model__template_version__sha12``.

    The first 12 hex digits of the template hash name the file; the full hash is stored inside and
    compared in full.
    """
    parts = [str(instrument["provider"]), str(instrument["model"]), str(instrument["template_version"]),
             str(instrument["template_sha256"])[:12]]
    return "__".join(re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in parts)


def _store_path(store_dir: Path, key: str) -> Path:
    return Path(store_dir) / f"{key}.json"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def kappa_from_labels(labels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Cohen's kappa of human labels against the judge's verdicts, from the stored label records.

    The table has human labels as rows and judge verdicts as columns, both in the order (pass, fail);
    kappa, its 95% interval and standard error come from ``statsmodels.stats.inter_rater.cohens_kappa``
    and are None when undefined (both raters put everything in one class).

    Raises:
        CalibrationError: a label or verdict that is not pass/fail.
    """
    from statsmodels.stats.inter_rater import cohens_kappa

    order = ("pass", "fail")
    table = np.zeros((2, 2), dtype=int)
    for rec in labels:
        human, judge = rec.get("human_label"), rec.get("judge_verdict")
        if human not in order or judge not in order:
            raise CalibrationError(f"label {rec.get('sample_id')}: human_label {human!r} / judge_verdict {judge!r} "
                                   "must be pass or fail")
        table[order.index(human), order.index(judge)] += 1
    n = int(table.sum())
    if n == 0:
        return {"n": 0, "kappa": None, "ci95": None, "se": None, "agreement": None, "table": table.tolist()}
    with np.errstate(divide="ignore", invalid="ignore"):  # undefined kappa comes back as NaN
        res = cohens_kappa(table)
    kappa = _finite(res.kappa)
    return {"n": n, "kappa": kappa,
            "ci95": [_finite(res.kappa_low), _finite(res.kappa_upp)] if kappa is not None else None,
            "se": _finite(res.std_kappa) if kappa is not None else None,
            "agreement": float(np.trace(table)) / n, "table": table.tolist()}


def import_labels(labelled_csv: Path, *, store_dir: Path, key: Path | None = None) -> dict[str, Any]:
    """Compare human labels with the judge's verdicts; store and return Cohen's kappa.

    Labels are pass/fail, case-insensitive; 1/0, y/n and yes/no are accepted too. Kappa comes from
    :func:`kappa_from_labels`. The record is stored under :func:`instrument_key` of the judge that
    made the verdicts and keeps every label beside the judge's verdict.

    Args:
        labelled_csv: the exported CSV with ``human_label`` filled.
        store_dir: where ``<key>.json`` is written (atomically; it replaces an earlier calibration of
            the same instrument).
        key: the sidecar; default ``<labelled_csv>.key.json``.

    Returns:
        The stored record (``key``, ``instrument``, ``kappa``, ``ci95``, ``n``, ``agreement``,
        ``table``, ``labels``, ...) and its ``path``.

    Raises:
        CalibrationError: a missing key, an unknown/duplicate/missing sample id, an empty or
            invalid label (the message names the spreadsheet row, header = row 1, and sample
            id), a key without the judge instrument, or a sample mixing judges or template versions.
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
    if any(not samples[s].get(f) for s in labels for f in INSTRUMENT_ROW_FIELDS.values()):
        raise CalibrationError(f"{key_path}: samples do not record the judge instrument "
                               f"({', '.join(INSTRUMENT_ROW_FIELDS.values())}); export again from rescored runs")

    judges = sorted({(samples[s]["judge"], *(samples[s][f] for f in INSTRUMENT_ROW_FIELDS.values())) for s in labels})
    if len(judges) > 1:
        raise CalibrationError(f"sample mixes judges/template versions {judges}: one calibration per judge")
    first = samples[next(iter(labels))]
    instrument = {k: first[f] for k, f in INSTRUMENT_ROW_FIELDS.items()}
    label_records = [{"sample_id": s, **samples[s], "human_label": labels[s]} for s in sorted(labels)]
    stats = kappa_from_labels(label_records)
    record = {
        "key": instrument_key(instrument),
        "instrument": instrument,
        "judge": first["judge"],
        **stats,
        "date": datetime.now(UTC).isoformat(),
        "table_layout": "rows: human (pass, fail); columns: judge (pass, fail)",
        "source_csv": str(labelled_csv.resolve()),
        "labels": label_records,
    }
    path = _store_path(store_dir, record["key"])
    write_json(path, record)
    return {**record, "path": str(path)}


def read_calibration(path: Path) -> dict[str, Any]:
    """A stored calibration with kappa, n and the table recomputed from its labels.

    Raises:
        CalibrationError: not JSON, no instrument, no labels (a record that cannot show its kappa),
            or a stored kappa or n that its labels do not give (edited by hand).
    """
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: unreadable calibration ({exc})") from exc
    inst = rec.get("instrument") if isinstance(rec, dict) else None
    if not isinstance(inst, dict) or any(not inst.get(k) for k in INSTRUMENT_KEYS):
        raise CalibrationError(f"{path}: records no judge instrument ({', '.join(INSTRUMENT_KEYS)}); made by an "
                               "older posttrain: calibrate again")
    labels = rec.get("labels")
    if not isinstance(labels, list) or not labels:
        raise CalibrationError(f"{path}: keeps no labels, so its kappa cannot be recomputed: calibrate again")
    stats = kappa_from_labels(labels)
    stored_kappa = rec.get("kappa")
    same_kappa = (stored_kappa is None) == (stats["kappa"] is None) and (
        stats["kappa"] is None or math.isclose(float(stored_kappa), stats["kappa"], abs_tol=1e-9))
    if not same_kappa or rec.get("n") != stats["n"]:
        raise CalibrationError(f"{path}: stored kappa {stored_kappa} / n {rec.get('n')} do not match its labels "
                               f"(kappa {stats['kappa']}, n {stats['n']}): edited by hand? calibrate again")
    return {**rec, **stats, "key": instrument_key(inst), "path": str(path)}


def list_calibrations(store_dir: Path) -> list[dict[str, Any]]:
    """Every stored calibration, read through :func:`read_calibration`; an unusable one has ``error``."""
    out = []
    for path in sorted(Path(store_dir).glob("*.json")) if Path(store_dir).is_dir() else []:
        try:
            out.append(read_calibration(path))
        except CalibrationError as exc:
            out.append({"path": str(path), "key": path.stem, "error": str(exc)})
    return out


def _short(inst: Mapping[str, Any]) -> str:
    return (f"{inst.get('provider')} {inst.get('model')} {inst.get('template_version')} "
            f"(template sha256 {str(inst.get('template_sha256'))[:12]})")


def calibration_status(store_dir: Path, instrument: Mapping[str, Any], *, min_kappa: float = 0.7,
                       min_items: int = DEFAULT_MIN_ITEMS) -> dict[str, Any]:
    """Whether a stored calibration applies to ``instrument``, and why not.

    It applies when a calibration of exactly this instrument (provider, model id, template version,
    full template sha256) exists, holds at least ``min_items`` labels and its recomputed kappa is at
    least ``min_kappa``. When none matches, the reason names the nearest one (another model, another
    template hash) so the user knows what changed.

    Returns:
        ``{"key", "kappa", "n", "applies", "reason"}``: the matching calibration's key, recomputed
        kappa and label count (None when there is none), and None as reason when it applies.
    """
    inst = {k: instrument.get(k) for k in INSTRUMENT_KEYS}
    want = instrument_key(inst)
    out: dict[str, Any] = {"key": None, "kappa": None, "n": None, "applies": False, "reason": None}
    todo = ("`posttrain-calibrate export RUN_DIR --out sample.csv --n 30`, label it, then "
            "`posttrain-calibrate import sample.csv`")
    stored = list_calibrations(store_dir)
    exact = [c for c in stored if "error" not in c and all(c["instrument"].get(k) == inst[k] for k in INSTRUMENT_KEYS)]
    if not exact:
        broken = [c for c in stored if "error" in c and c["key"] == want]
        if broken:
            out["reason"] = broken[0]["error"]
            return out
        valid = [c for c in stored if "error" not in c]
        same = {k: [c for c in valid if all(c["instrument"].get(j) == inst[j] for j in INSTRUMENT_KEYS if j != k)]
                for k in INSTRUMENT_KEYS}
        if same["template_sha256"]:
            other = same["template_sha256"][0]["instrument"]["template_sha256"]
            out["reason"] = (f"the calibration of {inst['provider']} {inst['model']} {inst['template_version']} was made "
                             f"with template sha256 {other[:12]}, this judge's is {str(inst['template_sha256'])[:12]}: "
                             f"the template, rubric, renderer or schema changed since; calibrate again: {todo}")
        elif same["model"]:
            models = sorted({c["instrument"]["model"] for c in same["model"]})
            out["reason"] = (f"calibrated for model(s) {', '.join(models)}, not {inst['model']}: a calibration holds "
                             f"only for the model it was made with; calibrate {inst['model']}: {todo}")
        else:
            out["reason"] = f"no calibration for {_short(inst)}: {todo}"
        return out
    cal = exact[0]
    out.update(key=cal["key"], kappa=cal["kappa"], n=cal["n"])
    if cal["n"] < min_items:
        out["reason"] = (f"calibration {cal['key']} has {cal['n']} labelled items, fewer than "
                         f"gate.min_calibration_items={min_items}: label a larger sample ({todo})")
    elif cal["kappa"] is None:
        out["reason"] = (f"kappa undefined for calibration {cal['key']} (one class only); "
                         "label a more varied sample")
    elif cal["kappa"] < min_kappa:
        out["reason"] = f"calibration {cal['key']}: kappa {cal['kappa']:.2f} < gate.min_kappa {min_kappa:.2f}"
    else:
        out["applies"] = True
    return out


def is_calibrated(store_dir: Path, instrument: Mapping[str, Any], *, min_kappa: float = 0.7,
                  min_items: int = DEFAULT_MIN_ITEMS) -> tuple[bool, str]:
    """(applies, reason) of :func:`calibration_status`; the reason describes the calibration when it applies."""
    st = calibration_status(store_dir, instrument, min_kappa=min_kappa, min_items=min_items)
    if st["applies"]:
        return True, f"calibration {st['key']}: kappa {st['kappa']:.2f} >= {min_kappa:.2f} on n={st['n']}"
    return False, str(st["reason"])


def _status_cli(store_dir: Path, overrides: Sequence[str], min_kappa: float | None,
                min_items: int | None) -> int:
    """``posttrain-calibrate status``: list the store; with ``judge=NAME``, say whether one applies."""
    from posttrain.config import GateConfig
    from posttrain.judges.prompt import judge_instrument

    stored = list_calibrations(store_dir)
    print(f"calibrations in {store_dir}: {len(stored)}")
    for c in stored:
        if "error" in c:
            print(f"  {c['key']}: UNUSABLE: {c['error']}")
            continue
        k = "undefined" if c["kappa"] is None else f"{c['kappa']:.2f}"
        print(f"  {c['key']}: judge={c.get('judge')} {_short(c['instrument'])}; kappa {k} on n={c['n']} "
              f"({str(c.get('date', ''))[:10]})")
    if not overrides:
        return 0
    cfg = _judge_from_overrides(overrides, "status")
    gate = GateConfig()
    min_kappa = gate.min_kappa if min_kappa is None else min_kappa
    min_items = gate.min_calibration_items if min_items is None else min_items
    inst = judge_instrument(cfg)
    st = calibration_status(store_dir, inst, min_kappa=min_kappa, min_items=min_items)
    print(f"judge={cfg.name}: {_short(inst)}")
    if st["applies"]:
        print(f"  APPLIES: calibration {st['key']}, kappa {st['kappa']:.2f} >= {min_kappa:.2f} on n={st['n']} "
              f"(>= {min_items} items)")
        return 0
    print(f"  DOES NOT APPLY: {st['reason']}")
    return 1


# ---------------------------------------------------------------------------------------------
# Migrating a calibration to a new judge ("my judge was retired")


def _judge_from_overrides(overrides: Sequence[str], flag: str) -> Any:
    """A judge config from ``judge=NAME`` plus ``judge.FIELD=VALUE`` overrides (as ``status`` reads them)."""
    from omegaconf import OmegaConf

    from posttrain.config import load_group_option

    names = [o.split("=", 1)[1] for o in overrides if o.startswith("judge=")]
    bad = [o for o in overrides if not (o.startswith("judge=") or o.startswith("judge.")) or "=" not in o]
    if len(names) != 1 or bad:
        raise CalibrationError(f"{flag} takes judge=NAME and judge.FIELD=VALUE overrides, got {list(overrides)}")
    cfg = load_group_option("judge", names[0])
    for o in overrides:
        if o.startswith("judge."):
            field, value = o.split("=", 1)
            OmegaConf.update(cfg, field.removeprefix("judge."), _parse_value(value), merge=False)
    return cfg


def _source_calibration(store_dir: Path, old_cfg: Any) -> dict[str, Any]:
    """The stored calibration of the old judge: same provider, model and template version.

    The template hash is not required to match: the hash covers the renderer's source, which moves
    with the code, and what migrate reuses is the human labels. An exact hash match is preferred,
    then the newest record.
    """
    from posttrain.judges.prompt import judge_instrument

    inst = judge_instrument(old_cfg)
    valid = [c for c in list_calibrations(store_dir) if "error" not in c]
    same = [c for c in valid if all(c["instrument"].get(k) == inst[k] for k in ("provider", "model",
                                                                                 "template_version"))]
    if not same:
        have = ", ".join(f"{c['key']} (judge={c.get('judge')})" for c in valid) or "none"
        raise CalibrationError(f"no stored calibration of {inst['provider']} {inst['model']} "
                               f"{inst['template_version']} to migrate from (in {store_dir}: {have}); name the "
                               "old judge as it was calibrated, e.g. --from judge=claude judge.model=<old model> "
                               "judge.template_version=<its version>")
    same.sort(key=lambda c: (c["instrument"]["template_sha256"] == inst["template_sha256"], str(c.get("date"))))
    return same[-1]


def _labels_sha256(source: dict[str, Any]) -> tuple[str, str]:
    """sha256 of the labels file (the labelled CSV) if it is still there, else of the stored labels."""
    csv_path = Path(str(source.get("source_csv") or ""))
    if csv_path.is_file():
        return hashlib.sha256(csv_path.read_bytes()).hexdigest(), str(csv_path)
    rows = [{k: lab.get(k) for k in ("sample_id", "run", "item_id", "model", "human_label")}
            for lab in source["labels"]]
    blob = json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest(), "the stored label records (the labelled CSV is gone)"


def _labelled_conversations(labels: Sequence[Mapping[str, Any]], items_path: Path | None
                            ) -> dict[str, tuple[list[Item], list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per run folder: the items, the generation rows and the labels they belong to.

    Raises:
        CalibrationError: a run folder, generation row or item that is gone (the message names the label).
    """
    extra = {d["id"]: item_from_dict(d) for d in _read_jsonl(items_path)} if items_path else {}
    out: dict[str, tuple[list[Item], list[dict[str, Any]], list[dict[str, Any]]]] = {}
    problems = []
    for lab in labels:
        run_dir = Path(str(lab.get("run_dir") or ""))
        where = f"label {lab.get('sample_id')} ({lab.get('item_id')}, model {lab.get('model')}, run {run_dir})"
        gen_path = run_dir / "generations.jsonl"
        if not gen_path.is_file():
            problems.append(f"{where}: {gen_path} is gone")
            continue
        gens = {(g.get("item_id"), g.get("model")): g for g in _read_jsonl(gen_path)}
        known = dict(extra)
        if (run_dir / "items.jsonl").is_file():
            known = {d["id"]: item_from_dict(d) for d in _read_jsonl(run_dir / "items.jsonl")} | extra
        gen, item = gens.get((lab.get("item_id"), lab.get("model"))), known.get(str(lab.get("item_id")))
        if gen is None or item is None:
            problems.append(f"{where}: its {'generation row' if gen is None else 'item'} is not in the run folder "
                            "(pass --items ITEMS.jsonl for the items)")
            continue
        items, rows, labs = out.setdefault(str(run_dir), ([], [], []))
        if item.id not in {it.id for it in items}:
            items.append(item)
        rows.append(gen)
        labs.append(dict(lab))
    if problems:
        raise CalibrationError("cannot re-score the labelled conversations (nothing was spent): " + "; ".join(problems))
    return out


def migrate(old_overrides: Sequence[str], new_overrides: Sequence[str], *, store_dir: Path,
            min_kappa: float | None = None, min_items: int | None = None, items_path: Path | None = None,
            cap_usd: float | None = None, cache_dir: Path | None = None,
            backoff_base_s: float | None = None) -> dict[str, Any]:
    """Re-score the human-labelled conversations of the old judge's calibration with a new judge.

    The human labels stay valid when a judge is retired; the calibration does not (it holds for one
    instrument). So: find the old judge's calibration, estimate the new judge's cost on its labelled
    conversations and check it against the budget ledger, preflight the new model, re-score, and
    compare. Kappa is computed against the humans (the gate's number) and against the old judge.

    A calibration of the new instrument is written only when kappa >= ``min_kappa`` on at least
    ``min_items`` labelled conversations the new judge scored (an ``error`` verdict is left out and
    listed). It keeps every label beside the new verdict (so :func:`read_calibration` recomputes
    kappa) and ``lineage``: the old instrument and key, the labels file's sha256, the date, the
    kappa against the old judge. Otherwise nothing is written and the result lists the disagreements.

    Returns:
        ``{"written", "path", "reason", "old", "new", "n", "kappa", "kappa_vs_old", "disagreements",
        "excluded", "estimate_usd", "spent_usd", "record"}``.

    Raises:
        CalibrationError: no old calibration, a labelled conversation that is gone, a new model without
            its prices; BudgetExceeded: the estimate exceeds what the ledger has left. Nothing was spent.
        JudgeConfigError: the new judge cannot run (no key, a retired or unknown model). Nothing was spent.
    """
    from posttrain.config import BudgetConfig, GateConfig
    from posttrain.judges.asking import JudgeSpend
    from posttrain.judges.clients import DEFAULT_BACKOFF_BASE_S, check_judge_ready
    from posttrain.judges.lifecycle import preflight_judge
    from posttrain.judges.prompt import judge_instrument
    from posttrain.judges.runner import estimate_cost, judge_generations
    from posttrain.paths import judge_cache_dir, ledger_path
    from posttrain.tracking.budget import Ledger, Spend

    gate = GateConfig()
    min_kappa = gate.min_kappa if min_kappa is None else min_kappa
    min_items = gate.min_calibration_items if min_items is None else min_items
    old_cfg = _judge_from_overrides(old_overrides, "--from")
    new_cfg = _judge_from_overrides(new_overrides, "--to")
    if new_cfg.prices_for != new_cfg.model:
        raise CalibrationError(
            f"judge.model={new_cfg.model!r} has no known price (judge.prices_for={new_cfg.prices_for!r}): set "
            f"judge.price_input_per_mtok, judge.price_output_per_mtok and judge.prices_for={new_cfg.model} in --to, "
            "so the estimate counts what it costs. Nothing was spent.")
    source = _source_calibration(store_dir, old_cfg)
    new_inst = judge_instrument(new_cfg)
    if all(new_inst[k] == source["instrument"][k] for k in INSTRUMENT_KEYS):
        raise CalibrationError(f"--to names the instrument already calibrated ({source['key']}): nothing to migrate")
    groups = _labelled_conversations(source["labels"], items_path)
    check_judge_ready(new_cfg)

    # the cost first: every labelled conversation's judged turns at the new judge's estimates
    per_label_items = [it for items, rows, _ in groups.values() for it in items for r in rows
                       if r.get("item_id") == it.id]
    estimate = estimate_cost(per_label_items, new_cfg)
    budget = BudgetConfig()
    ledger = Ledger(ledger_path(budget.ledger_path), budget.cap_usd if cap_usd is None else cap_usd)
    ledger.check(estimate, what=f"migrating calibration {source['key']} to {new_inst['provider']} "
                                f"{new_inst['model']} ({len(source['labels'])} labelled conversations)")
    preflight = preflight_judge(new_cfg)

    spend = JudgeSpend()
    verdicts: dict[tuple[str, Any, Any], str] = {}
    for run_dir, (items, rows, _) in groups.items():
        scores = judge_generations(items, rows, new_cfg, progress=False, spend=spend,
                                   cache_dir=cache_dir or judge_cache_dir(new_cfg.cache_dir),
                                   backoff_base_s=DEFAULT_BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s)
        for s in scores:
            verdicts[(run_dir, s["item_id"], s.get("model"))] = s["verdict"]
    if spend.usd > 0:
        ledger.record(Spend(str(store_dir), "calibrate-migrate", str(new_cfg.model), "none", 0.0, 0.0, spend.usd,
                            note=f"migrate {source['key']} -> {instrument_key(new_inst)}"))

    labels, excluded, disagreements = [], [], []
    for lab in source["labels"]:
        new = verdicts.get((str(lab.get("run_dir")), lab.get("item_id"), lab.get("model")), "error")
        entry = {**lab, "judge": new_cfg.name, **{f: new_inst[k] for k, f in INSTRUMENT_ROW_FIELDS.items()},
                 "judge_verdict": new, "old_judge_verdict": lab.get("judge_verdict")}
        if new not in ("pass", "fail"):
            excluded.append({k: entry.get(k) for k in ("sample_id", "item_id", "model", "run")})
            continue
        labels.append(entry)
        if new != lab.get("human_label"):
            disagreements.append({k: entry.get(k) for k in ("sample_id", "item_id", "model", "run", "human_label",
                                                            "judge_verdict", "old_judge_verdict")})
    vs_human = kappa_from_labels(labels)
    vs_old = kappa_from_labels([{"sample_id": lab["sample_id"], "human_label": lab["old_judge_verdict"],
                                 "judge_verdict": lab["judge_verdict"]} for lab in labels])
    result: dict[str, Any] = {"written": False, "path": None, "old": source["key"], "new": instrument_key(new_inst),
                              "n": vs_human["n"], "kappa": vs_human["kappa"], "ci95": vs_human["ci95"],
                              "kappa_vs_old": vs_old["kappa"], "agreement_vs_old": vs_old["agreement"],
                              "disagreements": disagreements, "excluded": excluded, "estimate_usd": estimate,
                              "spent_usd": spend.usd, "record": None}
    if vs_human["n"] < min_items:
        result["reason"] = (f"the new judge scored {vs_human['n']} labelled conversations "
                            f"({len(excluded)} ended as error), fewer than gate.min_calibration_items={min_items}")
    elif vs_human["kappa"] is None or vs_human["kappa"] < min_kappa:
        k = "undefined" if vs_human["kappa"] is None else f"{vs_human['kappa']:.2f}"
        result["reason"] = (f"kappa {k} against the human labels < gate.min_kappa {min_kappa:.2f}: the new judge "
                            f"disagrees with the humans on {len(disagreements)} of {vs_human['n']} conversations")
    if result.get("reason"):
        return result  # nothing is written
    labels_sha, labels_of = _labels_sha256(source)
    record = {
        "key": instrument_key(new_inst), "instrument": new_inst, "judge": new_cfg.name, **vs_human,
        "date": datetime.now(UTC).isoformat(),
        "table_layout": "rows: human (pass, fail); columns: judge (pass, fail)",
        "source_csv": source.get("source_csv"),
        "lineage": {"migrated_from": source["key"], "old_instrument": source["instrument"],
                    "old_judge": source.get("judge"), "old_kappa": source.get("kappa"),
                    "labels_sha256": labels_sha, "labels_sha256_of": labels_of,
                    "kappa_vs_old_judge": vs_old["kappa"], "agreement_vs_old_judge": vs_old["agreement"],
                    "excluded": excluded, "date": datetime.now(UTC).isoformat(), "preflight": preflight,
                    "spent_usd": spend.usd},
        "labels": labels,
    }
    path = _store_path(store_dir, record["key"])
    write_json(path, record)
    read_calibration(path)  # what the gate will read: kappa recomputes from the labels written
    return result | {"written": True, "path": str(path), "reason": None, "record": record}


def _migrate_cli(args: argparse.Namespace) -> int:
    res = migrate(args.old, args.new, store_dir=args.store or default_store_dir(), min_kappa=args.min_kappa,
                  min_items=args.min_items, items_path=args.items)
    k = "undefined" if res["kappa"] is None else f"{res['kappa']:.2f}"
    ko = "undefined" if res["kappa_vs_old"] is None else f"{res['kappa_vs_old']:.2f}"
    print(f"migrate {res['old']} -> {res['new']}: estimated ${res['estimate_usd']:.2f}, spent ${res['spent_usd']:.2f}")
    print(f"  kappa against the human labels {k} on n={res['n']}; against the old judge {ko}")
    if res["excluded"]:
        print(f"  {len(res['excluded'])} conversation(s) ended as error and were left out: "
              + ", ".join(str(e["sample_id"]) for e in res["excluded"]))
    for d in res["disagreements"]:
        print(f"  disagrees: {d['sample_id']} item {d['item_id']} model {d['model']} run {d['run']}: human "
              f"{d['human_label']}, new judge {d['judge_verdict']}, old judge {d['old_judge_verdict']}")
    if res["written"]:
        print(f"  wrote {res['path']} (lineage: migrated from {res['old']})")
        return 0
    print(f"  NOT WRITTEN: {res['reason']}. Nothing was stored; read the disagreeing conversations above "
          "(a judge that misreads them needs another model or template), or label a fresh sample for the "
          "new judge with export/import.", file=sys.stderr)
    return 1


def _parse_value(text: str) -> Any:
    """A command-line override value as YAML reads it (numbers, booleans, null, strings)."""
    import yaml

    return yaml.safe_load(text)


def main(argv: Sequence[str] | None = None) -> int:
    """``posttrain-calibrate export|import|status|migrate ...``; exit 2 on bad input.

    ``status`` exits 1 when a judge is given and no calibration applies to it, else 0; ``migrate``
    exits 1 when the new judge's calibration is not written (it disagrees with the humans).
    """
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
    st = sub.add_parser("status", help="list the stored calibrations; with judge=NAME, say whether one applies",
                        description="List the stored calibrations. With judge=NAME (and judge.FIELD=VALUE "
                                    "overrides such as judge.model=...), say whether a calibration applies to that "
                                    "judge config and why not. Exit 1 when it does not apply.")
    st.add_argument("overrides", nargs="*", metavar="judge=NAME|judge.FIELD=VALUE")
    st.add_argument("--store", type=Path, default=None, help="default: $POSTTRAIN_HOME/calibrations")
    st.add_argument("--min-kappa", type=float, default=None, help="default: gate.min_kappa (0.7)")
    st.add_argument("--min-items", type=int, default=None, help="default: gate.min_calibration_items (30)")
    mg = sub.add_parser("migrate", help="re-score a retired judge's labelled conversations with a new judge",
                        description="Re-score the human-labelled conversations of the old judge's calibration "
                                    "with the new judge (cost estimated and checked against the budget first); "
                                    "report kappa against the humans and against the old judge; store a "
                                    "calibration of the new instrument, with its lineage, only if kappa >= "
                                    "gate.min_kappa on >= gate.min_calibration_items. Exit 1 when not written.")
    mg.add_argument("--from", dest="old", nargs="+", required=True, metavar="judge=NAME|judge.FIELD=VALUE")
    mg.add_argument("--to", dest="new", nargs="+", required=True, metavar="judge=NAME|judge.FIELD=VALUE")
    mg.add_argument("--store", type=Path, default=None, help="default: $POSTTRAIN_HOME/calibrations")
    mg.add_argument("--items", type=Path, default=None, help="items JSONL (default: each RUN_DIR/items.jsonl)")
    mg.add_argument("--min-kappa", type=float, default=None, help="default: gate.min_kappa (0.7)")
    mg.add_argument("--min-items", type=int, default=None, help="default: gate.min_calibration_items (30)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "export":
            items = [item_from_dict(d) for d in _read_jsonl(args.items)] if args.items else None
            out = export_sample(args.run_dirs, args.out, n=args.n, seed=args.seed, items=items)
            n_rows = len(json.loads(Path(f"{out}.key.json").read_text(encoding="utf-8"))["samples"])
            print(f"wrote {n_rows} conversations to {out}; fill human_label with pass/fail.")
            print(f"the judge's verdicts are in {out}.key.json: do not show it to the labeller.")
            print(f"then: posttrain-calibrate import {out}")
        elif args.cmd == "status":
            return _status_cli(args.store or default_store_dir(), args.overrides, args.min_kappa, args.min_items)
        elif args.cmd == "migrate":
            return _migrate_cli(args)
        else:
            res = import_labels(args.csv, store_dir=args.store or default_store_dir(), key=args.key)
            k = "undefined" if res["kappa"] is None else f"{res['kappa']:.2f}"
            ci = "" if res["ci95"] is None else f" [95% CI {res['ci95'][0]:.2f}, {res['ci95'][1]:.2f}]"
            print(f"judge={res['judge']}: {_short(res['instrument'])}")
            print(f"kappa {k}{ci}, agreement {res['agreement']:.0%} on n={res['n']}; stored {res['path']}")
            if res["n"] < DEFAULT_MIN_ITEMS:
                print(f"warning: {res['n']} labelled items; the gate needs gate.min_calibration_items "
                      f"(default {DEFAULT_MIN_ITEMS}) before this calibration counts", file=sys.stderr)
    except (CalibrationError, OSError, csv.Error, KeyError, ValueError, RuntimeError) as exc:
        # ConfigError and JudgeConfigError are ValueErrors; BudgetExceeded and JudgeStopped RuntimeErrors
        print(f"posttrain-calibrate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
