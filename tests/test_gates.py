"""posttrain.analysis.gates: eligibility reasons, the checks' arithmetic, and the false-pass rate under a null."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from posttrain.analysis.gates import HEURISTIC_REASON, GateThresholds, GateVerdict, ModelScores, evaluate_gate


def _runs(
    both: int, instruct_only: int, base_only: int, neither: int
) -> tuple[dict[str, str], dict[str, str]]:
    """Base and instruct verdicts with the given paired counts, item ids i0000, i0001, ..."""
    pairs = (
        [("pass", "pass")] * both
        + [("fail", "pass")] * instruct_only
        + [("pass", "fail")] * base_only
        + [("fail", "fail")] * neither
    )
    base = {f"i{k:04d}": b for k, (b, _) in enumerate(pairs)}
    instruct = {f"i{k:04d}": i for k, (_, i) in enumerate(pairs)}
    return base, instruct


INSTRUMENT = {"provider": "anthropic", "model": "claude-x", "template_version": "conv-judge-v2",
              "template_sha256": "ab" * 32}


def _scores(
    verdicts: dict[str, str], model: str = "m", scorer: str = "llm", kappa: float | None = 0.85
) -> ModelScores:
    """One run judged by INSTRUMENT, holding exactly the benchmark's items (n = its own length)."""
    bench = {"name": "conversations", "split": "full", "limit": None, "n": len(verdicts), "sha256": "cd" * 32}
    return ModelScores(model=model, verdicts=verdicts, scorer=scorer, calibration_kappa=kappa,
                       instrument=INSTRUMENT if scorer == "llm" else None, calibration_key="human-v1",
                       benchmark=bench, decoding=GREEDY)


# summary["decoding"] of a greedy run (both arms of every pair here decode alike unless a test says not)
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 256, "stop_strings": [],
          "seed": None, "backend": "hf"}


def _gate(base: dict[str, str], instruct: dict[str, str], **thresholds: float) -> GateVerdict:
    return evaluate_gate(_scores(base, "base"), _scores(instruct, "instruct"), GateThresholds(**thresholds))


# ---------------------------------------------------------------- PASS and FAIL


def test_pass_hand_worked() -> None:
    """200 items: both 40, instruct-only 120, base-only 10, neither 30.

    base = (40 + 10)/200 = .25 <= .30; instruct = (40 + 120)/200 = .80 >= .80;
    McNemar: 120 of 130 discordant, p = binomtest(120, 130, .5) ≈ 1e-25 < .01;
    h = 2·asin(√.8) − 2·asin(√.25) = 2.214297 − 1.047198 = 1.167099 >= .5.
    """
    base, instruct = _runs(40, 120, 10, 30)
    v = _gate(base, instruct)
    assert v.verdict == "PASS"
    assert v.n_paired == 200
    assert (v.base_success, v.instruct_success) == pytest.approx((0.25, 0.80))
    assert (v.instruct_only, v.base_only) == (120, 10)
    assert v.mcnemar_p == pytest.approx(sps.binomtest(120, 130, 0.5).pvalue)
    assert v.cohens_h == pytest.approx(1.167099, abs=1e-6)
    assert [c.name for c in v.checks] == [
        "base_success_rate",
        "instruct_success_rate",
        "mcnemar_p",
        "cluster_p",
        "cohens_h",
    ]
    assert [c.op for c in v.checks] == ["<=", ">=", "<", "<", ">="]
    assert all(c.passed for c in v.checks)
    # no clusters recorded: each item is its own cluster, and the sign-flip test IS exact McNemar
    assert not v.clusters_recorded and v.observed is not None
    assert v.observed.cluster_p == pytest.approx(v.mcnemar_p, rel=1e-9)
    assert v.min_paired == 100 and v.n_error_items == 0 and v.worst_case == v.observed


def test_fail_lists_the_failing_check_with_its_number_and_threshold() -> None:
    """both 60, instruct-only 104, base-only 24, neither 12: base = (60 + 24)/200 = .42 > .30;
    instruct = (60 + 104)/200 = .82; 104 of 128 discordant is far below α; h = 2·asin(√.82) −
    2·asin(√.42) = 2.265295 − 1.410106 = 0.855189. Only the base check fails."""
    base, instruct = _runs(60, 104, 24, 12)
    v = _gate(base, instruct)
    assert v.verdict == "FAIL"
    failing = [c for c in v.checks if not c.passed]
    assert [c.name for c in failing] == ["base_success_rate"]
    assert failing[0].value == pytest.approx(0.42) and failing[0].threshold == 0.30
    assert v.reasons == ["base_success_rate 0.42 is not <= 0.3"]
    assert v.cohens_h == pytest.approx(0.855189, abs=1e-6)


