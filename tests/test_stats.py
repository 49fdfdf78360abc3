"""posttrain.analysis.stats against independent computations: scipy, statsmodels, or arithmetic by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import cohens_kappa as sm_cohens_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from posttrain.analysis.stats import (
    bootstrap_ci,
    cohens_h,
    cohens_kappa,
    design_power,
    holm,
    kappa_from_labels,
    mcnemar_exact,
    paired_bootstrap_diff_ci,
    paired_power,
    paired_sample_size,
    paired_table,
    simulate_paired_power,
    wilson_ci,
)

# ---------------------------------------------------------------- paired table and McNemar


def test_paired_table_counts_and_unpaired_ids() -> None:
    """Items x1..x4 are shared: x1 both pass, x2 only a, x3 only b, x4 neither; a has 'ua', b has 'ub'."""
    a = {"x1": True, "x2": True, "x3": False, "x4": False, "ua": True}
    b = {"x1": True, "x2": False, "x3": True, "x4": False, "ub": False, "ub2": True}
    t = paired_table(a, b)
    assert (t.both, t.a_only, t.b_only, t.neither, t.n_paired) == (1, 1, 1, 1, 4)
    assert t.unpaired_a == ["ua"]
    assert t.unpaired_b == ["ub", "ub2"]
    assert t.success_a == pytest.approx(0.5)  # (1 + 1) / 4
    assert t.success_b == pytest.approx(0.5)


def test_paired_table_empty() -> None:
    t = paired_table({}, {})
    assert t.n_paired == 0 and t.success_a == 0.0 and t.unpaired_a == []


@pytest.mark.parametrize(
    ("a_only", "b_only"), [(1, 9), (9, 1), (0, 5), (5, 5), (12, 30), (40, 17), (3, 4), (0, 1), (100, 70)]
)
def test_mcnemar_matches_scipy_and_statsmodels(a_only: int, b_only: int) -> None:
    res = mcnemar_exact(a_only, b_only)
    m = a_only + b_only
    assert res.n_discordant == m
    assert res.p_value == pytest.approx(sps.binomtest(a_only, m, 0.5).pvalue, rel=1e-12)
    # statsmodels' table: rows = A pass/fail, columns = B pass/fail; concordant cells are irrelevant.
    sm = mcnemar([[7, a_only], [b_only, 11]], exact=True)
    assert res.p_value == pytest.approx(sm.pvalue, rel=1e-9)
    # mid-p from its definition with binomial tails, written independently of the module.
    pmf = [math.comb(m, j) / 2**m for j in range(m + 1)]
    lower, upper = sum(pmf[: a_only + 1]), sum(pmf[a_only:])
    expected_mid = min(1.0, max(0.0, 2 * min(lower, upper) - pmf[a_only]))
    assert res.mid_p_value == pytest.approx(expected_mid, abs=1e-12)
    assert res.mid_p_value <= res.p_value


def test_mcnemar_hand_worked() -> None:
    """a_only = 1, b_only = 9: m = 10, P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = 11/1024.

    Exact p = 2 · 11/1024 = 22/1024 = 0.021484375. P(X = 1) = 10/1024, so
    mid-p = 22/1024 − 10/1024 = 12/1024 = 0.01171875.
    """
    res = mcnemar_exact(1, 9)
    assert res.p_value == pytest.approx(22 / 1024)
    assert res.mid_p_value == pytest.approx(12 / 1024)


def test_mcnemar_no_discordant_pairs_and_ties() -> None:
    assert mcnemar_exact(0, 0).p_value == 1.0 and mcnemar_exact(0, 0).mid_p_value == 1.0
    # A tie k = m/2: both tails exceed 1/2, so the exact p is 1 and the mid-p is 2·(1/2 + pmf/2) − pmf = 1.
    assert mcnemar_exact(5, 5).p_value == pytest.approx(1.0)
    assert mcnemar_exact(5, 5).mid_p_value == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


# ---------------------------------------------------------------- effect size, Wilson, Holm


@pytest.mark.parametrize(
    ("p1", "p2"), [(0.8, 0.3), (0.3, 0.8), (0.45, 0.3), (0.0, 1.0), (0.5, 0.5), (0.99, 0.9)]
)
def test_cohens_h_matches_statsmodels(p1: float, p2: float) -> None:
    assert cohens_h(p1, p2) == pytest.approx(proportion_effectsize(p1, p2), abs=1e-12)


def test_cohens_h_hand_worked() -> None:
    """asin(√.8) = asin(0.894427) = 1.107149; asin(√.3) = asin(0.547723) = 0.579640;
    h = 2 · (1.107149 − 0.579640) = 1.055018."""
    assert cohens_h(0.8, 0.3) == pytest.approx(1.055018, abs=1e-6)
    assert cohens_h(0.3, 0.8) == pytest.approx(-1.055018, abs=1e-6)
    with pytest.raises(ValueError):
        cohens_h(1.2, 0.5)


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 10), (10, 10), (60, 200), (160, 200), (1, 3)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_matches_statsmodels(k: int, n: int, alpha: float) -> None:
    low, high = proportion_confint(k, n, alpha=alpha, method="wilson")
    assert wilson_ci(k, n, alpha) == pytest.approx((low, high), abs=1e-12)


def test_wilson_hand_worked() -> None:
    """k = 8, n = 10, z = 1.959964, z² = 3.841459, p = 0.8.

    denominator 1 + z²/n = 1.3841459; centre = (0.8 + z²/(2n)) / 1.3841459 = 0.9920730 / 1.3841459
    = 0.716740; half-width = z · √(p(1−p)/n + z²/(4n²)) / 1.3841459
    = 1.959964 · √(0.016 + 0.0096036) / 1.3841459 = 1.959964 · 0.1600114 / 1.3841459 = 0.226578;
    interval = (0.490162, 0.943318).
    """
    low, high = wilson_ci(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-6)
    assert high == pytest.approx(0.943318, abs=1e-6)
    assert wilson_ci(0, 0) == (0.0, 1.0)


def test_holm_matches_statsmodels() -> None:
    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 12):
        p = rng.uniform(0, 0.2, size=m).tolist()
        expected = multipletests(p, method="holm")[1]
        assert holm(p) == pytest.approx(list(expected), abs=1e-12)


def test_holm_hand_worked() -> None:
    """p = [.01, .04, .03, .005], m = 4. Sorted: .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04
    -> running max .02, .03, .06, .06; back in input order [.03, .06, .06, .02]."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # .5·2 = 1.0, max(1.0, .9) clipped at 1
    assert holm([]) == []


