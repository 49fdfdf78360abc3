"""Rejected replies for DPO, made from a (prompt, chosen) pair by typed generators, and a
leakage check that refuses pairs a classifier can tell apart by surface alone.

A negative must differ from its chosen reply in *content*: DPO lowers its loss on whatever
separates chosen from rejected, and if a surface feature does (length, a missing full stop, a
repeated sentence), that feature is what it learns. So each content type keeps the chosen reply's
length distribution, final punctuation and register:

- ``wrong_instruction``: the chosen reply of a *different* prompt (one whose user text is not a
  near-duplicate). Fluent and complete, but it answers another question. The rejected replies are
  a permutation of the chosen replies of the examples of this type (each chosen reply is some
  other example's rejected one), so chosen and rejected have exactly the same distribution of
  every surface feature. (Picking the candidate closest in length instead had a selection bias:
  a reply with a rare length found no partner of its length, so the rejected ones were more
  typical than the chosen ones: 0.70-0.76 pair accuracy on the synthetic data.)
- ``constraint_violation``: a reply that breaks the constraint its prompt states. The data
  generators state a banned word in ``stage.constraint_fraction`` of the prompts and keep, next
  to the reply that honours it, one that does not (synthetic data: the other of two paraphrases of
  equal length, each banned equally often; generated data: the model's other answer to the same
  plain question, the one that uses the word banned after the fact (data.py, "paired samples"),
  taken as it is. A violation from an older design, the reply to the prompt without the
  constraint where the chosen reply was asked *with* it, is cut after whole sentences to the chosen
  reply's length, still using the word: SmolLM2's uncut ones were 2.6 times longer than its
  constrained replies, and a length rule separated them at 0.84). Without such a reply, a banned
  word read from the prompt is put in place of a word of the chosen reply. Prompts without a stated constraint get no negative of
  this type (it never invents one).
- ``corrupted_facts``: one fact changed into a plausible wrong one of the same kind: a first
  name for a first name, a city for a city, a weekday for a weekday, a number for a number of
  the same number of digits (list numbering is never touched). The replacement is drawn from the
  values of that kind in the data's own chosen replies, in proportion to how often they occur
  there, so the rejected replies use no word the chosen ones lack (a fixed pool of 25 names and
  30 cities against the data's 10 of each put an unseen word in 36 of 69 rejected replies, which
  a one-line rule separated at 0.76). Replies without a recognisable fact, or whose fact has no
  other value in the data, get no negative of this type.

Two more types are available but left out of the default mix (``stage.negative_types``), because
their defect *is* the form, so a surface classifier separates them by construction (the leakage
check flags them and DPO refuses them unless ``stage.allow_leaky_negatives=true``):

- ``truncated``: the chosen reply cut mid-sentence after 30-70% of its words (shorter, no final
  punctuation);
- ``padded_repetitive``: the chosen reply followed by its last sentence two or three times (longer,
  repeated).

The leakage check (:func:`leakage_report`) fits, per type and overall, four scikit-learn logistic
regressions over the replies alone (never the conversation), each labelling a single reply
rejected or chosen: 16 surface features (plus a squared length deviation, for shortcuts whose
direction flips between types), word 1-2-gram TF-IDF, character 2-5-gram TF-IDF, and an
unseen-vocabulary feature (words no chosen reply of the training folds uses). Each is
cross-validated with GroupKFold by pair (a pair's two replies are held out together) and scored
as a DPO shortcut would be used: the share of held-out pairs in which it scores the rejected reply
above the chosen one; a length rule is scored beside them. A type is *separable* when any of them
exceeds ``threshold`` (0.6 by default) and is significantly above chance (one-sided binomial test,
p < 0.01). A type with too few pairs for a leak of 0.8 to reach p < 0.01 (17) is *too small to
test*; DPO treats it as blocking (stages' ``allow_leaky_negatives`` overrides, recorded).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posttrain.training.replies import incomplete_reason

NEGATIVE_TYPES: tuple[str, ...] = ("truncated", "wrong_instruction", "constraint_violation", "corrupted_facts",
                                   "padded_repetitive")
CONTENT_TYPES: tuple[str, ...] = ("wrong_instruction", "constraint_violation", "corrupted_facts")
FORM_TYPES: dict[str, str] = {
    "truncated": "shorter than its chosen reply and without final punctuation, by construction",
    "padded_repetitive": "longer than its chosen reply and repeats a sentence, by construction",
}

# Facts by kind: a corrupted fact is replaced by another member of the same kind.
FACT_KINDS: dict[str, tuple[str, ...]] = {
    "first_name": ("Tom", "Ana", "Eva", "Max", "Leo", "Alice", "Bob", "Carmen", "Dmitri", "Emeka", "Fatima", "Giulia", "Hiro", "Ines", "Jonas",
                   "Maria", "John", "Anna", "David", "Sarah", "Peter", "Laura", "James", "Emma", "Lucas"),
    "city": ("Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Cairo", "Hanoi", "Quito", "Perth", "Madrid", "Paris",
             "London", "Berlin", "Rome", "Tokyo", "Vienna", "Prague", "Dublin", "Sydney", "Toronto", "Chicago",
             "Boston", "Seattle", "Mumbai", "Delhi", "Beijing", "Moscow", "Athens", "Warsaw", "Budapest"),
    "country": ("France", "Germany", "Italy", "Spain", "Portugal", "Japan", "China", "India", "Brazil", "Canada",
                "Mexico", "Egypt", "Kenya", "Peru", "Norway", "Sweden", "Poland", "Greece", "Australia", "Vietnam"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "month": ("January", "February", "March", "April", "June", "July", "August", "September", "October",
              "November", "December"),
    "number_word": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"),
    "colour": ("red", "blue", "green", "yellow", "orange", "purple", "white", "black", "brown", "grey"),
    "planet": ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"),
}
_KIND_OF: dict[str, str] = {w: k for k, ws in FACT_KINDS.items() for w in ws}
_FACT_WORD = re.compile(r"\b(" + "|".join(sorted(_KIND_OF, key=len, reverse=True)) + r")\b")
# a number that is not part of a word, a decimal's tail or a list marker at the start of a line
_NUMBER = re.compile(r"(?<![\w.,])(\d+(?:\.\d+)?)(?![\w]|\.\d)")
_LIST_MARKER = re.compile(r"^\s*\d+[.)]\s", re.M)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
TERMINAL = (".", "!", "?", "…", '"', "'", "”", "’", ")", "]", "}", "*", "`")


@dataclass
class Negative:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the generators

def truncated(chosen: str, rng: np.random.Generator) -> Negative | None:
    """The chosen reply cut mid-sentence after 30-70% of its words (a form defect: leaky)."""
    words = chosen.split()
    if len(words) < 3:
        return None
    frac = float(rng.uniform(0.3, 0.7))
    k = min(len(words) - 1, max(1, int(len(words) * frac)))
    # never cut right after a sentence end: that would be a shorter complete reply, not a truncated one
    while k > 1 and words[k - 1].endswith((".", "!", "?")):
        k -= 1
    return Negative(" ".join(words[:k]).rstrip(",;:"), {"kept_words": k, "of_words": len(words)})


def padded_repetitive(chosen: str, rng: np.random.Generator) -> Negative:
    """The chosen reply followed by its last sentence repeated 2-3 times (a form defect: leaky)."""
    sentences = [s for s in _SENT_SPLIT.split(chosen.strip()) if s]
    last = sentences[-1] if sentences else chosen.strip()
    k = int(rng.integers(2, 4))
    return Negative(" ".join([chosen.strip()] + [last] * k), {"repeats": k})


def _other_prompt(i: int, j: int, users: Sequence[str], chosens: Sequence[str]) -> bool:
    """Whether example j's reply can be example i's wrong_instruction negative."""
    from posttrain.training.rouge import rouge_l

    return (i != j and chosens[j].strip() != chosens[i].strip() and users[j].strip() != users[i].strip()
            and rouge_l(users[j], users[i]) < 0.5)


def wrong_instruction(index: int, users: Sequence[str], chosens: Sequence[str],
                      rng: np.random.Generator) -> Negative | None:
    """The chosen reply of another prompt (one random valid one; :func:`build_pairs` then replaces it
    by a permutation over all the examples of this type)."""
    for j in (int(x) for x in rng.permutation(len(chosens))[:64]):
        if _other_prompt(index, j, users, chosens):
            return Negative(chosens[j], {"answer_of_example": j})
    return None


def _permute_replies(members: list[int], users: Sequence[str], chosens: Sequence[str],
                     rng: np.random.Generator) -> dict[int, int]:
    """A permutation of ``members`` with no fixed point and only valid (example, other reply) pairs:
    a random cyclic shift, repaired by swapping targets; members left without a valid partner are
    dropped (returned mapping lacks them)."""
    order = [members[int(k)] for k in rng.permutation(len(members))]
    m = len(order)
    if m < 2:
        return {}
    target = order[1:] + order[:1]
    for k in range(m):
        if _other_prompt(order[k], target[k], users, chosens):
            continue
        for j in (int(x) for x in rng.permutation(m)):
            if j != k and _other_prompt(order[k], target[j], users, chosens) \
                    and _other_prompt(order[j], target[k], users, chosens):
                target[k], target[j] = target[j], target[k]
                break
    return {a: b for a, b in zip(order, target, strict=True) if _other_prompt(a, b, users, chosens)}


def find_constraint(user: str) -> tuple[str, Any] | None:
    """A constraint stated in the user text, as (kind, value), or None.

    Content constraints: ``banned_word`` ("Do not use the word 'x'"). Form constraints are read
    too (word limits, a language, list / JSON / all-caps / one-line formats) for the record, but
    no negative is made for them: breaking a form constraint changes the form, a surface tell.
    """
    low = user.lower()
    m = re.search(r"(?:don't|do not|never|without|avoid)\b[^.?!]*?\b(?:word|term)s?\s+['\"“‘]?([a-z][a-z'-]*)", low)
    if m:
        return ("banned_word", m.group(1).strip("'"))
    m = re.search(r"(?:under|fewer than|less than|at most|no more than|maximum of|within)\s+(\d+)\s+words", low) \
        or re.search(r"in (\d+) words or (?:less|fewer)", low)
    if m:
        return ("max_words", int(m.group(1)))
    m = re.search(r"at least (\d+) words", low)
    if m:
        return ("min_words", int(m.group(1)))
    m = re.search(r"\b(?:in|into|to)\s+(english|spanish|french|german|portuguese|italian)\b", low)
    if m:
        return ("language", m.group(1))
    for pattern, value in ((r"\bjson\b", "json"), (r"numbered list", "numbered_list"), (r"bullet", "bullet_list"),
                           (r"all caps|all capital|uppercase|upper case|capital letters", "all_caps"),
                           (r"one line|single line|one sentence|single sentence", "single_line")):
        if re.search(pattern, low):
            return ("format", value)
    return None


def uses_word(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word (case-insensitive)."""
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.I) is not None