def test_fail_on_significance_alone() -> None:
    """20 items: both 2, instruct-only 6, base-only 0, neither 12. base = 2/20 = .10, instruct
    = 8/20 = .40 — relax the instruct floor to .40 so only McNemar can fail: p = 2·(1/2)^6 = 1/32
    = .03125, not < .01; h = 2·asin(√.4) − 2·asin(√.1) = 1.369438 − 0.643501 = 0.725937."""
    base, instruct = _runs(2, 6, 0, 12)
    v = _gate(base, instruct, instruct_min_success=0.40, min_paired=20)
    assert v.verdict == "FAIL"
    assert v.reasons == ["mcnemar_p 0.03125 is not < 0.01", "cluster_p 0.03125 is not < 0.01"]
    assert v.mcnemar_p == pytest.approx(1 / 32)


def test_error_items_leave_the_pairing_but_count_toward_the_error_rate() -> None:
    """100 items, base errors on 2 and instruct on 3 (different items): 100 − 5 = 95 paired.
    Error rates 2/100 = .02 and 3/100 = .03 are within .05, so the run stays eligible."""
    base, instruct = _runs(10, 80, 0, 10)
    for k in (0, 1):
        base[f"i{k:04d}"] = "error"
    for k in (50, 51, 52):
        instruct[f"i{k:04d}"] = "error"
    v = _gate(base, instruct, min_paired=90)
    assert v.n_paired == 95
    assert (v.base_error_rate, v.instruct_error_rate) == pytest.approx((0.02, 0.03))
    # Items 0, 1 were "both pass" and 50..52 "instruct only": base 8/95, instruct (8 + 77)/95.
    assert v.base_success == pytest.approx(8 / 95)
    assert v.instruct_success == pytest.approx(85 / 95)
    assert v.verdict == "PASS"
    # Worst case: base's 2 errors as pass (they were "both pass" anyway), instruct's 3 as fail:
    # base 10/100, instruct 87/100 - 3 = ... (10 + 80 - 3)/100 = .87: still PASS.
    assert v.worst_case is not None and v.worst_case.n_paired == 100
    assert v.worst_case.instruct_success == pytest.approx(0.87) and v.worst_case.base_success == pytest.approx(0.10)
    assert v.dropped["error"] == ["i0000", "i0001", "i0050", "i0051", "i0052"]


def test_to_dict_is_json_ready() -> None:
    base, instruct = _runs(40, 120, 10, 30)
    d = evaluate_gate(_scores(base), _scores(instruct), GateThresholds()).to_dict()
    again = json.loads(json.dumps(d))
    assert again["verdict"] == "PASS"
    assert again["checks"][0] == {
        "name": "base_success_rate",
        "value": 0.25,
        "threshold": 0.3,
        "op": "<=",
        "passed": True,
    }
    assert again["thresholds"]["mcnemar_alpha"] == 0.01


def test_unknown_verdict_is_an_error() -> None:
    with pytest.raises(ValueError):
        _gate({"a": "pass"}, {"a": "maybe"})


# ---------------------------------------------------------------- NOT_ELIGIBLE, one reason each


def _good_runs() -> tuple[dict[str, str], dict[str, str]]:
    return _runs(40, 120, 10, 30)


def test_heuristic_scorer_can_never_gate() -> None:
    base, instruct = _good_runs()
    v = evaluate_gate(
        _scores(base, scorer="heuristic_triage", kappa=None),
        _scores(instruct, scorer="heuristic_triage", kappa=None),
        GateThresholds(),
    )
    assert v.verdict == "NOT_ELIGIBLE"
    assert v.reasons == [HEURISTIC_REASON]
    assert (
        HEURISTIC_REASON == "scorer=heuristic_triage is triage only and can never gate; rerun with scorer=llm"
    )
    assert all(c.passed for c in v.checks)  # the numbers would pass; eligibility still blocks


def test_uncalibrated_judge() -> None:
    base, instruct = _good_runs()
    v = evaluate_gate(_scores(base, kappa=None), _scores(instruct), GateThresholds())
    assert v.verdict == "NOT_ELIGIBLE"
    assert len(v.reasons) == 1 and "uncalibrated" in v.reasons[0] and v.reasons[0].startswith("base")


