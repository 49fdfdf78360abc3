"""Sweeps as experiments: the experiment configs compose, a whole tiny sweep runs from one command,
the callback leaves the comparison and one W&B run per job plus the comparison run, the report
rebuilds the same comparison from the records, and the analysis notebook executes on the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posttrain.paths import conf_dir
from tests.helpers import REPO

CONF_DIR = conf_dir()
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
GROUP = "2026-01-31_12-00-00"  # the sweep folders below are .../multirun/2026-01-31/12-00-00


def _env(home: Path, **extra: str) -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "POSTTRAIN_HOME": str(home),
                         "TOKENIZERS_PARALLELISM": "false"} | extra


def _posttrain(*args: str, home: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posttrain", *args], cwd=REPO, env=_env(home, **env),
                          capture_output=True, text=True, timeout=timeout)


def _run_notebook(sweep: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import nbclient
    import nbformat

    monkeypatch.setenv("POSTTRAIN_SWEEP_DIR", str(sweep))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's own kernel name; jupyter_client starts it with this interpreter
    # (sys.executable), so the kernel sees the same venv and the editable posttrain install.
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _outputs(nb: Any) -> str:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(texts)


# ----------------------------------------------------------------------------- composition (fast)


@pytest.fixture()
def compose_job(shared_cache: Path) -> Iterator[Any]:
    """Compose one job of an experiment (its sweep value given as an override), with Hydra's node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from posttrain.config import register_configs

    register_configs()

    def _compose(*overrides: str) -> Any:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # the ${hydra:...} resolver reads it, as in a real job
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def test_three_way_composes_every_job(compose_job: Any) -> None:
    for model, kind in (("qwen32b", "base"), ("qwen32b_instruct", "instruct"), ("llama8b", "base")):
        cfg = compose_job("+experiment=three_way", f"model={model}")
        assert (cfg.model.name, cfg.model.kind) == (model, kind)
        assert (cfg.scorer.name, cfg.judge.name, cfg.benchmark.name) == ("llm", "claude", "conversations")
        assert cfg.benchmark.split == "full" and cfg.benchmark.limit is None
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params.model == "qwen32b,qwen32b_instruct,llama8b"
    assert cfg.hydra.callbacks.comparison._target_ == "posttrain.callbacks.ComparisonCallback"


def test_three_way_tiny_is_small_and_paired(compose_job: Any) -> None:
    items = set()
    for model in ("tiny_base", "tiny_instruct", "tiny_alt_base"):
        cfg = compose_job("+experiment=three_way_tiny", f"model={model}")
        assert cfg.scorer.name == "heuristic_triage" and cfg.model.name == model
        items.add((cfg.benchmark.name, cfg.benchmark.split, cfg.benchmark.limit))
    assert items == {("conversations", "pilot", 12)}  # every job answers the same items


