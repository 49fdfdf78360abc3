"""Deterministic checks of one reply against one :class:`~posttrain.items.Expectation`.

Every check returns ``{"name": str, "passed": bool, "detail": str}`` so that a score row can
list them side by side whatever produced them. The checks read only what the expectation
states (entities, forbidden strings, explicit constraints); none of them looks at how long a
reply is unless the item itself sets ``max_words`` / ``min_words``.

Definitions used throughout:

- *word*: a whitespace-separated token (``len(reply.split())``), punctuation included. Simple,
  language-neutral and easy to state in an item's description.
- *entity match*: case-insensitive and accent-insensitive ("Málaga" matches "malaga"), on word
  boundaries ("Rome" does not match "Romeo"); whitespace inside a variant matches any run of
  whitespace.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from posttrain.items import Constraint, Expectation, Item

Check = dict[str, Any]


def _result(name: str, passed: bool, detail: str) -> Check:
    return {"name": name, "passed": bool(passed), "detail": detail}


# --------------------------------------------------------------------------------------------
# Non-empty: a reply with no letter or digit answers nothing
# --------------------------------------------------------------------------------------------


def check_non_empty(reply: str) -> Check:
    """The reply holds at least one letter or digit (any script).

    An empty, whitespace-only or punctuation-only reply ("::::::") would pass every forbidden-string
    check vacuously; it answers nothing, so it fails here, before any other check or API call.
    """
    n_alnum = sum(c.isalnum() for c in reply)
    if n_alnum:
        return _result("non_empty", True, f"{n_alnum} letters or digits")
    what = "empty" if not reply else "whitespace only" if not reply.strip() else f"no letter or digit in {len(reply)} characters"
    return _result("non_empty", False, f"the reply is {what}: nothing to grade")


def wordless_verdict(reply: str) -> dict[str, Any] | None:
    """A failing turn verdict for a reply without a letter or digit; None when the reply has one.

    Both scorers call this first, so such a reply fails in triage and under the LLM judge alike,
    recorded as a ``non_empty`` check, and costs no API call.
    """
    check = check_non_empty(reply)
    if check["passed"]:
        return None
    return {"verdict": "fail", "checks": [check], "rationale": f"non_empty: {check['detail']}"}


# --------------------------------------------------------------------------------------------
# Entity matching
# --------------------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Lower-case and strip accents, so that "Zürich", "ZURICH" and "zurich" compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _variant_regex(variant: str) -> re.Pattern[str]:
    # Lookarounds rather than \b: \b needs a word character at the edge, which a variant such as
    # "C++" or "$5" does not have.
    parts = [re.escape(p) for p in fold(variant).split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)")


def contains(reply: str, variant: str) -> bool:
    """Whether ``variant`` occurs in ``reply`` (case/accent-insensitive, on word boundaries)."""
    if not variant.strip():
        return False
    return _variant_regex(variant).search(fold(reply)) is not None


def check_must_include(reply: str, groups: Sequence[Sequence[str]]) -> Check:
    """Every group of alternatives must be matched by at least one of its variants."""
    missing = [list(g) for g in groups if g and not any(contains(reply, v) for v in g)]
    n = sum(1 for g in groups if g)
    if missing:
        shown = "; ".join(" | ".join(repr(v) for v in g) for g in missing)
        return _result("must_include", False, f"missing {len(missing)} of {n}: {shown}")
    return _result("must_include", True, f"all {n} entities present")


def check_must_not_include(reply: str, forbidden: Sequence[str]) -> Check:
    """None of the forbidden strings may occur (same matching rule as must_include)."""
    found = [s for s in forbidden if contains(reply, s)]
    if found:
        return _result("must_not_include", False, "found " + ", ".join(map(repr, found)))
    return _result("must_not_include", True, f"none of {len(forbidden)} forbidden strings")


# --------------------------------------------------------------------------------------------
# Language detection
# --------------------------------------------------------------------------------------------

# High-frequency function words. Accents are kept ("é" is Portuguese "is", "e" is "and" in
# Italian and Portuguese). Words listed under several languages are shared evidence and are
# down-weighted in the score (see _language_scores).
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the and is are was were of to in that it you for with on this be not have has i a an at by from "
        "or but as your we they can will my do does if there which what would should their".split()
    ),
    "es": frozenset(
        "el la los las y es son de del en que un una por con para no se lo su al como más pero muy "
        "está están este esta también hay yo tu mi sus le les ser fue sí o ya cuando donde".split()
    ),
    "fr": frozenset(
        "le la les de des du et est un une je il elle nous vous pas ne que qui pour dans sur avec ce "
        "cette au aux sont mais ou très aussi c l d j qu n y à en être ont son sa ses leur".split()
    ),
    "de": frozenset(
        "der die das und ist nicht ein eine zu den dem mit von sich auf für ich es sie wir auch im "
        "sind wird werden oder aber wie bei nach noch nur kann einen dass des ihr ihre hat war".split()
    ),
    "it": frozenset(
        "il lo la i gli le di del della e è un una che non per con sono ma anche come più nel nella "
        "questo questa molto ho hai ha si mi ti ci da al alla dei delle io tu suo sua".split()
    ),
    "pt": frozenset(
        "o a os as de do da dos das e é um uma que não em no na nos nas por para com se mais muito "
        "também são está isso ele ela mas ou foi tem seu sua ao você eu meu minha".split()
    ),
}
SUPPORTED_LANGUAGES = tuple(_STOPWORDS)
_LANGUAGE_NAMES = {
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "de": "German",
    "it": "Italian",
    "pt": "Portuguese",
}
_SHARE = {w: sum(w in s for s in _STOPWORDS.values()) for s in _STOPWORDS.values() for w in s}
_LETTERS = re.compile(r"[^\W\d_]+")

MIN_WORDS_FOR_LANGUAGE = 5  # below this a reply is too short to tell, and is not failed on language
MIN_STOPWORD_HITS = 2  # a language needs this many stopword tokens to be a candidate at all
# The winner must beat the requested language by at least one distinctive word's worth of score,
# so a reply that quotes a foreign phrase or two is not failed.
LANGUAGE_MARGIN = 1.0


def language_name(code: str) -> str:
    """English name of a supported ISO 639-1 code, or the code itself."""
    return _LANGUAGE_NAMES.get(code, code)


def _language_scores(text: str) -> tuple[dict[str, float], dict[str, int]]:
    tokens = _LETTERS.findall(text.lower())
    scores = dict.fromkeys(_STOPWORDS, 0.0)
    hits = dict.fromkeys(_STOPWORDS, 0)
    for tok in tokens:
        for lang, words in _STOPWORDS.items():
            if tok in words:
                # A word shared by k languages gives each 1/k: "de" says little, "the" a lot.
                scores[lang] += 1.0 / _SHARE[tok]
                hits[lang] += 1
    return scores, hits


def detect_language(text: str) -> tuple[str | None, dict[str, float]]:
    """Guess the language of ``text`` among en/es/fr/de/it/pt from stopword frequencies.

    Returns:
        The best-scoring language among those with at least ``MIN_STOPWORD_HITS`` stopword
        tokens (None when the text has fewer than ``MIN_WORDS_FOR_LANGUAGE`` words or no
        language qualifies), and every language's score.
    """
    scores, hits = _language_scores(text)
    if len(text.split()) < MIN_WORDS_FOR_LANGUAGE:
        return None, scores
    candidates = [lang for lang in _STOPWORDS if hits[lang] >= MIN_STOPWORD_HITS]
    if not candidates:
        return None, scores
    return max(candidates, key=lambda lang: scores[lang]), scores


def check_language(reply: str, code: str) -> Check:
    """The reply is in language ``code``: conservative, it fails only on clear evidence.

    Fails only when the reply has enough words, some language has enough stopword hits, and
    another language out-scores the requested one by at least ``LANGUAGE_MARGIN``. Too-short
    replies, replies with no recognisable stopwords (code, a list of names) and unsupported
    codes pass with a detail saying the language could not be checked.
    """
    name = f"language:{code}"
    code = code.lower()
    if code not in _STOPWORDS:
        return _result(name, True, f"language {code!r} not supported by the detector; not checked")
    best, scores = detect_language(reply)
    shown = ", ".join(f"{k}={v:.1f}" for k, v in sorted(scores.items(), key=lambda kv: -kv[1]) if v > 0)
    if best is None:
        return _result(name, True, f"too short or too few stopwords to tell ({shown or 'none'})")
    if scores[best] - scores[code] >= LANGUAGE_MARGIN:
        return _result(name, False, f"reads as {language_name(best)}, not {language_name(code)} ({shown})")
    return _result(name, True, f"reads as {language_name(code)} ({shown})")


# --------------------------------------------------------------------------------------------
# Word counts, formats, regular expressions
# --------------------------------------------------------------------------------------------


def word_count(text: str) -> int:
    """Number of whitespace-separated tokens."""
    return len(text.split())


def check_max_words(reply: str, limit: int) -> Check:
    """At most ``limit`` words (see :func:`word_count`)."""
    n = word_count(reply)
    return _result(f"max_words:{limit}", n <= int(limit), f"{n} words (max {limit})")


def check_min_words(reply: str, limit: int) -> Check:
    """At least ``limit`` words (see :func:`word_count`)."""
    n = word_count(reply)
    return _result(f"min_words:{limit}", n >= int(limit), f"{n} words (min {limit})")


_BULLET = re.compile(r"^\s*[-*•]\s+\S")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S")
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n(.*?)\n?```$", re.DOTALL)


def _parse_json(reply: str) -> tuple[bool, str]:
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        json.loads(text)
    except ValueError as exc:
        return False, f"not valid JSON: {exc}"
    return True, "valid JSON" + (" (in a code fence)" if fenced else "")


def check_format(reply: str, fmt: str) -> Check:
    """One of the named formats; an unknown name is a bug in the item, hence ValueError."""
    name = f"format:{fmt}"
    lines = reply.splitlines()
    if fmt in ("bullet_list", "numbered_list"):
        pattern = _BULLET if fmt == "bullet_list" else _NUMBERED
        n = sum(1 for line in lines if pattern.match(line))
        return _result(name, n >= 2, f"{n} list lines (need >= 2)")
    if fmt == "json":
        ok, detail = _parse_json(reply)
        return _result(name, ok, detail)
    if fmt == "single_line":
        n = len([line for line in reply.strip().splitlines() if line.strip()])
        return _result(name, n == 1, f"{n} non-empty lines")
    if fmt == "all_caps":
        lower = sum(1 for c in reply if c.islower())
        upper = sum(1 for c in reply if c.isupper())
        return _result(name, upper > 0 and lower == 0, f"{upper} upper-case, {lower} lower-case letters")
    if fmt == "no_commas":
        n = sum(reply.count(c) for c in ",，、")  # ASCII, full-width and ideographic commas
        return _result(name, n == 0, f"{n} commas")
    raise ValueError(f"unknown format constraint {fmt!r}")


def check_regex(reply: str, pattern: str, *, must: bool) -> Check:
    """``must_match`` (must=True) or ``no_match`` (must=False), case-insensitive, multi-line."""
    m = re.search(pattern, reply, re.IGNORECASE | re.MULTILINE)
    name = f"{'must_match' if must else 'no_match'}:{pattern}"
    detail = f"matched {m.group(0)[:80]!r}" if m else "no match"
    return _result(name, (m is not None) == must, detail)


# --------------------------------------------------------------------------------------------
# Structure: a JSON schema, a markdown table's columns, counts of sentences and list items
# --------------------------------------------------------------------------------------------


def _load_json(reply: str) -> tuple[Any, str]:
    """The reply's JSON value and "" (the same reading as ``format:json``: the whole reply, or one code
    fence around it), or ``(None, why not)``."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text), ""
    except ValueError as exc:
        if not fenced and "```" in text:  # the commonest miss: a fence, then a sentence about it
            return None, f"not valid JSON: a code fence with text outside it (the reply must be the JSON alone): {exc}"
        return None, f"not valid JSON: {exc}"


