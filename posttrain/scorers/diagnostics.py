"""Diagnostics of a set of score rows: does reply length alone explain the verdicts?

A scorer that grades length instead of content (the seed's "longer than 500 characters =
failure" rule) shows up as verdicts that reply length predicts well. :func:`length_bias`
measures that; :func:`spot_check_sample` draws the stratified sample that a second judge or a
person re-scores.

Length and model are confounded (base models ramble and fail more for other reasons), so a
pooled base + instruct set can show a length effect that no single model has: run
:func:`length_bias` per model as well before blaming the scorer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

# Length alone "predicts well" from an AUC of 0.75 in either direction: by the usual reading of
# ROC curves (Hosmer & Lemeshow) 0.7-0.8 is acceptable discrimination, i.e. a real classifier,
# which a content grader's verdicts should not be as a function of length. Below 20 rows the
# AUC's sampling error (roughly ±0.2) makes 0.75 easy to reach by chance, so nothing is flagged.
LENGTH_AUC_FLAG = 0.75
LENGTH_MIN_N = 20


def _threshold_accuracy(x_pass: np.ndarray, x_fail: np.ndarray) -> tuple[float, float, str]:
    """Best accuracy of one length threshold, either direction; (accuracy, threshold, rule)."""
    n = len(x_pass) + len(x_fail)
    sp, sf = np.sort(x_pass), np.sort(x_fail)
    # Rule "fail if longer than t"; t = -inf predicts all fail, t = max predicts all pass. The
    # reverse rule ("pass if longer than t") predicts the complement, so its accuracy is 1 - acc.
    cuts = np.concatenate([[-np.inf], np.unique(np.concatenate([sp, sf]))])
    fails_above = len(sf) - np.searchsorted(sf, cuts, side="right")
    passes_at_or_below = np.searchsorted(sp, cuts, side="right")
    acc = (fails_above + passes_at_or_below) / n
    i_fwd, i_rev = int(np.argmax(acc)), int(np.argmin(acc))
    if acc[i_fwd] >= 1 - acc[i_rev]:
        return float(acc[i_fwd]), float(cuts[i_fwd]), "fail_if_longer"
    return float(1 - acc[i_rev]), float(cuts[i_rev]), "pass_if_longer"


def length_bias(score_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far reply length (``reply_chars``) alone predicts pass/fail.

    Rows with verdict ``"error"`` are left out. Returned keys:

    - ``n``, ``n_pass``, ``n_fail``, ``pass_rate``.
    - ``quartiles``: four bins cut at the 25/50/75th percentiles of ``reply_chars`` (bin 1 is
      ``x <= q25``, bin k is ``q_(k-1) < x <= q_k``), each with ``low``, ``high``, ``n``,
      ``n_pass`` and ``pass_rate`` (None when the bin is empty, as ties can make it).
    - ``point_biserial``: ``{"r", "p_value"}`` of ``scipy.stats.pointbiserialr(passed,
      reply_chars)``; None when either variable is constant or n < 3.
    - ``auc``: ROC AUC of ``reply_chars`` as a score for *fail* (the probability that a failing
      reply is longer than a passing one, ties counting half), computed as the Mann–Whitney
      U of the failing lengths over ``n_fail * n_pass``; None without both verdicts.
      ``auc_max`` = max(auc, 1 - auc) measures separation in either direction.
    - ``threshold``: the best single length cut, ``{"accuracy", "threshold", "rule",
      "baseline_accuracy"}``, where the baseline always predicts the majority verdict.
    - ``flagged`` and ``reason``: flagged when ``auc_max >= LENGTH_AUC_FLAG`` on at least
      ``LENGTH_MIN_N`` rows.
    """
    rows = [r for r in score_rows if r.get("verdict") in ("pass", "fail")]
    x = np.array([float(r.get("reply_chars") or 0) for r in rows])
    y = np.array([r["verdict"] == "pass" for r in rows], dtype=bool)
    n, n_pass = len(rows), int(y.sum())
    n_fail = n - n_pass
    out: dict[str, Any] = {
        "n": n,
        "n_pass": n_pass,
        "n_fail": n_fail,
        "pass_rate": n_pass / n if n else None,
        "quartiles": [],
        "point_biserial": None,
        "auc": None,
        "auc_max": None,
        "threshold": None,
        "flagged": False,
        "reason": "",
    }
    if n == 0:
        out["reason"] = "no pass/fail rows"
        return out

    edges = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    bins = np.digitize(x, edges[1:4], right=True)
    for b in range(4):
        in_bin = bins == b
        nb = int(in_bin.sum())
        out["quartiles"].append(
            {
                "bin": b + 1,
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": nb,
                "n_pass": int(y[in_bin].sum()),
                "pass_rate": float(y[in_bin].mean()) if nb else None,
            }
        )

    if n >= 3 and 0 < n_pass < n and np.ptp(x) > 0:
        res = sps.pointbiserialr(y.astype(float), x)
        r, p = float(res.statistic), float(res.pvalue)
        out["point_biserial"] = {"r": r, "p_value": p} if math.isfinite(r) else None

    if n_pass and n_fail:
        x_pass, x_fail = x[y], x[~y]
        u_fail = float(sps.mannwhitneyu(x_fail, x_pass, alternative="two-sided").statistic)
        auc = u_fail / (n_fail * n_pass)
        out["auc"], out["auc_max"] = auc, max(auc, 1.0 - auc)
        acc, thr, rule = _threshold_accuracy(x_pass, x_fail)
        out["threshold"] = {
            "accuracy": acc,
            "threshold": thr,
            "rule": rule,
            "baseline_accuracy": max(n_pass, n_fail) / n,
        }

    auc_max = out["auc_max"]
    if auc_max is None:
        out["reason"] = "only one verdict present: length cannot separate anything"
    elif n < LENGTH_MIN_N:
        out["reason"] = f"n={n} < {LENGTH_MIN_N}: too few rows to judge (AUC-max {auc_max:.2f})"
    elif auc_max >= LENGTH_AUC_FLAG:
        direction = "longer replies fail" if out["auc"] >= 0.5 else "longer replies pass"
        thr = out["threshold"]
        out["flagged"] = True
        out["reason"] = (
            f"reply length alone predicts the verdict ({direction}): AUC-max {auc_max:.2f} >= "
            f"{LENGTH_AUC_FLAG:.2f}; one length cut is right {thr['accuracy']:.0%} of the time vs "
            f"{thr['baseline_accuracy']:.0%} for the majority verdict. Check the scorer grades content."
        )
    else:
        out["reason"] = f"AUC-max {auc_max:.2f} < {LENGTH_AUC_FLAG:.2f}"
    return out