def test_four_model_variants_name_the_model_and_take_adapters(compose_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    monkeypatch.setenv("POSTTRAIN_DPO_ADAPTER", "/runs/dpo")
    names, adapters = [], []
    for variant in ("base", "sft", "dpo", "dpo_only"):
        cfg = compose_job("+experiment=four_model_tiny", f"+experiment/variant={variant}", "+adapters.sft=/runs/sft")
        names.append(cfg.model.name)
        adapters.append(cfg.model.adapter)
        assert cfg.model.path == "tiny_base" and cfg.model.kind == "base"
    assert names == ["tiny_base", "tiny_base+sft", "tiny_base+dpo", "tiny_base+dpo_only"]
    assert adapters == [None, "/runs/sft", "/runs/dpo", None]  # override, env, neither
    cfg = compose_job("+experiment=four_model", "+experiment/variant=sft")
    assert cfg.model.name == "qwen32b+sft" and cfg.scorer.name == "llm"
    assert OmegaConf.select(cfg, "hydra.sweeper.params")["+experiment/variant"] == "base,sft,dpo,dpo_only"


# ----------------------------------------------------------------------------- subprocesses (slow)


@pytest.mark.slow
def test_cfg_job_composes_without_running(tmp_path: Path) -> None:
    # Hydra refuses `-m` together with `--cfg`; the experiment sets hydra.mode=MULTIRUN itself.
    proc = _posttrain("+experiment=three_way", "--cfg", "job", home=tmp_path / "home", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "name: llm" in proc.stdout and "name: claude" in proc.stdout
    assert not (REPO / "multirun").exists() or not any((REPO / "multirun").glob("*/*/0_qwen32b"))


@pytest.mark.slow
def test_four_model_tiny_without_adapters_stops_before_any_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _posttrain("+experiment=four_model_tiny", f"hydra.sweep.dir={sweep}", home=tmp_path / "home", timeout=60)
    assert proc.returncode == 2
    assert "posttrain stage=sft model=tiny_base" in proc.stderr and "+adapters.sft=<run_dir>" in proc.stderr
    assert "POSTTRAIN_DPO_ONLY_ADAPTER" in proc.stderr and "Traceback" not in proc.stderr
    assert not sweep.exists()


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> tuple[Path, float]:
    from tests.helpers import SESSION_RUNS

    if "three_way_tiny" in SESSION_RUNS:  # one sweep per session: tests/test_tracking.py reads it too
        return SESSION_RUNS["three_way_tiny"]
    root = tmp_path_factory.mktemp("three_way_tiny")
    sweep = root / "multirun" / "2026-01-31" / "12-00-00"
    t0 = time.perf_counter()
    from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI

    proc = _posttrain("-m", "+experiment=three_way_tiny", f"hydra.sweep.dir={sweep}", f"cache_dir={shared_cache}",
                      home=root / "home", ANTHROPIC_API_KEY=CANARY_ANTHROPIC, OPENAI_API_KEY=CANARY_OPENAI)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    SESSION_RUNS["three_way_tiny"] = (sweep, wall)
    return sweep, wall


@pytest.mark.slow
def test_three_way_tiny_sweep_leaves_jobs_comparison_and_wandb_runs(tiny_sweep: tuple[Path, float]) -> None:
    sweep, wall = tiny_sweep
    jobs = sorted(d.name for d in sweep.iterdir() if (d / "summary.json").is_file())
    assert jobs == ["0_tiny_base", "1_tiny_instruct", "2_tiny_alt_base"]
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in jobs]
    assert [s["model"] for s in summaries] == ["tiny_base", "tiny_instruct", "tiny_alt_base"]
    assert len({(s["benchmark_info"]["sha256"], s["benchmark_info"]["split"], s["benchmark_info"]["n"])
                for s in summaries}) == 1
    ids = [{json.loads(line)["item_id"] for line in (sweep / j / "scores.jsonl").read_text().splitlines()} for j in jobs]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 12  # paired by item id

    for name in ("comparison.json", "comparison.md", "success_rates.png", "discordant_pairs.png"):
        assert (sweep / name).is_file(), name
    comp = json.loads((sweep / "comparison.json").read_text())
    assert [m["model"] for m in comp["models"]] == ["tiny_base", "tiny_instruct", "tiny_alt_base"]
    assert len(comp["pairs"]) == 3 and comp["missing_jobs"] == []
    assert comp["gate"]["verdict"] == "NOT_ELIGIBLE" and "heuristic_triage" in comp["gate"]["reasons"][0]
    assert set(comp["sentinel"]) == {"tiny_base", "tiny_instruct", "tiny_alt_base"}

    runs = sorted(sweep.glob("**/wandb/offline-run-*"))
    assert len(runs) == 4, runs  # one per job, plus the comparison run in the sweep folder
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 1
    for run in runs:  # every run carries the sweep's group <date>_<time>
        assert GROUP.encode() in next(run.glob("run-*.wandb")).read_bytes(), run
    assert json.loads((sweep / "tracking.json").read_text())["wandb_run_id"]
    # the primary test was registered before the first job's records existed
    primary = sweep / "primary.json"
    assert json.loads(primary.read_text())["primary"] == [{"treatment": "tiny_instruct", "control": "tiny_base",
                                                           "kind": "gap"}]
    assert primary.stat().st_mtime <= (sweep / "0_tiny_base" / "summary.json").stat().st_mtime
    # ... sealed: every job ran under it, and the comparison is the registered analysis
    from posttrain.analysis.registration import file_registration_sha256

    assert {s["registration_sha256"] for s in summaries} == {file_registration_sha256(primary)}
    assert comp["registration"]["registered"] is True and comp["gate"]["registered"] is True
    print(f"three_way_tiny sweep: {wall:.1f} s")


@pytest.mark.slow
def test_no_secret_in_any_file_of_a_sweep(tiny_sweep: tuple[Path, float]) -> None:
    """Canary keys were in the sweep's environment; no record, Hydra file, log, W&B file or report holds them."""
    from tests.helpers import files_with_secrets

    sweep, _ = tiny_sweep
    root = sweep.parent.parent.parent
    assert len([p for p in root.rglob("*") if p.is_file()]) > 20
    assert files_with_secrets(root) == []


@pytest.mark.slow
def test_report_rebuilds_the_same_comparison_from_records(tiny_sweep: tuple[Path, float], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from posttrain.analysis.report import main

    sweep, _ = tiny_sweep
    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "comparison.json").read_text())
    first = json.loads((sweep / "comparison.json").read_text())
    for key in ("models", "pairs", "per_category", "gate", "sentinel", "length_bias", "missing_jobs"):
        assert again[key] == first[key], key
    assert "| model | kind |" in capsys.readouterr().out


