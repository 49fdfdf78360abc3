"""Judge clients for the Anthropic and OpenAI APIs: the SDKs' retries, our re-asks.

``make_judge(cfg)`` returns a :class:`Judge` whose ``judge(prompt)`` never raises for API trouble:
it returns a :class:`RawVerdict` holding the validated object, or an error text once retries and
re-asks are spent. Retries are the SDKs' own (``max_retries=judge.max_retries``), counted through a
hook on their http client; a spend limit and a timeout are never retried (``judges/retry.py``).

Transport for thinking models (docs/judging.md, "Transport"): requests are not streamed; the timeout is
the one the SDK sizes for a non-streaming request (``judge.timeout_s: null``), and a ``max_tokens`` the
SDK would refuse to send without streaming is refused before anything is spent. A truncated answer
(``stop_reason: max_tokens`` / ``finish_reason: length``) is reported as such, re-asked at most once,
and counted (``RawVerdict.n_truncated``).

Structured output (docs/judging.md, "Request shapes"): Anthropic through ``output_config.format`` (a
JSON schema; the answer is the text block, thinking blocks are skipped), because forced tool use
returns an error on Claude Sonnet 5.5-class models; ``judge.structured_output=forced_tool`` keeps the
old forced tool call for models that still accept it. OpenAI through ``response_format={"type":
"json_schema", ..., "strict": True}`` with ``max_completion_tokens`` (reasoning models refuse
``max_tokens``). Thinking and effort settings come from the config and are sent as each API names them.
The SDKs are imported inside the functions that need them, so importing this module costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

from posttrain.errors import PosttrainError
from posttrain.judges.prompt import TEMPLATES, VERDICT_SPEC, OutputSpec, VerdictError, reask_suffix
from posttrain.judges.retry import (
    DEFAULT_BACKOFF_BASE_S,
    JudgeCallError,
    SpendLimitError,
    counted_call,
    make_http_client,
)

__all__ = ["DEFAULT_BACKOFF_BASE_S", "JudgeCallError", "JudgeConfigError", "JudgeStopped", "RawVerdict",
           "SpendLimitError", "check_judge_ready", "make_judge", "make_provider", "read_answer", "resolved_base_url"]

_PROVIDERS = ("anthropic", "openai")
_DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
_BASE_URL_ENV = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
_DEFAULT_BASE_URL = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}

# The anthropic SDK's rule for a non-streaming request (_calculate_nonstreaming_timeout): it expects
# at worst 128,000 output tokens an hour, and refuses to send one expected to take over 10 minutes
# ("Streaming is required ..."), i.e. max_tokens > 600 s x 128,000 / 3,600 s = 21,333. Below that it
# waits 600 s for the answer (connect 5 s); the openai SDK's default timeout is the same 600 s.
SDK_TOKENS_PER_HOUR = 128_000
SDK_NONSTREAMING_S = 600.0
MAX_NONSTREAMING_TOKENS = int(SDK_NONSTREAMING_S * SDK_TOKENS_PER_HOUR / 3600)  # 21,333
MAX_TRUNCATED_ASKS = 2  # a truncated answer is re-asked once; a second truncation ends the turn


class JudgeConfigError(ValueError):
    """The judge cannot run as configured. Raised before any API call: nothing was spent."""


class JudgeStopped(PosttrainError):
    """The judge run stopped part-way (a spend limit, or the same client error again and again).

    Finished verdicts are in the cache and scores.partial.jsonl; the generations are kept, so the
    same command reruns only what is missing.
    """


def resolved_base_url(cfg: Any) -> str:
    """The base URL the SDK will use: judge.base_url, else the provider's environment variable, else its default."""
    return str(cfg.base_url or os.environ.get(_BASE_URL_ENV.get(cfg.provider, ""), "")
               or _DEFAULT_BASE_URL.get(cfg.provider, "")).rstrip("/")


