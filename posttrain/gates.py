"""The gate: does the instruct model beat the base model clearly enough to justify post-training?

The gate reads two models' per-item verdicts on the same benchmark and returns PASS, FAIL or
NOT_ELIGIBLE. NOT_ELIGIBLE means the evidence itself cannot be trusted (a triage scorer, an
uncalibrated judge, too many errors, runs that do not cover the same items); it is decided before
and independently of the numbers. Among eligible runs, PASS needs every check to hold:

- base success rate <= ``base_max_success`` (the base model really fails the task),
- instruct success rate >= ``instruct_min_success`` (the task is solvable),
- exact McNemar p < ``mcnemar_alpha`` on the paired items (the gap is not noise),
- Cohen's h (instruct − base) >= ``min_cohens_h`` (the gap is large, not just significant).

``docs/statistics.md`` explains the choices. Everything here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from posttrain.stats import cohens_h, mcnemar_exact, paired_table

Verdict = Literal["PASS", "FAIL", "NOT_ELIGIBLE"]
Op = Literal["<=", ">=", "<"]

VALID_VERDICTS = frozenset({"pass", "fail", "error"})
HEURISTIC_REASON = "scorer=heuristic_triage is triage only and can never gate; rerun with scorer=llm"
_MAX_IDS_SHOWN = 5  # enough to find the defect in a log without flooding it


@dataclass(frozen=True)
class GateThresholds:
    """The numbers the gate compares against; see docs/statistics.md for their power."""

    base_max_success: float = 0.30
    instruct_min_success: float = 0.80
    mcnemar_alpha: float = 0.01
    min_cohens_h: float = 0.5
    min_kappa: float = 0.7
    max_error_rate: float = 0.05


@dataclass(frozen=True)
class ModelScores:
    """One model's scored run: item id -> "pass" | "fail" | "error", and how it was scored.

    ``calibration_kappa`` is the LLM judge's Cohen's kappa against human labels; None when the
    judge was never calibrated.
    """

    model: str
    verdicts: Mapping[str, str]
    scorer: str
    calibration_kappa: float | None = None


@dataclass(frozen=True)
class GateCheck:
    """One numeric criterion: ``value op threshold`` must hold."""

    name: str
    value: float
    threshold: float
    op: Op
    passed: bool

    def describe(self) -> str:
        """E.g. "base_success_rate 0.420 is not <= 0.300"."""
        holds = "is" if self.passed else "is not"
        return f"{self.name} {self.value:.4g} {holds} {self.op} {self.threshold:.4g}"


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision, why, and the numbers it rests on."""

    verdict: Verdict
    reasons: list[str]
    checks: list[GateCheck]
    base_model: str
    instruct_model: str
    n_paired: int
    base_success: float | None
    instruct_success: float | None
    instruct_only: int
    base_only: int
    mcnemar_p: float | None
    cohens_h: float | None
    base_error_rate: float
    instruct_error_rate: float
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain str, float, int, bool, None, list, dict)."""
        return asdict(self)


def _check(name: str, value: float, threshold: float, op: Op) -> GateCheck:
    passed = {"<=": value <= threshold, ">=": value >= threshold, "<": value < threshold}[op]
    return GateCheck(name=name, value=value, threshold=threshold, op=op, passed=passed)


def _error_rate(scores: ModelScores) -> float:
    n = len(scores.verdicts)
    return sum(v == "error" for v in scores.verdicts.values()) / n if n else 0.0


def _eligibility_reasons(role: str, scores: ModelScores, t: GateThresholds) -> list[str]:
    """Why one model's run cannot gate (the heuristic-scorer reason is added by the caller)."""
    reasons: list[str] = []
    who = f"{role} ({scores.model})"
    if scores.scorer == "llm":
        kappa = scores.calibration_kappa
        if kappa is None or not math.isfinite(kappa):
            reasons.append(
                f"{who}: LLM judge is uncalibrated (no finite calibration kappa); calibrate it first"
            )
        elif kappa < t.min_kappa:
            reasons.append(f"{who}: judge calibration kappa {kappa:.3f} < min_kappa {t.min_kappa:.3f}")
    elif scores.scorer != "heuristic_triage":
        reasons.append(f"{who}: unknown scorer={scores.scorer!r}; only scorer=llm can gate")
    n_err = sum(v == "error" for v in scores.verdicts.values())
    rate = _error_rate(scores)
    if rate > t.max_error_rate:
        reasons.append(
            f"{who}: error rate {rate:.3f} ({n_err}/{len(scores.verdicts)}) > max_error_rate {t.max_error_rate:.3f}"
        )
    return reasons


