"""Retries for provider API calls: the SDKs' own, counted and bounded by our three rules.

The SDKs retry 408, 409, 429, 5xx (Anthropic's 529 overloaded included) and connection errors, with
exponential backoff and jitter, honouring ``retry-after`` / ``retry-after-ms`` and the server's
``x-should-retry`` header (``judge.max_retries`` is passed to them as ``max_retries``). What we add
sits on the SDK's own ``http_client`` (an ``httpx2.AsyncClient``; the SDKs use httpx2, not httpx):

- **Counting.** A request event hook counts every HTTP attempt of a call into a context variable, so
  ``n_api_errors`` is the number of failed attempts, as before, without re-implementing the loop.
- **A spend limit is final.** A 429 that is a spend limit (Anthropic ``enforced_spend_limit_reached``
  and its contract / linked-organization kin, OpenAI ``insufficient_quota``) will not clear in
  seconds. The response hook reads its body and sets ``x-should-retry: false``, which both SDKs obey;
  :class:`SpendLimitError` then tells the runner to stop the whole run at once.
- **A read timeout is not retried.** A non-streaming request that timed out waiting for its answer
  may still be generating, and be billed, on the provider's side; retrying it blindly pays again
  (with 16,000 thinking tokens a turn, up to 5 times). The transport turns a read timeout into an SDK
  error that the SDK does not retry; the turn ends as an error that says so, and a rerun of the same
  command asks for it again, deliberately. A connect or pool timeout (the request was never sent)
  is retried like a connection error. The timeout itself is the SDK's (``clients.request_timeout_s``).
- **A 200 whose JSON body is cut short** is re-fetched: the response hook raises
  ``httpx2.DecodingError``, which both SDKs retry like a dropped connection.

Other client errors (400, 401, 403, 404, 413, 422) are final: retrying cannot fix them.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

# Anthropic error codes (error.details.error_code) that mean "no more spending", whatever the status
SPEND_LIMIT_CODES = ("enforced_spend_limit_reached", "contract_spend_limit_reached",
                     "linked_organization_spend_limit_reached", "linked_organization_billing_unavailable")

# HTTP attempts of the call running in this task (a list so the hooks can append to it)
_ATTEMPTS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("judge_attempts", default=None)


class JudgeCallError(RuntimeError):
    """An API call failed for good (retries spent, a timeout, or an error that retrying cannot fix).

    ``client_error`` is set for a final 4xx that the same request would get again (not found, invalid
    request, authentication, permission): "STATUS: the API's message", the same text for the same cause.
    """

    def __init__(self, message: str, n_errors: int, *, client_error: str | None = None) -> None:
        super().__init__(message)
        self.n_errors = n_errors
        self.client_error = client_error


class SpendLimitError(JudgeCallError):
    """The provider refuses to spend more (a spend limit or exhausted quota): stop, do not retry."""


class RequestTimedOut(Exception):  # noqa: N818 - reads as what happened; mixed into each SDK's base error
    """Mixed into an SDK's base error class so that the SDK raises it as-is and does not retry."""


@cache
def timeout_error_class(provider: str) -> type[Exception]:
    """``RequestTimedOut`` as the provider SDK's own error type.

    The anthropic SDK re-raises its own errors from the transport unwrapped and retries only
    connection, timeout and status errors; the openai SDK propagates any ``OpenAIError`` "as-is,
    without retrying". So a timeout raised as this class ends the call after one attempt.
    """
    if provider == "anthropic":
        import anthropic

        base: type[Exception] = anthropic.AnthropicError
    else:
        import openai

        base = openai.OpenAIError
    return type(f"{provider.capitalize()}RequestTimedOut", (RequestTimedOut, base), {})


DEFAULT_BACKOFF_BASE_S = 0.5  # the SDKs' INITIAL_RETRY_DELAY: the first retry waits ~0.5 s, then doubles (cap 8 s)


