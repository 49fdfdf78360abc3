"""The logprob critic: the base model scores its own (prompt, response) pairs.

Two scores, both from one forward pass per batch, no API call:

- ``loglik``: the length-normalised log-likelihood of the response given the prompt,
  (1/T) sum_t log p(y_t | prompt, y_<t), in nats per token. Batched with LEFT padding so every
  continuation ends at the last position; ``position_ids = cumsum(attention_mask) - 1`` gives each
  row the positions it would have alone, so a batched score equals the one-at-a-time score
  (tests/test_training.py checks |difference| < 1e-5).
- ``judge``: after a judgement question ("Is the response above good or bad? Answer:"), the
  log-odds log P(" good") - log P(" bad") of the next token (first token of each word), and
  ``p_good`` = P(good) / (P(good) + P(bad)).

``critic_scores`` combines them as configured (``loglik``, ``judge`` or ``both``: the mean of the
two z-scores) into one ``critic_score`` used to rank candidates; every example keeps all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

JUDGE_TEMPLATE = (
    "Below is an instruction and a response written by an assistant.\n\n"
    "Instruction: {prompt}\n\nResponse: {response}\n\n"
    "Is the response above good or bad? Answer:"
)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, position_ids


def continuation_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str], *,
                          batch_size: int = 16, device: str | None = None, add_bos: bool = True,
                          ) -> list[tuple[float, int]]:
    """Sum of log-probabilities of each continuation given its prompt, and its token count.

    Prompt and continuation are tokenised separately and concatenated (so the continuation's
    tokens are exactly the ones scored). Continuations that tokenise to nothing score (0.0, 0).
    """
    import torch

    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations differ in length")
    device = device or str(next(model.parameters()).device)
    bos = tokenizer.bos_token_id if add_bos else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[float, int]] = []
    for start in range(0, len(prompts), batch_size):
        rows, n_cont = [], []
        for p, c in zip(prompts[start:start + batch_size], continuations[start:start + batch_size], strict=True):
            p_ids = ([bos] if bos is not None else []) + _encode(tokenizer, p)
            c_ids = _encode(tokenizer, c)
            if not p_ids:  # nothing to condition on: score from the first continuation token on
                p_ids, c_ids = c_ids[:1], c_ids[1:]
            rows.append(p_ids + c_ids)
            n_cont.append(len(c_ids))
        ids, mask, pos = _left_pad(rows, pad_id)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(device)
        tok_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [b, width-1]
        width = ids.shape[1]
        for i, n in enumerate(n_cont):
            if n == 0:
                out.append((0.0, 0))
                continue
            # the continuation is the last n tokens; token j is predicted at position j-1
            out.append((float(tok_logp[i, width - 1 - n:].sum().item()), n))
    return out


def loglik_scores(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *,
                  batch_size: int = 16, device: str | None = None) -> list[float]:
    """Length-normalised log-likelihood (nats per token) of each response given its prompt."""
    pairs = continuation_logprobs(model, tokenizer, prompts, responses, batch_size=batch_size, device=device)
    return [s / n if n else float("-inf") for s, n in pairs]


def _first_token(tokenizer: Any, word: str) -> int:
    ids = _encode(tokenizer, word)
    if not ids:
        raise ValueError(f"the tokenizer encodes {word!r} to nothing")
    return ids[0]


def judge_scores(model: Any, tokenizer: Any, instructions: Sequence[str], responses: Sequence[str], *,
                 batch_size: int = 16, device: str | None = None) -> list[dict[str, float]]:
    """P("good") vs P("bad") as the next token after a judgement question, per pair."""
    import torch

    device = device or str(next(model.parameters()).device)
    good, bad = _first_token(tokenizer, " good"), _first_token(tokenizer, " bad")
    bos = tokenizer.bos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[dict[str, float]] = []
    for start in range(0, len(instructions), batch_size):
        texts = [JUDGE_TEMPLATE.format(prompt=p.strip(), response=r.strip())
                 for p, r in zip(instructions[start:start + batch_size], responses[start:start + batch_size],
                                 strict=True)]
        rows = [([bos] if bos is not None else []) + _encode(tokenizer, t) for t in texts]
        ids, mask, pos = _left_pad(rows, pad_id)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device)).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        for i in range(len(rows)):
            lg, lb = float(logp[i, good]), float(logp[i, bad])
            p_good = 1.0 / (1.0 + math.exp(lb - lg))
            out.append({"judge_logodds": lg - lb, "p_good": p_good})
    return out


def _z(values: Sequence[float]) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return [0.0 if math.isfinite(v) else -1e9 for v in values]
    mean = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) or 1.0
    return [(v - mean) / sd if math.isfinite(v) else -1e9 for v in values]


def critic_scores(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                  instructions: Sequence[str], *, mode: str = "loglik", batch_size: int = 16,
                  device: str | None = None) -> list[dict[str, float]]:
    """Score every pair; returns dicts with ``loglik`` / ``judge_logodds`` / ``p_good`` and ``critic_score``.

    ``prompts`` are the rendered prompts the responses continue (for ``loglik``); ``instructions``
    the plain user texts shown to the judgement question.
    """
    if mode not in ("loglik", "judge", "both"):
        raise ValueError(f"critic mode {mode!r}; choose loglik, judge or both")
    rows: list[dict[str, float]] = [{} for _ in prompts]
    if mode in ("loglik", "both"):
        for r, v in zip(rows, loglik_scores(model, tokenizer, prompts, responses, batch_size=batch_size,
                                            device=device), strict=True):
            r["loglik"] = v
    if mode in ("judge", "both"):
        for r, j in zip(rows, judge_scores(model, tokenizer, instructions, responses, batch_size=batch_size,
                                           device=device), strict=True):
            r.update(j)
    if mode == "loglik":
        combined = [r["loglik"] for r in rows]
    elif mode == "judge":
        combined = [r["judge_logodds"] for r in rows]
    else:
        za, zb = _z([r["loglik"] for r in rows]), _z([r["judge_logodds"] for r in rows])
        combined = [(a + b) / 2 for a, b in zip(za, zb, strict=True)]
    for r, c in zip(rows, combined, strict=True):
        r["critic_score"] = c
    return rows


def keep_top(scores: Sequence[float], fraction: float, n_max: int | None = None) -> list[int]:
    """Indices of the best ``fraction`` of ``scores`` (at least one, at most ``n_max``), in input order.

    Ties are broken by position (earlier first) so the choice is deterministic.
    """
    if not scores:
        return []
    k = max(1, int(math.ceil(len(scores) * fraction)))
    if n_max is not None:
        k = min(k, n_max)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if math.isfinite(scores[i]) else math.inf, i))
    return sorted(order[:k])
