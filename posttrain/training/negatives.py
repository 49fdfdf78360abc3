"""Rejected responses for DPO, made from a (prompt, chosen) pair by five typed generators, and a
leakage check that says whether a classifier could tell chosen from rejected by surface alone.

Generators (``negative_type``), all seeded through one ``numpy.random.Generator``:

- ``truncated``: the chosen reply cut after 30-70% of its words (it stops mid-thought);
- ``wrong_instruction``: the chosen reply of a *different* prompt (fluent, but answers another
  question);
- ``constraint_violation``: breaks a constraint stated in the prompt when one can be read from it
  (a word limit, a language, a list / JSON / one-line / all-caps / no-commas format, a banned word);
  with none stated, it breaks the implicit one of every chat turn: the reply does not stop and
  writes the user's next turn itself (the typical base-model failure);
- ``corrupted_facts``: numbers changed and named entities swapped for other entities of the data
  set (same length and style, wrong content); with neither present, the main verb is negated;
- ``padded_repetitive``: the chosen reply followed by its last sentence repeated two or three times.

The leakage check (:func:`leakage_report`) exists because the seed project's preference data let
a model win by length alone. It measures, overall and per type, (1) how well length alone
separates chosen from rejected ("longer is chosen" rate, AUC of the length difference, and the
accuracy of the better of the two length rules) and (2) the cross-validated accuracy of a
logistic regression on a few surface features (length, type-token ratio, repetition rate,
punctuation rate, ending punctuation). Above ``threshold`` (0.75) it warns: a DPO run on such
pairs can lower its loss by learning the surface feature instead of the content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NEGATIVE_TYPES: tuple[str, ...] = ("truncated", "wrong_instruction", "constraint_violation", "corrupted_facts",
                                   "padded_repetitive")

LANG_WORDS = {"english": "en", "spanish": "es", "french": "fr", "german": "de", "portuguese": "pt",
              "italian": "it"}
# A reply opening in another language than the one asked for (no translation is attempted).
WRONG_LANGUAGE_OPENERS = {
    "en": "Sure, here is my answer in English:",
    "es": "Claro, aquí está mi respuesta en español:",
    "fr": "Bien sûr, voici ma réponse en français :",
    "de": "Natürlich, hier ist meine Antwort auf Deutsch:",
}
# Follow-up user turns a rambling base model writes itself (constraint_violation without a stated rule).
RAMBLE_TURNS = ("Thanks! Can you tell me more?", "Great. What else should I know?", "Okay, and why is that?",
                "Interesting. Can you give me another example?")
RAMBLE_REPLIES = ("Of course, there is a lot more to say about this.", "Sure, let me explain it again.",
                  "Yes, here is another example.")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w])")
_ENTITY = re.compile(r"(?<=[a-z0-9,;:] )([A-Z][a-zà-ÿ]+(?:[ -][A-Z][a-zà-ÿ]+)*)")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_NEGATABLE = re.compile(r"\b(is|are|was|were|can|will|should|does|do|did|has|have)\b")


@dataclass
class Negative:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def _words(text: str) -> list[str]:
    return text.split()


def truncated(chosen: str, rng: np.random.Generator) -> Negative:
    words = _words(chosen)
    if len(words) >= 2:
        frac = float(rng.uniform(0.3, 0.7))
        k = min(len(words) - 1, max(1, int(len(words) * frac)))
        text = " ".join(words[:k]).rstrip(".,;:!?")
        return Negative(text, {"kept_words": k, "of_words": len(words)})
    cut = max(1, len(chosen) // 2)
    return Negative(chosen[:cut], {"kept_chars": cut, "of_chars": len(chosen)})


def wrong_instruction(index: int, users: Sequence[str], chosens: Sequence[str],
                      rng: np.random.Generator) -> Negative | None:
    """The chosen reply of another prompt: one whose user text and reply both differ."""
    candidates = [j for j in range(len(chosens))
                  if j != index and users[j].strip() != users[index].strip()
                  and chosens[j].strip() != chosens[index].strip()]
    if not candidates:
        return None
    j = int(candidates[int(rng.integers(len(candidates)))])
    return Negative(chosens[j], {"answer_of_example": j})


def find_constraint(user: str) -> tuple[str, Any] | None:
    """A constraint stated in the user text, as (kind, value), or None."""
    low = user.lower()
    m = re.search(r"(?:under|fewer than|less than|at most|no more than|maximum of|max(?:imum)?|within)\s+(\d+)\s+words",
                  low) or re.search(r"in (\d+) words or (?:less|fewer)", low)
    if m:
        return ("max_words", int(m.group(1)))
    m = re.search(r"at least (\d+) words", low)
    if m:
        return ("min_words", int(m.group(1)))
    m = re.search(r"(?:word|term) ['\"“]?([a-z]+)['\"”]?", low)
    if m and re.search(r"(?:don't|do not|never|without|avoid)\b[^.]*\b(?:word|term)", low):
        return ("banned_word", m.group(1))
    m = re.search(r"\b(?:in|into|to)\s+(english|spanish|french|german|portuguese|italian)\b", low)
    if m:
        return ("language", LANG_WORDS[m.group(1)])
    if re.search(r"\bjson\b", low):
        return ("format", "json")
    if re.search(r"numbered list", low):
        return ("format", "numbered_list")
    if re.search(r"bullet", low):
        return ("format", "bullet_list")
    if re.search(r"all caps|all capital|uppercase|upper case|capital letters", low):
        return ("format", "all_caps")
    if re.search(r"no commas|without (?:any )?commas|without using commas", low):
        return ("format", "no_commas")
    if re.search(r"one line|single line|one sentence|single sentence", low):
        return ("format", "single_line")
    return None


def _flatten_list(text: str) -> str:
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", ln).strip() for ln in text.splitlines()]
    return ", ".join(ln for ln in lines if ln)


def constraint_violation(user: str, chosen: str, rng: np.random.Generator) -> Negative:
    found = find_constraint(user)
    if found is None:
        turn = RAMBLE_TURNS[int(rng.integers(len(RAMBLE_TURNS)))]
        reply = RAMBLE_REPLIES[int(rng.integers(len(RAMBLE_REPLIES)))]
        return Negative(f"{chosen}\nUser: {turn}\nAssistant: {reply}", {"constraint": "implicit:single_reply"})
    kind, value = found
    meta = {"constraint": f"{kind}:{value}"}
    if kind == "max_words":
        words = _words(chosen)
        filler = ("Let me add a few more details to be thorough and complete about this topic, "
                  "since there is always more that could be said.").split()
        while len(words) <= int(value) + 5:
            words += filler
        return Negative(" ".join(words), meta)
    if kind == "min_words":
        words = _words(chosen)
        k = max(1, min(len(words) - 1, int(value) // 3)) if len(words) > 1 else 1
        return Negative(" ".join(words[:k]).rstrip(",;:") + ".", meta)
    if kind == "banned_word":
        return Negative(f"{chosen.rstrip('.')} ({value}).", meta)
    if kind == "language":
        other = [c for c in WRONG_LANGUAGE_OPENERS if c != value]
        code = other[int(rng.integers(len(other)))]
        keep = " ".join(_NUMBER.findall(chosen) + _ENTITY.findall(chosen))
        return Negative(f"{WRONG_LANGUAGE_OPENERS[code]} {keep}".strip(), meta | {"wrote_in": code})
    if value in ("bullet_list", "numbered_list"):
        return Negative(_flatten_list(chosen), meta)
    if value == "json":
        return Negative(re.sub(r'[{}\[\]"]', "", chosen).strip(), meta)
    if value == "all_caps":
        return Negative(chosen.lower(), meta)
    if value == "no_commas":
        words = _words(chosen)
        if len(words) > 2:
            words[0] += ","
            words[len(words) // 2] += ","
        return Negative(" ".join(words).replace(",,", ","), meta)
    # single_line
    sentences = _SENT_SPLIT.split(chosen.strip())
    return Negative("\n".join(sentences) + "\nAlso, here is one more thought on a new line.", meta)


def corrupted_facts(chosen: str, entity_pool: Sequence[str], rng: np.random.Generator) -> Negative:
    """Change numbers and swap named entities for others from ``entity_pool``."""
    changes: list[str] = []

    def new_number(m: re.Match[str]) -> str:
        s = m.group(1)
        if "." in s:
            v = float(s)
            out = f"{v + float(rng.integers(1, 10)) * (1 if rng.random() < 0.5 or v < 10 else -1):.{len(s.split('.')[1])}f}"
        else:
            v = int(s)
            delta = int(rng.integers(1, 10))
            out = str(v + delta if (rng.random() < 0.5 or v - delta < 0) else v - delta)
        changes.append(f"{s}->{out}")
        return out

    text = _NUMBER.sub(new_number, chosen)
    present = set(_ENTITY.findall(text))
    pool = [e for e in dict.fromkeys(entity_pool) if e not in present]

    def new_entity(m: re.Match[str]) -> str:
        if not pool:
            return m.group(1)
        out = pool[int(rng.integers(len(pool)))]
        changes.append(f"{m.group(1)}->{out}")
        return out

    text = _ENTITY.sub(new_entity, text)
    if changes:
        return Negative(text, {"changes": changes})
    m = _NEGATABLE.search(chosen)
    if m:
        text = chosen[:m.end()] + " not" + chosen[m.end():]
        return Negative(text, {"changes": [f"negated '{m.group(1)}'"]})
    return Negative("Not " + chosen[:1].lower() + chosen[1:], {"changes": ["negated sentence"]})


def padded_repetitive(chosen: str, rng: np.random.Generator) -> Negative:
    sentences = [s for s in _SENT_SPLIT.split(chosen.strip()) if s]
    last = sentences[-1] if sentences else chosen.strip()
    k = int(rng.integers(2, 4))
    return Negative(" ".join([chosen.strip()] + [last] * k), {"repeats": k})


def entity_pool(texts: Sequence[str]) -> list[str]:
    """Named entities (capitalised words not starting a sentence) found in ``texts``, in order."""
    return list(dict.fromkeys(e for t in texts for e in _ENTITY.findall(t)))


def build_pairs(examples: Sequence[dict[str, Any]], *, types: Sequence[str] = NEGATIVE_TYPES, seed: int = 0,
                per_example: int = 1) -> list[dict[str, Any]]:
    """Preference pairs from examples ``{"id", "prompt", "user", "chosen", ...}``.

    Types are assigned round-robin over a seeded shuffle, so every type gets the same share;
    ``per_example`` > 1 gives each example that many pairs of distinct types. A type that cannot
    apply (``wrong_instruction`` with a single distinct prompt) falls back to ``corrupted_facts``,
    recorded in ``negative_meta.fallback_from``. Pairs whose rejected text equals the chosen one are
    dropped.
    """
    unknown = sorted(set(types) - set(NEGATIVE_TYPES))
    if unknown:
        raise ValueError(f"unknown negative types {unknown}; choose from {list(NEGATIVE_TYPES)}")
    if not types:
        raise ValueError("no negative types given")
    rng = np.random.default_rng(seed)
    users = [str(e["user"]) for e in examples]
    chosens = [str(e["chosen"]) for e in examples]
    pool = entity_pool(chosens + users)
    order = rng.permutation(len(examples))
    pairs: list[dict[str, Any]] = []
    slot = 0
    for idx in order:
        i = int(idx)
        ex = examples[i]
        for r in range(per_example):
            kind = types[(slot + r) % len(types)]
            neg: Negative | None
            meta_extra: dict[str, Any] = {}
            if kind == "truncated":
                neg = truncated(chosens[i], rng)
            elif kind == "wrong_instruction":
                neg = wrong_instruction(i, users, chosens, rng)
                if neg is None:
                    meta_extra = {"fallback_from": "wrong_instruction"}
                    kind = "corrupted_facts"
                    neg = corrupted_facts(chosens[i], pool, rng)
            elif kind == "constraint_violation":
                neg = constraint_violation(users[i], chosens[i], rng)
            elif kind == "corrupted_facts":
                neg = corrupted_facts(chosens[i], pool, rng)
            else:
                neg = padded_repetitive(chosens[i], rng)
            if neg.text.strip() == chosens[i].strip():
                continue
            pairs.append({
                "id": f"{ex['id']}-neg{r}", "source_id": ex["id"], "prompt": ex["prompt"], "user": users[i],
                "chosen": chosens[i], "rejected": neg.text, "negative_type": kind,
                "negative_meta": neg.meta | meta_extra,
                **({"messages": ex["messages"]} if "messages" in ex else {}),
            })
        slot += per_example
    return pairs


# ---------------------------------------------------------------- leakage check

FEATURES: tuple[str, ...] = ("n_words", "n_chars", "type_token_ratio", "repetition_rate", "punctuation_rate",
                             "ends_with_punctuation")


def surface_features(text: str) -> list[float]:
    words = [w.lower() for w in re.findall(r"\w+", text)]
    n = len(words)
    ttr = len(set(words)) / n if n else 0.0
    bigrams = list(zip(words, words[1:], strict=False))
    rep = 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0
    punct = sum(1 for ch in text if ch in ".,;:!?") / max(1, len(text))
    ends = 1.0 if text.strip()[-1:] in (".", "!", "?") else 0.0
    return [float(n), float(len(text)), ttr, rep, punct, ends]


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> np.ndarray:
    """Logistic regression without intercept by Newton's method (IRLS) with a small ridge penalty."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def cv_logistic_accuracy(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> float | None:
    """k-fold cross-validated accuracy of a logistic regression (features standardised on the train fold)."""
    n = len(y)
    if n < 4:
        return None
    k = min(folds, n)
    idx = np.random.default_rng(seed).permutation(n)
    correct = 0
    for f in range(k):
        test = idx[f::k]
        train = np.setdiff1d(idx, test)
        sd = x[train].std(axis=0)
        sd[sd == 0] = 1.0
        w = _fit_logistic(x[train] / sd, y[train])
        pred = (x[test] / sd) @ w > 0
        correct += int(np.sum(pred == (y[test] > 0.5)))
    return correct / n


