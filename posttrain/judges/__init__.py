"""LLM judges: score each judged turn of a conversation against its stored expectations.

Public API (docs/judging.md describes the method):

- :func:`check_judge_ready` — run before any generation; raises :class:`JudgeConfigError` (nothing spent).
- :func:`preflight_judge` — ask the provider whether the judge model is still served (retired: refused).
- :func:`estimate_cost` — USD estimate from the config's token estimates.
- :func:`judge_generations` — one score row per generation row (sync or batch mode), cached.
- :func:`spot_check` — re-judge a stratified sample with a second judge; agreement and kappa.
- :func:`judge_instrument`, :func:`template_sha256` — what made a verdict (provider, model, template
  and its hash), the key a calibration is bound to.
- :func:`make_judge`, :func:`render_turn_prompt`, :data:`TEMPLATES`, :data:`VERDICT_SCHEMA`,
  :func:`validate_verdict`, :class:`JudgeCache` — the pieces, for tools and tests.

Importing this package imports no provider SDK.
"""

from posttrain.judges.asking import JudgeSpend, cost_usd
from posttrain.judges.batch import BatchPendingError, BatchSubmitError
from posttrain.judges.cache import JudgeCache, cache_key
from posttrain.judges.clients import (
    DEFAULT_BACKOFF_BASE_S,
    Judge,
    JudgeConfigError,
    JudgeStopped,
    RawVerdict,
    check_judge_ready,
    make_judge,
)
from posttrain.judges.lifecycle import preflight_judge
from posttrain.judges.prompt import (
    PAIR_SCHEMA,
    PAIR_TEMPLATE_VERSION,
    TEMPLATES,
    VERDICT_SCHEMA,
    VerdictError,
    judge_instrument,
    render_pair_prompt,
    render_turn_prompt,
    template_sha256,
    validate_preference,
    validate_verdict,
)
from posttrain.judges.runner import SCORE_KEYS, estimate_cost, judge_generations
from posttrain.judges.spot_check import spot_check

__all__ = [
    "DEFAULT_BACKOFF_BASE_S",
    "PAIR_SCHEMA",
    "PAIR_TEMPLATE_VERSION",
    "SCORE_KEYS",
    "TEMPLATES",
    "VERDICT_SCHEMA",
    "BatchPendingError",
    "BatchSubmitError",
    "Judge",
    "JudgeCache",
    "JudgeConfigError",
    "JudgeSpend",
    "JudgeStopped",
    "RawVerdict",
    "VerdictError",
    "cache_key",
    "check_judge_ready",
    "cost_usd",
    "estimate_cost",
    "judge_generations",
    "judge_instrument",
    "make_judge",
    "preflight_judge",
    "render_pair_prompt",
    "render_turn_prompt",
    "spot_check",
    "template_sha256",
    "validate_preference",
    "validate_verdict",
]
