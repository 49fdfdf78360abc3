"""Judge clients for the Anthropic and OpenAI APIs, with our own retries and re-asks.

``make_judge(cfg)`` returns a :class:`Judge` whose ``judge(prompt)`` never raises for API trouble:
it returns a :class:`RawVerdict` holding the validated object, or an error text once retries and
re-asks are spent. The SDKs' own retries are off (``max_retries=0``) so that every attempt is counted
here and the backoff is ours: exponential with jitter, honouring ``retry-after``.

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
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from posttrain.errors import PosttrainError
from posttrain.judges.prompt import TEMPLATES, VERDICT_SPEC, OutputSpec, VerdictError, reask_suffix
from posttrain.judges.retry import DEFAULT_BACKOFF_BASE_S, JudgeCallError, SpendLimitError, call_with_retries

__all__ = ["DEFAULT_BACKOFF_BASE_S", "JudgeCallError", "JudgeConfigError", "JudgeStopped", "RawVerdict",
           "SpendLimitError", "check_judge_ready", "make_judge", "make_provider", "read_answer", "resolved_base_url"]

_PROVIDERS = ("anthropic", "openai")
_DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
_BASE_URL_ENV = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
_DEFAULT_BASE_URL = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}


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
    error: str | None = None
    client_error: str | None = None  # the final 4xx ("STATUS: message") when the call ended on one


@dataclass
class Parsed:
    """One provider response read back: the candidate object, or why there is none."""

    obj: Any
    problem: str | None
    input_tokens: int
    output_tokens: int


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
    if problems:
        raise JudgeConfigError("judge not ready (nothing was spent):\n  - " + "\n  - ".join(problems))


# ---------------------------------------------------------------------------------------------
# Providers: request parameters and reading a response (a dict, so batch results reuse it)


def _client_kwargs(cfg: Any) -> dict[str, Any]:
    env = cfg.api_key_env or _DEFAULT_KEY_ENV[cfg.provider]
    key = os.environ.get(env)
    if not key:
        raise JudgeConfigError(f"set {env} to the {cfg.provider} API key (nothing was spent)")
    # None lets the SDK read ANTHROPIC_BASE_URL / OPENAI_BASE_URL
    return {"api_key": key, "base_url": cfg.base_url or None, "max_retries": 0, "timeout": float(cfg.timeout_s)}


@dataclass(frozen=True)
class AnthropicProvider:
    """Messages API: JSON-schema structured output (or, for models that accept it, a forced tool call)."""

    cfg: Any
    spec: OutputSpec

    def make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(**_client_kwargs(self.cfg))

    @property
    def transient(self) -> tuple[type[BaseException], ...]:
        import anthropic

        return (anthropic.APIConnectionError,)

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
        blocks = message.get("content") or []
        if self.cfg.structured_output == "forced_tool":
            for block in blocks:
                if block.get("type") == "tool_use" and block.get("name") == self.spec.tool_name:
                    return Parsed(block.get("input"), None, tin, tout)
            return Parsed(None, f"no {self.spec.tool_name} tool call in the answer (stop_reason={stop})", tin, tout)
        # thinking and redacted_thinking blocks come first and are not the answer
        text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text").strip()
        if stop == "max_tokens":
            return Parsed(None, f"the answer was cut at judge.max_tokens={self.cfg.max_tokens} (thinking "
                                "counts toward it); raise judge.max_tokens or lower judge.effort", tin, tout)
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

    def make_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(**_client_kwargs(self.cfg))

    @property
    def transient(self) -> tuple[type[BaseException], ...]:
        import openai

        return (openai.APIConnectionError,)

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
    rng: random.Random = field(default_factory=random.Random)
    _client: Any = None
    _loop: Any = None

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # an httpx client is bound to the loop that first used it; asyncio.run makes a new one
            self._client, self._loop = self.provider.make_client(), loop
        return self._client

    async def call(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One request with retries: (response dict, failed attempts). Raises JudgeCallError."""
        client = self.client()
        return await call_with_retries(lambda: self.provider.send(client, params),
                                       max_retries=int(self.cfg.max_retries), transient=self.provider.transient,
                                       backoff_base_s=self.backoff_base_s, rng=self.rng)

    async def judge(self, prompt: str, *, reasks_left: int | None = None) -> RawVerdict:
        """Ask until a valid answer, re-asking refusals and invalid answers up to ``cfg.max_reasks`` times."""
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
        backoff_base_s: the first retry's nominal wait; tests pass a tiny value.

    Raises:
        JudgeConfigError: unknown provider or missing API key (nothing was spent).
    """
    provider = make_provider(cfg, spec)
    _client_kwargs(cfg)  # fail now, not at the first call, when the key is missing
    return SdkJudge(cfg, provider, backoff_base_s=backoff_base_s)