# ---------------------------------------------------------------- power (Connor 1987)


def test_connor_sample_size_hand_worked() -> None:
    """p10 = .15, p01 = .05, α = .05, power .8: ψ = .2, δ = .1;
    z_.025·√ψ = 1.959964 · 0.447214 = 0.876523; z_.2·√(ψ − δ²) = 0.841621 · 0.435890 = 0.366855;
    n = (1.243378)² / .01 = 154.6 -> 155."""
    assert paired_sample_size(0.15, 0.05, power=0.8, alpha=0.05) == 155
    # Power inverts the formula: at n = 155 power is just above .8, at 154 just below.
    assert paired_power(0.15, 0.05, 155, alpha=0.05) >= 0.8 > paired_power(0.15, 0.05, 154, alpha=0.05)
    assert paired_power(0.15, 0.05, 100, 0.05) == pytest.approx(paired_power(0.05, 0.15, 100, 0.05))


def test_connor_power_formula_by_hand() -> None:
    """n = 100, p10 = .3, p01 = .1, α = .01: ψ = .4, δ = .2, z_.005 = 2.575829;
    z_β = (.2·10 − 2.575829·0.632456) / √(.4 − .04) = (2 − 1.629097) / 0.6 = 0.618171;
    Φ(0.618171) = 0.731769."""
    assert paired_power(0.3, 0.1, 100, alpha=0.01) == pytest.approx(0.731769, abs=1e-5)


def test_power_edge_cases() -> None:
    assert paired_power(0.0, 0.0, 200) == 0.0
    assert paired_power(0.1, 0.1, 200, alpha=0.05) == pytest.approx(0.025)  # one tail of α at δ = 0
    with pytest.raises(ValueError):
        paired_sample_size(0.1, 0.1)
    with pytest.raises(ValueError):
        paired_power(0.7, 0.5, 10)