def test_nan_kappa_counts_as_uncalibrated() -> None:
    base, instruct = _good_runs()
    v = evaluate_gate(_scores(base), _scores(instruct, kappa=math.nan), GateThresholds())
    assert v.verdict == "NOT_ELIGIBLE" and "uncalibrated" in v.reasons[0]


def test_kappa_below_min_kappa() -> None:
    base, instruct = _good_runs()
    v = evaluate_gate(_scores(base, kappa=0.62), _scores(instruct, kappa=0.62), GateThresholds())
    assert v.verdict == "NOT_ELIGIBLE"
    assert len(v.reasons) == 2
    assert all("kappa 0.620 < min_kappa 0.700" in r for r in v.reasons)


def test_error_rate_above_max() -> None:
    """11 errors of 200 = .055 > .05 on the instruct side."""
    base, instruct = _good_runs()
    for k in range(11):
        instruct[f"i{k:04d}"] = "error"
    v = evaluate_gate(_scores(base), _scores(instruct), GateThresholds())
    assert v.verdict == "NOT_ELIGIBLE"
    assert v.reasons == ["instruct (m): error rate 0.055 (11/200) > max_error_rate 0.050"]


def test_unpaired_items() -> None:
    base, instruct = _good_runs()
    base["extra-b"] = "pass"
    instruct["extra-i1"] = "fail"
    instruct["extra-i2"] = "fail"
    v = evaluate_gate(_scores(base), _scores(instruct), GateThresholds())
    assert v.verdict == "NOT_ELIGIBLE"
    assert "different benchmarks: n 201 (base m) vs 202 (instruct m); evaluate both on the same items" in v.reasons[0]
    assert "1 id(s) scored for base but not for instruct: extra-b" in v.reasons[1]
    assert "2 id(s) scored for instruct but not for base: extra-i1, extra-i2" in v.reasons[2]
    assert v.n_paired == 200


def test_no_paired_items() -> None:
    v = evaluate_gate(_scores({}), _scores({}), GateThresholds())
    assert v.verdict == "NOT_ELIGIBLE" and v.checks == [] and "no paired items" in v.reasons[-1]


# ---------------------------------------------------------------- false passes under the null


def _false_pass_rate(p: float, thresholds: GateThresholds, n_items: int, n_sims: int, seed: int) -> float:
    """Share of simulated designs that PASS when base and instruct share the true rate p.

    Each item's two results are independent Bernoulli(p) draws, the most discordant null for a
    given rate (positive within-item correlation would only move pairs onto the diagonal).
    """
    rng = np.random.default_rng(seed)
    ids = [f"i{k:04d}" for k in range(n_items)]
    passes = 0
    for _ in range(n_sims):
        draws = rng.random((2, n_items)) < p
        base = {i: "pass" if x else "fail" for i, x in zip(ids, draws[0], strict=True)}
        instruct = {i: "pass" if x else "fail" for i, x in zip(ids, draws[1], strict=True)}
        passes += evaluate_gate(_scores(base), _scores(instruct), thresholds).verdict == "PASS"
    return passes / n_sims


# Only McNemar can block: no rate floors or ceilings and no effect-size floor (h >= −π always holds).
MCNEMAR_ONLY = GateThresholds(base_max_success=1.0, instruct_min_success=0.0, min_cohens_h=-math.pi)


def _exact_mcnemar_size(p: float, n_items: int, alpha: float) -> float:
    """Exact false-pass rate of a McNemar-only gate at a common true rate p, by summation.

    With independent Bernoulli(p) results the number of discordant pairs is M ~ Binomial(n, ψ),
    ψ = 2p(1 − p), and under the null A's share of them is Binomial(M, 1/2); the exact two-sided p
    for k = min(a, m − a) is min(1, 2·P(X <= k)). Sum P(M = m)·P(a)·1[p < α] over all (m, a).
    """
    psi, size = 2 * p * (1 - p), 0.0
    for m in range(1, n_items + 1):
        a = np.arange(m + 1)
        pvals = np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(a, m - a), m, 0.5))
        size += sps.binom.pmf(m, n_items, psi) * float(np.sum(sps.binom.pmf(a, m, 0.5) * (pvals < alpha)))
    return size


