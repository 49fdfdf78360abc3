"""``scorer=verifiable``: exact, deterministic verdicts where the expectation is the instruction's definition.

A benchmark declares a turn verifiable (``Expectation.verifiable``) when its structured fields ARE what
the instruction asks: an answer present in one of its accepted variants, a word limit, a list or JSON
format, a language, a forbidden word (or, for an IFEval item, its instruction ids). Such a turn needs no
judgment, so its verdict needs no calibration and may decide the gate, as IFEval's checks do (Zhou et
al. 2023; docs/judging.md, "The verifiable scorer"). The checks are those of :mod:`.checks`, the same
functions triage runs; what differs is what the scorer refuses to decide:

- a turn not declared verifiable is ``not_scored`` (recorded, counted and named, never dropped), and an
  item with any such judged turn is ``not_scored`` as a whole: deciding it on its verifiable turns alone
  would decide a conversation on part of what it asks;
- a language check on a reply too short (or too stopword-poor) to tell is an ``error``, not a pass:
  the gate's worst case then counts it against the claim;
- a benchmark selection with no verifiable item is refused before any model loads
  (:func:`check_scorable`).

Score rows have the same keys as triage's and the LLM judge's, plus ``scorer_version`` and
``checks_sha256`` (the instrument: :func:`instrument`); item verdicts are pass / fail / error /
``not_scored``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from posttrain.items import Item
from posttrain.scorers.checks import (
    SUPPORTED_LANGUAGES,
    check_expectation,
    detect_language,
    pairing_problems,
    wordless_verdict,
)

SCORER_NAME = "verifiable"
VERSION = "verifiable-v1"
NOT_SCORED = "not_scored"
_HERE = Path(__file__).resolve().parent
# The files whose text defines what a verdict means; their hash is the instrument's identity.
_DEFINITION_FILES = ("checks.py", "verifiable.py", "ifeval.py")


@functools.lru_cache(maxsize=1)
def checks_sha256() -> str:
    """SHA-256 over the source of the check definitions (checks.py, this file, ifeval.py if present).

    Two runs whose rows carry the same hash were decided by the same definitions; any edit to a check
    changes it, and the gate then refuses to pair the runs.
    """
    h = hashlib.sha256()
    for name in _DEFINITION_FILES:
        path = _HERE / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def instrument() -> dict[str, str]:
    """The scorer's identity as summary.json records it (``summary["scorer_instrument"]``)."""
    return {"scorer": SCORER_NAME, "version": VERSION, "checks_sha256": checks_sha256()}


# --------------------------------------------------------------------------------------------
# Before anything runs: what can be decided


def item_is_verifiable(item: Item) -> bool:
    """True when every judged turn of ``item`` is declared verifiable (and there is one)."""
    judged = item.judged_turns
    return bool(judged) and all(item.turns[i].expect.verifiable for i in judged)  # type: ignore[union-attr]


def check_scorable(items: Sequence[Item], *, benchmark: str = "benchmark") -> dict[str, Any]:
    """Refuse a selection the scorer cannot decide; otherwise say how much of it it will decide.

    Args:
        items: the run's items (after split and limit).
        benchmark: the name shown in the error.

    Returns:
        ``{"n_items", "n_verifiable", "not_scored": [item ids]}``.

    Raises:
        ValueError: no item is verifiable; or a verifiable turn asks for a language the detector does not
            know (it could never fail); the message names the items and the setting to change.
    """
    bad_lang = [f"{it.id} turn {i} ({c.value!r})" for it in items for i, t in enumerate(it.turns)
                if t.expect is not None and t.expect.verifiable
                for c in t.expect.constraints if c.kind == "language" and str(c.value).lower() not in SUPPORTED_LANGUAGES]
    if bad_lang:
        raise ValueError(f"verifiable turns ask for a language the detector cannot tell ({', '.join(bad_lang[:5])}); "
                         f"supported: {', '.join(SUPPORTED_LANGUAGES)}. Declare those turns verifiable=false")
    ok = [it.id for it in items if item_is_verifiable(it)]
    if not ok:
        raise ValueError(f"scorer=verifiable: none of the {len(items)} selected items of {benchmark} is declared "
                         "verifiable (Expectation.verifiable), so every verdict would be not_scored. Use "
                         "benchmark=instructions (or ifeval), or scorer=llm for this benchmark")
    return {"n_items": len(items), "n_verifiable": len(ok),
            "not_scored": [it.id for it in items if not item_is_verifiable(it)]}