@pytest.mark.parametrize(
    ("p10", "p01", "n", "alpha"),
    [(0.15, 0.05, 157, 0.05), (0.30, 0.10, 100, 0.01), (0.2625, 0.1125, 200, 0.01)],
)
def test_connor_agrees_with_simulated_exact_test(p10: float, p01: float, n: int, alpha: float) -> None:
    """Connor's normal approximation vs 2000 simulated exact McNemar tests (SE ≈ .01).

    The exact test is conservative (its size is below α because the binomial is discrete), so the
    simulated power sits a few points below Connor: e.g. .15/.05 at n = 157, α = .05 gives
    Connor .806 and a simulated exact-test power near .77. We require agreement within .06 and
    that Connor is not the smaller by more than the simulation's noise.
    """
    sim = simulate_paired_power(p10, p01, n, alpha, 2000, np.random.default_rng(20240601))
    connor = paired_power(p10, p01, n, alpha)
    assert abs(sim - connor) < 0.06
    assert sim <= connor + 0.03


def test_simulated_power_under_null_is_at_most_alpha() -> None:
    """With p10 = p01 the exact test's rejection rate is its size, which is <= α."""
    sim = simulate_paired_power(0.2, 0.2, 200, 0.05, 2000, np.random.default_rng(3))
    assert sim <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 2000)  # α plus two simulation SEs


def test_design_power_independence_assumption() -> None:
    """p_base = .3, p_instruct = .8: p10 = .8·.7 = .56, p01 = .3·.2 = .06, ψ = .62, δ = .5.
    n for 80% at α = .01: (2.575829·√.62 + 0.841621·√.37)² / .25
    = (2.028210 + 0.511938)² / .25 = 6.452352 / .25 = 25.8 -> 26."""
    d = design_power(0.3, 0.8, 200, alpha=0.01)
    assert (d.p10, d.p01) == pytest.approx((0.56, 0.06))
    assert d.n_for_80 == 26
    assert d.n_for_90 is not None and d.n_for_90 > d.n_for_80
    assert d.power == pytest.approx(paired_power(0.56, 0.06, 200, 0.01))
    flat = design_power(0.5, 0.5, 200)
    assert flat.n_for_80 is None and flat.n_for_90 is None


# ---------------------------------------------------------------- kappa


def test_kappa_hand_worked() -> None:
    """Table [[20, 5], [10, 15]], n = 50: p_o = (20 + 15)/50 = .70; row margins .5/.5,
    column margins .6/.4, so p_e = .5·.6 + .5·.4 = .50; kappa = (.70 − .50)/(1 − .50) = .40."""
    k = cohens_kappa([[20, 5], [10, 15]])
    assert k.kappa == pytest.approx(0.40)
    assert k.n == 50
    assert (k.ci95_low, k.ci95_high) == pytest.approx(
        (0.4 - 1.959964 * k.se, 0.4 + 1.959964 * k.se), abs=1e-5
    )


def test_kappa_matches_statsmodels_3x3() -> None:
    table = np.array([[30, 4, 1], [3, 25, 6], [2, 5, 24]])
    ours, ref = cohens_kappa(table), sm_cohens_kappa(table)
    assert ours.kappa == pytest.approx(ref.kappa)
    assert ours.se == pytest.approx(ref.std_kappa)
    assert (ours.ci95_low, ours.ci95_high) == pytest.approx((ref.kappa_low, ref.kappa_upp))


def test_kappa_from_labels_builds_the_table() -> None:
    """The labels below reproduce the [[20, 5], [10, 15]] table (rows A, columns B, order fail, pass)."""
    a = ["fail"] * 25 + ["pass"] * 25
    b = ["fail"] * 20 + ["pass"] * 5 + ["fail"] * 10 + ["pass"] * 15
    assert kappa_from_labels(a, b).kappa == pytest.approx(0.40)
    assert kappa_from_labels(a, b, categories=["pass", "fail"]).kappa == pytest.approx(0.40)
    assert kappa_from_labels(["pass", "fail"], ["pass", "fail"]).kappa == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kappa_from_labels(["pass"], ["pass", "fail"])
    with pytest.raises(ValueError):
        kappa_from_labels(["pass"], ["maybe"], categories=["pass", "fail"])


