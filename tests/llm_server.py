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
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
)

_REPLY_RE = re.compile(r"<<<REPLY-([0-9a-f]+)>>>\n(.*?)\n<<<END-REPLY-\1>>>", re.S)
_PAIR_RE = re.compile(r"<<<REPLY-(FIRST|SECOND)-([0-9a-f]+)>>>\n(.*?)\n<<<END-REPLY-\1-\2>>>", re.S)
_SAMPLING = {"temperature", "top_p", "top_k"}  # refused by anthropic-version 2026-10-21
_JSON_STR = re.compile(r'"(?:[^"\\]|\\.)*"')


def _section(prompt: str, title: str) -> list[list[str]]:
    """The quoted strings of each "- " line under ``### {title}`` (up to the next heading)."""
    m = re.search(rf"^### {re.escape(title)}[^\n]*\n(.*?)(?=^### |\Z)", prompt, re.S | re.M)
    if not m:
        return []
    return [[json.loads(s) for s in _JSON_STR.findall(line)] for line in m.group(1).splitlines()
            if line.startswith("- ") and _JSON_STR.search(line)]


def _mentions(text: str, variant: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(variant)}(?!\w)", text, re.I) is not None


def sensible_verdict(prompt: str) -> dict[str, Any]:
    """Judge the fenced reply against the prompt's required and forbidden lists."""
    m = _REPLY_RE.search(prompt)
    reply = m.group(2) if m else ""
    tail = prompt[m.end():] if m else prompt  # the expectations come after the fenced reply
    checks = []
    for group in _section(tail, "Required content"):
        ok = any(_mentions(reply, v) for v in group)
        checks.append({"name": f"includes {group[0]}", "passed": ok, "detail": "found" if ok else "missing"})
    for group in _section(tail, "Forbidden content"):
        ok = not any(_mentions(reply, v) for v in group)
        checks.append({"name": f"avoids {group[0]}", "passed": ok, "detail": "absent" if ok else "present"})
    # conv-judge-v2 also labels each constraint, note and the consistency line: one check each, passed
    # (this fake judges only the required and forbidden lines)
    for label in re.findall(r"^- \[((?:constraint|note) \d+|consistency)\]", tail, re.M):
        checks.append({"name": label, "passed": True, "detail": "not judged by this fake"})
    passed = m is not None and all(c["passed"] for c in checks)
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
        retry_after: the retry-after header value sent with a 429.
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
        retry_after: str = "0",
        batch_polls: int = 1,
        batch_faults: Sequence[str | None] = (),
        latency_s: float = 0.0,
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
        self.counts: Counter[str] = Counter()
        self.keys_seen: set[str] = set()  # API keys the clients sent (x-api-key / Authorization: Bearer)
        self.faults_served: Counter[str] = Counter()
        self.prompts: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._batches: dict[str, dict[str, Any]] = {}
        self._files: dict[str, bytes] = {}
        self._ids = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeLLMServer:
        server = self

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

    # ---- model answers ---------------------------------------------------------------------
    def _answer(self, prompt: str, schema_props: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.prompts.append(prompt)
        return self.pair_fn(prompt) if "better" in schema_props else self.verdict_fn(prompt)

    def anthropic_message(self, body: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
        prompt = "".join(m["content"] if isinstance(m["content"], str) else
                         "".join(b.get("text", "") for b in m["content"]) for m in body["messages"])
        tool = body["tools"][0]
        data = self._answer(prompt, tool["input_schema"]["properties"])
        if fault == "missing_verdict":
            data.pop("verdict", None)
            data.pop("better", None)
        if fault == "refusal":
            content = [{"type": "text", "text": "I can't help with grading this."}]
            stop = "refusal"
        elif fault == "bad_json":
            content = [{"type": "text", "text": json.dumps(data)[:25]}]
            stop = "end_turn"
        else:
            content = [{"type": "tool_use", "id": self._new_id("toolu_"), "name": tool["name"], "input": data}]
            stop = "tool_use"
        return {"id": self._new_id("msg_"), "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": _tokens(prompt), "output_tokens": _tokens(json.dumps(data))}}

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
        return {"id": self._new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(json.dumps(data)),
                          "total_tokens": _tokens(prompt) + _tokens(json.dumps(data))}}

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
            result = ({"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "x"}}}
                      if fault == "errored" else
                      {"type": "succeeded", "message": self.anthropic_message(r["params"], fault)})
            lines.append(json.dumps({"custom_id": r["custom_id"], "result": result}))
        return ("\n".join(lines) + "\n").encode()

    def openai_batch(self, batch_id: str, *, poll: bool) -> dict[str, Any]:
        b, ended = self._poll_batch(batch_id, poll)
        if ended and "output_file_id" not in b:
            lines = []
            for line in self._files[b["input_file_id"]].decode().splitlines():
                req = json.loads(line)
                fault = self._next_batch_fault()
                response = ({"status_code": 500, "request_id": self._new_id("req_"), "body": {"error": "x"}}
                            if fault == "errored" else
                            {"status_code": 200, "request_id": self._new_id("req_"),
                             "body": self.openai_completion(req["body"], fault)})
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
            self._error(429, "rate_limit_error", {"retry-after": self.owner.retry_after})
        elif fault == "529":
            self._error(529, "overloaded_error")
        elif fault == "500":
            self._error(500, "api_error")
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

    # ---- routes ----------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        endpoint, ids = self._endpoint()
        with self.owner._lock:
            self.owner.counts[endpoint] += 1
            key = self.headers.get("x-api-key") or (self.headers.get("authorization") or "").removeprefix("Bearer ")
            if key:
                self.owner.keys_seen.add(key)
        raw = self._body()
        o = self.owner
        if endpoint in ("POST /v1/messages", "POST /v1/chat/completions"):
            if o.latency_s:
                time.sleep(o.latency_s)
            body = json.loads(raw)
            if endpoint == "POST /v1/messages" and _SAMPLING & body.keys():
                # like the API version the SDK pins (2026-10-21): sampling parameters are refused
                self._error(400, "invalid_request_error")
                return
            make = o.anthropic_message if endpoint == "POST /v1/messages" else o.openai_completion
            fault = o._next_fault()
            if fault and self._fault(fault, lambda: make(body)):
                return
            self._send(200, make(body, fault))
        elif endpoint == "POST /v1/messages/batches":
            requests = json.loads(raw)["requests"]
            if any(_SAMPLING & r["params"].keys() for r in requests):
                self._error(400, "invalid_request_error")
                return
            batch_id = o._new_id("msgbatch_")
            with o._lock:
                o._batches[batch_id] = {"requests": requests, "polls": 0}
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
            batch_id = o._new_id("batch_")
            with o._lock:
                o._batches[batch_id] = {"input_file_id": body["input_file_id"], "endpoint": body["endpoint"],
                                        "polls": 0}
            self._send(200, o.openai_batch(batch_id, poll=False))
        else:
            self._error(404, "not_found_error")

    def do_GET(self) -> None:  # noqa: N802
        endpoint, ids = self._endpoint()
        with self.owner._lock:
            self.owner.counts[endpoint] += 1
        o = self.owner
        if endpoint == "GET /v1/messages/batches/{id}" and ids[0] in o._batches:
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