def check_json_schema(reply: str, schema: dict[str, Any]) -> Check:
    """The reply is JSON (as ``format:json`` reads it) that fits ``schema`` (JSON Schema, draft 2020-12).

    The first validation error is the detail, with the path of the offending value.
    """
    import jsonschema  # a dependency of the package (pyproject.toml); imported where a schema is checked

    name = "json_schema"
    value, why = _load_json(reply)
    if why:
        return _result(name, False, why)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return _result(name, False, f"at {where}: {error.message[:160]}")
    return _result(name, True, "valid JSON that fits the schema")


_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _table_cells(line: str) -> list[str]:
    """A table line's cells: outer pipes dropped, split on unescaped pipes, emphasis marks stripped."""
    text = line.strip()
    text = text[1:] if text.startswith("|") else text
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [cell.strip().strip("*_`").strip() for cell in re.split(r"(?<!\\)\|", text)]


def check_table_columns(reply: str, columns: Sequence[str]) -> Check:
    """The reply's first markdown table has exactly ``columns`` as its header, in order, and data rows.

    A table is a line with a pipe followed by a rule line (``|---|---|``); its rows are the pipe lines that
    follow. Header cells compare case- and accent-insensitively, with ``**``, ``_`` and backticks around a
    cell ignored. It fails when there is no table, when the header differs, when the table has no data row,
    or when a row has another number of cells than the header.
    """
    name = f"table_columns:{'|'.join(columns)}"
    lines = reply.splitlines()
    start = next((i for i in range(len(lines) - 1) if "|" in lines[i] and _TABLE_RULE.match(lines[i + 1])), None)
    if start is None:
        return _result(name, False, "no markdown table (a header line with pipes, then a |---| rule line)")
    header = _table_cells(lines[start])
    if [fold(h) for h in header] != [fold(c) for c in columns]:
        return _result(name, False, f"header is {header}, expected {list(columns)}")
    rows = []
    for line in lines[start + 2:]:
        if "|" not in line or not line.strip():
            break
        rows.append(_table_cells(line))
    if not rows:
        return _result(name, False, "the table has a header but no data row")
    ragged = [k for k, r in enumerate(rows, 1) if len(r) != len(header)]
    if ragged:
        return _result(name, False, f"rows {ragged[:5]} do not have {len(header)} cells")
    return _result(name, True, f"{len(rows)} rows under the {len(header)} stated columns")


