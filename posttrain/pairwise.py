"""``posttrain-pairwise RUN_A RUN_B``: judge two runs' replies head to head.

Absolute verdicts (pass/fail) come from ``stage=eval``; pairwise preference is a second view of
the same generations, useful when both models pass or both fail most items. Every judged turn
is asked in both orders; a preference that flips with the order is a tie (position bias, not a
preference). Reads only the two run folders' records; writes ``pairwise.jsonl`` and
``pairwise.json`` into ``--out`` (default: RUN_B/pairwise_vs_<A>).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.records import append_jsonl, read_json, read_jsonl, write_json, write_jsonl


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wins, ties, errors; b's win rate among decided items (Wilson CI) and a two-sided sign test."""
    from scipy.stats import binomtest

    from posttrain.stats import wilson_ci

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
    from posttrain.budget import Ledger, Spend
    from posttrain.config import load_group_option
    from posttrain.items import item_from_dict
    from posttrain.judges import JudgeSpend, check_judge_ready, estimate_cost, judge_pairwise
    from posttrain.paths import judge_cache_dir, ledger_path

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
               **summarise(rows), **spend.as_dict()}
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
