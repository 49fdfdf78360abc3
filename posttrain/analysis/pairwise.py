"""Pairwise comparison of two runs: which model's reply better satisfies each judged turn.

``posttrain-pairwise RUN_A RUN_B`` judges two runs' replies head to head. Absolute verdicts
(pass/fail) come from ``stage=eval``; pairwise preference is a second view of the same
generations, useful when both models pass or both fail most items. Reads only the two run
folders' records; writes ``pairwise.jsonl`` and ``pairwise.json`` into ``--out`` (default:
RUN_B/pairwise_vs_<A>).

Each judged turn is asked twice, with A's reply shown first and then B's, because LLM judges favour
a position. A turn goes to a model only when both orders agree; if the preference follows the
position instead, the turn is a tie. A conversation's winner is the model that won more judged
turns (equal counts: tie); it is "error" if any turn ended as error. One module (the judging and
the command) on the analysis floor: it uses the judges' asking machinery from below.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.items import Item
from posttrain.judges.asking import Answer, AskContext, JudgeSpend, ask
from posttrain.judges.cache import JudgeCache
from posttrain.judges.clients import DEFAULT_BACKOFF_BASE_S, check_judge_ready, make_judge
from posttrain.judges.prompt import PAIR_SPEC, PAIR_TEMPLATE_VERSION, render_pair_prompt
from posttrain.judges.runner import pair_rows, progress_bar, row_replies
from posttrain.records import append_jsonl, read_json, read_jsonl, write_json, write_jsonl


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

def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wins, ties, errors; b's win rate among decided items (Wilson CI) and a two-sided sign test."""
    from scipy.stats import binomtest

    from posttrain.analysis.stats import wilson_ci

    wins_a = sum(r["winner"] == "a" for r in rows)
    wins_b = sum(r["winner"] == "b" for r in rows)
    decided = wins_a + wins_b
    return {
        "n": len(rows), "wins_a": wins_a, "wins_b": wins_b,
        "ties": sum(r["winner"] == "tie" for r in rows), "errors": sum(r["winner"] == "error" for r in rows),
        "b_win_rate": wins_b / decided if decided else None, "b_win_rate_ci95": list(wilson_ci(wins_b, decided)),
        "sign_test_p": binomtest(wins_b, decided, 0.5).pvalue if decided else None,
        "cost_usd": sum(float(r.get("cost_usd") or 0.0) for r in rows),
    }


def run_pairwise(run_a: Path, run_b: Path, judge_name: str, out: Path, *, cap_usd: float | None = None) -> dict[str, Any]:
    from posttrain.config import load_group_option
    from posttrain.items import item_from_dict
    from posttrain.judges import estimate_cost
    from posttrain.paths import judge_cache_dir, ledger_path
    from posttrain.tracking.budget import Ledger, Spend

    for run in (run_a, run_b):
        if not (run / "generations.jsonl").exists() or not (run / "items.jsonl").exists():
            raise SystemExit(f"posttrain-pairwise: {run} has no generations.jsonl/items.jsonl; run stage=eval there first")
    sa, sb = read_json(run_a / "summary.json"), read_json(run_b / "summary.json")
    ha, hb = sa["benchmark_info"]["sha256"], sb["benchmark_info"]["sha256"]
    if ha != hb:
        raise SystemExit(f"posttrain-pairwise: the runs used different benchmark files ({ha[:12]} vs {hb[:12]}); "
                         "pairwise comparison needs the same items")
    ids_b = {r["id"] for r in read_jsonl(run_b / "items.jsonl")}
    items = [item_from_dict(r) for r in read_jsonl(run_a / "items.jsonl") if r["id"] in ids_b]
    cfg = load_group_option("judge", judge_name)
    cfg.mode = "pairwise"
    check_judge_ready(cfg)
    from posttrain.judges.lifecycle import preflight_judge

    preflight = preflight_judge(cfg)  # a retired or unknown judge model is refused here, nothing spent
    if preflight.get("warning"):
        print(f"posttrain-pairwise: warning: {preflight['warning']}", file=sys.stderr)
    ledger = Ledger(ledger_path(None), cap_usd if cap_usd is not None else 300.0)
    ledger.check(estimate_cost(items, cfg), what=f"pairwise judging of {len(items)} items")
    keep = {it.id for it in items}
    rows_a = [r for r in read_jsonl(run_a / "generations.jsonl") if r["item_id"] in keep]
    rows_b = [r for r in read_jsonl(run_b / "generations.jsonl") if r["item_id"] in keep]
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "pairwise.partial.jsonl"
    partial.unlink(missing_ok=True)
    spend = JudgeSpend()
    rows = judge_pairwise(items, rows_a, rows_b, cfg, cache_dir=judge_cache_dir(cfg.cache_dir),
                          on_row=lambda r: append_jsonl(partial, [r]), spend=spend)
    write_jsonl(out / "pairwise.jsonl", rows)  # items order, whatever order the calls finished in
    partial.unlink(missing_ok=True)
    summary = {"a": sa["model"], "b": sb["model"], "run_a": str(run_a), "run_b": str(run_b), "judge": judge_name,
               **summarise(rows), **spend.as_dict(), "judge_preflight": preflight}
    ledger.record(Spend(str(out), "pairwise", f"{sa['model']}_vs_{sb['model']}", "none", 0.0, 0.0, spend.usd))
    write_json(out / "pairwise.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posttrain-pairwise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--judge", default="claude", help="a judge config name (conf/judge/*.yaml)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cap-usd", type=float, default=None, help="budget cap (default 300)")
    args = ap.parse_args(argv)
    out = args.out or args.run_b / f"pairwise_vs_{args.run_a.name}"
    from posttrain.judges import JudgeConfigError

    try:
        s = run_pairwise(args.run_a, args.run_b, args.judge, out, cap_usd=args.cap_usd)
    except JudgeConfigError as exc:
        print(f"posttrain-pairwise: error: {exc}", file=sys.stderr)
        return 2
    print(f"{s['a']} vs {s['b']}: a wins {s['wins_a']}, b wins {s['wins_b']}, ties {s['ties']}, errors {s['errors']}; "
          f"sign test p={s['sign_test_p']}; verdicts cost ${s['cost_usd']:.4f}, paid now ${s['spent_usd']:.4f}; "
          f"records in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
