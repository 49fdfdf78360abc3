"""The gate cannot be fooled: the eight cases of issue 12, each built from run records, none PASSes.

Each case starts from one clean design that PASSes (so the one change a case makes is what blocks
it) and goes through the same path as ``posttrain-report``: records -> ``build_comparison`` ->
the gate on the pre-registered primary pair. Then a clustered null simulation shows why the gate
uses the cluster-level test: an item-level analysis of the same data passes far more often than
alpha, the cluster-aware one does not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from posttrain.analysis.comparison import JobRecords, build_comparison
from posttrain.analysis.gates import GateThresholds, cluster_info, item_ids_sha256
from posttrain.analysis.registration import registration_record, registration_sha256
from posttrain.analysis.stats import cluster_permutation_test

INSTRUMENT = {"provider": "anthropic", "model": "claude-judge-1", "template_version": "conv-judge-v2",
              "template_sha256": "ab" * 32}
SHA = "cd" * 32
N = 200


def _ids(n: int = N) -> list[str]:
    return [f"conv-{k:03d}" for k in range(n)]


def _template(k: int, n_templates: int = 33) -> str:
    return f"tpl_{min(k * n_templates // N, n_templates - 1):02d}"  # 33 templates of 6-7 items, like the benchmark


def _job(num: int, model: str, kind: str, verdicts: dict[str, str], *, clusters: dict[str, str] | None = None,
         instrument: dict[str, str] | None = None, sha: str = SHA, n: int | None = None,
         bench_ids: list[str] | None = None, calibration_key: str = "human-v1:claude-judge-1:ab",
         row_edit: dict[str, dict[str, Any]] | None = None, extra_rows: list[dict[str, Any]] | None = None) -> JobRecords:
    """A finished eval job's records: summary.json, scores.jsonl rows and items.jsonl, as 11b writes them."""
    inst = instrument or INSTRUMENT
    ids = bench_ids if bench_ids is not None else list(verdicts)
    clusters = clusters or {i: _template(k) for k, i in enumerate(ids)}
    rows = [{"item_id": i, "category": "memory", "verdict": v, "scorer": "llm", "judge": "claude",
             "judge_provider": inst["provider"], "judge_model": inst["model"],
             "template_version": inst["template_version"], "template_sha256": inst["template_sha256"]}
            | (row_edit or {}).get(i, {}) for i, v in verdicts.items()] + (extra_rows or [])
    items = [{"id": i, "category": "memory", "meta": {"template": clusters[i]}} for i in ids]
    summary = {"model": model, "model_kind": kind, "scorer": "llm", "judge": "claude", "judge_instrument": inst,
               "calibration": {"key": calibration_key, "kappa": 0.85, "n": 30, "applies": True, "reason": None},
               "benchmark_info": {"name": "conversations", "split": "main", "limit": None,
                                  "n": n if n is not None else len(ids), "sha256": sha,
                                  "item_ids_sha256": item_ids_sha256(ids), **cluster_info(items)},
               "decoding": dict(GREEDY), "prompt_format": "chat_template" if kind == "instruct" else "raw"}
    return JobRecords(f"{num}_{model}", summary, rows, None, items)


def _calibrated(judge: str, template: str, min_kappa: float, **_: Any) -> tuple[bool, str, float | None]:
    return True, "kappa 0.85 >= 0.70 on 30 items", 0.85


PRIMARY = [{"treatment": "instruct", "control": "base"}]
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 256, "stop_strings": [],
          "seed": None, "backend": "hf"}


def _register(jobs: tuple[JobRecords, ...], primary: list[dict[str, str]], t: GateThresholds) -> dict[str, Any]:
    """The sweep's sealed registration, and each job's summary stamped with its sha256 (as eval does)
    unless a test already set another one."""
    record = registration_record(primary, t, registered_at="2026-01-31T12:00:00+00:00")
    for j in jobs:
        j.summary.setdefault("registration_sha256", registration_sha256(record))
    return record