@pytest.mark.slow
def test_notebook_executes_on_the_tiny_sweep(tiny_sweep: tuple[Path, float], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sweep, _ = tiny_sweep
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*") if "wandb" not in p.parts)
    nb = _run_notebook(sweep, tmp_path, monkeypatch)
    text = _outputs(nb)
    assert "3 job(s) compared" in text and "tiny_instruct" in text and "NOT_ELIGIBLE" in text
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))
    after = sorted(p.relative_to(sweep) for p in sweep.rglob("*") if "wandb" not in p.parts)
    assert after == before  # it only reads records


@pytest.mark.slow
def test_notebook_shows_disagreements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_comparison import _verdicts, _write_job

    sweep = tmp_path / "sweep"
    for num, (model, v) in enumerate(_verdicts().items()):
        _write_job(sweep, num, model, v)
    text = _outputs(_run_notebook(sweep, tmp_path, monkeypatch))
    assert "tiny_base vs tiny_instruct: 32 item(s) where exactly one passes" in text
    # conv-000..003: base passes, instruct fails; the first three are shown with both replies.
    assert "**conv-000** (constraint_updates): tiny_base **pass**, tiny_instruct **fail**" in text
    assert "Hello from conv-000" in text and "tiny_instruct says fail" in text


def _lora_adapter(cache: Path, out: Path) -> Path:
    """A random LoRA adapter on the tiny base model, saved as a training run folder (out/adapter/)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from posttrain.models.tiny import ensure_tiny_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model("base", cache)), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(str(out / "adapter"))
    return out


@pytest.mark.slow
def test_four_model_tiny_runs_with_an_adapter(tmp_path: Path, shared_cache: Path) -> None:
    run = _lora_adapter(shared_cache, tmp_path / "sft_run")
    sweep = tmp_path / "multirun" / "2026-01-31" / "12-00-00"
    proc = _posttrain("+experiment=four_model_tiny", "+experiment/variant=base,sft", "benchmark.limit=2",
                      "generation.max_new_tokens=8", "stage.sentinel=false",
                      f"hydra.sweep.dir={sweep}", f"cache_dir={shared_cache}", home=tmp_path / "home",
                      POSTTRAIN_SFT_ADAPTER=str(run))
    assert proc.returncode == 0, proc.stderr[-5000:]
    comp = json.loads((sweep / "comparison.json").read_text())
    assert [m["model"] for m in comp["models"]] == ["tiny_base", "tiny_base+sft"]
    assert comp["gate"]["verdict"] == "NOT_APPLICABLE"
    prov = json.loads((sweep / "1_tiny_base+sft" / "provenance.json").read_text())
    assert prov["adapter_path"] == str(run / "adapter") and prov["adapter_sha256"]
