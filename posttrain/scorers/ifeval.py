"""IFEval's scores for one reply, and its metrics over a run, exactly as IFEval defines them.

Zhou et al. (2023) score every instruction of a prompt twice:

- **strict**: the instruction's checker on the reply as it is;
- **loose**: the checker passes on ANY of eight variants of the reply: as is, without its first line,
  without its last line, without both, and each of those four with every ``*`` removed (a reply that
  opens with "Sure, here it is:" or bolds a word is not then failed for the wrapper).

An empty (all-whitespace) reply follows no instruction in either mode. A prompt follows its
instructions when it follows every one of them. The four headline numbers are then:

- prompt-level strict / loose accuracy: prompts following all their instructions / prompts;
- instruction-level strict / loose accuracy: instructions followed / instructions, over all prompts
  (a prompt with three instructions weighs three times one with one).

Both modes are lm-eval's own functions (``lm_eval.tasks.ifeval.utils.test_instruction_following_strict``
and ``..._loose``) run with the checkers made offline by
:func:`posttrain.benchmarks.ifeval.checker_registry`; this module only reads their per-instruction
results into records and adds them up. ``score_item`` is what ``scorer=verifiable`` calls for an item
with ``meta["ifeval"]``; ``metrics`` is what lands in ``summary["ifeval"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from posttrain.items import Item


def score_item(item: Item, reply: str) -> dict[str, Any]:
    """IFEval's strict and loose verdicts for ``reply`` to the IFEval ``item``.

    Args:
        item: An item read by :mod:`posttrain.benchmarks.ifeval` (``meta["ifeval"]`` holds ``key``,
            ``instruction_id_list`` and ``kwargs``); its one turn is the prompt.
        reply: The model's reply to that prompt.

    Returns:
        ``{"key", "prompt_strict", "prompt_loose", "instructions": [{"id", "kwargs", "strict", "loose"}, ...],
        "checker"}``, one entry per instruction in the item's order.

    Raises:
        ValueError: ``item`` is not an IFEval item.
    """
    meta = item.meta.get("ifeval")
    if not isinstance(meta, Mapping) or not meta.get("instruction_id_list"):
        raise ValueError(f"item {item.id!r} is not an IFEval item (no meta['ifeval'] with instructions); "
                         "only benchmark=ifeval items can be scored by IFEval's checkers")
    from posttrain.benchmarks.ifeval import checker_registry, checker_version

    checker_registry()  # offline Punkt and a seeded langdetect before lm-eval's module is imported
    from lm_eval.tasks.ifeval.utils import (
        InputExample,
        test_instruction_following_loose,
        test_instruction_following_strict,
    )

    ids = list(meta["instruction_id_list"])
    kwargs = [dict(k) for k in meta["kwargs"]]
    inp = InputExample(key=meta["key"], instruction_id_list=ids, prompt=item.turns[0].user, kwargs=kwargs)
    strict = test_instruction_following_strict(inp, reply)
    loose = test_instruction_following_loose(inp, reply)
    return {
        "key": meta["key"],
        "prompt_strict": bool(strict.follow_all_instructions),
        "prompt_loose": bool(loose.follow_all_instructions),
        "instructions": [{"id": iid, "kwargs": kw, "strict": bool(s), "loose": bool(lo)}
                         for iid, kw, s, lo in zip(ids, kwargs, strict.follow_instruction_list,
                                                   loose.follow_instruction_list, strict=True)],
        "checker": checker_version(),
    }


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """IFEval's four accuracies over ``results`` (from :func:`score_item`), plus each instruction's rates.

    Args:
        results: One :func:`score_item` result per prompt scored.

    Returns:
        ``{"n_prompts", "n_instructions", "prompt_level_strict_acc", "prompt_level_loose_acc",
        "inst_level_strict_acc", "inst_level_loose_acc", "per_instruction": {id: {"n", "n_strict",
        "n_loose", "strict_acc", "loose_acc"}}, "per_group": {...same, by the id's prefix such as
        "detectable_format"}, "checker"}``. Per-instruction keys are sorted.

    Raises:
        ValueError: ``results`` is empty, or a result lists no instruction: an IFEval accuracy over
            nothing would be a number about nothing.
    """
    if not results:
        raise ValueError("no IFEval result to summarise: IFEval accuracies need at least one scored prompt")
    per: dict[str, list[int]] = {}
    groups: dict[str, list[int]] = {}
    n_prompt_strict = n_prompt_loose = 0
    for r in results:
        instructions = r.get("instructions") or []
        if not instructions:
            raise ValueError(f"IFEval result for key {r.get('key')!r} lists no instruction")
        n_prompt_strict += bool(r["prompt_strict"])
        n_prompt_loose += bool(r["prompt_loose"])
        for ins in instructions:
            for table, name in ((per, ins["id"]), (groups, ins["id"].split(":", 1)[0])):
                counts = table.setdefault(name, [0, 0, 0])
                counts[0] += 1
                counts[1] += bool(ins["strict"])
                counts[2] += bool(ins["loose"])

    def block(table: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
        return {name: {"n": n, "n_strict": s, "n_loose": lo, "strict_acc": s / n, "loose_acc": lo / n}
                for name, (n, s, lo) in sorted(table.items())}

    n_inst = sum(c[0] for c in per.values())
    checkers = sorted({str(r.get("checker")) for r in results if r.get("checker")})
    return {
        "n_prompts": len(results),
        "n_instructions": n_inst,
        "prompt_level_strict_acc": _rate(n_prompt_strict, len(results)),
        "prompt_level_loose_acc": _rate(n_prompt_loose, len(results)),
        "inst_level_strict_acc": _rate(sum(c[1] for c in per.values()), n_inst),
        "inst_level_loose_acc": _rate(sum(c[2] for c in per.values()), n_inst),
        "per_instruction": block(per),
        "per_group": block(groups),
        "checker": ", ".join(checkers),  # one package version unless results were pooled across installs
    }


def instruction_records(scores: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per (item, instruction) from score rows that carry an ``ifeval`` result (``ifeval.jsonl``).

    Each record: ``item_id``, ``model``, ``key``, ``instruction_index``, ``instruction_id``, ``kwargs``,
    ``strict``, ``loose``, ``prompt_strict``, ``prompt_loose``. Rows without an ``ifeval`` result (items
    of other benchmarks) contribute nothing.
    """
    out: list[dict[str, Any]] = []
    for row in scores:
        r = row.get("ifeval")
        if not r:
            continue
        for j, ins in enumerate(r["instructions"]):
            out.append({"item_id": row.get("item_id"), "model": row.get("model"), "key": r["key"],
                        "instruction_index": j, "instruction_id": ins["id"], "kwargs": ins["kwargs"],
                        "strict": ins["strict"], "loose": ins["loose"],
                        "prompt_strict": r["prompt_strict"], "prompt_loose": r["prompt_loose"]})
    return out