def constraint_violation(user: str, chosen: str, violation: str | None, constraint: dict[str, Any] | None,
                         rng: np.random.Generator) -> Negative | None:
    """A reply that breaks the prompt's stated constraint, or None when the prompt states none.

    A paired-samples violation (``constraint["method"] == "paired_samples"``: the model's other answer to
    the same question) is taken as it is. Any other data generator's violation is cut to
    whole sentences at the length closest to the chosen reply's that still uses the banned word
    (:func:`length_matched`); None when no such cut lies within 2/3 to 3/2 of the chosen length.
    """
    if violation and violation.strip() and violation.strip() != chosen.strip():
        if constraint and constraint.get("method") == "paired_samples":  # two answers to one question: as is
            return Negative(violation.strip(), {"constraint": constraint, "source": "data_generator"})
        word = str(constraint["value"]) if constraint and constraint.get("kind") == "banned_word" else None
        cut = length_matched(violation.strip(), chosen.strip(), word)
        if cut is None:
            return None
        meta = {"constraint": constraint, "source": "data_generator"}
        return Negative(cut, meta | ({"cut_from_chars": len(violation.strip())} if cut != violation.strip() else {}))
    found = find_constraint(user)
    if found is None or found[0] != "banned_word":
        return None
    word = str(found[1])
    if uses_word(chosen, word):  # the chosen reply breaks it already: no clean pair
        return None
    tokens = chosen.split(" ")
    # replace a word of similar length (not the first or the last, which carry the form)
    spots = [i for i in range(1, len(tokens) - 1) if _WORD.fullmatch(tokens[i])]
    if not spots:
        return None
    i = min(spots, key=lambda k: (abs(len(tokens[k]) - len(word)), float(rng.random())))
    replaced = tokens[i]
    tokens[i] = word
    return Negative(" ".join(tokens), {"constraint": {"kind": "banned_word", "value": word},
                                       "source": "inserted", "replaced": replaced})


