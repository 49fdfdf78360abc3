"""``posttrain-review SWEEP``: a person reads the primary pair's transcripts before anything trains.

The seeds' Phase 1 ends with "review sample conversations to verify the gap is real"; this is that
step, made a record. ``posttrain-review SWEEP`` recomputes the gate from the sweep's records and
``primary.json`` (:func:`posttrain.analysis.report.recompute_gate`, the code the report and
training use) and writes ``review.html`` into the sweep folder: ONE self-contained page (inline
CSS and JS, no network or file resource of any kind) with

- the gate summary at the top (verdict, reasons, checks, the sha256 of the gate block);
- the primary pair's discordant items first (instruct passed, base did not; then the reverse),
  then a seeded sample of concordant items, then the items an error dropped from the pair;
- each item's two transcripts side by side, each with its verdict, every turn verdict, every check
  and its evidence (the judge's ``detail``), the rationale and any error;
- category and group filters (``review.html#category=NAME`` preselects one category).

Everything taken from the records is HTML-escaped. ``posttrain-review SWEEP --confirm --reviewer
NAME --reviewed N`` then appends a confirmation to ``review.json``: who, when (UTC), how many items
were read and the sha256 of the recomputed gate block it confirms. Training
(``posttrain.stages.train``) needs a PASS and a confirmation of exactly that gate.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.records import read_json, read_jsonl, write_json

REVIEW_PAGE = "review.html"
REVIEW_RECORD = "review.json"
DEFAULT_SAMPLE = 20  # concordant items shown after the discordant ones
GROUPS = {  # group key -> heading; the page shows them in this order
    "instruct_only": "Discordant: instruct passed, base did not",
    "base_only": "Discordant: base passed, instruct did not",
    "both": "Concordant (sample): both passed",
    "neither": "Concordant (sample): both failed",
    "dropped": "Dropped from the pair (verdict=error on a side)",
}


class ReviewError(PosttrainError):
    """The sweep cannot be reviewed or confirmed (no records, no primary pair, a wrong count)."""


def gate_sha256(gate: dict[str, Any]) -> str:
    """SHA-256 of a gate block as canonical JSON (sorted keys, no spaces): what a review confirms.

    The block is the one :func:`~posttrain.analysis.report.recompute_gate` returns (already passed
    through JSON), so the same records, ``primary.json`` and calibration give the same digest.
    """
    text = json.dumps(gate, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_confirmations(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The confirmations in ``SWEEP/review.json``, oldest first (empty when there is no file)."""
    path = Path(sweep_dir) / REVIEW_RECORD
    if not path.is_file():
        return []
    try:
        rec = read_json(path)
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{path}: unreadable ({exc}); confirm again with posttrain-review --confirm") from exc
    confirmations = rec.get("confirmations") if isinstance(rec, dict) else None
    return [c for c in confirmations if isinstance(c, dict)] if isinstance(confirmations, list) else []


def confirm_commands(sweep_dir: str | Path) -> str:
    """The two commands that make a confirmation, for error messages."""
    return (f"`posttrain-review {sweep_dir}` (writes review.html; read it), then `posttrain-review {sweep_dir} "
            "--confirm --reviewer NAME --reviewed N`")


# ---------------------------------------------------------------------------------------------
# What the page shows, from the records


@dataclass
class Side:
    """One arm of a reviewed item: the conversation it had and the verdict it got."""

    label: str
    job: str
    generation: dict[str, Any] | None
    score: dict[str, Any] | None


@dataclass
class ReviewItem:
    item_id: str
    category: str
    cluster: str | None
    group: str
    base: Side
    instruct: Side
    item: dict[str, Any] | None = None


@dataclass
class PairReview:
    base_label: str
    instruct_label: str
    items: list[ReviewItem]
    counts: dict[str, int] = field(default_factory=dict)  # group -> how many exist (not how many are shown)


@dataclass
class Review:
    sweep_dir: str
    gate: dict[str, Any]
    gate_sha256: str
    pairs: list[PairReview]
    warnings: list[str]
    sample: int
    seed: int

    @property
    def n_items(self) -> int:
        return sum(len(p.items) for p in self.pairs)


