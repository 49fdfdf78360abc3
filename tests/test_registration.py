"""The sealed analysis (issue 20 §1, §3, §4, §7) and the two gate kinds (issue 19 §3).

Each mutation of issue 20's "Done when" that the analysis owns starts from a sweep whose gate
decides (PASS on hand-built records; FAIL, eligible, on a real tiny sweep) and ends NOT_ELIGIBLE
with a reason naming the cause:

- items.jsonl deleted; one item's template removed; templates rewritten; two sides' maps differ;
- base sampled vs instruct greedy;
- primary.json edited or deleted; a job that did not run under it; a threshold changed after the runs;
- and the second report of the same sweep shows attempt 2 in the ledger of gate attempts.

The hand-built sweeps are records exactly as the eval stage writes them (summary.json, scores.jsonl,
items.jsonl) beside a primary.json from :func:`registration_record`; they run in milliseconds. The
``slow`` tests build one real sweep once per session (tiny base vs tiny instruct on the instruction
benchmark's 130 held-out items, ``scorer=verifiable``, through the real entrypoint, about 25 s) and
mutate copies of it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from posttrain.analysis.comparison import JobRecords, build_comparison, thresholds_from
from posttrain.analysis.gates import (
    NO_CLUSTERS,
    GateThresholds,
    ModelScores,
    cluster_info,
    evaluate_gate,
    item_ids_sha256,
)
from posttrain.analysis.ledger import GATES_FILE
from posttrain.analysis.registration import registration_record, registration_sha256
from posttrain.analysis.report import main as report_main
from posttrain.analysis.report import recompute_gate, write_comparison
from posttrain.records import append_jsonl, read_jsonl, write_json
from tests.helpers import SESSION_RUNS, posttrain

INSTRUMENT = {"provider": "anthropic", "model": "claude-judge-1", "template_version": "conv-judge-v2",
              "template_sha256": "ab" * 32}
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 256, "stop_strings": [],
          "seed": None, "backend": "hf"}
SAMPLED = GREEDY | {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "seed": 0}
N = 200
IDS = [f"conv-{k:03d}" for k in range(N)]
PRIMARY = [{"treatment": "instruct", "control": "base", "kind": "gap"}]


def _calibrated(judge: str, template: str, min_kappa: float, **_: Any) -> tuple[bool, str, float | None]:
    return True, "kappa 0.85 >= 0.70 on 30 items", 0.85


def _clean() -> dict[str, dict[str, str]]:
    """Base 50/200 = .25 (every 4th item), instruct 170/200 = .85 (it wins 120 items, loses none)."""
    return {"base": {i: "pass" if k % 4 == 0 else "fail" for k, i in enumerate(IDS)},
            "instruct": {i: "fail" if k % 20 in (1, 2, 3) else "pass" for k, i in enumerate(IDS)}}


def _items(templated: bool = True) -> list[dict[str, Any]]:
    """The benchmark's items: 33 templates of 6-7 items (like the conversation benchmark), or none."""
    return [{"id": i, "category": "memory", "meta": {"template": f"tpl_{min(k * 33 // N, 32):02d}"} if templated else {}}
            for k, i in enumerate(IDS)]


