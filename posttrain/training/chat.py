"""Training an instruct model in its own chat format, with any chat template.

An instruct model trains on TRL's *conversational prompt/completion* examples: one example per
assistant turn, ``{"prompt": [system?, user, assistant, ..., user], "completion": [{"role":
"assistant", ...}]}``. TRL renders the prompt with ``add_generation_prompt=True`` and the prompt
plus the completion without it, and trains the tokens in which the second goes beyond the first:
the reply, the template's end-of-turn token and whatever separator the template puts after it.
That needs no ``{% generation %}`` markers and no edit of the template (``assistant_only_loss``
does need them; SmolLM2's template has none, and TRL cannot patch it).

It does need a template that is *prefix-preserving* for a reply: the rendered prompt must be a
prefix of the rendered conversation (text and tokens), and what follows the reply must contain an
end-of-turn token, so the model learns to stop. :func:`check_template` proves both on probe
conversations shaped like the training data (system prompt as configured, one and two turns)
before anything is generated or trained; :func:`expected_completion` is what the label audit
(training/common.py) requires each trained run of tokens to decode to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.errors import PosttrainError

PROBE_TURNS = (("Name a colour.", "Blue."), ("And another one?", "Green is another colour."))


def messages_of(history: Sequence[tuple[str, str | None]], system_prompt: str | None) -> list[dict[str, str]]:
    """Chat messages for (user, reply) turns; a reply None ends the list at that user turn."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    for user, reply in history:
        msgs.append({"role": "user", "content": user})
        if reply is not None:
            msgs.append({"role": "assistant", "content": reply})
    return msgs


def conversational_examples(rows: Sequence[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """One TRL conversational prompt/completion example per assistant turn (earlier replies as context)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        history: list[tuple[str, str | None]] = []
        for k, t in enumerate(r["turns"]):
            prompt = messages_of([*history, (t["user"], None)], system_prompt)
            out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": t["assistant"]}],
                        "row_id": r.get("id"), "turn": k})
            history.append((t["user"], t["assistant"]))
    return out


def end_of_turn_tokens(tokenizer: Any) -> list[str]:
    """The special tokens that can end an assistant turn: EOS and the template's own end-of-turn
    token when it is a different special token (``<|eot_id|>``, ``<end_of_turn>``, ``<|im_end|>``)."""
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    for tok in getattr(tokenizer, "all_special_tokens", []):
        if tok and tok in template and tok not in found and any(
                w in tok.lower() for w in ("end", "eot", "eos")):
            found.append(tok)
    return found


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def expected_completion(tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]) -> str:
    """What TRL trains for one conversational example: the render of prompt + completion beyond
    the render of the prompt with its generation prompt."""
    head = _render(tokenizer, prompt, generation_prompt=True)
    full = _render(tokenizer, prompt + completion, generation_prompt=False)
    if not full.startswith(head):
        raise PosttrainError("the chat template renders a prompt differently once its reply follows (not "
                             "prefix-preserving); TRL would train on a context the model never sees")
    return full[len(head):]


def check_template(tokenizer: Any, system_prompt: str | None, model_name: str) -> dict[str, Any]:
    """Prove the chat template can train replies (see the module docstring) or raise, naming the fix.

    Returns what was checked: the end-of-turn tokens and the trained suffix after a probe reply.
    """
    template = getattr(tokenizer, "chat_template", None)
    fix = (f"train model={model_name} in a text format instead (prompt=transcript), or give it a template "
           "that renders a prompt identically with and without its reply. Nothing was generated or trained.")
    if not template:
        raise PosttrainError(f"prompt.format=chat_template: model {model_name}'s tokenizer has no chat template; {fix}")
    ends = end_of_turn_tokens(tokenizer)
    tails = []
    for n in range(1, len(PROBE_TURNS) + 1):
        turns = list(PROBE_TURNS[:n])
        prompt = messages_of([*turns[:-1], (turns[-1][0], None)], system_prompt)
        reply = turns[-1][1]
        try:
            tail = expected_completion(tokenizer, prompt, [{"role": "assistant", "content": reply}])
        except PosttrainError as exc:
            raise PosttrainError(f"prompt.format=chat_template, model {model_name}: {exc}; {fix}") from exc
        except Exception as exc:  # a template that raises on these messages (e.g. no system role)
            raise PosttrainError(f"prompt.format=chat_template, model {model_name}: the template fails on a "
                                 f"{n}-turn conversation ({type(exc).__name__}: {exc}); {fix}") from exc
        if not tail.lstrip().startswith(reply):
            raise PosttrainError(f"prompt.format=chat_template, model {model_name}: after the generation prompt the "
                                 f"template renders {tail[:60]!r}, not the reply; TRL would train template markup. {fix}")
        after = tail.lstrip()[len(reply):]
        if not any(e in after for e in ends):
            raise PosttrainError(f"prompt.format=chat_template, model {model_name}: the template closes a reply with "
                                 f"{after!r}, which holds no end-of-turn token ({ends}); the model would never learn "
                                 f"to stop. {fix}")
        head_ids = list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                      return_dict=True)["input_ids"])
        full_ids = list(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reply}],
                                                      tokenize=True, return_dict=True)["input_ids"])
        if full_ids[:len(head_ids)] != head_ids:
            raise PosttrainError(f"prompt.format=chat_template, model {model_name}: the prompt's tokens are not a "
                                 f"prefix of the conversation's tokens (tokens merge across the reply's start); TRL "
                                 f"would cut the prompt. {fix}")
        tails.append(after)
    return {"end_of_turn_tokens": ends, "after_reply": tails[0], "probe_turns": len(PROBE_TURNS)}