def _job_labels(sweep_dir: str | Path) -> tuple[dict[str, str], list[str]]:
    """label -> job folder name of each compared job, as the comparison names them; and its warnings."""
    from posttrain.analysis.comparison import build_comparison
    from posttrain.analysis.report import load_sweep

    records = load_sweep(sweep_dir)
    # only the labels are needed: a lookup that calibrates nothing keeps this from reading the store
    comp = build_comparison(records.jobs, records.thresholds, missing=records.missing,
                            calibration=lambda *a, **k: (False, "not looked up", None),
                            sweep_dir=records.sweep_dir, primary=records.primary)
    return {m["model"]: m["job"] for m in comp["models"]}, list(comp["warnings"])


def _by_id(path: Path, key: str) -> dict[str, dict[str, Any]]:
    return {str(r[key]): r for r in read_jsonl(path) if key in r} if path.is_file() else {}


def _group(vb: str, vi: str) -> str:
    if "error" in (vb, vi):
        return "dropped"
    if vb == vi:
        return "both" if vb == "pass" else "neither"
    return "instruct_only" if vi == "pass" else "base_only"


def _pair_review(sweep: Path, jobs: dict[str, str], base: str, instruct: str, sample: int,
                 rng: random.Random) -> PairReview:
    from posttrain.analysis.gates import item_cluster

    folders = {}
    for label in (base, instruct):
        if label not in jobs:
            raise ReviewError(f"the gate names {label!r} but no compared job of {sweep} has that label")
        folders[label] = sweep / jobs[label]
    scores = {lab: _by_id(d / "scores.jsonl", "item_id") for lab, d in folders.items()}
    gens = {lab: _by_id(d / "generations.jsonl", "item_id") for lab, d in folders.items()}
    items = _by_id(folders[instruct] / "items.jsonl", "id") | _by_id(folders[base] / "items.jsonl", "id")
    shared = sorted(scores[base].keys() & scores[instruct].keys())
    grouped: dict[str, list[str]] = {g: [] for g in GROUPS}
    for i in shared:
        grouped[_group(str(scores[base][i].get("verdict")), str(scores[instruct][i].get("verdict")))].append(i)
    counts = {g: len(ids) for g, ids in grouped.items()}
    # the concordant sample: `sample` items drawn (seeded) from both + neither, shown in id order
    concordant = grouped["both"] + grouped["neither"]
    picked = set(rng.sample(concordant, min(sample, len(concordant))))
    shown = grouped["instruct_only"] + grouped["base_only"] + \
        [i for i in grouped["both"] if i in picked] + [i for i in grouped["neither"] if i in picked] + grouped["dropped"]
    out = []
    for i in shown:
        sb, si = scores[base][i], scores[instruct][i]
        it = items.get(i)
        out.append(ReviewItem(
            item_id=i, category=str(si.get("category") or sb.get("category") or (it or {}).get("category")
                                    or "uncategorised"),
            cluster=item_cluster(it) if it else None,
            group=_group(str(sb.get("verdict")), str(si.get("verdict"))),
            base=Side(base, jobs[base], gens[base].get(i), sb), instruct=Side(instruct, jobs[instruct], gens[instruct].get(i), si),
            item=it))
    return PairReview(base, instruct, out, counts)


def build_review(sweep_dir: str | Path, *, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> Review:
    """Recompute the gate and collect the primary pair(s)' items to show.

    Raises:
        ReviewError: no job folders, or the gate names no primary pair (NOT_APPLICABLE).
    """
    from posttrain.analysis.report import ReportError, recompute_gate

    if sample < 0:
        raise ReviewError(f"--sample {sample}: must be >= 0")
    sweep = Path(sweep_dir).expanduser().resolve()
    try:
        gate = recompute_gate(sweep)
    except ReportError as exc:
        raise ReviewError(str(exc)) from exc
    primaries = gate.get("primaries") or [gate]
    if any(not p.get("base_model") or not p.get("instruct_model") for p in primaries):
        raise ReviewError(f"the gate of {sweep} is {gate.get('verdict')} with no primary pair to review: "
                          f"{'; '.join(map(str, gate.get('reasons') or [gate.get('reason')]))}")
    jobs, warnings = _job_labels(sweep)
    rng = random.Random(seed)
    pairs = [_pair_review(sweep, jobs, p["base_model"], p["instruct_model"], sample, rng) for p in primaries]
    return Review(str(sweep), gate, gate_sha256(gate), pairs, warnings, sample, seed)


# ---------------------------------------------------------------------------------------------
# The page


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: Any) -> str:
    if isinstance(x, float):
        return _e(f"{x:.3g}" if math.isfinite(x) and (abs(x) >= 1e-3 or x == 0) else f"{x:.1e}")
    return _e(x)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 1.5em 3em;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1.05em;margin:.2em 0}
