"""The gate: does the instruct model beat the base model clearly enough to justify post-training?

The gate reads two models' per-item verdicts on the same benchmark and returns PASS, FAIL or
NOT_ELIGIBLE. NOT_ELIGIBLE means the evidence itself cannot be trusted, and is decided before any
number is looked at:

- the instrument differs: a triage scorer, a judge that is uncalibrated or calibrated below
  ``min_kappa``, a different judge (provider, model, template hash) or calibration on the two sides,
  or score rows whose scorer/judge differ from their run's summary;
- the items differ: another benchmark file (sha256), split or limit, a run that does not hold exactly
  the benchmark's items, duplicated item ids, ids scored for one model only;
- too little evidence: fewer than ``min_paired`` paired items, or too many errors;
- errors could decide it: the gate passes on the observed pairs but not with every error item
  imputed against the claim (base errors as pass, instruct errors as fail).

Each pair is decided by one of two pre-registered rules (its ``kind``), and PASS needs every check of
that rule to hold, on the observed pairs AND in that worst case:

- ``gap`` (the seed's Phase-1 gate, base vs instruct): base rate <= ``base_max_success``, instruct rate
  >= ``instruct_min_success`` (point estimates; with ``rates="bound"`` their one-sided 95% bounds),
  the item-level exact McNemar p and the cluster-level sign-flip p both < ``mcnemar_alpha`` (so the
  gate uses the more conservative of the two), and Cohen's h >= ``min_cohens_h``;
- ``superiority`` (does treatment beat control?): both p-values < ``mcnemar_alpha`` and Cohen's h
  >= ``min_effect_h`` (0.2 by default), with no rate thresholds.

The evidence must also hold together: the items' cluster (template) assignment is hashed and
checked, and both arms must have decoded alike (``summary["decoding"]``). ``docs/statistics.md``
explains each choice with its arithmetic. Everything here is pure and exact: no sampling, no seed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from posttrain.analysis.stats import (
    cluster_mean,
    cluster_permutation_test,
    cohens_h,
    icc_anova,
    obuchowski_test,
    paired_sample_size,
)
from posttrain.judges.prompt import INSTRUMENT_KEYS, INSTRUMENT_ROW_FIELDS, RETIRED_FROM_GATING

Verdict = Literal["PASS", "FAIL", "NOT_ELIGIBLE"]
Op = Literal["<=", ">=", "<"]
GateKind = Literal["gap", "superiority"]
GATE_KINDS: tuple[str, ...] = ("gap", "superiority")
RATE_RULES: tuple[str, ...] = ("point", "bound")

# not_scored: scorer=verifiable left the item to a judge (not declared verifiable); it is outside the pairing
VALID_VERDICTS = frozenset({"pass", "fail", "error", "not_scored"})
HEURISTIC_REASON = "scorer=heuristic_triage is triage only and can never gate; rerun with scorer=llm"
MIN_PAIRED_FLOOR = 100  # never gate on fewer pairs, whatever the power arithmetic says (docs/statistics.md)
NO_CLUSTERS = "none: the benchmark has no templates, each item is its own cluster"
# Decoding fields that change nothing under greedy decoding (do_sample false on both sides)
_SAMPLING_ONLY = frozenset({"temperature", "top_p", "seed"})
_MAX_IDS_SHOWN = 5  # enough to find the defect in a log without flooding it


@dataclass(frozen=True)
class GateThresholds:
    """The numbers the gate compares against; see docs/statistics.md for their power.

    ``min_paired`` None means :func:`default_min_paired` of the other numbers (100 with the defaults).
    """

    base_max_success: float = 0.30
    instruct_min_success: float = 0.80
    mcnemar_alpha: float = 0.01
    min_cohens_h: float = 0.5
    min_kappa: float = 0.7
    max_error_rate: float = 0.05
    min_paired: int | None = None
    min_calibration_items: int = 30  # labelled items a calibration needs before its kappa counts
    min_effect_h: float = 0.2  # superiority's minimum Cohen's h (docs/statistics.md, "Two kinds of gate")
    rates: str = "point"  # gap: "point" estimates (the seed's rule) or one-sided 95% "bound"s against the thresholds

    @property
    def required_paired(self) -> int:
        """``min_paired``, or its default from the power analysis."""
        return int(self.min_paired) if self.min_paired is not None else default_min_paired(self)


def thresholds_from(gate: Any) -> GateThresholds:
    """GateThresholds from a config node or dict with the gate's keys (missing or null keys: defaults).

    The numbers are validated as a run validates them (``posttrain.config``), so a report cannot
    decide with thresholds a run would refuse.

    Raises:
        ValueError: naming each invalid setting (e.g. ``min_paired`` below 100).
    """
    get = gate.get if hasattr(gate, "get") else (lambda k, d=None: getattr(gate, k, d))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(GateThresholds):
        if (v := get(f.name, None)) is not None:
            values[f.name] = (int(v) if f.name in ("min_paired", "min_calibration_items")
                              else str(v) if f.name == "rates" else float(v))
    t = GateThresholds(**values)
    problems = [f"gate.{k}={getattr(t, k)!r} must lie in [0, 1]" for k in
                ("base_max_success", "instruct_min_success", "mcnemar_alpha", "min_kappa", "max_error_rate")
                if not 0.0 <= getattr(t, k) <= 1.0]
    problems += [f"gate.{k}={getattr(t, k)} must be >= 0" for k in ("min_cohens_h", "min_effect_h") if getattr(t, k) < 0]
    if t.min_paired is not None and t.min_paired < MIN_PAIRED_FLOOR:
        problems.append(f"gate.min_paired={t.min_paired} must be >= {MIN_PAIRED_FLOOR} (or null for the power-analysis "
                        "default; docs/statistics.md)")
    if t.min_calibration_items <= 0:
        problems.append(f"gate.min_calibration_items={t.min_calibration_items} must be a positive number")
    if t.rates not in RATE_RULES:
        problems.append(f"gate.rates={t.rates!r} is not valid; choose one of {list(RATE_RULES)}")
    if problems:
        raise ValueError("invalid gate thresholds (nothing was decided):\n  - " + "\n  - ".join(problems))
    return t


@functools.lru_cache(maxsize=64)
def default_min_paired(t: GateThresholds) -> int:
    """Pairs for 80% power to detect the smallest gap the gate accepts, never below 100.

    The smallest accepted gap starts at the base ceiling: base at ``base_max_success`` and instruct at
    the rate that is ``min_cohens_h`` above it on the arcsine scale, sin²(asin√p_b + h/2). With the
    defaults: base .30, instruct sin²(0.5796 + 0.25) = .5442; independence within an item gives
    p10 = .5442·.70 = .3809 and p01 = .30·.4558 = .1367; Connor's n at α = .01 and 80% power is
    (2.5758·√.5177 + 0.8416·√(.5177 − .2442²))² / .2442² = 98.5 -> 99, raised to the floor of 100.
    Fewer pairs cannot tell a gap the gate accepts from one it should refuse.
    """
    pb = t.base_max_success
    pi = min(1.0, math.sin(math.asin(math.sqrt(pb)) + t.min_cohens_h / 2.0) ** 2)
    p10, p01 = pi * (1.0 - pb), pb * (1.0 - pi)
    if p10 == p01:
        return MIN_PAIRED_FLOOR
    return max(MIN_PAIRED_FLOOR, paired_sample_size(p10, p01, 0.8, t.mcnemar_alpha))


@dataclass(frozen=True)
class ModelScores:
    """One model's scored run, as the gate needs it.

    Attributes:
        model: the model's name.
        verdicts: item id -> "pass" | "fail" | "error" (one per id; duplicates go to ``problems``).
        scorer: "llm" or "heuristic_triage".
        calibration_kappa: the LLM judge's Cohen's kappa against human labels; None if uncalibrated.
        clusters: item id -> cluster (template id; MT-Bench-101 task); None: each item its own cluster.
        instrument: the judge: provider, model, template_version, template_sha256 (None: not recorded).
        calibration_key: which calibration the kappa belongs to (None: not recorded).
        benchmark: ``summary.json``'s ``benchmark_info`` (name, split, limit, n, sha256, ...).
        expected_ids: the benchmark's ids for the declared split/limit (the run's items.jsonl).
        problems: defects of the run's records found while reading them (see :func:`scores_from_records`).
        cluster_source: "templates" (items.jsonl's map, checked against ``clusters_sha256``) or
            :data:`NO_CLUSTERS`; None when it could not be established (a problem says why).
        decoding: ``summary["decoding"]`` (do_sample, temperature, top_p, ...); None: not recorded.
        model_identity: ``summary["model_identity"]`` (name, path, revision, adapter, adapter_sha256).
        prompt_format: the prompt format the run used (may differ between arms: it is shown, not refused).
    """

    model: str
    verdicts: Mapping[str, str]
    scorer: str
    calibration_kappa: float | None = None
    clusters: Mapping[str, str] | None = None
    instrument: Mapping[str, Any] | None = None
    calibration_key: str | None = None
    benchmark: Mapping[str, Any] | None = None
    expected_ids: frozenset[str] | None = None
    problems: tuple[str, ...] = ()
    cluster_source: str | None = None
    decoding: Mapping[str, Any] | None = None
    model_identity: Mapping[str, Any] | None = None
    prompt_format: str | None = None


def _shown(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:_MAX_IDS_SHOWN]) + (", ..." if len(ids) > _MAX_IDS_SHOWN else "")


def item_ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 of the item ids in benchmark order, one per line (``benchmark_info.item_ids_sha256``)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def clusters_sha256(ids: Sequence[str], clusters: Sequence[str | None]) -> str:
    """SHA-256 of the cluster assignment in benchmark order, one ``id<TAB>cluster`` line per item
    (``benchmark_info.clusters_sha256``; an item without a cluster hashes as an empty cluster)."""
    return hashlib.sha256("\n".join(f"{i}\t{c or ''}" for i, c in zip(ids, clusters, strict=True)).encode()).hexdigest()


def cluster_info(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What an eval summary records of its items' clusters: the hash and whether the benchmark has templates.

    ``clusters``: "templates" when any item names a cluster, else :data:`NO_CLUSTERS` (said explicitly,
    so a map that went missing cannot pass for a benchmark without templates).
    """
    ids = [str(it["id"]) for it in items]
    named = [item_cluster(it) for it in items]
    return {"clusters": "templates" if any(named) else NO_CLUSTERS, "clusters_sha256": clusters_sha256(ids, named)}


def item_cluster(item: Mapping[str, Any]) -> str | None:
    """An item's cluster: its template (conversations) or its task (MT-Bench-101); None if neither."""
    meta = item.get("meta") or {}
    for key in ("template", "task"):
        if meta.get(key):
            return f"{key}:{meta[key]}"
    return None


def scores_from_records(model: str, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                        items: Sequence[Mapping[str, Any]] | None = None,
                        calibration_kappa: float | None = None) -> ModelScores:
    """Read one run's records (summary.json, scores.jsonl rows, items.jsonl) into :class:`ModelScores`.

    Record defects land in ``problems`` (each one makes a gate over this run NOT_ELIGIBLE): duplicated
    item ids (last row wins for the numbers shown), rows scored by another scorer than the summary
    says, and, for ``scorer=llm``, a summary without ``judge_instrument`` or rows whose judge
    (``judge``, ``judge_provider``, ``judge_model``, ``template_version``, ``template_sha256``) differs
    from it. Old records without these fields count as not eligible, never as matching.

    Args:
        model: the model's name.
        summary: the run's summary.json.
        rows: its score rows.
        items: its items.jsonl rows (ids and clusters); None when the run did not keep them.
        calibration_kappa: kappa looked up now; default the summary's ``calibration.kappa`` when it applies.
    """
    problems: list[str] = []
    counts = Counter(str(r["item_id"]) for r in rows)
    dups = sorted(i for i, c in counts.items() if c > 1)
    if dups:
        problems.append(f"scores.jsonl repeats {len(dups)} item id(s) (a corrupted run; rescore it into a "
                        f"fresh folder): {_shown(dups)}")
    scorer = str(summary.get("scorer") or "unknown")
    other = [str(r["item_id"]) for r in rows if r.get("scorer") != scorer]
    if other:
        seen = sorted({str(r.get("scorer")) for r in rows if r.get("scorer") != scorer})
        problems.append(f"{len(other)} of {len(rows)} score rows were scored by {', '.join(seen)}, not "
                        f"scorer={scorer} as summary.json says: {_shown(other)}")
    instrument = summary.get("judge_instrument") if scorer == "llm" else None
    if scorer == "llm":
        if not isinstance(instrument, Mapping) or any(not instrument.get(k) for k in INSTRUMENT_KEYS):
            problems.append("summary.json records no complete judge_instrument (provider, model, template_version, "
                            "template_sha256): the judge cannot be matched; rescore with the current posttrain")
            instrument = None
        else:
            expected = {INSTRUMENT_ROW_FIELDS[k]: instrument[k] for k in INSTRUMENT_KEYS}
            if summary.get("judge"):
                expected["judge"] = summary["judge"]
            off = [str(r["item_id"]) for r in rows if any(r.get(k) != v for k, v in expected.items())]
            if off:
                problems.append(f"{len(off)} of {len(rows)} score rows name another judge than summary.json's "
                                f"({', '.join(f'{k}={v}' for k, v in expected.items())}): {_shown(off)}")
    if scorer == "verifiable":  # the exact scorer's identity: version + sha256 of its check definitions
        instrument = summary.get("scorer_instrument")
        if not isinstance(instrument, Mapping) or not instrument.get("version") or not instrument.get("checks_sha256"):
            problems.append("summary.json records no scorer_instrument (version, checks_sha256) for scorer=verifiable; "
                            "rescore with the current posttrain")
            instrument = None
        else:
            off = [str(r["item_id"]) for r in rows if r.get("checks_sha256") != instrument["checks_sha256"]]
            if off:
                problems.append(f"{len(off)} of {len(rows)} score rows were decided by other check definitions than "
                                f"summary.json's (checks_sha256 {instrument['checks_sha256'][:12]}): {_shown(off)}")
    raw_cal = summary.get("calibration")
    cal: Mapping[str, Any] = raw_cal if isinstance(raw_cal, Mapping) else {}
    kappa = calibration_kappa
    if kappa is None and cal.get("applies") and cal.get("kappa") is not None:
        kappa = float(cal["kappa"])
    clusters, expected_ids, source = _clusters_from_items(summary, items, problems)
    decoding = summary.get("decoding")
    identity = summary.get("model_identity")
    return ModelScores(model=model, verdicts={str(r["item_id"]): str(r["verdict"]) for r in rows}, scorer=scorer,
                       calibration_kappa=kappa, clusters=clusters,
                       instrument=dict(instrument) if instrument else None,
                       calibration_key=cal.get("key"), benchmark=summary.get("benchmark_info"),
                       expected_ids=expected_ids, problems=tuple(problems), cluster_source=source,
                       decoding=dict(decoding) if isinstance(decoding, Mapping) else None,
                       model_identity=dict(identity) if isinstance(identity, Mapping) else None,
                       prompt_format=summary.get("prompt_format"))


def _clusters_from_items(summary: Mapping[str, Any], items: Sequence[Mapping[str, Any]] | None, problems: list[str],
                         ) -> tuple[dict[str, str] | None, frozenset[str] | None, str | None]:
    """The run's cluster map from items.jsonl, checked against what summary.json recorded.

    Clusters are evidence: the cluster-level test is what keeps templated items from counting as
    independent, so a run that lost or changed its map cannot gate. Returns (clusters, expected ids,
    cluster source); defects are appended to ``problems``.
    """
    bench = summary.get("benchmark_info") or {}
    if items is None:
        problems.append("no items.jsonl: the run's items and their clusters (templates) cannot be checked, so "
                        "the cluster-level test cannot be trusted; rerun the eval (it writes items.jsonl)")
        return None, None, None
    ids = [str(it["id"]) for it in items]
    recorded = bench.get("item_ids_sha256")
    if recorded and recorded != item_ids_sha256(ids):
        problems.append("items.jsonl does not hold the items summary.json recorded (item_ids_sha256 differs)")
    named = {str(it["id"]): item_cluster(it) for it in items}
    without = sorted(i for i, c in named.items() if not c)
    declared = bench.get("clusters")
    templated = bool(len(without) < len(named)) or declared == "templates"
    if bench.get("clusters_sha256") is None:
        problems.append("summary.json records no clusters_sha256 (the items' template assignment), so the "
                        "cluster map cannot be checked; rerun the eval with the current posttrain")
    elif bench["clusters_sha256"] != clusters_sha256(ids, [named[i] for i in ids]):
        problems.append("items.jsonl's cluster (template) assignment differs from the one summary.json recorded "
                        "(clusters_sha256): the templates were rewritten after the run; rerun the eval")
    if templated and without:
        problems.append(f"{len(without)} of {len(named)} item(s) of a templated benchmark have no cluster "
                        f"(meta.template / meta.task) in items.jsonl: {_shown(without)}")
        return None, frozenset(ids), None
    if not templated:
        return {i: i for i in ids}, frozenset(ids), NO_CLUSTERS
    return {i: str(c) for i, c in named.items()}, frozenset(ids), "templates"


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


def _check(name: str, value: float, threshold: float, op: Op) -> GateCheck:
    passed = {"<=": value <= threshold, ">=": value >= threshold, "<": value < threshold}[op]
    return GateCheck(name=name, value=value, threshold=threshold, op=op, passed=passed)


@dataclass(frozen=True)
class PairedAnalysis:
    """The numbers behind the checks, on one set of paired items (observed, or worst case)."""

    n_paired: int
    n_clusters: int
    base_success: float | None
    instruct_success: float | None
    instruct_only: int
    base_only: int
    mcnemar_p: float | None  # item level, exact
    cluster_p: float | None  # cluster sign-flip permutation test
    cluster_method: str | None
    obuchowski_p: float | None  # cluster-adjusted McNemar (asymptotic), reported only
    gate_p: float | None  # max(mcnemar_p, cluster_p): the one the gate uses
    cohens_h: float | None
    base_ci95: list[float] | None  # cluster-robust (CR1, t on G − 1 df)
    instruct_ci95: list[float] | None
    base_upper95: float | None  # one-sided 95% upper bound of the base (control) rate, cluster-robust
    instruct_lower95: float | None  # one-sided 95% lower bound of the instruct (treatment) rate
    diff: float | None  # instruct − base
    diff_ci95: list[float] | None
    diff_ci95_iid: list[float] | None  # the same interval if items were independent
    icc: float | None  # of the paired difference
    design_effect: float | None
    checks: list[GateCheck]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def gate_checks(kind: str, t: GateThresholds, *, base: float, instruct: float, base_upper95: float,
                instruct_lower95: float, item_p: float, cluster_p: float, h: float) -> list[GateCheck]:
    """The checks of one gate kind (``gap`` or ``superiority``) on one analysis's numbers."""
    tests = [_check("mcnemar_p", item_p, t.mcnemar_alpha, "<"), _check("cluster_p", cluster_p, t.mcnemar_alpha, "<")]
    if kind == "superiority":
        return [*tests, _check("cohens_h", h, t.min_effect_h, ">=")]
    if kind != "gap":
        raise ValueError(f"gate kind {kind!r} is not one of {', '.join(GATE_KINDS)}")
    if t.rates == "bound":  # the rates held with 95% confidence, not only on average
        rates = [_check("base_success_upper95", base_upper95, t.base_max_success, "<="),
                 _check("instruct_success_lower95", instruct_lower95, t.instruct_min_success, ">=")]
    else:
        rates = [_check("base_success_rate", base, t.base_max_success, "<="),
                 _check("instruct_success_rate", instruct, t.instruct_min_success, ">=")]
    return [*rates, *tests, _check("cohens_h", h, t.min_cohens_h, ">=")]


def gate_rule(kind: str, t: GateThresholds) -> str:
    """One sentence: the rule that decides a pair of this kind, with its numbers."""
    tests = (f"item-level exact McNemar p and cluster-level sign-flip p both < {t.mcnemar_alpha:g}, on the observed "
             "pairs and with every error item against the claim")
    if kind == "superiority":
        return f"superiority: treatment beats control with {tests}, and Cohen's h >= {t.min_effect_h:g}"
    rates = "one-sided 95% bounds" if t.rates == "bound" else "point estimates"
    return (f"gap (the seed's Phase-1 gate): control (base) rate <= {t.base_max_success:g} and treatment (instruct) "
            f"rate >= {t.instruct_min_success:g} ({rates}), {tests}, and Cohen's h >= {t.min_cohens_h:g}")


def analyse_pairs(instruct: Sequence[bool], base: Sequence[bool], clusters: Sequence[str],
                  t: GateThresholds, kind: str = "gap") -> PairedAnalysis:
    """Item-level and cluster-level statistics and the checks of gate ``kind`` for aligned paired results."""
    n = len(instruct)
    if n == 0:
        return PairedAnalysis(0, 0, None, None, 0, 0, None, None, None, None, None, None, None, None, None, None,
                              None, None, None, None, None, [])
    x, y = np.asarray(instruct, dtype=bool), np.asarray(base, dtype=bool)
    codes = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)[1].ravel()  # integer codes, once
    a_only, b_only = int(np.sum(x & ~y)), int(np.sum(y & ~x))
    p_i, p_b = float(x.mean()), float(y.mean())
    # The exact McNemar p: the sign-flip test with one item per cluster is that test, computed the same
    # way (tests/test_stats.py checks it against scipy's binomtest), and fast enough to simulate the gate.
    item_p = cluster_permutation_test(x, y, np.arange(n)).p_value
    perm = cluster_permutation_test(x, y, codes)
    obu = obuchowski_test(x, y, codes)
    d = x.astype(float) - y.astype(float)
    ci_i, ci_b = cluster_mean(x, codes, bounds=(0.0, 1.0)), cluster_mean(y, codes, bounds=(0.0, 1.0))
    # One-sided 95% bounds are the ends of the two-sided 90% interval (same cluster-robust t interval)
    lo_i, hi_b = cluster_mean(x, codes, alpha=0.10, bounds=(0.0, 1.0)).low, cluster_mean(y, codes, alpha=0.10,
                                                                                          bounds=(0.0, 1.0)).high
    ci_d = cluster_mean(d, codes)
    z = 1.959963984540054
    iid = [max(-1.0, ci_d.estimate - z * ci_d.se_iid), min(1.0, ci_d.estimate + z * ci_d.se_iid)]
    icc = icc_anova(d, codes)
    gate_p = max(item_p, perm.p_value)
    h = cohens_h(p_i, p_b)
    checks = gate_checks(kind, t, base=p_b, instruct=p_i, base_upper95=hi_b, instruct_lower95=lo_i, item_p=item_p,
                         cluster_p=perm.p_value, h=h)
    return PairedAnalysis(
        n_paired=n, n_clusters=int(codes.max()) + 1, base_success=p_b, instruct_success=p_i, instruct_only=a_only,
        base_only=b_only, mcnemar_p=item_p, cluster_p=perm.p_value, cluster_method=perm.method,
        obuchowski_p=obu.p_value, gate_p=gate_p, cohens_h=h, base_ci95=[ci_b.low, ci_b.high],
        instruct_ci95=[ci_i.low, ci_i.high], base_upper95=hi_b, instruct_lower95=lo_i, diff=ci_d.estimate, diff_ci95=[ci_d.low, ci_d.high],
        diff_ci95_iid=iid, icc=icc.icc, design_effect=icc.design_effect, checks=checks)


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision, why, and the numbers it rests on (observed, and with errors imputed)."""

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
    min_paired: int = MIN_PAIRED_FLOOR
    clusters_recorded: bool = False
    observed: PairedAnalysis | None = None
    worst_case: PairedAnalysis | None = None
    n_error_items: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "gap"
    rule: str = ""
    cluster_source: str | None = None
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain str, float, int, bool, None, list, dict)."""
        return asdict(self)