def _sweep(root: Path, *, templated: bool = True, primary: list[dict[str, str]] | None = None,
           t: GateThresholds | None = None) -> Path:
    """A registered sweep folder: primary.json first, then each job's records stamped with its sha256."""
    record = registration_record(primary or PRIMARY, t or GateThresholds(), registered_at="2026-01-31T12:00:00+00:00",
                                 benchmark={"name": "conversations", "split": "main", "limit": None})
    root.mkdir(parents=True)
    write_json(root / "primary.json", record)
    items = _items(templated)
    for num, (model, verdicts) in enumerate(_clean().items()):
        job = root / f"{num}_{model}"
        append_jsonl(job / "items.jsonl", items)
        append_jsonl(job / "scores.jsonl", [
            {"item_id": i, "category": "memory", "verdict": v, "scorer": "llm", "judge": "claude",
             "judge_provider": INSTRUMENT["provider"], "judge_model": INSTRUMENT["model"],
             "template_version": INSTRUMENT["template_version"], "template_sha256": INSTRUMENT["template_sha256"]}
            for i, v in verdicts.items()])
        write_json(job / "summary.json", {
            "status": "finished", "stage": "eval", "model": model, "model_kind": model, "scorer": "llm",
            "judge": "claude", "judge_instrument": INSTRUMENT,
            "calibration": {"key": "human-v1", "kappa": 0.85, "n": 30, "applies": True, "reason": None},
            "benchmark_info": {"name": "conversations", "split": "main", "limit": None, "n": N, "sha256": "cd" * 32,
                               "item_ids_sha256": item_ids_sha256(IDS), **cluster_info(items)},
            "decoding": dict(GREEDY), "prompt_format": "raw" if model == "base" else "chat_template",
            "model_identity": {"name": model, "path": f"/models/{model}", "revision": "sha256:" + "0" * 64,
                               "adapter": None, "adapter_sha256": None},
            "registration_sha256": registration_sha256(record)})
    return root


def _gate(sweep: Path, **kw: Any) -> dict[str, Any]:
    return write_comparison(sweep, plots=False, calibration=_calibrated, **kw)["gate"]


def _edit_json(path: Path, **changes: Any) -> None:
    write_json(path, json.loads(path.read_text()) | changes)


def _not_eligible(gate: dict[str, Any], *needles: str) -> None:
    assert gate["verdict"] == "NOT_ELIGIBLE", gate["reasons"]
    for needle in needles:
        assert any(needle in r for r in gate["reasons"]), (needle, gate["reasons"])


# ---------------------------------------------------------------- the reference, and attempt 2


def test_the_registered_sweep_passes_and_the_second_report_is_attempt_2(tmp_path: Path,
                                                                        posttrain_home: Path) -> None:
    """The clean design PASSes under the registered analysis; a second report of the same sweep is
    attempt 2 on the same question, shows the first verdict and 1 − (1 − .01)² = .0199."""
    sweep = _sweep(tmp_path / "sweep")
    first = write_comparison(sweep, plots=False, calibration=_calibrated)
    assert first["gate"]["verdict"] == "PASS", first["gate"]["reasons"]
    assert first["gate"]["registered"] is True and first["registration"]["registered"] is True
    assert first["attempts"][0]["attempt"] == 1 and first["attempts"][0]["earlier"] == []
    second = write_comparison(sweep, plots=False, calibration=_calibrated)
    a = second["attempts"][0]
    assert a["attempt"] == 2 and [e["verdict"] for e in a["earlier"]] == ["PASS"]
    assert a["question_key"] == first["attempts"][0]["question_key"]
    assert a["family_wise_false_pass"] == pytest.approx(1 - 0.99**2)  # .0199
    md = (sweep / "comparison.md").read_text()
    assert "**Attempt 2 on this question**" in md and "1 − (1 − 0.01)^2 = 0.020" in md and " PASS (sweep " in md
    ledger = read_jsonl(posttrain_home / GATES_FILE)
    assert [e["attempt"] for e in ledger] == [1, 2] and {e["verdict"] for e in ledger} == {"PASS"}
    assert ledger[0]["question"]["treatment"]["path"] == "/models/instruct"
    # The ledger is outside the gate block: training's recomputation still matches comparison.json
    assert recompute_gate(sweep, calibration=_calibrated) == json.loads((sweep / "comparison.json").read_text())["gate"]


def test_the_ledger_survives_a_torn_line(tmp_path: Path, posttrain_home: Path) -> None:
    """A writer killed mid-line leaves a fragment; the next decision drops it and is attempt 2, not 3."""
    sweep = _sweep(tmp_path / "sweep")
    write_comparison(sweep, plots=False, calibration=_calibrated)
    with (posttrain_home / GATES_FILE).open("a", encoding="utf-8") as f:
        f.write('{"question_key": "torn')
    assert write_comparison(sweep, plots=False, calibration=_calibrated)["attempts"][0]["attempt"] == 2
    assert len(read_jsonl(posttrain_home / GATES_FILE)) == 2