def test_kappa_degenerate_is_nan() -> None:
    """All 20 items in one category: p_o = p_e = 1, kappa = 0/0, reported as NaN."""
    assert math.isnan(cohens_kappa([[20, 0], [0, 0]]).kappa)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_matches_normal_theory() -> None:
    """400 values with mean .5 exactly: the SE of the mean is √(.25/400) = .025, so a 95%
    interval is about .5 ± 1.96·.025 = (.451, .549); the percentile bootstrap should be within .01."""
    values = np.array([0.0, 1.0] * 200)
    ci = bootstrap_ci(values, np.mean, n_boot=2000, rng=np.random.default_rng(11))
    assert ci.estimate == pytest.approx(0.5)
    assert ci.low == pytest.approx(0.451, abs=0.01)
    assert ci.high == pytest.approx(0.549, abs=0.01)


def test_bootstrap_ci_is_reproducible_and_degenerate_data_collapses() -> None:
    values = [0.2, 0.5, 0.9, 0.4, 0.7]
    a = bootstrap_ci(values, np.median, n_boot=500, rng=np.random.default_rng(5))
    b = bootstrap_ci(values, np.median, n_boot=500, rng=np.random.default_rng(5))
    assert a == b
    flat = bootstrap_ci([3.0] * 10, np.mean, n_boot=200, rng=np.random.default_rng(0))
    assert (flat.low, flat.high) == pytest.approx((3.0, 3.0))


def test_paired_bootstrap_diff_ci() -> None:
    """200 pairs: A passes 140, B 100, so the difference is (140 − 100)/200 = .20.

    A and B disagree on 50 items: 45 A-only and 5 B-only (both 95, neither 55). The paired SE of the
    difference is √((p10 + p01 − δ²)/n) = √((.225 + .025 − .04)/200) = √.00105 = .0324,
    so a 95% interval is about .20 ± .064 = (.136, .264).
    """
    a = [True] * 95 + [True] * 45 + [False] * 5 + [False] * 55
    b = [True] * 95 + [False] * 45 + [True] * 5 + [False] * 55
    ci = paired_bootstrap_diff_ci(a, b, n_boot=2000, rng=np.random.default_rng(9))
    assert ci.estimate == pytest.approx(0.20)
    assert ci.low == pytest.approx(0.136, abs=0.015)
    assert ci.high == pytest.approx(0.264, abs=0.015)
    with pytest.raises(ValueError):
        paired_bootstrap_diff_ci([True], [True, False], rng=np.random.default_rng(0))


# ---------------------------------------------------------------- clustered items


