"""Judge a run's generations: one call per judged turn, combined into one score row per conversation.

Decision rule (docs/judging.md): every turn with an expectation is judged in its own call, with the
conversation up to and including that turn; the conversation passes iff every judged turn passes;
it fails if any judged turn fails; otherwise, if any judged turn ended as "error" (retries and
re-asks spent), it is "error", which is never counted as pass or fail.

Under conv-judge-v3 a turn's checks are the judge's plus the facts the code decided (word limits,
formats, patterns, absent forbidden words; ``prompt.code_facts``). A failed fact fails the turn
whatever the judge said: where the judge's verdict was "pass", the turn records the disagreement
(``code_disagreements``), and the eval summary counts them (:func:`code_decided_summary`). A turn
whose judge call ended in error still fails when a fact failed: its outcome is known.

Two failures stop the run instead of turning every turn into "error": a spend limit (more calls
cannot succeed) and the same client error (4xx: model not found, invalid request, bad key) coming
back ``judge.max_same_client_errors`` times. Either raises :class:`JudgeStopped` with the API's
message; finished verdicts stay cached and the generations stay on disk for the rerun.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.items import Item
from posttrain.judges.asking import Answer, AskContext, JudgeSpend, ask, cost_usd
from posttrain.judges.cache import JudgeCache, cache_key
from posttrain.judges.clients import (
    DEFAULT_BACKOFF_BASE_S,
    SpendLimitError,
    check_judge_ready,
    judge_request,
    make_judge,
    make_provider,
    request_settings,
)
from posttrain.judges.prompt import label_order, render_turn_prompt, template_sha256, turn_facts
from posttrain.scorers.checks import wordless_verdict

SCORE_KEYS = ("item_id", "category", "model", "verdict", "scorer", "judge", "judge_provider", "judge_model",
              "template_version", "template_sha256", "judge_settings",
              "turn_verdicts", "checks", "rationale", "input_tokens", "output_tokens", "cost_usd",
              "n_parse_failures", "n_api_errors", "reply_chars", "code_disagreements", "error")
_RATIONALE_CHARS = 600


# ---------------------------------------------------------------------------------------------
# Planning: which turns to judge, with which prompt


@dataclass
class TurnJob:
    """One judged turn: ``index`` is the item's 0-based turn, ``label`` the row's "turn" value."""

    index: int
    label: int
    prompt: str | None
    key: str | None
    reply_chars: int
    error: str | None = None
    verdict: dict[str, Any] | None = None  # decided without a call (a wordless reply fails: non_empty)
    facts: list[dict[str, Any]] = field(default_factory=list)  # the lines the code decided (v3)


def row_replies(row: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The row's replies in turn order, and the "turn" labels they carry."""
    turns = sorted(row.get("turns") or [], key=lambda t: t["turn"])
    return [t.get("reply") or "" for t in turns], [t["turn"] for t in turns]


def plan_turns(item: Item, row: dict[str, Any], cfg: Any) -> list[TurnJob]:
    """A job per judged turn; a turn with no generated reply becomes an error job (no call)."""
    replies, labels = row_replies(row)
    provider = make_provider(cfg)
    jobs = []
    for i in item.judged_turns:
        if i >= len(replies):
            jobs.append(TurnJob(i, i, None, None, 0, error=f"no reply generated for turn index {i}"))
            continue
        if (empty := wordless_verdict(replies[i])) is not None:  # nothing to grade: fail, no call
            jobs.append(TurnJob(i, labels[i], None, None, len(replies[i]), verdict=empty))
            continue
        prompt = render_turn_prompt(item, replies, i, cfg.template_version)
        jobs.append(TurnJob(i, labels[i], prompt, cache_key(judge_request(cfg, provider, cfg.template_version, prompt)),
                            len(replies[i]), facts=turn_facts(item, replies, i, cfg.template_version)))
    return jobs


