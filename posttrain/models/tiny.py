"""Tiny Llama-architecture models that posttrain builds itself: deterministic, offline, < 1 MB.

They stand in for the real models in tests and the embedded demo and load through the same
loader. Three recipes mirror the real line-up: ``base`` (no chat template, like a pretrained
model), ``instruct`` (a ChatML template with ``{% generation %}`` markers, so TRL's
assistant-only loss works) and ``alt_base`` (another size and seed, standing in for the
alternative base model).

Why the embeddings are rescaled: with the usual init (std 0.02) and tied embeddings the logits
are nearly flat and LoRA cannot rescale them, so a LoRA run barely moves the loss
(6.7 -> 6.55 in 100 steps). With std 0.4 the same run goes from about 5 to below 1.

The same recipe gives byte-identical files; the cache folder name carries a hash of the
recipe and the library versions, so a changed recipe never reuses stale files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

TINY_VERSION = "tiny-v1"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML, as Qwen's instruct models use it; {% generation %} marks the assistant tokens that
# carry loss (TRL's assistant_only_loss), and the <|im_end|> after a reply is trained too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyRecipe:
    name: str
    seed: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int = 2048
    max_position_embeddings: int = 1024
    embedding_std: float = 0.4
    chat_template: bool = False


RECIPES: dict[str, TinyRecipe] = {
    # 2048 x 64 embeddings (tied) + 2 layers x ~41k = about 0.2M parameters, under 1 MB.
    "base": TinyRecipe("base", seed=1, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=128),
    "instruct": TinyRecipe("instruct", seed=2, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                           intermediate_size=128, chat_template=True),
    "alt_base": TinyRecipe("alt_base", seed=3, hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
                           intermediate_size=192),
}


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """A fixed English corpus of conversation-like lines to train the BPE tokenizer on."""
    rng = random.Random(seed)
    names = ["Alice", "Bob", "Carmen", "Dmitri", "Emeka", "Fatima", "Giulia", "Hiro", "Ines", "Jonas"]
    cities = ["Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Cairo", "Hanoi", "Quito", "Perth", "Madrid"]
    foods = ["pasta", "sushi", "tacos", "curry", "salad", "soup", "pizza", "ramen", "falafel", "paella"]
    verbs = ["like", "love", "hate", "prefer", "avoid", "enjoy", "cook", "order", "want", "need"]
    lines = [
        "The following is a conversation between a user and a helpful, honest assistant.",
        "User: Hello! Can you help me plan a trip?", "Assistant: Of course. Where would you like to go?",
        "Instruction: Translate 'good morning' into Spanish.", "Response: Buenos días.",
        "Answer in under 50 words. From now on, answer in Spanish. Actually, I am no longer allergic.",
        "# Query: What is the capital of France?", "# Answer: The capital of France is Paris.",
        "1. first item\n2. second item\n3. third item", "- apples\n- pears\n- plums",
        "hola gracias por favor bonjour merci danke bitte ciao grazie obrigado",
    ]
    for _ in range(600):
        n, c, f, v = rng.choice(names), rng.choice(cities), rng.choice(foods), rng.choice(verbs)
        k = rng.randint(2, 99)
        lines.append(rng.choice([
            f"User: My name is {n} and I live in {c}.",
            f"Assistant: Nice to meet you, {n}! {c} is a lovely city.",
            f"User: I {v} {f}, and I have {k} friends who do too.",
            f"Assistant: Since you {v} {f}, you might try a restaurant in {c}.",
            f"User: What was the name of the city I mentioned? Assistant: You mentioned {c}.",
            f"User: Remind me what I said about {f}. Assistant: You said you {v} {f}.",
            f"Instruction: List {k % 5 + 2} dishes with {f}.\nResponse: Here are some dishes.",
        ]))
    return lines


def _recipe_key(recipe: TinyRecipe) -> str:
    import tokenizers
    import torch
    import transformers

    blob = json.dumps(
        {"recipe": asdict(recipe), "v": TINY_VERSION, "template": CHATML_TEMPLATE if recipe.chat_template else None,
         "libs": [torch.__version__, transformers.__version__, tokenizers.__version__]},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build(recipe: TinyRecipe, out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # parallel training can reorder ties
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if recipe.chat_template:
        hf_tok.chat_template = CHATML_TEMPLATE
        # An instruct model ends its turn with <|im_end|>; generation stops there.
        hf_tok.eos_token = "<|im_end|>"
    hf_tok.save_pretrained(out)

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
        intermediate_size=recipe.intermediate_size, max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, recipe.embedding_std)  # type: ignore[operator]
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)


def ensure_tiny_model(name: str, cache_dir: Path) -> Path:
    """Return the folder of tiny model ``name``, building it on first use (atomic, race-safe)."""
    from filelock import FileLock

    if name not in RECIPES:
        raise ValueError(f"unknown tiny model recipe {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    target = Path(cache_dir) / "tiny" / f"{name}-{_recipe_key(recipe)}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=300):
        if (target / "model.safetensors").exists():  # another job of the sweep built it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _build(recipe, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
