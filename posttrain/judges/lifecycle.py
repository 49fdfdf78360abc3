"""Is the judge model still served? A preflight that asks the provider before anything is spent.

Providers retire models on published dates, and a request to a retired model fails: without this
check an eval would load a model, generate every reply and then end with every judged turn as
"error". So the eval stage's plan asks first (docs/judging.md, "Model lifecycle"):

- Anthropic: ``models.retrieve(id)`` returns a ``ModelInfo`` whose ``lifecycle`` is ``active``,
  ``deprecated`` or ``retired`` (retired models stay in the catalogue), with ``retires_at``.
- OpenAI: ``models.retrieve(id)`` returns a ``Model`` whose ``shutdown_date`` is set once a shutdown
  is announced (OpenAI's deprecations page says to monitor that field). A date in the past means
  shut down. Our own table of the page's dates (:data:`DOCUMENTED`) fills in the replacement model.

Retired or unknown (404) -> :class:`JudgeConfigError` naming a replacement (exit status 2, nothing
spent). Deprecated -> a warning with the retirement date. A transient error (429, 5xx, 529 overloaded)
is retried by the SDK (``judge.max_retries``); if it persists the check says it "could not check the
model's lifecycle (HTTP 529 ...)" and refuses to go on, since ``judge.preflight=true`` asked for the
check: the model is not called unknown, nor the key wrong. Either way the outcome is a record that the
eval writes into summary.json (``judge_preflight``). When the provider cannot be reached the check
falls back to the installed anthropic SDK's own deprecation table plus :data:`DOCUMENTED`, and says
so in the record; ``judge.preflight=false`` skips the call, which is recorded too.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from posttrain.judges.clients import JudgeConfigError, resolved_base_url

log = logging.getLogger(__name__)

# The current model of each provider: what a refusal suggests when the docs name no other replacement.
REPLACEMENT = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-6.2-sol"}


@dataclass(frozen=True)
class Documented:
    """A published retirement: the date requests stop working, the named replacement, and where it is from."""

    retires: str  # YYYY-MM-DD
    replacement: str
    source: str


_ANTHROPIC_SDK_214 = "anthropic SDK 2.14 deprecated_models table"
_OPENAI_PAGE = "OpenAI deprecations page"
DOCUMENTED: dict[tuple[str, str], Documented] = {
    # Claude Sonnet 4.5: end of life November 30th, 2026; Sonnet 5.5 is the current Sonnet (models overview)
    ("anthropic", "claude-sonnet-4-5"): Documented("2026-11-30", "claude-sonnet-5-5", _ANTHROPIC_SDK_214),
    ("anthropic", "claude-sonnet-4-5-20250929"): Documented("2026-11-30", "claude-sonnet-5-5", _ANTHROPIC_SDK_214),
    # 2026-10-14 notice: the GPT-4o / GPT-4.1 snapshots shut down on 2027-01-14, replacement gpt-6-luna
    **{("openai", m): Documented("2027-01-14", "gpt-6-luna", _OPENAI_PAGE) for m in (
        "gpt-4.1", "gpt-4.1-2025-04-14", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", "gpt-4o", "gpt-4o-2024-08-06",
        "gpt-4o-2024-11-20", "gpt-4o-mini", "gpt-4o-mini-2024-07-18")},
    # 2026-06-11 notice: GPT-5 shuts down on 2026-12-11
    ("openai", "gpt-5"): Documented("2026-12-11", "gpt-6.1-sol", _OPENAI_PAGE),
    ("openai", "gpt-5-2025-08-07"): Documented("2026-12-11", "gpt-6.1-sol", _OPENAI_PAGE),
    ("openai", "gpt-5-mini"): Documented("2026-12-11", "gpt-6.1-terra", _OPENAI_PAGE),
    ("openai", "gpt-5-mini-2025-08-07"): Documented("2026-12-11", "gpt-6.1-terra", _OPENAI_PAGE),
    # shut down 2026-10-23
    **{("openai", m): Documented("2026-10-23", REPLACEMENT["openai"], _OPENAI_PAGE) for m in (
        "gpt-4", "gpt-4-0613", "gpt-4-turbo", "gpt-4-turbo-2024-04-09", "gpt-3.5-turbo", "gpt-3.5-turbo-0125",
        "o1", "o3-mini", "o4-mini", "gpt-4.1-nano")},
}

_SDK_DATE = re.compile(r"^(\w+) (\d+)(?:st|nd|rd|th)?, (\d{4})$")  # "January 22nd, 2027"


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _sdk_date(text: str) -> str | None:
    """The anthropic SDK table's "Month Nth, YYYY" as YYYY-MM-DD (None when it reads otherwise)."""
    m = _SDK_DATE.match(text.strip())
    if not m:
        return None
    try:
        return dt.datetime.strptime(f"{m.group(1)} {m.group(2)} {m.group(3)}", "%B %d %Y").date().isoformat()
    except ValueError:
        return None


