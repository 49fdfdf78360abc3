"""Agreement between the exact verifiable scorer and an LLM judge on the same replies.

Where one set of replies has both verdicts (two jobs of a sweep that differ only in the scorer, or an
LLM-judged run whose verifiable items the exact checks also decided), the report shows how often they
agree, Cohen's kappa, and every item on which they disagree: a judge that disagrees with the
instruction's own definition is being lenient or strict on exactly those items, and they are the ones
to read. Pure functions: verdict maps in, JSON-ready dicts out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

DECIDED = ("pass", "fail")


def cohens_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' pass/fail labels on the same items.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the share of items on which they agree and
    p_e = p_a p_b + (1 - p_a)(1 - p_b) the agreement expected from their pass rates alone.
    Hand-worked: 4 both pass, 3 both fail, 2 pass/fail, 1 fail/pass gives p_o = 7/10,
    p_a = 6/10, p_b = 5/10, p_e = .3 + .2 = .5 and kappa = (.7 - .5) / .5 = 0.4.

    Returns:
        kappa, or None when it is undefined: no items, or p_e = 1 (both raters gave one label to
        every item, so chance alone explains any agreement).

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"kappa needs the same items rated twice, got {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    p_a, p_b = sum(a) / n, sum(b) / n
    p_e = p_a * p_b + (1 - p_a) * (1 - p_b)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def verdict_agreement(exact: Mapping[str, str], judge: Mapping[str, str]) -> dict[str, Any]:
    """Agreement of two item -> verdict maps over the items both decided (pass or fail).

    Items either side left undecided (error, not_scored, missing) are counted under ``excluded``, never
    paired.

    Returns:
        ``n``, the 2x2 counts (``both_pass``, ``both_fail``, ``exact_pass_judge_fail``,
        ``exact_fail_judge_pass``), ``observed_agreement``, ``kappa`` (None when undefined), ``excluded``
        and ``disagreements``: ``[{"item_id", "verifiable", "judge"}]`` sorted by id.
    """
    ids = sorted(i for i in exact.keys() & judge.keys() if exact[i] in DECIDED and judge[i] in DECIDED)
    x = [exact[i] == "pass" for i in ids]
    y = [judge[i] == "pass" for i in ids]
    n = len(ids)
    pairs = list(zip(x, y, strict=True))
    return {
        "n": n,
        "both_pass": pairs.count((True, True)),
        "both_fail": pairs.count((False, False)),
        "exact_pass_judge_fail": pairs.count((True, False)),
        "exact_fail_judge_pass": pairs.count((False, True)),
        "observed_agreement": sum(p == q for p, q in pairs) / n if n else None,
        "kappa": cohens_kappa(x, y),
        "excluded": len(exact.keys() | judge.keys()) - n,
        "disagreements": [{"item_id": i, "verifiable": exact[i], "judge": judge[i]}
                          for i, p, q in zip(ids, x, y, strict=True) if p != q],
    }


def _same_replies_key(summary: Mapping[str, Any]) -> str:
    """What must match for two jobs to have scored the same replies: model, format, items, decoding."""
    bench = summary.get("benchmark_info") or {}
    prov = summary.get("provenance") or {}
    return json.dumps([summary.get("model"), summary.get("prompt_format"), bench.get("sha256"), bench.get("split"),
                       bench.get("limit"), prov.get("revision"), prov.get("adapter_sha256"), summary.get("decoding")],
                      sort_keys=True, default=str)


def sweep_agreement(jobs: Sequence[tuple[str, Mapping[str, Any], Sequence[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """Every (verifiable job, LLM-judged job) pair of a sweep that scored the same replies.

    Args:
        jobs: ``(label, summary.json, score rows)`` per job, in sweep order.

    Returns:
        One block per pair: ``{"verifiable", "judge", "judge_name", "reply_chars_differ", **verdict_agreement}``;
        first the LLM-judged runs that carry their own ``summary["verifiable_agreement"]`` (stage=eval computes
        it free of charge when a judged run holds verifiable items), then the pairs of jobs.
        ``reply_chars_differ`` counts items whose recorded reply length differs between the two jobs (0 when
        they scored the same generations; more means sampled decoding drew other replies).
    """
    out = []
    for lb, sb, _ in jobs:  # an LLM-judged run whose verifiable items the exact checks also decided
        if sb.get("scorer") == "llm" and isinstance(block := sb.get("verifiable_agreement"), Mapping):
            out.append({"verifiable": f"{lb} (exact checks, same replies)", "judge": lb,
                        "judge_name": sb.get("judge"), "reply_chars_differ": 0, **block})
    for la, sa, ra in jobs:
        if sa.get("scorer") != "verifiable":
            continue
        for lb, sb, rb in jobs:
            if sb.get("scorer") != "llm" or _same_replies_key(sa) != _same_replies_key(sb):
                continue
            chars_a = {str(r["item_id"]): r.get("reply_chars") for r in ra}
            chars_b = {str(r["item_id"]): r.get("reply_chars") for r in rb}
            differ = sum(1 for i in chars_a.keys() & chars_b.keys() if chars_a[i] != chars_b[i])
            out.append({"verifiable": la, "judge": lb, "judge_name": sb.get("judge"), "reply_chars_differ": differ,
                        **verdict_agreement({str(r["item_id"]): str(r["verdict"]) for r in ra},
                                            {str(r["item_id"]): str(r["verdict"]) for r in rb})})
    return out
