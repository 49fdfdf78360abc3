"""Statistics for paired pass/fail comparisons of two models on the same items.

Every model answers the same items, so the comparison is paired: what carries the evidence is the
items where exactly one model passes (the discordant pairs), and the exact McNemar test is a
binomial test on them. Around that test sit an effect size (Cohen's h), an interval for one
success rate (Wilson), a multiplicity correction across several model pairs (Holm), the power of
the paired design (Connor 1987, checked by simulating the exact test), the agreement of an LLM
judge with human labels (Cohen's kappa) and percentile bootstrap intervals.

All functions are pure: values in, frozen dataclasses (or plain numbers) out; anything random takes
an explicit ``numpy.random.Generator``. ``docs/statistics.md`` explains the method.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.inter_rater import cohens_kappa as _sm_cohens_kappa
from statsmodels.stats.proportion import proportion_confint

# --------------------------------------------------------------------------------------------
# Paired table and the exact McNemar test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTable:
    """Two models' pass/fail on the items both were run on.

    ``a_only`` counts items that A passes and B fails; ``b_only`` the reverse. ``unpaired_a`` and
    ``unpaired_b`` are the sorted ids present in only one of the two runs: they are left out of
    every count, and a caller deciding anything should treat them as a defect of the run.
    """

    both: int
    a_only: int
    b_only: int
    neither: int
    n_paired: int
    unpaired_a: list[str]
    unpaired_b: list[str]

    @property
    def success_a(self) -> float:
        """A's success rate over paired items, (both + a_only) / n_paired; 0.0 when empty."""
        return (self.both + self.a_only) / self.n_paired if self.n_paired else 0.0

    @property
    def success_b(self) -> float:
        """B's success rate over paired items, (both + b_only) / n_paired; 0.0 when empty."""
        return (self.both + self.b_only) / self.n_paired if self.n_paired else 0.0


def paired_table(a: Mapping[str, bool], b: Mapping[str, bool]) -> PairedTable:
    """Pair two models' per-item results by item id.

    Args:
        a: item id -> passed, for model A.
        b: item id -> passed, for model B.

    Returns:
        The 2x2 counts over ids present in both, and the ids present in only one.
    """
    shared = a.keys() & b.keys()
    both = sum(1 for i in shared if a[i] and b[i])
    a_only = sum(1 for i in shared if a[i] and not b[i])
    b_only = sum(1 for i in shared if b[i] and not a[i])
    return PairedTable(
        both=both,
        a_only=a_only,
        b_only=b_only,
        neither=len(shared) - both - a_only - b_only,
        n_paired=len(shared),
        unpaired_a=sorted(a.keys() - shared),
        unpaired_b=sorted(b.keys() - shared),
    )


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on the discordant pairs (two-sided)."""

    a_only: int
    b_only: int
    n_discordant: int
    p_value: float
    mid_p_value: float


def mcnemar_exact(a_only: int, b_only: int) -> McNemarResult:
    """Exact two-sided McNemar test: a binomial test of a_only out of the discordant pairs at 1/2.

    Under H0 (both models equally likely to be the one that passes a discordant item) the count
    X = a_only is Binomial(m, 1/2) with m = a_only + b_only. The exact p is scipy's ``binomtest``;
    because Binomial(m, 1/2) is symmetric, it equals min(1, 2·min(P(X <= k), P(X >= k))). The mid-p
    removes half of the observed outcome's mass from each tail, i.e. subtracts P(X = k) once:
    mid-p = 2·min(P(X <= k), P(X >= k)) - P(X = k), clipped to [0, 1]. The mid-p is less
    conservative than the exact p; report it, but gate on the exact p.

    Args:
        a_only: pairs where only A passes.
        b_only: pairs where only B passes.

    Returns:
        The counts and both p-values; with no discordant pairs both p-values are 1.0.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"counts must be >= 0, got a_only={a_only}, b_only={b_only}")
    m = a_only + b_only
    if m == 0:
        return McNemarResult(a_only, b_only, 0, 1.0, 1.0)
    p_value = float(sps.binomtest(a_only, m, 0.5).pvalue)
    tail = min(sps.binom.cdf(a_only, m, 0.5), sps.binom.sf(a_only - 1, m, 0.5))
    mid_p = float(np.clip(2.0 * tail - sps.binom.pmf(a_only, m, 0.5), 0.0, 1.0))
    return McNemarResult(a_only, b_only, m, p_value, mid_p)


