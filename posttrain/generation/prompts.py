"""Prompt formats: how a conversation so far becomes the text a model continues.

Formats (``prompt.format``):
  - ``chat_template``: the tokenizer's own template with the generation prompt (instruct models);
  - ``transcript``: a short preamble, then ``User: ...`` / ``Assistant: ...`` turns, ending in
    ``Assistant:`` (the multi-turn format for base models);
  - ``instruction_cue``: the seed's ``Instruction: {x}\\nResponse:``, repeated per turn;
  - ``urial``: URIAL-style in-context alignment: a preamble and two worked exchanges, then the
    conversation as ``# Query:`` / ``# Answer:`` blocks;
  - ``raw``: the user text alone (earlier turns joined by blank lines).
``auto`` picks ``chat_template`` for instruct models and ``transcript`` for base models.

An item may carry its own system turn (``Item.meta["system"]``, the system-prompt benchmark): it is the
system message under ``chat_template`` (replacing ``prompt.system_prompt``, since the item's rule is what
is tested) and a leading line under every base-style format (after the preamble of ``transcript`` and
``urial``, first under ``instruction_cue`` and ``raw``), so both arms of a comparison read the same rule.

For a base model, the rendered prompt must contain no chat special tokens: that is the
contamination the loader guards against, checked again here on every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.errors import ContaminationError

# Tokens that only chat-tuned models know; a base-model prompt containing one is contaminated.
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "[INST]", "[/INST]", "<start_of_turn>", "<|user|>", "<|assistant|>")

URIAL_PREAMBLE = (
    "# Instruction\n\nBelow is a list of conversations between a human and an AI assistant. The assistant "
    "answers the human's queries helpfully, accurately and concisely, remembers what was said earlier, and "
    "follows any rules the human sets.\n\n"
    "# Query:\nWhat is the boiling point of water at sea level?\n\n# Answer:\nAbout 100 °C (212 °F).\n\n"
    "# Query:\nPlease answer in one short sentence from now on. Name a primary color.\n\n# Answer:\nRed.\n\n"
)

# (user, reply) pairs; reply None for the turn to be generated.
History = Sequence[tuple[str, str | None]]


def resolve_format(fmt: str, kind: str) -> str:
    if fmt == "auto":
        return "chat_template" if kind == "instruct" else "transcript"
    return fmt


def check_format_allowed(fmt: str, kind: str, allow_chat_template_on_base: bool, model_name: str) -> None:
    """The contamination guard at configuration time, before any model is loaded."""
    if fmt == "chat_template" and kind == "base" and not allow_chat_template_on_base:
        raise ContaminationError(
            f"guard base-no-chat-template: model {model_name} is kind=base and prompt.format=chat_template "
            "would wrap it in a chat template it was never trained on (the contamination posttrain exists to "
            "prevent). Use prompt.format=transcript|instruction_cue|urial|raw, or for a deliberate ablation set "
            "model.allow_chat_template_on_base=true (recorded in the provenance). No generations were written."
        )


def stop_strings(fmt: str, cfg: Any) -> list[str]:
    """Where a base model's continuation ends: the next role marker of its own format."""
    if fmt == "chat_template":
        return []  # the model's end-of-turn token stops it
    per_format = {
        "transcript": ["\n" + cfg.user_marker.strip(), "\n" + cfg.assistant_marker.strip()],
        "instruction_cue": ["\nInstruction:"],
        "urial": ["\n# Query:", "\n# Answer:"],
        "raw": [],
    }[fmt]
    return list(dict.fromkeys(per_format + list(cfg.stop_strings)))


def render_prompt(history: History, fmt: str, cfg: Any, *, kind: str, tokenizer: Any = None,
                  allow_chat_template_on_base: bool = False, system: str | None = None) -> str:
    """Render a conversation whose last turn has no reply yet.

    ``system`` is the item's own system turn (see the module docstring); None renders none.
    """
    if not history or history[-1][1] is not None:
        raise ValueError("history must end with the user turn to answer (reply None)")
    lead = f"{system.strip()}\n\n" if system is not None and system.strip() else ""
    if fmt == "chat_template":
        check_format_allowed(fmt, kind, allow_chat_template_on_base, "?")
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ContaminationError("guard template-missing: prompt.format=chat_template but the tokenizer has no "
                                     "chat template (for a base model it was removed by the loader's guard)")
        messages: list[dict[str, str]] = []
        # null: no system turn, so a template's own default applies (SmolLM2 inserts one; the loader
        # records it as chat_template_default_system_prompt); "" sends an empty one, which suppresses it.
        if lead:
            messages.append({"role": "system", "content": system.strip()})  # type: ignore[union-attr]
        elif cfg.system_prompt is not None:
            messages.append({"role": "system", "content": cfg.system_prompt})
        for user, reply in history:
            messages.append({"role": "user", "content": user})
            if reply is not None:
                messages.append({"role": "assistant", "content": reply})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif fmt == "transcript":
        u, a = cfg.user_marker.strip(), cfg.assistant_marker.strip()
        parts = [cfg.preamble.strip(), ""] if cfg.preamble else []
        parts += [lead.strip(), ""] if lead else []
        for user, reply in history:
            parts.append(f"{u} {user.strip()}")
            parts.append(f"{a} {reply.strip()}" if reply is not None else a)
        text = "\n".join(parts)
    elif fmt == "instruction_cue":
        blocks = [f"Instruction: {user.strip()}\nResponse:" + (f" {reply.strip()}" if reply is not None else "")
                  for user, reply in history]
        text = lead + "\n\n".join(blocks)
    elif fmt == "urial":
        blocks = [f"# Query:\n{user.strip()}\n\n# Answer:" + (f"\n{reply.strip()}" if reply is not None else "\n")
                  for user, reply in history]
        text = URIAL_PREAMBLE + lead + "\n\n".join(blocks)
    elif fmt == "raw":
        text = lead + "\n\n".join([p for user, reply in history for p in (user.strip(), reply) if p is not None])
        text += "\n\n"
    else:
        raise ValueError(f"unknown prompt.format {fmt!r}")
    if kind == "base" and not allow_chat_template_on_base:
        assert_no_chat_markers(text)
    return text


def assert_no_chat_markers(text: str) -> None:
    found = [m for m in CHAT_MARKERS if m in text]
    if found:
        raise ContaminationError(
            f"guard base-chat-tokens: a prompt for a base model contains chat special tokens {found}; base "
            "models must see plain text (prompt.format=transcript|instruction_cue|urial|raw). "
            "No generations were written."
        )