def length_matched(violation: str, chosen: str, word: str | None, *, ratio: float = 1.5) -> str | None:
    """``violation`` cut after a whole sentence or line, at the length closest to ``chosen``'s, still
    using ``word`` when one is given; None when no cut lies within [1/ratio, ratio] of that length.

    A model's reply that honours a banned word tends to be much shorter than its unconstrained reply
    (SmolLM2: 204 against 535 characters on average over 25 pairs, which a length rule separated at
    0.84); uncut, DPO would learn "shorter" instead of "avoid the word". A cut ends where a sentence
    or a line ends, so the rejected reply stays complete.
    """
    ends = [m.end() for m in re.finditer(r"[.!?…](?=\s|$)|\n", violation)] + [len(violation)]
    best: tuple[float, str] | None = None
    for end in sorted(set(ends)):
        cand = violation[:end].strip()
        if not cand or (word and not uses_word(cand, word)) or incomplete_reason(cand, "eos") is not None:
            continue  # a cut must use the word and end as a complete reply (replies.incomplete_reason's rules)
        dist = abs(math.log(len(cand) / max(1, len(chosen))))
        if dist <= math.log(ratio) and (best is None or dist < best[0]):
            best = (dist, cand)
    return best[1] if best else None


def _other_number(s: str, rng: np.random.Generator) -> str:
    """A different number of the same shape: same digit count (a year stays a nearby year)."""
    if "." in s:
        whole, frac = s.split(".")
        return f"{_other_number(whole, rng)}.{frac}"
    v = int(s)
    if len(s) == 4 and 1000 <= v <= 2099:  # a year: a nearby one
        delta = int(rng.integers(1, 30)) * (1 if rng.random() < 0.5 else -1)
        return str(v + delta)
    lo, hi = (0, 9) if len(s) == 1 else (10 ** (len(s) - 1), 10 ** len(s) - 1)
    for _ in range(20):
        out = int(rng.integers(lo, hi + 1))
        if out != v:
            return str(out).zfill(len(s)) if s.startswith("0") else str(out)
    return str(v + 1)


