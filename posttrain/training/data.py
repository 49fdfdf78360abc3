"""Training data for the sft / dpo / dpo_only stages: where it comes from, how it is filtered,
and how it becomes TRL examples.

Sources (``stage.data_source``; ``auto`` = ``synthetic`` for tiny models, ``generated`` otherwise):

- ``generated`` (the real-model default): Self-Instruct from the BASE model itself.
  1. Instructions: few-shot prompts ("Task 1: ... Task k+1:") built from ``stage.seed_tasks`` and
     instructions accepted so far, sampled in batches. Each candidate must pass, in order: a
     length filter (``min/max_instruction_words``), a keyword filter (``banned_keywords``: tasks a
     text model cannot do, e.g. images or files), a format filter (starts with a letter or digit,
     mostly letters), the CONTAMINATION filter (ROUGE-L F >= ``rouge_threshold`` against any
     held-out instruction of the ``instructions`` benchmark's test split, or any user turn of the
     ``conversations`` benchmark: dropped and counted), and the DIVERSITY filter (ROUGE-L F >=
     ``rouge_threshold`` against anything already in the pool, seeds included).
  2. Responses: the base model answers each instruction in the ``instruction_cue`` format (greedy).
  3. Multi-turn: a ``multiturn_fraction`` of the instructions open a conversation in the
     ``transcript`` format, continued with templated follow-up requests (FOLLOWUPS below: our own,
     disjoint from the benchmarks, and passed through the same contamination filter); the base
     model writes every reply.
  4. Stated constraints, by paired samples: a ``constraint_fraction`` of the single-turn instructions
     get a second, sampled reply (``constraint_temperature``) to the same plain instruction. When
     each reply has a content word the other never uses, a seeded coin picks one reply as the chosen
     one, the other's word ``w`` is banned after the fact ("Do not use the word 'w'." is appended to
     the instruction), and the other reply is kept as the row's ``violation`` (the
     constraint_violation negative). Both replies are the model's own answers to the same question,
     so nothing but the banned word tells them apart. (Asking the model again *with* the constraint,
     the first design, made SmolLM2 apologise in about half its replies, "I'm sorry for any
     confusion...", and word n-grams separated those pairs at 0.89.) A pair where either reply is a
     non-answer (replies.non_answer) or is incomplete is not made; the plain row stays.
  Everything is appended to ``<run>/data/*.jsonl`` as it is produced; a rerun reuses those rows.
- ``synthetic``: template-made memory conversations (posttrain/training/synthetic.py).
- ``stage.data=<file.jsonl | run folder>``: an existing file (e.g. the train_data.jsonl of an SFT
  run, so that dpo and dpo_only train on the very same data). Rows are ``{"turns": [{"user",
  "assistant"}, ...]}``, ``{"prompt", "response"}``, ``{"instruction", "output"}`` or
  ``{"messages": [...]}``.

Every source then goes through the completeness filter (:func:`incomplete_reason`: a reply cut at
``max_new_tokens``, ``finish_reason="length"``, or ending mid-sentence never becomes a training
target; ``data_report.json: dropped_incomplete`` counts them by reason), the contamination filter
and the logprob critic
(posttrain/training/critic.py): candidates are scored by the base model and the best
``critic_keep_fraction`` are kept (at most ``num_examples``); every kept row carries its scores.
The result is ``<run>/train_data.jsonl`` (its sha256 in ``data_report.json`` and in the adapter's
provenance).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from posttrain.errors import PosttrainError
from posttrain.records import append_jsonl, read_json, read_jsonl, sha256_file, sha256_text, write_json

# looping() and incomplete_reason() live in replies.py (negatives.py uses them too); re-exported here
from posttrain.training.replies import incomplete_reason, looping, non_answer  # noqa: F401
from posttrain.training.rouge import RougePool, rouge_l

log = logging.getLogger(__name__)

DATA_FILE = "train_data.jsonl"
REPORT_FILE = "data_report.json"
DATA_VERSION = "data-v3"
FOLLOWUPS = (
    "Can you make that shorter?",
    "Please explain that in simpler words.",
    "Can you give me one concrete example?",
    "Now sum up your answer in one sentence.",
    "Why is that the case?",
    "What would you add to that?",
)
# per-turn fields a row may carry besides user/assistant (generation's finish_reason; a stated constraint
# and the reply that breaks it, made by the data generators for the constraint_violation negative)
TURN_EXTRAS = ("finish_reason", "constraint", "violation")
CONSTRAINT_SUFFIX = "Do not use the word '{word}'."
FEWSHOT_HEADER = "Come up with a series of tasks that a user might ask an AI assistant to do.\n\n"


@dataclass
class CriticInputs:
    """One entry per assistant turn to score (see posttrain/training/critic.py)."""

    prompts: list[str]  # the conversation so far, rendered in the row's format
    neutral_prompts: list[str]  # the format's reply cue with no user turn (the PMI baseline, unconditional)
    responses: list[str]  # " " + the reply
    ends: list[str]  # the format's end-of-reply marker (its first stop string)
    instructions: list[str]  # the plain user text (for the judgement question)
    owner: list[int]  # index of the row each entry belongs to


ScoreFn = Callable[[CriticInputs], list[dict[str, float]]]


# ---------------------------------------------------------------- sources and fingerprints

def resolve_source(stage: Any, model_cfg: Any) -> str:
    src = stage.data_source
    if src == "auto":
        return "synthetic" if model_cfg.tiny else "generated"
    if src not in ("generated", "synthetic"):
        raise PosttrainError(f"stage.data_source={src!r} is not valid; choose auto, generated or synthetic")
    return src


def resolve_data_path(data: str) -> Path:
    """``stage.data``: a JSONL file, or a run folder holding train_data.jsonl."""
    p = Path(data).expanduser()
    if p.is_dir():
        p = p / DATA_FILE
    if not p.is_file():
        raise PosttrainError(f"stage.data={data}: no such file (expected a JSONL file or a run folder with "
                             f"{DATA_FILE}). Nothing was loaded or spent.")
    return p


def data_fingerprint(cfg: Any, source: str, revision: str | None) -> str:
    """What makes two data sets the same: the base weights, the source, its settings and the seed."""
    st = cfg.stage
    keys = ["data", "data_source", "num_examples", "seed_tasks", "fewshot_k", "rouge_threshold",
            "min_instruction_words", "max_instruction_words", "banned_keywords", "max_rounds",
            "instruction_max_new_tokens", "reply_max_new_tokens", "reply_repetition_penalty", "multiturn_fraction",
            "followup_turns", "critic", "critic_keep_fraction",
            "synthetic_templates", "constraint_fraction", "constraint_temperature"]
    settings = {k: OmegaConf.to_container(st[k], resolve=True) if OmegaConf.is_config(st[k]) else st[k]
                for k in keys}
    prompt = OmegaConf.to_container(cfg.prompt, resolve=True)
    gen = OmegaConf.to_container(cfg.generation, resolve=True)
    data_sha = sha256_file(resolve_data_path(st.data)) if st.data else None
    blob = repr((DATA_VERSION, revision, source, settings, prompt, gen, cfg.seed, data_sha))
    return sha256_text(blob)[:16]


def normalise_row(row: dict[str, Any], i: int) -> dict[str, Any]:
    """Any accepted row shape -> ``{"id", "turns": [{"user", "assistant"}], ...}``."""
    out = dict(row)
    if "turns" in row:
        turns = row["turns"]
    elif "messages" in row:
        turns, pending = [], None
        for m in row["messages"]:
            if m.get("role") == "user":
                pending = m.get("content", "")
            elif m.get("role") == "assistant" and pending is not None:
                turns.append({"user": pending, "assistant": m.get("content", "")})
                pending = None
        out.pop("messages")
    elif "prompt" in row and ("response" in row or "completion" in row):
        turns = [{"user": row["prompt"], "assistant": row.get("response", row.get("completion"))}]
    elif "instruction" in row and ("output" in row or "response" in row):
        turns = [{"user": row["instruction"], "assistant": row.get("output", row.get("response"))}]
    else:
        raise PosttrainError(f"training data row {i + 1}: expected 'turns', 'messages', 'prompt'+'response' or "
                             f"'instruction'+'output'; got keys {sorted(row)}")
    clean = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict) or not str(t.get("user", "")).strip() or not str(t.get("assistant", "")).strip():
            raise PosttrainError(f"training data row {i + 1}, turn {k}: needs non-empty 'user' and 'assistant'")
        clean.append({"user": str(t["user"]), "assistant": str(t["assistant"])}
                     | {k: t[k] for k in TURN_EXTRAS if t.get(k) is not None})
    if not clean:
        raise PosttrainError(f"training data row {i + 1}: no complete (user, assistant) turn")
    out["turns"] = clean
    out.setdefault("id", f"row-{i:05d}")
    out.setdefault("source", "file")
    return out


# ---------------------------------------------------------------- complete replies only

def drop_incomplete(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]]]:
    """Rows whose every reply is complete; counts of the others by reason; a few examples for the report."""
    kept: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    counts = {"length": 0, "looping": 0, "mid_sentence": 0, "empty": 0}
    for r in rows:
        why = next((w for t in r["turns"] if (w := incomplete_reason(t["assistant"], t.get("finish_reason")))), None)
        if why is None:
            kept.append(r)
            continue
        counts[why] += 1
        if len(examples) < 5:
            bad = next(t for t in r["turns"] if incomplete_reason(t["assistant"], t.get("finish_reason")))
            examples.append({"id": r.get("id"), "reason": why, "reply_tail": bad["assistant"][-120:]})
    return kept, counts, examples


# ---------------------------------------------------------------- contamination

class ContaminationFilter:
    """Drops texts near the held-out instruction test split or any conversation-benchmark user turn."""

    def __init__(self, threshold: float, heldout: Sequence[str] | None = None,
                 benchmark_turns: Sequence[str] | None = None):
        if heldout is None:
            from posttrain.benchmarks.instructions import heldout_texts

            heldout = heldout_texts()
        if benchmark_turns is None:
            from posttrain.benchmarks import load_benchmark

            benchmark_turns = sorted({t.user for it in load_benchmark("conversations").items for t in it.turns})
        self.heldout = RougePool(heldout, threshold)
        self.benchmark = RougePool(benchmark_turns, threshold)
        self.threshold = threshold
        self._cache: dict[str, str | None] = {}
        self.examples: list[dict[str, Any]] = []  # a few dropped texts, for the report

    def reason(self, text: str) -> str | None:
        """``"heldout"``, ``"benchmark_conversations"`` or None (clean)."""
        if text not in self._cache:
            why = None
            hit, score, match = self.heldout.too_similar(text)
            if hit:
                why = "heldout"
            else:
                hit, score, match = self.benchmark.too_similar(text)
                if hit:
                    why = "benchmark_conversations"
            if why and len(self.examples) < 10:
                self.examples.append({"text": text, "reason": why, "rouge_l": round(score, 4), "closest": match})
            self._cache[text] = why
        return self._cache[text]

    def filter_rows(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        kept, counts = [], {"dropped_heldout": 0, "dropped_benchmark_conversations": 0}
        for r in rows:
            reasons = [self.reason(t["user"]) for t in r["turns"]]
            why = next((x for x in reasons if x), None)
            if why:
                counts[f"dropped_{why}"] += 1
            else:
                kept.append(r)
        return kept, counts


# ---------------------------------------------------------------- self-instruct (generated)

def fewshot_prompt(examples: Sequence[str]) -> str:
    lines = [FEWSHOT_HEADER.rstrip("\n"), ""]
    lines += [f"Task {i + 1}: {e.strip()}" for i, e in enumerate(examples)]
    lines.append(f"Task {len(examples) + 1}:")
    return "\n".join(lines)


def instruction_filter(text: str, st: Any) -> str | None:
    """Cheap per-candidate filters; returns the drop reason or None."""
    words = text.split()
    if not text or len(words) < st.min_instruction_words:
        return "too_short"
    if len(words) > st.max_instruction_words:
        return "too_long"
    low = text.lower()
    for kw in st.banned_keywords:
        if re.search(rf"\b{re.escape(kw.lower())}\b", low):
            return "keyword"
    if not text[0].isalnum():
        return "format"
    letters = sum(ch.isalpha() for ch in text)
    if letters < 0.5 * len(text.replace(" ", "")):
        return "format"
    return None


def _clean_candidate(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return re.sub(r"\s+", " ", first).strip()


def self_instruct(backend: Any, st: Any, *, gen_cfg: Any, contamination: ContaminationFilter, target: int,
                  seed: int, state_path: Path, fingerprint: str, progress: bool = True) -> tuple[list[str], dict[str, int]]:
    """Grow a pool of instructions from ``st.seed_tasks`` to ``target`` accepted ones (resumable)."""
    import numpy as np
    from tqdm.auto import tqdm

    from posttrain.generation.backends import SamplingParams

    previous = read_jsonl(state_path, repair=True)
    stale = [r for r in previous if r.get("fingerprint") != fingerprint]
    if stale:
        raise PosttrainError(f"{state_path} holds {len(stale)} rows made with other settings; use a new "
                             "hydra.run.dir or delete the file to regenerate")
    seeds = [s.strip() for s in st.seed_tasks if s.strip()]
    pool = RougePool(seeds, st.rouge_threshold)
    accepted: list[str] = []
    counts: dict[str, int] = {}
    last_round = -1
    for r in previous:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        counts["proposed"] = counts.get("proposed", 0) + 1
        last_round = max(last_round, r["round"])
        if r["status"] == "kept":
            accepted.append(r["text"])
            pool.add(r["text"])
    if previous:
        log.info("resume: %d instructions proposed earlier, %d kept", len(previous), len(accepted))
    bar = tqdm(total=target, initial=min(len(accepted), target), desc="self-instruct", unit="instr",
               disable=not progress)
    round_no = last_round + 1
    while len(accepted) < target and round_no < st.max_rounds:
        rng = np.random.default_rng([seed, round_no])
        prompts = []
        for _ in range(gen_cfg.batch_size):
            k_machine = min(len(accepted), max(0, st.fewshot_k // 3))
            machine = [accepted[i] for i in rng.choice(len(accepted), k_machine, replace=False)] if k_machine else []
            k_seed = min(len(seeds), st.fewshot_k - len(machine))
            human = [seeds[i] for i in rng.choice(len(seeds), k_seed, replace=False)]
            shots = list(human) + machine
            rng.shuffle(shots)
            prompts.append(fewshot_prompt(shots))
        params = SamplingParams(max_new_tokens=st.instruction_max_new_tokens, do_sample=True,
                                temperature=max(gen_cfg.temperature, 0.7), top_p=gen_cfg.top_p,
                                seed=seed * 100_003 + round_no, stop_strings=("\nTask", "\n\n"))
        gens = backend.generate(prompts, params)
        rows = []
        for g in gens:
            text = _clean_candidate(g.text)
            status = instruction_filter(text, st)
            score, match = 0.0, None
            if status is None:
                why = contamination.reason(text)
                if why:
                    status = f"dropped_{why}"
            if status is None:
                hit, score, match = pool.too_similar(text)
                status = "dropped_pool_duplicate" if hit else "kept"
            elif not status.startswith("dropped_"):
                status = f"dropped_{status}"
            if status == "kept" and len(accepted) < target:
                accepted.append(text)
                pool.add(text)
                bar.update(1)
            elif status == "kept":
                status = "surplus"
            counts[status] = counts.get(status, 0) + 1
            counts["proposed"] = counts.get("proposed", 0) + 1
            rows.append({"fingerprint": fingerprint, "round": round_no, "text": text, "status": status,
                         "rouge_max_pool": round(score, 4), "closest": match})
        append_jsonl(state_path, rows)
        round_no += 1
    bar.close()
    counts["rounds"] = round_no
    return accepted, counts


def _content_words(reply: str, instruction: str) -> dict[str, int]:
    """Lower-case content words of ``reply`` (4+ letters, no stopword, none of the instruction's words)
    with their counts: lower-case only, so no names and no sentence starts."""
    from posttrain.training.negatives import _STOPWORDS

    avoid = {w.lower() for w in re.findall(r"[A-Za-z]+", instruction)}
    counts: dict[str, int] = {}
    for w in re.findall(r"\b[a-z]{4,}\b", reply):
        if w not in _STOPWORDS and w not in avoid:
            counts[w] = counts.get(w, 0) + 1
    return counts


def constraint_pair(a: tuple[str, str | None], b: tuple[str, str | None], instruction: str,
                    rng: Any) -> tuple[tuple[str, str | None], str, str] | None:
    """A stated-constraint pair from two replies to the same plain instruction, or None.

    A direction (ban a word of one reply that the other does not use in any form) is *viable* when
    such a word exists; the banned word is that reply's most frequent one. With both directions
    viable a seeded coin picks one, so which reply becomes the chosen one is independent of its
    length or style; with only one viable the pair is dropped (None), because the reply holding a
    word the other lacks tends to be the longer one, and a length rule would then separate the pairs.

    Returns ((chosen, its finish_reason), violation, word): the chosen reply uses no form of the word
    (:func:`~posttrain.training.replies.uses_word_form`), the violation uses it as a whole word.
    """
    from posttrain.training.replies import uses_word_form

    def ban(breaker: str, keeper: str) -> str | None:
        words = {w: c for w, c in _content_words(breaker, instruction).items() if not uses_word_form(keeper, w)}
        return max(sorted(words), key=lambda w: words[w]) if words else None

    a_word, b_word = ban(a[0], b[0]), ban(b[0], a[0])  # a_word: a breaks it, b keeps it
    if a_word is None or b_word is None:
        return None
    if rng.random() < 0.5:
        return b, a[0], a_word
    return a, b[0], b_word


def generate_conversations(backend: Any, instructions: Sequence[str], st: Any, *, prompt_cfg: Any, gen_cfg: Any,
                           contamination: ContaminationFilter, seed: int, state_path: Path, fingerprint: str,
                           progress: bool = True, own_format: str | None = None,
                           tokenizer: Any = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The model's replies (resumable): a base model's single-turn in instruction_cue and multi-turn
    in transcript; an instruct model's in its own chat template (``own_format="chat_template"``,
    rendered with ``tokenizer``), where it ends its turn with its own end-of-turn token. Replies are
    limited to ``st.reply_max_new_tokens``.

    Every reply keeps its ``finish_reason``; a conversation stops at its first incomplete reply
    (no follow-up is asked after it) and is dropped with the reason. A ``constraint_fraction`` of the
    single-turn instructions are asked again with a banned word (see the module docstring).
    """
    import numpy as np
    from tqdm.auto import tqdm

    from posttrain.generation.backends import SamplingParams
    from posttrain.generation.prompts import render_prompt, stop_strings
    previous = read_jsonl(state_path, repair=True)
    if any(r.get("fingerprint") != fingerprint for r in previous):
        raise PosttrainError(f"{state_path} holds rows made with other settings; use a new hydra.run.dir or "
                             "delete the file to regenerate")
    done = {r["instruction"]: r for r in previous}
    rng = np.random.default_rng([seed, 7])
    crng = np.random.default_rng([seed, 13])  # its own stream: the multi-turn plan does not depend on it
    followups = [f for f in FOLLOWUPS if contamination.reason(f) is None]
    plan = []
    for instr in instructions:
        multi = bool(followups) and rng.random() < st.multiturn_fraction
        n_follow = st.followup_turns if multi else 0
        fus = [followups[int(i)] for i in rng.choice(len(followups), min(n_follow, len(followups)), replace=False)] \
            if n_follow else []
        constrained = bool(crng.random() < st.constraint_fraction) and not fus
        plan.append((instr, fus, constrained))
    pending = [p for p in plan if p[0] not in done]
    bar = tqdm(total=len(plan), initial=len(plan) - len(pending), desc="base-model replies", unit="conv",
               disable=not progress)
    bs = gen_cfg.batch_size

    kind = "instruct" if own_format == "chat_template" else "base"

    def render(history: list[tuple[str, str | None]], fmt: str) -> str:
        return render_prompt(history, fmt, prompt_cfg, kind=kind, tokenizer=tokenizer)

    def params_for(fmt: str, salt: int) -> Any:
        return SamplingParams(max_new_tokens=st.reply_max_new_tokens, do_sample=gen_cfg.do_sample,
                              temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, seed=seed + salt,
                              stop_strings=tuple(stop_strings(fmt, prompt_cfg)),
                              repetition_penalty=float(st.reply_repetition_penalty))

    for start in range(0, len(pending), bs):
        chunk = pending[start:start + bs]
        fmt_of = [own_format or ("transcript" if fus else "instruction_cue") for _, fus, _ in chunk]
        histories: list[list[tuple[str, str | None]]] = [[(instr, None)] for instr, _, _ in chunk]
        finish: list[list[str]] = [[] for _ in chunk]
        alive = [True] * len(chunk)
        for k in range(1 + max(len(f) for _, f, _ in chunk)):
            idx = [i for i in range(len(chunk)) if alive[i] and k <= len(chunk[i][1])]
            if not idx:
                break
            if k > 0:
                for i in idx:
                    histories[i].append((chunk[i][1][k - 1], None))
            by_fmt: dict[str, list[int]] = {}
            for i in idx:
                by_fmt.setdefault(fmt_of[i], []).append(i)
            for fmt, members in by_fmt.items():
                prompts = [render(histories[i], fmt) for i in members]
                for i, g in zip(members, backend.generate(prompts, params_for(fmt, start + k)), strict=True):
                    reply = g.text.strip()
                    histories[i][-1] = (histories[i][-1][0], reply)
                    finish[i].append(g.finish_reason)
                    if not reply or incomplete_reason(reply, g.finish_reason):
                        alive[i] = False  # no follow-up after an empty or cut-off reply
        rows: list[dict[str, Any]] = []
        for i, (instr, _fus, _c) in enumerate(chunk):
            turns: list[dict[str, Any]] = [
                {"user": u, "assistant": a or "", "finish_reason": f}
                for (u, a), f in zip(histories[i], [*finish[i], *[None] * len(histories[i])], strict=False)]
            status = "ok"
            why = next((w for t in turns if (w := incomplete_reason(t["assistant"], t["finish_reason"]))), None)
            if any(not t["assistant"] for t in turns):
                status = "dropped_empty_reply"
            elif why:
                status = f"dropped_incomplete_{why}"
            elif any(rouge_l(t["assistant"], t["user"]) >= 0.9 for t in turns):
                status = "dropped_echo"
            rows.append({"fingerprint": fingerprint, "instruction": instr, "format": fmt_of[i],
                         "turns": turns, "status": status})
        # stated constraints, by paired samples: a second, sampled reply to the same plain instruction;
        # a content word one reply uses and the other does not becomes the banned word, stated afterwards
        asks = [i for i, (_instr, _fus, constrained) in enumerate(chunk) if constrained and rows[i]["status"] == "ok"]
        if asks:
            ask_fmt = own_format or "instruction_cue"
            prompts = [render([(chunk[i][0], None)], ask_fmt) for i in asks]
            sampled = replace(params_for(ask_fmt, start + 97), do_sample=True,
                              temperature=float(st.constraint_temperature), top_p=0.95)
            coin = np.random.default_rng([seed, 19, start])
            for i, g in zip(asks, backend.generate(prompts, sampled), strict=True):
                instr, first = chunk[i][0], rows[i]["turns"][0]
                second = g.text.strip()
                if not second or incomplete_reason(second, g.finish_reason):
                    rows[i]["constraint_status"] = "incomplete"
                elif non_answer(first["assistant"]) or non_answer(second):
                    rows[i]["constraint_status"] = "non_answer"
                elif (pick := constraint_pair((first["assistant"], first["finish_reason"]),
                                              (second, g.finish_reason), instr, coin)) is None:
                    rows[i]["constraint_status"] = "no_word"
                else:
                    (chosen, chosen_finish), violation, word = pick
                    rows[i]["constraint_status"] = "kept"
                    rows[i]["turns"] = [{"user": f"{instr} {CONSTRAINT_SUFFIX.format(word=word)}",
                                         "assistant": chosen, "finish_reason": chosen_finish,
                                         "constraint": {"kind": "banned_word", "value": word,
                                                        "method": "paired_samples"},
                                         "violation": violation}]
        for r in rows:
            done[r["instruction"]] = r
        append_jsonl(state_path, rows)
        bar.update(len(chunk))
    bar.close()
    counts: dict[str, int] = {}
    out = []
    for instr, _, _ in plan:
        r = done[instr]
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if "constraint_status" in r:
            key = f"constraint_{r['constraint_status']}"
            counts[key] = counts.get(key, 0) + 1
        if r["status"] == "ok":
            out.append({"source": "generated", "category": "multi_turn" if len(r["turns"]) > 1 else "single_turn",
                        "generation_format": r["format"], "turns": r["turns"]})
    return out, counts


# ---------------------------------------------------------------- critic over rows

def unconditional_prompt(fmt: str, prompt_cfg: Any, tokenizer: Any = None) -> str:
    """The PMI baseline x0: the format's opening of an assistant reply with NO user turn (the
    preamble or system turn, then the reply cue), so log p(reply | x0) is the reply's prior."""
    from posttrain.generation.prompts import URIAL_PREAMBLE

    if fmt == "transcript":
        head = f"{prompt_cfg.preamble.strip()}\n\n" if prompt_cfg.preamble else ""
        return head + prompt_cfg.assistant_marker.strip()
    if fmt == "instruction_cue":
        return "Response:"
    if fmt == "urial":
        return URIAL_PREAMBLE + "# Answer:\n"
    if fmt == "raw":
        return ""
    if fmt != "chat_template":
        raise ValueError(f"unknown prompt.format {fmt!r}")
    probe = [{"role": "user", "content": "x"}]
    with_cue = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    cue = with_cue[len(tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)):]
    system = ([{"role": "system", "content": prompt_cfg.system_prompt}] if prompt_cfg.system_prompt is not None
              else [])
    try:  # the system turn alone (a template may refuse a conversation without a user turn)
        head = tokenizer.apply_chat_template(system, tokenize=False, add_generation_prompt=False) if system else ""
    except Exception:
        head = ""
    return str(head) + str(cue)


