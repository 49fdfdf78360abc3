"""The logprob critic: the base model scores its own (prompt, reply) pairs, no API call.

The default score, ``pmi``, for a reply y = y_1..y_T to a prompt x, followed by the format's
end-of-reply marker e (e.g. "\nUser:" in the transcript format, ``<|im_end|>`` in ChatML):

    relevance = (1/T) sum_t [log p(y_t | x, y_<t) - log p(y_t | x0, y_<t)]   (nats per reply token)
    ending    = log [p(e | x, y) + sum_k p(s_k | x, y)]                      (nats, once per reply)
    critic_score = relevance + ending / END_SCALE                             (END_SCALE = 10)

``ending`` is the probability that the reply ends where it does, in any way the model can end it:
the format's marker e, or one of the end tokens s_k (EOS and the template's end-of-turn token,
when they differ from e). An instruct model often closes a transcript-format reply with its own
EOS instead of "\nUser:"; counting e alone scored such a properly ended reply -14.5, as if cut.

``relevance`` is the mean pointwise mutual information between the prompt and each reply token,
x0 being the UNCONDITIONAL prompt: the format's opening of a reply with no user turn at all
(training/data.py unconditional_prompt), so log p(y | x0) is the reply's prior in that format. It
is LENGTH-NORMALISED (a per-token mean, so long replies gain nothing by length) and it is high
only for tokens the prompt explains. Plain likelihood is not: it favours repetitive and generic text (a repeated sentence is
easy to predict) and ranked a repetitive reply above a coherent one in all three cases of
tests/test_real_critic.py, and an off-topic one above the coherent one in one. Repeated or
off-topic tokens have a PMI near zero, so they lower the mean. ``ending`` is what catches a
reply cut mid-sentence, whose own tokens look fine: the model gives the end marker e^-16 to
e^-23 after a cut, e^-3 to e^-5 after a complete reply (SmolLM2-135M-Instruct); dividing by 10
makes a cut cost 1-2 nats per token against a relevance spread of about 1.

Other modes: ``loglik`` = (1/(T+|e|)) sum log p over the reply and its end marker (the older
score, kept for comparison), ``judge`` = log P(" good") - log P(" bad") after a judgement
question, ``both`` = the mean of the z-scores of ``pmi`` and ``judge``. Every row keeps all the
scores it was given.

Batches are LEFT-padded so every continuation ends at the last position; ``position_ids =
cumsum(attention_mask) - 1`` gives each row the positions it would have alone (batched equals
one-at-a-time, tests/test_training.py). Log-probs are computed only at reply positions
(:func:`token_logprobs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

END_SCALE = 10.0  # nats of end-of-reply log-prob that cost one nat per token of relevance
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


def token_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str], *,
                   batch_size: int = 16, device: str | None = None, add_bos: bool = True) -> list[list[float]]:
    """log p(token | prompt, earlier tokens) for every token of each continuation.

    Prompt and continuation are tokenised separately and concatenated (so the continuation's
    tokens are exactly the ones scored). Only the reply positions are turned into log-probs: the
    rows are left-padded so every continuation ends at the last position, the model returns logits
    for the last ``max continuation length`` positions only (``logits_to_keep``), and each scored
    token's log-prob is its logit minus a float32 logsumexp over the vocabulary at that position;
    nothing of size [batch, sequence, vocabulary] is materialised for the prompt. BOS is prepended
    unless the prompt already starts with it (a chat template writes its own).
    """
    return _logprobs(model, tokenizer, prompts, continuations, batch_size=batch_size, device=device,
                     add_bos=add_bos)[0]


def _logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str], *,
              batch_size: int = 16, device: str | None = None, add_bos: bool = True,
              probe_at: Sequence[int] | None = None, probe_ids: Sequence[int] = (),
              ) -> tuple[list[list[float]], list[list[float]]]:
    """token_logprobs, plus, per row, log p(t | prompt, continuation[:probe_at]) for each t of
    ``probe_ids`` (e.g. the end tokens right after the reply part of a continuation)."""
    import torch

    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations differ in length")
    device = device or str(next(model.parameters()).device)
    bos = tokenizer.bos_token_id if add_bos else None
    bos_text = tokenizer.bos_token or None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[float]] = []
    probes: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        rows: list[list[int]] = []
        n_cont: list[int] = []
        for p, c in zip(prompts[start:start + batch_size], continuations[start:start + batch_size], strict=True):
            p_ids: list[int] = ([bos] if bos is not None and not (bos_text and p.startswith(bos_text)) else []) \
                + _encode(tokenizer, p)
            c_ids = _encode(tokenizer, c)
            if not p_ids:  # nothing to condition on: score from the first continuation token on
                p_ids, c_ids = c_ids[:1], c_ids[1:]
            rows.append(p_ids + c_ids)
            n_cont.append(len(c_ids))
        ids, mask, pos = _left_pad(rows, pad_id)
        keep = max(n_cont) + 1  # token j is predicted at position j-1: one more position than tokens
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=keep).logits  # [b, keep, vocab]
            width = ids.shape[1]
            for i, n in enumerate(n_cont):
                if probe_at is not None:
                    # continuation token j is predicted at kept position keep-1-n+j (j = n: after the last one)
                    j = min(max(0, probe_at[start + i]), n)
                    row = logits[i, keep - 1 - n + j].float()
                    lps = row[list(probe_ids)] - torch.logsumexp(row, dim=-1) if probe_ids else row[:0]
                    probes.append([float(v) for v in lps.cpu()])
                if n == 0:
                    out.append([])
                    continue
                # the continuation is the last n tokens, predicted at the n positions before the last one
                lg = logits[i, keep - 1 - n:keep - 1].float()
                target = ids[i, width - n:].to(lg.device)
                lp = lg.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1)
                out.append([float(v) for v in lp.cpu()])
    return out, probes


def end_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the single tokens that end a reply: EOS and the chat template's end-of-turn token."""
    from posttrain.training.chat import end_of_turn_tokens

    ids = [tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)]
    return [i for i in dict.fromkeys(ids) if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id]