# A sentence ends at ., ! or ? (or an ellipsis), closing quotes or brackets allowed, before whitespace.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


def sentence_count(text: str) -> int:
    """Sentences in ``text``: pieces between sentence-ending punctuation followed by whitespace, and
    between lines; a piece with no letter or digit is not counted. "3.5" does not end a sentence; an
    abbreviation followed by a space ("Dr. Smith") does, a known over-count."""
    pieces = [p for line in text.splitlines() for p in _SENTENCE_BREAK.split(line.strip())]
    return sum(1 for p in pieces if any(c.isalnum() for c in p))


def check_sentence_count(reply: str, n: int) -> Check:
    """Exactly ``n`` sentences (see :func:`sentence_count`)."""
    k = sentence_count(reply)
    return _result(f"sentence_count:{n}", k == int(n), f"{k} sentences (need exactly {n})")


def check_item_count(reply: str, n: int) -> Check:
    """Exactly ``n`` list lines (bulleted ``-``/``*``/``•`` or numbered ``1.``/``1)``, nested ones included)."""
    k = sum(1 for line in reply.splitlines() if _BULLET.match(line) or _NUMBERED.match(line))
    return _result(f"item_count:{n}", k == int(n), f"{k} list lines (need exactly {n})")


def check_constraint(reply: str, c: Constraint) -> Check:
    """Dispatch one constraint to its check; an unknown kind raises ValueError."""
    if c.kind == "max_words":
        return check_max_words(reply, c.value)
    if c.kind == "min_words":
        return check_min_words(reply, c.value)
    if c.kind == "language":
        return check_language(reply, str(c.value))
    if c.kind == "format":
        return check_format(reply, str(c.value))
    if c.kind in ("must_match", "no_match"):
        return check_regex(reply, str(c.value), must=c.kind == "must_match")
    if c.kind == "json_schema":
        return check_json_schema(reply, c.value)
    if c.kind == "table_columns":
        return check_table_columns(reply, c.value)
    if c.kind == "sentence_count":
        return check_sentence_count(reply, c.value)
    if c.kind == "item_count":
        return check_item_count(reply, c.value)
    raise ValueError(f"unknown constraint kind {c.kind!r}")


def check_expectation(reply: str, expect: Expectation) -> list[Check]:
    """Every check the expectation states, in a fixed order; empty when it states none.

    ``notes`` are hints for an LLM judge and are not checkable here.
    """
    out: list[Check] = []
    if any(expect.must_include):
        out.append(check_must_include(reply, expect.must_include))
    if expect.must_not_include:
        out.append(check_must_not_include(reply, expect.must_not_include))
    out.extend(check_constraint(reply, c) for c in expect.constraints)
    return out


def pairing_problems(item: Item, gen_turns: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why a generation row's turns cannot be paired by position with ``item``'s judged turns (empty if
    they can): a judged turn the row lacks, or one whose user text differs (stale generations).
    Both deterministic scorers (triage, verifiable) pair turns this way."""
    problems: list[str] = []
    for i in item.judged_turns:
        if i >= len(gen_turns):
            problems.append(f"generation row has no turn {i} (it has {len(gen_turns)})")
        elif (gen_turns[i].get("user") or "").strip() != item.turns[i].user.strip():
            problems.append(f"turn {i}: user text differs from the item's (stale generations?)")
    return problems