def _gate(*jobs: JobRecords, primary: list[dict[str, str]] | None = None, **t: Any) -> dict[str, Any]:
    thresholds = GateThresholds(**t)
    record = _register(jobs, PRIMARY if primary is None else primary, thresholds)
    comp = build_comparison(list(jobs), calibration=_calibrated, registration=record)
    return comp["gate"] | {"_comparison": comp}


def _clean() -> tuple[dict[str, str], dict[str, str]]:
    """Base 50/200 = .25 (every 4th item), instruct 170/200 = .85: a clear, evenly spread gap."""
    ids = _ids()
    base = {i: "pass" if k % 4 == 0 else "fail" for k, i in enumerate(ids)}
    instruct = {i: "fail" if k % 20 in (1, 2, 3) else "pass" for k, i in enumerate(ids)}
    return base, instruct


def test_the_clean_design_passes() -> None:
    """The reference every case departs from: base .25 vs instruct .85 on 200 items in 33 templates.

    Every item base passes (k % 4 == 0) instruct passes too, so base_only = 0 and instruct_only =
    170 − 50 = 120; each template holds 3-4 of those: all 33 cluster differences are positive and the
    exact sign-flip p is 2 / 2^33 = 2.3e-10.
    """
    g = _gate(_job(0, "base", "base", _clean()[0]), _job(1, "instruct", "instruct", _clean()[1]))
    assert g["verdict"] == "PASS", g["reasons"]
    obs = g["observed"]
    assert (obs["instruct_only"], obs["base_only"], obs["n_clusters"]) == (120, 0, 33)
    assert obs["cluster_p"] == pytest.approx(2 / 2**33)
    assert g["clusters_recorded"] is True and g["primary_source"] == "pre-registered"


def test_case1_different_judges() -> None:
    """Base judged by one judge model, instruct by another: the gap mixes models and judges."""
    base, instruct = _clean()
    other = INSTRUMENT | {"model": "gpt-judge-2", "provider": "openai"}
    g = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct, instrument=other))
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any("different judges" in r and "provider 'anthropic' vs 'openai'" in r
               and "model 'claude-judge-1' vs 'gpt-judge-2'" in r for r in g["reasons"]), g["reasons"]
    # another template hash alone is enough, and so is another calibration
    g2 = _gate(_job(0, "base", "base", base),
               _job(1, "instruct", "instruct", instruct, instrument=INSTRUMENT | {"template_sha256": "ef" * 32}))
    assert g2["verdict"] == "NOT_ELIGIBLE" and any("template_sha256" in r for r in g2["reasons"])
    g3 = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct, calibration_key="human-v2"))
    assert g3["verdict"] == "NOT_ELIGIBLE" and any("different calibrations" in r and "'human-v2'" in r
                                                   for r in g3["reasons"])


def test_case1_old_records_without_judge_identity_are_not_eligible() -> None:
    base, instruct = _clean()
    old = _job(1, "instruct", "instruct", instruct)
    old.summary.pop("judge_instrument")
    g = _gate(_job(0, "base", "base", base), old)
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any("no complete judge_instrument" in r for r in g["reasons"])


def test_case2_different_benchmark_versions() -> None:
    base, instruct = _clean()
    g = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct, sha="99" * 32))
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any(r.startswith(f"different benchmarks: sha256 '{SHA}' (base base) vs '{'99' * 32}'") for r in g["reasons"])


def test_case3_eight_items_are_too_little_evidence() -> None:
    """Base 0/8, instruct 8/8: exact McNemar p = 2/2^8 = 0.0078 < .01, but 8 < min_paired = 100."""
    ids = _ids(8)
    g = _gate(_job(0, "base", "base", dict.fromkeys(ids, "fail")),
              _job(1, "instruct", "instruct", dict.fromkeys(ids, "pass")))
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert g["mcnemar_p"] == pytest.approx(2 / 2**8)
    assert g["reasons"] == ["too little evidence: 8 paired items < gate.min_paired 100 (docs/statistics.md); "
                            "evaluate more items"]