def fact_values(chosens: Sequence[str]) -> dict[str, dict[str, int]]:
    """The facts of the chosen replies by kind (numbers by digit shape), each with its count: the
    pool corrupted_facts draws replacements from."""
    pool: dict[str, dict[str, int]] = {}
    for text in chosens:
        for kind, value in _facts(text):
            key = _number_kind(value) if kind == "number" else kind
            pool.setdefault(key, {})
            pool[key][value] = pool[key].get(value, 0) + 1
    return pool


def _number_kind(value: str) -> str:
    whole, _, frac = value.partition(".")
    return f"number:{len(whole)}.{len(frac)}" if frac else f"number:{len(whole)}"


def _facts(chosen: str) -> list[tuple[str, str]]:
    """(kind, surface) of every fact in a reply, list numbering excluded, first mention order."""
    list_spans = {(m.start(), m.end()) for m in _LIST_MARKER.finditer(chosen)}
    facts: list[tuple[str, str]] = [(_KIND_OF[m.group(1)], m.group(1)) for m in _FACT_WORD.finditer(chosen)]
    for m in _NUMBER.finditer(chosen):
        if not any(a <= m.start() < b for a, b in list_spans):
            facts.append(("number", m.group(1)))
    return list(dict.fromkeys(facts))


def corrupted_facts(chosen: str, rng: np.random.Generator,
                    values: dict[str, dict[str, int]] | None = None) -> Negative | None:
    """One fact changed into a plausible wrong one of the same kind, or None if no fact is found.

    ``values`` (from :func:`fact_values` over the data's chosen replies) is where replacements come
    from, weighted by their counts; None draws from the fixed FACT_KINDS lists and random numbers
    (the old behaviour, kept to show the leakage check catches it: tests/test_training_data.py)."""
    list_spans = {(m.start(), m.end()) for m in _LIST_MARKER.finditer(chosen)}
    facts = _facts(chosen)
    if not facts:
        return None
    kind, old = facts[int(rng.integers(len(facts)))]
    if values is not None:
        pool = values.get(_number_kind(old) if kind == "number" else kind, {})
        others = sorted(w for w in pool if w != old and not uses_word(chosen, w))
        if not others:
            return None
        weights = np.array([pool[w] for w in others], dtype=float)
        new = others[int(rng.choice(len(others), p=weights / weights.sum()))]
        pattern = re.compile(rf"(?<![\w.,]){re.escape(old)}(?![\w]|\.\d)" if kind == "number"
                             else rf"\b{re.escape(old)}\b")
    elif kind == "number":
        new = _other_number(old, rng)
        pattern = re.compile(rf"(?<![\w.,]){re.escape(old)}(?![\w]|\.\d)")
    else:
        others = [w for w in FACT_KINDS[kind] if w != old and not uses_word(chosen, w)]
        if not others:
            return None
        # the same length if possible, else the nearest: a pool skewed longer or shorter than the
        # data's own facts would otherwise make the rejected replies longer or shorter one way
        gap = min(abs(len(w) - len(old)) for w in others)
        close = [w for w in others if abs(len(w) - len(old)) == gap]
        new = close[int(rng.integers(len(close)))]
        pattern = re.compile(rf"\b{re.escape(old)}\b")

    def swap(m: re.Match[str]) -> str:
        if any(a <= m.start() < b for a, b in list_spans):
            return m.group(0)
        return new

    text = pattern.sub(swap, chosen)  # every mention of that fact, so the reply stays consistent
    if text == chosen:
        return None
    return Negative(text, {"kind": kind, "changes": [f"{old}->{new}"]})