def request_settings(cfg: Any) -> dict[str, Any]:
    """Every setting that shapes a request or its answer: recorded in score rows and part of the cache key."""
    return {"temperature": cfg.temperature, "max_tokens": int(cfg.max_tokens), "thinking": cfg.thinking,
            "effort": cfg.effort, "structured_output": cfg.structured_output}


@dataclass
class RawVerdict:
    """The outcome of one judged prompt, all attempts included.

    ``data`` is the validated object (None on error); tokens add up every answered attempt, re-asks
    included, because each was billed; ``n_api_errors`` counts failed HTTP attempts.
    """

    data: dict[str, Any] | None
    input_tokens: int = 0
    output_tokens: int = 0
    n_parse_failures: int = 0
    n_api_errors: int = 0
    n_truncated: int = 0  # answers cut at max_tokens (stop_reason max_tokens / finish_reason length)
    error: str | None = None
    client_error: str | None = None  # the final 4xx ("STATUS: message") when the call ended on one


@dataclass
class Parsed:
    """One provider response read back: the candidate object, or why there is none."""

    obj: Any
    problem: str | None
    input_tokens: int
    output_tokens: int
    truncated: bool = False  # the answer ran into judge.max_tokens


class Judge(Protocol):
    """What the runner needs from a judge."""

    async def judge(self, prompt: str) -> RawVerdict: ...

    async def aclose(self) -> None: ...


def check_judge_ready(cfg: Any) -> None:
    """Check that the judge can run: provider, template, prices, API key. Call before generating.

    Raises:
        JudgeConfigError: listing every problem; nothing was spent.
    """
    problems = []
    if cfg.provider not in _PROVIDERS:
        problems.append(f"judge.provider={cfg.provider!r} is not supported; choose one of {list(_PROVIDERS)}")
    if cfg.mode not in ("sync", "batch", "pairwise"):
        problems.append(f"judge.mode={cfg.mode!r}; choose 'sync', 'batch' or 'pairwise'")
    if cfg.mode != "pairwise" and cfg.template_version not in TEMPLATES:
        problems.append(f"judge.template_version={cfg.template_version!r} is unknown; valid: {sorted(TEMPLATES)}")
    env = cfg.api_key_env or _DEFAULT_KEY_ENV.get(cfg.provider, "")
    if not os.environ.get(env):
        problems.append(f"set {env} to the {cfg.provider} API key for judge {cfg.name!r} "
                        f"(judge.api_key_env names the variable)")
    if cfg.price_input_per_mtok is None or cfg.price_output_per_mtok is None:
        problems.append("set judge.price_input_per_mtok and judge.price_output_per_mtok (USD per 1M tokens)")
    problems += transport_problems(cfg)
    if problems:
        raise JudgeConfigError("judge not ready (nothing was spent):\n  - " + "\n  - ".join(problems))


def transport_problems(cfg: Any) -> list[str]:
    """Settings the API would refuse, or that the transport cannot carry: found before anything is spent.

    - Forced tool use with thinking: Claude refuses the combination (and Sonnet 5.5-class models refuse
      forced tool use altogether).
    - A ``max_tokens`` the SDK would not send without streaming (``MAX_NONSTREAMING_TOKENS``), when the
      SDK sizes the timeout (``judge.timeout_s: null``); batch requests have no such limit.
    """
    problems = []
    if cfg.structured_output == "forced_tool" and cfg.thinking not in (None, "disabled"):
        problems.append(f"judge.structured_output=forced_tool with judge.thinking={cfg.thinking!r}: Claude refuses "
                        "forced tool use while thinking; use judge.structured_output=json_schema (the default), "
                        "or judge.thinking=disabled on a model that still accepts forced tools")
    if (cfg.timeout_s is None and cfg.mode != "batch" and cfg.max_tokens is not None
            and int(cfg.max_tokens) > MAX_NONSTREAMING_TOKENS):
        problems.append(f"judge.max_tokens={cfg.max_tokens} is more than a non-streaming request may ask for "
                        f"({MAX_NONSTREAMING_TOKENS}: the SDK expects {SDK_TOKENS_PER_HOUR:,} tokens an hour at "
                        f"worst and refuses requests over {SDK_NONSTREAMING_S:.0f} s); lower judge.max_tokens, "
                        "use judge.mode=batch, or set judge.timeout_s to the seconds you will wait")
    return problems


