"""Asking the judge one prompt: from the cache, or from the provider (then cached when valid).

The machinery every judging mode shares (per-turn verdicts in ``runner``, batch submissions in
``batch``, head-to-head preferences in ``analysis.pairwise``): an :class:`Answer` with what it cost,
the run's :class:`JudgeSpend`, and :class:`AskContext`, which holds the concurrency limit, the
in-flight de-duplication and the two rules that stop a run (a spend limit; the same client error
``judge.max_same_client_errors`` times).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from posttrain.judges.cache import JudgeCache, cache_key
from posttrain.judges.clients import JudgeStopped, SdkJudge, SpendLimitError, judge_request
from posttrain.judges.prompt import VerdictError


@dataclass
class Answer:
    """A judged prompt as the runner sees it: the validated object or an error, and what making it cost.

    Tokens, cost and failure counts describe the calls that produced this answer, also when it comes
    from the cache (they are stored with the entry), so a resumed run records the same score rows as
    an uninterrupted one. What a run actually paid is counted in :class:`JudgeSpend`.
    """

    data: dict[str, Any] | None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    n_parse_failures: int = 0
    n_api_errors: int = 0
    error: str | None = None
    cached: bool = False

    def merged(self, later: Answer) -> Answer:
        """``later`` (a retry of this prompt) with this attempt's spending and failures added."""
        return replace(later, input_tokens=self.input_tokens + later.input_tokens,
                       output_tokens=self.output_tokens + later.output_tokens,
                       cost_usd=self.cost_usd + later.cost_usd,
                       n_parse_failures=self.n_parse_failures + later.n_parse_failures,
                       n_api_errors=self.n_api_errors + later.n_api_errors)


@dataclass
class JudgeSpend:
    """What one run actually paid: API answers received now (not cache hits) and their USD."""

    usd: float = 0.0
    calls: int = 0
    cache_hits: int = 0
    truncated: int = 0  # answers cut at judge.max_tokens (each billed the whole cap); re-asked once at most

    def as_dict(self) -> dict[str, Any]:
        return {"spent_usd": self.usd, "paid_answers": self.calls, "cache_hits": self.cache_hits,
                "truncated_answers": self.truncated}


def cost_usd(cfg: Any, input_tokens: int, output_tokens: int, *, batch: bool = False) -> float:
    """USD for the tokens at the judge's prices; batch APIs bill ``batch_discount`` of that."""
    usd = input_tokens * cfg.price_input_per_mtok / 1e6 + output_tokens * cfg.price_output_per_mtok / 1e6
    return usd * cfg.batch_discount if batch else usd


@dataclass
class AskContext:
    """What :func:`ask` shares across concurrent calls of one run."""

    cfg: Any
    judge: SdkJudge
    cache: JudgeCache
    template_version: str
    sem: asyncio.Semaphore
    spend: JudgeSpend = field(default_factory=JudgeSpend)
    inflight: dict[str, asyncio.Task[Answer]] = field(default_factory=dict)
    client_errors: dict[str, int] = field(default_factory=dict)  # "STATUS: message" -> calls that ended on it
    stopped: JudgeStopped | None = None  # set once: every later ask raises it without calling

    def key(self, prompt: str) -> str:
        return cache_key(judge_request(self.cfg, self.judge.provider, self.template_version, prompt))

    def note_client_error(self, text: str) -> None:
        """Count a final 4xx; the ``max_same_client_errors``-th identical one stops the run."""
        self.client_errors[text] = n = self.client_errors.get(text, 0) + 1
        limit = int(getattr(self.cfg, "max_same_client_errors", 3))
        if n >= limit and self.stopped is None:
            self.stopped = JudgeStopped(
                f"judge {self.cfg.name!r} ({self.cfg.provider} model {self.cfg.model!r}) got the same client error "
                f"{n} times, so the run stopped instead of sending more calls that cannot succeed: {text}. Check "
                "judge.model (retired or misspelled?), the key in judge.api_key_env and judge.base_url. The "
                "generations are kept and finished verdicts are cached: rerun the same command after the fix "
                "and only the missing turns are judged.")
        if self.stopped is not None:
            raise self.stopped

    def stop_for_spend_limit(self, exc: SpendLimitError) -> JudgeStopped:
        """The JudgeStopped for a spend limit, set so that queued calls are never sent."""
        if self.stopped is None:
            self.stopped = JudgeStopped(
                f"judge {self.cfg.name!r} ({self.cfg.provider}) hit a spend limit and the run stopped at once (not "
                f"retried): {exc.client_error or exc}. {self.spend.calls} answers were paid for in this run and "
                f"{self.spend.cache_hits} came from the cache; every finished verdict is cached. Raise the limit "
                "or add credit in the provider console, then rerun the same command: finished turns are not "
                "paid again and the generations are reused.")
        return self.stopped


async def ask(prompt: str, ctx: AskContext, *, reasks_left: int | None = None) -> Answer:
    """Answer one prompt from the cache, or from the judge (then cached when valid).

    A cache hit carries the tokens, cost and failure counts stored when the answer was made, and
    adds nothing to ``ctx.spend``.
    """
    key = ctx.key(prompt)
    hit = ctx.cache.get(key)
    if hit is not None:
        try:  # an entry edited by hand or written by an older schema counts as a miss
            data = ctx.judge.provider.spec.validate(hit["answer"], prompt)
        except VerdictError:
            pass
        else:
            ctx.spend.cache_hits += 1
            return Answer(data, int(hit.get("input_tokens") or 0), int(hit.get("output_tokens") or 0),
                          float(hit.get("cost_usd") or 0.0), int(hit.get("n_parse_failures") or 0),
                          int(hit.get("n_api_errors") or 0), cached=True)
    if key in ctx.inflight:  # the same prompt twice in one run (identical replies): pay once
        first = await asyncio.shield(ctx.inflight[key])
        return replace(first, cached=first.data is not None)

    async def call() -> Answer:
        async with ctx.sem:
            if ctx.stopped is not None:  # queued behind the calls that stopped the run: do not send
                raise ctx.stopped
            try:
                raw = await ctx.judge.judge(prompt, reasks_left=reasks_left)
            except SpendLimitError as exc:
                raise ctx.stop_for_spend_limit(exc) from exc
        if raw.client_error is not None:
            ctx.note_client_error(raw.client_error)
        ans = Answer(raw.data, raw.input_tokens, raw.output_tokens,
                     cost_usd(ctx.cfg, raw.input_tokens, raw.output_tokens), raw.n_parse_failures,
                     raw.n_api_errors, raw.error)
        ctx.spend.usd += ans.cost_usd
        ctx.spend.calls += 1
        ctx.spend.truncated += raw.n_truncated
        if ans.data is not None:
            ctx.cache.put(key, ans.data, input_tokens=ans.input_tokens, output_tokens=ans.output_tokens,
                          cost_usd=ans.cost_usd, n_parse_failures=ans.n_parse_failures,
                          n_api_errors=ans.n_api_errors,
                          meta={"provider": ctx.cfg.provider, "model": ctx.cfg.model,
                                "template_version": ctx.template_version})
        return ans

    ctx.inflight[key] = asyncio.ensure_future(call())
    try:
        return await ctx.inflight[key]
    finally:
        ctx.inflight.pop(key, None)