# ---------------------------------------------------------------- pairs

def _candidates(i: int, ex: dict[str, Any], users: Sequence[str], chosens: Sequence[str], types: Sequence[str],
                rng: np.random.Generator, values: dict[str, dict[str, int]] | None) -> dict[str, Negative]:
    out: dict[str, Negative | None] = {}
    for t in types:
        if t == "truncated":
            out[t] = truncated(chosens[i], rng)
        elif t == "wrong_instruction":
            out[t] = wrong_instruction(i, users, chosens, rng)
        elif t == "constraint_violation":
            out[t] = constraint_violation(users[i], chosens[i], ex.get("violation"), ex.get("constraint"), rng)
        elif t == "corrupted_facts":
            out[t] = corrupted_facts(chosens[i], rng, values)
        else:
            out[t] = padded_repetitive(chosens[i], rng)
    return {t: n for t, n in out.items() if n is not None and n.text.strip() and n.text.strip() != chosens[i].strip()}


def build_pairs(examples: Sequence[dict[str, Any]], *, types: Sequence[str] = CONTENT_TYPES, seed: int = 0,
                per_example: int = 1, fact_pool: str = "data") -> list[dict[str, Any]]:
    """Preference pairs from examples ``{"id", "prompt", "user", "chosen"[, "violation", "constraint"]}``.

    Each example gets ``per_example`` negatives of distinct types among those that apply to it
    (constraint_violation needs a stated constraint, corrupted_facts a fact). Types are balanced
    greedily: examples with the fewest applicable types are served first, each taking the type used
    least so far (ties broken by a seeded shuffle). An example to which no type applies gives no pair.
    ``fact_pool="data"`` draws corrupted facts from the chosen replies' own values; ``"lists"`` from
    the fixed FACT_KINDS lists (leaky: only to show that the leakage check catches it).
    """
    unknown = sorted(set(types) - set(NEGATIVE_TYPES))
    if unknown:
        raise ValueError(f"unknown negative types {unknown}; choose from {list(NEGATIVE_TYPES)}")
    if not types:
        raise ValueError("no negative types given")
    rng = np.random.default_rng(seed)
    users = [str(e["user"]) for e in examples]
    chosens = [str(e["chosen"]) for e in examples]
    order = [int(i) for i in rng.permutation(len(examples))]
    if fact_pool not in ("data", "lists"):
        raise ValueError(f"fact_pool={fact_pool!r}: choose data or lists")
    values = fact_values(chosens) if fact_pool == "data" else None
    options = {i: _candidates(i, examples[i], users, chosens, types, rng, values) for i in order}
    order.sort(key=lambda i: len(options[i]))  # stable: the seeded order among equals
    used = dict.fromkeys(types, 0)
    tie = {t: k for k, t in enumerate(rng.permutation(list(types)))}
    picks: dict[int, list[str]] = {}
    for i in order:
        picks[i] = sorted(options[i], key=lambda t: (used[t], tie[t]))[:per_example]
        for kind in picks[i]:
            used[kind] += 1
    if "wrong_instruction" in types:  # rejected replies = a permutation of the chosen ones
        members = [i for i in order if "wrong_instruction" in picks[i]]
        partner = _permute_replies(members, users, chosens, rng)
        for i in members:
            if i in partner:
                options[i]["wrong_instruction"] = Negative(chosens[partner[i]], {"answer_of_example": partner[i]})
            else:
                picks[i].remove("wrong_instruction")
    pairs: list[dict[str, Any]] = []
    for i in order:
        ex = examples[i]
        for r, kind in enumerate(picks[i]):
            neg = options[i][kind]
            pairs.append({
                "id": f"{ex['id']}-neg{r}", "source_id": ex["id"], "prompt": ex["prompt"], "user": users[i],
                "chosen": chosens[i], "rejected": neg.text, "negative_type": kind, "negative_meta": neg.meta,
                **({"messages": ex["messages"]} if "messages" in ex else {}),
            })
    return pairs


