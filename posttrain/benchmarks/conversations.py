"""The 200-conversation multi-turn benchmark: a seeded, versioned generator and its loader.

Four categories of 50 conversations each probe what post-training is supposed to add on top of
a base model in a conversation: remembering facts stated earlier (``memory``), respecting stated
likes, dislikes and styles (``preferences``), resolving follow-ups that only make sense in
context (``topic_continuity``) and tracking rules that are set, changed or lifted
(``constraint_updates``). Each category has several templates filled from slot pools, so the
set is varied but fully reproducible from the seed.

The benchmark's words live in data: ``conversations_templates.yaml`` beside this module holds
every slot pool and each template's user turns, judge notes and alternatives, with its name and
category. This module keeps the logic: the seeded dealing (:class:`Slots`), a typed loader that
validates the file, one function per template (which turns, in which order, what is checked)
and the generation and I/O around them.

Expectations are written for a deterministic triage scorer and an LLM judge: ``must_include``
groups list accepted variants (spellings, languages, units), ``must_not_include`` lists
superseded values or excluded items, and ``notes`` tell the judge what the turn tests.

Regenerate the committed file with ``python -m posttrain.benchmarks.conversations``; bumping
:data:`GENERATOR_VERSION` is required whenever the output changes (an edit of the YAML file too).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from posttrain.benchmarks import Benchmark, BenchmarkError, load_generated
from posttrain.items import Constraint, Expectation, Item, Turn

GENERATOR_VERSION = "conv-v2"  # v2: data slips fixed (docs/benchmarks-data.md, "conv-v2")
DEFAULT_SEED = 1234
CATEGORIES: tuple[str, ...] = ("memory", "preferences", "topic_continuity", "constraint_updates")
PER_CATEGORY = 50
PILOT_PER_CATEGORY = 10
SPLITS: tuple[str, ...] = ("full", "pilot", "main")  # main: the 160 not in the pilot (the atlas reports on it)
ROW_SPLITS: tuple[str, ...] = ("pilot", "main")
MIN_TURNS, MAX_TURNS = 3, 5
DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "conversations.jsonl"
TEMPLATES_PATH = Path(__file__).resolve().parent / "conversations_templates.yaml"


class Slots(random.Random):
    """A seeded ``random.Random`` that also deals slot values like cards.

    ``deal`` walks through a shuffled copy of a pool before any value repeats, so fifty
    conversations drawn from a pool of twelve names use every name before reusing one; plain
    ``choice`` would repeat some values several times and leave others out.
    """

    def __init__(self, seed: int):
        super().__init__(seed)
        # Decks are keyed by the pool's id; the pool is kept alongside so that its id cannot be
        # reused by another list while this generator lives.
        self._decks: dict[int, tuple[Sequence[Any], list[int]]] = {}

    def deal(self, pool: Sequence[Any], k: int) -> list[Any]:
        """``k`` distinct entries of ``pool`` (one list object per pool and load: decks are keyed by its id)."""
        deck = self._decks.setdefault(id(pool), (pool, []))[1]
        picked: list[int] = []
        while len(picked) < k:
            if not deck:
                deck.extend(self.sample(range(len(pool)), len(pool)))
            i = deck.pop()
            if i in picked:  # the deck was refilled mid-deal: keep this one for a later deal
                deck.insert(0, i)
                continue
            picked.append(i)
        return [pool[i] for i in picked]

    def one(self, pool: Sequence[Any]) -> Any:
        """One entry of ``pool``, dealt like :meth:`deal`."""
        return self.deal(pool, 1)[0]


# ---------------------------------------------------------------- the data file, typed
Person = tuple[str, str, str, str]  # name, subject, object and possessive pronoun ("her")
Variants = list[str]  # accepted spellings of one entity in a reply


def _data_error(source: Path, message: str, where: str | None = None) -> BenchmarkError:
    return BenchmarkError(
        source, f"{message} (fix the data file; nothing was generated or written)", field=where
    )


@dataclass(frozen=True)
class Pools:
    """The slot pools of ``conversations_templates.yaml``; the YAML comments describe each field.

    The loader checks every value against these annotations (a JSON array becomes a tuple), so a
    missing field or a mistyped entry fails on load, naming the file and the pool.
    """

    women: list[str]
    men: list[str]
    jobs: list[tuple[str, Variants]]
    cities: list[tuple[Variants, Variants, Variants]]
    days: list[str]
    times: list[tuple[str, Variants]]
    number_words: list[str]
    ordinals: list[str]
    fillers: list[str]
    explain_qs: list[tuple[str, Variants, str]]
    fact_qs: list[tuple[str, Variants]]
    list_qs: list[str]
    languages: dict[str, str]
    pets: list[tuple[str, str, str, str, int]]
    groceries: list[tuple[str, Variants]]
    codes: list[tuple[str, str, str]]
    purposes: list[tuple[str, Variants]]
    events: list[tuple[str, str]]
    disliked: list[tuple[str, Variants]]
    allergens: list[tuple[str, Variants]]
    not_cookable: list[str]
    meat: list[str]
    fish: list[str]
    nicknames: list[str]
    unit_qs: list[tuple[str, Variants, Variants]]
    colours: list[tuple[str, Variants]]
    animals: list[tuple[str, Variants]]
    exciting: list[str]
    rivers: list[tuple[str, str, Variants]]
    countries: list[tuple[str, Variants, Variants]]
    elements: list[tuple[str, str, int]]
    books: list[tuple[str, Variants, Variants]]
    dishes: list[tuple[str, Variants]]
    planets: list[str]
    position_words: list[str]
    position_short: list[str]
    recipes: list[tuple[str, list[tuple[int, str, str]]]]
    thousand_units: dict[str, Variants]
    meetings: list[str]
    purchases: list[tuple[str, str]]
    patterns: dict[str, str]
    # Derived once per load, so each is one list object that Slots can deal from.
    people: list[Person] = field(init=False)
    cookable_allergens: list[tuple[str, Variants]] = field(init=False)

    def __post_init__(self) -> None:
        women = [(n, "she", "her", "her") for n in self.women]
        men = [(n, "he", "him", "his") for n in self.men]
        object.__setattr__(self, "people", women + men)
        cookable = [a for a in self.allergens if a[0] not in self.not_cookable]
        object.__setattr__(self, "cookable_allergens", cookable)


@dataclass(frozen=True)
class Texts:
    """One template's words: format strings, lists of alternatives and numeric parameters.

    Attributes:
        name: The template (the generator function of the same name).
        category: One of :data:`CATEGORIES`.
        entries: The template's keys and values as the data file has them.
        source: The data file, named in every error.
    """

    name: str
    category: str
    entries: Mapping[str, Any]
    source: Path

    def __call__(self, key: str, **values: Any) -> str:
        """The string ``key`` with its ``{placeholders}`` filled from ``values``."""
        text = self.value(key)
        if not isinstance(text, str):
            raise self._error(key, f"should be a string, got {type(text).__name__} {text!r}")
        return self._fill(key, text, values)

    def pick(self, rng: Slots, key: str, **values: Any) -> Any:
        """One of the alternatives listed under ``key`` (``rng.choice``), a string filled from ``values``."""
        options = self.options(key)
        chosen = rng.choice(options)
        return self._fill(key, chosen, values) if isinstance(chosen, str) else chosen

    def options(self, key: str) -> list[Any]:
        """The list under ``key``, as written."""
        value = self.value(key)
        if not isinstance(value, list) or not value:
            raise self._error(key, f"should be a non-empty list, got {value!r}")
        return value

    def value(self, key: str) -> Any:
        """The raw value under ``key``; a key the generator reads but the file lacks fails here."""
        if key not in self.entries:
            raise self._error(key, "is missing (the generator reads it)")
        return self.entries[key]

    def _fill(self, key: str, text: str, values: Mapping[str, Any]) -> str:
        try:
            return text.format(**values)
        except (KeyError, IndexError, AttributeError) as e:
            given = ", ".join(sorted(values)) or "none"
            raise self._error(
                key, f"uses placeholder {{{e.args[0]}}}, which has no value (the generator gives: {given})"
            ) from None

    def _error(self, key: str, message: str) -> BenchmarkError:
        return _data_error(
            self.source, f"template '{self.name}', key '{key}' {message}", f"templates.{self.name}.{key}"
        )


@dataclass(frozen=True)
class TemplateData:
    """The loaded data file: pools, and each category's templates in round-robin order."""

    pools: Pools
    templates: dict[str, Texts]
    by_category: dict[str, list[str]]