# --------------------------------------------------------------------------------------------
# Effect size, one-rate interval, multiplicity
# --------------------------------------------------------------------------------------------


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h = 2·asin(√p1) − 2·asin(√p2), signed (positive when p1 > p2).

    The arcsine transform makes a gap between two proportions comparable across the scale:
    0.30 -> 0.45 and 0.80 -> 0.90 are different raw gaps but similar h. Conventional reading:
    0.2 small, 0.5 medium, 0.8 large.
    """
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"proportions must lie in [0, 1], got {p}")
    return 2.0 * math.asin(math.sqrt(p1)) - 2.0 * math.asin(math.sqrt(p2))


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (statsmodels, method="wilson").

    Wilson stays inside [0, 1] and keeps near-nominal coverage at rates near 0 or 1 and at small
    n, where the Wald interval p ± z·√(p(1−p)/n) collapses to a point (k = 0 gives ±0).

    Returns:
        (low, high); (0.0, 1.0) when n == 0, i.e. nothing is known.
    """
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    low, high = proportion_confint(k, n, alpha=alpha, method="wilson")
    return (float(low), float(high))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order.

    Sort ascending; the i-th smallest (i = 0..m−1) is multiplied by (m − i); a running maximum
    keeps the adjusted values monotone in the sorted order; clip at 1. Rejecting where the
    adjusted p < alpha controls the family-wise error rate at alpha for any dependence between
    the tests, which matters because model pairs share items and often a model.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * pvalues[i])
        adjusted[i] = min(1.0, running)
    return adjusted


# --------------------------------------------------------------------------------------------
# Power of the paired design (Connor 1987), and a simulation of the exact test to check it
# --------------------------------------------------------------------------------------------


def _check_discordance(p10: float, p01: float) -> None:
    if p10 < 0.0 or p01 < 0.0 or p10 + p01 > 1.0 + 1e-12:
        raise ValueError(f"need p10, p01 >= 0 and p10 + p01 <= 1, got p10={p10}, p01={p01}")


def paired_power(p10: float, p01: float, n: int, alpha: float = 0.01) -> float:
    """Approximate power of the two-sided McNemar test with n pairs (Connor 1987).

    With ψ = p10 + p01 (discordance) and δ = p10 − p01 (the difference in success rates),
    Connor's sample size n = [z_{α/2}·√ψ + z_β·√(ψ − δ²)]² / δ² solved for z_β gives
    z_β = (|δ|·√n − z_{α/2}·√ψ) / √(ψ − δ²), power = Φ(z_β). Like the formula it counts only
    the tail in the direction of δ, so at δ = 0 it returns α/2, not α.

    Args:
        p10: probability that a pair is discordant with A passing and B failing.
        p01: probability that a pair is discordant with B passing and A failing.
        n: number of pairs (items).
        alpha: two-sided significance level.
    """
    _check_discordance(p10, p01)
    psi, delta = p10 + p01, p10 - p01
    if psi == 0.0:
        return 0.0  # no discordant pairs can occur, so the test can never reject
    z_a = sps.norm.isf(alpha / 2.0)
    signal = abs(delta) * math.sqrt(n) - z_a * math.sqrt(psi)
    spread = math.sqrt(max(psi - delta * delta, 0.0))
    if spread == 0.0:  # p10 or p01 is 1: every pair is discordant the same way
        return 1.0 if signal > 0.0 else 0.0
    return float(sps.norm.cdf(signal / spread))


def paired_sample_size(p10: float, p01: float, power: float = 0.8, alpha: float = 0.01) -> int:
    """Pairs needed for the two-sided McNemar test to reach ``power`` (Connor 1987), rounded up.

    n = [z_{α/2}·√ψ + z_β·√(ψ − δ²)]² / δ², ψ = p10 + p01, δ = p10 − p01. Worked example
    (p10 = .15, p01 = .05, α = .05, power = .8): ψ = .2, δ = .1,
    1.95996·√.2 = 0.87652, 0.84162·√.19 = 0.36685, (0.87652 + 0.36685)² / .01 = 154.6 -> 155.

    Raises:
        ValueError: when δ = 0 (no finite n has power above α).
    """
    _check_discordance(p10, p01)
    psi, delta = p10 + p01, p10 - p01
    if delta == 0.0:
        raise ValueError("p10 == p01: the McNemar test has no power beyond alpha at any n")
    z_a, z_b = sps.norm.isf(alpha / 2.0), sps.norm.ppf(power)
    root_n = z_a * math.sqrt(psi) + z_b * math.sqrt(max(psi - delta * delta, 0.0))
    return max(1, math.ceil(root_n * root_n / (delta * delta)))