@pytest.mark.parametrize("p", [0.5, 0.3, 0.8])
def test_mcnemar_alone_keeps_false_passes_below_alpha(p: float) -> None:
    """The null that matters: with the rate checks switched off, only McNemar at α = .01 stands
    between noise and a PASS.

    Exactly (by summation) the false-pass rate of such a gate on 200 items is about .0074 at
    p = .5, .3 and .8: the exact test is conservative, so it is below α. The simulation runs the
    real gate on 500 seeded 200-item designs; its estimate has SE √(.01·.99/500) = .0045, so we
    require it to be at most α + 2·SE = .019 (i.e. <= 9 passes of 500): a correct gate (true rate
    .0074) exceeds that with probability .005 whatever the seed, a gate with a true rate of 3% with
    probability .93.
    """
    assert _exact_mcnemar_size(p, n_items=200, alpha=0.01) <= 0.01
    rate = _false_pass_rate(p, MCNEMAR_ONLY, n_items=200, n_sims=500, seed=101)
    assert rate <= 0.01 + 2 * math.sqrt(0.01 * 0.99 / 500)


def test_loosened_rate_thresholds_still_hold_false_passes_below_alpha() -> None:
    """Rate thresholds loose enough that a 0.5-vs-0.5 null could meet them by chance: base <= .5,
    instruct >= .5, h >= 0. Then McNemar (and the direction check) is what keeps PASS rare."""
    loose = GateThresholds(base_max_success=0.5, instruct_min_success=0.5, min_cohens_h=0.0)
    assert _false_pass_rate(0.5, loose, n_items=200, n_sims=500, seed=202) <= 0.01


@pytest.mark.parametrize("p", [0.3, 0.55, 0.8])
def test_default_gate_never_passes_equal_rates(p: float) -> None:
    """With the default thresholds an equal-rate pair must show base <= .30 and instruct >= .80 on the
    same 200 items, a gap of 100 successes that sampling noise at any common p cannot produce."""
    assert _false_pass_rate(p, GateThresholds(), n_items=200, n_sims=300, seed=303) == 0.0


def test_true_gap_passes_reliably() -> None:
    """Power side of the same simulation: base .15 vs instruct .95 passes nearly always (the rate
    checks sit .15 and .15 away from the truth, i.e. about 6 and 10 binomial SEs at n = 200)."""
    rng = np.random.default_rng(404)
    ids = [f"i{k:04d}" for k in range(200)]
    passes = 0
    for _ in range(100):
        b, i = rng.random(200) < 0.15, rng.random(200) < 0.95
        base = {k: "pass" if x else "fail" for k, x in zip(ids, b, strict=True)}
        instruct = {k: "pass" if x else "fail" for k, x in zip(ids, i, strict=True)}
        passes += evaluate_gate(_scores(base), _scores(instruct), GateThresholds()).verdict == "PASS"
    assert passes >= 99


# ---------------------------------------------------------------- min_paired from the power analysis


def test_default_min_paired_is_the_power_analysis_with_a_floor_of_100() -> None:
    """Smallest accepted gap: base .30 and instruct sin²(asin√.3 + .5/2) = sin²(0.8296) = .5442;
    independence gives p10 = .5442·.7 = .3809, p01 = .3·.4558 = .1367, ψ = .5177, δ = .2442; Connor at
    α = .01, 80%: (2.5758·√.5177 + 0.8416·√(.5177 − .2442²))² / .2442² = (1.8533 + 0.5696)² / .0596
    = 98.5 -> 99 pairs, which the floor raises to 100."""
    from posttrain.analysis.gates import default_min_paired
    from posttrain.analysis.stats import paired_sample_size

    pi = math.sin(math.asin(math.sqrt(0.3)) + 0.25) ** 2
    assert pi == pytest.approx(0.5442, abs=1e-4)
    assert paired_sample_size(pi * 0.7, 0.3 * (1 - pi), 0.8, 0.01) == 99
    assert GateThresholds().required_paired == 100
    assert default_min_paired(GateThresholds(mcnemar_alpha=0.001)) == paired_sample_size(
        pi * 0.7, 0.3 * (1 - pi), 0.8, 0.001) > 100  # a stricter alpha needs more pairs
    assert default_min_paired(GateThresholds(min_cohens_h=1.0)) == 100  # a large gap: the floor holds
    assert GateThresholds(min_paired=150).required_paired == 150


def test_config_refuses_min_paired_below_100(compose: Any) -> None:
    from posttrain.config import ConfigError, validate

    validate(compose("gate.min_paired=120"))
    with pytest.raises(ConfigError, match=r"gate.min_paired=50 must be >= 100"):
        validate(compose("gate.min_paired=50"))