def continuation_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str], *,
                          batch_size: int = 16, device: str | None = None, add_bos: bool = True,
                          ) -> list[tuple[float, int]]:
    """Sum of log-probabilities of each continuation given its prompt, and its token count
    (continuations that tokenise to nothing score (0.0, 0))."""
    per = token_logprobs(model, tokenizer, prompts, continuations, batch_size=batch_size, device=device,
                         add_bos=add_bos)
    return [(sum(t), len(t)) for t in per]


def reply_scores(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                 ends: Sequence[str], neutral_prompts: Sequence[str] | None = None, *, batch_size: int = 16,
                 device: str | None = None) -> list[dict[str, float]]:
    """Per reply: ``loglik`` (mean over reply + end tokens), ``ending`` (log p that the reply ends
    there: the end marker, EOS or the end-of-turn token), and, with ``neutral_prompts`` (the
    unconditional prompts), ``relevance`` (mean PMI over the reply tokens) and ``pmi``
    (= relevance + ending / END_SCALE). See the module docstring."""
    import math

    conts = [r + e for r, e in zip(responses, ends, strict=True)]
    stops = end_token_ids(tokenizer)
    n_ends = [len(_encode(tokenizer, e)) if e else 0 for e in ends]
    lens = [len(_encode(tokenizer, c)) for c in conts]
    # the end marker is tokenised after the reply; if the two merge at the seam, count the tail only
    n_ends = [min(ne, max(0, n - 1)) for ne, n in zip(n_ends, lens, strict=True)]
    cond, probes = _logprobs(model, tokenizer, prompts, conts, batch_size=batch_size, device=device,
                             probe_at=[n - ne for n, ne in zip(lens, n_ends, strict=True)], probe_ids=stops)
    unc = token_logprobs(model, tokenizer, neutral_prompts, conts, batch_size=batch_size, device=device) \
        if neutral_prompts is not None else None
    out = []
    for i, c in enumerate(cond):
        n_end = min(n_ends[i], max(0, len(c) - 1))
        reply = c[:len(c) - n_end]
        marker_ids = _encode(tokenizer, ends[i]) if ends[i] else []
        ways = [lp for t, lp in zip(stops, probes[i], strict=True) if marker_ids != [t]]
        if n_end:
            ways.append(sum(c[len(c) - n_end:]))
        top = max(ways) if ways else 0.0
        ending = top + math.log(sum(math.exp(w - top) for w in ways)) if ways else 0.0
        row = {"loglik": sum(c) / len(c) if c else float("-inf"), "ending": ending, "n_tokens": float(len(reply))}
        if n_end:
            row["ending_marker"] = sum(c[len(c) - n_end:])  # the format's marker alone, for the record
        if unc is not None:
            u = unc[i][:len(reply)]
            rel = sum(a - b for a, b in zip(reply, u, strict=True)) / len(reply) if reply else float("-inf")
            row["relevance"] = rel
            row["pmi"] = rel + row["ending"] / END_SCALE
        out.append(row)
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
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=1).logits[:, -1].float()
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


CRITIC_MODES = ("pmi", "loglik", "judge", "both")


def critic_scores(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                  instructions: Sequence[str], *, ends: Sequence[str] | None = None,
                  neutral_prompts: Sequence[str] | None = None, mode: str = "pmi", batch_size: int = 16,
                  device: str | None = None) -> list[dict[str, float]]:
    """Score every reply; returns dicts with the scores computed and ``critic_score`` (higher = keep).

    ``prompts`` are the rendered prompts the responses continue, ``ends`` the end-of-reply marker
    of each one's format, ``neutral_prompts`` the same format with the neutral user turn (needed by
    ``pmi`` and ``both``), ``instructions`` the plain user texts shown to the judgement question.
    """
    if mode not in CRITIC_MODES:
        raise ValueError(f"critic mode {mode!r}; choose one of {', '.join(CRITIC_MODES)}")
    ends = list(ends) if ends is not None else [""] * len(prompts)
    if mode in ("pmi", "both") and neutral_prompts is None:
        raise ValueError(f"critic mode {mode!r} needs neutral_prompts (the PMI baseline)")
    rows: list[dict[str, float]] = [{} for _ in prompts]
    if mode != "judge":
        for r, v in zip(rows, reply_scores(model, tokenizer, prompts, responses, ends,
                                           neutral_prompts if mode in ("pmi", "both") else None,
                                           batch_size=batch_size, device=device), strict=True):
            r.update(v)
    if mode in ("judge", "both"):
        for r, j in zip(rows, judge_scores(model, tokenizer, instructions, responses, batch_size=batch_size,
                                           device=device), strict=True):
            r.update(j)
    if mode in ("pmi", "loglik"):
        combined = [r[mode] for r in rows]
    elif mode == "judge":
        combined = [r["judge_logodds"] for r in rows]
    else:
        za, zb = _z([r["pmi"] for r in rows]), _z([r["judge_logodds"] for r in rows])
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