# ---------------------------------------------------------------- clusters are evidence


def test_items_jsonl_deleted(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    for job in ("0_base", "1_instruct"):
        (sweep / job / "items.jsonl").unlink()
    _not_eligible(_gate(sweep), "base (base): no items.jsonl", "instruct (instruct): no items.jsonl")


def test_one_items_template_removed(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    path = sweep / "1_instruct" / "items.jsonl"
    items = read_jsonl(path)
    items[7]["meta"] = {}
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    _not_eligible(_gate(sweep), "1 of 200 item(s) of a templated benchmark have no cluster (meta.template / meta.task) "
                                "in items.jsonl: conv-007")


def test_templates_rewritten(tmp_path: Path) -> None:
    """One template for everything would make the cluster test meaningless; a unique one per item would
    make it item-level (p = 1.5e-36 instead of .0625 in issue 20's design). Either is a rewrite."""
    sweep = _sweep(tmp_path / "sweep")
    for job in ("0_base", "1_instruct"):
        path = sweep / job / "items.jsonl"
        items = [it | {"meta": {"template": it["id"]}} for it in read_jsonl(path)]
        path.write_text("".join(json.dumps(it) + "\n" for it in items))
    _not_eligible(_gate(sweep), "cluster (template) assignment differs from the one summary.json recorded "
                                "(clusters_sha256): the templates were rewritten")


def test_the_two_sides_cluster_maps_differ(tmp_path: Path) -> None:
    """Even with each summary rewritten to match its own items.jsonl, the two maps disagree and are named."""
    sweep = _sweep(tmp_path / "sweep")
    job = sweep / "1_instruct"
    items = read_jsonl(job / "items.jsonl")
    items[0]["meta"] = {"template": "tpl_99"}
    (job / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    summary = json.loads((job / "summary.json").read_text())
    summary["benchmark_info"] |= cluster_info(items)
    write_json(job / "summary.json", summary)
    _not_eligible(_gate(sweep), "different cluster maps: 1 item(s) sit in another cluster for base (base) than for "
                                "instruct (instruct): conv-000 'template:tpl_00' vs 'template:tpl_99'")


def test_a_benchmark_without_templates_says_so_and_still_decides(tmp_path: Path) -> None:
    """The public MT-Bench files have no templates: each item is its own cluster, said explicitly."""
    sweep = _sweep(tmp_path / "sweep", templated=False)
    comp = write_comparison(sweep, plots=False, calibration=_calibrated)
    g = comp["gate"]
    assert g["verdict"] == "PASS", g["reasons"]
    assert g["cluster_source"] == NO_CLUSTERS and g["observed"]["n_clusters"] == N
    assert g["arms"]["control"]["cluster_source"] == NO_CLUSTERS
    assert "none: the benchmark has no templates" in (sweep / "comparison.md").read_text()


# ---------------------------------------------------------------- same decoding


def test_base_sampled_vs_instruct_greedy(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    _edit_json(sweep / "0_base" / "summary.json", decoding=SAMPLED)
    g = _gate(sweep)
    _not_eligible(g, "different decoding: base (base) vs instruct (instruct) differ in", "do_sample True vs False",
                  "temperature 0.7 vs None", "top_p 0.95 vs None", "seed 0 vs None")
    assert g["arms"]["control"]["decoding"]["temperature"] == 0.7  # shown beside the model identity
    assert g["arms"]["treatment"]["model_identity"]["path"] == "/models/instruct"


def test_a_run_without_decoding_settings_cannot_gate(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    summary = json.loads((sweep / "1_instruct" / "summary.json").read_text())
    del summary["decoding"]
    write_json(sweep / "1_instruct" / "summary.json", summary)
    _not_eligible(_gate(sweep), "instruct (instruct): summary.json records no decoding settings")


# ---------------------------------------------------------------- the sealed registration


def test_primary_json_edited_to_name_another_pair(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    _edit_json(sweep / "primary.json", primary=[{"treatment": "instruct", "control": "base", "kind": "superiority"}])
    g = _gate(sweep)
    _not_eligible(g, "not the registered analysis: primary.json (sha256 ", "edited or replaced after the runs")
    md = (sweep / "comparison.md").read_text()
    assert md.splitlines()[2].startswith("> **This is not the registered analysis**")


def test_primary_json_deleted(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    (sweep / "primary.json").unlink()
    g = _gate(sweep)
    _not_eligible(g, "not the registered analysis: no primary.json in the sweep folder")
    assert g["primary_source"].startswith("first base-kind vs first instruct-kind")  # shown, never deciding


def test_a_job_that_did_not_run_under_the_registration(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    summary = json.loads((sweep / "0_base" / "summary.json").read_text())
    del summary["registration_sha256"]
    write_json(sweep / "0_base" / "summary.json", summary)
    _not_eligible(_gate(sweep), "job(s) 0_base record no registration_sha256")


def test_a_threshold_changed_after_the_runs(tmp_path: Path) -> None:
    """Asked for other numbers (the command line, a resumed sweep's config): shown, never deciding."""
    sweep = _sweep(tmp_path / "sweep")
    _not_eligible(_gate(sweep, thresholds=GateThresholds(mcnemar_alpha=0.05)),
                  "thresholds differ from the registered ones: mcnemar_alpha 0.05 (asked) vs 0.01 (registered)")


def test_the_callback_decides_only_with_the_registered_thresholds(tmp_path: Path) -> None:
    """The sweep callback passes its config's gate; a config that differs from the registration
    (here min_cohens_h loosened after the runs) gives NOT_ELIGIBLE; the registered one decides."""
    from omegaconf import OmegaConf

    from posttrain.callbacks import ComparisonCallback

    sweep = _sweep(tmp_path / "sweep")

    def end(gate: dict[str, Any]) -> dict[str, Any]:
        cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "job": {"num": 1}}, "gate": gate,
                                "tracking": {"mode": "disabled", "project": "posttrain", "entity": None}})
        cb = ComparisonCallback(plots=False, wandb=False)
        cb.on_multirun_start(cfg)
        cb.on_multirun_end(cfg)
        return json.loads((sweep / "comparison.json").read_text())["gate"]

    g = end({"min_cohens_h": 0.3})
    assert g["verdict"] == "NOT_ELIGIBLE"  # the real calibration store is empty too; the threshold is named
    assert any("min_cohens_h 0.3 (asked) vs 0.5 (registered)" in r for r in g["reasons"]), g["reasons"]
    g = end({})
    assert not any("registered" in r for r in g["reasons"]), g["reasons"]


def test_the_registered_benchmark_must_be_the_one_evaluated(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    record = json.loads((sweep / "primary.json").read_text())
    record["benchmark"]["split"] = "pilot"
    write_json(sweep / "primary.json", record)
    for job in ("0_base", "1_instruct"):  # restamp, so only the benchmark is wrong
        _edit_json(sweep / job / "summary.json", registration_sha256=registration_sha256(record))
    _not_eligible(_gate(sweep), "job 0_base evaluated another benchmark than the registered one: split 'main' vs "
                                "'pilot'")


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("min_paired", 50, "gate.min_paired=50 must be >= 100"),
    ("mcnemar_alpha", 1.5, "gate.mcnemar_alpha=1.5 must lie in [0, 1]"),
    ("rates", "median", "gate.rates='median' is not valid"),
    ("min_effect_h", -0.1, "gate.min_effect_h=-0.1 must be >= 0"),
])
def test_thresholds_from_validates_like_a_run(key: str, value: Any, needle: str) -> None:
    with pytest.raises(ValueError, match="invalid gate thresholds") as err:
        thresholds_from({key: value})
    assert needle in str(err.value)


def test_registered_thresholds_below_the_floor_are_refused(tmp_path: Path) -> None:
    """primary.json rewritten (and every job restamped) with min_paired 50: still not a valid registration."""
    sweep = _sweep(tmp_path / "sweep")
    record = json.loads((sweep / "primary.json").read_text())
    record["thresholds"]["min_paired"] = 50
    write_json(sweep / "primary.json", record)
    for job in ("0_base", "1_instruct"):
        _edit_json(sweep / job / "summary.json", registration_sha256=registration_sha256(record))
    _not_eligible(_gate(sweep), "primary.json's thresholds are not valid", "gate.min_paired=50 must be >= 100")


def test_a_sweep_whose_thresholds_a_run_refuses_registers_nothing(compose: Any, tmp_path: Path) -> None:
    """gate.min_paired=50: the run refuses it (posttrain.config names the setting); the registration
    is not written, so nothing could later decide with it. A kind outside gap|superiority is refused too."""
    from posttrain.callbacks import write_primary
    from posttrain.config import ConfigError, validate

    cfg = compose("+experiment=three_way_tiny", "gate.min_paired=50")
    assert not write_primary(cfg, tmp_path / "sweep").exists()
    with pytest.raises(ConfigError, match="gate.min_paired=50 must be >= 100"):
        validate(cfg)
    bad = compose("+experiment=three_way_tiny", "gate.primary=[{treatment:tiny_instruct,control:tiny_base,kind:best}]")
    with pytest.raises(ConfigError, match="has kind='best'; choose one of"):
        validate(bad)


# ---------------------------------------------------------------- the two kinds, hand-checked


def _scores(verdicts: dict[str, str], model: str) -> ModelScores:
    bench = {"name": "instructions", "split": "test", "limit": None, "n": len(verdicts), "sha256": "cd" * 32}
    return ModelScores(model=model, verdicts=verdicts, scorer="llm", calibration_kappa=0.85, instrument=INSTRUMENT,
                       calibration_key="human-v1", benchmark=bench, decoding=GREEDY)


def _table(both: int, t_only: int, c_only: int, neither: int) -> tuple[ModelScores, ModelScores]:
    cells = [("pass", "pass")] * both + [("fail", "pass")] * t_only + [("pass", "fail")] * c_only \
        + [("fail", "fail")] * neither
    return (_scores({f"i{k:04d}": c for k, (c, _) in enumerate(cells)}, "control"),
            _scores({f"i{k:04d}": t for k, (_, t) in enumerate(cells)}, "treatment"))


def test_superiority_passes_a_15_point_gain_the_gap_rule_cannot() -> None:
    """200 items: both 50, treatment only 40, control only 10, neither 100.

    control 60/200 = .30, treatment 90/200 = .45; McNemar: 10 of 50 discordant, two-sided
    p = 2·P(X <= 10 | 50, .5) = 2.4e-5 < .01 (each item its own cluster: the sign-flip p is the same);
    h = 2·asin(√.45) − 2·asin(√.30) = 1.47063 − 1.15928 = .3113 >= .2 -> superiority PASS.
    The gap rule FAILs the same data (treatment .45 < .80, h .31 < .5), as issue 19 says.
    """
    from scipy import stats as sps

    control, treatment = _table(50, 40, 10, 100)
    v = evaluate_gate(control, treatment, GateThresholds(), "superiority")
    assert v.verdict == "PASS", v.reasons
    assert v.kind == "superiority" and v.rule.startswith("superiority: treatment beats control")
    assert v.mcnemar_p == pytest.approx(sps.binomtest(10, 50, 0.5).pvalue) and v.mcnemar_p == pytest.approx(2.4e-5,
                                                                                                           rel=0.05)
    assert v.cohens_h == pytest.approx(2 * math.asin(math.sqrt(0.45)) - 2 * math.asin(math.sqrt(0.30)))
    assert v.cohens_h == pytest.approx(0.3113, abs=1e-4)
    assert [c.name for c in v.checks] == ["mcnemar_p", "cluster_p", "cohens_h"]  # no rate thresholds
    gap = evaluate_gate(control, treatment, GateThresholds(), "gap")
    assert gap.verdict == "FAIL" and gap.rule.startswith("gap (the seed's Phase-1 gate)")
    assert "instruct_success_rate 0.45 is not >= 0.8" in gap.reasons and "cohens_h 0.3113 is not >= 0.5" in gap.reasons


def test_superiority_fails_a_significant_but_small_effect() -> None:
    """1000 items: both 260, treatment only 100, control only 40, neither 600: control .30, treatment .36.
    McNemar p ≈ 4e-7 < .01, but h = 2·asin(√.36) − 2·asin(√.30) = 1.28700 − 1.15928 = .1277 < .2 -> FAIL."""
    control, treatment = _table(260, 100, 40, 600)
    v = evaluate_gate(control, treatment, GateThresholds(), "superiority")
    assert v.verdict == "FAIL" and v.mcnemar_p is not None and v.mcnemar_p < 1e-6
    assert v.reasons == ["cohens_h 0.1277 is not >= 0.2"]


def test_superiority_fails_when_the_control_is_better() -> None:
    """The mirror of the PASS case: control beats treatment, p is as small, h = −.3113 < .2 -> FAIL."""
    control, treatment = _table(50, 10, 40, 100)
    v = evaluate_gate(control, treatment, GateThresholds(), "superiority")
    assert v.verdict == "FAIL" and v.reasons == ["cohens_h -0.3113 is not >= 0.2"]


def test_the_rate_bound_rule() -> None:
    """gate.rates=bound holds the rates with confidence. 200 items: both 56, instruct only 114, neither 30
    (base .28, instruct .85). Each item its own cluster, CR1 SE = √(200/199 · 200·.28·.72) / 200 = .031829,
    t(.95, 199) = 1.65251: base's one-sided upper bound .28 + .05260 = .3326 > .30 -> FAIL; the
    point rule (the default) PASSes the same data."""
    control, treatment = _table(56, 114, 0, 30)
    point = evaluate_gate(control, treatment, GateThresholds(), "gap")
    assert point.verdict == "PASS", point.reasons
    bound = evaluate_gate(control, treatment, GateThresholds(rates="bound"), "gap")
    assert bound.verdict == "FAIL"
    assert bound.observed is not None and bound.observed.base_upper95 == pytest.approx(0.3326, abs=1e-4)
    assert bound.reasons == ["base_success_upper95 0.3326 is not <= 0.3"]
    assert "one-sided 95% bounds" in bound.rule and "point estimates" in point.rule


def test_four_model_primary_and_secondary_family() -> None:
    """The four-model registration: DPO vs DPO-only decides under superiority; SFT->DPO > SFT and each
    trained variant > base are the Holm family (their p_holm is Holm over those 4 only); SFT vs
    DPO-only is exploratory."""
    from statsmodels.stats.multitest import multipletests

    ids = [f"i{k:03d}" for k in range(200)]
    rates = {"m": 40, "m+sft": 90, "m+dpo": 150, "m+dpo_only": 100}  # passes: the first r items
    items = [{"id": i, "category": "memory", "meta": {}} for i in ids]
    primary = [{"treatment": "m+dpo", "control": "m+dpo_only", "kind": "superiority"}]
    secondary = [{"treatment": t, "control": c, "kind": "superiority"}
                 for t, c in (("m+dpo", "m+sft"), ("m+sft", "m"), ("m+dpo", "m"), ("m+dpo_only", "m"))]
    record = registration_record(primary, GateThresholds(), secondary=secondary)
    jobs = []
    for num, (model, r) in enumerate(rates.items()):
        summary = {"model": model, "model_kind": "base", "scorer": "llm", "judge": "claude",
                   "judge_instrument": INSTRUMENT, "decoding": GREEDY, "registration_sha256": registration_sha256(record),
                   "calibration": {"key": "k", "kappa": 0.85, "n": 30, "applies": True, "reason": None},
                   "benchmark_info": {"name": "instructions", "split": "test", "limit": None, "n": 200,
                                      "sha256": "cd" * 32, "item_ids_sha256": item_ids_sha256(ids),
                                      **cluster_info(items)}}
        rows = [{"item_id": i, "verdict": "pass" if k < r else "fail", "scorer": "llm", "judge": "claude",
                 "judge_provider": INSTRUMENT["provider"], "judge_model": INSTRUMENT["model"],
                 "template_version": INSTRUMENT["template_version"], "template_sha256": INSTRUMENT["template_sha256"]}
                for k, i in enumerate(ids)]
        jobs.append(JobRecords(f"{num}_{model}", summary, rows, None, items))
    comp = build_comparison(jobs, calibration=_calibrated, registration=record)
    g = comp["gate"]
    # DPO .75 vs DPO-only .50: 50 discordant all one way, p = 2/2^50; h = 2asin(√.75) − 2asin(√.5) = .5236
    assert (g["verdict"], g["kind"], g["instruct_model"], g["base_model"]) == ("PASS", "superiority", "m+dpo",
                                                                               "m+dpo_only"), g["reasons"]
    fam = {frozenset((p["a"], p["b"])): p for p in comp["pairs"]}
    sec = [fam[frozenset((s["treatment"], s["control"]))] for s in secondary]
    assert all(p["family"] == "secondary" and p["supported"] for p in sec)
    assert [p["p_holm"] for p in sec] == pytest.approx(list(multipletests([p["p"] for p in sec], method="holm")[1]))
    assert fam[frozenset(("m+sft", "m+dpo_only"))]["family"] == "exploratory"
    assert sec[0]["hypothesis"] == "m+dpo > m+sft"


def test_four_model_config_shows_the_superiority_primary(compose: Any) -> None:
    cfg = compose("+experiment=four_model")
    assert [(p.treatment, p.control, p.kind) for p in cfg.gate.primary] == [("qwen32b+dpo", "qwen32b+dpo_only",
                                                                             "superiority")]
    assert len(cfg.gate.secondary) == 4 and cfg.gate.min_effect_h == 0.2 and cfg.gate.rates == "point"


# ---------------------------------------------------------------- the same, on a real sweep


FAST = ["benchmark=instructions", "benchmark.split=test", "scorer=verifiable", "generation.max_new_tokens=8",
        "generation.batch_size=33", "stage.sentinel=false", "tracking.mode=disabled"]


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> dict[str, Path]:
    """Tiny base vs tiny instruct on the 130 held-out instruction items, scorer=verifiable, the primary
    registered under superiority; and tiny base once more, sampled at temperature 0.7."""
    if "registration" not in SESSION_RUNS:
        root = tmp_path_factory.mktemp("registration")
        home = root / "home"
        sweep = root / "sweep"
        posttrain("hydra.mode=MULTIRUN", "model=tiny_base,tiny_instruct", *FAST,
                  "gate.primary=[{treatment:tiny_instruct,control:tiny_base,kind:superiority}]",
                  f"hydra.sweep.dir={sweep}", home=home, cache=shared_cache)
        sampled = root / "sampled" / "0_tiny_base"
        sampled.parent.mkdir()
        shutil.copy(sweep / "primary.json", sampled.parent / "primary.json")  # run under the same registration
        posttrain("model=tiny_base", *FAST, "generation.do_sample=true", "generation.temperature=0.7",
                  f"hydra.run.dir={sampled}", home=home, cache=shared_cache)
        SESSION_RUNS["registration"] = {"sweep": sweep, "sampled": sampled}
    return SESSION_RUNS["registration"]  # type: ignore[no-any-return]


def _report(sweep: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    capsys.readouterr()
    assert report_main([str(sweep), "--no-plots"]) == 0
    return json.loads((sweep / "comparison.json").read_text()), capsys.readouterr().out


@pytest.mark.slow
def test_real_sweep_decides_and_the_second_report_is_attempt_2(real_sweep: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    sweep = shutil.copytree(real_sweep["sweep"], tmp_path / "sweep")
    record = json.loads((sweep / "primary.json").read_text())
    assert record["primary"] == [{"treatment": "tiny_instruct", "control": "tiny_base", "kind": "superiority"}]
    assert record["benchmark"]["n"] == 130 and record["benchmark"]["name"] == "instructions"
    for job in ("0_tiny_base", "1_tiny_instruct"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["registration_sha256"] == registration_sha256(record)
        assert summary["benchmark_info"]["clusters"] == NO_CLUSTERS
    comp, out = _report(sweep, capsys)
    g = comp["gate"]
    assert g["verdict"] == "FAIL" and g["registered"] is True and g["n_paired"] >= 100, g["reasons"]
    assert "Decided by the **superiority** rule" in out and "**Attempt 1 on this question**" in out
    assert "**FAIL**: control `tiny_base` vs treatment `tiny_instruct` on 102 paired items" in out
    assert "| treatment success, one-sided 95% lower bound | 0 | 0 |" in out
    comp, out = _report(sweep, capsys)
    assert comp["attempts"][0]["attempt"] == 2 and "**Attempt 2 on this question**" in out
    assert "Earlier verdicts: " in out and " FAIL (sweep " in out


def _mutate_items_deleted(sweep: Path, sampled: Path) -> None:
    for job in ("0_tiny_base", "1_tiny_instruct"):
        (sweep / job / "items.jsonl").unlink()


def _mutate_templates_rewritten(sweep: Path, sampled: Path) -> None:
    for job in ("0_tiny_base", "1_tiny_instruct"):
        items = read_jsonl(sweep / job / "items.jsonl")
        for k, it in enumerate(items):
            it["meta"] = (it.get("meta") or {}) | {"template": f"tpl_{k % 5}"}  # 5 clusters for the sign-flip test
        (sweep / job / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


def _mutate_base_sampled(sweep: Path, sampled: Path) -> None:
    shutil.rmtree(sweep / "0_tiny_base")
    shutil.copytree(sampled, sweep / "0_tiny_base")


def _mutate_primary_edited(sweep: Path, sampled: Path) -> None:
    _edit_json(sweep / "primary.json", primary=[{"treatment": "tiny_instruct", "control": "tiny_base", "kind": "gap"}])


def _mutate_primary_deleted(sweep: Path, sampled: Path) -> None:
    (sweep / "primary.json").unlink()


def _mutate_threshold_changed(sweep: Path, sampled: Path) -> None:
    record = json.loads((sweep / "primary.json").read_text())
    record["thresholds"]["min_effect_h"] = 0.0
    write_json(sweep / "primary.json", record)


@pytest.mark.slow
@pytest.mark.parametrize(("mutate", "needles"), [
    (_mutate_items_deleted, ["tiny_base): no items.jsonl", "tiny_instruct): no items.jsonl"]),
    (_mutate_templates_rewritten, ["the templates were rewritten after the run"]),
    (_mutate_base_sampled, ["different decoding: base (tiny_base) vs instruct (tiny_instruct) differ in",
                            "do_sample True vs False", "temperature 0.7 vs None"]),
    (_mutate_primary_edited, ["not the registered analysis", "edited or replaced after the runs"]),
    (_mutate_primary_deleted, ["not the registered analysis: no primary.json"]),
    (_mutate_threshold_changed, ["not the registered analysis", "edited or replaced after the runs"]),
], ids=["items_deleted", "templates_rewritten", "base_sampled", "primary_edited", "primary_deleted",
        "threshold_changed"])
def test_real_sweep_mutations_are_not_eligible(real_sweep: dict[str, Path], tmp_path: Path, mutate: Any,
                                               needles: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    sweep = shutil.copytree(real_sweep["sweep"], tmp_path / "sweep")
    mutate(sweep, real_sweep["sampled"])
    comp, out = _report(sweep, capsys)
    _not_eligible(comp["gate"], *needles)
    assert "**NOT_ELIGIBLE**" in out
