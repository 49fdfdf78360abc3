"""Tiny models: byte-identical from the same recipe, and LoRA visibly learns on them."""

from __future__ import annotations

from pathlib import Path

from posttrain.models.tiny import ensure_tiny_model
from posttrain.records import sha256_file


def test_same_recipe_gives_byte_identical_files(tmp_path: Path, tiny_paths) -> None:
    again = ensure_tiny_model("base", tmp_path)
    ref = tiny_paths["base"]
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert sha256_file(ref / name) == sha256_file(again / name), name


def test_recipes_differ(tiny_paths) -> None:
    digests = {sha256_file(p / "model.safetensors") for p in tiny_paths.values()}
    assert len(digests) == 3
    assert not (tiny_paths["base"] / "chat_template.jinja").exists()
    assert (tiny_paths["instruct"] / "chat_template.jinja").exists()


def test_a_few_lora_steps_lower_the_loss(tiny_paths) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_paths["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["base"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    batch = tok(["User: My name is Alice and I live in Lisbon.\nAssistant: Nice to meet you, Alice!"] * 4,
                return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(30):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