.gate{border:2px solid #888;border-radius:6px;padding:.6em 1em;background:#fff}
.v-PASS{color:#0a6b1f}.v-FAIL,.v-NOT_ELIGIBLE,.v-NOT_APPLICABLE{color:#a3120b}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top;text-align:left}
.filters{position:sticky;top:0;background:#eef;padding:.5em;border:1px solid #ccd;z-index:1}
.filters label{margin-right:1em;white-space:nowrap}
.item{border:1px solid #bbb;border-radius:6px;margin:1em 0;padding:.5em .8em;background:#fff}
.item[hidden]{display:none}
.g-instruct_only{border-left:6px solid #2a7}.g-base_only{border-left:6px solid #c52}.g-dropped{border-left:6px solid #999}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.turn{margin:.3em 0}.user,.reply{white-space:pre-wrap;word-break:break-word;padding:.3em .5em;border-radius:4px}
.user{background:#eef3ff}.reply{background:#f3f3f3}.meta{color:#666;font-size:.85em}
.pass{color:#0a6b1f;font-weight:600}.fail{color:#a3120b;font-weight:600}.error{color:#8a5a00;font-weight:600}
.expect{font-size:.85em;color:#444}
.tv{margin:.2em 0 .8em 1em;padding-left:.5em;border-left:3px solid #ddd}
"""

_JS = """
(function(){
  var boxes=document.querySelectorAll('.filters input');
  function apply(){
    var on={};boxes.forEach(function(b){on[b.name+':'+b.value]=b.checked;});
    var shown=0;
    document.querySelectorAll('.item').forEach(function(it){
      var vis=on['category:'+it.dataset.category]&&on['group:'+it.dataset.group];
      it.hidden=!vis;if(vis){shown++;}
    });
    document.getElementById('shown').textContent=String(shown);
  }
  boxes.forEach(function(b){b.addEventListener('change',apply);});
  var m=/category=([^&]*)/.exec(decodeURIComponent(location.hash||''));
  if(m){boxes.forEach(function(b){if(b.name==='category'){b.checked=(b.value===m[1]);}});}
  apply();
})();
"""


def _verdict_html(v: Any) -> str:
    cls = v if v in ("pass", "fail", "error") else "error"
    return f'<span class="{cls}">{_e(v)}</span>'


def _checks_table(checks: Sequence[Any]) -> str:
    """Every check with its evidence; keys beyond name/passed/detail get their own column."""
    rows = [c for c in checks if isinstance(c, dict)]
    if not rows:
        return '<p class="meta">no checks recorded</p>'
    extra = sorted({k for c in rows for k in c} - {"name", "passed", "detail", "turn"})
    head = "".join(f"<th>{_e(k)}</th>" for k in ["check", "passed", "evidence (detail)", *extra])
    body = []
    for c in rows:
        passed = c.get("passed")
        mark = _verdict_html("pass" if passed is True else "fail" if passed is False else passed)
        body.append(f"<tr><td>{_e(c.get('name'))}</td><td>{mark}</td><td>{_e(c.get('detail'))}</td>"
                    + "".join(f"<td>{_e(json.dumps(c.get(k), default=str) if isinstance(c.get(k), dict | list) else c.get(k))}</td>"
                              for k in extra) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _turn_verdict_html(tv: dict[str, Any]) -> str:
    """One judged turn: its verdict, every check with its evidence, the rationale, and any other field
    the judge recorded (code facts, disagreements) as JSON."""
    extra = {k: v for k, v in tv.items() if k not in ("turn", "verdict", "checks", "rationale")}
    return (f'<div class="tv"><b>turn {_e(tv.get("turn"))} verdict: {_verdict_html(tv.get("verdict"))}</b>'
            + _checks_table(tv.get("checks") or [])
            + f'<p class="meta">rationale: {_e(tv.get("rationale"))}</p>'
            + "".join(f'<p class="meta">{_e(k)}: {_e(json.dumps(v, default=str))}</p>' for k, v in extra.items())
            + "</div>")


def _score_head(score: dict[str, Any] | None) -> str:
    if score is None:
        return '<p class="error">no score row</p>'
    judge = (f" · judge {_e(score.get('judge_model') or score.get('judge'))} ({_e(score.get('template_version'))})"
             if score.get("judge") else "")
    err = f'<p class="error">error: {_e(score.get("error"))}</p>' if score.get("error") else ""
    return f"<p>verdict {_verdict_html(score.get('verdict'))} · scorer {_e(score.get('scorer'))}{judge}</p>{err}"


def _expectation(expect: Any) -> str:
    if not isinstance(expect, dict):
        return ""
    bits = []
    if expect.get("must_include"):
        bits.append("must include: " + "; ".join(" or ".join(map(str, g)) for g in expect["must_include"]))
    if expect.get("must_not_include"):
        bits.append("must not include: " + ", ".join(map(str, expect["must_not_include"])))
    for c in expect.get("constraints") or []:
        bits.append(f"constraint {c.get('kind')}={c.get('value')}" + (f" ({c['description']})" if c.get("description") else ""))
    if expect.get("notes"):
        bits.append(f"notes: {expect['notes']}")
    return f'<div class="expect">expected: {_e(" | ".join(bits))}</div>' if bits else ""


def _transcript_html(side: Side, item: dict[str, Any] | None) -> str:
    """One arm: verdict first, then each turn (user, what was expected, reply) with its turn verdict
    under the reply; a score without turn verdicts (a deterministic scorer) shows its checks at the end."""
    gen, score = side.generation, side.score or {}
    parts = [f"<h3>{_e(side.label)} <span class=\"meta\">(job {_e(side.job)})</span></h3>", _score_head(side.score)]
    tvs = [tv for tv in score.get("turn_verdicts") or [] if isinstance(tv, dict)]
    if gen is None:
        parts.append('<p class="error">no generation row for this item</p>')
    else:
        if gen.get("prompt_format"):
            parts.append(f'<p class="meta">model {_e(gen.get("model"))} · format {_e(gen.get("prompt_format"))}</p>')
        item_turns = (item or {}).get("turns") or []
        for k, t in enumerate(gen.get("turns") or []):
            label = t.get("turn", k)
            expect = item_turns[k].get("expect") if k < len(item_turns) and isinstance(item_turns[k], dict) else None
            parts.append(f'<div class="turn"><div class="meta">turn {_e(label)} · finish {_e(t.get("finish_reason"))} · '
                         f'{_e(t.get("n_new_tokens"))} new tokens</div><div class="user">{_e(t.get("user"))}</div>'
                         f'{_expectation(expect)}<div class="reply">{_e(t.get("reply"))}</div></div>')
            parts += [_turn_verdict_html(tv) for tv in tvs if str(tv.get("turn")) == str(label)]
        shown = {str(t.get("turn", k)) for k, t in enumerate(gen.get("turns") or [])}
        tvs = [tv for tv in tvs if str(tv.get("turn")) not in shown]
    parts += [_turn_verdict_html(tv) for tv in tvs]  # turn verdicts no transcript turn carries
    if not score.get("turn_verdicts") and score:
        parts.append(_checks_table(score.get("checks") or []))
        if score.get("rationale"):
            parts.append(f'<p class="meta">rationale: {_e(score.get("rationale"))}</p>')
    return "".join(parts)


def _gate_html(r: Review) -> str:
    g = r.gate
    verdict = str(g.get("verdict"))
    rows = "".join(f"<tr><td>{_e(c.get('name'))}</td><td>{_num(c.get('value'))}</td><td>{_e(c.get('op'))}</td>"
                   f"<td>{_num(c.get('threshold'))}</td><td>{_verdict_html('pass' if c.get('passed') else 'fail')}</td></tr>"
                   for c in g.get("checks") or [] if isinstance(c, dict))
    obs = g.get("observed") or {}
    facts = [("base", g.get("base_model")), ("instruct", g.get("instruct_model")), ("paired items", g.get("n_paired")),
             ("instruct only / base only", f"{g.get('instruct_only')} / {g.get('base_only')}"),
             ("clusters", obs.get("n_clusters")), ("item-level McNemar p", g.get("mcnemar_p")),
             ("cluster p", obs.get("cluster_p")), ("p the gate uses", obs.get("gate_p")),
             ("primary pair source", g.get("primary_source")), ("gate sha256 (what a confirmation names)", r.gate_sha256)]
    return (f'<div class="gate"><h2>Gate: <span class="v-{_e(verdict)}" id="verdict">{_e(verdict)}</span></h2>'
            + "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in g.get("reasons") or []) + "</ul>"
            + "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_num(v)}</td></tr>" for k, v in facts) + "</table>"
            + (f"<table><tr><th>check</th><th>value</th><th>must be</th><th>threshold</th><th>holds</th></tr>{rows}</table>"
               if rows else "")
            + "".join(f"<p class=\"meta\">warning: {_e(w)}</p>" for w in r.warnings) + "</div>")


def render_page(r: Review) -> str:
    """The review page as one HTML string: inline CSS and JS, nothing loaded from anywhere."""
    items = [(p, it) for p in r.pairs for it in p.items]
    cats = sorted({it.category for _, it in items})
    groups = [g for g in GROUPS if any(it.group == g for _, it in items)]
    filters = ("<div class=\"filters\"><b>category</b> "
               + "".join(f'<label><input type="checkbox" name="category" value="{_e(c)}" checked> {_e(c)}</label>'
                         for c in cats)
               + " <b>group</b> "
               + "".join(f'<label><input type="checkbox" name="group" value="{_e(g)}" checked> {_e(GROUPS[g])}</label>'
                         for g in groups)
               + f' · showing <span id="shown">{len(items)}</span> of {len(items)}</div>')
    body = []
    for p in r.pairs:
        c = p.counts
        body.append(f"<h2>Primary pair: instruct <code>{_e(p.instruct_label)}</code> vs base <code>{_e(p.base_label)}</code></h2>"
                    f"<p>{c['instruct_only']} instruct-only and {c['base_only']} base-only items (all shown first), "
                    f"{c['both']} both-pass and {c['neither']} both-fail items ({min(r.sample, c['both'] + c['neither'])} "
                    f"shown, sampled with seed {r.seed}), {c['dropped']} dropped by an error (all shown).</p>")
        for it in p.items:
            where = f" · cluster {_e(it.cluster)}" if it.cluster else ""
            body.append(
                f'<div class="item g-{_e(it.group)}" id="item-{_e(it.item_id)}" data-item="{_e(it.item_id)}" '
                f'data-category="{_e(it.category)}" data-group="{_e(it.group)}">'
                f"<h3>{_e(it.item_id)} <span class=\"meta\">{_e(GROUPS[it.group])} · category {_e(it.category)}{where}"
                "</span></h3>"
                f'<div class="sides"><div class="side base">{_transcript_html(it.base, it.item)}</div>'
                f'<div class="side instruct">{_transcript_html(it.instruct, it.item)}</div></div></div>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>posttrain review: {_e(r.sweep_dir)}</title><style>{_CSS}</style></head><body>"
            f"<h1>Review before training: {_e(r.sweep_dir)}</h1>"
            "<p>Read the discordant items: do the verdicts and their evidence hold? Then record what you read with "
            f"<code>posttrain-review {_e(r.sweep_dir)} --confirm --reviewer NAME --reviewed N</code>.</p>"
            + _gate_html(r) + filters + "".join(body) + f"<script>{_JS}</script></body></html>\n")


def write_review(sweep_dir: str | Path, *, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> tuple[Path, Review]:
    """Write ``SWEEP/review.html``; returns its path and what it shows."""
    r = build_review(sweep_dir, sample=sample, seed=seed)
    path = Path(r.sweep_dir) / REVIEW_PAGE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_page(r), encoding="utf-8")
    tmp.replace(path)
    return path, r


def confirm(sweep_dir: str | Path, *, reviewer: str, reviewed: int) -> dict[str, Any]:
    """Append a confirmation of the sweep's recomputed gate to ``SWEEP/review.json``.

    Refused when the gate is not PASS (there is nothing to train on), when review.html was not
    written for this very gate (so the person saw the items of the gate they confirm), when the
    reviewer is empty or ``reviewed`` is not between 1 and the number of items on the page.
    """
    if not reviewer.strip():
        raise ReviewError("--reviewer is empty: name the person who read the page")
    r = build_review(sweep_dir)
    sweep = Path(r.sweep_dir)
    if r.gate.get("verdict") != "PASS":
        raise ReviewError(f"the gate of {sweep} is {r.gate.get('verdict')}, not PASS: there is nothing to confirm "
                          "for training. Nothing was recorded.")
    page = sweep / REVIEW_PAGE
    if not page.is_file() or r.gate_sha256 not in page.read_text(encoding="utf-8"):
        raise ReviewError(f"{page} was not written for the gate recomputed now (sha256 {r.gate_sha256[:12]}...): run "
                          f"`posttrain-review {sweep}` and read the page first. Nothing was recorded.")
    n_discordant = sum(p.counts["instruct_only"] + p.counts["base_only"] for p in r.pairs)
    if not 1 <= reviewed <= r.n_items:
        raise ReviewError(f"--reviewed {reviewed}: the page shows {r.n_items} items; say how many of them you read "
                          "(1 or more). Nothing was recorded.")
    entry = {"reviewer": reviewer.strip(), "confirmed_at": datetime.now(UTC).isoformat(timespec="seconds"),
             "n_reviewed": reviewed, "n_shown": r.n_items, "n_discordant": n_discordant,
             "gate_sha256": r.gate_sha256, "gate_verdict": r.gate.get("verdict"),
             "base_model": r.gate.get("base_model"), "instruct_model": r.gate.get("instruct_model"),
             "review_page_sha256": hashlib.sha256(page.read_bytes()).hexdigest()}
    confirmations = read_confirmations(sweep) + [entry]
    write_json(sweep / REVIEW_RECORD, {"sweep_dir": str(sweep), "confirmations": confirmations})
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``posttrain-review SWEEP [--sample K] [--seed S] | --confirm --reviewer NAME --reviewed N``."""
    parser = argparse.ArgumentParser(prog="posttrain-review", description=(
        "Write SWEEP/review.html (the primary pair's transcripts, discordant first, with every verdict and its "
        "evidence), or record that a person read it (--confirm): training needs that confirmation."))
    parser.add_argument("sweep_dir", help="the sweep folder, e.g. multirun/2026-01-31/12-00-00")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="concordant items to show (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the concordant sample (default 0)")
    parser.add_argument("--confirm", action="store_true", help="record a confirmation in review.json")
    parser.add_argument("--reviewer", default=None, help="with --confirm: who read the page")
    parser.add_argument("--reviewed", type=int, default=None, help="with --confirm: how many items were read")
    args = parser.parse_args(argv)
    try:
        if args.confirm:
            if args.reviewer is None or args.reviewed is None:
                parser.error("--confirm needs --reviewer NAME and --reviewed N")
            entry = confirm(args.sweep_dir, reviewer=args.reviewer, reviewed=args.reviewed)
            print(f"confirmed gate {entry['gate_sha256'][:12]}... ({entry['gate_verdict']}) by {entry['reviewer']}, "
                  f"{entry['n_reviewed']} of {entry['n_shown']} items read; recorded in "
                  f"{Path(args.sweep_dir) / REVIEW_RECORD}")
            return 0
        path, r = write_review(args.sweep_dir, sample=args.sample, seed=args.seed)
    except PosttrainError as exc:
        print(f"posttrain-review: error: {exc}", file=sys.stderr)
        return 2
    n_disc = sum(p.counts["instruct_only"] + p.counts["base_only"] for p in r.pairs)
    print(f"wrote {path}: gate {r.gate.get('verdict')} (sha256 {r.gate_sha256[:12]}...), {n_disc} discordant and "
          f"{r.n_items - n_disc} other items. Open it in a browser, read it, then run\n"
          f"  posttrain-review {r.sweep_dir} --confirm --reviewer NAME --reviewed N")
    return 0


if __name__ == "__main__":
    sys.exit(main())
