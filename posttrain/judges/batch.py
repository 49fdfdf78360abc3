"""Batch mode: submit the uncached judge prompts as one provider batch, poll, collect.

Anthropic Message Batches (``messages.batches.create / retrieve / results``) and the OpenAI Batch API
(a JSONL upload, ``batches.create``, ``retrieve``, then the output file's content) both bill
``batch_discount`` of the synchronous price and may take up to 24 h.

Resuming: the batch id and the cache keys it covers are written to ``judge_batch.json`` in the run
folder *before* the first poll. A killed run (or one that hit ``max_wait_s``) finds the open batch
there on rerun and resumes polling it; its keys are not submitted again. Valid answers go to the
judge cache as they are collected; answers that are unusable (refused, invalid, errored, expired)
come back as errors and the runner asks for them synchronously.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain.judges.clients import RawVerdict, read_answer
from posttrain.judges.retry import JudgeCallError, SpendLimitError, counted_call
from posttrain.records import write_json

if TYPE_CHECKING:
    from posttrain.judges.asking import Answer, AskContext

STATE_VERSION = 1


class BatchPendingError(RuntimeError):
    """The batch has not ended within ``max_wait_s``; its id is saved, so a rerun resumes it."""


class BatchSubmitError(RuntimeError):
    """Submitting the batch failed; nothing was recorded."""


def load_state(path: Path) -> dict[str, Any]:
    """The batch state file, or an empty state when there is none."""
    if not path.exists():
        return {"version": STATE_VERSION, "batches": []}
    state = json.loads(path.read_text(encoding="utf-8"))
    state.setdefault("batches", [])
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write must not lose the id of a batch already paid for."""
    write_json(path, state)


# ---------------------------------------------------------------------------------------------
# Provider calls: submit -> id; poll -> ended?; fetch -> {custom_id: response dict | error text}


async def _retrying(ctx: AskContext, send: Any) -> Any:
    """One SDK call with the SDK's retries (a timeout is not retried: see judges/retry.py)."""
    result, _ = await counted_call(send, provider_errors=ctx.judge.provider.errors)
    return result


