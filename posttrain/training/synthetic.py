"""Template-made conversations whose correct replies follow from the conversation itself.

A random tiny model generates garbage, so self-instruct data from it can teach nothing. This
source (``stage.data_source=synthetic``, the default for tiny models) writes 3-turn memory
conversations instead: the user states a fact (a name, a city), asks an unrelated question that
has a fixed answer, then asks for the fact back; the correct final reply repeats it.

The slot values are small closed sets of words that the tiny models' tokenizer encodes as single
tokens (they come from its training corpus), so a 0.2M-parameter model can learn to *copy* the
value from the context. Which combinations train and which are held out is decided by a hash of
the whole combination (template, slot values, filler, question), so held-out conversations are
combinations never seen in training (``split="train"`` vs ``split="heldout"``), and their item ids
(``syn-heldout-*``) never collide with the benchmark's.

:func:`heldout_items` returns held-out conversations as benchmark :class:`~posttrain.items.Item`
objects (category ``memory``, last turn judged by ``must_include`` the fact and ``must_not_include``
the other fact), and :func:`write_heldout_benchmark` writes them in the conversations-benchmark file
format, so ``stage=eval benchmark=conversations benchmark.path=<file>`` evaluates them like any
benchmark.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posttrain.items import Expectation, Item, Turn

SYNTHETIC_VERSION = "syn-v1"
NAMES = ("Alice", "Bob", "Carmen", "Dmitri", "Emeka", "Fatima", "Giulia", "Hiro", "Ines", "Jonas")
CITIES = ("Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Cairo", "Hanoi", "Quito", "Perth", "Madrid")
# Unrelated questions with one fixed reply each (none of them is in the benchmark).
FILLERS = (
    ("What day comes after Monday?", "Tuesday comes after Monday."),
    ("Can you say hello?", "Hello!"),
    ("What color is the sky?", "The sky is blue."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What is two plus two?", "Two plus two is four."),
    ("Is ice cold?", "Yes, ice is cold."),
)
# template name -> ([(intro, intro reply)], [(question, answer, asked slot)])
TEMPLATES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str, str]]]] = {
    "name": ([("Hi! My name is {name}.", "Nice to meet you, {name}!"),
              ("Hello, I am {name}.", "Hello {name}, how can I help?"),
              ("Call me {name}, please.", "Sure, {name}!")],
             [("What is my name?", "Your name is {name}.", "name"),
              ("Do you remember my name?", "Yes, your name is {name}.", "name")]),
    "city": ([("I live in {city}.", "{city} is a lovely city!"),
              ("My home town is {city}.", "I have heard good things about {city}."),
              ("I moved to {city} last year.", "How do you like {city}?")],
             [("Which city do I live in?", "You live in {city}.", "city"),
              ("Where do I live?", "You live in {city}.", "city")]),
    # Two facts, one asked: the model must also pick the right one (harder; not in the default mix).
    "name_city": ([("My name is {name} and I live in {city}.", "Nice to meet you, {name}!")],
                  [("What is my name?", "Your name is {name}.", "name"),
                   ("Which city do I live in?", "You live in {city}.", "city")]),
}
DEFAULT_TEMPLATES = ("name", "city")
HELDOUT_MODULUS = 5  # one combination in five is held out
# Stated constraints (a banned word) for the final question, per asked slot: two paraphrases of the
# answer with the same number of words, each containing one word the other lacks. Banning either
# word makes the other paraphrase the reply and the banned one the violation, so over the data set
# each form is chosen and rejected equally often: the violation differs in content only.
PARAPHRASES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "name": (("name", "Your name is {name}."), ("called", "You are called {name}.")),
    "city": (("live", "You live in {city}."), ("home", "Your home is {city}.")),
}
CONSTRAINT_SUFFIX = "Do not use the word '{word}'."


def _combinations(templates: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for t in templates:
        intros, questions = TEMPLATES[t]
        names = NAMES if "{name}" in intros[0][0] else (None,)
        cities = CITIES if "{city}" in intros[0][0] else (None,)
        for name in names:
            for city in cities:
                for i in range(len(intros)):
                    for f in range(len(FILLERS)):
                        for q in range(len(questions)):
                            yield {"template": t, "intro": i, "name": name, "city": city, "filler": f,
                                   "question": q}


def split_of(combo: dict[str, Any]) -> str:
    """``train`` or ``heldout``, fixed by a hash of the combination (stable across runs and machines)."""
    key = json.dumps(combo, sort_keys=True).encode()
    return "heldout" if int(hashlib.sha256(key).hexdigest(), 16) % HELDOUT_MODULUS == 0 else "train"


def _conversation(combo: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    intros, questions = TEMPLATES[combo["template"]]
    intro, intro_reply = intros[combo["intro"]]
    slots = {k: combo[k] for k in ("name", "city") if combo[k] is not None}
    q, a, asked = questions[combo["question"]]
    filler_q, filler_a = FILLERS[combo["filler"]]
    turns = [(intro.format(**slots), intro_reply.format(**slots)), (filler_q, filler_a),
             (q.format(**slots), a.format(**slots))]
    other = [v for k, v in slots.items() if k != asked]
    return turns, {"asked": asked, "answer": slots[asked], "other": other, "slots": slots}


def constrain(turn: tuple[str, str], slots: dict[str, Any], asked: str, banned: int) -> dict[str, Any]:
    """The final turn with a stated constraint: banning paraphrase ``banned`` of the answer, the other
    one is the reply and the banned one is kept as ``violation`` (the constraint_violation negative)."""
    forms = PARAPHRASES[asked]
    word, bad = forms[banned]
    good = forms[1 - banned][1]
    return {"user": f"{turn[0]} {CONSTRAINT_SUFFIX.format(word=word)}", "assistant": good.format(**slots),
            "constraint": {"kind": "banned_word", "value": word}, "violation": bad.format(**slots)}


def synthetic_rows(n: int, *, seed: int = 0, split: str = "train", templates: tuple[str, ...] = DEFAULT_TEMPLATES,
                   constraint_fraction: float = 0.0) -> list[dict[str, Any]]:
    """``n`` training rows (``{"id", "source", "category", "turns": [{"user", "assistant"}], ...}``).

    Each row picks a template (all equally often), then one of its combinations of ``split``, with
    replacement, from a seeded ``random.Random``;
    ids are ``syn-train-00000`` ... (``syn-heldout-*`` for the held-out split). A
    ``constraint_fraction`` of the rows state a banned word in their final question (see
    PARAPHRASES); that draw has its own random stream, so the combinations do not depend on it.
    """
    by_template: dict[str, list[dict[str, Any]]] = {}
    for c in _combinations(templates):
        if split_of(c) == split:
            by_template.setdefault(c["template"], []).append(c)
    if not by_template:
        raise ValueError(f"no synthetic combinations in split {split!r} for templates {templates}")
    names = sorted(by_template)
    rng = random.Random(f"{SYNTHETIC_VERSION}:{seed}:{split}")
    crng = random.Random(f"{SYNTHETIC_VERSION}:constraint:{seed}:{split}")
    banned_next: dict[str, int] = {}  # per asked slot, which paraphrase the next stated constraint bans
    rows = []
    for i in range(n):
        combos = by_template[names[rng.randrange(len(names))]]  # templates equally often
        combo = combos[rng.randrange(len(combos))]
        turns, info = _conversation(combo)
        stated, phase = crng.random() < constraint_fraction, crng.randrange(2)  # both drawn for every row
        out = [{"user": u, "assistant": a} for u, a in turns]
        if stated and info["asked"] in PARAPHRASES:
            # the two paraphrases take turns being banned (from a random first one), so each is chosen
            # exactly as often as it is rejected: a coin per row left 35/25 splits that word n-grams
            # separated at 0.61 (the leakage check)
            asked = info["asked"]
            banned = banned_next.setdefault(asked, phase)
            banned_next[asked] = 1 - banned
            out[-1] = constrain(turns[-1], info["slots"], asked, banned)
        rows.append({
            "id": f"syn-{split}-{i:05d}", "source": "synthetic", "category": "memory",
            "synthetic_version": SYNTHETIC_VERSION, "combination": combo, "expected": info["answer"],
            "turns": out,
        })
    return rows


def heldout_items(n: int | None = None, *, seed: int = 0,
                  templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> list[Item]:
    """Held-out combinations as benchmark items (each combination once; the first ``n`` after a seeded shuffle)."""
    combos = [c for c in _combinations(templates) if split_of(c) == "heldout"]
    random.Random(f"{SYNTHETIC_VERSION}:items:{seed}").shuffle(combos)
    if n is not None:
        combos = combos[:n]
    items = []
    for i, combo in enumerate(combos):
        turns, info = _conversation(combo)
        expect = Expectation(must_include=((info["answer"],),), must_not_include=tuple(info["other"]),
                             notes=f"The user stated {info['asked']} = {info['answer']} in the first turn.")
        items.append(Item(
            id=f"syn-heldout-{i:04d}", category="memory",
            turns=(Turn(turns[0][0]), Turn(turns[1][0]), Turn(turns[2][0], expect)),
            source="synthetic", meta={"combination": combo, "synthetic_version": SYNTHETIC_VERSION},
        ))
    return items


def write_heldout_benchmark(path: str | Path, items: list[Item]) -> Path:
    """Write items in the conversations-benchmark file format (``benchmark.path=`` loads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(it.to_dict() | {"split": "main", "generator_version": SYNTHETIC_VERSION},
                        ensure_ascii=False, sort_keys=True) for it in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
