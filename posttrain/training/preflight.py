"""Checks of a training run that need the model's files but not its weights, run in plan().

A training run spends most of its time generating data; every reason it could fail afterwards
that is knowable before must be checked before (issue 22 §2):

- the format: an instruct model trains in its chat template through TRL's conversational
  prompt/completion, which needs a template that keeps the prompt a prefix and closes a reply
  with an end-of-turn token (:func:`posttrain.training.chat.check_template`); data generated in the
  model's own format needs the same template;
- the LoRA targets: ``stage.lora_target_modules`` must name modules the architecture has (the
  module tree is built on the ``meta`` device from the config: no weights are read);
- the sequence length: the longest example the data settings allow (instruction and reply limits
  per turn, plus the format's own tokens) must fit ``stage.max_length``, or the label audit would
  find replies cut after the data was made;
- the data yield: self-instruct can propose at most ``max_rounds x generation.batch_size``
  instructions; fewer than the complete rows the run needs cannot work whatever the yield.
"""

from __future__ import annotations

import math
from typing import Any

from posttrain.errors import PosttrainError

NOTHING = "Nothing was generated, loaded or spent."


def generation_format(fmt: str, kind: str) -> str | None:
    """The format self-instruct replies are generated in: the model's own chat template when it
    trains in it (an instruct model), else None (the base-model text formats)."""
    return "chat_template" if fmt == "chat_template" and kind == "instruct" else None