async def _submit(ctx: AskContext, prompts: dict[str, str]) -> str:
    client = ctx.judge.client()
    provider = ctx.judge.provider
    # Creating a batch is not idempotent: a timed-out create may have been accepted. A read timeout is
    # never retried (judges/retry.py); status errors, which mean the server refused it, are, and so is
    # a connection error, which the SDK resends with the same Idempotency-Key header.
    try:
        if ctx.cfg.provider == "anthropic":
            requests = [{"custom_id": key, "params": provider.params(p)} for key, p in prompts.items()]
            batch = await _retrying(ctx, lambda: client.messages.batches.create(requests=requests))
            return str(batch.id)
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                             "body": provider.params(p)}) for key, p in prompts.items()]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        upload = await _retrying(ctx, lambda: client.files.create(file=("judge_batch.jsonl", data,
                                                                        "application/jsonl"), purpose="batch"))
        batch = await _retrying(ctx, lambda: client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"))
        return str(batch.id)
    except SpendLimitError:
        raise  # the runner stops the run with the provider's message
    except JudgeCallError as exc:
        raise BatchSubmitError(f"could not submit the judge batch ({exc}); if it timed out, check the provider "
                               "console for a batch before rerunning, since it may have been accepted") from exc


async def _poll(ctx: AskContext, batch_id: str) -> tuple[bool, Any]:
    client = ctx.judge.client()
    if ctx.cfg.provider == "anthropic":
        b = await _retrying(ctx, lambda: client.messages.batches.retrieve(batch_id))
        return b.processing_status == "ended", b
    b = await _retrying(ctx, lambda: client.batches.retrieve(batch_id))
    return b.status in ("completed", "failed", "expired", "cancelled"), b


async def _fetch(ctx: AskContext, batch: Any) -> dict[str, dict[str, Any] | str]:
    client = ctx.judge.client()
    out: dict[str, dict[str, Any] | str] = {}
    if ctx.cfg.provider == "anthropic":
        async def lines() -> list[Any]:
            return [r async for r in await client.messages.batches.results(batch.id)]

        for r in await _retrying(ctx, lines):
            res = r.result
            out[r.custom_id] = res.message.model_dump() if res.type == "succeeded" else f"batch result {res.type}"
        return out
    for file_id, is_error in ((batch.output_file_id, False), (batch.error_file_id, True)):
        if not file_id:
            continue
        content = await _retrying(ctx, lambda fid=file_id: client.files.content(fid))
        for line in content.text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            resp = rec.get("response") or {}
            if not is_error and resp.get("status_code") == 200 and isinstance(resp.get("body"), dict):
                out[rec["custom_id"]] = resp["body"]
            else:
                out[rec["custom_id"]] = f"batch request failed: {rec.get('error') or resp.get('status_code')}"
    return out


# ---------------------------------------------------------------------------------------------


async def run_batch(prompts: dict[str, str], ctx: AskContext, *, state_path: Path, poll_interval_s: float,
                    max_wait_s: float | None) -> dict[str, Answer]:
    """Judge ``prompts`` (cache key -> prompt, all uncached) through the provider's batch API.

    Returns:
        key -> Answer for every key covered by a collected batch: valid answers (now cached, cost at
        the batch discount) and unusable ones (error set, for the runner to re-ask directly).

    Raises:
        BatchPendingError: still processing after ``max_wait_s``; rerun to resume polling.
        BatchSubmitError: the submission failed.
    """
    from posttrain.judges.asking import Answer, cost_usd

    state = load_state(state_path)
    ident = {"provider": ctx.cfg.provider, "model": ctx.cfg.model, "template_version": ctx.template_version}
    mine = [b for b in state["batches"] if not b.get("collected") and all(b.get(k) == v for k, v in ident.items())
            and set(b["keys"]) & prompts.keys()]
    covered = {k for b in mine for k in b["keys"]}
    todo = {k: p for k, p in prompts.items() if k not in covered}
    if todo:
        batch_id = await _submit(ctx, todo)
        entry = {"id": batch_id, **ident, "keys": sorted(todo), "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
                 "collected": False}
        state["batches"].append(entry)
        save_state(state_path, state)  # before polling: a killed run must find this id
        mine.append(entry)

    answers: dict[str, Answer] = {}
    start = time.monotonic()
    for entry in mine:
        while True:
            ended, batch = await _poll(ctx, entry["id"])
            if ended:
                break
            if max_wait_s is not None and time.monotonic() - start > max_wait_s:
                raise BatchPendingError(
                    f"judge batch {entry['id']} is still processing after {max_wait_s:.0f} s; its id is saved in "
                    f"{state_path}: rerun the same command to resume polling (nothing is resubmitted)")
            await asyncio.sleep(poll_interval_s)
        results = await _fetch(ctx, batch)
        for key in entry["keys"]:
            res = results.get(key, "no result for this request in the batch output")
            if isinstance(res, str):
                answers[key] = Answer(None, n_api_errors=1, error=res)
                continue
            raw = RawVerdict(None)
            problem = read_answer(ctx.judge.provider, res, raw, prompts.get(key))
            usd = cost_usd(ctx.cfg, raw.input_tokens, raw.output_tokens, batch=True)
            answers[key] = Answer(raw.data, raw.input_tokens, raw.output_tokens, usd,
                                  n_parse_failures=int(problem is not None), error=problem)
            ctx.spend.usd += usd
            ctx.spend.calls += 1
            ctx.spend.truncated += raw.n_truncated
            if raw.data is not None:
                ctx.cache.put(key, raw.data, input_tokens=raw.input_tokens, output_tokens=raw.output_tokens,
                              cost_usd=usd, meta={**ident, "batch_id": entry["id"]})
        entry["collected"] = True
        entry["collected_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save_state(state_path, state)
    # keys of collected batches that this run no longer needs (answered meanwhile) are dropped
    return {k: a for k, a in answers.items() if k in prompts}