def make_http_client(provider: str, backoff_base_s: float = DEFAULT_BACKOFF_BASE_S) -> Any:
    """The SDK's default async http client, with our transport wrapper and event hooks.

    Connection limits are the SDKs' own (1000 connections, 100 kept alive); a custom transport
    does not inherit them, so they are given here. A ``backoff_base_s`` other than the SDKs' 0.5 s
    (tests pass 1 ms) reaches the SDK as ``retry-after-ms`` on a retryable response that has no
    ``retry-after`` of its own: ``backoff_base_s * 2**(attempt - 1)``.
    """
    import httpx2

    inner = httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100))
    timed_out = timeout_error_class(provider)

    class TimeoutIsFinal(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: Any) -> Any:
            try:
                return await inner.handle_async_request(request)
            except httpx2.ReadTimeout as exc:  # sent, and perhaps being answered (and billed): final
                raise timed_out(_timeout_text(request, exc)) from None

        async def aclose(self) -> None:
            await inner.aclose()

    async def on_request(request: Any) -> None:
        attempts = _ATTEMPTS.get()
        if attempts is not None:
            attempts.append(f"{request.method} {request.url.path}")

    async def on_response(response: Any) -> None:
        kind = response.headers.get("content-type", "")
        status = response.status_code
        if (backoff_base_s != DEFAULT_BACKOFF_BASE_S and (status in (408, 409, 429) or status >= 500)
                and "retry-after" not in response.headers and "retry-after-ms" not in response.headers):
            n = len(_ATTEMPTS.get() or [None])
            response.headers["retry-after-ms"] = f"{max(1e-3, backoff_base_s * 2 ** (n - 1)) * 1000:.3f}"
        if response.status_code == 429:
            await response.aread()
            if _spend_limit_in_body(response.content):
                response.headers["x-should-retry"] = "false"  # both SDKs obey this header
        elif response.status_code == 200 and kind.startswith("application/json"):
            try:
                await response.aread()
            except httpx2.ReadTimeout as exc:
                raise timed_out(_timeout_text(response.request, exc)) from None
            try:
                json.loads(response.content)
            except ValueError as exc:
                # retried by both SDKs like a connection dropped mid-body
                raise httpx2.DecodingError(f"the 200 response's JSON body is cut short ({exc})",
                                           request=response.request) from None

    if provider == "anthropic":
        import anthropic

        default: Any = anthropic.DefaultAsyncHttpxClient
    else:
        import openai

        default = openai.DefaultAsyncHttpxClient
    return default(transport=TimeoutIsFinal(), event_hooks={"request": [on_request], "response": [on_response]})


def _timeout_text(request: Any, exc: BaseException) -> str:
    timeout = (getattr(request, "extensions", None) or {}).get("timeout") or {}
    read = timeout.get("read") if isinstance(timeout, dict) else None
    after = f" after {read:g} s" if isinstance(read, (int, float)) else ""
    return (f"the request timed out{after} ({type(exc).__name__}) and was not retried: the provider may still "
            "be generating, and billing, the answer. Raise judge.timeout_s (null sizes it from judge.max_tokens) "
            "or lower judge.max_tokens / judge.effort; a rerun asks for this turn again")


def _spend_limit_in_body(raw: bytes) -> bool:
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return False
    code = (error.get("details") or {}).get("error_code") if isinstance(error.get("details"), dict) else None
    return code in SPEND_LIMIT_CODES or "insufficient_quota" in (error.get("code"), error.get("type"))


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


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {text}"


def _retryable(exc: BaseException) -> bool:
    """Whether the SDK would have retried this error (so a final one means the retries are spent)."""
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if response is not None and response.headers.get("x-should-retry") == "false":
        return False
    if isinstance(status, int):
        return status in (408, 409, 429) or status >= 500
    return type(exc).__name__ in ("APIConnectionError", "APITimeoutError")


async def counted_call(send: Callable[[], Awaitable[T]], *, provider_errors: tuple[type[BaseException], ...]
                       ) -> tuple[T, int]:
    """Await ``send()`` (one SDK call, its retries inside); return (result, failed HTTP attempts).

    Raises:
        SpendLimitError: the provider will not spend more.
        JudgeCallError: the retries are spent, the request timed out, or an error retrying cannot fix.
        Exception: anything that is not an API error (a bug on our side) propagates unchanged.
    """
    attempts: list[str] = []
    token = _ATTEMPTS.set(attempts)
    try:
        return await send(), max(0, len(attempts) - 1)
    except provider_errors as exc:
        n = max(1, len(attempts))
        reason = spend_limit_reason(exc)
        if reason is not None:
            raise SpendLimitError(f"{_describe(exc)} ({reason}: not retried)", n,
                                  client_error=f"{getattr(exc, 'status_code', '')} {reason}: {api_message(exc)}") from exc
        if isinstance(exc, RequestTimedOut):
            raise JudgeCallError(f"{type(exc).__name__}: {exc} ({n} attempt{'s' if n > 1 else ''})", n) from exc
        if _retryable(exc):
            raise JudgeCallError(f"{_describe(exc)} (gave up after {n} attempts)", n) from exc
        raise JudgeCallError(f"{_describe(exc)} (not retryable)", n, client_error=client_error_text(exc)) from exc
    finally:
        _ATTEMPTS.reset(token)
