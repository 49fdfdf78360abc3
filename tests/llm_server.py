"""A local stand-in for the Anthropic and OpenAI HTTP APIs, for testing the judge with the real SDKs.

``FakeLLMServer`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a background thread and
speaks:

- Anthropic: ``POST /v1/messages`` (a forced tool call answered with a ``tool_use`` block),
  ``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}`` and ``.../results`` (JSONL).
- OpenAI: ``POST /v1/chat/completions`` (``message.content`` is the JSON verdict),
  ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
  ``GET /v1/batches/{id}``.

Its verdicts are deterministic. By default it reads the prompt it received the way a sensible judge
would: it finds the reply fenced by ``<<<REPLY-tag>>>`` / ``<<<END-REPLY-tag>>>``, the "Required
content" and "Forbidden content" lists, and passes the reply iff every required line has a variant
inside the fenced reply and no forbidden string occurs there. Pairwise prompts prefer the reply that
satisfies more required lines and, on a tie, the one shown first (a position bias, so that order
flips are testable). A test can replace either rule with ``verdict_fn(prompt) -> dict`` /
``pair_fn(prompt) -> dict``.

Faults apply to the two model-call endpoints (messages, chat completions). A scripted ``faults``
list is consumed first, one entry per call (``None`` = answer normally); then ``fault_rate`` draws
from ``fault_kinds`` with a seeded generator. Kinds: see ``FAULT_KINDS``.

Every request is counted per endpoint (ids replaced by ``{id}``): ``server.count("POST /v1/messages")``.

The server checks the request contract the way the real APIs do, against the installed SDKs' own request
types (:func:`contract_problems` walks their TypedDicts): ``messages.create`` and the Message Batches
``Request``; chat completions, responses and the Batch API (including every line of an uploaded batch
file). An unknown or mistyped field is answered with the 400 each API gives. A small model table
(:data:`ANTHROPIC_MODELS`, :data:`OPENAI_MODELS`) adds what depends on the model: a retired model gets the
real not-found error, Claude Sonnet 5.5-class models refuse forced tool use and manual thinking modes,
OpenAI reasoning models refuse ``max_tokens`` and ``temperature``; ``GET /v1/models/{id}`` answers with
the model's lifecycle (Anthropic ``ModelInfo``) or shutdown date (OpenAI ``Model``). A model not in the
table is unknown (the API's 404), as on the real APIs; ``strict_models=False`` serves it as active and
permissive, and ``fake-judge`` is the table's permissive model for tests that need one.

The validation is pydantic's, against the SDK's request TypedDict (:func:`contract_problems`), so required
fields count (a body without ``max_tokens`` is a 400) and types are strict. ``truncate=True`` (or the
"truncated" fault) answers as a model that ran into its output cap: cut JSON with ``stop_reason:
"max_tokens"`` / ``finish_reason: "length"`` and the whole cap billed as output.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_KINDS = (
    "429",  # rate limited, with a retry-after header (seconds)
    "529",  # overloaded
    "500",  # internal server error
    "slow",  # answers only after slow_s, beyond the client's timeout
    "drop",  # sends the headers and part of the body, then closes the connection
    "malformed",  # a 200 whose JSON body is cut short
    "refusal",  # the model refuses (Anthropic stop_reason "refusal"; OpenAI message.refusal)
    "missing_verdict",  # a verdict object without the "verdict" field
    "bad_json",  # a 200 whose answer text is cut-off JSON (OpenAI content; Anthropic text, no tool call)
    "truncated",  # the answer ran into the output cap: stop_reason "max_tokens" / finish_reason "length"
)

_REPLY_RE = re.compile(r"<<<REPLY-([0-9a-f]+)>>>\n(.*?)\n<<<END-REPLY-\1>>>", re.S)
_PAIR_RE = re.compile(r"<<<REPLY-(FIRST|SECOND)-([0-9a-f]+)>>>\n(.*?)\n<<<END-REPLY-\1-\2>>>", re.S)
_JSON_STR = re.compile(r'"(?:[^"\\]|\\.)*"')

# ---------------------------------------------------------------------------------------------
# The model table. Dates and replacements from the providers' deprecation pages (docs/judging.md).

ANTHROPIC_MODELS: dict[str, dict[str, Any]] = {
    # retired 2026-11-30 (anthropic SDK 2.14's deprecated_models table); requests fail with not_found_error
    "claude-sonnet-4-5": {"lifecycle": "retired", "retires_at": "2026-11-30T00:00:00Z"},
    # deprecated, retiring 2027-01-22 (anthropic SDK 2.15's deprecated_models table)
    "claude-opus-4-5": {"lifecycle": "deprecated", "retires_at": "2027-01-22T00:00:00Z"},
    # "What's new in Claude Sonnet 5.5": forced tool use returns an error; adaptive thinking on by default,
    # thinking.type adaptive or between_tools only
    "claude-sonnet-5-5": {"lifecycle": "active", "forced_tool": False, "thinking_types": ("adaptive", "between_tools")},
    "claude-opus-5-5": {"lifecycle": "active", "forced_tool": False, "thinking_types": ("adaptive", "between_tools")},
    "claude-sonnet-5": {"lifecycle": "active", "forced_tool": True, "thinking_types": ("adaptive", "disabled")},
    "fake-judge": {"lifecycle": "active"},  # the tests' permissive model: any request shape the contract allows
}
OPENAI_MODELS: dict[str, dict[str, Any]] = {
    "gpt-4": {"shutdown_date": "2026-10-23"},  # shut down: requests fail with model_not_found
    "gpt-4.1": {"shutdown_date": "2027-01-14"},  # deprecated (OpenAI deprecations page, notice 2026-10-14)
    "gpt-6.2-sol": {"reasoning": True},
    "gpt-6.1-sol": {"reasoning": True},
    "fake-judge": {},  # the tests' permissive model
}
TODAY = "2026-12-01"  # the date the table was written for; shutdown dates before it are past

# The 400 texts. OpenAI's are the API's wording; the forced-tool and thinking texts follow Anthropic's
# "What's new in Claude Sonnet 5.5" page (the page does not quote the message, so ours is reconstructed).
FORCED_TOOL_TEXT = ("tool_choice: forced tool use (type \"tool\" or \"any\") is not supported with model {model}; "
                    "use tool_choice \"auto\" or \"none\", or structured outputs (output_config.format)")
THINKING_TEXT = "thinking.type: \"{kind}\" is not supported with model {model}; use one of {allowed}"
OPENAI_UNSUPPORTED = {
    "max_tokens": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                  "Use 'max_completion_tokens' instead.",
    "temperature": "Unsupported parameter: 'temperature' is not supported with this model.",
}


# ---------------------------------------------------------------------------------------------
# The request contract: validate each body against the installed SDK's request type with pydantic

# Under Python 3.11 the SDKs' request TypedDicts report an empty ``__required_keys__`` (their
# ``Required[...]`` markers come from typing_extensions), so a hand-written walker never saw a missing
# ``max_tokens``; pydantic's schema builder reads the markers and does.


@cache
def _body_model(td: Any) -> Any:
    """A pydantic model whose one field is the SDK's request TypedDict, with unknown keys forbidden.

    ``TypeAdapter(td, config=...)`` refuses a config for a TypedDict, but a TypedDict without its own
    config inherits the enclosing model's, all the way down, so ``extra="forbid"`` reaches every nested
    block (a message, a content block, ``output_config.format``).
    """
    from pydantic import ConfigDict, create_model

    return create_model(f"Body_{td.__name__}", __config__=ConfigDict(extra="forbid"), body=(td, ...))


def _drain(value: Any, path: tuple[Any, ...], errors: list[dict[str, Any]]) -> None:
    """Consume the lazy validators pydantic returns for ``Iterable[...]`` fields, collecting their errors.

    The SDKs type ``messages``, ``tools`` and a batch's ``requests`` as ``Iterable``; pydantic validates
    such a field only when it is iterated, so a body is not checked until every one is drained.
    """
    import collections.abc as abc

    from pydantic import ValidationError

    if isinstance(value, dict):
        for k, v in value.items():
            _drain(v, (*path, k), errors)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _drain(v, (*path, i), errors)
    elif isinstance(value, abc.Iterator):
        i = 0
        while True:
            try:
                item = next(value)
            except StopIteration:
                return
            except ValidationError as exc:  # the item's loc starts with its index
                errors += [{**e, "loc": (*path, *e["loc"])} for e in exc.errors()]
                return
            _drain(item, (*path, i), errors)
            i += 1


def _readable(errors: list[dict[str, Any]], body: Any) -> list[str]:
    """pydantic errors as the APIs word them (``output_config.format.type: Input should be ...``).

    A union (a user or an assistant message, a text or an image block) reports a failure per branch;
    the branch names are not keys of the body. Keep the branch whose tag matched (fewest literal
    errors, then fewest errors) and drop the branch names from the paths.
    """
    groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    for e in errors:
        node, keys, branches = {"body": body}, [], []
        for part in e["loc"]:
            if isinstance(node, dict) and part in node:
                node = node[part]
                keys.append(str(part))
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
                keys.append(str(part))
            elif isinstance(part, str) and (part[:1].isupper() or "[" in part or part.startswith("function-")):
                branches.append(part)  # a union branch (a class name or a tagged-union tag)
            else:
                keys.append(str(part))  # a missing or unknown key: part of the path
        where = ".".join(keys[1:]) or "body"
        groups.setdefault(tuple(branches), []).append((where, e))

    def rank(item: tuple[tuple[str, ...], list[tuple[str, dict[str, Any]]]]) -> tuple[int, int]:
        return sum(e["type"] == "literal_error" for _, e in item[1]), len(item[1])

    best = min(groups.items(), key=rank)[1] if groups else []
    return [f"{where}: {e['msg']}" for where, e in best]


def contract_problems(td: Any, value: Any) -> list[str]:
    """Why ``value`` does not fit ``td`` (the SDK's request TypedDict); [] if it fits.

    A missing required field, an unknown key, a wrong JSON type (strict: ``"1"`` is not an integer)
    and a value outside a Literal are problems, at any depth.
    """
    from pydantic import ValidationError

    errors: list[dict[str, Any]] = []
    try:
        parsed = _body_model(td).model_validate({"body": value}, strict=True)
    except ValidationError as exc:
        errors = list(exc.errors())
    else:
        _drain(parsed.body, ("body",), errors)
    return _readable(errors, value)


@cache
def request_types() -> dict[str, Any]:
    """Endpoint -> the installed SDK's TypedDict for its JSON body."""
    from anthropic.types import message_create_params
    from anthropic.types.messages import batch_create_params as a_batch
    from openai.types import batch_create_params as o_batch
    from openai.types.chat import completion_create_params
    from openai.types.responses import response_create_params

    return {
        "POST /v1/messages": message_create_params.MessageCreateParamsNonStreaming,
        "POST /v1/messages/batches": a_batch.BatchCreateParams,
        "POST /v1/chat/completions": completion_create_params.CompletionCreateParamsNonStreaming,
        "POST /v1/responses": response_create_params.ResponseCreateParamsNonStreaming,
        "POST /v1/batches": o_batch.BatchCreateParams,
    }


@cache
def _warm_contract() -> None:
    """Build each endpoint's validator once, before any request (not inside a client's first timeout)."""
    for td in request_types().values():
        _body_model(td)


def _past(date: str | None) -> bool:
    return bool(date) and str(date)[:10] < TODAY


def _section(prompt: str, title: str) -> list[list[str]]:
    """The quoted strings of each "- " line under ``### {title}`` (up to the next heading)."""
    m = re.search(rf"^### {re.escape(title)}[^\n]*\n(.*?)(?=^### |\Z)", prompt, re.S | re.M)
    if not m:
        return []
    return [[json.loads(s) for s in _JSON_STR.findall(line)] for line in m.group(1).splitlines()
            if line.startswith("- ") and _JSON_STR.search(line)]


def _mentions(text: str, variant: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(variant)}(?!\w)", text, re.I) is not None


_NAMED_CHECKS = re.compile(r'each named by its label: ((?:"[^"\n]+"(?:, )?)+)\.$', re.M)


def _evidence(reply: str) -> str | None:
    """A word-for-word passage of the reply to quote: its first words, up to one holding a double quote."""
    words = []
    for w in reply.split():
        if '"' in w or len(words) == 8:
            break
        words.append(w)
    return " ".join(words) if any(c.isalnum() for c in "".join(words)) else None


def sensible_verdict(prompt: str, force: bool | None = None) -> dict[str, Any]:
    """Judge the fenced reply against the prompt's required and forbidden lines, as a checklist judge would.

    Checklist prompts (conv-judge-v2, v3): one check per label the prompt asks for, in order, named by
    it. A required line passes when a variant occurs in the reply (quoting it), a forbidden line fails
    when its word occurs; every other line passes, quoting the reply's first words (this fake judges
    only the required and forbidden lines). A fact the code failed makes the verdict "fail". v1 prompts
    get one check per required and forbidden line. ``force`` True passes every check, False fails the
    first: a scripted verdict that still validates.
    """
    m = _REPLY_RE.search(prompt)
    reply = m.group(2) if m else ""
    tail = prompt[m.end():] if m else prompt  # the expectations come after the fenced reply
    named = _NAMED_CHECKS.findall(tail)
    labels = (re.findall(r'"([^"\n]+)"', named[-1]) if named
              else re.findall(r"^- \[([a-z]+(?: \d+)?)\]", tail, re.M))
    if not labels:  # conv-judge-v1
        checks = []
        for group in _section(tail, "Required content"):
            ok = any(_mentions(reply, v) for v in group)
            checks.append({"name": f"includes {group[0]}", "passed": ok, "detail": "found" if ok else "missing"})
        for group in _section(tail, "Forbidden content"):
            ok = not any(_mentions(reply, v) for v in group)
            checks.append({"name": f"avoids {group[0]}", "passed": ok, "detail": "absent" if ok else "present"})
    else:
        lines = {mm.group(1): [json.loads(x) for x in _JSON_STR.findall(mm.group(2))]
                 for mm in re.finditer(r"^- \[([a-z]+(?: \d+)?)\](.*)$", tail, re.M)}
        evidence = _evidence(reply)
        checks = []
        for label in labels:
            variants = lines.get(label, [])
            found = next((mm.group(0) for v in variants
                          if (mm := re.search(rf"(?<!\w){re.escape(v)}(?!\w)", reply, re.I))), None)
            if force is not None:
                ok = force or bool(checks)
            elif label.startswith("required"):
                ok = found is not None
            elif label.startswith("forbidden"):
                ok = found is None
            else:
                ok = evidence is not None
            if not ok:
                detail = (f"the reply uses \"{found}\"" if label.startswith("forbidden") and found else
                          f"missing any of {variants}" if label.startswith("required") else "not what the line asks")
            elif label.startswith("required") and found:
                detail = f"\"{found}\" is in the reply"
            else:
                detail = f"\"{evidence}\" shows it" if evidence else "the reply has nothing to quote"
            checks.append({"name": label, "passed": ok, "detail": detail})
    code_failed = re.search(r"^- \[[^\]\n]+\] \(code: FAILED\)", tail, re.M) is not None
    passed = m is not None and all(c["passed"] for c in checks) and (force or not code_failed)
    return {"verdict": "pass" if passed else "fail", "checks": checks,
            "rationale": "all checks passed" if passed else "a check failed"}


def sensible_preference(prompt: str) -> dict[str, Any]:
    """Prefer the reply that satisfies more required lines; on a tie, the first shown."""
    matches = list(_PAIR_RE.finditer(prompt))
    replies = {m.group(1): m.group(3) for m in matches}
    groups = _section(prompt[matches[-1].end():] if matches else prompt, "Required content")

    def score(label: str) -> int:
        return sum(any(_mentions(replies.get(label, ""), v) for v in g) for g in groups)

    better = "second" if score("SECOND") > score("FIRST") else "first"
    return {"better": better, "rationale": f"{better} covers more of the required content"}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeLLMServer:
    """Context manager: ``with FakeLLMServer() as srv: ... srv.anthropic_url / srv.openai_url``.

    Args:
        verdict_fn: prompt -> verdict dict, replacing :func:`sensible_verdict`.
        pair_fn: prompt -> {"better", "rationale"}, replacing :func:`sensible_preference`.
        faults: scripted faults for the first model calls, in order (None = no fault).
        fault_rate: probability of a fault on each later model call.
        fault_kinds: the kinds drawn when ``fault_rate`` fires.
        seed: seeds the fault draws.
        slow_s: how long a "slow" call waits before answering.
        latency_s: a delay added to every model call, as a real API has (benchmarks of concurrency).
        strict_models: models missing from the model table are unknown (404, the default) instead of active.
        truncate: every answer runs into the output cap (cut JSON, stop_reason "max_tokens" /
            finish_reason "length"), batch answers included.
        model_faults: scripted faults ("429", "529", "500") for ``GET /v1/models/{id}`` (the preflight), in order.
        fail_with: answer model calls with this error instead: "not_found", "invalid_request",
            "authentication" or "spend_limit" (the provider's own status and body).
        fail_after: answer this many model calls per endpoint normally before ``fail_with`` starts.
        retry_after: the retry-after header value (seconds) sent with a 429, 529 or 500; the SDKs wait
            that long before their retry (the tests' default: 1 ms); None sends no header.
        batch_polls: how many retrieves a batch reports as in progress before it ends.
        batch_faults: per batch request, in submission order: None, "errored" (the request failed),
            "refusal" or "missing_verdict".
    """

    def __init__(
        self,
        *,
        verdict_fn: Callable[[str], dict[str, Any]] | None = None,
        pair_fn: Callable[[str], dict[str, Any]] | None = None,
        faults: Sequence[str | None] = (),
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        seed: int = 0,
        slow_s: float = 1.5,
        retry_after: str | None = "0.001",
        batch_polls: int = 1,
        batch_faults: Sequence[str | None] = (),
        latency_s: float = 0.0,
        strict_models: bool = True,
        truncate: bool = False,
        model_faults: Sequence[str] = (),
        fail_with: str | None = None,
        fail_after: int = 0,
    ) -> None:
        unknown = set(filter(None, faults)) | set(fault_kinds)
        unknown -= set(FAULT_KINDS) | {"errored"}
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {FAULT_KINDS}")
        self.verdict_fn = verdict_fn or sensible_verdict
        self.pair_fn = pair_fn or sensible_preference
        self.faults = list(faults)
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.slow_s = slow_s
        self.latency_s = latency_s
        self.retry_after = retry_after
        self.batch_polls = batch_polls
        self.batch_faults = list(batch_faults)
        self.hold_batches = False  # while True, batches never end (a test flips it to resume)
        self.strict_models = strict_models
        self.truncate = truncate
        self.model_faults = list(model_faults)
        self.fail_with = fail_with
        self.fail_after = fail_after
        self.anthropic_models = {k: dict(v) for k, v in ANTHROPIC_MODELS.items()}
        self.openai_models = {k: dict(v) for k, v in OPENAI_MODELS.items()}
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # (endpoint, JSON body) of every accepted POST
        self.refusals: list[tuple[str, int, str]] = []  # (endpoint, status, message) of every contract refusal
        self.counts: Counter[str] = Counter()
        self.keys_seen: set[str] = set()  # API keys the clients sent (x-api-key / Authorization: Bearer)
        self.faults_served: Counter[str] = Counter()
        self.prompts: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._batches: dict[str, dict[str, Any]] = {}
        self._files: dict[str, bytes] = {}
        self._ids = 0
        self._active = 0  # requests being handled now (wait_idle)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeLLMServer:
        server = self
        _warm_contract()  # import and resolve the SDK types now, not inside a client's first timeout

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)  # a short poll makes shutdown quick
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "use FakeLLMServer as a context manager"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def anthropic_url(self) -> str:
        return self.url

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    # ---- bookkeeping -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def retry_headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"retry-after": self.retry_after}

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no request is being handled: a request the client gave up on (a timeout) may still
        be queued or sleeping here, and would be counted after the caller's snapshot of the counts."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if self._active == 0:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"the fake server is still handling {self._active} request(s) after {timeout_s} s")

    def count(self, endpoint: str) -> int:
        """Requests received at ``"METHOD /path"`` (ids written as ``{id}``)."""
        with self._lock:
            return self.counts[endpoint]

    @property
    def model_calls(self) -> int:
        """Synchronous model calls received, both providers."""
        return self.count("POST /v1/messages") + self.count("POST /v1/chat/completions")

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}{self._ids:06d}"

    def _next_fault(self) -> str | None:
        with self._lock:
            if self.faults:
                fault = self.faults.pop(0)
            elif self.fault_rate and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.fault_kinds)
            else:
                fault = None
            if fault:
                self.faults_served[fault] += 1
            return fault

    # ---- the model table -------------------------------------------------------------------
    def model_entry(self, provider: str, model: str) -> dict[str, Any] | None:
        """The table row for ``model``; None when the model is unknown (or shut down) to this server."""
        table = self.anthropic_models if provider == "anthropic" else self.openai_models
        row = table.get(model)
        if row is None:
            return None if self.strict_models else {"lifecycle": "active"}
        if row.get("lifecycle") == "retired" or _past(row.get("shutdown_date")):
            return None
        return row

    def model_info(self, provider: str, model: str) -> dict[str, Any] | None:
        """``GET /v1/models/{id}``: Anthropic ModelInfo (retired models stay listed) or OpenAI Model."""
        if provider == "anthropic":
            row = self.anthropic_models.get(model)
            if row is None and self.strict_models:
                return None
            row = row or {"lifecycle": "active"}
            return {"type": "model", "id": model, "display_name": model, "created_at": "2026-01-01T00:00:00Z",
                    "lifecycle": row.get("lifecycle", "active"), "retires_at": row.get("retires_at"),
                    "deprecated_at": "2026-06-01T00:00:00Z" if row.get("lifecycle") != "active" else None}
        if self.model_entry("openai", model) is None:
            return None
        return {"id": model, "object": "model", "created": 1_760_000_000, "owned_by": "openai",
                "shutdown_date": self.openai_models.get(model, {}).get("shutdown_date")}

    def anthropic_refusal(self, body: dict[str, Any]) -> tuple[int, str, str] | None:
        """(status, error type, message) when the model table refuses this messages.create body."""
        model = body.get("model", "")
        row = self.model_entry("anthropic", model)
        if row is None:
            return 404, "not_found_error", f"model: {model}"
        tool_choice = body.get("tool_choice") or {}
        if tool_choice.get("type") in ("tool", "any") and row.get("forced_tool") is False:
            return 400, "invalid_request_error", FORCED_TOOL_TEXT.format(model=model)
        kind = (body.get("thinking") or {}).get("type")
        allowed = row.get("thinking_types")
        if kind and allowed and kind not in allowed:
            return 400, "invalid_request_error", THINKING_TEXT.format(kind=kind, model=model, allowed=list(allowed))
        return None

    def openai_refusal(self, body: dict[str, Any]) -> tuple[int, str, str, str | None] | None:
        """(status, code, message, param) when the model table refuses this chat completions body."""
        model = body.get("model", "")
        row = self.model_entry("openai", model)
        if row is None:
            return 404, "model_not_found", f"The model `{model}` does not exist or you do not have access to it.", None
        if row.get("reasoning"):
            for key in ("max_tokens", "temperature"):
                if body.get(key) is not None:
                    return 400, "unsupported_parameter", OPENAI_UNSUPPORTED[key], key
            if body.get("reasoning_effort") == "none":
                return 400, "unsupported_value", ("Unsupported value: 'reasoning_effort' does not support 'none' "
                                                  "with this model."), "reasoning_effort"
        return None

    # ---- model answers ---------------------------------------------------------------------
    def _answer(self, prompt: str, schema_props: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.prompts.append(prompt)
        return self.pair_fn(prompt) if "better" in schema_props else self.verdict_fn(prompt)

    def anthropic_message(self, body: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
        prompt = "".join(m["content"] if isinstance(m["content"], str) else
                         "".join(b.get("text", "") for b in m["content"]) for m in body["messages"])
        fmt = (body.get("output_config") or {}).get("format")
        tool = (body.get("tools") or [None])[0]
        schema = fmt["schema"] if fmt else (tool or {}).get("input_schema") or {"properties": {}}
        data = self._answer(prompt, schema.get("properties") or {})
        if fault == "missing_verdict":
            data.pop("verdict", None)
            data.pop("better", None)
        # adaptive thinking (on by default for Sonnet 5.5-class models) puts a thinking block first
        kind = (body.get("thinking") or {}).get("type")
        row = self.anthropic_models.get(body["model"], {})
        thinks = kind in ("adaptive", "enabled") or (kind is None and row.get("forced_tool") is False)
        content: list[dict[str, Any]] = ([{"type": "thinking", "thinking": "Checking each listed line in turn.",
                                           "signature": "sig-fake"}] if thinks else [])
        output_tokens = _tokens(json.dumps(data)) + (40 if thinks else 0)
        if fault == "truncated" or self.truncate:
            # the cap was reached mid-answer: the text stops short and the whole cap is billed
            if fmt or tool is None:
                content.append({"type": "text", "text": json.dumps(data)[: len(json.dumps(data)) // 2]})
            stop, output_tokens = "max_tokens", int(body["max_tokens"])
        elif fault == "refusal":
            content.append({"type": "text", "text": "I can't help with grading this."})
            stop = "refusal"
        elif fault == "bad_json":
            content.append({"type": "text", "text": json.dumps(data)[:25]})
            stop = "end_turn"
        elif fmt or tool is None:
            content.append({"type": "text", "text": json.dumps(data)})
            stop = "end_turn"
        else:
            content.append({"type": "tool_use", "id": self._new_id("toolu_"), "name": tool["name"], "input": data})
            stop = "tool_use"
        return {"id": self._new_id("msg_"), "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": _tokens(prompt), "output_tokens": output_tokens}}

    def openai_completion(self, body: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
        prompt = "".join(m["content"] for m in body["messages"])
        schema = body["response_format"]["json_schema"]["schema"]
        data = self._answer(prompt, schema["properties"])
        if fault == "missing_verdict":
            data.pop("verdict", None)
            data.pop("better", None)
        message: dict[str, Any] = {"role": "assistant", "content": json.dumps(data), "refusal": None}
        if fault == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help with grading this."}
        if fault == "bad_json":
            message["content"] = json.dumps(data)[:25]
        finish, completion_tokens = "stop", _tokens(json.dumps(data))
        if fault == "truncated" or self.truncate:  # the cap was reached mid-answer; the whole cap is billed
            message["content"] = json.dumps(data)[: len(json.dumps(data)) // 2]
            finish = "length"
            completion_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
        return {"id": self._new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": _tokens(prompt), "completion_tokens": completion_tokens,
                          "total_tokens": _tokens(prompt) + completion_tokens}}

    # ---- batches ---------------------------------------------------------------------------
    def _next_batch_fault(self) -> str | None:
        with self._lock:
            fault = self.batch_faults.pop(0) if self.batch_faults else None
            if fault:
                self.faults_served["batch:" + fault] += 1
            return fault

    def _poll_batch(self, batch_id: str, poll: bool) -> tuple[dict[str, Any], bool]:
        """The batch and whether it has ended; a poll (not a results fetch) moves it one step on."""
        with self._lock:
            b = self._batches[batch_id]
            if poll and not self.hold_batches:
                b["polls"] += 1
            return b, b["polls"] > self.batch_polls

    def anthropic_batch(self, batch_id: str, *, poll: bool) -> dict[str, Any]:
        b, ended = self._poll_batch(batch_id, poll)
        n = len(b["requests"])
        return {"id": batch_id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": {"processing": 0 if ended else n, "succeeded": n if ended else 0,
                                   "errored": 0, "canceled": 0, "expired": 0},
                "created_at": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z",
                "ended_at": "2025-01-01T00:01:00Z" if ended else None, "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None}

    def anthropic_results(self, batch_id: str) -> bytes:
        lines = []
        for r in self._batches[batch_id]["requests"]:
            fault = self._next_batch_fault()
            refused = self.anthropic_refusal(r["params"])
            if refused:
                result = {"type": "errored", "error": {"type": "error", "error": {"type": refused[1],
                                                                                 "message": refused[2]}}}
            elif fault == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "x"}}}
            else:
                result = {"type": "succeeded", "message": self.anthropic_message(r["params"], fault)}
            lines.append(json.dumps({"custom_id": r["custom_id"], "result": result}))
        return ("\n".join(lines) + "\n").encode()

    def openai_batch(self, batch_id: str, *, poll: bool) -> dict[str, Any]:
        b, ended = self._poll_batch(batch_id, poll)
        if ended and "output_file_id" not in b:
            lines = []
            for line in self._files[b["input_file_id"]].decode().splitlines():
                req = json.loads(line)
                fault = self._next_batch_fault()
                refused = self.openai_refusal(req["body"])
                if refused:
                    response = {"status_code": refused[0], "request_id": self._new_id("req_"),
                                "body": {"error": {"message": refused[2], "type": "invalid_request_error",
                                                   "param": refused[3], "code": refused[1]}}}
                elif fault == "errored":
                    response = {"status_code": 500, "request_id": self._new_id("req_"), "body": {"error": "x"}}
                else:
                    response = {"status_code": 200, "request_id": self._new_id("req_"),
                                "body": self.openai_completion(req["body"], fault)}
                lines.append(json.dumps({"id": self._new_id("batch_req_"), "custom_id": req["custom_id"],
                                         "response": response, "error": None}))
            file_id = self._new_id("file-")
            with self._lock:
                self._files[file_id] = ("\n".join(lines) + "\n").encode()
                b["output_file_id"] = file_id
        return {"id": batch_id, "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
                "completion_window": "24h", "status": "completed" if ended else "in_progress",
                "created_at": int(time.time()), "output_file_id": b.get("output_file_id"),
                "error_file_id": None, "errors": None}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeLLMServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
        pass

    # ---- plumbing --------------------------------------------------------------------------
    def _endpoint(self) -> tuple[str, list[str]]:
        path = self.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        ids = [p for p in parts if re.match(r"^(msgbatch_|batch_|file-)", p)]
        templ = "/" + "/".join("{id}" if p in ids else p for p in parts)
        return f"{self.command} {templ}", ids

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload: Any, *, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a "slow" fault past its timeout)

    def _error(self, status: int, kind: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}, headers=headers)

    def _fault(self, fault: str, answer: Callable[[], dict[str, Any]]) -> bool:
        """Serve a transport-level fault; False when the fault is in the answer itself."""
        if fault == "429":
            self._error(429, "rate_limit_error", self.owner.retry_headers())
        elif fault == "529":
            self._error(529, "overloaded_error", self.owner.retry_headers())
        elif fault == "500":
            self._error(500, "api_error", self.owner.retry_headers())
        elif fault == "slow":
            time.sleep(self.owner.slow_s)
            self._send(200, answer())
        elif fault == "drop":
            raw = json.dumps(answer()).encode()
            try:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw[: len(raw) // 3])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True
        elif fault == "malformed":
            self._send(200, json.dumps(answer()).encode()[:40])
        else:
            return False
        return True

    def _anthropic_error(self, status: int, kind: str, message: str, *, details: dict[str, Any] | None = None
                         ) -> None:
        error: dict[str, Any] = {"type": kind, "message": message}
        if details:
            error["details"] = details
        self._send(status, {"type": "error", "error": error, "request_id": self.owner._new_id("req_")})

    def _openai_error(self, status: int, message: str, *, kind: str = "invalid_request_error",
                      param: str | None = None, code: str | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

    def _refuse(self, endpoint: str, status: int, message: str) -> None:
        with self.owner._lock:
            self.owner.refusals.append((endpoint, status, message))

    def _contract(self, endpoint: str, body: Any) -> bool:
        """Check ``body`` against the SDK's request type; answer the API's 400 and return False if it fails."""
        problems = contract_problems(request_types()[endpoint], body)
        if endpoint == "POST /v1/batches" and not problems:
            problems = self._batch_file_problems(body)
        if not problems:
            return True
        self._refuse(endpoint, 400, problems[0])
        if "/messages" in endpoint:
            self._anthropic_error(400, "invalid_request_error", problems[0])
        else:
            key = problems[0].split(":", 1)[0]
            text = (f"Unrecognized request argument supplied: {key}" if "Extra inputs" in problems[0]
                    else f"Invalid value for '{key}': {problems[0].split(': ', 1)[-1]}")
            self._openai_error(400, text, param=key, code=None if "Extra inputs" in problems[0] else "invalid_value")
        return False

    def _batch_file_problems(self, body: dict[str, Any]) -> list[str]:
        """Every line of an OpenAI batch input file is a request to ``body["endpoint"]``: check each."""
        raw = self.owner._files.get(body["input_file_id"])
        if raw is None:
            return [f"input_file_id: No such File object: {body['input_file_id']}"]
        td = request_types().get(f"POST {body['endpoint']}")
        out = []
        for n, line in enumerate(raw.decode().splitlines(), 1):
            if line.strip() and td is not None:
                out += [f"line {n}: body.{p}" for p in contract_problems(td, json.loads(line).get("body"))]
        return out

    def _client_error(self, endpoint: str) -> bool:
        """Serve ``fail_with`` (every model call refused the same way); False when not set."""
        kind = self.owner.fail_with
        if not kind or self.owner.count(endpoint) <= self.owner.fail_after:
            return False
        anthropic = endpoint == "POST /v1/messages"
        self._refuse(endpoint, 0, kind)
        if kind == "spend_limit":
            if anthropic:
                self._anthropic_error(429, "rate_limit_error", "You have reached your specified API usage limits.",
                                      details={"error_code": "enforced_spend_limit_reached"})
            else:
                self._openai_error(429, "You exceeded your current quota, please check your plan and billing "
                                        "details.", kind="insufficient_quota", code="insufficient_quota")
        elif kind == "authentication":
            if anthropic:
                self._anthropic_error(401, "authentication_error", "invalid x-api-key")
            else:
                self._openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        elif kind == "not_found":
            if anthropic:
                self._anthropic_error(404, "not_found_error", "model: no-such-model")
            else:
                self._openai_error(404, "The model `no-such-model` does not exist or you do not have access to it.",
                                   code="model_not_found")
        else:
            if anthropic:
                self._anthropic_error(400, "invalid_request_error", "messages: text content blocks must be non-empty")
            else:
                self._openai_error(400, "Invalid 'messages[0].content': string too long.", code="string_above_max_length")
        return True

    # ---- routes ----------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        with self.owner._busy():
            self._post()

    def do_GET(self) -> None:  # noqa: N802
        with self.owner._busy():
            self._get()

    def _post(self) -> None:
        endpoint, ids = self._endpoint()
        with self.owner._lock:
            self.owner.counts[endpoint] += 1
            key = self.headers.get("x-api-key") or (self.headers.get("authorization") or "").removeprefix("Bearer ")
            if key:
                self.owner.keys_seen.add(key)
        raw = self._body()
        o = self.owner
        if endpoint in request_types() and endpoint != "POST /v1/batches":
            body = json.loads(raw)
            if not self._contract(endpoint, body):
                return
            with o._lock:
                o.bodies.append((endpoint, body))
        if endpoint == "POST /v1/messages":
            if o.latency_s:
                time.sleep(o.latency_s)
            if self._client_error(endpoint):
                return
            refused = o.anthropic_refusal(body)
            if refused:
                self._refuse(endpoint, refused[0], refused[2])
                self._anthropic_error(*refused)
                return
            fault = o._next_fault()
            if fault and self._fault(fault, lambda: o.anthropic_message(body)):
                return
            self._send(200, o.anthropic_message(body, fault))
        elif endpoint == "POST /v1/chat/completions":
            if o.latency_s:
                time.sleep(o.latency_s)
            if self._client_error(endpoint):
                return
            refused_o = o.openai_refusal(body)
            if refused_o:
                status, code, message, param = refused_o
                self._refuse(endpoint, status, message)
                self._openai_error(status, message, param=param, code=code)
                return
            fault = o._next_fault()
            if fault and self._fault(fault, lambda: o.openai_completion(body)):
                return
            self._send(200, o.openai_completion(body, fault))
        elif endpoint == "POST /v1/responses":
            self._openai_error(400, "this fake serves chat completions only; the request itself is valid")
        elif endpoint == "POST /v1/messages/batches":
            batch_id = o._new_id("msgbatch_")
            with o._lock:
                o._batches[batch_id] = {"requests": body["requests"], "polls": 0}
            self._send(200, o.anthropic_batch(batch_id, poll=False))
        elif endpoint == "POST /v1/files":
            file_id = o._new_id("file-")
            content = _multipart_file(self.headers.get("content-type", ""), raw)
            with o._lock:
                o._files[file_id] = content
            self._send(200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                             "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})
        elif endpoint == "POST /v1/batches":
            body = json.loads(raw)
            if not self._contract(endpoint, body):
                return
            with o._lock:
                o.bodies.append((endpoint, body))
            batch_id = o._new_id("batch_")
            with o._lock:
                o._batches[batch_id] = {"input_file_id": body["input_file_id"], "endpoint": body["endpoint"],
                                        "polls": 0}
            self._send(200, o.openai_batch(batch_id, poll=False))
        else:
            self._error(404, "not_found_error")

    def _get(self) -> None:
        endpoint, ids = self._endpoint()
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        # Both SDKs ask GET /v1/models/{id}; the Anthropic client sends anthropic-version.
        provider = "anthropic" if self.headers.get("anthropic-version") else "openai"
        if len(parts) == 3 and parts[:2] == ["v1", "models"]:
            endpoint = f"GET /v1/models/{{id}} {provider}"
        with self.owner._lock:
            self.owner.counts[endpoint] += 1
        o = self.owner
        if len(parts) == 3 and parts[:2] == ["v1", "models"]:
            with o._lock:
                fault = o.model_faults.pop(0) if o.model_faults else None
            if fault and self._fault(fault, dict):
                return
            info = o.model_info(provider, parts[2])
            if info is not None:
                self._send(200, info)
            elif provider == "anthropic":
                self._anthropic_error(404, "not_found_error", f"model: {parts[2]}")
            else:
                self._openai_error(404, f"The model `{parts[2]}` does not exist or you do not have access to it.",
                                   code="model_not_found")
        elif endpoint == "GET /v1/messages/batches/{id}" and ids[0] in o._batches:
            self._send(200, o.anthropic_batch(ids[0], poll=True))
        elif endpoint == "GET /v1/messages/batches/{id}/results" and ids[0] in o._batches:
            self._send(200, o.anthropic_results(ids[0]), content_type="application/binary")
        elif endpoint == "GET /v1/batches/{id}" and ids[0] in o._batches:
            self._send(200, o.openai_batch(ids[0], poll=True))
        elif endpoint == "GET /v1/files/{id}/content" and ids[0] in o._files:
            self._send(200, o._files[ids[0]], content_type="application/octet-stream")
        else:
            self._error(404, "not_found_error")


def _multipart_file(content_type: str, raw: bytes) -> bytes:
    """The bytes of the part named "file" in a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return raw
    for part in raw.split(b"--" + m.group(1).encode()):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    return b""