def test_case3_runs_holding_half_of_the_benchmark() -> None:
    """Both runs hold the same 100 of the benchmark's 200 items: rates on a subset are not the benchmark's."""
    base, instruct = _clean()
    half = _ids()[:100]
    jobs = [_job(k, m, m, {i: v[i] for i in half}, bench_ids=_ids(), n=N)
            for k, (m, v) in enumerate((("base", base), ("instruct", instruct)))]
    g = _gate(*jobs)
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any("base (base): holds 100 item(s) but the benchmark (conversations, split=main, limit=None) has 200"
               in r for r in g["reasons"]), g["reasons"]
    assert any("100 of the benchmark's items were never scored: conv-100, conv-101" in r for r in g["reasons"])


def test_case4_errors_that_decide_the_result() -> None:
    """Base 57 pass / 133 fail / 10 error, instruct 162 / 200 (errors lean towards pass).

    Observed (errors dropped): base 57/190 = .300 <= .30 and instruct 152/190 = .80 >= .80: the
    observed checks pass. Worst case (base errors as pass): base 67/200 = .335 > .30: NOT_ELIGIBLE.
    """
    ids = _ids()
    base = {i: "pass" if k < 57 else ("error" if k >= 190 else "fail") for k, i in enumerate(ids)}
    instruct = {i: "fail" if 57 <= k < 95 else "pass" for k, i in enumerate(ids)}  # 38 fails, none on errors
    assert sum(v == "pass" for v in instruct.values()) == 162
    g = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct))
    obs, worst = g["observed"], g["worst_case"]
    assert (obs["n_paired"], obs["base_success"], obs["instruct_success"]) == (190, pytest.approx(0.3),
                                                                              pytest.approx(0.8))
    assert all(c["passed"] for c in obs["checks"]), obs["checks"]
    assert (worst["n_paired"], worst["base_success"]) == (200, pytest.approx(0.335))
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert g["reasons"][0].startswith("10 error items could change the decision: rerun to resolve them")
    assert "base_success_rate 0.335 is not <= 0.3" in g["reasons"][0]
    md_pair = g["_comparison"]["pairs"][0]
    assert md_pair["dropped"] == {"error": 10, "unpaired": 0, "not_scored": 0}


def test_case5_mixed_scorers_inside_a_run() -> None:
    base, instruct = _clean()
    edit = {i: {"scorer": "heuristic_triage", "judge": None} for i in _ids()[:30]}
    g = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct, row_edit=edit))
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any("30 of 200 score rows were scored by heuristic_triage, not scorer=llm as summary.json says: "
               "conv-000, conv-001" in r for r in g["reasons"]), g["reasons"]
    # a row whose judge differs from the summary's is caught the same way
    edit2 = {"conv-007": {"judge_model": "claude-judge-0"}}
    g2 = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct, row_edit=edit2))
    assert g2["verdict"] == "NOT_ELIGIBLE" and any("1 of 200 score rows name another judge" in r and "conv-007" in r
                                                   for r in g2["reasons"])


def test_case6_duplicated_item_ids() -> None:
    base, instruct = _clean()
    dup = {"item_id": "conv-005", "category": "memory", "verdict": "pass", "scorer": "llm", "judge": "claude",
           "judge_provider": "anthropic", "judge_model": "claude-judge-1", "template_version": "conv-judge-v2",
           "template_sha256": "ab" * 32}
    g = _gate(_job(0, "base", "base", base), _job(1, "instruct", "instruct", instruct, extra_rows=[dup]))
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any("instruct (instruct): scores.jsonl repeats 1 item id(s) (a corrupted run" in r and "conv-005" in r
               for r in g["reasons"]), g["reasons"]