def _error_rate(scores: ModelScores) -> float:
    n = sum(v != "not_scored" for v in scores.verdicts.values())  # of the items the scorer decides
    return sum(v == "error" for v in scores.verdicts.values()) / n if n else 0.0


def _run_reasons(role: str, s: ModelScores, t: GateThresholds) -> list[str]:
    """Why one model's run cannot gate (the heuristic-scorer reason is added by the caller)."""
    who = f"{role} ({s.model})"
    reasons = [f"{who}: {p}" for p in s.problems]
    if s.scorer == "llm":
        kappa = s.calibration_kappa
        if kappa is None or not math.isfinite(kappa):
            reasons.append(f"{who}: LLM judge is uncalibrated (no finite calibration kappa); calibrate it first")
        elif kappa < t.min_kappa:
            reasons.append(f"{who}: judge calibration kappa {kappa:.3f} < min_kappa {t.min_kappa:.3f}")
        if s.instrument is None and not s.problems:
            reasons.append(f"{who}: no judge identity (provider, model, template hash) recorded; rescore the run")
        if s.instrument and (retired := RETIRED_FROM_GATING.get(str(s.instrument.get("template_version")))):
            reasons.append(f"{who}: {retired}")
    elif s.scorer == "verifiable":  # exact checks of the instruction's definition: no calibration (docs/judging.md)
        if s.instrument is None and not s.problems:
            reasons.append(f"{who}: no scorer_instrument (version, checks_sha256) recorded; rescore the run")
        if not any(v != "not_scored" for v in s.verdicts.values()):
            reasons.append(f"{who}: scorer=verifiable decided no item (all not_scored)")
    elif s.scorer != "heuristic_triage":
        reasons.append(f"{who}: unknown scorer={s.scorer!r}; only scorer=llm or scorer=verifiable can gate")
    n_err = sum(v == "error" for v in s.verdicts.values())
    if (rate := _error_rate(s)) > t.max_error_rate:
        reasons.append(f"{who}: error rate {rate:.3f} ({n_err}/{len(s.verdicts)}) > max_error_rate "
                       f"{t.max_error_rate:.3f}")
    bench = s.benchmark or {}
    if not bench.get("sha256") or bench.get("n") is None:
        reasons.append(f"{who}: summary.json records no benchmark sha256/n; the items it holds cannot be checked")
    elif len(s.verdicts) != int(bench["n"]):
        reasons.append(f"{who}: holds {len(s.verdicts)} item(s) but the benchmark ({bench.get('name')}, split="
                       f"{bench.get('split')}, limit={bench.get('limit')}) has {bench['n']}; rerun the missing items")
    if s.expected_ids is not None:
        missing, extra = s.expected_ids - s.verdicts.keys(), s.verdicts.keys() - s.expected_ids
        if missing:
            reasons.append(f"{who}: {len(missing)} of the benchmark's items were never scored: {_shown(missing)}")
        if extra:
            reasons.append(f"{who}: {len(extra)} scored id(s) are not the benchmark's items: {_shown(extra)}")
    return reasons