def _block(pairs: Sequence[dict[str, Any]], threshold: float, seed: int) -> dict[str, Any]:
    n = len(pairs)
    if n == 0:
        return {"n": 0}
    lc = np.array([len(p["chosen"]) for p in pairs], dtype=float)
    lr = np.array([len(p["rejected"]) for p in pairs], dtype=float)
    longer = float(np.mean((lc > lr) + 0.5 * (lc == lr)))
    length_acc = max(longer, 1.0 - longer)
    # Pair classification: a random orientation (A, B); predict whether A is the chosen reply from
    # the feature differences f(A) - f(B). No intercept: the task is symmetric by construction.
    rng = np.random.default_rng(seed)
    flip = rng.random(n) < 0.5
    fc = np.array([surface_features(p["chosen"]) for p in pairs])
    fr = np.array([surface_features(p["rejected"]) for p in pairs])
    diff = np.where(flip[:, None], fr - fc, fc - fr)
    y = (~flip).astype(float)
    surface_acc = cv_logistic_accuracy(diff, y, seed=seed)
    block = {
        "n": n,
        "longer_is_chosen": longer,
        "length_auc": longer,  # AUC of (len chosen - len rejected) as a chosen-vs-rejected score
        "length_only_accuracy": length_acc,
        "surface_cv_accuracy": surface_acc,
        "mean_chars_chosen": float(lc.mean()),
        "mean_chars_rejected": float(lr.mean()),
    }
    worst = max(length_acc, surface_acc if surface_acc is not None else 0.0)
    block["warn"] = bool(worst > threshold)
    return block