def _status_for_date(date: str | None, today: dt.date) -> str:
    if not date:
        return "active"
    return "retired" if dt.date.fromisoformat(date[:10]) <= today else "deprecated"


def _replacement(provider: str, model: str) -> str:
    doc = DOCUMENTED.get((provider, model))
    return doc.replacement if doc else REPLACEMENT[provider]


def _offline(provider: str, model: str, why: str, today: dt.date) -> dict[str, Any]:
    """What the tables installed here say, when the provider cannot be asked."""
    doc = DOCUMENTED.get((provider, model))
    date, source = (doc.retires, doc.source) if doc else (None, None)
    if provider == "anthropic" and date is None:
        try:
            from anthropic._data import DEPRECATED_MODELS  # the SDK warns from this table on every call

            if model in DEPRECATED_MODELS:
                date, source = _sdk_date(DEPRECATED_MODELS[model]), "installed anthropic SDK deprecated_models table"
        except ImportError:
            pass
    status = _status_for_date(date, today) if date else "unverified"
    return {"status": status, "retires_at": date,
            "source": f"offline ({why}); {source or 'no table lists this model'}"}


def _client_options(cfg: Any, key: str) -> dict[str, Any]:
    """The SDK client's settings: its own retries for transient errors, a short timeout (a GET)."""
    timeout = 15.0 if cfg.timeout_s is None else min(float(cfg.timeout_s), 15.0)
    return {"api_key": key, "base_url": cfg.base_url or None, "max_retries": int(cfg.max_retries), "timeout": timeout}


