"""Every eval summary records how its replies were made, truthfully (issue 20 §2).

``summary.json`` carries ``decoding`` (as used), ``model_identity`` and ``truncation`` (turns stopped
at max_new_tokens); a model setting the run would not use is refused before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from posttrain.config import ModelConfig
from posttrain.generation.prompts import stop_strings
from posttrain.models.loader import unused_model_settings
from posttrain.records import read_jsonl
from posttrain.stages.eval import decoding_record, truncation_record
from tests.helpers import REPO, posttrain


def test_a_sampled_eval_records_decoding_identity_and_truncation(tmp_path: Path, posttrain_home: Path,
                                                                shared_cache: Path, compose: Any) -> None:
    run = tmp_path / "run"
    posttrain("stage=eval", "model=tiny_base", "generation=sampled", "generation.temperature=0.9",
              "generation.seed=7", "generation.max_new_tokens=10", "generation.batch_size=4", "benchmark.limit=4",
              "scorer=heuristic_triage", "stage.sentinel=false", f"hydra.run.dir={run}",
              home=posttrain_home, cache=shared_cache)
    summary = json.loads((run / "summary.json").read_text())
    fmt = summary["prompt_format"]
    expected_stops = stop_strings(fmt, compose("model=tiny_base").prompt)
    assert expected_stops, "the base model's format must have stop strings for this check to mean anything"
    assert summary["decoding"] == {"do_sample": True, "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 10,
                                   "stop_strings": expected_stops, "seed": 7, "backend": "hf"}
    prov = json.loads((run / "provenance.json").read_text())
    assert summary["model_identity"] == {"name": "tiny_base", "path": "tiny_base", "revision": prov["revision"],
                                         "adapter": None, "adapter_sha256": None}
    assert summary["model_identity"]["revision"].startswith("sha256:")
    turns = [t for r in read_jsonl(run / "generations.jsonl") for t in r["turns"]]
    cut = sum(t["finish_reason"] == "length" for t in turns)
    assert cut > 0, "a random tiny model at 10 tokens runs into the budget; the count must be exercised"
    assert summary["truncation"] == {"turns": len(turns), "length_stopped": cut, "rate": cut / len(turns)}


def test_greedy_decoding_records_no_temperature_top_p_or_seed() -> None:
    gen = OmegaConf.create({"do_sample": False, "temperature": 0.7, "top_p": 0.95, "seed": 3,
                            "max_new_tokens": 64, "backend": "hf"})
    assert decoding_record(gen, ["\nInstruction:"]) == {
        "do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 64,
        "stop_strings": ["\nInstruction:"], "seed": None, "backend": "hf"}


def test_truncation_counts_length_stops_over_every_turn() -> None:
    rows = [{"turns": [{"finish_reason": "length"}, {"finish_reason": "eos"}]},
            {"turns": [{"finish_reason": "stop"}, {"finish_reason": "length"}, {"finish_reason": "length"}]}]
    assert truncation_record(rows) == {"turns": 5, "length_stopped": 3, "rate": 0.6}
    assert truncation_record([]) == {"turns": 0, "length_stopped": 0, "rate": None}


def test_an_unused_model_path_is_refused_before_anything_runs(tmp_path: Path, posttrain_home: Path,
                                                               shared_cache: Path) -> None:
    run = tmp_path / "run"
    proc = posttrain("stage=eval", "model=tiny_base", "model.path=/nonexistent", f"hydra.run.dir={run}",
                     home=posttrain_home, cache=shared_cache, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.path=/nonexistent is not used" in proc.stderr and "model.tiny=null" in proc.stderr
    assert "Nothing was loaded or spent" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "provenance.json").exists() and not (run / "generations.jsonl").exists()
    assert not (posttrain_home / "ledger.jsonl").exists() or not read_jsonl(posttrain_home / "ledger.jsonl")


def _model(**kw: Any) -> Any:
    return OmegaConf.structured(ModelConfig(**({"name": "m", "path": "x", "kind": "base"} | kw)))


@pytest.mark.parametrize(("model", "setting"), [
    (dict(name="smollm2_instruct", path="/data/SmolLM2", gguf="smollm2", kind="instruct"), "model.path=/data/SmolLM2"),
    (dict(name="tiny_base", path="tiny_base", tiny="base", gguf="smollm2"), "model.gguf=smollm2"),
    (dict(path="/data/llama", kind="instruct", allow_chat_template_on_base=True),
     "model.allow_chat_template_on_base=true"),
])
def test_each_unused_model_setting_is_named(model: dict[str, Any], setting: str) -> None:
    problems = unused_model_settings(_model(**model))
    assert len(problems) == 1 and problems[0].startswith(f"{setting} is not used")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")
                                        if p.stem != "base_model"))
def test_every_shipped_model_uses_all_its_settings(compose: Any, name: str) -> None:
    assert unused_model_settings(compose(f"model={name}").model) == []


def test_a_local_folder_and_a_base_ablation_use_all_their_settings() -> None:
    assert unused_model_settings(_model(path="/data/llama", allow_chat_template_on_base=True)) == []


def test_stop_strings_follow_the_prompt_format_and_are_compared_only_within_one() -> None:
    from posttrain.analysis.gates import decoding_differences

    gen = OmegaConf.create({"do_sample": False, "temperature": 0.7, "top_p": 0.95, "seed": 0,
                            "max_new_tokens": 64, "backend": "hf"})
    chat = decoding_record(gen, [])  # a chat template stops at the model's end-of-turn token
    cue = decoding_record(gen, ["\nInstruction:", "\nUser:"])
    assert decoding_differences(chat, cue, ("chat_template", "instruction_cue")) == []
    assert decoding_differences(chat, cue, ("raw", "raw")) == ["stop_strings [] vs ['\\nInstruction:', '\\nUser:']"]
    longer = decoding_record(OmegaConf.merge(gen, {"max_new_tokens": 128}), [])
    assert decoding_differences(chat, longer, ("chat_template", "instruction_cue")) == ["max_new_tokens 64 vs 128"]