def decoding_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                         formats: tuple[str | None, str | None] | None = None) -> list[str]:
    """The decoding fields two runs differ in, as ``field a vs b`` (empty when they decoded alike).

    Under greedy decoding on both sides the sampling-only fields (temperature, top_p, seed) change
    nothing, so they are not compared then. Stop strings follow the prompt format (a format's own
    turn markers; none under a chat template, whose end-of-turn token stops the model), so when
    ``formats`` names two different prompt formats, the arms of a format comparison, they are not
    compared either: the format is the arm, and the pair table shows it.
    """
    a, b = a or {}, b or {}
    greedy = not a.get("do_sample") and not b.get("do_sample")
    skip = set(_SAMPLING_ONLY) if greedy else set()
    if formats is not None and formats[0] != formats[1]:
        skip.add("stop_strings")
    return [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in skip]


def _arm(s: ModelScores) -> dict[str, Any]:
    """What the report shows of one arm: model identity, prompt format, decoding."""
    return {"model": s.model, "model_identity": dict(s.model_identity) if s.model_identity else None,
            "prompt_format": s.prompt_format, "decoding": dict(s.decoding) if s.decoding else None,
            "cluster_source": s.cluster_source}


def _pair_reasons(base: ModelScores, instruct: ModelScores) -> list[str]:
    """Why the two runs are not measured with the same instrument on the same items and settings."""
    reasons: list[str] = []
    missing = [f"{role} ({s.model})" for role, s in (("base", base), ("instruct", instruct)) if s.decoding is None]
    if missing:
        reasons.append(f"{' and '.join(missing)}: summary.json records no decoding settings (summary['decoding']), "
                       "so it cannot be shown that both arms decoded alike; rerun the eval with the current posttrain")
    elif diff := decoding_differences(base.decoding, instruct.decoding, (base.prompt_format, instruct.prompt_format)):
        reasons.append(f"different decoding: base ({base.model}) vs instruct ({instruct.model}) differ in "
                       f"{'; '.join(diff)}; the gap would mix the models with their decoding. Evaluate both arms with "
                       "the same generation settings")
    if base.clusters is not None and instruct.clusters is not None:
        if base.cluster_source != instruct.cluster_source:
            reasons.append(f"different cluster maps: base ({base.model}) clusters are {base.cluster_source!r}, "
                           f"instruct ({instruct.model}) clusters are {instruct.cluster_source!r}")
        else:
            off = sorted(i for i in base.clusters.keys() & instruct.clusters.keys()
                         if base.clusters[i] != instruct.clusters[i])
            if off:
                reasons.append(f"different cluster maps: {len(off)} item(s) sit in another cluster for base "
                               f"({base.model}) than for instruct ({instruct.model}): "
                               + ", ".join(f"{i} {base.clusters[i]!r} vs {instruct.clusters[i]!r}"
                                           for i in off[:_MAX_IDS_SHOWN]) + (", ..." if len(off) > _MAX_IDS_SHOWN else ""))
    if base.scorer == instruct.scorer == "llm" and base.instrument and instruct.instrument:
        diff = [f"{k} {base.instrument.get(k)!r} vs {instruct.instrument.get(k)!r}" for k in INSTRUMENT_KEYS
                if base.instrument.get(k) != instruct.instrument.get(k)]
        if diff:
            reasons.append(f"different judges: base ({base.model}) vs instruct ({instruct.model}) differ in "
                           f"{'; '.join(diff)}; the gap would mix the models with the judges' leniency. Rescore "
                           "both with one judge")
    if base.scorer != instruct.scorer:
        reasons.append(f"different scorers: base ({base.model}) scorer={base.scorer} vs instruct ({instruct.model}) "
                       f"scorer={instruct.scorer}; score both arms with one instrument")
    elif base.scorer == "verifiable" and base.instrument and instruct.instrument and base.instrument != instruct.instrument:
        reasons.append(f"different check definitions: base ({base.model}) {dict(base.instrument)} vs instruct "
                       f"({instruct.model}) {dict(instruct.instrument)}; rescore both with one posttrain version")
    skipped = {i for s in (base, instruct) for i, v in s.verdicts.items() if v == "not_scored"}
    one_sided = sorted(i for i in skipped if base.verdicts.get(i) != instruct.verdicts.get(i))
    if one_sided:
        reasons.append(f"{len(one_sided)} item(s) not_scored in one arm only (different benchmark declarations?): "
                       f"{_shown(one_sided)}")
    if base.scorer == instruct.scorer == "llm" and base.calibration_key != instruct.calibration_key:
        reasons.append(f"different calibrations: base ({base.model}) key {base.calibration_key!r} vs instruct "
                       f"({instruct.model}) key {instruct.calibration_key!r}")
    bb, bi = base.benchmark or {}, instruct.benchmark or {}
    for key in ("sha256", "name", "split", "limit", "n", "item_ids_sha256", "clusters_sha256"):
        if key in bb and key in bi and bb[key] != bi[key]:
            reasons.append(f"different benchmarks: {key} {bb[key]!r} (base {base.model}) vs {bi[key]!r} "
                           f"(instruct {instruct.model}); evaluate both on the same items")
    for only, here, there in ((base.verdicts.keys() - instruct.verdicts.keys(), "base", "instruct"),
                              (instruct.verdicts.keys() - base.verdicts.keys(), "instruct", "base")):
        if only:
            reasons.append(f"unpaired items: {len(only)} id(s) scored for {here} but not for {there}: {_shown(only)}")
    return reasons


