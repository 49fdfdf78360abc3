"""Heuristic triage: score generations with the deterministic checks of :mod:`.checks` alone.

Triage is cheap (no API call) and useful to spot gross failures before paying a judge, but it
is never gate-eligible: it sees only what an item states explicitly (entities, forbidden
strings, constraints) and cannot tell a correct answer phrased differently from a wrong one.

Reply length is NOT a failure signal here, except through an explicit ``max_words`` /
``min_words`` constraint of the item. The seed project failed every reply longer than 500
characters; base models ramble, so that rule failed them for their length rather than their
content and manufactured an 18-point "gain" for the instruct model out of nothing. A correct
2,000-character reply passes.

An expectation's ``explicit_decline`` (the refusal benchmark's items) is checked here too, by the
refusal-marker heuristic of :mod:`.refusal` (XSTest's and GCG's string match): it lets triage read a
refusal where otherwise the item would be notes-only and undecidable. It is a heuristic, and triage is
the only scorer that runs it; see that module for its failure modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.items import Item
from posttrain.scorers.checks import check_expectation, pairing_problems, wordless_verdict
from posttrain.scorers.refusal import heuristic_checks

SCORER_NAME = "heuristic_triage"
# v2: a reply without a letter or digit fails (non_empty); v3: explicit_decline (refusal markers) is checked
TEMPLATE_VERSION = "triage-v3"


def _row(item: Item, model: str | None, **fields: Any) -> dict[str, Any]:
    # Exactly the score-row keys, in a fixed order, shared with the LLM judge's rows.
    base: dict[str, Any] = {
        "item_id": item.id,
        "category": item.category,
        "model": model,
        "verdict": "error",
        "scorer": SCORER_NAME,
        "judge": None,
        "judge_provider": None,
        "judge_model": None,
        "template_version": TEMPLATE_VERSION,
        "template_sha256": None,
        "turn_verdicts": [],
        "checks": [],
        "rationale": "",
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
        "n_parse_failures": 0,
        "n_api_errors": 0,
        "reply_chars": 0,
        "error": None,
    }
    base.update(fields)
    return base


def triage_item(item: Item, row: dict[str, Any]) -> dict[str, Any]:
    """Score one generation row of ``item`` with deterministic checks.

    Turns are paired by position: the i-th entry of ``row["turns"]`` answers ``item.turns[i]``;
    the score row's ``turn`` values are copied from the generation row. Every turn with an
    expectation is judged, and the conversation passes iff every judged turn passes.

    The verdict is ``"error"`` (with ``error`` saying why) when the generation row lacks a judged
    turn, when its user text differs from the item's (generations from another version of the
    benchmark), or when no judged turn states anything checkable (only ``notes``). A turn with
    only notes is recorded as ``"unchecked"`` and left out of the decision: passing it by default
    would inflate the pass rate, failing it would deflate it; the item is decided on the turns a
    deterministic check can test, and its rationale says which turns were left to an LLM judge.

    A reply with no letter or digit (empty, whitespace, "::::::") fails its turn with a ``non_empty``
    check before any other check, notes-only turns included: otherwise the forbidden-string checks
    would pass it vacuously.

    A turn whose expectation states ``explicit_decline`` is checked for a refusal marker in the reply's
    opening (:func:`posttrain.scorers.refusal.check_explicit_decline`), so a refusal item whose turn has
    notes and that heuristic is decided (pass/fail), not ``unchecked``.

    Raises:
        ValueError: ``row["item_id"]`` is not ``item.id``.
    """
    if row.get("item_id") != item.id:
        raise ValueError(f"generation row for {row.get('item_id')!r} paired with item {item.id!r}")
    model = row.get("model")
    gen_turns = list(row.get("turns") or [])
    judged = item.judged_turns
    if not judged:
        return _row(item, model, error="item has no judged turn (no expectation): nothing to triage")

    problems = pairing_problems(item, gen_turns)
    if problems:
        return _row(item, model, error="; ".join(problems))

    turn_verdicts: list[dict[str, Any]] = []
    flat: list[dict[str, Any]] = []
    unchecked: list[Any] = []
    reply_chars = 0
    for i in judged:
        expect = item.turns[i].expect
        assert expect is not None  # judged_turns guarantees it
        gen = gen_turns[i]
        reply = gen.get("reply") or ""
        turn_no = gen.get("turn", i)
        reply_chars += len(reply)
        empty = wordless_verdict(reply)
        if empty is not None:  # fails whatever the expectation says (also a notes-only turn)
            turn_verdicts.append({"turn": turn_no, **empty})
            flat.extend({"turn": turn_no, **c} for c in empty["checks"])
            continue
        checks = check_expectation(reply, expect) + heuristic_checks(reply, expect)
        if not checks:
            unchecked.append(turn_no)
        failed = [c for c in checks if not c["passed"]]
        verdict = "unchecked" if not checks else "fail" if failed else "pass"
        rationale = (
            "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
            if failed
            else f"all {len(checks)} checks passed"
        )
        turn_verdicts.append({"turn": turn_no, "verdict": verdict, "checks": checks, "rationale": rationale})
        flat.extend({"turn": turn_no, **c} for c in checks)

    common = {"turn_verdicts": turn_verdicts, "checks": flat, "reply_chars": reply_chars}
    if len(unchecked) == len(turn_verdicts):
        return _row(
            item,
            model,
            error=f"turn(s) {unchecked} state nothing a deterministic check can test; use the llm scorer",
            rationale="triage cannot judge this item",
            **common,
        )
    note = f" (turn(s) {unchecked} unchecked: notes only, left to an LLM judge)" if unchecked else ""
    failed_turns = [tv for tv in turn_verdicts if tv["verdict"] == "fail"]
    if failed_turns:
        rationale = " | ".join(f"turn {tv['turn']}: {tv['rationale']}" for tv in failed_turns) + note
        return _row(item, model, verdict="fail", rationale=rationale, **common)
    checked = len(turn_verdicts) - len(unchecked)
    rationale = f"all {len(flat)} checks passed on {checked} checked turn(s)" + note
    return _row(item, model, verdict="pass", rationale=rationale, **common)


def triage_generations(items: Sequence[Item], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Triage every generation row, pairing rows with items by ``item_id``.

    Returns one score row per generation row, in the order of ``items`` (then of ``rows``
    for an item generated by several models).

    Raises:
        ValueError: an item has no generation row, a row names an item not in ``items``, or one
            model has two rows for the same item; the message names the ids.
    """
    by_id = {it.id: it for it in items}
    rows_by_id: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        rows_by_id.setdefault(r.get("item_id"), []).append(r)
    missing = [it.id for it in items if it.id not in rows_by_id]
    unknown = sorted(str(k) for k in rows_by_id if k not in by_id)
    dupes = sorted(
        {
            f"{iid} ({r.get('model')})"
            for iid, rs in rows_by_id.items()
            for r in rs
            if sum(1 for o in rs if o.get("model") == r.get("model")) > 1
        }
    )
    problems = []
    if missing:
        problems.append(f"no generation row for {len(missing)} item(s): {', '.join(missing)}")
    if unknown:
        problems.append(f"generation rows for unknown item(s): {', '.join(unknown)}")
    if dupes:
        problems.append(f"duplicate generation rows: {', '.join(dupes)}")
    if problems:
        raise ValueError("; ".join(problems))
    return [triage_item(it, r) for it in items for r in rows_by_id[it.id]]