def _allocate(sizes: list[int], target: int) -> list[int]:
    """Per-stratum sample sizes: proportional, at least one each, largest remainder to fill."""
    total = sum(sizes)
    ideal = [s * target / total for s in sizes]
    alloc = [min(s, max(1, math.floor(q))) for s, q in zip(sizes, ideal, strict=True)]
    # The "at least one" floor can overshoot; take back from the most over-allocated strata,
    # never below one. Ties go to the larger stratum (one row fewer matters least there), then
    # the earlier one, so the result is deterministic.
    while sum(alloc) > target:
        over = [(alloc[i] - ideal[i], sizes[i], -i) for i in range(len(sizes)) if alloc[i] > 1]
        if not over:
            break
        alloc[-max(over)[2]] -= 1
    while sum(alloc) < target:
        under = [(ideal[i] - alloc[i], -i) for i in range(len(sizes)) if alloc[i] < sizes[i]]
        if not under:
            break
        alloc[-max(under)[1]] += 1
    return alloc


def spot_check_sample(
    rows: Sequence[dict[str, Any]],
    frac: float,
    rng: np.random.Generator,
    strata: Sequence[str] = ("category", "model"),
) -> list[dict[str, Any]]:
    """A stratified random sample of ``rows`` for a second opinion.

    The total is ``round(frac * len(rows))``, allocated to strata (the distinct values of the
    ``strata`` keys) in proportion to their size, except that every non-empty stratum gets at
    least one row when ``frac > 0`` (so the total can exceed the target when there are more
    strata than it). Deterministic given the state of ``rng``.

    Returns:
        The sampled rows (the same dict objects), in their original order.

    Raises:
        ValueError: ``frac`` is outside [0, 1].
    """
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    if frac == 0.0 or not rows:
        return []
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, r in enumerate(rows):  # first-appearance order keeps this independent of hashing
        groups.setdefault(tuple(r.get(k) for k in strata), []).append(i)
    members = list(groups.values())
    alloc = _allocate([len(m) for m in members], round(frac * len(rows)))
    chosen: list[int] = []
    for idx, k in zip(members, alloc, strict=True):
        chosen.extend(int(idx[j]) for j in rng.choice(len(idx), size=k, replace=False))
    return [rows[i] for i in sorted(chosen)]