def _conform(value: Any, hint: Any, where: str, source: Path) -> Any:
    """``value`` checked against the annotation ``hint`` (JSON arrays become tuples where asked)."""
    origin, args = get_origin(hint), get_args(hint)

    def bad(expected: str) -> BenchmarkError:
        return _data_error(source, f"should be {expected}, got {value!r}", where)

    if hint in (str, int):
        if type(value) is not hint:  # exact type: a YAML true is not an int, and 10:30 unquoted is one
            raise bad(hint.__name__)
        return value
    if origin is list:
        if not isinstance(value, list) or not value:
            raise bad("a non-empty list")
        return [_conform(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise bad(f"a list of {len(args)} fields")
        return tuple(
            _conform(v, a, f"{where}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise bad("a non-empty mapping")
        return {
            _conform(k, args[0], where, source): _conform(v, args[1], f"{where}.{k}", source)
            for k, v in value.items()
        }
    raise TypeError(f"no rule for {hint!r}")  # a Pools annotation this function does not know


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _check_strings(value: Any, where: str, source: Path) -> None:
    """Every string under ``value`` is a well-formed format string (no stray brace)."""
    if isinstance(value, str):
        try:
            _placeholders(value)
        except ValueError as e:
            raise _data_error(source, f"is not a valid format string ({e}): {value!r}", where) from None
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, f"{where}[{i}]", source)


def _same_names(expected: Sequence[str], found: Mapping[str, Any], section: str, source: Path) -> None:
    """The data file has exactly the pools (or templates) the generator uses: none missing, no typo."""
    for name in expected:
        if name not in found:
            raise _data_error(source, f"'{name}' is missing: the generator uses it", f"{section}.{name}")
    for name in found:
        if name not in expected:
            raise _data_error(source, f"'{name}' is not used by the generator (a typo?)", f"{section}.{name}")


def load_templates(path: str | Path = TEMPLATES_PATH) -> TemplateData:
    """Read and validate the benchmark's data file.

    Call it once per generation run: each pool is one list object, and :class:`Slots` keys its
    decks by that object.

    Args:
        path: The YAML file (the packaged ``conversations_templates.yaml`` by default).

    Returns:
        The typed pools and templates.

    Raises:
        BenchmarkError: Naming the file and the pool, template or key that is missing, empty or
            mistyped, a template the generator has no function for (or the reverse), or a malformed
            format string. Nothing is generated or written before this passes.
    """
    import yaml  # only generation needs it; loading the committed JSONL does not

    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise _data_error(source, f"cannot read the conversation templates: {e}") from None
    if not isinstance(raw, dict) or set(raw) != {"pools", "templates"}:
        raise _data_error(source, "should be a mapping with exactly the keys 'pools' and 'templates'")

    hints = get_type_hints(Pools)
    raw_pools = raw["pools"] if isinstance(raw["pools"], dict) else {}
    _same_names([f.name for f in fields(Pools) if f.init], raw_pools, "pools", source)
    pools = Pools(**{n: _conform(v, hints[n], f"pools.{n}", source) for n, v in raw_pools.items()})
    for i, (statement, _, _) in enumerate(pools.codes):
        if _placeholders(statement) != {"a", "b"}:
            raise _data_error(source, "the statement should use exactly {a} and {b}", f"pools.codes[{i}][0]")
    if not len(pools.planets) == len(pools.position_words) == len(pools.position_short):
        raise _data_error(source, "planets, position_words and position_short differ in length", "pools")
    unknown = set(pools.not_cookable) - {a for a, _ in pools.allergens}
    if unknown:
        raise _data_error(source, f"{sorted(unknown)} are not allergens", "pools.not_cookable")

    raw_templates = raw["templates"] if isinstance(raw["templates"], dict) else {}
    _same_names(list(GENERATORS), raw_templates, "templates", source)
    templates: dict[str, Texts] = {}
    by_category: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for name, entries in raw_templates.items():
        if not isinstance(entries, dict) or entries.get("category") not in CATEGORIES:
            got = entries.get("category") if isinstance(entries, dict) else entries
            raise _data_error(
                source,
                f"template '{name}' needs a category, one of {list(CATEGORIES)}; got {got!r}",
                f"templates.{name}.category",
            )
        for key, value in entries.items():
            _check_strings(value, f"templates.{name}.{key}", source)
        templates[name] = Texts(name, entries["category"], entries, source)
        by_category[entries["category"]].append(name)
    for category, names in by_category.items():
        if not names:
            raise _data_error(source, f"category '{category}' has no template", "templates")
    return TemplateData(pools, templates, by_category)


# ---------------------------------------------------------------- helpers
def _x(
    *groups: Sequence[str], avoid: Sequence[str] = (), constraints: Sequence[Constraint] = (), notes: str = ""
) -> Expectation:
    """Build an :class:`Expectation` from plain lists (tuples are what the dataclass stores)."""
    return Expectation(tuple(tuple(g) for g in groups), tuple(avoid), tuple(constraints), notes)


def _a(noun: str) -> str:
    """Noun with its indefinite article."""
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def _fillers(rng: Slots, p: Pools, k: int) -> list[Turn]:
    return [Turn(q) for q in rng.deal(p.fillers, k)]


def _pick3(rng: Slots, pool: Sequence[Any], p: Pools) -> tuple[list[Any], int, int, dict[str, str]]:
    """Three distinct pool entries, two distinct positions among them, and the slots that name them.

    The slots: ``a``, ``b``, ``c`` (the three names in order), ``ith``/``name_i`` (the position
    and name asked about first) and ``jth``/``name_j`` (the other one asked about at the end).
    """
    three = rng.deal(pool, 3)
    i, j = rng.sample(range(3), 2)
    names = [e[0] for e in three]
    s = {"a": names[0], "b": names[1], "c": names[2], "ith": p.ordinals[i], "jth": p.ordinals[j]}
    return three, i, j, s | {"name_i": names[i], "name_j": names[j]}


def _lang(code: str, why: str) -> Constraint:
    return Constraint("language", code, why)


def _qty_variants(n: int, unit: str, p: Pools) -> list[str]:
    """Accepted spellings of a scaled quantity: 1500, 1,500, 1.5 kg / 1.5 litres."""
    out = [str(n)]
    if n >= 1000:
        out.append(f"{n:,}")
        out += [f"{n / 1000:g} {u}" for u in p.thousand_units.get(unit, [])]
    return out


# ---------------------------------------------------------------- memory
# The final turn never names what it asks for: the test suite checks that every required entity
# appears in an earlier user turn and not in the last one, so the reply has to remember it.
# Each template takes the generator, the pools and its own texts (the YAML entry of its name).


def mem_self_intro(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    name = rng.one(p.people)[0]
    job, job_v = rng.one(p.jobs)
    city, _, lang = rng.one(p.cities)
    s = {"name": name, "a_job": _a(job), "city": city[0]}
    turns = [Turn(t("intro", **s))]
    if rng.random() < 0.6:
        turns.append(Turn(t("ask_language"), _x(lang, notes=t("ask_language_note", **s))))
    turns += _fillers(rng, p, rng.randint(1, 2))
    if rng.random() < 0.5:
        turns.append(Turn(t("recall_job"), _x([name], job_v, notes=t("recall_job_note", **s))))
    else:
        turns.append(Turn(t("recall_city"), _x([name], city, notes=t("recall_city_note", **s))))
    return turns


def mem_pet(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    species, pet, subj, unit, oldest = rng.one(p.pets)
    # The age is drawn as 2-9 and folded into 2..oldest, so every later draw is the same as
    # before the fold was added (conv-v2): a puppy is months old, a hamster not 9 years old.
    age = 2 + (rng.randint(2, 9) - 2) % (oldest - 1)
    obj = "him" if subj == "he" else "her"
    s = {"species": species, "pet": pet, "subj": subj, "Subj": subj.capitalize(), "obj": obj}
    s |= {"age": age, "unit": unit}
    turns = [Turn(t("intro", **s)), Turn(t("feed", **s), _x(notes=t("feed_note", **s)))]
    turns += _fillers(rng, p, rng.randint(0, 2))
    turns.append(Turn(t("quiz", **s), _x([pet], [str(age), p.number_words[age]], notes=t("quiz_note", **s))))
    return turns


def mem_colleague(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    name, subj, obj, poss = rng.one(p.people)
    job, job_v = rng.one(p.jobs)
    city = rng.one(p.cities)[0]
    s = {"name": name, "subj": subj, "Subj": subj.capitalize(), "obj": obj, "poss": poss}
    s |= {"a_job": _a(job), "city": city[0]}
    turns = [Turn(t("intro", **s))]
    turns += _fillers(rng, p, rng.randint(0, 1))
    turns.append(Turn(t("welcome", **s), _x(notes=t("welcome_note", **s))))
    turns.append(Turn(t("recall", **s), _x(city, job_v, notes=t("recall_note", **s))))
    return turns


def mem_siblings(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    sister, brother = rng.one(p.women), rng.one(p.men)
    (job1, v1), (job2, v2) = rng.deal(p.jobs, 2)
    s = {"sister": sister, "brother": brother, "a_job1": _a(job1), "a_job2": _a(job2)}
    turns = [Turn(t("intro", **s))]
    turns += _fillers(rng, p, rng.randint(1, 2))
    final = rng.choice(["brother_job", "sister_name", "sister_job"])
    answer = {"brother_job": v2, "sister_job": v1, "sister_name": [sister]}[final]
    turns.append(Turn(t(final), _x(answer, notes=t(f"{final}_note", **s))))
    return turns


def mem_shopping(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    items = rng.deal(p.groceries, 3)
    turns = [Turn(t("intro", a=items[0][0], b=items[1][0], c=items[2][0]))]
    turns += _fillers(rng, p, rng.randint(1, 3))
    turns.append(Turn(t("recall"), _x(*(v for _, v in items), notes=t("recall_note"))))
    return turns


def mem_numbers(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    statement, ask_a, ask_b = rng.one(p.codes)
    a, b = rng.randint(12, 98), rng.randint(1000, 9999)
    turns = [Turn(t("intro", statement=statement.format(a=a, b=b)))]  # {a} and {b}: checked on load
    turns += _fillers(rng, p, rng.randint(1, 3))
    if rng.random() < 0.5:
        turns.append(Turn(ask_a, _x([str(a)], notes=t("a_note", a=a))))
    else:
        turns.append(Turn(ask_b, _x([str(b)], notes=t("b_note", b=b))))
    return turns


def mem_trip(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    city, currency, _ = rng.one(p.cities)
    purpose, purpose_v = rng.one(p.purposes)
    s = {"city": city[0], "purpose": purpose}
    turns = [Turn(t("intro", **s)), Turn(t("currency"), _x(currency, notes=t("currency_note", **s)))]
    turns += _fillers(rng, p, rng.randint(0, 2))
    turns.append(Turn(t("recall"), _x(city, purpose_v, notes=t("recall_note", **s))))
    return turns


def mem_appointments(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    d1, d2 = rng.sample(p.days, 2)
    t1, t1_v = rng.one(p.times)
    event, short = rng.one(p.events)
    s = {"d1": d1, "d2": d2, "t1": t1, "event": event, "short": short}
    turns = [Turn(t("intro", **s))]
    turns += _fillers(rng, p, rng.randint(1, 3))
    if rng.random() < 0.5:
        turns.append(Turn(t("dentist"), _x([d1], t1_v, notes=t("dentist_note", **s))))
    else:
        turns.append(Turn(t("event", **s), _x([d2], notes=t("event_note", **s))))
    return turns


# ---------------------------------------------------------------- preferences
def pref_diet(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    food, food_v = rng.one(p.disliked)
    diet = t.pick(rng, "diets")  # None: an omnivore with one dislike
    if diet is None:
        intro, avoid = t("omnivore_intro", food=food), food_v
    else:  # a vegetarian avoids fish too, a pescatarian only meat
        avoid = food_v + p.meat + (p.fish if diet == "vegetarian" else [])
        intro = t("diet_intro", diet=diet, food=food)
    note = t("note", diet=diet or t("omnivore"), food=food)
    turns = [Turn(intro)]
    if rng.random() < 0.5:
        turns += _fillers(rng, p, 1)
    turns.append(Turn(t.pick(rng, "snack"), _x(avoid=avoid, notes=note)))
    turns.append(Turn(t.pick(rng, "dinner"), _x(avoid=avoid, notes=note)))
    return turns


def pref_allergy(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    allergen, avoid = rng.one(p.allergens)
    note = t("note", allergen=allergen)
    turns = [Turn(t("intro", allergen=allergen)), Turn(t.pick(rng, "party"), _x(avoid=avoid, notes=note))]
    turns += _fillers(rng, p, rng.randint(0, 1))
    turns.append(Turn(t.pick(rng, "dessert"), _x(avoid=avoid, notes=note)))
    return turns


def pref_nickname(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    nick = rng.one(p.nicknames)
    note = t("note", nick=nick)
    turns = [Turn(t("intro", nick=nick))]
    if rng.random() < 0.6:
        turns.append(Turn(t("pep_talk", event=t.pick(rng, "events")), _x([nick], notes=note)))
    turns += _fillers(rng, p, rng.randint(2 - len(turns), 1))  # 3 turns at least, with the final one
    turns.append(Turn(t.pick(rng, "final"), _x([nick], notes=note)))
    return turns


def pref_metric(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    country = t.pick(rng, "countries")
    (q1, m1, i1), (q2, m2, i2) = rng.deal(p.unit_qs, 2)
    note = t("note")
    turns = [Turn(t("intro", country=country)), Turn(q1, _x(m1, avoid=i1, notes=note))]
    turns += _fillers(rng, p, rng.randint(0, 1))
    turns.append(Turn(q2, _x(m2, avoid=i2, notes=note)))
    return turns


def pref_format(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    fmt, said = t.pick(rng, "formats")
    c = Constraint("format", fmt, t("constraint", said=said))
    q1, q2, q3 = rng.deal(p.list_qs, 3)
    turns = [Turn(t("intro", said=said)), Turn(q1, _x(constraints=[c], notes=t("note", said=said)))]
    if rng.random() < 0.5:
        turns.append(Turn(q2, _x(constraints=[c], notes=t("still_note", said=said))))
    turns.append(Turn(q3, _x(constraints=[c], notes=t("final_note", said=said))))
    return turns


def pref_favourites(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    colour, colour_v = rng.one(p.colours)
    animal, animal_v = rng.one(p.animals)
    s = {"colour": colour, "animal": animal, "hobby": t.pick(rng, "hobbies")}
    turns = [Turn(t("intro", **s))]
    turns += _fillers(rng, p, rng.randint(1, 2))
    turns.append(Turn(t.pick(rng, "ask"), _x(colour_v, animal_v, notes=t("note", **s))))
    return turns


def pref_transport(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    note, avoid = t("note"), t.options("avoid")
    turns = [Turn(t("intro", how=t.pick(rng, "how")))]
    if rng.random() < 0.6:
        turns.append(Turn(t("bookshelf"), _x(avoid=avoid, notes=note)))
    turns += _fillers(rng, p, rng.randint(2 - len(turns), 1))  # 3 turns at least, with the final one
    turns.append(Turn(t.pick(rng, "final"), _x(t.options("transit"), avoid=avoid, notes=note)))
    return turns


def pref_plain_style(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    cs = [
        Constraint("no_match", p.patterns["exclamation"], t("no_exclamation")),
        Constraint("no_match", p.patterns["no_emoji"], t("no_emojis")),
    ]
    note = t("note")
    q1, q2 = rng.deal(p.exciting, 2)
    turns = [Turn(t("intro")), Turn(q1, _x(constraints=cs, notes=note))]
    turns += _fillers(rng, p, rng.randint(0, 1))
    turns.append(Turn(q2, _x(constraints=cs, notes=note)))
    return turns


# ---------------------------------------------------------------- topic continuity
# Follow-ups use ordinals and pronouns ("the third one", "it", "same question") so that only a
# model that tracks the thread knows what is being asked.


def topic_rivers(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    rivers, i, j, s = _pick3(rng, p.rivers, p)
    return [
        Turn(t("intro", **s)),
        Turn(t("continent", **s), _x([rivers[i][1]], notes=t("continent_note", **s))),
        Turn(t("sea"), _x(rivers[i][2], notes=t("sea_note", **s))),
        Turn(t("other", **s), _x(rivers[j][2], notes=t("other_note", **s))),
    ]


def topic_countries(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    countries, i, j, s = _pick3(rng, p.countries, p)
    turns = [
        Turn(t("intro", **s)),
        Turn(t("capital", **s), _x(countries[i][1], notes=t("capital_note", **s))),
    ]
    if rng.random() < 0.5:
        turns.append(Turn(t("kids"), _x(notes=t("kids_note", **s))))
    turns.append(Turn(t("currency"), _x(countries[i][2], notes=t("currency_note", **s))))
    turns.append(Turn(t("other", **s), _x(countries[j][2], notes=t("other_note", **s))))
    return turns


def topic_elements(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    els, i, j, s = _pick3(rng, p.elements, p)
    return [
        Turn(t("intro", **s)),
        Turn(t("symbol", **s), _x([els[i][1]], notes=t("symbol_note", **s))),
        Turn(t("number"), _x([str(els[i][2])], notes=t("number_note", **s))),
        Turn(t("other", **s), _x([els[j][1]], [str(els[j][2])], notes=t("other_note", **s))),
    ]


def topic_books(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    books, i, j, s = _pick3(rng, p.books, p)
    return [
        Turn(t("intro", **s)),
        Turn(t("author", **s), _x(books[i][1], notes=t("author_note", **s))),
        Turn(t("language"), _x(books[i][2], notes=t("language_note", **s))),
        Turn(t("other", **s), _x(books[j][1], books[j][2], notes=t("other_note", **s))),
    ]


def topic_dishes(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    dishes, i, j, s = _pick3(rng, p.dishes, p)
    return [
        Turn(t("intro", **s)),
        Turn(t("ahead", **s), _x(notes=t("ahead_note", **s))),
        Turn(t("ingredient"), _x(dishes[i][1], notes=t("ingredient_note", **s))),
        Turn(t("other", **s), _x(dishes[j][1], notes=t("other_note", **s))),
    ]


def topic_rectangle(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    w, h = sorted(rng.sample(range(4, 21), 2), reverse=True)  # the length is the longer side
    s: dict[str, Any] = {"thing": t.pick(rng, "things"), "w": w, "h": h}
    s |= {"area": w * h, "perimeter": 2 * (w + h)}
    turns = [Turn(t("intro", **s)), Turn(t("area"), _x([str(w * h)], notes=t("area_note", **s)))]
    if rng.random() < 0.5:
        turns.append(Turn(t("perimeter"), _x([str(2 * (w + h))], notes=t("perimeter_note", **s))))
    k = rng.randint(2, 5)
    s |= {"k": k, "longer_area": (w + k) * h}
    if rng.random() < 0.5:
        turns.append(Turn(t("longer", **s), _x([str((w + k) * h)], notes=t("longer_note", **s))))
    else:
        turns.append(Turn(t("fence", **s), _x([str(2 * (w + h) - k)], notes=t("fence_note", **s))))
    return turns


def topic_planets(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    planet = rng.one(p.planets)
    k = p.planets.index(planet)
    turns = [
        Turn(t("intro", planet=planet, ending=t.pick(rng, "endings"))),
        Turn(
            t("position"),
            _x([p.position_words[k], p.position_short[k]], notes=t("position_note", planet=planet, n=k + 1)),
        ),
    ]
    if rng.random() < 0.5:
        turns.append(Turn(t("moons"), _x(notes=t("moons_note", planet=planet))))
    if k == 0 or (k < len(p.planets) - 1 and rng.random() < 0.5):
        after = p.planets[k + 1]
        turns.append(Turn(t("after"), _x([after], notes=t("after_note", planet=planet, after=after))))
    else:
        before = p.planets[k - 1]
        turns.append(Turn(t("before"), _x([before], notes=t("before_note", planet=planet, before=before))))
    return turns


def topic_recipe_scaling(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    dish, parts = rng.one(p.recipes)
    serves, factor = t.pick(rng, "serves"), t.pick(rng, "factors")
    (q0, u0, n0), (q1, u1, n1), (q2, u2, n2) = parts
    first, second, third = (t("amount" if u else "count", q=q, unit=u, name=n) for q, u, n in parts)
    people = serves * factor
    turns = [
        Turn(t("intro", dish=dish, serves=serves, first=first, second=second, third=third)),
        Turn(
            t("how_much" if u0 else "how_many", name=n0, people=people),
            _x(
                _qty_variants(q0 * factor, u0, p),
                notes=t("first_note", q=q0, factor=factor, total=q0 * factor),
            ),
        ),
    ]
    if rng.random() < 0.5:
        turns.append(
            Turn(
                t("second", name=n1),
                _x(_qty_variants(q1 * factor, u1, p), notes=t("second_note", q=q1, factor=factor)),
            )
        )
    ask = t("last_count", name=n2) if not u2 else t.pick(rng, "last_amount", name=n2)
    note = t("last_note", q=q2, factor=factor, total=q2 * factor, people=people)
    turns.append(Turn(ask, _x(_qty_variants(q2 * factor, u2, p), notes=note)))
    return turns


# ---------------------------------------------------------------- constraint updates
# A rule is set, then changed or lifted: the expectations follow the rule in force at each turn.


def cu_word_limit_lifted(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    n = t.pick(rng, "limits")
    qs = rng.deal(p.explain_qs, 4)
    c = Constraint("max_words", n - 1, t("limit", n=n))  # "under 30" allows 29
    turns = [Turn(t("intro", n=n, q=qs[0][0]), _x(qs[0][1], constraints=[c], notes=t("intro_note", n=n)))]
    for q, key, _ in qs[1 : rng.randint(2, 3)]:
        turns.append(Turn(q, _x(key, constraints=[c], notes=t("still_note", n=n))))
    detailed = Constraint("min_words", t.value("detailed_min_words"), t("detailed"))
    turns.append(
        Turn(t("lift", topic=qs[-1][2]), _x(qs[-1][1], constraints=[detailed], notes=t("lift_note")))
    )
    return turns


def cu_language_switch_back(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    code = rng.choice(sorted(p.languages))
    lang = p.languages[code]
    qs = rng.deal(p.fact_qs, 4)
    turns = [
        Turn(
            t("intro", lang=lang, q=qs[0][0]),
            _x(qs[0][1], constraints=[_lang(code, t("rule", lang=lang))], notes=t("intro_note", lang=lang)),
        )
    ]
    for q, answer in qs[1 : rng.randint(2, 3)]:
        still = _lang(code, t("still", lang=lang))
        turns.append(Turn(q, _x(answer, constraints=[still], notes=t("still_note", lang=lang))))
    back = _lang("en", t("back_rule"))
    turns.append(Turn(t("back", q=qs[-1][0]), _x(qs[-1][1], constraints=[back], notes=t("back_note"))))
    return turns


def cu_language_change(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    first, second = rng.sample(sorted(p.languages), 2)
    qs = rng.deal(p.fact_qs, 3)
    s = {"l1": p.languages[first], "l2": p.languages[second]}
    return [
        Turn(
            t("intro", q=qs[0][0], **s),
            _x(qs[0][1], constraints=[_lang(first, t("rule1", **s))], notes=t("intro_note", **s)),
        ),
        Turn(
            t("change", q=qs[1][0], **s),
            _x(qs[1][1], constraints=[_lang(second, t("rule2", **s))], notes=t("change_note", **s)),
        ),
        Turn(
            qs[2][0], _x(qs[2][1], constraints=[_lang(second, t("still", **s))], notes=t("still_note", **s))
        ),
    ]


def cu_allergy_lifted(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    allergen, v = rng.one(p.cookable_allergens)
    note = t("note", allergen=allergen)
    turns = [
        Turn(t("intro_plural" if allergen.endswith("s") else "intro", allergen=allergen)),
        Turn(t("cook"), _x(avoid=v, notes=note)),
    ]
    if rng.random() < 0.5:
        turns.append(Turn(t("starter"), _x(avoid=v, notes=note)))
    turns.append(Turn(t("lifted"), _x(v, notes=t("lifted_note", allergen=allergen))))
    return turns


def cu_format_change(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    (f1, s1), (f2, s2) = rng.sample(t.options("formats"), 2)
    qs = rng.deal(p.list_qs, 3)
    c1, c2 = Constraint("format", f1, s1), Constraint("format", f2, s2)
    s = {"s1": s1, "s2": s2}
    return [
        Turn(t("intro", q=qs[0], **s), _x(constraints=[c1], notes=t("intro_note", **s))),
        Turn(t("change", q=qs[1], **s), _x(constraints=[c2], notes=t("change_note", **s))),
        Turn(qs[2], _x(constraints=[c2], notes=t("still_note", **s))),
    ]


def cu_meeting_moved(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    event = rng.one(p.meetings)
    d1, d2 = rng.sample(p.days, 2)
    (t1, v1), (t2, v2) = rng.deal(p.times, 2)
    s = {"event": event, "d1": d1, "t1": t1, "d2": d2, "t2": t2}
    turns = [Turn(t("intro", **s)), Turn(t("invite"), _x([d1], v1, notes=t("invite_note", **s)))]
    if rng.random() < 0.5:
        turns += _fillers(rng, p, 1)
    turns += [
        Turn(t("moved", **s)),
        Turn(t("reminder"), _x([d2], v2, avoid=[d1], notes=t("reminder_note", **s))),
    ]
    return turns


def cu_budget_update(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    item, cur = rng.one(p.purchases)
    b1, b2 = t.pick(rng, "budgets")
    b2_v = [str(b2)] + ([f"{b2:,}", f"{b2:,}".replace(",", ".")] if b2 >= 1000 else [])
    s = {"item": item, "cur": cur, "b1": b1, "b2": b2}
    return [
        Turn(t("intro", **s)),
        Turn(t("prioritise"), _x(notes=t("prioritise_note", **s))),
        Turn(t("change", **s)),
        Turn(t("sum_up"), _x(b2_v, [item], avoid=[str(b1)], notes=t("sum_up_note", **s))),
    ]


def cu_caps_lifted(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    qs = rng.deal(p.fact_qs, 4)
    caps = Constraint("format", "all_caps", t("caps_rule"))
    # The scorer compiles patterns case-insensitively; the scoped (?-i:...) asks for real lowercase.
    lower = Constraint("must_match", p.patterns["lowercase"], t("lower_rule"))
    turns = [Turn(t("intro", q=qs[0][0]), _x(qs[0][1], constraints=[caps], notes=t("intro_note")))]
    for q, answer in qs[1 : rng.randint(2, 3)]:
        turns.append(Turn(q, _x(answer, constraints=[caps], notes=t("still_note"))))
    turns.append(Turn(t("lift", q=qs[-1][0]), _x(qs[-1][1], constraints=[lower], notes=t("lift_note"))))
    return turns


def cu_word_limit_tightened(rng: Slots, p: Pools, t: Texts) -> list[Turn]:
    n1, n2 = t.pick(rng, "first_limits"), t.pick(rng, "second_limits")
    qs = rng.deal(p.explain_qs, 3)
    c1 = Constraint("max_words", n1 - 1, t("limit", n=n1))  # "under 60" allows 59
    c2 = Constraint("max_words", n2 - 1, t("limit", n=n2))
    return [
        Turn(t("intro", n=n1, q=qs[0][0]), _x(qs[0][1], constraints=[c1], notes=t("intro_note", n=n1))),
        Turn(t("tighten", n=n2, q=qs[1][0]), _x(qs[1][1], constraints=[c2], notes=t("tighten_note", n=n2))),
        Turn(qs[2][0], _x(qs[2][1], constraints=[c2], notes=t("still_note", n=n2))),
    ]


Template = Callable[[Slots, Pools, Texts], list[Turn]]
# Every template the data file may name; the file gives each one's category and round-robin order.
GENERATORS: dict[str, Template] = {
    f.__name__: f
    for f in (
        mem_self_intro,
        mem_pet,
        mem_colleague,
        mem_siblings,
        mem_shopping,
        mem_numbers,
        mem_trip,
        mem_appointments,
        pref_diet,
        pref_allergy,
        pref_nickname,
        pref_metric,
        pref_format,
        pref_favourites,
        pref_transport,
        pref_plain_style,
        topic_rivers,
        topic_countries,
        topic_elements,
        topic_books,
        topic_dishes,
        topic_rectangle,
        topic_planets,
        topic_recipe_scaling,
        cu_word_limit_lifted,
        cu_language_switch_back,
        cu_language_change,
        cu_allergy_lifted,
        cu_format_change,
        cu_meeting_moved,
        cu_budget_update,
        cu_caps_lifted,
        cu_word_limit_tightened,
    )
}


# ---------------------------------------------------------------- generation
def _category_items(category: str, rng: Slots, data: TemplateData) -> list[Item]:
    """50 distinct conversations, templates taken round-robin so each is used about equally."""
    names = data.by_category[category]
    seen: set[tuple[str, ...]] = set()
    items: list[Item] = []
    for i in range(PER_CATEGORY):
        name = names[i % len(names)]
        for _ in range(500):
            turns = GENERATORS[name](rng, data.pools, data.templates[name])
            key = tuple(t.user for t in turns)
            if key not in seen:
                break
        else:  # a pool too small for its share would otherwise silently repeat conversations
            raise RuntimeError(f"template {name} cannot produce enough distinct conversations")
        seen.add(key)
        assert MIN_TURNS <= len(turns) <= MAX_TURNS and turns[-1].expect is not None, name
        items.append(
            Item(
                id=f"{category}-{i + 1:03d}",
                category=category,
                turns=tuple(turns),
                meta={"template": name},
            )
        )
    return items


def _pilot_ids(items: list[Item], rng: random.Random) -> set[str]:
    """10 ids: one per template first (so the pilot covers every template), the rest at random."""
    by_template: dict[str, list[str]] = {}
    for it in items:
        by_template.setdefault(it.meta["template"], []).append(it.id)
    chosen = {rng.choice(ids) for ids in by_template.values()}
    rest = sorted(it.id for it in items if it.id not in chosen)
    chosen |= set(rng.sample(rest, PILOT_PER_CATEGORY - len(chosen)))
    return chosen


def generate_conversations(
    seed: int = DEFAULT_SEED, templates_path: str | Path = TEMPLATES_PATH
) -> list[dict[str, Any]]:
    """Generate the benchmark rows.

    Args:
        seed: Seed of the single :class:`Slots` generator that drives every choice.
        templates_path: The data file of pools and template texts (loaded once for this run).

    Returns:
        200 rows, each ``Item.to_dict()`` plus ``split`` ("pilot"/"main") and ``generator_version``.
        Categories are interleaved (memory, preferences, topic_continuity, constraint_updates, memory,
        ...) so that ``limit=N`` gives a balanced smoke set.

    Raises:
        BenchmarkError: The data file is invalid, or a template reads a key or placeholder it lacks.
    """
    data = load_templates(templates_path)
    rng = Slots(seed)
    per_cat = {c: _category_items(c, rng, data) for c in CATEGORIES}
    pilot: set[str] = set()
    for c in CATEGORIES:
        pilot |= _pilot_ids(per_cat[c], rng)
    rows = []
    for i in range(PER_CATEGORY):
        for c in CATEGORIES:
            item = per_cat[c][i]
            row = item.to_dict()
            row["split"] = "pilot" if item.id in pilot else "main"
            row["generator_version"] = GENERATOR_VERSION
            rows.append(row)
    return rows


def serialize(rows: list[dict[str, Any]]) -> bytes:
    """The exact file bytes: one sorted-key JSON object per line, UTF-8, trailing newline."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def write_conversations(path: str | Path = DATA_PATH, seed: int = DEFAULT_SEED) -> Path:
    """Generate and write the JSONL file; returns the path written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(serialize(generate_conversations(seed)))
    return p


def load(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
    """Load and validate the conversations file (the packaged one unless ``path`` is given)."""
    return load_generated(
        "conversations",
        path or DATA_PATH,
        split=split,
        categories=CATEGORIES,
        min_turns=MIN_TURNS,
        max_turns=MAX_TURNS,
        row_splits=ROW_SPLITS,
    )


def main() -> None:
    """Regenerate the packaged file and print its hash."""
    from posttrain.benchmarks import sha256_hex

    p = write_conversations()
    print(f"wrote {p} ({GENERATOR_VERSION}, sha256 {sha256_hex(p.read_bytes())})")


if __name__ == "__main__":
    main()
