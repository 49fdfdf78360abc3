"""posttrain.analysis.comparison / posttrain.analysis.report on sweep folders built by hand from known pass/fail tables.

Every number is checked against scipy / statsmodels computed here from the same tables, through
the console entrypoint ``posttrain.analysis.report.main``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from posttrain.analysis.comparison import JobRecords, build_comparison, power_note
from posttrain.analysis.gates import HEURISTIC_REASON, GateThresholds, cluster_info
from posttrain.analysis.registration import registration_record, registration_sha256
from posttrain.analysis.report import main as report_main
from posttrain.analysis.report import render_markdown
from posttrain.analysis.stats import design_power, paired_power
from posttrain.records import append_jsonl, write_json

CATS = ("constraint_updates", "memory", "preferences", "topic_continuity")
IDS = [f"conv-{k:03d}" for k in range(40)]


def _category(item_id: str) -> str:
    return CATS[int(item_id.split("-")[1]) % 4] if item_id.startswith("conv-") else "memory"


def _verdicts() -> dict[str, dict[str, str]]:
    """Three models on 40 items, with an error each for base/instruct, 2 ids alt never scored and
    one id only instruct scored."""
    base = {i: ("pass" if k < 6 else "fail") for k, i in enumerate(IDS)}
    instruct = {i: ("pass" if 4 <= k < 34 else "fail") for k, i in enumerate(IDS)}
    alt = {i: ("pass" if k < 10 or 20 <= k < 25 else "fail") for k, i in enumerate(IDS)}
    base[IDS[39]] = "error"
    instruct[IDS[38]] = "error"
    instruct["extra-001"] = "pass"
    del alt[IDS[36]], alt[IDS[37]]
    return {"tiny_base": base, "tiny_instruct": instruct, "tiny_alt_base": alt}


KINDS = {"tiny_base": "base", "tiny_instruct": "instruct", "tiny_alt_base": "base"}
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 16, "stop_strings": [],
          "seed": None, "backend": "hf"}


def _stamp(sweep: Path) -> str:
    """Record the sweep's registration sha256 in every job's summary, as the eval stage does."""
    from posttrain.analysis.registration import file_registration_sha256

    sha = file_registration_sha256(sweep / "primary.json")
    assert sha is not None
    for job in sweep.iterdir():
        if (job / "summary.json").is_file():
            write_json(job / "summary.json", json.loads((job / "summary.json").read_text()) | {"registration_sha256": sha})
    return sha


def _write_job(sweep: Path, num: int, model: str, verdicts: dict[str, str], *, scorer: str = "heuristic_triage",
               kind: str | None = None, judge: str | None = None, template: str | None = None) -> Path:
    job = sweep / f"{num}_{model}"
    rows = [{"item_id": i, "category": _category(i), "model": model, "verdict": v, "scorer": scorer, "judge": judge,
             "template_version": template, "reply_chars": 100 + 7 * n} for n, (i, v) in enumerate(verdicts.items())]
    append_jsonl(job / "scores.jsonl", rows)
    append_jsonl(job / "generations.jsonl", [
        {"item_id": i, "model": model, "turns": [{"turn": 0, "user": f"Hello from {i}", "reply": f"{model} says {v}"}]}
        for i, v in verdicts.items()])
    write_json(job / "summary.json", {
        "status": "finished", "stage": "eval", "model": model, "model_kind": kind or KINDS.get(model, "base"),
        "scorer": scorer, "judge": judge,
        "benchmark_info": {"name": "conversations", "split": "pilot", "n": 40, "sha256": "ab" * 32},
        "length_bias": {"n": len(rows), "auc": 0.5, "flagged": False, "reason": "hand-made"},
        "decoding": dict(GREEDY),
    })
    write_json(job / "sentinel.json", {"version": "sentinel-v1", "n_probes": 6, "model": model, "formats": {
        "raw": {"stopped_rate": 0.5, "answer_rate": 0.25, "mean_new_tokens": 12.0, "probes": []}}})
    return job


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-01-31" / "12-00-00"
    for num, (model, v) in enumerate(_verdicts().items()):
        _write_job(root, num, model, v)
    return root


def _report(sweep: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    assert report_main([str(sweep), "--out", str(out), "--no-plots"]) == 0
    return json.loads((out / "comparison.json").read_text()), capsys.readouterr().out


def _table(a: dict[str, str], b: dict[str, str]) -> tuple[int, int, int, int]:
    """(both, a_only, b_only, neither) over ids both scored without error, counted independently."""
    ids = [i for i in a if i in b and "error" not in (a[i], b[i])]
    both = sum(a[i] == "pass" and b[i] == "pass" for i in ids)
    a_only = sum(a[i] == "pass" and b[i] == "fail" for i in ids)
    b_only = sum(a[i] == "fail" and b[i] == "pass" for i in ids)
    return both, a_only, b_only, len(ids) - both - a_only - b_only


def test_pairs_match_scipy_and_statsmodels(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comp, _ = _report(sweep, tmp_path / "out", capsys)
    v = _verdicts()
    assert [(p["a"], p["b"]) for p in comp["pairs"]] == [
        ("tiny_base", "tiny_instruct"), ("tiny_base", "tiny_alt_base"), ("tiny_instruct", "tiny_alt_base")]
    for p in comp["pairs"]:
        both, a_only, b_only, neither = _table(v[p["a"]], v[p["b"]])
        assert (p["both"], p["a_only"], p["b_only"], p["neither"]) == (both, a_only, b_only, neither)
        n = both + a_only + b_only + neither
        assert p["n_paired"] == n
        exact = sm_mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue
        assert p["mcnemar_p"] == pytest.approx(exact, rel=1e-9)
        assert p["mcnemar_p"] == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue, rel=1e-9)
        m = a_only + b_only
        mid = 2 * min(sps.binom.cdf(a_only, m, 0.5), sps.binom.sf(a_only - 1, m, 0.5)) - sps.binom.pmf(a_only, m, 0.5)
        assert p["mcnemar_mid_p"] == pytest.approx(min(1.0, max(0.0, mid)), rel=1e-9)
        # Cohen's h is b − a: positive when b (the later model in the sweep) does better.
        h = proportion_effectsize((both + b_only) / n, (both + a_only) / n)
        assert p["cohens_h"] == pytest.approx(h, rel=1e-9)
    # The hand-worked anchor: base vs instruct on 38 paired items.
    first = comp["pairs"][0]
    assert (first["both"], first["a_only"], first["b_only"], first["neither"]) == (2, 4, 28, 4)  # k<6 vs 4<=k<34, k=38,39 errors
    assert first["cohens_h"] > 0
    # No items.jsonl here: each item is its own cluster, so the cluster sign-flip p is the exact McNemar p
    # and the conservative p equals it. No primary.json either: base vs instruct is the (flagged) primary;
    # Holm runs within each family: the primary alone (unchanged), the two secondary pairs together.
    assert all(p["cluster_p"] == pytest.approx(p["mcnemar_p"], rel=1e-9) and p["p"] == p["cluster_p"]
               or p["p"] == p["mcnemar_p"] for p in comp["pairs"])
    assert [p["family"] for p in comp["pairs"]] == ["primary", "secondary", "secondary"]
    assert comp["pairs"][0]["p_holm"] == comp["pairs"][0]["p"]
    holm = multipletests([p["p"] for p in comp["pairs"][1:]], method="holm")[1]
    assert [p["p_holm"] for p in comp["pairs"][1:]] == pytest.approx(list(holm), rel=1e-9)
    assert any("no pre-registered primary pair" in w for w in comp["warnings"])


def test_models_and_categories_match_wilson(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comp, _ = _report(sweep, tmp_path / "out", capsys)
    for m in comp["models"]:
        v = _verdicts()[m["model"]]
        k, n = sum(x == "pass" for x in v.values()), sum(x in ("pass", "fail") for x in v.values())
        assert (m["n_pass"], m["n"], m["n_error"]) == (k, n, sum(x == "error" for x in v.values()))
        assert m["kind"] == KINDS[m["model"]] and m["scorer"] == "heuristic_triage" and m["gate_eligible"] is False
        assert m["success_rate"] == pytest.approx(k / n)
        assert m["ci95"] == pytest.approx(list(proportion_confint(k, n, method="wilson")), rel=1e-9)
        for c in CATS:
            cv = [x for i, x in v.items() if _category(i) == c]
            kc, nc = cv.count("pass"), sum(x in ("pass", "fail") for x in cv)
            block = comp["per_category"]["models"][m["model"]][c]
            assert (block["n_pass"], block["n"]) == (kc, nc)
            assert block["ci95"] == pytest.approx(list(proportion_confint(kc, nc, method="wilson")), rel=1e-9)
    t = GateThresholds()
    for p in comp["per_category"]["pairs"]:
        va, vb = _verdicts()[p["a"]], _verdicts()[p["b"]]
        both, a_only, b_only, neither = _table({i: x for i, x in va.items() if _category(i) == p["category"]},
                                               {i: x for i, x in vb.items() if _category(i) == p["category"]})
        assert (p["a_only"], p["b_only"], p["n_paired"]) == (a_only, b_only, both + a_only + b_only + neither)
        assert p["mcnemar_p"] == pytest.approx(sm_mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
        # power for the OBSERVED discordance at this n (singleton clusters: design effect 1)
        n = p["n_paired"]
        power = paired_power(b_only / n, a_only / n, n, t.mcnemar_alpha)
        assert p["power_observed"] == pytest.approx(power) and p["underpowered"] is (power < 0.8)
        assert p["exploratory"] is True
    holm = multipletests([p["p"] for p in comp["per_category"]["pairs"]], method="holm")[1]
    assert [p["p_holm"] for p in comp["per_category"]["pairs"]] == pytest.approx(list(holm), rel=1e-9)
    assert comp["sentinel"]["tiny_base"]["formats"]["raw"]["answer_rate"] == 0.25
    assert comp["length_bias"]["tiny_alt_base"]["reason"] == "hand-made"


def test_unpaired_items_are_reported_with_reasons(sweep: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    comp, out = _report(sweep, tmp_path / "out", capsys)
    pairs = {(p["a"], p["b"]): {u["item_id"]: u["reason"] for u in p["unpaired"]} for p in comp["pairs"]}
    assert pairs[("tiny_base", "tiny_instruct")] == {
        IDS[38]: "verdict=error for tiny_instruct", IDS[39]: "verdict=error for tiny_base",
        "extra-001": "not scored for tiny_base"}
    assert pairs[("tiny_base", "tiny_alt_base")] == {
        IDS[36]: "not scored for tiny_alt_base", IDS[37]: "not scored for tiny_alt_base",
        IDS[39]: "verdict=error for tiny_base"}
    assert "could not pair 10 item(s):" in out
    assert f"tiny_base vs tiny_alt_base: {IDS[36]}: not scored for tiny_alt_base" in out
    assert "| model | kind | scorer |" in out and "## Gate" in out  # the comparison.md table, on stdout


def test_gate_over_heuristic_runs_is_not_eligible(sweep: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    comp, _ = _report(sweep, tmp_path / "out", capsys)
    g = comp["gate"]
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert (g["base_model"], g["instruct_model"]) == ("tiny_base", "tiny_instruct")
    assert HEURISTIC_REASON in g["reasons"]
    assert any("unpaired items" in r for r in g["reasons"])  # extra-001 was scored for instruct only
    assert [c["name"] for c in g["checks"]] == ["base_success_rate", "instruct_success_rate", "mcnemar_p", "cluster_p",
                                                "cohens_h"]
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "**NOT_ELIGIBLE**" in md and "heuristic_triage is triage only" in md


INSTRUMENT = {"provider": "anthropic", "model": "claude-judge-1", "template_version": "conv-judge-v2",
              "template_sha256": "ab" * 32}


def _llm_jobs() -> list[JobRecords]:
    """Base 25% vs instruct 85% on 200 clean items in 40 templates, judged by one LLM judge (records as eval writes them)."""
    ids = [f"conv-{k:03d}" for k in range(200)]
    base = {i: "pass" if k % 4 == 0 else "fail" for k, i in enumerate(ids)}
    instruct = {i: "fail" if k % 20 in (1, 2, 3) else "pass" for k, i in enumerate(ids)}
    items = [{"id": i, "category": _category(i), "meta": {"template": f"t{k // 5}"}} for k, i in enumerate(ids)]
    bench = {"name": "conversations", "split": "main", "limit": None, "n": 200, "sha256": "cd" * 32,
             **cluster_info(items)}
    jobs = []
    for name, v in (("qwen32b", base), ("qwen32b_instruct", instruct)):
        rows = [{"item_id": i, "category": _category(i), "verdict": x, "scorer": "llm", "judge": "claude",
                 "judge_provider": "anthropic", "judge_model": "claude-judge-1", "template_version": "conv-judge-v2",
                 "template_sha256": "ab" * 32} for i, x in v.items()]
        summary = {"model": name, "model_kind": "base" if name == "qwen32b" else "instruct", "scorer": "llm",
                   "judge": "claude", "judge_instrument": INSTRUMENT, "benchmark_info": bench,
                   "calibration": {"key": "cal-1", "kappa": 0.85, "n": 30, "applies": True, "reason": None},
                   "decoding": dict(GREEDY)}
        jobs.append(JobRecords(f"{len(jobs)}_{name}", summary, rows, None, items))
    return jobs


def test_gate_with_an_uncalibrated_judge_says_what_to_run(posttrain_home: Path) -> None:
    comp = build_comparison(_llm_jobs())  # the real calibration store under POSTTRAIN_HOME: empty
    g = comp["gate"]
    assert g["verdict"] == "NOT_ELIGIBLE"
    assert any("uncalibrated" in r or "calibrat" in r for r in g["reasons"])
    assert any("qwen32b" in r and "posttrain-calibrate" in r for r in g["reasons"]), g["reasons"]
    assert g["calibration"]["qwen32b"]["judge"] == "claude"
    assert g["calibration"]["qwen32b"]["template_version"] == "conv-judge-v2"


def test_gate_passes_with_a_calibrated_judge() -> None:
    seen: list[tuple[str, str, float]] = []

    def lookup(judge: str, template: str, min_kappa: float, *, instrument: Any = None,
               **_: Any) -> tuple[bool, str, float | None]:
        seen.append((judge, template, min_kappa))
        assert instrument == INSTRUMENT  # the calibration is looked up for the instrument that judged
        return True, "kappa 0.85 >= 0.70", 0.85

    jobs = _llm_jobs()
    record = registration_record([{"treatment": "qwen32b_instruct", "control": "qwen32b"}], GateThresholds())
    for j in jobs:
        j.summary["registration_sha256"] = registration_sha256(record)
    comp = build_comparison(jobs, calibration=lookup, registration=record)
    assert seen and seen[0] == ("claude", "conv-judge-v2", 0.7)
    g = comp["gate"]
    assert g["verdict"] == "PASS" and g["n_paired"] == 200, g["reasons"]
    assert g["primary_source"] == "pre-registered" and g["clusters_recorded"] is True
    assert g["observed"]["n_clusters"] == 40 and g["observed"]["cluster_p"] == pytest.approx(2 / 2**30)  # 30 templates differ
    assert all(m["gate_eligible"] for m in comp["models"])
    # Power is for the OBSERVED effect: constraint_updates (k % 4 == 0) has no discordant item, so no
    # power at all; the other categories (a gap of .8 on 50 items) have plenty.
    power = {p["category"]: (p["power_observed"], p["underpowered"]) for p in comp["per_category"]["pairs"]}
    assert power["constraint_updates"] == (0.0, True)
    assert all(pw > 0.8 and not under for c, (pw, under) in power.items() if c != "constraint_updates")


def test_gate_not_applicable_without_an_instruct_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sweep"
    v = _verdicts()
    _write_job(root, 0, "tiny_base", v["tiny_base"])
    _write_job(root, 1, "tiny_base+sft", v["tiny_instruct"], kind="base")
    comp, _ = _report(root, tmp_path / "out", capsys)
    assert comp["gate"]["verdict"] == "NOT_APPLICABLE"
    assert "instruct-kind" in comp["gate"]["reason"]
    assert [m["model"] for m in comp["models"]] == ["tiny_base", "tiny_base+sft"]


def test_missing_and_never_started_jobs_are_listed(sweep: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (sweep / "3_tiny_extra" / ".hydra").mkdir(parents=True)  # started, never wrote a summary
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      model: tiny_base,tiny_instruct,tiny_alt_base,tiny_extra,tiny_more\n"
        "  overrides:\n    task:\n    - +experiment=x\n")
    comp, out = _report(sweep, tmp_path / "out", capsys)
    missing = {m["job"]: m for m in comp["missing_jobs"]}
    assert set(missing) == {"3_tiny_extra", "4"}
    assert "no summary.json" in missing["3_tiny_extra"]["reason"]
    assert "never started" in missing["4"]["reason"] and missing["4"]["overrides"] == ["model=tiny_more",
                                                                                       "+experiment=x"]
    assert "missing job 4: never started" in out
    assert len(comp["models"]) == 3


def test_markdown_is_rendered_from_the_json(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(sweep)]) == 0  # default --out: the sweep folder, with plots
    comp = json.loads((sweep / "comparison.json").read_text())
    assert (sweep / "comparison.md").read_text() == render_markdown(comp)
    assert comp["files"]["plots"] == ["success_rates.png", "discordant_pairs.png"]
    for name in comp["files"]["plots"]:
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (sweep / "comparison.md").read_text()
    assert "UNDERPOWERED" in md and "## Sentinel" in md and "![success_rates](success_rates.png)" in md


def test_report_refuses_a_folder_without_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(tmp_path)]) == 2
    assert "holds no job folders" in capsys.readouterr().err
    assert report_main([str(tmp_path / "nope")]) == 2


@pytest.mark.parametrize("n", [40, 200])
def test_power_note_matches_design_power(n: int) -> None:
    t = GateThresholds()
    text = power_note(n, t)
    d = design_power(0.30, 0.80, n, 0.01)
    dc = design_power(0.30, 0.80, n // 4, 0.01)
    assert f"With {n} paired conversations" in text and f"{d.power:.0%} power" in text
    assert f"80% power needs {d.n_for_80} conversations and 90% needs {d.n_for_90}" in text
    assert f"({n} / 4 = {n // 4} conversations each) the power is {dc.power:.0%}" in text
    assert f"Cohen's h = {proportion_effectsize(0.8, 0.3):.2f}" in text
    assert ("underpowered" in text) is (dc.power < 0.8)
    assert "\n" not in text


def test_power_note_reads_a_config_node_and_refuses_zero() -> None:
    from omegaconf import OmegaConf

    gate = OmegaConf.create({"base_max_success": 0.2, "instruct_min_success": 0.6, "mcnemar_alpha": 0.05})
    assert "alpha=0.05" in power_note(100, gate) and "base 20% vs instruct 60%" in power_note(100, gate)
    with pytest.raises(ValueError, match="n_items"):
        power_note(0, GateThresholds())
    assert "no number of conversations" in power_note(50, GateThresholds(base_max_success=0.5, instruct_min_success=0.5))


def _callback_config(sweep: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "job": {"num": 1}},
                             "gate": {"base_max_success": 0.3, "instruct_min_success": 0.8, "mcnemar_alpha": 0.01},
                             "tracking": {"mode": "disabled", "project": "posttrain", "entity": None}})


def test_callback_writes_a_partial_comparison_when_a_job_fails(sweep: Path) -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from posttrain.callbacks import ComparisonCallback

    failed = sweep / "1_tiny_instruct"
    (failed / "summary.json").unlink()
    (failed / ".hydra").mkdir()
    cb = ComparisonCallback()
    cfg = _callback_config(sweep)
    cb.on_multirun_start(cfg)
    ok = JobReturn()
    ok.status = JobStatus.COMPLETED
    cb.on_job_end(cfg, ok)
    assert not (sweep / "comparison.json").exists()  # nothing failed yet: wait for on_multirun_end
    bad = JobReturn()
    bad.status = JobStatus.FAILED
    cb.on_job_end(cfg, bad)
    comp = json.loads((sweep / "comparison.json").read_text())
    assert [m["model"] for m in comp["models"]] == ["tiny_base", "tiny_alt_base"]
    assert comp["missing_jobs"][0]["job"] == "1_tiny_instruct"
    assert "instruct-kind" in comp["gate"]["reason"]


def test_callback_on_multirun_end_writes_everything(sweep: Path) -> None:
    from posttrain.callbacks import ComparisonCallback, sweep_group

    cb = ComparisonCallback()
    cfg = _callback_config(sweep)
    cb.on_multirun_start(cfg)
    cb.on_multirun_end(cfg)
    for name in ("comparison.json", "comparison.md", "success_rates.png", "discordant_pairs.png", "tracking.json"):
        assert (sweep / name).is_file(), name
    assert sweep_group(sweep) == "2026-01-31_12-00-00"
    cb.on_multirun_end(_callback_config(sweep / "does-not-exist"))  # logs a warning, never raises


def test_warnings_for_repeated_ids_and_different_item_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sweep"
    v = _verdicts()
    _write_job(root, 0, "tiny_base", v["tiny_base"])
    job = _write_job(root, 1, "tiny_instruct", v["tiny_instruct"])
    append_jsonl(job / "scores.jsonl", [{"item_id": IDS[0], "category": CATS[0], "verdict": "pass",
                                         "scorer": "heuristic_triage"}])  # a rescored item: the last row counts
    summary = json.loads((job / "summary.json").read_text())
    summary["benchmark_info"]["split"] = "full"
    write_json(job / "summary.json", summary)
    comp, out = _report(root, tmp_path / "out", capsys)
    assert any("repeats item ids" in w for w in comp["warnings"])
    assert any("did not evaluate the same items" in w for w in comp["warnings"])
    instruct = comp["models"][1]
    assert instruct["n_items"] == 41 and instruct["n_pass"] == 32  # 30 + extra-001 + conv-000 (rescored), counted once
    assert "> warning: tiny_instruct: scores.jsonl repeats item ids" in out


@pytest.mark.parametrize("experiment", ["three_way", "three_way_tiny", "four_model", "four_model_tiny"])
def test_every_experiment_pre_registers_a_primary_pair(compose: Any, experiment: str, tmp_path: Path) -> None:
    """Each experiment names its primary pair in gate.primary; the sweep callback writes it to
    <sweep>/primary.json when the multirun starts, before any job runs, and keeps an existing file."""
    from posttrain.callbacks import write_primary

    cfg = compose(f"+experiment={experiment}")
    expected = {"three_way": ("qwen32b_instruct", "qwen32b", "gap"),
                "three_way_tiny": ("tiny_instruct", "tiny_base", "gap"),
                "four_model": ("qwen32b+dpo", "qwen32b+dpo_only", "superiority"),
                "four_model_tiny": ("tiny_base+dpo", "tiny_base+dpo_only", "superiority")}[experiment]
    assert [(p.treatment, p.control, p.kind) for p in cfg.gate.primary] == [expected]
    path = write_primary(cfg, tmp_path / "sweep")
    record = json.loads(path.read_text())
    assert record["primary"] == [{"treatment": expected[0], "control": expected[1], "kind": expected[2]}]
    assert record["gate"]["mcnemar_alpha"] == 0.01 and record["registered_at"]
    # Sealed: every number that decides, and the benchmark's identity read before any job runs
    assert record["thresholds"]["mcnemar_alpha"] == 0.01 and record["thresholds"]["min_effect_h"] == 0.2
    assert record["thresholds"]["rates"] == "point" and "min_paired" in record["thresholds"]
    assert record["benchmark"]["name"] == "conversations" and len(record["benchmark"]["sha256"]) == 64
    assert len(record["benchmark"]["clusters_sha256"]) == 64
    if experiment.startswith("four_model"):  # SFT->DPO > SFT and every trained variant > base: Holm family
        assert [(p["treatment"], p["control"]) for p in record["secondary"]] == [
            (f"{expected[1].split('+')[0]}+{t}", f"{expected[1].split('+')[0]}{c}")
            for t, c in (("dpo", "+sft"), ("sft", ""), ("dpo", ""), ("dpo_only", ""))]
    path.write_text(json.dumps({"primary": [{"treatment": "x", "control": "y"}]}))
    assert json.loads(write_primary(cfg, tmp_path / "sweep").read_text())["primary"][0]["treatment"] == "x"


def test_report_on_the_tiny_three_way_sweep(sweep: Path, tmp_path: Path, compose: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """posttrain-report on the three-way tiny sweep (records as the eval stage writes them, items.jsonl
    with their templates, primary.json from the experiment's config) prints the item-level and
    cluster-level results, the primary test, the dropped items and the worst-case numbers."""
    from posttrain.callbacks import write_primary

    for job in sorted(d for d in sweep.iterdir() if d.is_dir()):
        append_jsonl(job / "items.jsonl", [{"id": i, "category": _category(i), "meta": {"template": f"tpl_{k // 4}"}}
                                           for k, i in enumerate(IDS)])
    write_primary(compose("+experiment=three_way_tiny"), sweep)
    _stamp(sweep)
    comp, out = _report(sweep, tmp_path / "out", capsys)
    g = comp["gate"]
    assert comp["primary"] == {"pairs": [{"control": "tiny_base", "treatment": "tiny_instruct", "kind": "gap"}],
                               "source": "pre-registered", "secondary": []}
    assert (g["base_model"], g["instruct_model"], g["verdict"]) == ("tiny_base", "tiny_instruct", "NOT_ELIGIBLE")
    assert g["clusters_recorded"] is True and g["observed"]["n_clusters"] == 10
    assert g["n_error_items"] == 2 and g["worst_case"]["n_paired"] == 40
    # Worst case on conv-038 (instruct error -> fail) and conv-039 (base error -> pass):
    # base (6 + 1)/40, instruct 30/40 (conv-038 was outside 4 <= k < 34 anyway).
    assert g["worst_case"]["base_success"] == pytest.approx(7 / 40)
    assert g["worst_case"]["instruct_success"] == pytest.approx(30 / 40)
    for text in ("## Gate: the primary test", "Primary pair(s): `tiny_instruct` vs `tiny_base` (gap) (pre-registered)",
                 "| observed (errors dropped) | worst case (2 error items against the claim) |",
                 "item-level exact McNemar p", "cluster-level p (cluster sign-flip (exact))",
                 "base success [cluster 95% CI]", "## What each pair dropped", "## Pairs: item level and cluster level",
                 "secondary (exploratory)", "## Per category (exploratory)", "power (observed effect)",
                 "too little evidence: 38 paired items < gate.min_paired 100"):
        assert text in out, text
    dropped = next(line for line in out.splitlines() if line.startswith("| tiny_base | tiny_instruct | 2 | 1 | 38 |"))
    assert "0.025" in dropped and "0.0244" in dropped  # error rates 1/40 and 1/41


def test_power_note_takes_the_design_effect() -> None:
    """With D = 2, 200 clustered conversations are worth 200 / 2 = 100 independent ones, and the 26
    conversations for 80% power at 0.30 vs 0.80 become 2 · 26 = 52."""
    text = power_note(200, GateThresholds(), design_effect=2.0)
    d = design_power(0.30, 0.80, 100, 0.01)
    assert "observed design effect 2.00 makes them worth 200 / 2.00 = 100 independent ones" in text
    assert f"({d.power:.0%} power); 80% power needs 52 conversations" in text
    assert "design effect" not in power_note(200, GateThresholds())  # independent items: no clustering sentence


def test_calibration_lookup_gets_the_gate_item_minimum() -> None:
    """gate.min_calibration_items reaches the calibration lookup (not the store's default of 30)."""
    from posttrain.analysis.gates import GateThresholds

    asked: list[Any] = []

    def lookup(judge: str, template: str, min_kappa: float, **kw: Any) -> tuple[bool, str, float | None]:
        asked.append(kw.get("min_items"))
        return False, "too few labelled items", None

    build_comparison(_llm_jobs(), GateThresholds(min_calibration_items=50), calibration=lookup,
                     primary=[{"treatment": "qwen32b_instruct", "control": "qwen32b"}])
    assert asked and set(asked) == {50}


def test_recompute_gate_equals_the_written_gate(sweep: Path, compose: Any) -> None:
    """recompute_gate (what training calls) gives exactly comparison.json's gate block, from the records and
    primary.json alone; a record changed afterwards changes the recomputation, not the file."""
    from posttrain.analysis.report import recompute_gate, write_comparison
    from posttrain.callbacks import write_primary

    write_primary(compose("+experiment=three_way_tiny"), sweep)
    write_comparison(sweep, plots=False)
    written = json.loads((sweep / "comparison.json").read_text())["gate"]
    assert recompute_gate(sweep) == written
    job = sweep / "1_tiny_instruct"
    (job / "scores.jsonl").write_text((job / "scores.jsonl").read_text().replace('"verdict": "fail"', '"verdict": "pass"'))
    again = recompute_gate(sweep)
    assert again["instruct_success"] != written["instruct_success"]
    assert json.loads((sweep / "comparison.json").read_text())["gate"] == written
