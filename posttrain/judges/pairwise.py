"""Pairwise mode: which of two models' replies better satisfies each judged turn.

Each judged turn is asked twice, with A's reply shown first and then B's, because LLM judges favour
a position. A turn goes to a model only when both orders agree; if the preference follows the
position instead, the turn is a tie. A conversation's winner is the model that won more judged
turns (equal counts: tie); it is "error" if any turn ended as error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.items import Item
from posttrain.judges.cache import JudgeCache
from posttrain.judges.clients import DEFAULT_BACKOFF_BASE_S, check_judge_ready, make_judge
from posttrain.judges.prompt import PAIR_SPEC, PAIR_TEMPLATE_VERSION, render_pair_prompt
from posttrain.judges.runner import Answer, AskContext, JudgeSpend, ask, pair_rows, progress_bar, row_replies


def turn_winner(a_first: Answer, b_first: Answer) -> str:
    """"a", "b", "tie" (the preference flipped with the order) or "error"."""
    if a_first.data is None or b_first.data is None:
        return "error"
    pick_1 = "a" if a_first.data["better"] == "first" else "b"
    pick_2 = "b" if b_first.data["better"] == "first" else "a"
    return pick_1 if pick_1 == pick_2 else "tie"


def conversation_winner(turn_winners: Sequence[str]) -> str:
    """"error" if any turn errored, else the model with more turn wins, else "tie"."""
    if not turn_winners or "error" in turn_winners:
        return "error"
    a, b = turn_winners.count("a"), turn_winners.count("b")
    return "a" if a > b else "b" if b > a else "tie"


def judge_pairwise(
    items: Sequence[Item],
    rows_a: Sequence[dict[str, Any]],
    rows_b: Sequence[dict[str, Any]],
    cfg: Any,
    *,
    cache_dir: Path,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
    spend: JudgeSpend | None = None,
) -> list[dict[str, Any]]:
    """Compare two runs' replies turn by turn, in both orders; one row per item (items order).

    Rows: ``{item_id, category, model_a, model_b, winner, judge, judge_model, template_version,
    turn_results: [{turn, winner, a_first, b_first, rationale_a_first, rationale_b_first}],
    input_tokens, output_tokens, cost_usd, n_parse_failures, n_api_errors, error}`` where a_first /
    b_first is the model ("a"/"b") preferred in that order. Costs are those of making the verdicts
    (cached ones included); ``spend`` accumulates what this call paid.

    Raises:
        JudgeConfigError: the judge cannot run (nothing was spent).
        ValueError: an item lacks a row in either run.
    """
    check_judge_ready(cfg)
    a_by_id = {it.id: row for it, row in pair_rows(items, rows_a)}
    b_by_id = {it.id: row for it, row in pair_rows(items, rows_b)}
    return asyncio.run(_run(items, a_by_id, b_by_id, cfg, JudgeCache(cache_dir), on_row, progress, backoff_base_s,
                            spend if spend is not None else JudgeSpend()))


async def _run(items: Sequence[Item], a_by_id: dict[str, dict[str, Any]], b_by_id: dict[str, dict[str, Any]],
               cfg: Any, cache: JudgeCache, on_row: Callable[[dict[str, Any]], None] | None, progress: bool,
               backoff_base_s: float, spend: JudgeSpend) -> list[dict[str, Any]]:
    judge = make_judge(cfg, spec=PAIR_SPEC, backoff_base_s=backoff_base_s)
    ctx = AskContext(cfg, judge, cache, PAIR_TEMPLATE_VERSION, asyncio.Semaphore(int(cfg.concurrency)), spend)
    bar = progress_bar(2 * sum(len(it.judged_turns) for it in items), progress, f"pairwise {cfg.name}")

    async def counted(prompt: str) -> Answer:
        ans = await ask(prompt, ctx)
        bar.update(1)
        return ans

    async def one_item(item: Item) -> dict[str, Any]:
        row_a, row_b = a_by_id[item.id], b_by_id[item.id]
        (ra, la), (rb, _) = row_replies(row_a), row_replies(row_b)
        turns: list[dict[str, Any]] = []
        spent: list[Answer] = []
        errors: list[str] = []
        for i in item.judged_turns:
            label = la[i] if i < len(la) else i
            if i >= len(ra) or i >= len(rb):
                turns.append({"turn": label, "winner": "error", "a_first": None, "b_first": None,
                              "rationale_a_first": "", "rationale_b_first": ""})
                errors.append(f"turn {label}: a reply is missing in one of the runs")
                continue
            a_first, b_first = await asyncio.gather(counted(render_pair_prompt(item, ra, rb, i)),
                                                    counted(render_pair_prompt(item, rb, ra, i)))
            spent += [a_first, b_first]
            errors += [f"turn {label}: {x.error}" for x in (a_first, b_first) if x.data is None]
            turns.append({
                "turn": label, "winner": turn_winner(a_first, b_first),
                "a_first": None if a_first.data is None else ("a" if a_first.data["better"] == "first" else "b"),
                "b_first": None if b_first.data is None else ("b" if b_first.data["better"] == "first" else "a"),
                "rationale_a_first": (a_first.data or {}).get("rationale", a_first.error or ""),
                "rationale_b_first": (b_first.data or {}).get("rationale", b_first.error or ""),
            })
        winner = conversation_winner([str(t["winner"]) for t in turns])
        if not item.judged_turns:
            errors.append("the item has no turn with an expectation; nothing to judge")
        out = {"item_id": item.id, "category": item.category, "model_a": row_a.get("model"),
               "model_b": row_b.get("model"), "winner": winner, "judge": cfg.name, "judge_model": cfg.model,
               "template_version": PAIR_TEMPLATE_VERSION, "turn_results": turns,
               "input_tokens": sum(x.input_tokens for x in spent), "output_tokens": sum(x.output_tokens for x in spent),
               "cost_usd": sum(x.cost_usd for x in spent), "n_parse_failures": sum(x.n_parse_failures for x in spent),
               "n_api_errors": sum(x.n_api_errors for x in spent),
               "error": "; ".join(errors) if winner == "error" else None}
        if on_row is not None:
            on_row(out)
        return out

    try:
        return list(await asyncio.gather(*(one_item(it) for it in items)))
    finally:
        bar.close()
        await judge.aclose()