def end_marker(fmt: str, prompt_cfg: Any, tokenizer: Any = None) -> str:
    """What follows a complete reply in a format: its first stop string, or for a chat template the
    end-of-turn token it closes a reply with."""
    from posttrain.generation.prompts import stop_strings

    if fmt != "chat_template":
        return (stop_strings(fmt, prompt_cfg) or [""])[0]
    from posttrain.training.chat import PROBE_TURNS, end_of_turn_tokens, expected_completion, messages_of

    user, reply = PROBE_TURNS[0]
    after = expected_completion(tokenizer, messages_of([(user, None)], prompt_cfg.system_prompt),
                                [{"role": "assistant", "content": reply}]).lstrip()[len(reply):]
    found = [(after.find(t), t) for t in end_of_turn_tokens(tokenizer) if t in after]
    return min(found)[1] if found else after.strip()


def critic_inputs(rows: Sequence[dict[str, Any]], prompt_cfg: Any, tokenizer: Any = None) -> CriticInputs:
    """One entry per assistant turn, rendered in the format the row was made in (a chat template
    needs ``tokenizer``)."""
    from posttrain.generation.prompts import render_prompt

    out = CriticInputs([], [], [], [], [], [])
    cache: dict[str, tuple[str, str]] = {}
    for i, r in enumerate(rows):
        fmt = r.get("generation_format", "transcript")
        kind = "instruct" if fmt == "chat_template" else "base"
        if fmt not in cache:
            cache[fmt] = (end_marker(fmt, prompt_cfg, tokenizer), unconditional_prompt(fmt, prompt_cfg, tokenizer))
        end, x0 = cache[fmt]
        history: list[tuple[str, str | None]] = []
        for t in r["turns"]:
            out.prompts.append(render_prompt(history + [(t["user"], None)], fmt, prompt_cfg, kind=kind,
                                             tokenizer=tokenizer))
            out.neutral_prompts.append(x0)
            # a chat template puts the reply right after its cue; the text formats after a space
            out.responses.append(("" if fmt == "chat_template" else " ") + t["assistant"].strip())
            out.ends.append(end)
            out.instructions.append(t["user"])
            out.owner.append(i)
            history.append((t["user"], t["assistant"]))
    return out