def request_timeout_s(cfg: Any) -> float | None:
    """The client timeout: ``judge.timeout_s`` as given, or None to let the SDK size it (see the constants)."""
    return None if cfg.timeout_s is None else float(cfg.timeout_s)


# ---------------------------------------------------------------------------------------------
# Providers: request parameters and reading a response (a dict, so batch results reuse it)


def _client_kwargs(cfg: Any, backoff_base_s: float = DEFAULT_BACKOFF_BASE_S) -> dict[str, Any]:
    env = cfg.api_key_env or _DEFAULT_KEY_ENV[cfg.provider]
    key = os.environ.get(env)
    if not key:
        raise JudgeConfigError(f"set {env} to the {cfg.provider} API key (nothing was spent)")
    # base_url None lets the SDK read ANTHROPIC_BASE_URL / OPENAI_BASE_URL; no timeout lets it size its own
    kwargs: dict[str, Any] = {"api_key": key, "base_url": cfg.base_url or None, "max_retries": int(cfg.max_retries)}
    timeout = request_timeout_s(cfg)
    if timeout is not None:
        kwargs["timeout"] = timeout
    return kwargs


@dataclass(frozen=True)
class AnthropicProvider:
    """Messages API: JSON-schema structured output (or, for models that accept it, a forced tool call)."""

    cfg: Any
    spec: OutputSpec

    def make_client(self, backoff_base_s: float = DEFAULT_BACKOFF_BASE_S) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(**_client_kwargs(self.cfg), http_client=make_http_client("anthropic",
                                                                                                   backoff_base_s))

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """Every error the SDK raises for an API call (status, connection, timeout, our final timeout)."""
        import anthropic

        return (anthropic.AnthropicError,)

    def params(self, prompt: str) -> dict[str, Any]:
        # No temperature: the API version this SDK pins refuses sampling parameters with a 400, and
        # MessageCreateParams has no such field. max_tokens caps thinking and answer together.
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": int(self.cfg.max_tokens),
                                "messages": [{"role": "user", "content": prompt}]}
        output_config: dict[str, Any] = {}
        if self.cfg.structured_output == "forced_tool":
            body["tools"] = [{"name": self.spec.tool_name, "description": self.spec.description,
                              "input_schema": self.spec.schema}]
            body["tool_choice"] = {"type": "tool", "name": self.spec.tool_name}
        else:
            output_config["format"] = {"type": "json_schema", "schema": self.spec.schema}
        if self.cfg.effort:
            output_config["effort"] = self.cfg.effort
        if output_config:
            body["output_config"] = output_config
        if self.cfg.thinking:
            body["thinking"] = {"type": self.cfg.thinking}
        return body

    async def send(self, client: Any, params: dict[str, Any]) -> dict[str, Any]:
        return (await client.messages.create(**params)).model_dump()

    def parse(self, message: dict[str, Any]) -> Parsed:
        usage = message.get("usage") or {}
        tin = sum(int(usage.get(k) or 0) for k in
                  ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        tout = int(usage.get("output_tokens") or 0)  # thinking tokens included: they are billed as output
        stop = message.get("stop_reason")
        if stop == "refusal":
            return Parsed(None, "the judge refused (stop_reason=refusal)", tin, tout)
        if stop == "max_tokens":  # before the tool call or text: a cut answer is never read as a verdict
            return Parsed(None, truncation_text(self.cfg, "stop_reason=max_tokens"), tin, tout, truncated=True)
        blocks = message.get("content") or []
        if self.cfg.structured_output == "forced_tool":
            for block in blocks:
                if block.get("type") == "tool_use" and block.get("name") == self.spec.tool_name:
                    return Parsed(block.get("input"), None, tin, tout)
            return Parsed(None, f"no {self.spec.tool_name} tool call in the answer (stop_reason={stop})", tin, tout)
        # thinking and redacted_thinking blocks come first and are not the answer
        text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text").strip()
        if not text:
            return Parsed(None, f"no text block in the answer (stop_reason={stop})", tin, tout)
        try:
            return Parsed(json.loads(text), None, tin, tout)
        except json.JSONDecodeError as exc:
            return Parsed(None, f"answer is not JSON ({exc.msg})", tin, tout)


@dataclass(frozen=True)
class OpenAIProvider:
    """Chat Completions with strict JSON-schema output."""

    cfg: Any
    spec: OutputSpec

    def make_client(self, backoff_base_s: float = DEFAULT_BACKOFF_BASE_S) -> Any:
        import openai

        return openai.AsyncOpenAI(**_client_kwargs(self.cfg), http_client=make_http_client("openai", backoff_base_s))

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """Every error the SDK raises for an API call (status, connection, timeout, our final timeout)."""
        import openai

        return (openai.OpenAIError,)

    def params(self, prompt: str) -> dict[str, Any]:
        # max_completion_tokens: max_tokens is deprecated and refused by reasoning models (openai SDK 3.57
        # CompletionCreateParams); vLLM's OpenAI-compatible server accepts it too. Reasoning tokens count.
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "max_completion_tokens": int(self.cfg.max_tokens),
            "messages": [{"role": "user", "content": prompt}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": self.spec.schema_name, "schema": self.spec.schema, "strict": True}},
        }
        if self.cfg.temperature is not None:  # reasoning models refuse it: their configs set null
            body["temperature"] = float(self.cfg.temperature)
        if self.cfg.effort:
            body["reasoning_effort"] = self.cfg.effort
        return body

    async def send(self, client: Any, params: dict[str, Any]) -> dict[str, Any]:
        return (await client.chat.completions.create(**params)).model_dump()

    def parse(self, completion: dict[str, Any]) -> Parsed:
        usage = completion.get("usage") or {}
        tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        choices = completion.get("choices") or []
        if not choices:
            return Parsed(None, "no choices in the answer", tin, tout)
        message = choices[0].get("message") or {}
        if choices[0].get("finish_reason") == "length":  # reasoning tokens count toward the cap too
            return Parsed(None, truncation_text(self.cfg, "finish_reason=length"), tin, tout, truncated=True)
        if message.get("refusal"):
            return Parsed(None, f"the judge refused: {str(message['refusal'])[:120]}", tin, tout)
        text = (message.get("content") or "").strip()
        if text.startswith("```"):  # servers without strict mode sometimes fence their JSON
            text = text.strip("`").removeprefix("json").strip()
        try:
            return Parsed(json.loads(text), None, tin, tout)
        except json.JSONDecodeError as exc:
            return Parsed(None, f"answer is not JSON ({exc.msg})", tin, tout)


Provider = AnthropicProvider | OpenAIProvider


def truncation_text(cfg: Any, signal: str) -> str:
    """What a truncated answer is reported as (the same words for both providers)."""
    return (f"the answer was cut at judge.max_tokens={cfg.max_tokens} ({signal}; thinking counts toward the "
            "cap); raise judge.max_tokens or lower judge.effort")


def make_provider(cfg: Any, spec: OutputSpec = VERDICT_SPEC) -> Provider:
    """The request/response adapter for ``cfg.provider``."""
    if cfg.provider == "anthropic":
        return AnthropicProvider(cfg, spec)
    if cfg.provider == "openai":
        return OpenAIProvider(cfg, spec)
    raise JudgeConfigError(f"judge.provider={cfg.provider!r} is not supported; choose one of {list(_PROVIDERS)} "
                           "(nothing was spent)")


def judge_request(cfg: Any, provider: Provider, template_version: str, prompt: str) -> dict[str, Any]:
    """The whole request for one prompt, as the cache key sees it: where it goes, how, and the body sent."""
    return {"provider": cfg.provider, "base_url": resolved_base_url(cfg), "template_version": template_version,
            "settings": request_settings(cfg), "body": provider.params(prompt)}


def read_answer(provider: Provider, response: dict[str, Any], into: RawVerdict, prompt: str | None = None) -> str | None:
    """Fold one answered response into ``into``; return None when it holds a valid object, else why not.

    ``prompt`` (the prompt answered) lets the validator hold a verdict to the checks that prompt lists.
    """
    parsed = provider.parse(response)
    into.input_tokens += parsed.input_tokens
    into.output_tokens += parsed.output_tokens
    into.n_truncated += int(parsed.truncated)
    if parsed.problem is not None:
        return parsed.problem
    try:
        into.data = provider.spec.validate(parsed.obj, prompt)
    except VerdictError as exc:
        return f"invalid answer: {exc}"
    return None


@dataclass
class SdkJudge:
    """A :class:`Judge` over one provider. The SDK client is made per event loop, on first use."""

    cfg: Any
    provider: Provider
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    _client: Any = None
    _loop: Any = None

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # an httpx client is bound to the loop that first used it; asyncio.run makes a new one
            self._client, self._loop = self.provider.make_client(self.backoff_base_s), loop
        return self._client

    async def call(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One request, the SDK's retries inside: (response dict, failed attempts). Raises JudgeCallError."""
        client = self.client()
        return await counted_call(lambda: self.provider.send(client, params), provider_errors=self.provider.errors)

    async def judge(self, prompt: str, *, reasks_left: int | None = None) -> RawVerdict:
        """Ask until a valid answer, re-asking refusals and invalid answers up to ``cfg.max_reasks`` times.

        A truncated answer is re-asked once at most (``MAX_TRUNCATED_ASKS``): the same cap is likely to
        cut the answer again, and each cut answer bills the whole cap.
        """
        out = RawVerdict(None)
        text, problem = prompt, "no answer"
        reasks = int(self.cfg.max_reasks) if reasks_left is None else reasks_left
        for _ in range(reasks + 1):
            try:
                response, n_failed = await self.call(self.provider.params(text))
            except SpendLimitError:
                raise  # the runner stops the whole run: more calls cannot succeed
            except JudgeCallError as exc:
                out.n_api_errors += exc.n_errors
                out.error = str(exc)
                out.client_error = exc.client_error
                return out
            out.n_api_errors += n_failed
            unusable = read_answer(self.provider, response, out, prompt)
            if unusable is None:
                return out
            problem = unusable
            out.n_parse_failures += 1
            if out.n_truncated >= MAX_TRUNCATED_ASKS:
                out.error = f"cut at max_tokens {out.n_truncated} times, not asked again: {problem}"
                return out
            text = prompt + reask_suffix(problem)
        out.error = f"no valid answer after {reasks + 1} asks; last: {problem}"
        return out

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = None


def make_judge(cfg: Any, *, spec: OutputSpec = VERDICT_SPEC,
               backoff_base_s: float = DEFAULT_BACKOFF_BASE_S) -> SdkJudge:
    """A judge for ``cfg`` (a JudgeConfig or a DictConfig with its fields).

    Args:
        cfg: the judge config; provider, model, key variable, sampling and retry settings.
        spec: the output schema (verdicts by default; pairwise preferences with PAIR_SPEC).
        backoff_base_s: the first retry's wait when the server sends no retry-after (the SDKs' 0.5 s by
            default); tests pass a tiny value.

    Raises:
        JudgeConfigError: unknown provider or missing API key (nothing was spent).
    """
    provider = make_provider(cfg, spec)
    _client_kwargs(cfg)  # fail now, not at the first call, when the key is missing
    problems = transport_problems(cfg)
    if problems:
        raise JudgeConfigError("judge not ready (nothing was spent): " + "; ".join(problems))
    return SdkJudge(cfg, provider, backoff_base_s=backoff_base_s)