def check_lora_targets(model_path: Any, targets: Any, model_name: str) -> list[str]:
    """The linear module names LoRA will adapt; raise when a target names no module of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                     if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head")})
    if isinstance(targets, str):
        if targets == "all-linear":
            if not linear:
                raise PosttrainError(f"stage.lora_target_modules=all-linear: model {model_name} has no linear layer "
                                     f"besides its output head. {NOTHING}")
            return linear
        targets = [targets]
    missing = [t for t in targets if t not in linear]
    if missing:
        raise PosttrainError(f"stage.lora_target_modules={list(targets)}: model {model_name} has no module named "
                             f"{missing}; its linear layers are {linear} (or use all-linear). {NOTHING}")
    return list(targets)


def longest_example_tokens(st: Any, gen_cfg: Any, tokenizer: Any, render: Any) -> dict[str, int]:
    """An upper bound on one training sequence's tokens under the data settings.

    ``render(turns)`` renders a probe conversation in the training format; its tokens are the
    format's own overhead (template markup, system prompt, preamble). Each turn adds at most an
    user text (the first an instruction of at most ``instruction_max_new_tokens`` plus a stated
    constraint, later ones the longest templated follow-up) and a reply (``reply_max_new_tokens``).
    """
    from posttrain.training.data import CONSTRAINT_SUFFIX, FOLLOWUPS

    followups = st.followup_turns if st.multiturn_fraction > 0 else 0
    turns = 1 + followups
    overhead = len(tokenizer(render(turns), add_special_tokens=True)["input_ids"])
    # the first user turn: a generated instruction (plus a stated constraint); later ones: a templated follow-up
    constraint = len(tokenizer(CONSTRAINT_SUFFIX.format(word="something"), add_special_tokens=False)["input_ids"])
    followup = max(len(tokenizer(f, add_special_tokens=False)["input_ids"]) for f in FOLLOWUPS)
    users = st.instruction_max_new_tokens + constraint + followups * followup
    total = overhead + users + turns * st.reply_max_new_tokens
    return {"turns": turns, "overhead": overhead, "user_tokens": users, "total": total}


def check_negatives_testable(st: Any) -> dict[str, Any]:
    """DPO: refuse data too small for the leakage check to test every negative type.

    The pairs are spread evenly over the types (training/negatives.py build_pairs), so a type gets
    at most about ``rows x negatives_per_example / types`` of them; below the check's
    ``min_testable_pairs`` it could not be tested, and DPO would refuse after the data was made.
    ``stage.allow_leaky_negatives=true`` trains on untested types (recorded).
    """
    from posttrain.training.data import resolve_data_path
    from posttrain.training.negatives import min_testable_pairs

    rows = st.num_examples
    if st.data:
        with open(resolve_data_path(st.data), encoding="utf-8") as f:
            rows = min(rows, sum(1 for line in f if line.strip()))
    per_type = rows * st.negatives_per_example / len(st.negative_types)
    need = min_testable_pairs()
    info = {"rows_at_most": rows, "pairs_per_type_at_most": per_type, "min_testable_pairs": need}
    if per_type < need and not st.allow_leaky_negatives:
        raise PosttrainError(
            f"stage={st.name}: at most {rows} conversations x stage.negatives_per_example={st.negatives_per_example} / "
            f"{len(st.negative_types)} stage.negative_types = {per_type:.0f} pairs per type, fewer than the {need} the "
            "leakage check needs to test a type; an untested type blocks DPO. Raise stage.num_examples (or the rows "
            "of stage.data), use fewer types, or set stage.allow_leaky_negatives=true to train on untested "
            f"negatives (recorded in every record). {NOTHING}")
    return info


def check_trainable(cfg: Any, fmt: str, source: str, resolved: Any) -> dict[str, Any]:
    """Every check above; returns what was checked (for the plan's notes and the records)."""
    from posttrain.models.loader import load_tokenizer

    st = cfg.stage
    out: dict[str, Any] = {}
    tok, _ = load_tokenizer(cfg.model, resolved)
    gen_fmt = generation_format(fmt, cfg.model.kind) if source == "generated" and not st.data else None
    if fmt == "chat_template" or gen_fmt:
        from posttrain.training.chat import check_template

        out["template"] = check_template(tok, cfg.prompt.system_prompt, cfg.model.name)
    out["generation_format"] = gen_fmt
    out["lora_targets"] = check_lora_targets(resolved.path, st.lora_target_modules, cfg.model.name)
    if st.name != "sft":
        out["negatives"] = check_negatives_testable(st)
    if source == "generated" and not st.data:
        need = math.ceil(st.num_examples / st.critic_keep_fraction)
        most = st.max_rounds * cfg.generation.batch_size
        if most < need:
            raise PosttrainError(
                f"stage.num_examples={st.num_examples} needs {need} complete conversations before the critic keeps "
                f"{st.critic_keep_fraction:.0%}, but self-instruct can propose at most stage.max_rounds x "
                f"generation.batch_size = {st.max_rounds} x {cfg.generation.batch_size} = {most} instructions, and "
                "not every one is kept and answered completely. Raise stage.max_rounds or lower "
                f"stage.num_examples. {NOTHING}")
        out["max_proposals"] = most
        out["complete_rows_needed"] = need

        def render(n: int) -> str:
            from posttrain.generation.prompts import render_prompt
            from posttrain.training.chat import PROBE_TURNS

            turns = [PROBE_TURNS[k % len(PROBE_TURNS)] for k in range(n)]
            history = [*turns[:-1], (turns[-1][0], None)]
            use = gen_fmt or fmt
            text = render_prompt(history, use, cfg.prompt, kind=cfg.model.kind, tokenizer=tok,
                                 allow_chat_template_on_base=bool(cfg.model.allow_chat_template_on_base))
            return text + turns[-1][1]

        size = longest_example_tokens(st, cfg.generation, tok, render)
        out["longest_example_tokens"] = size
        if size["total"] > st.max_length:
            raise PosttrainError(
                f"stage.max_length={st.max_length} is shorter than the longest example the data settings allow: "
                f"{size['user_tokens']} tokens of user turns (stage.instruction_max_new_tokens="
                f"{st.instruction_max_new_tokens}) + {size['turns']} x stage.reply_max_new_tokens={st.reply_max_new_tokens} "
                f"+ {size['overhead']} tokens of format = {size['total']}; its reply would be cut and the label audit would stop the run after the data was "
                f"made. Raise stage.max_length to at least {size['total']} or lower the limits. {NOTHING}")
    return out