# --------------------------------------------------------------------------------------------
# Scoring


def _row(item: Item, model: str | None, **fields: Any) -> dict[str, Any]:
    # The score-row keys of triage and the LLM judge, in the same order, plus the instrument.
    base: dict[str, Any] = {
        "item_id": item.id, "category": item.category, "model": model, "verdict": "error",
        "scorer": SCORER_NAME, "judge": None, "judge_provider": None, "judge_model": None,
        "template_version": VERSION, "template_sha256": None, "turn_verdicts": [], "checks": [],
        "rationale": "", "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "n_parse_failures": 0,
        "n_api_errors": 0, "reply_chars": 0, "error": None,
        "scorer_version": VERSION, "checks_sha256": checks_sha256(),
    }
    base.update(fields)
    return base


def _ifeval_checks(item: Item, reply: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """IFEval's own checkers (posttrain.scorers.ifeval), as checks; the raw result goes on the row."""
    try:
        from posttrain.scorers.ifeval import score_item
    except ImportError as exc:  # the IFEval module is optional at import time, required here
        raise RuntimeError(f"item {item.id} is an IFEval item but posttrain.scorers.ifeval cannot be imported "
                           f"({exc}); nothing was scored") from exc
    result = score_item(item, reply)
    checks = [{"name": f"ifeval:{r['id']}", "passed": bool(r["strict"]),
               "detail": f"strict {'pass' if r['strict'] else 'fail'}, loose {'pass' if r['loose'] else 'fail'}"}
              for r in result["instructions"]]
    return checks, result


def _score_turn(item: Item, i: int, reply: str) -> dict[str, Any]:
    """One verifiable turn: ``{"verdict": pass|fail|undecided, "checks", "rationale", ["ifeval"]}``."""
    expect = item.turns[i].expect
    assert expect is not None and expect.verifiable
    out: dict[str, Any] = {}
    ifeval_checks: list[dict[str, Any]] = []
    if item.meta.get("ifeval"):  # always scored, so an empty reply counts in IFEval's metrics (as a miss)
        ifeval_checks, out["ifeval"] = _ifeval_checks(item, reply)
    empty = wordless_verdict(reply)
    if empty is not None:  # an empty reply fails whatever the checks would say of it
        return {**empty, **out}
    checks = check_expectation(reply, expect) + ifeval_checks
    if not checks:  # verifiability_problems refuses this at load; never pass a turn nothing tested
        return {"verdict": "undecided", "checks": [], "rationale": "no check applies to this turn"}
    failed = [c for c in checks if not c["passed"]]
    # A language the detector cannot tell decides nothing; a reply another check fails is failed anyway.
    if not failed and any(c.kind == "language" for c in expect.constraints) and detect_language(reply)[0] is None:
        return {"verdict": "undecided", "checks": checks,
                "rationale": "the reply is too short or has too few function words to tell its language"}
    rationale = "; ".join(f"{c['name']}: {c['detail']}" for c in failed) if failed else f"all {len(checks)} checks passed"
    return {"verdict": "fail" if failed else "pass", "checks": checks, "rationale": rationale, **out}


def score_item(item: Item, row: Mapping[str, Any]) -> dict[str, Any]:
    """Score one generation row of ``item`` exactly; see the module docstring for the verdicts.

    Turns are paired by position, as in triage; a row that lacks a judged turn or whose user text
    differs from the item's is an ``error`` (stale generations).

    Raises:
        ValueError: ``row["item_id"]`` is not ``item.id``.
    """
    if row.get("item_id") != item.id:
        raise ValueError(f"generation row for {row.get('item_id')!r} paired with item {item.id!r}")
    model = row.get("model")
    gen_turns = list(row.get("turns") or [])
    judged = item.judged_turns
    if not judged:
        return _row(item, model, error="item has no judged turn (no expectation): nothing to score")
    problems = pairing_problems(item, gen_turns)
    if problems:
        return _row(item, model, error="; ".join(problems))

    turn_verdicts: list[dict[str, Any]] = []
    flat: list[dict[str, Any]] = []
    reply_chars = 0
    for i in judged:
        gen = gen_turns[i]
        turn_no = gen.get("turn", i)
        reply = gen.get("reply") or ""
        reply_chars += len(reply)
        if not item.turns[i].expect.verifiable:  # type: ignore[union-attr]
            turn_verdicts.append({"turn": turn_no, "verdict": NOT_SCORED, "checks": [],
                                  "rationale": "not declared verifiable: needs a judge"})
            continue
        tv = {"turn": turn_no, **_score_turn(item, i, reply)}
        turn_verdicts.append(tv)
        flat.extend({"turn": turn_no, **c} for c in tv["checks"])
    common: dict[str, Any] = {"turn_verdicts": turn_verdicts, "checks": flat, "reply_chars": reply_chars}
    ifeval = [tv["ifeval"] for tv in turn_verdicts if "ifeval" in tv]
    if ifeval:
        common["ifeval"] = ifeval[0]  # an IFEval item has one turn

    skipped = [tv["turn"] for tv in turn_verdicts if tv["verdict"] == NOT_SCORED]
    if skipped:
        return _row(item, model, verdict=NOT_SCORED, **common,
                    rationale=f"turn(s) {skipped} not declared verifiable; the item is left to an LLM judge")
    undecided = [tv for tv in turn_verdicts if tv["verdict"] == "undecided"]
    if undecided:
        why = " | ".join(f"turn {tv['turn']}: {tv['rationale']}" for tv in undecided)
        return _row(item, model, error=f"cannot decide exactly: {why}", rationale=why, **common)
    failed = [tv for tv in turn_verdicts if tv["verdict"] == "fail"]
    if failed:
        return _row(item, model, verdict="fail", **common,
                    rationale=" | ".join(f"turn {tv['turn']}: {tv['rationale']}" for tv in failed))
    return _row(item, model, verdict="pass", rationale=f"all {len(flat)} checks passed on {len(turn_verdicts)} turn(s)",
                **common)


def score_generations(items: Sequence[Item], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One score row per generation row, in the order of ``items``.

    Raises:
        ValueError: an item has no generation row, or a row names an item not in ``items``.
    """
    by_id: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r.get("item_id"), []).append(r)
    known = {it.id for it in items}
    missing = [it.id for it in items if it.id not in by_id]
    unknown = sorted(str(k) for k in by_id if k not in known)
    if missing or unknown:
        raise ValueError("; ".join(p for p in (
            f"no generation row for {len(missing)} item(s): {', '.join(missing)}" if missing else "",
            f"generation rows for unknown item(s): {', '.join(unknown)}" if unknown else "") if p))
    return [score_item(it, r) for it in items for r in by_id[it.id]]


def summarise(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary.json fields of a verifiable run: the instrument, what was not scored and why, IFEval metrics.

    ``not_scored`` names every item left undecided (and its turns), so a reader sees what the rate
    leaves out; ``ifeval`` is ``posttrain.scorers.ifeval.metrics`` over the IFEval items, when any.
    """
    skipped = [r for r in scores if r["verdict"] == NOT_SCORED]
    turns = [{"item_id": r["item_id"], "turn": tv["turn"]} for r in skipped for tv in r["turn_verdicts"]
             if tv["verdict"] == NOT_SCORED]
    out: dict[str, Any] = {
        "scorer_instrument": instrument(),
        "n_scored": len(scores) - len(skipped),
        "not_scored": {"n_items": len(skipped), "n_turns": len(turns), "items": [r["item_id"] for r in skipped],
                       "turns": turns},
    }
    results = [r["ifeval"] for r in scores if r.get("ifeval")]
    if results:
        from posttrain.scorers.ifeval import metrics

        out["ifeval"] = metrics(results)
    return out
