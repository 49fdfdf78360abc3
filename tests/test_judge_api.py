"""The judge against today's API contracts: request shapes, model lifecycle, cache key, stop rules.

The loopback server (tests/llm_server.py) checks every request body against the installed SDKs' own
request types and carries a small model table: a retired model gets the real not-found error, a
Claude Sonnet 5.5-class model refuses forced tool use, an OpenAI reasoning model refuses
``max_tokens`` and ``temperature``. Dates come from the providers' deprecation pages (docs/judging.md).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))  # llm_server sits next to this file

from llm_server import FakeLLMServer  # noqa: E402

from posttrain.config import JudgeConfig  # noqa: E402
from posttrain.items import Expectation, Item, Turn  # noqa: E402
from posttrain.judges import JudgeConfigError, judge_generations  # noqa: E402
from posttrain.judges.clients import JudgeStopped, make_provider  # noqa: E402
from posttrain.judges.lifecycle import preflight_judge  # noqa: E402
from posttrain.records import read_jsonl  # noqa: E402

FAST = 0.001
TODAY = dt.date(2026, 12, 1)


pytestmark = pytest.mark.usefixtures("judge_keys")


def shipped(name: str, server: FakeLLMServer | None, **overrides: Any) -> Any:
    """The shipped judge config ``conf/judge/<name>.yaml``, pointed at the loopback server."""
    from posttrain.paths import conf_dir

    yaml = OmegaConf.load(conf_dir() / "judge" / f"{name}.yaml")
    values = {k: v for k, v in OmegaConf.to_container(yaml).items() if k != "defaults"}
    cfg = OmegaConf.merge(OmegaConf.structured(JudgeConfig), values)
    if server is not None:
        cfg.base_url = server.anthropic_url if cfg.provider == "anthropic" else server.openai_url
    cfg.timeout_s, cfg.max_retries, cfg.concurrency = 5.0, 2, 1
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def item_and_row(i: int = 0, reply: str = "You live in Lisbon.") -> tuple[Item, dict[str, Any]]:
    item = Item(id=f"conv{i:03d}", category="memory", turns=(
        Turn("I moved to Lisbon last year."),
        Turn("Which city do I live in?", expect=Expectation(must_include=(("Lisbon",),))),
    ))
    row = {"item_id": item.id, "category": item.category, "source": item.source, "model": "m",
           "prompt_format": "chat_template",
           "turns": [{"turn": t, "user": item.turns[t].user, "prompt_sha256": "0" * 64, "reply": r,
                      "n_prompt_tokens": 5, "n_new_tokens": 5, "finish_reason": "stop"}
                     for t, r in enumerate(["Nice!", reply])]}
    return item, row


def judge(cfg: Any, tmp: Path, n: int = 1, **kw: Any) -> list[dict[str, Any]]:
    pairs = [item_and_row(i) for i in range(n)]
    return judge_generations([p[0] for p in pairs], [p[1] for p in pairs], cfg, cache_dir=tmp / "cache",
                             progress=False, backoff_base_s=FAST, **kw)


# ---------------------------------------------------------------------------------------------
# Request shapes


def test_forced_tool_request_is_refused_by_sonnet_5_5_and_the_structured_output_request_passes(tmp_path: Path
                                                                                               ) -> None:
    import anthropic

    with FakeLLMServer() as srv:
        old = shipped("claude", srv, structured_output="forced_tool", thinking=None, effort=None)
        body = make_provider(old).params("Grade this.")
        assert body["tool_choice"] == {"type": "tool", "name": "record_verdict"}  # the request main used to send
        client = anthropic.Anthropic(api_key="k", base_url=srv.anthropic_url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="forced tool use") as err:
            client.messages.create(**body)
        assert err.value.status_code == 400 and err.value.type == "invalid_request_error"
        scores = judge(old, tmp_path / "old")  # through the judge: every turn ends as error
        assert [s["verdict"] for s in scores] == ["error"] and "forced tool use" in scores[0]["error"]

        new = shipped("claude", srv)
        body = make_provider(new).params("Grade this.")
        assert "tool_choice" not in body and body["output_config"]["format"]["type"] == "json_schema"
        assert body["thinking"] == {"type": "adaptive"} and body["output_config"]["effort"] == "medium"
        calls = srv.model_calls
        scores = judge(new, tmp_path / "new")
        assert [s["verdict"] for s in scores] == ["pass"] and srv.model_calls == calls + 1, scores
        answer = srv.bodies[-1][1]
        assert answer["model"] == "claude-sonnet-5-5" and "temperature" not in answer
        # the answer carried a thinking block before the text; the settings are recorded in the row
        assert scores[0]["judge_settings"] == {"temperature": None, "max_tokens": 16000, "thinking": "adaptive",
                                               "effort": "medium", "structured_output": "json_schema"}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_batch_mode_sends_the_accepted_shape(provider: str, tmp_path: Path) -> None:
    with FakeLLMServer(batch_polls=0) as srv:
        cfg = shipped("claude" if provider == "anthropic" else "gpt4", srv, mode="batch")
        scores = judge(cfg, tmp_path, n=2, state_dir=tmp_path, poll_interval_s=0.01)
        assert [s["verdict"] for s in scores] == ["pass", "pass"] and srv.model_calls == 0
        assert srv.refusals == []
        if provider == "anthropic":
            params = srv.bodies[-1][1]["requests"][0]["params"]
            assert params["output_config"]["format"]["type"] == "json_schema" and "tool_choice" not in params
        # the old forced-tool shape in a batch: each request comes back errored, then asked directly (refused)
        if provider == "anthropic":
            old = shipped("claude", srv, mode="batch", structured_output="forced_tool", thinking=None, effort=None)
            scores = judge(old, tmp_path / "old", state_dir=tmp_path / "old", poll_interval_s=0.01)
            assert [s["verdict"] for s in scores] == ["error"]


def test_openai_reasoning_model_refuses_max_tokens_and_temperature_and_accepts_the_new_request(tmp_path: Path
                                                                                               ) -> None:
    import openai

    with FakeLLMServer() as srv:
        client = openai.OpenAI(api_key="k", base_url=srv.openai_url, max_retries=0)
        messages = [{"role": "user", "content": "Grade this."}]
        with pytest.raises(openai.BadRequestError, match="max_completion_tokens") as err:
            client.chat.completions.create(model="gpt-6.2-sol", messages=messages, max_tokens=512,  # type: ignore[arg-type]
                                           temperature=0.0)
        assert err.value.code == "unsupported_parameter"
        with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: verbose"):
            client.chat.completions.create(model="gpt-6.2-sol", messages=messages,  # type: ignore[arg-type]
                                           extra_body={"verbose": True})
        cfg = shipped("gpt4", srv)
        body = make_provider(cfg).params("Grade this.")
        assert body["max_completion_tokens"] == 16000 and "max_tokens" not in body and "temperature" not in body
        assert body["reasoning_effort"] == "medium"
        assert [s["verdict"] for s in judge(cfg, tmp_path)] == ["pass"]


def test_the_contract_refuses_a_mistyped_field_with_the_apis_400() -> None:
    import anthropic

    with FakeLLMServer() as srv:
        client = anthropic.Anthropic(api_key="k", base_url=srv.anthropic_url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="temperature: Extra inputs are not permitted"):
            client.messages.create(model="claude-sonnet-5-5", max_tokens=10, extra_body={"temperature": 0.0},
                                   messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.BadRequestError, match="output_config.format.type"):
            client.messages.create(model="claude-sonnet-5-5", max_tokens=10,
                                   messages=[{"role": "user", "content": "x"}],
                                   output_config={"format": {"type": "json", "schema": {}}})  # type: ignore[typeddict-item]
        assert srv.model_calls == 2 and len(srv.refusals) == 2 and srv.bodies == []


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_contract_refuses_a_body_without_its_required_cap_or_with_an_unknown_model(provider: str) -> None:
    """pydantic sees the SDK's required fields (Python 3.11's TypedDicts hide them); unknown models are a 404.

    The SDK methods check their own required arguments before sending, so the bodies without a cap go
    out through the SDK's generic ``post``, as a hand-built request would.
    """
    import anthropic
    import httpx2
    import openai

    msg = [{"role": "user", "content": "x"}]
    with FakeLLMServer() as srv:
        if provider == "anthropic":
            client = anthropic.Anthropic(api_key="k", base_url=srv.anthropic_url, max_retries=0)
            with pytest.raises(anthropic.BadRequestError, match="max_tokens: Field required"):
                client.post("/v1/messages", body={"model": "claude-sonnet-5-5", "messages": msg}, cast_to=httpx2.Response)
            with pytest.raises(anthropic.BadRequestError, match=r"requests\.0\.params\.max_tokens: Field required"):
                client.post("/v1/messages/batches", cast_to=httpx2.Response, body={"requests": [
                    {"custom_id": "a", "params": {"model": "claude-sonnet-5-5", "messages": msg}}]})
            with pytest.raises(anthropic.BadRequestError, match=r"max_tokens: Input should be a valid integer"):
                client.post("/v1/messages", body={"model": "claude-sonnet-5-5", "messages": msg, "max_tokens": "10"},
                            cast_to=httpx2.Response)
            with pytest.raises(anthropic.NotFoundError, match="no-such-claude"):
                client.messages.create(model="no-such-claude", max_tokens=10, messages=msg)  # type: ignore[arg-type]
            assert client.messages.create(model="claude-sonnet-5-5", max_tokens=10, messages=msg)  # type: ignore[arg-type]
        else:
            oclient = openai.OpenAI(api_key="k", base_url=srv.openai_url, max_retries=0)
            with pytest.raises(openai.BadRequestError, match="'model'"):
                oclient.post("/chat/completions", body={"messages": msg}, cast_to=httpx2.Response)
            with pytest.raises(openai.NotFoundError, match="no-such-gpt") as err:
                oclient.chat.completions.create(model="no-such-gpt", messages=msg)  # type: ignore[arg-type]
            assert err.value.code == "model_not_found"
            with pytest.raises(openai.BadRequestError, match="'max_tokens'"):  # the reasoning model's own rule
                oclient.chat.completions.create(model="gpt-6.2-sol", messages=msg, max_tokens=5)  # type: ignore[arg-type]
        assert len(srv.refusals) == 4 if provider == "anthropic" else len(srv.refusals) == 3
        # only complete bodies passed the contract (the model table refused some of them afterwards)
        assert [b["model"] for _, b in srv.bodies] == (["no-such-claude", "claude-sonnet-5-5"] if provider == "anthropic"
                                                       else ["no-such-gpt", "gpt-6.2-sol"])


# ---------------------------------------------------------------------------------------------
# Transport: truncation, timeouts, forced tool with thinking


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_truncated_answer_is_reported_reasked_once_and_counted(provider: str, tmp_path: Path) -> None:
    from posttrain.judges import JudgeSpend

    name = "claude" if provider == "anthropic" else "gpt4"
    signal = "stop_reason=max_tokens" if provider == "anthropic" else "finish_reason=length"
    with FakeLLMServer(truncate=True) as srv:  # every answer runs into the cap
        spend = JudgeSpend()
        [score] = judge(shipped(name, srv, max_reasks=2), tmp_path / "always", spend=spend)
        assert srv.model_calls == 2  # asked once, re-asked once, then given up: not 3 x 16,000 tokens
    assert score["verdict"] == "error" and "cut at max_tokens 2 times" in score["error"] and signal in score["error"]
    assert spend.truncated == 2 and spend.as_dict()["truncated_answers"] == 2
    assert score["output_tokens"] == 2 * 16000  # each cut answer billed the whole cap
    with FakeLLMServer(faults=["truncated"]) as srv:  # cut once: the re-ask answers
        spend = JudgeSpend()
        [score] = judge(shipped(name, srv), tmp_path / "once", spend=spend)
        assert srv.model_calls == 2 and srv.faults_served["truncated"] == 1
    assert score["verdict"] == "pass" and score["n_parse_failures"] == 1 and spend.truncated == 1


def test_the_http_client_hook_paces_the_sdk_retries_with_backoff_base_s_when_the_server_gives_no_retry_after() -> None:
    """The SDKs wait ``retry-after-ms`` when a response carries it; the hook supplies it from backoff_base_s."""
    import asyncio

    from posttrain.judges.retry import DEFAULT_BACKOFF_BASE_S, make_http_client

    async def headers(backoff: float, srv: FakeLLMServer) -> list[dict[str, str]]:
        client = make_http_client("openai", backoff)
        try:
            return [dict((await client.get(f"{srv.openai_url}/models/gpt-6.2-sol")).headers) for _ in range(2)]
        finally:
            await client.aclose()

    with FakeLLMServer(model_faults=["500", "500", "500", "500"], retry_after=None) as srv:
        paced = asyncio.run(headers(0.25, srv))
        sdk_own = asyncio.run(headers(DEFAULT_BACKOFF_BASE_S, srv))
    assert [h.get("retry-after-ms") for h in paced] == ["250.000", "250.000"]  # no attempt counter outside a call
    assert all("retry-after-ms" not in h for h in sdk_own)  # the SDKs' own backoff is left alone
    with FakeLLMServer(model_faults=["529"]) as srv:  # the server's own retry-after is never overridden
        [h, _] = asyncio.run(headers(0.25, srv))
    assert h["retry-after"] == "0.001" and "retry-after-ms" not in h


def test_forced_tool_with_thinking_is_refused_when_the_config_is_composed(compose: Any) -> None:
    from posttrain.config import ConfigError, validate
    from posttrain.judges.clients import check_judge_ready

    cfg = compose("scorer=llm", "judge=claude", "judge.structured_output=forced_tool")
    with pytest.raises(ConfigError, match=r"(?s)nothing was loaded.*forced_tool with judge\.thinking='adaptive'"):
        validate(cfg)
    with pytest.raises(JudgeConfigError, match="Claude refuses forced tool use while thinking"):
        check_judge_ready(cfg.judge)
    validate(compose("scorer=llm", "judge=claude", "judge.structured_output=forced_tool", "judge.thinking=disabled"))


def test_a_cap_the_sdk_would_not_send_without_streaming_is_refused_before_any_call(tmp_path: Path) -> None:
    with FakeLLMServer() as srv:
        with pytest.raises(JudgeConfigError, match=r"(?s)nothing was spent.*judge\.max_tokens=32000 .*21333"):
            judge(shipped("claude", srv, max_tokens=32000, timeout_s=None), tmp_path)
        assert sum(srv.counts.values()) == 0
        # batch requests have no such limit, and a timeout given explicitly is the user's choice
        judge(shipped("claude", srv, max_tokens=32000, timeout_s=900.0), tmp_path)
        assert srv.model_calls == 1


# ---------------------------------------------------------------------------------------------
# Model lifecycle


def test_preflight_refuses_a_retired_or_unknown_model_and_names_the_replacement() -> None:
    with FakeLLMServer(strict_models=True) as srv:
        for model in ("claude-sonnet-4-5", "claude-no-such-model"):
            with pytest.raises(JudgeConfigError, match=r"claude-sonnet-5-5.*Nothing was spent"):
                preflight_judge(shipped("claude", srv, model=model), today=TODAY)
        with pytest.raises(JudgeConfigError, match=r"gpt-6.2-sol.*Nothing was spent"):
            preflight_judge(shipped("gpt4", srv, model="gpt-4"), today=TODAY)
        assert srv.model_calls == 0
        active = preflight_judge(shipped("claude", srv), today=TODAY)
        assert active["status"] == "active" and active["source"] == "anthropic models.retrieve"


def test_preflight_warns_about_a_deprecated_model_with_its_date(caplog: pytest.LogCaptureFixture) -> None:
    with FakeLLMServer() as srv, caplog.at_level("WARNING"):
        rec = preflight_judge(shipped("claude", srv, model="claude-opus-4-5"), today=TODAY)
        assert rec["status"] == "deprecated" and rec["retires_at"] == "2027-01-22"
        assert "2027-01-22" in rec["warning"] and "2027-01-22" in caplog.text
        rec = preflight_judge(shipped("gpt4", srv, model="gpt-4.1"), today=TODAY)
        assert rec["status"] == "deprecated" and rec["retires_at"] == "2027-01-14" and rec["replacement"] == "gpt-6-luna"
        assert srv.count("GET /v1/models/{id} anthropic") == 1 and srv.count("GET /v1/models/{id} openai") == 1


def test_preflight_retries_a_transient_error_and_says_it_could_not_check_when_it_persists() -> None:
    with FakeLLMServer(model_faults=["529"]) as srv:  # once: the SDK's retry gets the answer
        rec = preflight_judge(shipped("claude", srv, max_retries=2), today=TODAY)
        assert rec["status"] == "active" and srv.count("GET /v1/models/{id} anthropic") == 2
    for name, kind in (("claude", "anthropic"), ("gpt4", "openai")):
        with FakeLLMServer(model_faults=["529"] * 3) as srv:
            with pytest.raises(JudgeConfigError) as err:
                preflight_judge(shipped(name, srv, max_retries=2), today=TODAY)
            assert srv.count(f"GET /v1/models/{{id}} {kind}") == 3 and srv.model_calls == 0
        text = str(err.value)
        assert "could not check the model's lifecycle (HTTP 529" in text and "judge.preflight=false" in text
        assert "unknown model" not in text and "check the key" not in text and "Nothing was spent" in text


def test_preflight_offline_falls_back_to_the_tables_and_can_be_skipped() -> None:
    with FakeLLMServer() as srv:
        url = srv.anthropic_url  # closed once the block ends: nothing listens there any more
    rec = preflight_judge(shipped("claude", None, base_url=url, max_retries=0, model="claude-opus-4-5"), today=TODAY)
    assert rec["status"] == "deprecated" and rec["retires_at"] == "2027-01-22"
    assert rec["source"].startswith("offline") and "SDK deprecated_models" in rec["source"]
    with pytest.raises(JudgeConfigError, match="retired on 2026-11-30"):
        preflight_judge(shipped("claude", None, base_url=url, max_retries=0, model="claude-sonnet-4-5"), today=TODAY)
    assert preflight_judge(shipped("claude", None, base_url=url, max_retries=0), today=TODAY)["status"] == "unverified"
    skipped = preflight_judge(shipped("claude", None, base_url=url, model="claude-sonnet-4-5", preflight=False))
    assert skipped["checked"] is False and skipped["status"] == "skipped" and "preflight=false" in skipped["source"]


# ---------------------------------------------------------------------------------------------
# Cache key, spend limits, repeated client errors


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_changing_temperature_misses_the_cache(provider: str, tmp_path: Path) -> None:
    with FakeLLMServer() as srv:
        name = "claude" if provider == "anthropic" else "gpt4"
        cfg = shipped(name, srv, model="fake-judge", prices_for="fake-judge", temperature=0.0)
        judge(cfg, tmp_path)
        judge(cfg, tmp_path)
        assert srv.model_calls == 1  # the same request: served from the cache
        judge(shipped(name, srv, model="fake-judge", prices_for="fake-judge", temperature=0.7), tmp_path)
        assert srv.model_calls == 2
        judge(shipped(name, srv, model="fake-judge", prices_for="fake-judge", temperature=0.0, effort="high"),
              tmp_path)
        assert srv.model_calls == 3  # and so does any other setting that shapes the answer


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_spend_limit_stops_at_once_and_keeps_finished_verdicts(provider: str, tmp_path: Path) -> None:
    with FakeLLMServer(fail_with="spend_limit", fail_after=2) as srv:
        cfg = shipped("claude" if provider == "anthropic" else "gpt4", srv, max_retries=4)
        rows: list[dict[str, Any]] = []
        with pytest.raises(JudgeStopped, match="spend limit") as err:
            judge(cfg, tmp_path, n=5, on_row=rows.append)
        assert srv.model_calls == 3  # two answers, then one refused call: not retried, nothing more sent
        assert ("enforced_spend_limit_reached" if provider == "anthropic" else "insufficient_quota") in str(err.value)
        assert len(rows) == 2 and len(list((tmp_path / "cache").rglob("*.json"))) == 2


def test_the_same_client_error_three_times_stops_the_run(tmp_path: Path) -> None:
    with FakeLLMServer(fail_with="not_found") as srv:
        with pytest.raises(JudgeStopped, match=r"3 times.*404: model: no-such-model"):
            judge(shipped("claude", srv), tmp_path, n=6)
        assert srv.model_calls == 3  # concurrency 1: no call after the third


# ---------------------------------------------------------------------------------------------
# Through the CLI


FAST_CLI = ["model=tiny_instruct", "generation.max_new_tokens=8", "stage.sentinel=false", "judge.spot_check=0"]


def test_cli_retired_judge_model_is_refused_before_any_generation(tmp_path: Path, posttrain_home: Path,
                                                                   shared_cache: Path) -> None:
    from tests.helpers import posttrain

    run = tmp_path / "run"
    with FakeLLMServer() as srv:
        proc = posttrain(*FAST_CLI, "scorer=llm", "judge=claude", f"judge.base_url={srv.url}",
                         "judge.model=claude-sonnet-4-5", "judge.prices_for=claude-sonnet-4-5", "benchmark.limit=2",
                         f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache, check=False)
        assert sum(srv.counts.values()) == 1 and srv.count("GET /v1/models/{id} anthropic") == 1  # the preflight only
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "claude-sonnet-4-5" in proc.stderr and "judge.model=claude-sonnet-5-5" in proc.stderr
    assert "Nothing was spent" in proc.stderr
    assert not (run / "generations.jsonl").exists()  # 0 generations


def test_cli_deprecated_model_warns_and_records_the_date(tmp_path: Path, posttrain_home: Path,
                                                         shared_cache: Path) -> None:
    from tests.helpers import posttrain

    run = tmp_path / "run"
    with FakeLLMServer() as srv:
        proc = posttrain(*FAST_CLI, "scorer=llm", "judge=claude", f"judge.base_url={srv.url}",
                         "judge.model=claude-opus-4-5", "judge.prices_for=claude-opus-4-5", "benchmark.limit=1",
                         f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache)
    assert "deprecated and retires on 2027-01-22" in proc.stdout + proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    pre = summary["judge_preflight"]["judge"]
    assert pre["status"] == "deprecated" and pre["retires_at"] == "2027-01-22" and pre["checked"] is True
    assert summary["judge_settings"] == {"temperature": None, "max_tokens": 16000, "thinking": "adaptive",
                                         "effort": "medium", "structured_output": "json_schema"}


def test_cli_judge_refusing_every_request_stops_with_its_message_and_keeps_generations(
        tmp_path: Path, posttrain_home: Path, shared_cache: Path) -> None:
    from tests.helpers import posttrain

    run = tmp_path / "run"
    common = (*FAST_CLI, "benchmark.limit=4", f"hydra.run.dir={run}")
    posttrain(*common, "scorer=heuristic_triage", home=posttrain_home, cache=shared_cache)
    # tiny models write empty replies, which are failed without a call; give the judge text to grade
    gens = read_jsonl(run / "generations.jsonl")
    for g in gens:
        for t in g["turns"]:
            t["reply"] = f"Here is my answer to: {t['user'][:40]}"
    (run / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    before = (run / "generations.jsonl").read_bytes()
    with FakeLLMServer(fail_with="invalid_request") as srv:
        proc = posttrain(*common, "scorer=llm", "judge=claude", f"judge.base_url={srv.url}", "judge.concurrency=1",
                         home=posttrain_home, cache=shared_cache, check=False)
        assert srv.model_calls == 3
    assert proc.returncode != 0
    assert "messages: text content blocks must be non-empty" in proc.stderr and "3 times" in proc.stderr
    assert (run / "generations.jsonl").read_bytes() == before  # kept for the rerun, not regenerated