def simulate_paired_power(
    p10: float, p01: float, n: int, alpha: float, n_sims: int, rng: np.random.Generator
) -> float:
    """Monte Carlo power of the exact McNemar test: share of simulated designs with p < alpha.

    Each simulated design draws (a_only, b_only, concordant) ~ Multinomial(n; p10, p01, rest) and
    runs ``mcnemar_exact``. Designs repeat the same (a_only, b_only) often, so each distinct
    pair is tested once. The binomial standard error of the estimate is √(power·(1−power)/n_sims),
    e.g. √(.8·.2/2000) = 0.009.
    """
    _check_discordance(p10, p01)
    rest = max(0.0, 1.0 - p10 - p01)
    draws = rng.multinomial(n, [p10, p01, rest], size=n_sims)[:, :2]
    pairs, inverse = np.unique(draws, axis=0, return_inverse=True)
    pvalues = np.array([mcnemar_exact(int(a), int(b)).p_value for a, b in pairs])
    return float(np.mean(pvalues[inverse.ravel()] < alpha))


@dataclass(frozen=True)
class DesignPower:
    """Power of a paired base-vs-instruct design, with the n needed for 80% and 90% power."""

    p_base: float
    p_instruct: float
    p10: float
    p01: float
    n: int
    alpha: float
    power: float
    n_for_80: int | None
    n_for_90: int | None


def design_power(p_base: float, p_instruct: float, n: int, alpha: float = 0.01) -> DesignPower:
    """Power of the paired design when base and instruct succeed at p_base and p_instruct.

    The discordance depends on how the two models' successes co-vary across items, which the
    marginal rates do not say. We assume independence within a pair: p10 = p_instruct·(1 − p_base)
    (instruct passes, base fails) and p01 = p_base·(1 − p_instruct). This is conservative when the
    correlation is non-negative, as it is in practice (items that are easy for one model tend to
    be easy for the other): positive correlation moves mass onto the diagonal, shrinks
    ψ = p10 + p01 for the same δ = p_instruct − p_base, and so raises power.

    Returns:
        The power at n, and the n for 80% and 90% power (None when the rates are equal).
    """
    p10, p01 = p_instruct * (1.0 - p_base), p_base * (1.0 - p_instruct)
    equal = p10 == p01
    return DesignPower(
        p_base=p_base,
        p_instruct=p_instruct,
        p10=p10,
        p01=p01,
        n=n,
        alpha=alpha,
        power=paired_power(p10, p01, n, alpha),
        n_for_80=None if equal else paired_sample_size(p10, p01, 0.8, alpha),
        n_for_90=None if equal else paired_sample_size(p10, p01, 0.9, alpha),
    )


# --------------------------------------------------------------------------------------------
# Agreement of a judge with reference labels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KappaResult:
    """Cohen's kappa with its asymptotic standard error and 95% interval (kappa ± 1.96·se)."""

    kappa: float
    se: float
    ci95_low: float
    ci95_high: float
    n: int


def cohens_kappa(table: Sequence[Sequence[int]] | np.ndarray) -> KappaResult:
    """Cohen's kappa for a square confusion table (rows: rater A, columns: rater B).

    kappa = (p_o − p_e) / (1 − p_e), with p_o the observed agreement (the diagonal share) and
    p_e the agreement expected from the marginals alone. Computed by statsmodels'
    ``cohens_kappa``. When both raters put every item in one category, p_e = 1 and kappa is
    undefined: the result is NaN, which callers must treat as "not calibrated".
    """
    arr = np.asarray(table, dtype=float)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"table must be square, got shape {arr.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        res = _sm_cohens_kappa(arr)
    return KappaResult(
        kappa=float(res.kappa),
        se=float(res.std_kappa),
        ci95_low=float(res.kappa_low),
        ci95_high=float(res.kappa_upp),
        n=int(arr.sum()),
    )