def evaluate_gate(base: ModelScores, instruct: ModelScores, thresholds: GateThresholds | None = None,
                  kind: str = "gap") -> GateVerdict:
    """Decide PASS / FAIL / NOT_ELIGIBLE for a control (base) vs treatment (instruct) pair under rule ``kind``.

    Pairing: the observed analysis uses the ids both runs scored where neither verdict is "error".
    The worst case puts the error items back, base errors as pass and instruct errors as fail.
    Items are clustered by ``clusters`` (both runs' maps are merged; a missing map makes each item its
    own cluster, which the record says under ``clusters_recorded``).

    The numbers are computed whenever there are paired items, even when NOT_ELIGIBLE, so a report can
    show them; the verdict is PASS only when eligible and every check passes in both analyses.

    Raises:
        ValueError: on a verdict other than "pass", "fail" or "error", or an unknown ``kind``.
    """
    t = thresholds if thresholds is not None else GateThresholds()
    if kind not in GATE_KINDS:
        raise ValueError(f"gate kind {kind!r} is not one of {', '.join(GATE_KINDS)}")
    for s in (base, instruct):
        bad = {v for v in s.verdicts.values() if v not in VALID_VERDICTS}
        if bad:
            raise ValueError(f"{s.model}: verdicts must be pass/fail/error/not_scored, got {sorted(bad)}")

    reasons: list[str] = []
    if "heuristic_triage" in (base.scorer, instruct.scorer):
        reasons.append(HEURISTIC_REASON)
    reasons += _run_reasons("base", base, t) + _run_reasons("instruct", instruct, t)
    reasons += _pair_reasons(base, instruct)

    vb, vi = base.verdicts, instruct.verdicts
    # Items a verifiable run left to a judge are outside the pairing, in the observed and the worst case alike.
    not_scored = sorted(i for i in vb.keys() & vi.keys() if "not_scored" in (vb[i], vi[i]))
    shared = sorted(i for i in vb.keys() & vi.keys() if "not_scored" not in (vb[i], vi[i]))
    usable = [i for i in shared if vb[i] != "error" and vi[i] != "error"]
    errored = [i for i in shared if vb[i] == "error" or vi[i] == "error"]
    known = {**(base.clusters or {}), **(instruct.clusters or {})}
    recorded = bool(known) and all(i in known for i in shared)
    cluster = (lambda i: known[i]) if recorded else (lambda i: i)  # noqa: E731

    def analyse(ids: list[str], worst: bool) -> PairedAnalysis:
        ins = [vi[i] == "pass" if vi[i] != "error" else False for i in ids]
        bas = [vb[i] == "pass" if vb[i] != "error" else worst for i in ids]
        return analyse_pairs(ins, bas, [cluster(i) for i in ids], t, kind)

    observed = analyse(usable, worst=False)
    worst = analyse(shared, worst=True) if errored else observed
    min_paired = t.required_paired
    if observed.n_paired == 0:
        reasons.append("no paired items: nothing was scored (without error) for both models")
    elif observed.n_paired < min_paired:
        reasons.append(f"too little evidence: {observed.n_paired} paired items < gate.min_paired {min_paired} "
                       "(docs/statistics.md); evaluate more items")

    if reasons:
        verdict: Verdict = "NOT_ELIGIBLE"
    elif observed.passed and worst.passed:
        verdict = "PASS"
        reasons = [c.describe() for c in observed.checks]
    elif observed.passed:
        verdict = "NOT_ELIGIBLE"
        failing = [c.describe() for c in worst.checks if not c.passed]
        reasons = [f"{len(errored)} error items could change the decision: rerun to resolve them (with base errors "
                   f"as pass and instruct errors as fail: {'; '.join(failing)})"]
    else:
        verdict = "FAIL"
        reasons = [c.describe() for c in observed.checks if not c.passed]

    return GateVerdict(
        verdict=verdict, reasons=reasons, checks=observed.checks, base_model=base.model,
        instruct_model=instruct.model, n_paired=observed.n_paired, base_success=observed.base_success,
        instruct_success=observed.instruct_success, instruct_only=observed.instruct_only,
        base_only=observed.base_only, mcnemar_p=observed.mcnemar_p, cohens_h=observed.cohens_h,
        base_error_rate=_error_rate(base), instruct_error_rate=_error_rate(instruct), thresholds=t,
        min_paired=min_paired, clusters_recorded=recorded, observed=observed, worst_case=worst,
        n_error_items=len(errored),
        dropped={"error": errored, "unpaired": sorted(vb.keys() ^ vi.keys()), "not_scored": not_scored},
        kind=kind, rule=gate_rule(kind, t),
        cluster_source=base.cluster_source if base.cluster_source == instruct.cluster_source else None,
        arms={"control": _arm(base), "treatment": _arm(instruct)},
    )