def pair_rows(items: Sequence[Item], rows: Sequence[dict[str, Any]]) -> list[tuple[Item, dict[str, Any]]]:
    """(item, row) per row, in row order.

    Raises:
        ValueError: a row without an item, an item without a row (for some model), or a duplicate.
    """
    by_id = {it.id: it for it in items}
    unknown = sorted({r["item_id"] for r in rows} - by_id.keys())
    seen: set[tuple[str, str]] = set()
    dupes = []
    for r in rows:
        k = (r["item_id"], r.get("model", ""))
        if k in seen:
            dupes.append(k)
        seen.add(k)
    missing = {m: sorted(by_id.keys() - {i for i, mm in seen if mm == m}) for m in {m for _, m in seen}}
    if not rows and items:
        missing = {"(any)": sorted(by_id)}
    problems = [f"rows for unknown items {unknown[:20]}"] if unknown else []
    problems += [f"model {m!r} has no generation row for items {ids[:20]}{' ...' if len(ids) > 20 else ''}"
                 for m, ids in sorted(missing.items()) if ids]
    if dupes:
        problems.append(f"duplicate rows for (item_id, model) {dupes[:20]}")
    if problems:
        raise ValueError("cannot judge (nothing was spent): " + "; ".join(problems)
                         + ". Pass the items the generations were made from, and complete generations.")
    return [(by_id[r["item_id"]], r) for r in rows]


def turn_verdict(job: TurnJob, ans: Answer) -> dict[str, Any]:
    """One turn's verdict: the judge's answer with the code's facts merged in, which override it.

    Checks are listed in the prompt's line order, each marked ``by`` "judge" or "code". The verdict is
    "pass" iff every check passed; the validator already refused a judge "pass" with a failed check of
    its own, so the code can only turn a judge's "pass" into "fail": each failed fact that does so is
    a disagreement (``code_disagreements``: label and the code's detail), and ``judge_verdict`` keeps
    what the judge said. Without an answer the turn is "error", unless a fact failed: then it is "fail",
    with the judge's error in ``judge_error``.
    """
    if job.prompt is None and ans.data is not None:  # decided without a call (a wordless reply)
        return {"turn": job.label, **ans.data}
    facts = job.facts
    failed = [f for f in facts if not f["passed"]]
    if ans.data is None:
        tv: dict[str, Any] = {"turn": job.label, "verdict": "fail" if failed else "error",
                              "checks": [{**f} for f in facts], "rationale": f"judge error: {ans.error}"}
        if failed:  # known without the judge; judge_error says the turn has no judge answer (asked on a rerun)
            tv["rationale"] += "; failed by code: " + ", ".join(f["name"] for f in failed)
            tv["judge_error"] = ans.error
        return tv
    judged = [{**c, "by": "judge"} for c in ans.data["checks"]]
    if not facts:
        return {"turn": job.label, "verdict": ans.data["verdict"], "checks": judged, "rationale": ans.data["rationale"]}
    merged = sorted(judged + [{**f} for f in facts], key=lambda c: label_order(c["name"]))
    verdict = "pass" if all(c["passed"] for c in merged) else "fail"
    said = ans.data["verdict"]
    return {"turn": job.label, "verdict": verdict, "judge_verdict": said, "checks": merged,
            "rationale": ans.data["rationale"],
            "code_disagreements": [{"label": f["name"], "code": f["detail"]} for f in failed] if said == "pass" else []}


