"""Spot check: re-judge a stratified sample with a second judge and measure the agreement.

The sample is drawn from the primary judge's pass/fail verdicts (a primary "error" has nothing to
compare), stratified by (category, model) so that a small fraction still covers every kind of
conversation: at least one item per stratum when ``frac > 0``, ``round(frac * N)`` overall (more when
there are more strata than that), allocated in proportion to stratum size by largest remainder.

Agreement is the share of sampled items where both judges give the same pass/fail; Cohen's kappa
(statsmodels) corrects it for chance. Items where either judge ended as "error" are left out of both.
Judge-vs-judge agreement is a consistency check only; gate eligibility needs a human calibration.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posttrain.items import Item
from posttrain.judges.asking import JudgeSpend
from posttrain.judges.cache import JudgeCache
from posttrain.judges.clients import DEFAULT_BACKOFF_BASE_S, check_judge_ready
from posttrain.judges.runner import judge_plans, plan_turns


def allocate(sizes: Mapping[Any, int], total: int) -> dict[Any, int]:
    """Per-stratum sample sizes: >= 1 each, <= stratum size, proportional, summing to max(total, #strata)."""
    n = sum(sizes.values())
    keys = sorted(sizes)
    total = min(n, max(total, len(keys)))
    want = {k: total * sizes[k] / n for k in keys}
    alloc = {k: min(sizes[k], max(1, math.floor(want[k]))) for k in keys}
    while sum(alloc.values()) < total:  # largest remainder first; ties by stratum order
        k = max((k for k in keys if alloc[k] < sizes[k]), key=lambda k: want[k] - alloc[k])
        alloc[k] += 1
    while sum(alloc.values()) > total:  # the one-per-stratum floor overshot: trim the most over-served
        k = min((k for k in keys if alloc[k] > 1), key=lambda k: want[k] - alloc[k])
        alloc[k] -= 1
    return alloc


def stratified_sample(scores: Sequence[dict[str, Any]], frac: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The sampled score rows (pass/fail only), sorted by (category, model, item_id)."""
    strata: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in scores:
        if s["verdict"] in ("pass", "fail"):
            strata[(s["category"], s["model"])].append(s)
    if frac <= 0 or not strata:
        return []
    alloc = allocate({k: len(v) for k, v in strata.items()}, round(frac * sum(len(v) for v in strata.values())))
    out = []
    for k in sorted(strata):
        members = sorted(strata[k], key=lambda s: s["item_id"])
        picks = rng.choice(len(members), size=alloc[k], replace=False)
        out += [members[i] for i in sorted(picks)]
    return out


def kappa_summary(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Agreement and Cohen's kappa for (primary, second) pass/fail pairs; kappa None with a reason if undefined."""
    from statsmodels.stats.inter_rater import cohens_kappa

    table = np.zeros((2, 2), dtype=int)  # rows: primary pass/fail; columns: second pass/fail
    for p, s in pairs:
        table[int(p != "pass"), int(s != "pass")] += 1
    n = int(table.sum())
    out: dict[str, Any] = {"n_compared": n, "table": table.tolist(), "agreement": None, "kappa": None,
                           "kappa_ci95": None, "kappa_reason": None}
    if n == 0:
        out["kappa_reason"] = "no sampled item has a pass/fail verdict from both judges"
        return out
    out["agreement"] = float(np.trace(table) / n)
    p_e = float((table.sum(0) * table.sum(1)).sum()) / n**2
    if p_e >= 1.0:
        out["kappa_reason"] = "both judges put every compared item in the same category: kappa is undefined"
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        res = cohens_kappa(table)
    if not math.isfinite(float(res.kappa)):
        out["kappa_reason"] = "kappa is not finite for this table"
        return out
    out["kappa"] = float(res.kappa)
    low, high = float(res.kappa_low), float(res.kappa_upp)
    out["kappa_ci95"] = [low, high] if math.isfinite(low) and math.isfinite(high) else None
    return out


def spot_check(
    items: Sequence[Item],
    rows_by_model: Mapping[str, Sequence[dict[str, Any]]],
    primary_scores: Sequence[dict[str, Any]],
    second_cfg: Any,
    frac: float,
    *,
    rng: np.random.Generator,
    cache_dir: Path,
    progress: bool = False,
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
) -> dict[str, Any]:
    """Re-judge a stratified sample of the primary verdicts with ``second_cfg`` (always synchronous calls).

    Returns:
        ``{"n", "n_compared", "agreement", "kappa", "kappa_ci95", "kappa_reason", "table",
        "second_judge", "second_judge_model", "template_version", "cost_usd", "spent_usd", "items": [{item_id,
        category, model, primary, second, agree}]}``; ``agree`` is None where either verdict is error.
        ``cost_usd`` is what the second verdicts cost when they were made (cached ones included),
        ``spent_usd`` what this call paid.

    Raises:
        ValueError: ``frac`` outside [0, 1], or a sampled score has no item or generation row.
        JudgeConfigError: the second judge cannot run (nothing was spent).
    """
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"spot-check fraction {frac} must lie in [0, 1] (judge.spot_check)")
    sample = stratified_sample(primary_scores, frac, rng)
    base = {"second_judge": second_cfg.name, "second_judge_model": second_cfg.model,
            "template_version": second_cfg.template_version}
    if not sample:
        return {"n": 0, **kappa_summary([]), **base, "cost_usd": 0.0, "spent_usd": 0.0, "items": []}
    check_judge_ready(second_cfg)
    by_id = {it.id: it for it in items}
    rows = {(m, r["item_id"]): r for m, rs in rows_by_model.items() for r in rs}
    lost = [(s["model"], s["item_id"]) for s in sample if s["item_id"] not in by_id or (s["model"], s["item_id"]) not in rows]
    if lost:
        raise ValueError(f"spot check: no item or generation row for (model, item_id) {lost[:20]} (nothing was spent)")
    plans = []
    for s in sample:
        item, row = by_id[s["item_id"]], rows[(s["model"], s["item_id"])]
        plans.append((item, row, plan_turns(item, row, second_cfg)))
    spend = JudgeSpend()
    second = asyncio.run(judge_plans(plans, second_cfg, cache=JudgeCache(cache_dir), progress=progress,
                                     backoff_base_s=backoff_base_s, spend=spend))
    records = []
    for s, t in zip(sample, second, strict=True):
        both = s["verdict"] in ("pass", "fail") and t["verdict"] in ("pass", "fail")
        records.append({"item_id": s["item_id"], "category": s["category"], "model": s["model"],
                        "primary": s["verdict"], "second": t["verdict"],
                        "agree": (s["verdict"] == t["verdict"]) if both else None})
    summary = kappa_summary([(r["primary"], r["second"]) for r in records if r["agree"] is not None])
    return {"n": len(records), **summary, **base, "cost_usd": sum(t["cost_usd"] for t in second),
            "spent_usd": spend.usd, "items": records}


def run_spot_check(
    items: Sequence[Item],
    rows_by_model: Mapping[str, Sequence[dict[str, Any]]],
    primary_scores: Sequence[dict[str, Any]],
    primary_cfg: Any,
    *,
    seed: int,
    cache_dir_of: Callable[[Any], Path],
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The run's spot check as configured by ``primary_cfg`` (``spot_check``, ``second_judge``).

    Never silently absent and never fatal: a spot check that is off, or that cannot run (no second
    judge named, an unknown one, no API key for it), is recorded with ``status`` "off" / "skipped" and
    the reason, and the run goes on; nothing is spent then. The second judge grades with the primary's
    template version, so the two judges answer the same prompts.

    Returns:
        (summary block, full result or None). The block holds ``status`` and ``reason``, and when the
        check ran: ``frac``, ``n``, ``n_compared``, ``agreement``, ``kappa``, ``kappa_ci95``,
        ``kappa_reason``, ``second_judge`` and ``second_judge_model``. The full result is what
        :func:`spot_check` returns (written to spot_check.json).
    """
    from posttrain.config import ConfigError, load_group_option
    from posttrain.judges.clients import JudgeConfigError

    frac = float(primary_cfg.spot_check)
    if frac <= 0:
        return {"status": "off", "reason": "judge.spot_check=0: no second judge was asked"}, None
    name = primary_cfg.second_judge
    if not name:
        return {"status": "skipped", "reason": f"judge.spot_check={frac} but judge.second_judge is not set"}, None
    try:
        second = load_group_option("judge", name)
        second.template_version = primary_cfg.template_version
        check_judge_ready(second)
    except (ConfigError, JudgeConfigError) as exc:
        return {"status": "skipped", "reason": f"second judge {name!r} cannot run: {exc}"}, None
    result = spot_check(items, rows_by_model, primary_scores, second, frac, rng=np.random.default_rng(seed),
                        cache_dir=cache_dir_of(second), progress=progress)
    block = {"status": "ran", "reason": None, "frac": frac,
             **{k: result.get(k) for k in ("n", "n_compared", "agreement", "kappa", "kappa_ci95", "kappa_reason",
                                           "second_judge", "second_judge_model")}}
    return block, result