def split_pairs(pairs: Sequence[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict[str, Any]],
                                                                                         list[dict[str, Any]]]:
    """(train, held-out) pairs: per negative type, ``fraction`` of its source examples (at least one
    when the type has two or more) go to the held-out set with all their pairs."""
    rng = np.random.default_rng([seed, 11])
    held_sources: set[str] = set()
    for t in sorted({p["negative_type"] for p in pairs}):
        sources = sorted({p["source_id"] for p in pairs if p["negative_type"] == t} - held_sources)
        if len(sources) < 2 or fraction <= 0:
            continue
        k = max(1, int(round(len(sources) * fraction)))
        held_sources.update(sources[int(j)] for j in rng.choice(len(sources), min(k, len(sources) - 1), replace=False))
    train = [p for p in pairs if p["source_id"] not in held_sources]
    held = [p for p in pairs if p["source_id"] in held_sources]
    return train, held


# ---------------------------------------------------------------- leakage check

FEATURES: tuple[str, ...] = (
    "log_words", "log_chars", "mean_word_length", "punctuation_rate", "ends_with_terminal", "n_lines",
    "type_token_ratio", "repeated_bigram_rate", "repeated_sentence", "non_ascii_rate", "stopword_rate",
    "negations", "turn_marker", "numbering_broken", "capitalised_rate", "digit_rate",
)
# The surface tell each type would have if it were made carelessly (reported next to its score).
TYPE_TELLS: dict[str, tuple[str, ...]] = {
    "truncated": ("ends_with_terminal", "log_words"),
    "padded_repetitive": ("repeated_sentence", "repeated_bigram_rate", "log_words"),
    "constraint_violation": ("turn_marker", "non_ascii_rate", "stopword_rate"),
    "corrupted_facts": ("negations", "numbering_broken", "digit_rate"),
    "wrong_instruction": (),
}
_STOPWORDS = frozenset("the a an and or of to in is are was were it that this for on with as be by at from you your "
                       "i my we not but have has can will".split())
_NEGATION = re.compile(r"\b(?:not|no|never|n't)\b", re.I)


def surface_features(text: str) -> list[float]:
    """FEATURES of one reply: length, punctuation, repetition, language and the types' tells."""
    words = [w.lower() for w in re.findall(r"\w+", text)]
    n = len(words)
    bigrams = list(zip(words, words[1:], strict=False))
    sentences = [s.strip().lower() for s in _SENT_SPLIT.split(text.strip()) if s.strip()]
    numbered = [int(m.group(1)) for m in re.finditer(r"^\s*(\d+)[.)]\s", text, re.M)]
    broken = any(b != a + 1 for a, b in zip(numbered, numbered[1:], strict=False)) or (numbered[:1] not in ([], [1]))
    tokens = text.split()
    return [
        math.log1p(n),
        math.log1p(len(text)),
        sum(len(w) for w in words) / n if n else 0.0,
        sum(ch in ".,;:!?" for ch in text) / max(1, len(text)),
        1.0 if text.strip().endswith(TERMINAL) else 0.0,
        float(text.strip().count("\n") + 1),
        len(set(words)) / n if n else 0.0,
        1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        1.0 if len(sentences) != len(set(sentences)) else 0.0,
        sum(ord(ch) > 127 for ch in text) / max(1, len(text)),
        sum(w in _STOPWORDS for w in words) / n if n else 0.0,
        float(len(_NEGATION.findall(text))),
        1.0 if re.search(r"\n\s*(?:User|Assistant|Instruction|Human)\s*:", text) else 0.0,
        1.0 if broken else 0.0,
        sum(t[:1].isupper() for t in tokens[1:]) / max(1, len(tokens) - 1),
        sum(ch.isdigit() for ch in text) / max(1, len(text)),
    ]


def _pair_accuracy(sc: np.ndarray, sr: np.ndarray) -> float:
    """Share of pairs whose rejected reply scores above its chosen one (ties count half)."""
    return float(np.sum(sr > sc) + 0.5 * np.sum(sr == sc))


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"\w+", text)]


def _unseen_features(texts: Sequence[str], vocabulary: set[str]) -> np.ndarray:
    """Per reply: how many of its words, and what share, no chosen reply of the training folds uses."""
    out = []
    for t in texts:
        words = _words(t)
        unseen = sum(w not in vocabulary for w in words)
        out.append([float(unseen), unseen / len(words) if words else 0.0])
    return np.array(out)