def apply_critic(rows: list[dict[str, Any]], score_fn: ScoreFn, *, prompt_cfg: Any, keep_fraction: float,
                 n_max: int, tokenizer: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every row (mean over its assistant turns), keep the best fraction (at most ``n_max``)."""
    from posttrain.training.critic import keep_top

    if not rows:
        return [], {"n_scored": 0, "n_kept": 0}
    inputs = critic_inputs(rows, prompt_cfg, tokenizer)
    per_turn = score_fn(inputs)
    by_row: list[list[dict[str, float]]] = [[] for _ in rows]
    for o, s in zip(inputs.owner, per_turn, strict=True):
        by_row[o].append(s)
    scores = []
    for r, turns in zip(rows, by_row, strict=True):
        agg = {k: sum(t[k] for t in turns) / len(turns) for k in turns[0]}
        r["critic"] = {k: round(v, 6) for k, v in agg.items()} | {"per_turn": turns}
        scores.append(agg["critic_score"])
    keep = keep_top(scores, keep_fraction, n_max)
    kept = [rows[i] for i in keep]
    finite = sorted(s for s in scores if math.isfinite(s))
    stats = {"n_scored": len(rows), "n_kept": len(kept), "keep_fraction": keep_fraction,
             "score_min": finite[0] if finite else None, "score_max": finite[-1] if finite else None,
             "score_median": finite[len(finite) // 2] if finite else None,
             "kept_score_min": min(scores[i] for i in keep) if keep else None}
    return kept, stats


# ---------------------------------------------------------------- generating until the target is reached

def _usable(rows: list[dict[str, Any]], contamination: ContaminationFilter) -> int:
    """Rows that will reach the critic: every reply complete and no user turn contaminated."""
    return len(contamination.filter_rows(drop_incomplete(rows)[0])[0])


def generate_until_enough(backend: Any, st: Any, *, cfg: Any, contamination: ContaminationFilter, run_dir: Path,
                          fingerprint: str, progress: bool, own_format: str | None, tokenizer: Any,
                          ) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int], dict[str, Any]]:
    """Self-instruct and replies, round after round, until ``num_examples / critic_keep_fraction``
    rows are complete (the critic then keeps ``num_examples``), or stop with the yield.

    Each round asks for as many more instructions as the yield so far says are needed (plus 10%);
    both steps resume from ``run_dir/data``. The proposals are capped by ``stage.max_rounds``
    batches: when they run out first, the error gives the yield (complete / generated, by reason).
    """
    need = math.ceil(st.num_examples / st.critic_keep_fraction)
    target = math.ceil(need * 1.1)
    attempts = 0
    while True:
        attempts += 1
        instructions, icounts = self_instruct(
            backend, st, gen_cfg=cfg.generation, contamination=contamination, target=target, seed=cfg.seed,
            state_path=run_dir / "data" / "instructions.jsonl", fingerprint=fingerprint, progress=progress)
        if not instructions:
            raise PosttrainError(
                f"self-instruct kept no instruction after {icounts.get('proposed', 0)} proposals ({icounts}); the "
                "model's proposals all failed the filters. For a tiny random model use stage.data_source=synthetic.")
        rows, rcounts = generate_conversations(
            backend, instructions, st, prompt_cfg=cfg.prompt, gen_cfg=cfg.generation, contamination=contamination,
            seed=cfg.seed, state_path=run_dir / "data" / "responses.jsonl", fingerprint=fingerprint,
            progress=progress, own_format=own_format, tokenizer=tokenizer)
        usable = _usable(rows, contamination)
        generated = len(instructions)
        report = {"target_complete_rows": need, "complete_rows": usable, "conversations_generated": generated,
                  "yield": round(usable / generated, 4) if generated else 0.0, "attempts": attempts,
                  "by_status": {k: v for k, v in rcounts.items() if not k.startswith("constraint_")},
                  "reply_max_new_tokens": st.reply_max_new_tokens,
                  "reply_repetition_penalty": st.reply_repetition_penalty, "generation_format": own_format or
                  "instruction_cue + transcript"}
        log.info("self-instruct yield: %d complete of %d conversations (need %d)", usable, generated, need)
        if usable >= need:
            break
        if generated < target:  # the rounds ran out before the instructions did
            raise PosttrainError(
                f"self-instruct stopped at stage.max_rounds={st.max_rounds} with {usable} complete conversations of "
                f"{need} needed (stage.num_examples={st.num_examples} / critic_keep_fraction={st.critic_keep_fraction}"
                f"): yield {usable}/{generated} conversations ({report['by_status']}), {icounts.get('kept', 0)} of "
                f"{icounts.get('proposed', 0)} proposed instructions kept. Raise stage.max_rounds or "
                "stage.reply_max_new_tokens, or lower stage.num_examples. The rows so far are kept in "
                f"{run_dir / 'data'}: rerunning with the same hydra.run.dir resumes from them.")
        rate = max(usable / generated, 0.05)
        target = generated + math.ceil((need - usable) / rate * 1.1)
    for i, r in enumerate(rows):
        r["id"] = f"gen-{i:05d}"
    return rows, icounts, rcounts, report


# ---------------------------------------------------------------- the whole pipeline

def prepare_data(cfg: Any, run_dir: Path, *, model: Any, tokenizer: Any, revision: str | None, source: str,
                 gate_override: bool, device: str, progress: bool = True,
                 score_fn: ScoreFn | None = None, backend: Any = None,
                 prompt_format: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Produce (or reuse) ``run_dir/train_data.jsonl`` and ``data_report.json``; return rows and report.

    ``model``/``tokenizer`` are the BASE model (adapters disabled by the caller's context when the
    model carries one). ``score_fn`` and ``backend`` replace the critic and generation in tests.
    ``prompt_format`` is the training format; ``chat_template`` on an instruct model makes the
    replies in that template.
    """
    st = cfg.stage
    model_kind = getattr(cfg.model, "kind", "base")
    out_path, report_path = run_dir / DATA_FILE, run_dir / REPORT_FILE
    fp = data_fingerprint(cfg, source, revision)
    if out_path.exists() and report_path.exists():
        report = read_json(report_path)
        if report.get("fingerprint") == fp and report.get("sha256") == sha256_file(out_path):
            log.info("resume: reusing %s (%d rows, sha256 %s...)", out_path, report.get("n_rows"),
                     report["sha256"][:12])
            return read_jsonl(out_path), report
        raise PosttrainError(f"{out_path} was made with other settings or changed since (fingerprint/sha256 "
                             "mismatch); use a new hydra.run.dir or delete it and data_report.json to regenerate")

    contamination = ContaminationFilter(st.rouge_threshold)
    counts: dict[str, Any] = {}
    # an instruct model writes its data in its own chat template (plan() checked the template)
    own_format = "chat_template" if (model_kind == "instruct" and prompt_format == "chat_template") else None
    data_path = None
    if st.data:
        data_path = resolve_data_path(st.data)
        raw = read_jsonl(data_path)
        rows = [normalise_row(r, i) for i, r in enumerate(raw)]
        counts["rows_in_file"] = len(rows)
        counts["source_sha256"] = sha256_file(data_path)
    elif source == "synthetic":
        from posttrain.training.synthetic import synthetic_rows

        # correct by construction and balanced by construction: the critic scores them (recorded) but
        # does not select, since dropping a fifth by score unbalanced the paraphrases of the stated
        # constraints (chosen and rejected forms no longer equally often: word n-grams found it)
        n = st.num_examples
        rows = synthetic_rows(n, seed=cfg.seed, templates=tuple(st.synthetic_templates),
                              constraint_fraction=st.constraint_fraction)
        for r in rows:
            r["generation_format"] = "transcript"
        counts["synthetic_candidates"] = n
    else:
        if backend is None:
            from posttrain.generation.backends import HFBackend

            backend = HFBackend(model, tokenizer, device)
        (run_dir / "data").mkdir(parents=True, exist_ok=True)
        rows, counts["instructions"], counts["responses"], counts["yield"] = generate_until_enough(
            backend, st, cfg=cfg, contamination=contamination, run_dir=run_dir, fingerprint=fp, progress=progress,
            own_format=own_format, tokenizer=tokenizer)
    # complete replies only: generation already dropped (and counted) its cut-off conversations; this
    # catches the rest (file rows carrying finish_reason, or ending mid-sentence)
    rows, incomplete, incomplete_examples = drop_incomplete(rows)
    generated_counts = counts.get("responses", {})
    for why in incomplete:
        incomplete[why] += generated_counts.get(f"dropped_incomplete_{why}", 0)
    counts["dropped_incomplete"] = incomplete
    rows, ccounts = contamination.filter_rows(rows)
    counts.update(ccounts)
    if score_fn is None:
        from posttrain.training.critic import critic_scores

        def score_fn(c: CriticInputs) -> list[dict[str, float]]:
            return critic_scores(model, tokenizer, c.prompts, c.responses, c.instructions, ends=c.ends,
                                 neutral_prompts=c.neutral_prompts, mode=st.critic, batch_size=cfg.generation.batch_size,
                                 device=device)

    keep_fraction = 1.0 if st.data or source == "synthetic" else st.critic_keep_fraction
    kept, critic_stats = apply_critic(rows, score_fn, prompt_cfg=cfg.prompt, keep_fraction=keep_fraction,
                                      n_max=st.num_examples, tokenizer=tokenizer)
    if not kept:
        raise PosttrainError(f"no training rows left after filtering ({counts}); nothing was trained")
    for r in kept:
        r["gate_override"] = gate_override
        r["data_fingerprint"] = fp
    partial = run_dir / (DATA_FILE + ".partial")
    partial.unlink(missing_ok=True)
    append_jsonl(partial, kept)
    partial.replace(out_path)
    report = {
        "source": "file" if st.data else source, "data_path": str(data_path) if data_path else None,
        "fingerprint": fp, "n_rows": len(kept), "sha256": sha256_file(out_path), "path": str(out_path),
        "counts": counts, "n_dropped_heldout": counts.get("dropped_heldout", 0) + (
            counts.get("instructions", {}).get("dropped_heldout", 0) if isinstance(counts.get("instructions"), dict) else 0),
        "contamination": {"rouge_threshold": st.rouge_threshold, "n_heldout_texts": len(contamination.heldout),
                          "n_benchmark_turns": len(contamination.benchmark), "examples": contamination.examples},
        "critic": {"mode": st.critic} | critic_stats,
        "dropped_incomplete": incomplete, "n_dropped_incomplete": sum(incomplete.values()),
        "incomplete_examples": incomplete_examples,
        "n_constraint_rows": sum(any("constraint" in t for t in r["turns"]) for r in kept),
        "n_turns": sum(len(r["turns"]) for r in kept),
        "n_multi_turn": sum(len(r["turns"]) > 1 for r in kept),
        "gate_override": gate_override,
        "yield": counts.get("yield"),
    }
    write_json(report_path, report)
    return kept, report


def adapters_disabled(model: Any) -> Any:
    """Context where a PEFT model behaves as its base model (a no-op for a plain model)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") \
        else nullcontext()


# ---------------------------------------------------------------- rows -> TRL examples

def sft_examples(rows: Sequence[dict[str, Any]], fmt: str, prompt_cfg: Any, *, kind: str, tokenizer: Any = None,
                 allow_chat_template_on_base: bool = False) -> list[dict[str, Any]]:
    """TRL SFT examples.

    ``chat_template`` (instruct models): TRL's conversational prompt/completion, one example per
    assistant turn (posttrain/training/chat.py). Any other format (base models): one text
    ``{"prompt", "completion"}`` per assistant turn, the prompt being the conversation so far in
    that format (golden earlier replies) and the completion the reply; TRL appends EOS to the
    completion. Both train on the completion only.
    """
    if fmt == "chat_template":
        from posttrain.training.chat import conversational_examples

        return conversational_examples(rows, prompt_cfg.system_prompt)
    out: list[dict[str, Any]] = []
    for r in rows:
        history: list[tuple[str, str | None]] = []
        for k, t in enumerate(r["turns"]):
            prompt, completion = prompt_completion(history, t["user"], t["assistant"], fmt, prompt_cfg, kind=kind,
                                                   allow_chat_template_on_base=allow_chat_template_on_base)
            out.append({"prompt": prompt, "completion": completion, "row_id": r["id"], "turn": k})
            history.append((t["user"], t["assistant"]))
    return out


def prompt_completion(history: list[tuple[str, str | None]], user: str, reply: str, fmt: str, prompt_cfg: Any, *,
                      kind: str, allow_chat_template_on_base: bool = False) -> tuple[str, str]:
    """(prompt, completion) for one assistant turn: the completion is what the full render adds.

    Trailing whitespace of the completion is dropped (EOS follows it).
    """
    from posttrain.generation.prompts import render_prompt

    prompt = render_prompt(history + [(user, None)], fmt, prompt_cfg, kind=kind,
                           allow_chat_template_on_base=allow_chat_template_on_base)
    # the same render with the reply filled in, followed by a dummy next user turn so that every
    # format closes the reply exactly as it would in a longer conversation
    full = render_prompt(history + [(user, reply), ("x", None)], fmt, prompt_cfg, kind=kind,
                         allow_chat_template_on_base=allow_chat_template_on_base)
    if not full.startswith(prompt):
        raise PosttrainError(f"prompt format {fmt}: the prompt is not a prefix of the prompt with its reply")
    rest = full[len(prompt):]
    start = rest.find(reply.strip())
    if start < 0:
        raise PosttrainError(f"prompt format {fmt}: the reply does not appear after its prompt")
    return prompt, rest[:start + len(reply.strip())].rstrip()


def dpo_sources(rows: Sequence[dict[str, Any]], fmt: str, prompt_cfg: Any, *, kind: str,
                allow_chat_template_on_base: bool = False) -> list[dict[str, Any]]:
    """One (prompt, chosen) per conversation: its LAST assistant turn, with the earlier turns as context.

    ``chosen`` is the plain reply (negatives are made from it); ``prefix`` is what the format puts
    before a reply (" " after "Assistant:"); ``messages`` holds the conversation for chat templates.
    """
    out = []
    for r in rows:
        turns = r["turns"]
        history = [(t["user"], t["assistant"]) for t in turns[:-1]]
        last = turns[-1]
        item: dict[str, Any] = {"id": r["id"], "user": last["user"], "chosen": last["assistant"].strip()}
        item |= {k: last[k] for k in ("constraint", "violation") if last.get(k) is not None}
        if fmt == "chat_template":
            msgs = [{"role": "system", "content": prompt_cfg.system_prompt}] if prompt_cfg.system_prompt is not None else []
            for u, a in history:
                msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": last["user"]})
            item["messages"] = msgs
            item["prompt"] = msgs
            item["prefix"] = ""
        else:
            prompt, completion = prompt_completion(list(history), last["user"], last["assistant"], fmt, prompt_cfg,
                                                   kind=kind, allow_chat_template_on_base=allow_chat_template_on_base)
            item["prompt"] = prompt
            item["prefix"] = completion[: len(completion) - len(last["assistant"].strip())]
        out.append(item)
    return out


def dpo_trl_rows(pairs: Sequence[dict[str, Any]], prefixes: dict[str, str], fmt: str) -> list[dict[str, Any]]:
    """Pairs -> TRL preference rows (string or conversational), keeping negative_type and ids."""
    rows = []
    for p in pairs:
        if fmt == "chat_template":
            rows.append({"prompt": p["messages"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                         "rejected": [{"role": "assistant", "content": p["rejected"]}],
                         "negative_type": p["negative_type"], "pair_id": p["id"]})
        else:
            pre = prefixes[p["source_id"]]
            rows.append({"prompt": p["prompt"], "chosen": pre + p["chosen"], "rejected": pre + p["rejected"],
                         "negative_type": p["negative_type"], "pair_id": p["id"]})
    return rows
