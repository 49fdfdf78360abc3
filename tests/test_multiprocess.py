"""Multi-process training (accelerate launch / torchrun) and the weights placement per rank.

The launches run for real on this CPU machine: ``torchrun --nproc_per_node 2`` starts two ranks,
the Trainer runs DDP over the gloo backend, and posttrain must behave as it does on GPUs: rank 0
alone writes records, the ledger and the W&B run; rank 1 reuses the data rank 0 prepared and
shares its checkpoints; nothing of rank 1 is left behind. (``accelerate launch`` sets the same
RANK / WORLD_SIZE / LOCAL_RANK variables through torch.distributed.run, but on a CPU-only machine it
runs multi-CPU jobs through mpirun, which is why the test uses torchrun.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.models.loader import Placement, placement_for
from posttrain.records import read_json, read_jsonl
from tests.helpers import REPO

TRAIN = ["model=tiny_base", "stage.override_gate=true", "tracking=offline", "stage.num_examples=24",
         "stage.max_steps=12", "stage.save_steps=6", "stage.learning_rate=1e-2", "stage.lora_r=8",
         "stage.lora_alpha=16", "generation.batch_size=8", "stage.data_source=synthetic"]


def _torchrun(*overrides: str, home: Path, cache: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "POSTTRAIN_HOME": str(home),
                        "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(scratch)}
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "posttrain",
                           f"cache_dir={cache}", *overrides], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)


@pytest.mark.slow
def test_two_rank_sft_then_dpo_write_one_set_of_records(tmp_path: Path, shared_cache: Path) -> None:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    scratch.mkdir()
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    proc = _torchrun("stage=sft", *TRAIN, f"hydra.run.dir={sft}", home=home, cache=shared_cache, scratch=scratch)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = read_json(sft / "summary.json")
    assert s["status"] == "finished" and s["steps"] == 12 and s["weights_changed"] is True
    # DDP: 12 steps x 4 per rank x 2 ranks = 96 examples of 72, so 1.33 epochs (one process: 0.67)
    assert s["epochs"] == pytest.approx(96 / 72)
    assert len(read_jsonl(sft / "train_data.jsonl")) == 24  # prepared once, by rank 0
    assert "resume: reusing" in proc.stdout + proc.stderr  # rank 1 waited for it and reused it
    losses = [r for r in read_jsonl(sft / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == len({r["train/global_step"] for r in losses})  # one writer
    assert (sft / "adapter" / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (sft / "checkpoints").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]

    # 24 rows make 8 pairs per negative type, too few for the leakage check to test (17): allowed, recorded
    proc = _torchrun("stage=dpo", *TRAIN, "stage.allow_leaky_negatives=true", f"stage.init_adapter={sft}",
                     f"stage.data={sft}", f"hydra.run.dir={dpo}",
                     home=home, cache=shared_cache, scratch=scratch)
    assert proc.returncode == 0, proc.stderr[-4000:]
    d = read_json(dpo / "summary.json")
    assert d["status"] == "finished" and d["reference"] == "sft_adapter_copy" and d["step0"]["passed"]
    assert len(read_jsonl(dpo / "pairs.jsonl")) == d["pairs"]  # not appended twice

    ledger = read_jsonl(home / "ledger.jsonl")
    assert [(r["stage"], r["note"]) for r in ledger] == [("sft", "finished"), ("dpo", "finished")]
    assert list(scratch.glob("posttrain-rank*")) == []  # rank 1's scratch folders are gone


def test_eval_refuses_a_multi_process_launch(tmp_path: Path, shared_cache: Path) -> None:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "POSTTRAIN_HOME": str(tmp_path / "home"),
                        "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "posttrain", f"cache_dir={shared_cache}", "model=tiny_base",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stage=eval runs in one process" in proc.stderr and "WORLD_SIZE=2" in proc.stderr
    assert not (tmp_path / "run" / "generations.jsonl").exists()


@pytest.mark.parametrize(("dev", "quant", "train", "env", "expected"), [
    ("cpu", None, False, {}, Placement(None, "cpu")),
    ("cpu", "nf4", True, {"LOCAL_RANK": "1"}, Placement({"": "cpu"}, None)),
    ("cuda", "nf4", False, {}, Placement({"": 0}, None)),
    ("cuda", "nf4", True, {"LOCAL_RANK": "3", "WORLD_SIZE": "4"}, Placement({"": 3}, None)),  # DDP: own GPU
    ("cuda", None, True, {"LOCAL_RANK": "1"}, Placement(None, "cuda:1")),
    ("cuda", "nf4", True, {"LOCAL_RANK": "1", "ACCELERATE_USE_FSDP": "true"}, Placement(None, None, fsdp=True)),
    ("cuda", "nf4", False, {"LOCAL_RANK": "0", "ACCELERATE_USE_FSDP": "true"}, Placement({"": 0}, None)),  # eval
])
def test_placement_per_rank(dev: str, quant: str | None, train: bool, env: dict[str, str],
                            expected: Placement) -> None:
    assert placement_for(dev, quantization=quant, for_training=train, env=env) == expected
