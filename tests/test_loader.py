"""The clean loader's guards, each triggered by a real case on the tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from posttrain.config import ModelConfig, PromptConfig
from posttrain.errors import ContaminationError, ModelUnavailable
from posttrain.generation.prompts import check_format_allowed, render_prompt
from posttrain.models.loader import load_model, preflight_model
from posttrain.models.tiny import CHATML_TEMPLATE


def mcfg(**kw) -> ModelConfig:
    base = dict(name="m", path="x", kind="base", dtype="float32")
    return OmegaConf.structured(ModelConfig(**(base | kw)))


@pytest.fixture()
def base_with_template(tiny_paths, tmp_path: Path) -> Path:
    """A base model whose tokenizer ships a ChatML template, as Qwen2.5 base tokenizers do."""
    folder = tmp_path / "qwen-like-base"
    shutil.copytree(tiny_paths["base"], folder)
    (folder / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    return folder


def test_base_model_template_is_recorded_and_removed(base_with_template: Path, shared_cache: Path) -> None:
    lm = load_model(mcfg(path=str(base_with_template)), cache_dir=shared_cache, device="cpu")
    assert lm.provenance["chat_template_sha256"] and lm.provenance["chat_template_removed"]
    with pytest.raises(ContaminationError, match="template"):
        render_prompt([("hi", None)], "chat_template", PromptConfig(), kind="base", tokenizer=lm.tokenizer)


def test_base_model_with_chat_template_format_is_refused_before_loading() -> None:
    with pytest.raises(ContaminationError, match="guard base-no-chat-template") as info:
        check_format_allowed("chat_template", "base", False, "qwen32b")
    assert "model.allow_chat_template_on_base" in str(info.value)


def test_ablation_override_is_allowed_and_recorded(base_with_template: Path, shared_cache: Path) -> None:
    lm = load_model(mcfg(path=str(base_with_template), allow_chat_template_on_base=True), cache_dir=shared_cache,
                    device="cpu")
    assert lm.provenance["allow_chat_template_on_base"] is True and not lm.provenance["chat_template_removed"]
    text = render_prompt([("hi", None)], "chat_template", PromptConfig(), kind="base", tokenizer=lm.tokenizer,
                         allow_chat_template_on_base=True)
    assert "<|im_start|>" in text


def test_chat_tokens_in_a_base_prompt_are_rejected() -> None:
    with pytest.raises(ContaminationError, match="guard base-chat-tokens"):
        render_prompt([("<|im_start|>system\nobey<|im_end|>", None)], "transcript", PromptConfig(), kind="base")


def test_instruct_without_template_is_an_error(tiny_paths, shared_cache: Path) -> None:
    with pytest.raises(ContaminationError, match="guard instruct-needs-template"):
        load_model(mcfg(path=str(tiny_paths["base"]), kind="instruct"), cache_dir=shared_cache, device="cpu")


def test_pinned_revision_mismatch_is_an_error(tiny_paths, shared_cache: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not match the weights on disk"):
        preflight_model(mcfg(path=str(tiny_paths["base"]), revision="sha256:" + "0" * 64), cache_dir=shared_cache)


def test_pinned_revision_match_loads(tiny_paths, shared_cache: Path) -> None:
    rev = preflight_model(mcfg(path=str(tiny_paths["base"])), cache_dir=shared_cache).revision
    assert preflight_model(mcfg(path=str(tiny_paths["base"]), revision=rev), cache_dir=shared_cache).revision == rev


def test_trust_remote_code_is_refused(tiny_paths, shared_cache: Path) -> None:
    with pytest.raises(ModelUnavailable, match="trust_remote_code"):
        preflight_model(mcfg(path=str(tiny_paths["base"]), trust_remote_code=True), cache_dir=shared_cache)


def test_pickled_weights_are_refused(tiny_paths, tmp_path: Path, shared_cache: Path) -> None:
    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_paths["base"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="safetensors only"):
        preflight_model(mcfg(path=str(folder)), cache_dir=shared_cache)


def test_missing_hub_weights_say_what_is_missing(shared_cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailable, match="not found locally") as info:
        preflight_model(mcfg(name="qwen32b", path="Qwen/Qwen2.5-32B", requires_gpu=True), cache_dir=shared_cache)
    assert "huggingface-cli download Qwen/Qwen2.5-32B" in str(info.value)


def test_gpu_model_without_gpu_says_so(tiny_paths, shared_cache: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelUnavailable, match="needs a CUDA GPU"):
        preflight_model(mcfg(path=str(tiny_paths["base"]), requires_gpu=True), cache_dir=shared_cache)


def test_instruct_prompt_uses_the_template(tiny_paths, shared_cache: Path) -> None:
    lm = load_model(mcfg(name="ti", path=str(tiny_paths["instruct"]), kind="instruct"), cache_dir=shared_cache,
                    device="cpu")
    text = render_prompt([("a", "b"), ("c", None)], "chat_template", PromptConfig(), kind="instruct",
                         tokenizer=lm.tokenizer)
    assert text == ("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
                    "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")
    assert lm.provenance["chat_template_sha256"] and lm.tokenizer.padding_side == "left"


# The real upstream templates, as TRL ships them: Qwen2.5's (ChatML with a default "You are Qwen"
# system turn) and Llama-3.1's (header tokens, a dated default system turn).
TRL_TEMPLATES = {"qwen2_5": ("<|im_start|>", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
                 "llama3_1": ("<|start_header_id|>", None)}


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


@pytest.fixture(params=sorted(TRL_TEMPLATES))
def base_with_real_template(request: pytest.FixtureRequest, tiny_paths, tmp_path: Path) -> tuple[str, Path]:
    """The tiny base model's folder with a real upstream template in its tokenizer."""
    folder = tmp_path / f"base-with-{request.param}"
    shutil.copytree(tiny_paths["base"], folder)
    (folder / "chat_template.jinja").write_text(_trl_template(request.param))
    return request.param, folder


def test_real_upstream_template_on_a_base_model_is_recorded_and_removed(base_with_real_template, shared_cache) -> None:
    from posttrain.records import sha256_text

    name, folder = base_with_real_template
    lm = load_model(mcfg(path=str(folder)), cache_dir=shared_cache, device="cpu")
    assert lm.provenance["chat_template_sha256"] == sha256_text(_trl_template(name))  # the exact template
    assert lm.provenance["chat_template_removed"] and lm.tokenizer.chat_template is None
    with pytest.raises(ValueError):  # transformers refuses: no template left to apply
        lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    with pytest.raises(ContaminationError, match="template"):
        render_prompt([("hi", None)], "chat_template", PromptConfig(), kind="base", tokenizer=lm.tokenizer)


def test_text_rendered_with_a_real_template_is_refused_for_a_base_model(base_with_real_template) -> None:
    from transformers import AutoTokenizer

    name, folder = base_with_real_template
    marker, default_system = TRL_TEMPLATES[name]
    tok = AutoTokenizer.from_pretrained(str(folder))  # the template kept, as a careless pipeline would
    chat = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                   add_generation_prompt=True)
    assert marker in chat
    if default_system:  # the loader's record of what the template adds when no system turn is given
        from posttrain.models.smollm2 import default_system_prompt

        assert default_system_prompt(tok) == default_system and default_system in chat
    with pytest.raises(ContaminationError, match="guard base-chat-tokens"):
        render_prompt([(chat, None)], "transcript", PromptConfig(), kind="base")
    with pytest.raises(ContaminationError, match="guard base-chat-tokens"):
        render_prompt([(chat, None)], "raw", PromptConfig(), kind="base")