def code_decided_summary(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the code decided across a run's score rows (the eval summary's ``code_decided`` block).

    ``facts``/``facts_failed``: lines decided by code, and how many failed; ``turns_overridden``: turns
    whose judge said "pass" where a fact failed; ``disagreements``: the failed facts in those turns.
    """
    tvs = [tv for r in scores for tv in r.get("turn_verdicts") or [] if isinstance(tv, dict)]
    facts = [c for tv in tvs for c in tv.get("checks") or [] if c.get("by") == "code"]
    return {"turns_with_facts": sum(any(c.get("by") == "code" for c in tv.get("checks") or []) for tv in tvs),
            "facts": len(facts), "facts_failed": sum(not c["passed"] for c in facts),
            "turns_overridden": sum(bool(tv.get("code_disagreements")) for tv in tvs),
            "disagreements": sum(len(tv.get("code_disagreements") or []) for tv in tvs)}


def score_row(item: Item, row: dict[str, Any], jobs: Sequence[TurnJob], answers: Sequence[Answer],
              cfg: Any) -> dict[str, Any]:
    """Combine the turn answers of one conversation by the decision rule."""
    turn_verdicts, checks, errors, disagreements = [], [], [], []
    for job, ans in zip(jobs, answers, strict=True):
        tv = turn_verdict(job, ans)
        if tv["verdict"] == "error":
            errors.append(f"turn {job.label}: {ans.error}")
        turn_verdicts.append(tv)
        checks += [{"turn": job.label, **c} for c in tv["checks"]]
        disagreements += [{"turn": job.label, **d} for d in tv.get("code_disagreements", [])]
    verdicts = [tv["verdict"] for tv in turn_verdicts]
    if not jobs:
        verdict, errors = "error", ["the item has no turn with an expectation; nothing to judge"]
    else:
        verdict = "fail" if "fail" in verdicts else "error" if "error" in verdicts else "pass"
    rationale = " | ".join(f"turn {tv['turn']}: {tv['rationale']}" for tv in turn_verdicts)
    return {
        "item_id": item.id, "category": item.category, "model": row.get("model"), "verdict": verdict,
        "scorer": "llm", "judge": cfg.name, "judge_provider": cfg.provider, "judge_model": cfg.model,
        "template_version": cfg.template_version, "template_sha256": template_sha256(cfg.template_version),
        "judge_settings": request_settings(cfg),
        "turn_verdicts": turn_verdicts, "checks": checks,
        "rationale": rationale if len(rationale) <= _RATIONALE_CHARS else rationale[: _RATIONALE_CHARS - 3] + "...",
        "input_tokens": sum(a.input_tokens for a in answers), "output_tokens": sum(a.output_tokens for a in answers),
        "cost_usd": sum(a.cost_usd for a in answers), "n_parse_failures": sum(a.n_parse_failures for a in answers),
        "n_api_errors": sum(a.n_api_errors for a in answers), "reply_chars": sum(j.reply_chars for j in jobs),
        "code_disagreements": disagreements, "error": "; ".join(errors) if verdict == "error" else None,
    }


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar on stderr (done/total, with the error count as a postfix)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="turn", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Entry points


def estimate_cost(items: Sequence[Item], cfg: Any, *, n_models: int = 1) -> float:
    """USD estimate before a run: judged turns × (est tokens × prices), for ``n_models`` runs.

    Pairwise mode makes two calls per turn (both orders); batch mode bills ``batch_discount``.
    """
    n_turns = sum(len(it.judged_turns) for it in items) * n_models * (2 if cfg.mode == "pairwise" else 1)
    return n_turns * cost_usd(cfg, cfg.est_input_tokens, cfg.est_output_tokens, batch=cfg.mode == "batch")


def judge_generations(
    items: Sequence[Item],
    rows: Sequence[dict[str, Any]],
    cfg: Any,
    *,
    cache_dir: Path,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    state_dir: Path | None = None,
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
    poll_interval_s: float = 30.0,
    max_wait_s: float | None = None,
    spend: JudgeSpend | None = None,
) -> list[dict[str, Any]]:
    """Judge every judged turn of every generation row; return one score row per row (row order).

    Args:
        items: the benchmark items the rows were generated from.
        rows: generation rows (generations.jsonl).
        cfg: the judge config (mode "sync" or "batch").
        cache_dir: the judge cache folder; cached turns make no call (their rows keep the cost
            recorded when the answer was made; ``spend`` counts only what this call paid).
        on_row: called with each score row as its conversation completes (append it to scores.jsonl).
        progress: show a progress bar on stderr.
        state_dir: the run folder, where batch mode keeps ``judge_batch.json`` (required for batch).
        backoff_base_s: first retry wait; tests pass a tiny value.
        poll_interval_s: seconds between batch status polls.
        max_wait_s: batch mode gives up polling after this long (the batch id stays saved; rerun to
            resume); None waits until the batch ends.
        spend: accumulates what this call actually paid (USD, answers received, cache hits).

    Raises:
        JudgeConfigError: no API key, unknown provider or template (nothing was spent).
        JudgeStopped: a spend limit, or the same client error ``judge.max_same_client_errors`` times;
            the verdicts finished before it are cached (and were passed to ``on_row``).
        ValueError: rows and items do not match, or pairwise mode (use posttrain.analysis.pairwise.judge_pairwise).
    """
    if cfg.mode == "pairwise":
        raise ValueError("judge.mode=pairwise compares two runs: use posttrain-pairwise RUN_A RUN_B")
    if cfg.mode == "batch" and state_dir is None:
        raise ValueError("judge.mode=batch needs state_dir (the run folder) to save the batch id for resuming")
    check_judge_ready(cfg)
    pairs = pair_rows(items, rows)
    plans = [(item, row, plan_turns(item, row, cfg)) for item, row in pairs]
    return asyncio.run(judge_plans(plans, cfg, cache=JudgeCache(cache_dir), on_row=on_row, progress=progress,
                                   use_batch=cfg.mode == "batch", state_dir=state_dir, backoff_base_s=backoff_base_s,
                                   poll_interval_s=poll_interval_s, max_wait_s=max_wait_s, spend=spend))


async def judge_plans(plans: Sequence[tuple[Item, dict[str, Any], list[TurnJob]]], cfg: Any, *, cache: JudgeCache,
                      on_row: Callable[[dict[str, Any]], None] | None = None, progress: bool = False,
                      use_batch: bool = False, state_dir: Path | None = None,
                      backoff_base_s: float = DEFAULT_BACKOFF_BASE_S, poll_interval_s: float = 30.0,
                      max_wait_s: float | None = None, spend: JudgeSpend | None = None) -> list[dict[str, Any]]:
    """Judge planned turns (see :func:`plan_turns`) and return score rows; the async core of judge_generations."""
    judge = make_judge(cfg, backoff_base_s=backoff_base_s)
    ctx = AskContext(cfg, judge, cache, cfg.template_version, asyncio.Semaphore(int(cfg.concurrency)),
                     spend if spend is not None else JudgeSpend())
    bar = progress_bar(sum(len(j) for _, _, j in plans), progress, f"judge {cfg.name}")
    n_error = 0
    try:
        batch_answers: dict[str, Answer] = {}
        if use_batch:
            from posttrain.judges.batch import run_batch

            todo = {j.key: j.prompt for _, _, jobs in plans for j in jobs
                    if j.prompt is not None and j.key is not None and j.key not in cache}
            batch_answers = await run_batch(todo, ctx, state_path=Path(state_dir or ".") / "judge_batch.json",
                                            poll_interval_s=poll_interval_s, max_wait_s=max_wait_s)

        async def one_turn(job: TurnJob) -> Answer:
            nonlocal n_error
            if job.prompt is None:
                ans = Answer(job.verdict, error=job.error)
            else:
                pre = batch_answers.get(job.key or "")
                if pre is not None and pre.data is not None:
                    ans = pre
                elif pre is not None:  # the batch answer was unusable: ask again directly
                    left = max(0, int(cfg.max_reasks) - pre.n_parse_failures)
                    ans = pre.merged(await ask(job.prompt, ctx, reasks_left=left))
                else:
                    ans = await ask(job.prompt, ctx)
            n_error += ans.data is None
            bar.update(1)
            bar.set_postfix(n_error=n_error, refresh=False)
            return ans

        async def one_item(item: Item, row: dict[str, Any], jobs: list[TurnJob]) -> dict[str, Any]:
            answers = await asyncio.gather(*(one_turn(j) for j in jobs))
            out = score_row(item, row, jobs, answers, cfg)
            if on_row is not None:
                on_row(out)
            return out

        return list(await asyncio.gather(*(one_item(*p) for p in plans)))
    except SpendLimitError as exc:  # from a batch submission or poll
        raise ctx.stop_for_spend_limit(exc) from exc
    finally:
        bar.close()
        await judge.aclose()