def test_case7_multiplicity() -> None:
    """Three primaries (as a four-model design might declare) share alpha: each is tested at .01/3.

    200 items in 8 templates of 25; the post-trained model beats base in every template, so the
    exact sign-flip p is 2 / 2^8 = .0078: below .01, not below .0033. Secondary pairs and the
    per-category tests are Holm-adjusted within their own family, labelled exploratory, and their
    power is for the observed effect (base vs alt base: a null-sized effect, so underpowered).
    """
    base, instruct = _clean()
    clusters = {i: _template(k, 8) for k, i in enumerate(_ids())}
    alt = {i: "pass" if k % 4 == 1 else "fail" for k, i in enumerate(_ids())}  # base-like: .25
    jobs = [_job(0, "base", "base", base, clusters=clusters), _job(1, "sft", "base", instruct, clusters=clusters),
            _job(2, "dpo", "base", instruct, clusters=clusters), _job(3, "alt", "base", alt, clusters=clusters)]
    primary = [{"treatment": m, "control": "base"} for m in ("sft", "dpo", "alt")]
    g = _gate(*jobs, primary=primary)
    assert g["verdict"] == "FAIL" and g["n_primaries"] == 3
    assert g["thresholds"]["mcnemar_alpha"] == pytest.approx(0.01 / 3)
    assert g["observed"]["cluster_p"] == pytest.approx(2 / 2**8)
    assert len(g["reasons"]) == 1 and g["reasons"][0].startswith("cluster_p 0.00781")  # .0078125 to 4 figures
    assert g["reasons"][0].endswith("is not < 0.003333")
    comp = g["_comparison"]
    fams = {(p["a"], p["b"]): p for p in comp["pairs"]}
    assert fams[("base", "sft")]["family"] == "primary" and fams[("sft", "dpo")]["family"] == "secondary"
    secondary = [p for p in comp["pairs"] if p["family"] == "secondary"]
    assert all(p["exploratory"] for p in secondary) and len(secondary) == 3
    from statsmodels.stats.multitest import multipletests

    assert [p["p_holm"] for p in secondary] == pytest.approx(
        list(multipletests([p["p"] for p in secondary], method="holm")[1]))
    cats = comp["per_category"]["pairs"]
    assert len(cats) == 6 and all(p["exploratory"] for p in cats)  # 6 pairs x 1 category
    null_pair = next(p for p in cats if (p["a"], p["b"]) == ("base", "alt"))
    assert null_pair["underpowered"] is True and null_pair["power_observed"] < 0.1