def _unpaired_reason(only: list[str], here: str, there: str) -> str:
    shown = ", ".join(only[:_MAX_IDS_SHOWN]) + (", ..." if len(only) > _MAX_IDS_SHOWN else "")
    return f"unpaired items: {len(only)} id(s) scored for {here} but not for {there}: {shown}"


def evaluate_gate(
    base: ModelScores, instruct: ModelScores, thresholds: GateThresholds | None = None
) -> GateVerdict:
    """Decide PASS / FAIL / NOT_ELIGIBLE for a base-vs-instruct pair.

    Pairing: an item counts toward the success rates and McNemar only when both runs scored it
    and neither verdict is "error". Errors still count toward each model's error rate
    (errors / all items in that run). Ids present in one run only make the pair NOT_ELIGIBLE,
    since a success rate over different item sets is not a paired comparison.

    The checks are computed whenever there are paired items, even when NOT_ELIGIBLE, so a report
    can show them; the verdict is PASS only when eligible and every check passes.

    Args:
        base: the base model's scored run.
        instruct: the instruct (or post-trained) model's scored run.
        thresholds: the gate's numbers; default ``GateThresholds()``.

    Raises:
        ValueError: on a verdict other than "pass", "fail" or "error".
    """
    t = thresholds if thresholds is not None else GateThresholds()
    for scores in (base, instruct):
        bad = {v for v in scores.verdicts.values() if v not in VALID_VERDICTS}
        if bad:
            raise ValueError(f"{scores.model}: verdicts must be pass/fail/error, got {sorted(bad)}")

    reasons: list[str] = []
    if "heuristic_triage" in (base.scorer, instruct.scorer):
        reasons.append(HEURISTIC_REASON)
    reasons += _eligibility_reasons("base", base, t)
    reasons += _eligibility_reasons("instruct", instruct, t)

    # Unpaired ids come from the raw runs; error items are then dropped from both sides, so an
    # error on either model removes the item from the comparison without making it "unpaired".
    only_base = sorted(base.verdicts.keys() - instruct.verdicts.keys())
    only_instruct = sorted(instruct.verdicts.keys() - base.verdicts.keys())
    if only_base:
        reasons.append(_unpaired_reason(only_base, "base", "instruct"))
    if only_instruct:
        reasons.append(_unpaired_reason(only_instruct, "instruct", "base"))
    usable = {
        i
        for i in base.verdicts.keys() & instruct.verdicts.keys()
        if base.verdicts[i] != "error" and instruct.verdicts[i] != "error"
    }
    table = paired_table(
        {i: instruct.verdicts[i] == "pass" for i in usable},
        {i: base.verdicts[i] == "pass" for i in usable},
    )

    checks: list[GateCheck] = []
    p_base: float | None = None
    p_instruct: float | None = None
    p_value: float | None = None
    h: float | None = None
    if table.n_paired == 0:
        reasons.append("no paired items: nothing was scored (without error) for both models")
    else:
        p_instruct, p_base = table.success_a, table.success_b
        p_value = mcnemar_exact(table.a_only, table.b_only).p_value
        h = cohens_h(p_instruct, p_base)
        checks = [
            _check("base_success_rate", p_base, t.base_max_success, "<="),
            _check("instruct_success_rate", p_instruct, t.instruct_min_success, ">="),
            _check("mcnemar_p", p_value, t.mcnemar_alpha, "<"),
            _check("cohens_h", h, t.min_cohens_h, ">="),
        ]

    if reasons:
        verdict: Verdict = "NOT_ELIGIBLE"
    elif all(c.passed for c in checks):
        verdict = "PASS"
        reasons = [c.describe() for c in checks]
    else:
        verdict = "FAIL"
        reasons = [c.describe() for c in checks if not c.passed]

    return GateVerdict(
        verdict=verdict,
        reasons=reasons,
        checks=checks,
        base_model=base.model,
        instruct_model=instruct.model,
        n_paired=table.n_paired,
        base_success=p_base,
        instruct_success=p_instruct,
        instruct_only=table.a_only,
        base_only=table.b_only,
        mcnemar_p=p_value,
        cohens_h=h,
        base_error_rate=_error_rate(base),
        instruct_error_rate=_error_rate(instruct),
        thresholds=t,
    )