def kappa_from_labels(
    labels_a: Sequence[str], labels_b: Sequence[str], categories: Sequence[str] | None = None
) -> KappaResult:
    """Cohen's kappa from two raters' labels of the same items, in the same order.

    Args:
        labels_a: rater A's label per item.
        labels_b: rater B's label per item.
        categories: the label set, which fixes the table's order; default the sorted union.
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"label lists differ in length: {len(labels_a)} vs {len(labels_b)}")
    cats = list(categories) if categories is not None else sorted(set(labels_a) | set(labels_b))
    index = {c: i for i, c in enumerate(cats)}
    unknown = (set(labels_a) | set(labels_b)) - index.keys()
    if unknown:
        raise ValueError(f"labels not in categories: {sorted(unknown)}")
    table = np.zeros((len(cats), len(cats)), dtype=int)
    for x, y in zip(labels_a, labels_b, strict=True):
        table[index[x], index[y]] += 1
    return cohens_kappa(table)


# --------------------------------------------------------------------------------------------
# Percentile bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    alpha: float
    n_boot: int


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    n_boot: int = 2000,
    alpha: float = 0.05,
    *,
    rng: np.random.Generator,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (scipy.stats.bootstrap).

    Resample the values with replacement n_boot times; the interval is the alpha/2 and
    1 − alpha/2 quantiles of the resampled statistic.
    """
    data = np.asarray(values, dtype=float)
    res = sps.bootstrap(
        (data,),
        lambda x: statistic(x),
        n_resamples=n_boot,
        vectorized=False,
        confidence_level=1.0 - alpha,
        method="percentile",
        rng=rng,
    )
    ci = res.confidence_interval
    return BootstrapCI(float(statistic(data)), float(ci.low), float(ci.high), alpha, n_boot)


def paired_bootstrap_diff_ci(
    a: Sequence[bool],
    b: Sequence[bool],
    n_boot: int = 2000,
    alpha: float = 0.05,
    *,
    rng: np.random.Generator,
) -> BootstrapCI:
    """Percentile bootstrap interval for success(a) − success(b) over paired items.

    ``a[i]`` and ``b[i]`` are the two models' results on item i; items are resampled as pairs,
    which keeps the within-item correlation that makes the paired design efficient.
    """
    if len(a) != len(b):
        raise ValueError(f"paired sequences differ in length: {len(a)} vs {len(b)}")
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)

    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    res = sps.bootstrap(
        (xa, xb),
        diff,
        n_resamples=n_boot,
        vectorized=True,
        paired=True,
        confidence_level=1.0 - alpha,
        method="percentile",
        rng=rng,
    )
    ci = res.confidence_interval
    return BootstrapCI(float(diff(xa, xb)), float(ci.low), float(ci.high), alpha, n_boot)


# --------------------------------------------------------------------------------------------
# Clustered items: cluster-robust means, the intra-cluster correlation, cluster-aware paired tests
# --------------------------------------------------------------------------------------------
# Items built from one template (or one MT-Bench-101 task) share their structure and tend to pass
# or fail together. Treating them as independent makes intervals too narrow and p-values too small
# (Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640). statsmodels offers cluster-robust
# (sandwich) standard errors for regressions (``OLS(...).fit(cov_type="cluster")``) but no
# cluster-aware paired test for binary outcomes; the functions below are checked against the former.


def _cluster_codes(clusters: Sequence[str] | np.ndarray, n: int) -> tuple[np.ndarray, int]:
    if len(clusters) != n:
        raise ValueError(f"need one cluster per value: {len(clusters)} clusters for {n} values")
    arr = np.asarray(clusters)
    _, codes = np.unique(arr if arr.dtype.kind in "iu" else arr.astype(str), return_inverse=True)
    codes = codes.ravel()
    return codes, int(codes.max()) + 1 if n else 0


@functools.lru_cache(maxsize=256)
def _t_quantile(upper: float, df: int) -> float:
    return float(sps.t.isf(upper, df))


@dataclass(frozen=True)
class ClusterMean:
    """A mean with its cluster-robust (CR1) standard error and a t interval on G − 1 df."""

    estimate: float
    se: float
    low: float
    high: float
    n: int
    n_clusters: int
    se_iid: float  # the same mean's SE if the values were independent (s / √n)


