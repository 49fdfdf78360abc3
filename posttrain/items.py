"""The benchmark item: what every benchmark yields, what generation fills and what scorers read.

One shape serves the 200-conversation benchmark, the single-turn instruction benchmark
(a conversation of one turn) and the public multi-turn sets, so that generation, judging and
statistics never special-case a benchmark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ConstraintKind = Literal["max_words", "min_words", "language", "format", "must_match", "no_match",
                         "json_schema", "table_columns", "sentence_count", "item_count"]


@dataclass(frozen=True)
class Constraint:
    """A rule a reply must obey.

    kind:
      - ``max_words`` / ``min_words``: ``value`` is an int word count.
      - ``language``: ``value`` is an ISO 639-1 code ("en", "es", "fr", "de").
      - ``format``: ``value`` is one of "bullet_list", "numbered_list", "json", "single_line",
        "all_caps", "no_commas".
      - ``must_match`` / ``no_match``: ``value`` is a case-insensitive regular expression.
      - ``json_schema``: ``value`` is a JSON Schema (draft 2020-12) the reply's JSON must fit.
      - ``table_columns``: ``value`` is the list of column names of the reply's markdown table, in order.
      - ``sentence_count`` / ``item_count``: ``value`` is the exact int number of sentences / list lines.
    """

    kind: ConstraintKind
    value: Any
    description: str = ""


@dataclass(frozen=True)
class Expectation:
    """What a correct reply to one user turn must show.

    ``must_include`` is a list of alternatives groups: each inner list holds accepted variants
    of one entity (["Lisbon", "lisboa"]); every group must be matched by at least one variant
    (case-insensitive, word-boundary). ``must_not_include`` lists strings that must not appear
    (a superseded value, a disliked food). ``notes`` are short hints for an LLM judge.

    ``verifiable`` declares that the structured fields above ARE the turn's definition (an answer
    in one of its accepted variants, a word limit, a list or JSON format, a language, a forbidden
    word), so ``scorer=verifiable`` may decide the turn exactly. A verifiable turn carries no
    ``notes`` (anything only a judge could check makes a turn not verifiable; the benchmark loaders
    refuse the combination, see :func:`verifiability_problems`).

    ``explicit_decline`` is a heuristic, never a definition: True when the reply is expected to open
    with an explicit refusal marker ("I can't", "I'm sorry, but", ...), False when it is expected to
    have words and none, None (the default) when the turn says nothing about refusing. Only heuristic
    triage reads it (:mod:`posttrain.scorers.refusal`); the LLM judge is not shown it (it reads the
    notes), ``scorer=verifiable`` ignores it, and a verifiable turn may not carry it: whether a refusal
    is appropriate is a judgment, so a marker check never makes a turn decidable by exact checks.
    """

    must_include: tuple[tuple[str, ...], ...] = ()
    must_not_include: tuple[str, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    notes: str = ""
    verifiable: bool = False
    explicit_decline: bool | None = None


@dataclass(frozen=True)
class Turn:
    """One user turn; ``expect`` is None for turns that only set up context.

    ``golden_reply`` is the reference assistant reply where a benchmark defines a golden
    history (MT-Bench-101): the model then sees golden earlier replies instead of its own.
    """

    user: str
    expect: Expectation | None = None
    golden_reply: str | None = None


@dataclass(frozen=True)
class Item:
    """One benchmark item: a conversation of one or more user turns."""

    id: str
    category: str
    turns: tuple[Turn, ...]
    source: str = "conversations"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def judged_turns(self) -> list[int]:
        """Indices of the turns that carry an expectation (the context-dependent ones)."""
        return [i for i, t in enumerate(self.turns) if t.expect is not None]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``verifiable`` appears only where it is true and ``explicit_decline`` only where
        it is set, so files written before the fields existed (and every turn without them) keep their
        exact bytes."""
        d = asdict(self)
        for t in d["turns"]:
            if t["expect"] is not None and not t["expect"]["verifiable"]:
                del t["expect"]["verifiable"]
            if t["expect"] is not None and t["expect"]["explicit_decline"] is None:
                del t["expect"]["explicit_decline"]
        return d


def expectation_from_dict(d: dict[str, Any] | None) -> Expectation | None:
    if d is None:
        return None
    return Expectation(
        must_include=tuple(tuple(g) for g in d.get("must_include", ())),
        must_not_include=tuple(d.get("must_not_include", ())),
        constraints=tuple(Constraint(**c) for c in d.get("constraints", ())),
        notes=d.get("notes", ""),
        verifiable=bool(d.get("verifiable", False)),
        explicit_decline=d.get("explicit_decline"),
    )


def item_from_dict(d: dict[str, Any]) -> Item:
    """Inverse of :meth:`Item.to_dict` (no validation: benchmarks validate on load)."""
    return Item(
        id=d["id"],
        category=d["category"],
        turns=tuple(
            Turn(user=t["user"], expect=expectation_from_dict(t.get("expect")), golden_reply=t.get("golden_reply"))
            for t in d["turns"]
        ),
        source=d.get("source", "conversations"),
        meta=dict(d.get("meta", {})),
    )


def verifiability_problems(item: Item) -> list[str]:
    """Why the turns ``item`` declares verifiable cannot be decided by exact checks alone; [] when they can.

    The rule (docs/judging.md, "The verifiable scorer"): a verifiable turn's expectation must be its whole
    definition. So it carries no ``notes`` (notes are requirements only a judge can check: "any correct
    translation", "same meaning", "exactly three bullets"), and it states at least one check (an entity,
    a forbidden string or a constraint), except on an IFEval item (``meta["ifeval"]``), whose
    instruction ids are the checks. A verifiable turn may not carry ``explicit_decline``: a refusal
    marker is a heuristic for triage, and whether a refusal is appropriate is a judgment, so it can never
    make a turn exact (nor count as the check that the turn states). Every problem names the item and
    the turn.
    """
    out: list[str] = []
    is_ifeval = bool(item.meta.get("ifeval"))
    for i, turn in enumerate(item.turns):
        e = turn.expect
        if e is None or not e.verifiable:
            continue
        where = f"item {item.id!r} turn {i}"
        if e.notes.strip():
            out.append(f"{where} is declared verifiable but carries notes ({e.notes.strip()!r:.120}): notes are "
                       "requirements only an LLM judge can check. State them as must_include / must_not_include / "
                       "constraints, or declare the turn verifiable=false")
        if e.explicit_decline is not None:
            out.append(f"{where} is declared verifiable but carries explicit_decline={e.explicit_decline}: a refusal "
                       "marker is a heuristic for triage only, and whether a refusal is appropriate is a judgment. "
                       "Declare the turn verifiable=false (the LLM judge decides it from the notes)")
        if not is_ifeval and not (any(e.must_include) or e.must_not_include or e.constraints):
            out.append(f"{where} is declared verifiable but states nothing a check can test (no must_include, "
                       "must_not_include or constraints)")
    return out
