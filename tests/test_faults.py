"""Faults a real run meets: a full disk, W&B unavailable, a corrupted adapter, a second job in a
locked run folder. Each says what "nothing lost" means and checks it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from posttrain.errors import ModelUnavailable
from posttrain.models.loader import resolve_adapter
from posttrain.records import read_jsonl, write_json
from tests.helpers import posttrain


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 64 KiB tmpfs: room for the items and the first chunks of generations, not for the whole run."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_cleanly_and_keeps_earlier_records(small_disk: Path, posttrain_home: Path,
                                                           shared_cache: Path) -> None:
    run = small_disk / "run"
    proc = posttrain("model=tiny_base", "scorer=heuristic_triage", "stage.sentinel=false", "tracking=disabled",
                     "benchmark.limit=40",
                     "generation.max_new_tokens=32", "generation.batch_size=4", f"hydra.run.dir={run}",
                     home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "disk full" in proc.stderr and "rerun the same command to resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    rows = read_jsonl(run / "generations.jsonl")  # complete rows only; a torn tail is dropped, never mixed in
    assert 1 <= len(rows) < 40, len(rows)  # the disk filled up during generation, not before it
    assert all(r["turns"] and r["fingerprint"] for r in rows)
    # The GPU time was still recorded in the ledger (it lives on another disk).
    assert read_jsonl(posttrain_home / "ledger.jsonl")[-1]["note"] == "failed"
    # Free space (grow the tmpfs) and rerun the same command: it resumes from the complete rows.
    grown = subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], capture_output=True)
    if grown.returncode:
        pytest.skip("cannot grow the tmpfs here")
    proc = posttrain("model=tiny_base", "scorer=heuristic_triage", "stage.sentinel=false", "tracking=disabled",
                     "benchmark.limit=40",
                     "generation.max_new_tokens=32", "generation.batch_size=4", f"hydra.run.dir={run}",
                     home=posttrain_home, cache=shared_cache)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["generation"]["reused"] == len(rows)
    assert len(read_jsonl(run / "generations.jsonl")) == 40


def test_wandb_unavailable_run_goes_on_with_complete_records(tmp_path: Path, posttrain_home: Path,
                                                             shared_cache: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb").write_text("not a folder: W&B cannot write its run here")
    posttrain("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=2", "stage.sentinel=false",
              "generation.max_new_tokens=8", f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    tracking = json.loads((run / "tracking.json").read_text())
    assert tracking["wandb_error"] and tracking["wandb_run_id"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["n_items"] == 2
    assert read_jsonl(run / "metrics.jsonl")  # what would have gone to W&B is on disk


def test_corrupted_adapter_is_detected_by_its_recorded_hash(tmp_path: Path) -> None:
    adapter = tmp_path / "sft-run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights as trained")
    import hashlib

    write_json(adapter / "provenance.json",
               {"adapter_sha256": hashlib.sha256(b"weights as trained").hexdigest()})
    path, digest = resolve_adapter(str(tmp_path / "sft-run"))  # a run folder resolves to its adapter/
    assert path == adapter and digest == hashlib.sha256(b"weights as trained").hexdigest()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights as trained, then a bit flipped")
    with pytest.raises(ModelUnavailable, match="corrupted or was replaced"):
        resolve_adapter(str(adapter))


def test_changed_adapter_config_is_detected(tmp_path: Path) -> None:
    import hashlib

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    write_json(adapter / "provenance.json", {"adapter_sha256": hashlib.sha256(b"w").hexdigest(),
                                             "adapter_config_sha256": hashlib.sha256(b'{"r": 16}').hexdigest()})
    resolve_adapter(str(adapter))
    (adapter / "adapter_config.json").write_text('{"r": 64}')  # same weights read with another rank/alpha
    with pytest.raises(ModelUnavailable, match="adapter_config.json is corrupted or was replaced"):
        resolve_adapter(str(adapter))
    (adapter / "provenance.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="provenance.json is unreadable"):
        resolve_adapter(str(adapter))


def test_eval_with_a_corrupted_adapter_stops_before_loading(tmp_path: Path, posttrain_home: Path,
                                                            shared_cache: Path) -> None:
    import hashlib

    adapter = tmp_path / "sft-run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights, then a flipped bit")
    write_json(adapter / "provenance.json", {"adapter_sha256": hashlib.sha256(b"weights").hexdigest()})
    run = tmp_path / "run"
    proc = posttrain("model=tiny_base", f"model.adapter={adapter.parent}", "scorer=heuristic_triage",
                     "benchmark.limit=2", f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache,
                     check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "corrupted or was replaced" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "generations.jsonl").exists() and not (run / "provenance.json").exists()
    assert not (posttrain_home / "ledger.jsonl").exists()  # refused in the plan: nothing was spent


def test_second_job_into_a_locked_run_folder_is_refused(tmp_path: Path, posttrain_home: Path,
                                                         shared_cache: Path) -> None:
    from posttrain.records import RunLock

    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # another job holds the folder
        proc = posttrain("model=tiny_base", "scorer=heuristic_triage", "benchmark.limit=2", f"hydra.run.dir={run}",
                         home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "another posttrain job" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "generations.jsonl").exists() and not (run / "summary.json").exists()
    assert not (posttrain_home / "ledger.jsonl").exists()


def test_missing_adapter_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no adapter_model.safetensors"):
        resolve_adapter(str(tmp_path))


def test_wandb_failing_mid_run_loses_no_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real offline W&B run whose log/summary/finish start failing halfway (its service died):
    the tracker goes on, and metrics.jsonl and tracking.json hold everything."""
    from posttrain.tracking.tracker import Tracker

    tracker = Tracker(tmp_path, mode="offline", project="posttrain-test", entity=None, name="t", group=None,
                      job_type="eval", tags=[], config={"a": 1})
    with tracker:
        assert tracker.run_id is not None  # W&B really started
        tracker.log({"x": 1.0}, step=1)

        def dead(*args: object, **kwargs: object) -> None:
            raise ConnectionResetError("wandb service went away")

        monkeypatch.setattr(tracker._run, "log", dead)
        monkeypatch.setattr(tracker._run, "finish", dead)
        tracker.log({"x": 2.0}, step=2)
        tracker.summary({"done": True})
    monkeypatch.undo()
    tracker._run.finish()  # end the real run, so no later test inherits it
    assert [r["x"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 2.0]
    assert json.loads((tmp_path / "tracking.json").read_text())["wandb_run_id"]