LEAKAGE_MODELS: tuple[str, ...] = ("surface", "word_ngrams", "char_ngrams", "unseen_vocabulary")


def cv_pair_accuracies(chosen: Sequence[str], rejected: Sequence[str], *, folds: int = 5,
                       seed: int = 0) -> dict[str, float]:
    """Cross-validated pair accuracy of each classifier in LEAKAGE_MODELS, over the replies alone.

    Every classifier is a scikit-learn LogisticRegression (with an intercept) that labels a single
    reply chosen (0) or rejected (1); folds are GroupKFold by pair, so a pair's two replies are
    always held out together and nothing fitted has seen either. Its pair accuracy is the share of
    held-out pairs in which it scores the rejected reply above the chosen one, as DPO would use a
    shortcut. The conversation is never read: relevance to it is what DPO should learn, not a tell.

    - ``surface``: the 16 FEATURES plus the squared deviation of log length from the median;
    - ``word_ngrams``: TF-IDF of word 1-2-grams (a reply's vocabulary, e.g. a name no chosen reply has);
    - ``char_ngrams``: TF-IDF of character 2-5-grams within words (spelling, affixes, punctuation);
    - ``unseen_vocabulary``: the count and share of a reply's words that no chosen reply of the
      training folds uses (a replacement drawn from outside the data's own values).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(chosen)
    texts = list(chosen) + list(rejected)
    y = np.concatenate([np.zeros(n), np.ones(n)])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    feats = np.array([surface_features(t) for t in texts])
    feats = np.hstack([feats, (feats[:, :1] - np.median(feats[:, 0])) ** 2])
    # GroupKFold is deterministic in group order: shuffle the pair ids once, seeded
    order = np.random.default_rng(seed).permutation(n)
    shuffled_groups = order[groups]
    correct = dict.fromkeys(LEAKAGE_MODELS, 0.0)
    for train, test in GroupKFold(n_splits=min(folds, n)).split(texts, y, shuffled_groups):
        test_pairs = np.unique(groups[test])
        tc, tr = test_pairs, test_pairs + n  # rows of the held-out chosen / rejected replies
        if len(np.unique(y[train])) < 2:
            continue
        scores: dict[str, np.ndarray] = {}
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        clf.fit(feats[train], y[train])
        scores["surface"] = clf.decision_function(feats)
        for name, vec in (("word_ngrams", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
                          ("char_ngrams", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))):
            x_train = vec.fit_transform([texts[i] for i in train])
            model = LogisticRegression(C=1.0, max_iter=1000).fit(x_train, y[train])
            scores[name] = model.decision_function(vec.transform(texts))
        vocabulary = {w for i in train if y[i] == 0 for w in _words(texts[i])}
        unseen = _unseen_features(texts, vocabulary)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        clf.fit(unseen[train], y[train])
        scores["unseen_vocabulary"] = clf.decision_function(unseen)
        for name, sc in scores.items():
            correct[name] += _pair_accuracy(sc[tc], sc[tr])
    return {name: c / n for name, c in correct.items()}


def _binom_p(correct: float, n: int) -> float:
    """One-sided p-value of at least ``correct`` of ``n`` pairs right by chance (p = 0.5)."""
    from scipy.stats import binomtest

    return float(binomtest(int(math.floor(correct)), n, 0.5, alternative="greater").pvalue)


DETECTABLE = 0.8  # a type is testable when a classifier right on this share of its pairs would be significant


def min_testable_pairs(alpha: float = 0.01, detectable: float = DETECTABLE) -> int:
    """The fewest pairs at which (and beyond which) ``detectable`` pair accuracy gives p < ``alpha``.

    Fewer pairs cannot show a leak of that size, so such a type is *too small to test*: it blocks
    DPO (a passing check on it would mean nothing) unless ``stage.allow_leaky_negatives=true``.
    With alpha 0.01 and 0.8 this is 17 pairs (14 of 17 right: p = 0.0064; 13 of 16: p = 0.0106).
    """
    n_ok = None
    for n in range(1, 200):
        ok = _binom_p(math.ceil(detectable * n), n) < alpha
        if ok and n_ok is None:
            n_ok = n
        elif not ok:
            n_ok = None
    return n_ok or 200


def _block(pairs: Sequence[dict[str, Any]], threshold: float, seed: int, alpha: float) -> dict[str, Any]:
    n = len(pairs)
    need = min_testable_pairs(alpha)
    if n < need:
        return {"n": n, "checked": False, "separable": False, "too_small": True,
                "note": f"{n} pairs, fewer than the {need} at which a leak of {DETECTABLE:.0%} pair accuracy would be "
                        f"significant (p < {alpha}): too small to test, so it blocks DPO unless "
                        "stage.allow_leaky_negatives=true"}
    chosen = [str(p["chosen"]) for p in pairs]
    rejected = [str(p["rejected"]) for p in pairs]
    fc = np.array([surface_features(t) for t in chosen])
    fr = np.array([surface_features(t) for t in rejected])
    lc, lr = fc[:, 1], fr[:, 1]
    longer = float(np.mean((lc > lr) + 0.5 * (lc == lr)))
    models = cv_pair_accuracies(chosen, rejected, seed=seed)
    models["length_rule"] = max(longer, 1.0 - longer)
    # single features: the share of pairs each orders the right way round (the better direction)
    per_feature = {}
    for j, name in enumerate(FEATURES):
        up = float(np.mean((fr[:, j] > fc[:, j]) + 0.5 * (fr[:, j] == fc[:, j])))
        per_feature[name] = {"accuracy": round(max(up, 1 - up), 4),
                             "direction": "rejected higher" if up > 0.5 else ("chosen higher" if up < 0.5 else "none")}
    feature, best = max(per_feature.items(), key=lambda kv: kv[1]["accuracy"])
    per_model = {m: {"pair_accuracy": round(a, 4), "p_value": _binom_p(a * n, n),
                     "separable": bool(a > threshold and _binom_p(a * n, n) < alpha)} for m, a in models.items()}
    top = max(per_model, key=lambda m: per_model[m]["pair_accuracy"])
    return {
        "n": n, "checked": True, "too_small": False,
        "score": per_model[top]["pair_accuracy"], "p_value": per_model[top]["p_value"], "best_model": top,
        "models": per_model,
        "length_only_accuracy": round(models["length_rule"], 4), "longer_is_chosen": round(longer, 4),
        "strongest_feature": {"name": feature} | best,
        "per_feature": per_feature,
        "mean_chars_chosen": float(np.expm1(lc).mean()), "mean_chars_rejected": float(np.expm1(lr).mean()),
        "separable": any(m["separable"] for m in per_model.values()),
    }


def leakage_report(pairs: Sequence[dict[str, Any]], *, threshold: float = 0.6, seed: int = 0,
                   alpha: float = 0.01) -> dict[str, Any]:
    """How well classifiers over the replies alone tell chosen from rejected, overall and per type.

    ``leaky`` when any block is separable (any model above ``threshold`` with p < ``alpha``);
    ``too_small_types`` lists the types with too few pairs to test (DPO treats them as blocking).
    """
    overall = _block(pairs, threshold, seed, alpha)
    types = sorted({p["negative_type"] for p in pairs})
    per_type = {t: _block([p for p in pairs if p["negative_type"] == t], threshold, seed, alpha)
                | {"own_tells": list(TYPE_TELLS.get(t, ()))} for t in types}
    flagged = [t for t, b in per_type.items() if b.get("separable")]
    too_small = [t for t, b in per_type.items() if b.get("too_small")]
    leaky = bool(overall.get("separable")) or bool(flagged)

    def why(b: dict[str, Any]) -> str:
        return f"{b['score']:.2f} by {b['best_model']} (p = {b['p_value']:.1e})"

    if leaky:
        parts = [f"{t}: {why(per_type[t])}" for t in flagged]
        if overall.get("separable"):
            parts.insert(0, f"overall: {why(overall)}")
        message = (f"chosen and rejected replies are separable from the replies alone (a classifier above {threshold}, "
                   f"p < {alpha}): " + "; ".join(parts) + ". DPO would learn that difference instead of the content.")
    else:
        message = f"no classifier separates chosen from rejected above {threshold} in any tested block"
    if too_small:
        message += (f"; too small to test (fewer than {min_testable_pairs(alpha)} pairs): "
                    + ", ".join(f"{t} ({per_type[t]['n']})" for t in too_small))
    return {"threshold": threshold, "alpha": alpha, "models": list(LEAKAGE_MODELS) + ["length_rule"],
            "features": list(FEATURES) + ["log_length_deviation_sq"], "min_testable_pairs": min_testable_pairs(alpha),
            "overall": overall, "per_type": per_type, "flagged_types": flagged, "leaky": leaky,
            "too_small_types": too_small, "unchecked_types": too_small, "message": message}