def leakage_report(pairs: Sequence[dict[str, Any]], *, threshold: float = 0.75, seed: int = 0) -> dict[str, Any]:
    """How separable chosen and rejected are by length and by surface features, overall and per type."""
    overall = _block(pairs, threshold, seed)
    types = sorted({p["negative_type"] for p in pairs})
    per_type = {t: _block([p for p in pairs if p["negative_type"] == t], threshold, seed) for t in types}
    flagged = [t for t, b in per_type.items() if b.get("warn")]
    warn = bool(overall.get("warn"))
    parts = []
    if warn:
        parts.append(
            f"chosen and rejected are separable by surface features alone (length-only accuracy "
            f"{overall['length_only_accuracy']:.2f}, surface-feature CV accuracy "
            f"{overall['surface_cv_accuracy'] if overall['surface_cv_accuracy'] is not None else float('nan'):.2f} "
            f"> {threshold}): DPO can lower its loss by learning length/format instead of content")
    if flagged:
        parts.append(f"per type, separable: {', '.join(flagged)} (expected for truncated/padded_repetitive, "
                     "which are shorter/longer by construction; mix types so no single feature decides)")
    return {
        "threshold": threshold,
        "features": list(FEATURES),
        "overall": overall,
        "per_type": per_type,
        "flagged_types": flagged,
        "warn": warn,
        "message": "; ".join(parts) if parts else "no surface feature separates chosen from rejected above the threshold",
    }