def test_case8_clustered_items() -> None:
    """200 items from 5 templates of 40. Per template base passes 0, 20, 10, 15, 5 items (50 = .25)
    and instruct 40, 30, 40, 25, 35 (170 = .85), always including base's, so instruct wins 120 items
    and loses none: the item-level McNemar p is 2/2^120 = 1.5e-36. But the templates are the units that
    vary: 5 clusters can give no p below 2/2^5 = .0625 under cluster sign flips, so the gate FAILs."""
    ids = _ids()
    clusters = {i: f"tpl_{k // 40}" for k, i in enumerate(ids)}
    b_t, i_t = (0, 20, 10, 15, 5), (40, 30, 40, 25, 35)
    base = {i: "pass" if k % 40 < b_t[k // 40] else "fail" for k, i in enumerate(ids)}
    instruct = {i: "pass" if k % 40 < i_t[k // 40] else "fail" for k, i in enumerate(ids)}
    g = _gate(_job(0, "base", "base", base, clusters=clusters),
              _job(1, "instruct", "instruct", instruct, clusters=clusters))
    assert g["verdict"] == "FAIL"
    assert g["reasons"] == ["cluster_p 0.0625 is not < 0.01"]
    assert g["mcnemar_p"] == pytest.approx(2 / 2**120)
    obs = g["observed"]
    assert (obs["base_success"], obs["instruct_success"]) == (pytest.approx(0.25), pytest.approx(0.85))
    # Per-template differences 1, .25, .75, .25, .75 (mean .6): the cluster-robust interval of the
    # difference (t on 4 df) is several times wider than the item-level one.
    assert obs["diff_ci95"][1] - obs["diff_ci95"][0] > 3 * (obs["diff_ci95_iid"][1] - obs["diff_ci95_iid"][0])
    assert obs["design_effect"] > 5


# ---------------------------------------------------------------- clustered null simulation


def _clustered_null(rng: np.random.Generator, n_clusters: int = 33, size: int = 6,
                    tau: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal models on average, but each template favours one of them: P(pass) = Φ(±u_g/2), u_g ~ N(0, τ²).

    Over templates neither model is better (u_g is symmetric), so any PASS is a false pass; inside a
    template the items lean the same way, which is what an item-level test ignores.
    """
    u = np.repeat(rng.normal(0.0, tau, n_clusters), size)
    instruct = rng.random(u.size) < sps.norm.cdf(u / 2)
    base = rng.random(u.size) < sps.norm.cdf(-u / 2)
    return instruct, base, np.repeat(np.arange(n_clusters), size)


def test_clustered_null_item_level_exceeds_alpha_cluster_level_does_not() -> None:
    """400 simulated 198-item designs (33 templates x 6) with no true difference, alpha = .01.

    An item-level analysis (exact McNemar, each item independent) declares a significant gap in far
    more than 1% of them; the gate's cluster-level sign-flip test stays at or below alpha (its SE at
    .01 with 400 draws is √(.01·.99/400) = .005; we allow alpha + 2·SE = .02). The same decision
    through ``evaluate_gate`` is checked on the first designs below.
    """
    rng = np.random.default_rng(12)
    alpha, n_sims = 0.01, 400
    item_hits = cluster_hits = 0
    for _ in range(n_sims):
        x, y, cl = _clustered_null(rng)
        item_hits += cluster_permutation_test(x, y, np.arange(x.size)).p_value < alpha
        cluster_hits += cluster_permutation_test(x, y, cl).p_value < alpha
    item_rate, cluster_rate = item_hits / n_sims, cluster_hits / n_sims
    assert item_rate > 5 * alpha, item_rate  # the reason for the feature
    assert cluster_rate <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / n_sims), cluster_rate


def test_clustered_null_through_the_gate() -> None:
    """The gate with only the significance checks on (rate and h checks switched off): with clusters
    recorded it passes a clustered null no more often than the cluster test alone; without them it
    falls back to item level and passes far more often."""
    from posttrain.analysis.gates import ModelScores, evaluate_gate

    loose = GateThresholds(base_max_success=1.0, instruct_min_success=0.0, min_cohens_h=-math.pi)
    rng = np.random.default_rng(7)
    bench = {"name": "conversations", "split": "main", "limit": None, "n": 198, "sha256": SHA}
    with_cl = without = 0
    for _ in range(60):
        x, y, cl = _clustered_null(rng)
        ids = [f"c{k:03d}" for k in range(x.size)]
        clusters = {i: str(c) for i, c in zip(ids, cl, strict=True)}

        def run(v: np.ndarray, name: str, known: bool, ids: list[str] = ids,
                clusters: dict[str, str] = clusters) -> ModelScores:
            return ModelScores(name, {i: "pass" if p else "fail" for i, p in zip(ids, v, strict=True)}, "llm", 0.85,
                               clusters=clusters if known else None, instrument=INSTRUMENT, calibration_key="k",
                               benchmark=bench, decoding=GREEDY)

        with_cl += evaluate_gate(run(y, "b", True), run(x, "i", True), loose).verdict == "PASS"
        without += evaluate_gate(run(y, "b", False), run(x, "i", False), loose).verdict == "PASS"
    assert with_cl <= 2 < without