def _clustered(seed: int, n_clusters: int = 12, size: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = np.repeat(rng.normal(0.0, 1.0, n_clusters), size)
    x = rng.random(u.size) < sps.norm.cdf(0.5 + u)
    y = rng.random(u.size) < sps.norm.cdf(-0.2 + u)
    return x, y, np.repeat(np.arange(n_clusters), size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_mean_matches_statsmodels_cluster_robust_ols(seed: int) -> None:
    """The CR1 SE of a mean equals statsmodels' OLS(y, 1).fit(cov_type="cluster").bse, for a rate and
    for a paired difference; the interval uses t on G − 1 = 11 df."""
    import statsmodels.api as sm

    from posttrain.analysis.stats import cluster_mean

    x, y, groups = _clustered(seed)
    for values, bounds in ((x.astype(float), (0.0, 1.0)), (x.astype(float) - y, (-1.0, 1.0))):
        res = sm.OLS(values, np.ones(values.size)).fit(cov_type="cluster", cov_kwds={"groups": groups})
        cm = cluster_mean(values, groups.astype(str), bounds=bounds)
        assert cm.estimate == pytest.approx(float(res.params[0]))
        assert cm.se == pytest.approx(float(res.bse[0]), rel=1e-10)
        half = sps.t.isf(0.025, 11) * cm.se
        assert (cm.low, cm.high) == pytest.approx((max(bounds[0], cm.estimate - half), min(bounds[1], cm.estimate + half)))
        assert cm.se_iid == pytest.approx(values.std(ddof=1) / math.sqrt(values.size))
        assert cm.n_clusters == 12


def test_icc_hand_worked() -> None:
    """Clusters {1, 1}, {0, 0}: ȳ = .5, MSB = (2·.25 + 2·.25)/1 = 1, MSW = 0, m0 = (4 − 8/4)/1 = 2,
    ICC = (1 − 0)/(1 + 1·0) = 1, design effect 1 + (2 − 1)·1 = 2. Clusters {1, 0}, {1, 0}: MSB = 0,
    MSW = (.25·4)/2 = .5, ICC = (0 − .5)/(0 + .5) = −1 and the design effect stays 1."""
    from posttrain.analysis.stats import icc_anova

    r = icc_anova([1, 1, 0, 0], ["a", "a", "b", "b"])
    assert (r.icc, r.m0, r.design_effect) == pytest.approx((1.0, 2.0, 2.0))
    r = icc_anova([1, 0, 1, 0], ["a", "a", "b", "b"])
    assert (r.icc, r.design_effect) == pytest.approx((-1.0, 1.0))
    assert icc_anova([1, 0, 1], ["a", "b", "c"]).design_effect == 1.0  # one item per cluster: nothing to correlate


def test_obuchowski_equals_a_cluster_robust_wald_test() -> None:
    """Obuchowski's X² is the squared z of the mean difference with the CR1 SE: statsmodels' cluster-robust
    OLS of x − y on a constant gives the same statistic and p (normal reference, as use_t=False)."""
    import statsmodels.api as sm

    from posttrain.analysis.stats import obuchowski_test

    for seed in range(3):
        x, y, groups = _clustered(seed)
        res = sm.OLS(x.astype(float) - y, np.ones(x.size)).fit(cov_type="cluster", cov_kwds={"groups": groups})
        ob = obuchowski_test(x, y, groups)
        assert ob.statistic == pytest.approx(float(res.tvalues[0]) ** 2, rel=1e-10)
        assert ob.p_value == pytest.approx(float(res.pvalues[0]), rel=1e-8)
    assert obuchowski_test([True, False], [True, False], ["a", "b"]).p_value == 1.0


@pytest.mark.parametrize(("a_only", "b_only"), [(1, 9), (0, 5), (12, 30), (40, 17), (3, 4), (100, 70)])
def test_sign_flip_with_one_item_per_cluster_is_exact_mcnemar(a_only: int, b_only: int) -> None:
    from posttrain.analysis.stats import cluster_permutation_test

    x = [True] * a_only + [False] * b_only + [True] * 7 + [False] * 5
    y = [False] * a_only + [True] * b_only + [True] * 7 + [False] * 5
    res = cluster_permutation_test(x, y, [str(k) for k in range(len(x))])
    assert res.p_value == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue, rel=1e-9)
    assert res.n_clusters == a_only + b_only


def test_sign_flip_hand_worked_and_by_enumeration() -> None:
    """Cluster differences 2, 1, 1 (sum 4): of the 2³ = 8 sign patterns only (+,+,+) and (−,−,−)
    reach |sum| >= 4, so p = 2/8 = .25. And for 10 clustered draws the convolution equals brute-force
    enumeration of all 2^G patterns."""
    import itertools

    from posttrain.analysis.stats import cluster_permutation_test

    assert cluster_permutation_test([1, 1, 1, 0, 1], [0, 0, 0, 0, 0], list("aabbc")).p_value == pytest.approx(0.25)
    for seed in range(10):
        x, y, groups = _clustered(seed, n_clusters=10, size=4)
        d = np.bincount(groups, weights=x.astype(float) - y)
        d = d[d != 0]
        sums = [abs(float(np.dot(s, d))) for s in itertools.product((-1, 1), repeat=d.size)]
        brute = np.mean([s >= abs(d.sum()) - 1e-9 for s in sums]) if d.size else 1.0
        assert cluster_permutation_test(x, y, groups).p_value == pytest.approx(brute, rel=1e-12)