def _transient(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _could_not_check(cfg: Any, status: int, message: str) -> JudgeConfigError:
    return JudgeConfigError(
        f"could not check the model's lifecycle (HTTP {status}: {message}) for {cfg.provider} model {cfg.model!r} "
        f"after {int(cfg.max_retries) + 1} attempts (judge.max_retries={cfg.max_retries}). The provider is "
        "overloaded or rate-limiting; this says nothing about the model or the key. Try again later, or set "
        "judge.preflight=false to go on without the check. Nothing was spent: no model was loaded, nothing was "
        "generated, no judge call was made.")


def _ask_anthropic(cfg: Any, key: str, today: dt.date) -> dict[str, Any]:
    import anthropic

    client = anthropic.Anthropic(**_client_options(cfg, key))
    try:
        info = client.models.retrieve(cfg.model)
    except anthropic.NotFoundError as exc:
        return {"status": "unknown", "retires_at": None, "source": f"anthropic models.retrieve: 404 {exc.api_message}"}
    except anthropic.APIConnectionError as exc:
        return _offline("anthropic", cfg.model, f"{type(exc).__name__}: {exc}", today)
    except anthropic.APIStatusError as exc:
        if _transient(exc.status_code):
            raise _could_not_check(cfg, exc.status_code, exc.api_message or str(exc)) from exc
        raise JudgeConfigError(_refused_text(cfg, exc.status_code, exc.api_message or str(exc))) from exc
    finally:
        client.close()
    retires = info.retires_at.date().isoformat() if info.retires_at else None
    return {"status": info.lifecycle, "retires_at": retires, "source": "anthropic models.retrieve"}


def _ask_openai(cfg: Any, key: str, today: dt.date) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(**_client_options(cfg, key))
    try:
        try:
            model = client.models.retrieve(cfg.model)
        except openai.APIStatusError as exc:
            if _transient(exc.status_code):
                raise _could_not_check(cfg, exc.status_code, exc.message) from exc
            if exc.status_code in (401, 403):
                raise JudgeConfigError(_refused_text(cfg, exc.status_code, str(exc))) from exc
            if "api.openai.com" in str(client.base_url):
                return {"status": "unknown", "retires_at": None,
                        "source": f"openai models.retrieve: {exc.status_code}"}
            # an OpenAI-compatible server (vLLM, say) may serve only the list endpoint
            try:
                served = [m.id for m in client.models.list()]
            except openai.APIStatusError as list_exc:
                if _transient(list_exc.status_code):
                    raise _could_not_check(cfg, list_exc.status_code, list_exc.message) from list_exc
                return {"status": "unknown", "retires_at": None,
                        "source": f"{client.base_url} models.retrieve: {exc.status_code}, models.list refused"}
            status = "active" if cfg.model in served else "unknown"
            return {"status": status, "retires_at": None, "source": f"{client.base_url} models.list ({len(served)} "
                                                                     "models served)"}
    except openai.APIConnectionError as exc:
        return _offline("openai", cfg.model, f"{type(exc).__name__}: {exc}", today)
    finally:
        client.close()
    doc = DOCUMENTED.get(("openai", cfg.model))
    date = model.shutdown_date or (doc.retires if doc else None)
    source = "openai models.retrieve shutdown_date" if model.shutdown_date else (
        f"openai models.retrieve; {doc.source}" if doc else "openai models.retrieve (no shutdown date)")
    return {"status": _status_for_date(date, today), "retires_at": date, "source": source}


def _refused_text(cfg: Any, status: int, message: str) -> str:
    return (f"the judge preflight for {cfg.provider} model {cfg.model!r} was refused by the API ({status}: {message}); "
            f"check the key in {cfg.api_key_env} and judge.base_url. Nothing was spent: no model was loaded, "
            "nothing was generated, no judge call was made.")


def preflight_judge(cfg: Any, *, today: dt.date | None = None) -> dict[str, Any]:
    """Ask the provider whether ``cfg.model`` is served; refuse retired or unknown models.

    Args:
        cfg: a judge config (provider, model, api_key_env, base_url, timeout_s, preflight).
        today: the date to compare retirement dates with (tests pin it); default: today, UTC.

    Returns:
        The record for summary.json: provider, model, base_url, checked, status ("active",
        "deprecated", "unverified" offline, or "skipped"), retires_at, replacement, source, warning.

    Raises:
        JudgeConfigError: the model is retired or unknown to the provider, or the provider refused
            the preflight itself (a bad key); the message names a replacement. Nothing was spent.
    """
    today = today or _today()
    record: dict[str, Any] = {"provider": cfg.provider, "model": cfg.model, "base_url": resolved_base_url(cfg)}
    if not cfg.preflight:
        return record | {"checked": False, "status": "skipped", "retires_at": None, "replacement": None,
                         "source": "judge.preflight=false: the model's lifecycle was not checked", "warning": None}
    key = os.environ.get(cfg.api_key_env or "", "")
    ask = _ask_anthropic if cfg.provider == "anthropic" else _ask_openai
    found = ask(cfg, key, today)
    replacement = _replacement(cfg.provider, cfg.model)
    record |= {"checked": True, **found, "replacement": replacement, "warning": None}
    if found["status"] in ("retired", "unknown"):
        what = (f"was retired on {found['retires_at']}" if found["status"] == "retired" and found["retires_at"]
                else "is retired" if found["status"] == "retired" else "is not served (404: unknown model)")
        raise JudgeConfigError(
            f"judge model {cfg.model!r} ({cfg.provider}) {what}, per {found['source']}: every judge call would fail. "
            f"Use {replacement!r}: judge.model={replacement} with its prices (judge.price_input_per_mtok, "
            f"judge.price_output_per_mtok, judge.prices_for={replacement}), or a shipped judge config that "
            "already names a current model. Nothing was spent: no model was loaded, nothing was generated, "
            "no judge call was made.")
    if found["status"] == "deprecated":
        record["warning"] = (f"judge model {cfg.model!r} ({cfg.provider}) is deprecated and retires on "
                             f"{found['retires_at'] or 'a date not given'} (per {found['source']}); move to "
                             f"{replacement!r} before then: verdicts from another model need a new calibration")
        log.warning(record["warning"])
    elif found["status"] == "unverified":
        log.warning("judge model %r (%s) could not be checked: %s", cfg.model, cfg.provider, found["source"])
    return record


def preflight_for_eval(judge_cfg: Any) -> dict[str, Any]:
    """The eval stage's preflight: the judge, and the spot check's second judge when one will run.

    A second judge without its API key is recorded as skipped here (the spot check decides what
    to do without a key); with a key, a retired or unknown second judge is refused like the first.
    """
    out = {"judge": preflight_judge(judge_cfg)}
    if judge_cfg.spot_check > 0 and judge_cfg.second_judge:
        from posttrain.config import load_group_option

        second = load_group_option("judge", judge_cfg.second_judge)
        if not os.environ.get(second.api_key_env or ""):
            out["second_judge"] = {"provider": second.provider, "model": second.model, "checked": False,
                                   "status": "skipped", "source": f"{second.api_key_env} is not set"}
        else:
            out["second_judge"] = preflight_judge(second)
    return out