def cluster_mean(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[str] | np.ndarray,
    alpha: float = 0.05,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> ClusterMean:
    """Mean of ``values`` with a cluster-robust interval.

    With residuals e_i = y_i − ȳ and cluster sums E_g = Σ_{i∈g} e_i, the CR1 variance is
    Var(ȳ) = G/(G − 1) · Σ_g E_g² / n², which equals statsmodels' ``OLS(y, 1).fit(cov_type="cluster")``
    (its small-sample factor G/(G−1)·(n−1)/(n−K) with K = 1). The interval is ȳ ± t_{G−1}·SE, clipped
    to ``bounds``: with 33 clusters the t quantile (2.04 at 95%) is the honest one, not 1.96.

    Args:
        values: one number per item (a 0/1 success, or a paired difference in {−1, 0, 1}).
        clusters: the cluster of each item.
        alpha: 1 − coverage.
        bounds: the range the mean lives in ((0, 1) for a rate, (−1, 1) for a difference).
    """
    y = np.asarray(values, dtype=float)
    n = y.size
    codes, g = _cluster_codes(clusters, n)
    if n == 0:
        return ClusterMean(math.nan, math.nan, bounds[0], bounds[1], 0, 0, math.nan)
    mean = float(y.mean())
    se_iid = float(y.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if g < 2:  # one cluster: its spread says nothing about other clusters
        return ClusterMean(mean, math.nan, bounds[0], bounds[1], n, g, se_iid)
    sums = np.bincount(codes, weights=y - mean, minlength=g)
    se = math.sqrt(g / (g - 1) * float(np.sum(sums**2))) / n
    half = _t_quantile(alpha / 2.0, g - 1) * se
    return ClusterMean(mean, se, max(bounds[0], mean - half), min(bounds[1], mean + half), n, g, se_iid)


@dataclass(frozen=True)
class ICCResult:
    """One-way ANOVA intra-cluster correlation and the design effect it implies."""

    icc: float  # may be slightly negative by chance; the design effect uses max(icc, 0)
    m0: float  # the ANOVA estimator's adjusted mean cluster size
    design_effect: float
    n: int
    n_clusters: int


def icc_anova(values: Sequence[float] | np.ndarray, clusters: Sequence[str] | np.ndarray) -> ICCResult:
    """The intra-cluster correlation of ``values`` (one-way ANOVA estimator) and the design effect.

    With G clusters of sizes m_g (n in all): MSB = Σ m_g (ȳ_g − ȳ)² / (G − 1),
    MSW = Σ_g Σ_i (y_gi − ȳ_g)² / (n − G), m0 = (n − Σ m_g² / n) / (G − 1), and
    ICC = (MSB − MSW) / (MSB + (m0 − 1)·MSW). The design effect 1 + (m0 − 1)·max(ICC, 0) is how many
    times more items a clustered design needs than an independent one for the same precision.
    Worked example: clusters {1, 1}, {0, 0}: ȳ = .5, MSB = (2·.25 + 2·.25)/1 = 1, MSW = 0, m0 = 2,
    ICC = 1, design effect 2 (each cluster is worth one item). When every value is equal the ICC is 0.
    """
    y = np.asarray(values, dtype=float)
    n = y.size
    codes, g = _cluster_codes(clusters, n)
    if g < 2 or n <= g:
        return ICCResult(0.0, 1.0, 1.0, n, g)
    sizes = np.bincount(codes, minlength=g).astype(float)
    means = np.bincount(codes, weights=y, minlength=g) / sizes
    msb = float(np.sum(sizes * (means - y.mean()) ** 2)) / (g - 1)
    msw = float(np.sum((y - means[codes]) ** 2)) / (n - g)
    m0 = (n - float(np.sum(sizes**2)) / n) / (g - 1)
    denom = msb + (m0 - 1.0) * msw
    icc = (msb - msw) / denom if denom > 0 else 0.0
    return ICCResult(icc, m0, 1.0 + (m0 - 1.0) * max(icc, 0.0), n, g)


@dataclass(frozen=True)
class ClusterTest:
    """A two-sided paired test of E[x − y] = 0 that treats clusters, not items, as the units."""

    statistic: float
    p_value: float
    n_clusters: int  # clusters with a non-zero difference (the only ones that carry evidence)
    method: str


def obuchowski_test(
    x: Sequence[bool] | np.ndarray, y: Sequence[bool] | np.ndarray, clusters: Sequence[str] | np.ndarray
) -> ClusterTest:
    """Obuchowski's (1998) cluster-adjusted McNemar test for paired proportions.

    With d_g = Σ_{i∈g}(x_i − y_i) and n_g items in cluster g (n in all, G clusters), d̄ = Σ d_g / n:
    X² = (Σ_g d_g)² / [G/(G − 1) · Σ_g (d_g − n_g·d̄)²], referred to χ²₁. It is the squared z of the
    mean difference with the CR1 cluster-robust SE (:func:`cluster_mean`), so it equals a Wald test
    from statsmodels' cluster-robust OLS of x − y on a constant. With one item per cluster it is close
    to (not equal to) the McNemar χ². Asymptotic in the number of clusters: report it, but gate on the
    permutation test below.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    d = xa - ya
    codes, g = _cluster_codes(clusters, d.size)
    if d.size == 0 or not np.any(d):
        return ClusterTest(0.0, 1.0, 0, "obuchowski")
    dg = np.bincount(codes, weights=d, minlength=g)
    ng = np.bincount(codes, minlength=g).astype(float)
    dbar = float(d.mean())
    var = g / (g - 1) * float(np.sum((dg - ng * dbar) ** 2)) if g > 1 else 0.0
    n_active = int(np.count_nonzero(dg))
    if var <= 0.0:  # every cluster moved the same way by the same per-item amount: no spread to test
        return ClusterTest(math.inf, 0.0 if g > 1 else 1.0, n_active, "obuchowski")
    stat = float(dg.sum()) ** 2 / var
    return ClusterTest(stat, math.erfc(math.sqrt(stat / 2.0)), n_active, "obuchowski")  # = chi2(1).sf(stat)


def _half_binomial_pmf(c: int) -> np.ndarray:
    """Binomial(c, 1/2) probabilities: C(c, j) / 2^c by exact integers (floats hold them up to c = 1000)."""
    if c > 1000:
        return np.asarray(sps.binom.pmf(np.arange(c + 1), c, 0.5))
    return np.array([math.comb(c, j) for j in range(c + 1)], dtype=float) / float(2**c)


def cluster_permutation_test(
    x: Sequence[bool] | np.ndarray, y: Sequence[bool] | np.ndarray, clusters: Sequence[str] | np.ndarray
) -> ClusterTest:
    """Exact paired permutation test that flips the two models' labels for a whole cluster at once.

    Under H0 (within every cluster, the two models' results are exchangeable) each cluster's
    difference d_g = Σ_{i∈g}(x_i − y_i) is as likely to be −d_g as d_g, whatever the correlation of
    items inside the cluster. The statistic is |Σ_g d_g|; the p-value is the share of the 2^G sign
    patterns s with |Σ_g s_g·d_g| >= |Σ_g d_g|. Clusters with d_g = 0 cannot change the sum and are
    dropped. The d_g are integers, so the null distribution of the sum is computed exactly by
    convolving, cluster by cluster, the two-point distributions {−|d_g|, +|d_g|} (G steps over at
    most 2n + 1 values): no sampling, no seed. With one item per cluster d_g = ±1, the sum is
    2·Binomial(m, 1/2) − m over the m discordant items, and the test IS the exact two-sided McNemar
    test (worked example: 1 vs 9 discordant gives P(|S| >= 8) = 22/1024).

    Args:
        x, y: the two models' results per item (pass = True).
        clusters: each item's cluster.
    """
    d = np.asarray(x, dtype=int) - np.asarray(y, dtype=int)
    codes, g = _cluster_codes(clusters, d.size)
    dg = np.bincount(codes, weights=d, minlength=g).round().astype(int) if d.size else np.zeros(0, dtype=int)
    dg = np.abs(dg[dg != 0])
    if dg.size == 0:
        return ClusterTest(0.0, 1.0, 0, "cluster sign-flip (exact)")
    observed = abs(int(d.sum()))
    # c clusters sharing |d_g| = v add v·(2·Binomial(c, 1/2) − c): one convolution per distinct v
    dist = np.ones(1)  # the distribution of the signed sum, indexed from its minimum
    for v, c in zip(*np.unique(dg, return_counts=True), strict=True):
        part = np.zeros(2 * int(c) * int(v) + 1)
        part[:: 2 * int(v)] = _half_binomial_pmf(int(c))
        dist = np.convolve(dist, part)
    total = int(dg.sum())
    sums = np.abs(np.arange(-total, total + 1))
    p = float(min(1.0, dist[sums >= observed].sum()))
    return ClusterTest(float(observed), p, int(dg.size), "cluster sign-flip (exact)")
