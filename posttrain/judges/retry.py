"""Our own retries for provider API calls: exponential backoff with jitter, honouring retry-after.

The SDKs' retries are switched off so that every failed attempt is counted (``n_api_errors``) and the
policy is the same for both providers. Retried: 408, 409, 429, every 5xx (Anthropic's 529 overloaded
included), timeouts, connection errors (a connection dropped mid-body among them) and a 200 whose JSON
body is cut short. Any other status (400, 401, 403, 404, 413, 422) is final: retrying cannot fix it.

A 429 is not always a rate limit: a spend limit (Anthropic ``enforced_spend_limit_reached`` and its
contract / linked-organization kin, OpenAI ``insufficient_quota``) will not clear in seconds, so it is
never retried; :class:`SpendLimitError` tells the runner to stop the whole run at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_BACKOFF_BASE_S = 0.5  # first retry waits ~0.5 s, then doubles
DEFAULT_BACKOFF_CAP_S = 30.0
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer than this is waited on for this long only


# Anthropic error codes (error.details.error_code) that mean "no more spending", whatever the status
SPEND_LIMIT_CODES = ("enforced_spend_limit_reached", "contract_spend_limit_reached",
                     "linked_organization_spend_limit_reached", "linked_organization_billing_unavailable")


class JudgeCallError(RuntimeError):
    """An API call failed for good (retries spent, or an error that retrying cannot fix).

    ``client_error`` is set for a final 4xx that the same request would get again (not found, invalid
    request, authentication, permission): "STATUS: the API's message", the same text for the same cause.
    """

    def __init__(self, message: str, n_errors: int, *, client_error: str | None = None) -> None:
        super().__init__(message)
        self.n_errors = n_errors
        self.client_error = client_error


class SpendLimitError(JudgeCallError):
    """The provider refuses to spend more (a spend limit or exhausted quota): stop, do not retry."""


def api_message(exc: BaseException) -> str:
    """The API's own error message (both SDKs keep the parsed body), else the exception text."""
    message = getattr(exc, "api_message", None)  # anthropic: error.message
    body = getattr(exc, "body", None)
    if not message and isinstance(body, dict):  # openai: body is the "error" object
        message = body.get("message") or (body.get("error") or {}).get("message")
    if not message:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return str(message)[:300]


def spend_limit_reason(exc: BaseException) -> str | None:
    """Why this error is a spend limit (the provider's code), or None when it is not one."""
    code = getattr(exc, "error_code", None)  # anthropic: error.details.error_code
    if code in SPEND_LIMIT_CODES:
        return str(code)
    for attr in ("code", "type"):  # openai: 429 with code/type "insufficient_quota"
        if getattr(exc, attr, None) == "insufficient_quota":
            return "insufficient_quota"
    return None


def client_error_text(exc: BaseException) -> str | None:
    """"STATUS: message" for a final client error (4xx other than 408/409/429), else None."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429):
        return f"{status}: {api_message(exc)}"
    return None


def _retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms / retry-after, seconds or HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000.0
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _is_retryable(exc: BaseException, transient: tuple[type[BaseException], ...]) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and hasattr(exc, "response"):
        # 408 timeout, 409 conflict, 429 rate limit, 5xx incl. Anthropic's 529 overloaded
        return status in (408, 409, 429) or status >= 500
    # connection errors and timeouts, and a 200 whose JSON body is cut short
    return isinstance(exc, transient + (json.JSONDecodeError,))


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {text}"


async def call_with_retries(
    send: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    transient: tuple[type[BaseException], ...],
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    rng: random.Random | None = None,
) -> tuple[T, int]:
    """Await ``send()`` with up to ``max_retries`` retries; return (result, number of failed attempts).

    Waits ``retry-after`` when the server sends one, else ``min(cap, base * 2**attempt)`` scaled by a
    jitter in [0.5, 1) so that concurrent callers do not retry in lockstep.

    Raises:
        JudgeCallError: a non-retryable error, or the retries are spent.
    """
    rng = rng or random.Random()
    for attempt in range(max_retries + 1):
        try:
            return await send(), attempt
        except Exception as exc:  # noqa: BLE001 - classified just below; unknown errors re-raise
            reason = spend_limit_reason(exc)
            if reason is not None:
                raise SpendLimitError(f"{_describe(exc)} ({reason}: not retried)", attempt + 1,
                                      client_error=f"{getattr(exc, 'status_code', '')} {reason}: {api_message(exc)}") from exc
            if not _is_retryable(exc, transient):
                if getattr(exc, "status_code", None) is None and not isinstance(exc, transient):
                    raise  # a bug on our side (a TypeError, say), not an API problem: surface it
                raise JudgeCallError(f"{_describe(exc)} (not retryable)", attempt + 1,
                                     client_error=client_error_text(exc)) from exc
            if attempt == max_retries:
                raise JudgeCallError(f"{_describe(exc)} (gave up after {attempt + 1} attempts)",
                                     attempt + 1) from exc
            wait = _retry_after_s(exc)
            if wait is None:
                wait = min(backoff_cap_s, backoff_base_s * 2**attempt) * (0.5 + rng.random() / 2)
            await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
    raise AssertionError("unreachable")
