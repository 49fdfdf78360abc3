"""The capability atlas (issue 24): the experiments compose, the base format is chosen on train records
only, the capabilities are one Holm family, and a tiny atlas sweep writes atlas.json/.md, the heatmap
and a W&B run under one registration."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from posttrain.analysis.atlas import Cell, build_atlas, choose_format, render_markdown
from posttrain.analysis.comparison import JobRecords
from posttrain.analysis.gates import GateThresholds, cluster_info, item_ids_sha256
from posttrain.analysis.registration import registration_record, registration_sha256
from tests.test_sweeps import _posttrain, compose_job  # noqa: F401  (fixture)

CAPS = ["conversations", "instructions", "system_prompt", "structured_output", "length", "refusal"]

# ----------------------------------------------------------------------------- composition


def test_atlas_composes_every_job_of_the_qwen_pair(compose_job: Any) -> None:  # noqa: F811
    cfg = compose_job("+experiment=atlas", "model=qwen32b")
    params = cfg.hydra.sweeper.params
    assert params.model == "qwen32b,qwen32b_instruct" and params["atlas.role"] == "train,test"
    assert params.benchmark.split(",") == CAPS and list(cfg.atlas.capabilities) == CAPS
    assert params.prompt == "auto,instruction_cue,urial,raw"  # auto: transcript (base), chat template (instruct)
    assert cfg.hydra.callbacks.atlas._target_ == "posttrain.callbacks.AtlasCallback"
    assert cfg.hydra.callbacks.comparison.enabled is False
    seen = set()
    jobs = [(b, "test", "qwen32b") for b in CAPS] + [(b, "train", "qwen32b_instruct") for b in CAPS[:2]]
    for bench, role, model in jobs:  # a sample of the 96 jobs (composing each takes about 0.6 s)
        cfg = compose_job("+experiment=atlas", f"model={model}", f"benchmark={bench}", f"atlas.role={role}")
        assert cfg.model.name == model and cfg.benchmark.name == bench and cfg.benchmark.limit is None
        seen.add((bench, role, cfg.benchmark.split, cfg.scorer.name))
    splits = {(b, r): s for b, r, s, _ in seen}
    assert splits[("conversations", "train")] == "pilot" and splits[("conversations", "test")] == "main"
    assert splits[("instructions", "train")] == "train" and all(splits[(b, "test")] == "test" for b in CAPS[1:])
    # exact checks where the items are definitions; the judge where none is (conversations, refusals)
    assert {b: s for b, _, _, s in seen} == {**dict.fromkeys(CAPS[1:5], "verifiable"), "conversations": "llm",
                                              "refusal": "llm"}


def test_atlas_smollm2_is_one_model_under_five_formats(compose_job: Any) -> None:  # noqa: F811
    cfg = compose_job("+experiment=atlas_smollm2", "benchmark=conversations", "atlas.role=test")
    assert cfg.hydra.sweeper.params.prompt == "chat_template,transcript,instruction_cue,urial,raw"
    assert cfg.model.name == "smollm2_instruct" and cfg.atlas.base == cfg.atlas.instruct == "smollm2_instruct"
    assert (cfg.scorer.name, cfg.benchmark.split, cfg.benchmark.limit) == ("heuristic_triage", "main", 12)
    assert list(cfg.atlas.capabilities) == CAPS


@pytest.mark.slow
def test_cfg_job_of_the_atlas_composes_without_running(tmp_path: Path) -> None:
    proc = _posttrain("--cfg", "job", "+experiment=atlas", home=tmp_path / "home", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "path: Qwen/Qwen2.5-32B" in proc.stdout and "capabilities:" in proc.stdout


# ----------------------------------------------------------------------------- records in, atlas out


def _job(name: str, cap: str, split: str, model: str, fmt: str, verdicts: dict[str, str], clusters: dict[str, str],
         reg_sha: str) -> JobRecords:
    ids = list(verdicts)
    items = [{"id": i, "category": "c", "meta": {"template": clusters[i]}} for i in ids]
    instrument = {"version": "verifiable-test", "checks_sha256": "c" * 64}
    summary = {"model": model, "prompt_format": fmt, "scorer": "verifiable", "scorer_instrument": instrument,
               "registration_sha256": reg_sha, "status": "finished",
               "decoding": {"do_sample": False, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8,
                            "stop_strings": [], "seed": 0, "backend": "hf"},
               "model_identity": {"name": model, "path": model, "revision": None, "adapter": None,
                                  "adapter_sha256": None},
               "benchmark_info": {"name": cap, "split": split, "n": len(ids), "sha256": "b" * 64, "limit": None,
                                  "item_ids_sha256": item_ids_sha256(ids), "clusters": "templates",
                                  "clusters_sha256": cluster_info(items)["clusters_sha256"]}}
    rows = [{"item_id": i, "verdict": v, "scorer": "verifiable", "checks_sha256": "c" * 64, "category": "c"}
            for i, v in verdicts.items()]
    return JobRecords(name, summary, rows, None, items)


def _registration(caps: Sequence[str], formats: Sequence[str]) -> dict[str, Any]:
    record = registration_record([{"treatment": "ins@chat_template", "control": "base@best", "kind": "gap"}
                                  for _ in caps], GateThresholds(), benchmark=None)
    record["atlas"] = {"capabilities": list(caps), "base": "base", "instruct": "ins", "base_formats": list(formats),
                       "instruct_format": "chat_template", "selection": "train", "limits": {},
                       "family": {"method": "holm", "alpha": 0.01, "size": len(caps)}, "scorers": {},
                       "splits": {c: {"train": "train", "test": "test"} for c in caps}, "benchmarks": {}}
    return record


def _arm(n_clusters: int, size: int, passes: int, prefix: str = "") -> tuple[dict[str, str], dict[str, str]]:
    """n_clusters x size items; in each cluster the first ``passes`` items pass."""
    verdicts, clusters = {}, {}
    for g in range(n_clusters):
        for k in range(size):
            i = f"{prefix}t{g}-{k}"
            verdicts[i], clusters[i] = ("pass" if k < passes else "fail"), f"tpl{g}"
    return verdicts, clusters


def _capability(cap: str, reg_sha: str, n_clusters: int, size: int, base_pass: int, ins_pass: int,
                train_rates: dict[str, int]) -> list[JobRecords]:
    """Test jobs: base under each format (same result) and instruct; train jobs: base under each format."""
    jobs = []
    tv, tc = _arm(n_clusters, size, base_pass)
    for f in train_rates:
        jobs.append(_job(f"{cap}_test_base_{f}", cap, "test", "base", f, tv, tc, reg_sha))
        rv, rc = _arm(4, 5, train_rates[f], prefix="r")
        jobs.append(_job(f"{cap}_train_base_{f}", cap, "train", "base", f, rv, rc, reg_sha))
    iv, ic = _arm(n_clusters, size, ins_pass)
    jobs.append(_job(f"{cap}_test_ins", cap, "test", "ins", "chat_template", iv, ic, reg_sha))
    return jobs


def test_the_base_format_is_chosen_on_train_and_test_results_cannot_change_it() -> None:
    reg = _registration(["instructions"], ["transcript", "urial"])
    sha = registration_sha256(reg)
    jobs = _capability("instructions", sha, 30, 5, 1, 5, {"transcript": 1, "urial": 3})  # urial wins on train
    before = build_atlas(jobs, reg)
    assert before["registered"], before["registration_problems"]
    (row,) = before["rows"]
    assert row["base_format"] == "urial" and row["train_rates"] == {"transcript": 0.2, "urial": 0.6}
    assert row["base_label"] == "base@urial" and row["instruct_label"] == "ins@chat_template"
    # Make transcript far better than urial on the TEST split: the choice, made on train, stays urial
    flipped = []
    for j in jobs:
        if j.name == "instructions_test_base_transcript":
            j = dataclasses.replace(j, scores=[{**r, "verdict": "pass"} for r in j.scores])
        flipped.append(j)
    after = build_atlas(flipped, reg)
    assert after["rows"][0]["base_format"] == "urial"
    assert {c["label"]: c["rate"] for c in after["cells"] if c["role"] == "test"}["base@transcript"] == 1.0
    # A tie on train goes to the first registered format; test cells are refused outright
    tied = [Cell(j, "instructions", "train", "base", j.summary["prompt_format"], 10, 5, 0.5, (0.2, 0.8), 2, None)
            for j in jobs if "train" in j.name]
    assert choose_format(tied, "base", ["urial", "transcript"])["format"] == "urial"
    assert choose_format(tied, "base", ["transcript", "urial"])["format"] == "transcript"
    with pytest.raises(ValueError, match="train cells only"):
        choose_format([dataclasses.replace(tied[0], role="test")], "base", ["urial"])


def test_capabilities_are_one_holm_family() -> None:
    """A: 30 clusters leaning to instruct (p tiny). B: 8 clusters, all leaning: cluster p = 2/2^8 = 0.0078 < 0.01,
    so B's own gap gate PASSes; in the family of 3 B ranks second, Holm p = 2 x 0.0078 = 0.0156 >= 0.01: FAIL.
    C has no jobs: NOT_ELIGIBLE, counted in the family as p = 1."""
    caps = ["a", "b", "c"]
    reg = _registration(caps, ["transcript"])
    sha = registration_sha256(reg)
    jobs = (_capability("a", sha, 30, 5, 0, 5, {"transcript": 1})
            + _capability("b", sha, 8, 15, 1, 14, {"transcript": 1}))
    atlas = build_atlas(jobs, reg, sweep_dir="x")
    rows = {r["capability"]: r for r in atlas["rows"]}
    assert rows["a"]["verdict"] == "PASS" and rows["a"]["p"] < 1e-6
    assert rows["b"]["gate"]["verdict"] == "PASS" and rows["b"]["p"] == pytest.approx(2 / 2**8)
    assert rows["b"]["p_holm"] == pytest.approx(2 * 2 / 2**8) and rows["b"]["verdict"] == "FAIL"
    assert "Holm-adjusted p" in rows["b"]["reasons"][0]
    assert rows["c"]["verdict"] == "NOT_ELIGIBLE" and rows["c"]["p_holm"] == 1.0
    assert rows["b"]["base_rate"] == pytest.approx(8 / 120) and rows["b"]["instruct_rate"] == pytest.approx(112 / 120)
    # every cluster of b is alike (14 of 15 pass), so the cluster interval has zero width; Wilson's does not
    assert rows["b"]["instruct_ci95"] == pytest.approx([112 / 120, 112 / 120])
    (cell,) = [c for c in atlas["cells"] if c["label"] == "ins@chat_template" and c["capability"] == "b"]
    assert 0.85 < cell["wilson95"][0] < 112 / 120 < cell["wilson95"][1] < 0.97
    md = render_markdown(atlas)
    assert "| b | `transcript` |" in md and "**FAIL**" in md and "**PASS**" in md
    # Another registration than the jobs ran under: nothing may PASS
    other = _registration(caps, ["transcript", "raw"])
    assert {r["verdict"] for r in build_atlas(jobs, other)["rows"]} == {"NOT_ELIGIBLE"}


# ----------------------------------------------------------------------------- posttrain-report on an atlas sweep


def _without(obj: Any, keys: frozenset[str] = frozenset({"at", "registered_at"})) -> Any:
    """``obj`` without its timestamp fields (at any depth)."""
    if isinstance(obj, dict):
        return {k: _without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_without(v, keys) for v in obj]
    return obj


def _same_atlas_but_one_more_attempt(original: dict[str, Any], rebuilt: dict[str, Any]) -> None:
    """The rebuilt atlas.json equals the original except for timestamps and the ledger's attempt numbering:
    a rebuild is one more look at each question, and the ledger counts it (as posttrain-report does)."""
    strip = lambda a: _without({**a, "rows": [{k: v for k, v in r.items() if k != "attempts"}  # noqa: E731
                                              for r in a["rows"]]})
    assert strip(rebuilt) == strip(original)
    counted = [r for r in original["rows"] if r.get("attempts")]
    assert counted, "no row recorded a gate attempt: the comparison above would not see the ledger"
    for before, after in zip(original["rows"], rebuilt["rows"], strict=True):
        assert [a["question_key"] for a in after.get("attempts", [])] == [
            a["question_key"] for a in before.get("attempts", [])]
        assert [a["attempt"] for a in after.get("attempts", [])] == [a["attempt"] + 1 for a in before.get("attempts", [])]


def _write_sweep(folder: Path, jobs: Sequence[JobRecords], registration: dict[str, Any]) -> Path:
    """The job folders a sweep leaves (summary.json, scores.jsonl, items.jsonl) and its primary.json."""
    from posttrain.records import write_json

    for j in jobs:
        d = folder / j.name
        d.mkdir(parents=True)
        write_json(d / "summary.json", j.summary)
        (d / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in j.scores), encoding="utf-8")
        (d / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in j.items or []), encoding="utf-8")
    write_json(folder / "primary.json", registration)
    return folder


def test_posttrain_report_rebuilds_an_atlas_sweep_and_refuses_a_broken_seal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.analysis import report
    from posttrain.analysis.atlas import write_atlas

    reg = _registration(["a", "b"], ["transcript", "urial"])
    sha = registration_sha256(reg)
    jobs = (_capability("a", sha, 30, 5, 0, 5, {"transcript": 1, "urial": 2})
            + _capability("b", sha, 8, 15, 1, 14, {"transcript": 3, "urial": 1}))
    sweep = _write_sweep(tmp_path / "sweep", jobs, reg)
    write_atlas(sweep, plots=False)  # what the sweep's callback writes at its end
    original = json.loads((sweep / "atlas.json").read_text())
    assert original["registered"] and original["rows"][0]["verdict"] == "PASS"

    out = tmp_path / "rebuilt"
    assert report.main([str(sweep), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr()
    assert "# Capability atlas" in printed.out and "no comparison" in printed.err
    assert not (out / "comparison.json").exists() and not (sweep / "comparison.json").exists()
    _same_atlas_but_one_more_attempt(original, json.loads((out / "atlas.json").read_text()))
    assert (out / "atlas.md").read_text() == (sweep / "atlas.md").read_text()

    # An edited primary.json is no longer the registration the jobs ran under: refused, nothing written
    edited = json.loads((sweep / "primary.json").read_text())
    edited["atlas"]["base_formats"] = ["urial", "transcript"]  # another tie-break order, chosen after the results
    (sweep / "primary.json").write_text(json.dumps(edited), encoding="utf-8")
    refused = tmp_path / "refused"
    assert report.main([str(sweep), "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert "no longer match the registration sealed in primary.json" in err and "edited or replaced" in err
    assert "Restore the primary.json the jobs ran under, or rerun the sweep" in err and "nothing was written" in err
    assert not refused.exists()
    # No primary.json at all: still recognised as an atlas sweep (its atlas.json), and refused
    (sweep / "primary.json").unlink()
    assert report.main([str(sweep), "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert "is an atlas sweep (it holds an atlas.json)" in err and "primary.json is missing" in err
    assert not refused.exists()


# ----------------------------------------------------------------------------- a tiny atlas sweep (slow)


@pytest.fixture(scope="module")
def atlas_sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("atlas_tiny")
    sweep = root / "multirun" / "2026-01-31" / "12-00-00"
    proc = _posttrain("-m", "+experiment=atlas_tiny", f"hydra.sweep.dir={sweep}", f"cache_dir={shared_cache}",
                      home=root / "home", timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return sweep


@pytest.mark.slow
def test_tiny_atlas_sweep_writes_rows_heatmap_and_wandb_run(atlas_sweep: Path) -> None:
    from posttrain.analysis.registration import file_registration_sha256
    from posttrain.tracking.tracker import ATLAS_TABLES, read_offline_run

    sweep = atlas_sweep
    jobs = [d for d in sweep.iterdir() if (d / "summary.json").is_file()]
    assert len(jobs) == 16  # 2 benchmarks x 2 models x 2 formats x 2 splits
    reg = json.loads((sweep / "primary.json").read_text())
    sha = file_registration_sha256(sweep / "primary.json")
    assert reg["atlas"]["capabilities"] == ["conversations", "instructions"]
    assert reg["atlas"]["family"]["size"] == 2 and reg["atlas"]["base"] == "tiny_base"
    assert reg["atlas"]["instruct"] == "tiny_instruct" and len(reg["primary"]) == 2
    assert all(json.loads((d / "summary.json").read_text())["registration_sha256"] == sha for d in jobs)
    atlas = json.loads((sweep / "atlas.json").read_text())
    assert atlas["registered"] and [r["capability"] for r in atlas["rows"]] == ["conversations", "instructions"]
    for r in atlas["rows"]:
        assert r["base_format"] in ("transcript", "instruction_cue")
        assert r["base_label"] == f"tiny_base@{r['base_format']}" and r["instruct_label"] == "tiny_instruct@chat_template"
        for side in ("base", "instruct"):
            assert r[f"{side}_rate"] is not None and r[f"{side}_n"] == 4
            lo, hi = r[f"{side}_ci95"]
            assert 0.0 <= lo <= r[f"{side}_rate"] <= hi <= 1.0
        assert r["verdict"] in ("PASS", "FAIL", "NOT_ELIGIBLE") and r["reasons"]
        assert r["p_holm"] is not None
    conv = atlas["rows"][0]  # triaged: it can never gate, and says so
    assert conv["verdict"] == "NOT_ELIGIBLE" and any("heuristic_triage" in x for x in conv["reasons"])
    assert {(c["role"], c["label"]) for c in atlas["cells"] if c["capability"] == "instructions"} == {
        (role, lab) for role in ("train", "test") for lab in ("tiny_base@transcript", "tiny_base@instruction_cue",
                                                             "tiny_instruct@chat_template", "tiny_instruct@instruction_cue")}
    assert atlas["files"]["plots"] == ["atlas_heatmap.png"] and (sweep / "atlas_heatmap.png").stat().st_size > 1000
    md = (sweep / "atlas.md").read_text()
    assert "| conversations |" in md and "| instructions |" in md and "NOT_ELIGIBLE" in md
    assert "## The format choice (train split only)" in md
    run = read_offline_run(next((sweep / "wandb").glob("offline-run-*")))
    rows = run["tables"][ATLAS_TABLES[0]]
    assert [r[0] for r in rows["data"]] == ["conversations", "instructions"]
    assert len(run["tables"][ATLAS_TABLES[1]]["data"]) == 16
    assert run["summary"]["atlas/verdict/instructions"] == atlas["rows"][1]["verdict"]


@pytest.mark.slow
def test_a_failing_heatmap_never_loses_the_atlas_records(atlas_sweep: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.analysis import atlas as atlas_mod

    copy = tmp_path / "sweep"
    shutil.copytree(atlas_sweep, copy, ignore=shutil.ignore_patterns("atlas*", "wandb"))

    def broken(a: dict[str, Any]) -> Any:
        raise RuntimeError("no figure today")

    monkeypatch.setattr(atlas_mod, "heatmap_figure", broken)
    out = atlas_mod.write_atlas(copy)
    assert out["plot_errors"] == [{"plot": "atlas_heatmap.png", "error": "RuntimeError: no figure today"}]
    assert json.loads((copy / "atlas.json").read_text())["rows"] and not (copy / "atlas_heatmap.png").exists()
    assert "## Plots not written" in (copy / "atlas.md").read_text()


@pytest.mark.slow
def test_posttrain_report_rebuilds_the_tiny_atlas_from_its_job_records(atlas_sweep: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.analysis import report

    monkeypatch.setenv("POSTTRAIN_HOME", str(atlas_sweep.parents[2] / "home"))  # the sweep's own gate ledger
    out = tmp_path / "rebuilt"
    assert report.main([str(atlas_sweep), "--out", str(out)]) == 0
    original = json.loads((atlas_sweep / "atlas.json").read_text())
    _same_atlas_but_one_more_attempt(original, json.loads((out / "atlas.json").read_text()))
    assert (out / "atlas.md").read_text() == (atlas_sweep / "atlas.md").read_text()
    assert (out / "atlas_heatmap.png").stat().st_size > 1000
    assert not (out / "comparison.json").exists()
