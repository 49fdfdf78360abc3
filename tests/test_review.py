"""Issue 20 §5-§6: training recomputes the gate, and a person confirms it before anything trains.

The sweeps are written once per session as the eval stage writes them (summary.json, items.jsonl of
the real conversations benchmark with its 33 templates, generations.jsonl, scores.jsonl with judge
verdicts, checks and evidence; primary.json through the sweep callback's own ``write_primary``),
then copied per test, so a test that confirms or forges changes only its copy. The judge instrument
is calibrated in each test's POSTTRAIN_HOME with 30 human labels (kappa 1.0).

Two tests run the real entrypoint and sit in the ``e2e`` tier (``make e2e``): SFT after a confirmed
PASS (about 50 s), and the Done-when cases on a sweep of real judged runs (two evals of the 200
conversations judged through the anthropic SDK by the loopback judge: about 2 min 15 s on 2 busy cores).

The ``browser`` tests render review.html in Debian's headless chromium (``make test-browser``);
without chromium they FAIL with the command that installs it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from posttrain.errors import PosttrainError
from posttrain.records import read_json, read_jsonl, write_json, write_jsonl
from tests.helpers import SESSION_RUNS

BASE, INSTRUCT = "tiny_base", "tiny_instruct"
HOSTILE = ('<script>window.__pwned = 1</script><img src="http://example.invalid/leak.png" '
           'onerror="window.__pwned = 2"> & "quotes"')


def _instrument() -> dict[str, str]:
    from posttrain.judges.prompt import template_sha256

    return {"provider": "anthropic", "model": "claude-judge-test", "template_version": "conv-judge-v2",
            "template_sha256": template_sha256("conv-judge-v2")}


def _calibrate(inst: dict[str, str] | None = None) -> None:
    """A stored human calibration of the instrument: 30 labels, 15 pass / 15 fail, all agreeing (kappa 1)."""
    from posttrain.judges.calibration import instrument_key, kappa_from_labels
    from posttrain.paths import calibration_dir

    inst = inst or _instrument()
    labels = [{"sample_id": f"s{k:02d}", "judge": "claude", "judge_provider": inst["provider"],
               "judge_model": inst["model"], "template_version": inst["template_version"],
               "template_sha256": inst["template_sha256"], "judge_verdict": v, "human_label": v}
              for k, v in enumerate(["pass", "fail"] * 15)]
    key = instrument_key(inst)
    write_json(calibration_dir() / f"{key}.json", {"key": key, "instrument": inst, "judge": "claude",
                                                    **kappa_from_labels(labels), "labels": labels})


@pytest.fixture(autouse=True)
def calibrated(posttrain_home: Path) -> None:
    _calibrate()


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from posttrain.config import register_configs
    from tests.conftest import CONF_DIR

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


PRIMARY = f"gate.primary=[{{treatment:{INSTRUCT},control:{BASE}}}]"


def _turn_verdict(item: dict[str, Any], k: int, verdict: str, reply: str) -> dict[str, Any]:
    if verdict == "error":
        return {"turn": k, "verdict": "error", "checks": [], "rationale": "judge error: read timeout"}
    ok = verdict == "pass"
    checks = [{"name": "answers the last user message", "passed": ok,
               "detail": f'quotes "{reply[:30]}"' if ok else "the reply does not address the question"},
              {"name": "consistent with earlier turns", "passed": True, "detail": f'"{reply[:20]}"'}]
    return {"turn": k, "verdict": verdict, "checks": checks,
            "rationale": "all checks hold" if ok else "a required check failed"}


def _write_job(sweep: Path, num: int, model: str, kind: str, items: list[dict[str, Any]],
               verdict: Callable[[int], str], bench: Any, cfg: Any) -> None:
    """One finished eval job's records, in the eval stage's format (docs/records.md)."""
    from omegaconf import OmegaConf

    from posttrain.analysis import gates
    from posttrain.analysis.registration import job_registration_sha256

    job = sweep / f"{num}_{model}"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    write_jsonl(job / "items.jsonl", items)
    gens, scores = [], []
    inst = _instrument()
    for k, it in enumerate(items):
        v = verdict(k)
        replies = [f"({model}) reply {t + 1} to {it['id']}" + (f" {HOSTILE}" if k == 1 else "")
                   for t in range(len(it["turns"]))]
        gens.append({"item_id": it["id"], "category": it["category"], "source": it.get("source"), "model": model,
                     "prompt_format": "raw", "turns": [
                         {"turn": t, "user": turn["user"], "reply": replies[t], "n_new_tokens": 12,
                          "finish_reason": "stop"} for t, turn in enumerate(it["turns"])]})
        judged = [t for t, turn in enumerate(it["turns"]) if turn.get("expect") is not None] or [0]
        # the conversation fails on its last judged turn; earlier ones pass
        tvs = [_turn_verdict(it, t, v if t == judged[-1] else "pass", replies[t]) for t in judged]
        scores.append({"item_id": it["id"], "category": it["category"], "model": model, "verdict": v,
                       "scorer": "llm", "judge": "claude", "judge_provider": inst["provider"],
                       "judge_model": inst["model"], "template_version": inst["template_version"],
                       "template_sha256": inst["template_sha256"], "judge_settings": {},
                       "turn_verdicts": tvs, "checks": [{"turn": tv["turn"], **c} for tv in tvs for c in tv["checks"]],
                       "rationale": " | ".join(tv["rationale"] for tv in tvs), "input_tokens": 100,
                       "output_tokens": 50, "cost_usd": 0.0, "n_parse_failures": 0, "n_api_errors": 0,
                       "reply_chars": sum(map(len, replies)),
                       "error": "turn 0: judge error: read timeout" if v == "error" else None})
    write_jsonl(job / "generations.jsonl", gens)
    write_jsonl(job / "scores.jsonl", scores)
    info = {"name": bench.name, "split": bench.split, "n": len(items), "sha256": bench.sha256,
            "version": bench.version, "limit": None,
            "item_ids_sha256": gates.item_ids_sha256([it["id"] for it in items])}
    if hasattr(gates, "cluster_info"):
        info |= gates.cluster_info(items)
    n_pass = sum(s["verdict"] == "pass" for s in scores)
    from posttrain.judges.calibration import instrument_key

    write_json(job / "summary.json", {
        "status": "finished", "model": model, "model_kind": kind, "stage": "eval", "benchmark": "conversations",
        "scorer": "llm", "judge": "claude", "judge_instrument": inst,
        "calibration": {"key": instrument_key(inst), "kappa": 1.0, "n": 30, "applies": True, "reason": None},
        "n_items": len(items), "n_pass": n_pass, "benchmark_info": info, "prompt_format": "raw",
        "decoding": {"do_sample": False, "temperature": None, "top_p": None, "max_new_tokens": 64,
                     "stop_strings": [], "seed": 0, "backend": "hf"},
        "model_identity": {"name": model, "path": None, "revision": f"sha256:{model}", "adapter": None,
                           "adapter_sha256": None},
        "registration_sha256": job_registration_sha256(job),
    })


def _base_verdict(k: int) -> str:
    """Base: items k % 9 in (0, 4) pass (45), plus 5 items (k % 40 == 1); one error (k = 2).

    The benchmark interleaves its four categories (k % 4), so every category gets some of each group."""
    return "error" if k == 2 else "pass" if k % 9 in (0, 4) or k % 40 == 1 else "fail"


def _instruct_verdict(k: int) -> str:
    """Instruct: fails k % 20 in (1, 2, 3), passes the rest: 170/200 = .85."""
    return "fail" if k % 20 in (1, 2, 3) else "pass"


def _build(root: Path, base: Callable[[int], str], instruct: Callable[[int], str]) -> Path:
    from posttrain.benchmarks import load_benchmark
    from posttrain.callbacks import write_primary

    bench = load_benchmark("conversations")
    items = [it.to_dict() for it in bench.items]
    sweep = root / "sweep"
    sweep.mkdir(parents=True)
    cfg = _compose(PRIMARY, "scorer=llm", "judge=claude")
    write_primary(cfg, sweep)
    for num, (model, kind, verdict) in enumerate(((BASE, "base", base), (INSTRUCT, "instruct", instruct))):
        _write_job(sweep, num, model, kind, items, verdict, bench, _compose(PRIMARY, f"model={model}", "scorer=llm",
                                                                            "judge=claude"))
    return sweep


@pytest.fixture(scope="session")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sweeps, written once: ``pass`` (base 48/199 = .24 vs instruct .85) and ``fail`` (base .50 vs .85)."""
    if "review_sweeps" not in SESSION_RUNS:
        root = tmp_path_factory.mktemp("review-sweeps")
        SESSION_RUNS["review_sweeps"] = {
            "pass": _build(root / "pass", _base_verdict, _instruct_verdict),
            "fail": _build(root / "fail", lambda k: "pass" if k % 2 == 0 else "fail", _instruct_verdict)}
    return SESSION_RUNS["review_sweeps"]


@pytest.fixture()
def pass_sweep(sweeps: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the PASS sweep with its real comparison.json (written by posttrain-report's code)."""
    from posttrain.analysis.report import write_comparison

    sweep = Path(shutil.copytree(sweeps["pass"], tmp_path / "pass"))
    comp = write_comparison(sweep, plots=False)
    assert comp["gate"]["verdict"] == "PASS", comp["gate"]["reasons"]
    return sweep


@pytest.fixture()
def fail_sweep(sweeps: dict[str, Path], tmp_path: Path) -> Path:
    from posttrain.analysis.report import write_comparison

    sweep = Path(shutil.copytree(sweeps["fail"], tmp_path / "fail"))
    assert write_comparison(sweep, plots=False)["gate"]["verdict"] == "FAIL"
    return sweep


def _train_cfg(compose: Any, sweep: Path | str, *extra: str) -> Any:
    """The real composed config (conftest's ``compose``: the session's tiny-model cache, no tracking)."""
    return compose("stage=sft", "model=tiny_base", f"stage.comparison={sweep}", *extra)


def _plan(compose: Any, sweep: Path | str, *extra: str) -> Any:
    from posttrain.stages.train import plan

    return plan(_train_cfg(compose, sweep, *extra))


def _discordant(sweep: Path) -> list[str]:
    b = {r["item_id"]: r["verdict"] for r in read_jsonl(sweep / f"0_{BASE}" / "scores.jsonl")}
    i = {r["item_id"]: r["verdict"] for r in read_jsonl(sweep / f"1_{INSTRUCT}" / "scores.jsonl")}
    return sorted(k for k in b if "error" not in (b[k], i[k]) and b[k] != i[k])


def _markup(text: str) -> tuple[set[str], set[str], list[str]]:
    """The page's element names, attribute names and <style> texts, as an HTML parser sees them."""
    from html.parser import HTMLParser

    tags: set[str] = set()
    attrs: set[str] = set()
    styles: list[str] = []

    class Collect(HTMLParser):
        in_style = False

        def handle_starttag(self, tag: str, a: list[tuple[str, str | None]]) -> None:
            tags.add(tag)
            attrs.update(k for k, _ in a)
            self.in_style = tag == "style"

        def handle_data(self, data: str) -> None:
            if self.in_style:
                styles.append(data)
                self.in_style = False

    Collect().feed(text)
    return tags, attrs, styles


def _confirm(sweep: Path, reviewed: int = 30) -> dict[str, Any]:
    from posttrain.analysis.review import confirm, write_review

    write_review(sweep)
    return confirm(sweep, reviewer="Ada Reviewer", reviewed=reviewed)


# ---------------------------------------------------------------- §5 training recomputes the gate


def test_a_forged_comparison_is_refused_naming_the_difference(fail_sweep: Path, compose: Any) -> None:
    """The sweep's records give FAIL (base .50 > .30); its comparison.json edited to say PASS is refused."""
    path = fail_sweep / "comparison.json"
    with pytest.raises(PosttrainError, match="is 'FAIL', not 'PASS'"):
        _plan(compose, fail_sweep)  # the honest file is refused as before
    comp = read_json(path)
    comp["gate"]["verdict"] = "PASS"
    comp["gate"]["reasons"] = ["all checks hold"]
    write_json(path, comp)
    with pytest.raises(PosttrainError) as exc:
        _plan(compose, fail_sweep)
    msg = str(exc.value)
    assert "does not match the gate recomputed from the records" in msg and "recomputed verdict FAIL" in msg
    assert "gate.verdict: 'PASS' in comparison.json, 'FAIL' recomputed" in msg
    assert "gate.reasons[0]: 'all checks hold' in comparison.json" in msg
    assert "Nothing was loaded or spent" in msg


def test_a_handwritten_pass_is_refused(pass_sweep: Path, tmp_path: Path, compose: Any) -> None:
    """``{"gate": {"verdict": "PASS"}}``: alone there are no records to recompute from; inside a sweep
    that really PASSes it still differs from the recomputed block in every field it lacks."""
    lone = tmp_path / "lone" / "comparison.json"
    lone.parent.mkdir()
    write_json(lone, {"gate": {"verdict": "PASS"}})
    with pytest.raises(PosttrainError, match="no sweep records are beside it"):
        _plan(compose, lone)
    write_json(pass_sweep / "comparison.json", {"gate": {"verdict": "PASS"}})
    with pytest.raises(PosttrainError) as exc:
        _plan(compose, pass_sweep)
    assert "gate.base_model: missing from comparison.json (recomputed: 'tiny_base')" in str(exc.value)
    assert "gate.checks: missing from comparison.json" in str(exc.value) and " more)" in str(exc.value)


def test_pass_without_a_confirmation_is_refused_naming_what_to_run(pass_sweep: Path, compose: Any) -> None:
    with pytest.raises(PosttrainError) as exc:
        _plan(compose, pass_sweep)
    msg = str(exc.value)
    assert "is PASS, but no person has confirmed it" in msg
    assert f"`posttrain-review {pass_sweep.resolve()}`" in msg and "--confirm --reviewer NAME --reviewed N" in msg
    assert "stage.override_gate=true" in msg and "Nothing was loaded or spent" in msg


def test_pass_with_a_matching_confirmation_proceeds(pass_sweep: Path, compose: Any) -> None:
    from posttrain.analysis.report import recompute_gate
    from posttrain.analysis.review import gate_sha256

    entry = _confirm(pass_sweep)
    plan = _plan(compose, pass_sweep)
    gate = plan.state["gate"]
    assert gate["gate_override"] is False and gate["verdict"] == "PASS" and gate["gate_recomputed"] is True
    assert gate["gate_sha256"] == entry["gate_sha256"] == gate_sha256(recompute_gate(pass_sweep))
    assert gate["review"]["reviewer"] == "Ada Reviewer" and gate["review"]["n_reviewed"] == 30
    assert any("confirmed by Ada Reviewer" in n for n in plan.notes)


def test_a_confirmation_of_another_gate_is_refused(pass_sweep: Path, compose: Any) -> None:
    """Confirmed, then the records change (one base verdict flips) and the report is rerun: the
    recomputed gate is another one, so the old confirmation does not cover it."""
    from posttrain.analysis.report import write_comparison

    old = _confirm(pass_sweep)
    scores = pass_sweep / f"0_{BASE}" / "scores.jsonl"
    rows = read_jsonl(scores)
    flip = next(r for r in rows if r["verdict"] == "pass")
    flip["verdict"] = "fail"
    write_jsonl(scores, rows)
    assert write_comparison(pass_sweep, plots=False)["gate"]["verdict"] == "PASS"
    with pytest.raises(PosttrainError) as exc:
        _plan(compose, pass_sweep)
    msg = str(exc.value)
    assert f"review.json confirms gate sha256 {old['gate_sha256'][:12]}... (by Ada Reviewer" in msg
    assert "the records, primary.json or the calibration changed since that review" in msg


def test_override_still_bypasses_and_is_recorded(pass_sweep: Path, compose: Any) -> None:
    plan = _plan(compose, pass_sweep, "stage.override_gate=true")
    assert plan.state["gate"]["gate_override"] is True
    assert any("GATE OVERRIDDEN" in n for n in plan.notes)


# ---------------------------------------------------------------- §6 the review page and the confirmation


def test_review_page_shows_discordant_first_escapes_and_loads_nothing(pass_sweep: Path) -> None:
    import re

    from posttrain.analysis.review import GROUPS, write_review

    path, review = write_review(pass_sweep, sample=7, seed=3)
    text = path.read_text(encoding="utf-8")
    disc = _discordant(pass_sweep)
    assert len(disc) == 140  # instruct only 131 + base only 9 (_base_verdict, _instruct_verdict)
    shown = re.findall(r'data-item="([^"]+)"', text)
    assert shown[:len(disc)] == [i for g in ("instruct_only", "base_only") for i in disc
                                 if i in {it.item_id for p in review.pairs for it in p.items if it.group == g}]
    assert set(shown[:len(disc)]) == set(disc)
    groups = re.findall(r'data-group="([^"]+)"', text)
    assert groups.count("both") + groups.count("neither") == 7 and groups.count("dropped") == 1
    assert list(dict.fromkeys(groups)) == [g for g in GROUPS if g in groups]  # discordant first, then the sample
    # gate summary at the top, with the sha256 a confirmation names
    assert text.index('id="verdict">PASS<') < text.index("data-item=") and review.gate_sha256 in text
    # every verdict with its checks and evidence; the records' text is escaped, never markup
    assert "answers the last user message" in text and "the reply does not address the question" in text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=&quot;http://example.invalid" in text
    assert "<img" not in text and text.count("<script>") == 1
    # nothing from outside: the parsed markup has no element or attribute that fetches, no CSS url()/@import
    tags, attrs, styles = _markup(text)
    assert not tags & {"img", "link", "iframe", "object", "embed", "video", "audio", "source", "base", "form"}
    assert not attrs & {"src", "href", "srcset", "poster", "data", "action", "formaction", "background"}
    assert styles and not any(re.search(r"url\(|@import", css) for css in styles)
    assert _markup('<p>x</p><img src="a.png">')[0] >= {"img"}  # the parser sees what it must refuse
    # the same seed gives the same sample
    assert write_review(pass_sweep, sample=7, seed=3)[0].read_text(encoding="utf-8") == text


def test_confirm_records_who_when_how_many_and_the_gate(pass_sweep: Path) -> None:
    from posttrain.analysis.report import recompute_gate
    from posttrain.analysis.review import ReviewError, confirm, gate_sha256, main, write_review

    with pytest.raises(ReviewError, match="run `posttrain-review"):
        confirm(pass_sweep, reviewer="Ada", reviewed=5)  # no page read yet
    assert main([str(pass_sweep)]) == 0
    n_items = write_review(pass_sweep)[1].n_items
    assert n_items == 140 + 20 + 1
    with pytest.raises(ReviewError, match=f"the page shows {n_items} items"):
        confirm(pass_sweep, reviewer="Ada", reviewed=0)
    with pytest.raises(ReviewError, match="--reviewer is empty"):
        confirm(pass_sweep, reviewer="  ", reviewed=5)
    assert main([str(pass_sweep), "--confirm", "--reviewer", "Ada", "--reviewed", "40"]) == 0
    rec = read_json(pass_sweep / "review.json")
    (c,) = rec["confirmations"]
    assert (c["reviewer"], c["n_reviewed"], c["n_discordant"]) == ("Ada", 40, 140)
    assert c["gate_sha256"] == gate_sha256(recompute_gate(pass_sweep)) and c["confirmed_at"].endswith("+00:00")
    confirm(pass_sweep, reviewer="Grace", reviewed=161)
    assert [x["reviewer"] for x in read_json(pass_sweep / "review.json")["confirmations"]] == ["Ada", "Grace"]


def test_confirm_refuses_a_gate_that_is_not_pass(fail_sweep: Path) -> None:
    from posttrain.analysis.review import ReviewError, confirm, write_review

    write_review(fail_sweep)
    with pytest.raises(ReviewError, match="is FAIL, not PASS: there is nothing to confirm"):
        confirm(fail_sweep, reviewer="Ada", reviewed=5)
    assert not (fail_sweep / "review.json").exists()


def test_gate_differences_name_fields_and_take_nan() -> None:
    from posttrain.stages.train import gate_differences

    a = {"verdict": "PASS", "observed": {"cluster_p": 0.01, "icc": float("nan")}, "n_paired": 200}
    b = {"verdict": "FAIL", "observed": {"cluster_p": 0.0625, "icc": float("nan")}, "n_paired": 200.0}
    assert gate_differences(a, b) == ["gate.verdict: 'PASS' in comparison.json, 'FAIL' recomputed",
                                      "gate.n_paired: 200 in comparison.json, 200.0 recomputed",
                                      "gate.observed.cluster_p: 0.01 in comparison.json, 0.0625 recomputed"]
    assert gate_differences(a, json.loads(json.dumps(a))) == []


@pytest.mark.e2e
def test_sft_runs_after_a_confirmed_pass_and_records_the_review(pass_sweep: Path, tmp_path: Path,
                                                                shared_cache: Path, posttrain_home: Path) -> None:
    """The real entrypoint: stage=sft with the confirmed sweep trains, and its records carry the gate's
    sha256 and the reviewer (no override anywhere)."""
    from tests.helpers import posttrain

    _confirm(pass_sweep)
    run = tmp_path / "run"
    posttrain("stage=sft", "model=tiny_base", f"stage.comparison={pass_sweep}", "tracking=offline",
              "stage.num_examples=24", "stage.max_steps=4", "stage.save_steps=4", "generation.batch_size=8",
              f"hydra.run.dir={run}", home=posttrain_home, cache=shared_cache, timeout=600)
    s = read_json(run / "summary.json")
    assert s["status"] == "finished" and s["gate_override"] is False
    assert s["gate"]["review"]["reviewer"] == "Ada Reviewer" and s["gate"]["gate_recomputed"] is True


# ---------------------------------------------------------------- §6 the page in a real browser


# Chromium's own background services (component updater, sign-in, network time): they call out from
# any profile whatever the page holds, so they are told apart by exact host, not counted as the page's.
CHROMIUM_SERVICES = {"update.googleapis.com", "accounts.google.com", "clients2.google.com",
                     "clientservices.googleapis.com", "redirector.gvt1.com", "optimizationguide-pa.googleapis.com"}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the browser tests need Debian's chromium: `apt-get update && apt-get install -y chromium` "
                    "(as root; `make test-browser` does it when it is missing)", pytrace=False)
    return found


class _Proxy:
    """A dead-end HTTP proxy on loopback: records the first request line of every connection and
    answers nothing, so the browser reaches no network and every attempt is logged."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(4096).split(b"\r\n")[0].decode("latin-1"))
            except OSError:
                pass
            conn.close()

    def page_hosts(self) -> set[str]:
        import re

        hosts = set()
        for line in self.requests:
            m = re.match(r"(?:CONNECT (?P<h1>[^:\s]+)|[A-Z]+ \w+://(?P<h2>[^/:\s]+))", line)
            if m:
                hosts.add(m.group("h1") or m.group("h2"))
        return hosts - CHROMIUM_SERVICES


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Run headless chromium on a file through the recording proxy; returns the dumped DOM."""
    exe = _chromium()
    proxy = _Proxy()

    def run(url: str, *extra: str) -> str:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", f"--proxy-server=127.0.0.1:{proxy.port}",
             "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=3000", *extra, url],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run.proxy = proxy  # type: ignore[attr-defined]
    yield run
    proxy.sock.close()


@pytest.mark.browser
def test_browser_detects_a_page_that_loads_from_outside(browser: Any, tmp_path: Path) -> None:
    """The control: the same set-up sees a page's external image, so the check below can fail."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><p>x</p><img src="http://example.invalid/a.png">', encoding="utf-8")
    browser(page.as_uri(), "--dump-dom")
    assert "example.invalid" in browser.proxy.page_hosts()


@pytest.mark.browser
def test_review_page_renders_every_discordant_item_and_loads_nothing(browser: Any, pass_sweep: Path,
                                                                     tmp_path: Path) -> None:
    import re

    from posttrain.analysis.review import write_review

    path, review = write_review(pass_sweep)
    dom = browser(path.as_uri(), "--dump-dom")
    assert not browser.proxy.page_hosts(), browser.proxy.requests
    rendered = re.findall(r'<div class="item g-[^"]+" id="item-[^"]+" data-item="([^"]+)"', dom)
    disc = _discordant(pass_sweep)
    assert set(disc) <= set(rendered) and len(rendered) == review.n_items
    assert re.search(r'<span id="shown">161</span>', dom)  # the filter script ran: every item shown
    assert "window.__pwned" in dom and "<img" not in dom  # the hostile reply is text, not an element
    # the category filter, preselected by the URL: only that category's items stay visible
    memory = [it.item_id for p in review.pairs for it in p.items if it.category == "memory"]
    assert memory
    dom = browser(path.as_uri() + "#category=memory", "--dump-dom")
    visible = re.findall(r'<div class="item [^"]+" id="item-[^"]+" data-item="([^"]+)" data-category="[^"]+" '
                         r'data-group="[^"]+">', dom)
    assert sorted(visible) == sorted(memory)
    assert f'<span id="shown">{len(memory)}</span>' in dom
    shot = tmp_path / "review.png"
    browser(path.as_uri(), f"--screenshot={shot}", "--window-size=1400,1600", "--hide-scrollbars")
    assert shot.stat().st_size > 10_000
    assert not browser.proxy.page_hosts(), browser.proxy.requests


# ---------------------------------------------------------------- the same, from real judged runs (e2e)

# Both arms decode alike (sampled at temperature 10, seeded: the tiny models' greedy replies are blank
# lines, which the non_empty check fails without asking the judge) and are judged through the real
# anthropic SDK by the loopback judge; only the judge's scripted coin differs between the arms.
JUDGED = ["stage.sentinel=false", "generation.max_new_tokens=8", "generation.batch_size=16",
          "generation.do_sample=true", "generation.temperature=10.0", "generation.top_p=1.0",
          "scorer=llm", "judge=claude", "judge.spot_check=0", "tracking=disabled", PRIMARY]


def _coin(pass_per_mille: int) -> Callable[[str], dict[str, Any]]:
    """A verdict keyed on the prompt's hash: each judged turn passes with probability ~pass_per_mille/1000;
    the answer is the fake judge's own checklist forced to pass or fail, so it holds the evidence rules."""
    import hashlib

    from tests.llm_server import sensible_verdict

    def verdict(prompt: str) -> dict[str, Any]:
        h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 1000
        return sensible_verdict(prompt, force=h < pass_per_mille)
    return verdict


@pytest.fixture(scope="session")
def judged_sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """tiny_base and tiny_instruct on all 200 conversations, judged by the loopback judge (base: ~1 turn
    in 3 passes, instruct: ~97 in 100), in one sweep folder with primary.json registered first."""
    if "review_judged_sweep" not in SESSION_RUNS:
        from posttrain.callbacks import write_primary
        from tests.helpers import posttrain
        from tests.llm_server import FakeLLMServer

        root = tmp_path_factory.mktemp("review-judged")
        sweep, home = root / "sweep", root / "home"
        sweep.mkdir()
        write_primary(_compose(PRIMARY, "scorer=llm", "judge=claude"), sweep)
        for num, (model, odds) in enumerate(((BASE, 330), (INSTRUCT, 970))):
            with FakeLLMServer(verdict_fn=_coin(odds)) as srv:
                posttrain(f"model={model}", *JUDGED, f"judge.base_url={srv.url}", f"hydra.run.dir={sweep}/{num}_{model}",
                          home=home, cache=shared_cache, timeout=900)
        SESSION_RUNS["review_judged_sweep"] = sweep
    return SESSION_RUNS["review_judged_sweep"]


@pytest.fixture()
def judged(judged_sweep: Path, tmp_path: Path) -> Path:
    """A copy of the judged sweep, its judge calibrated in this test's POSTTRAIN_HOME, its comparison written."""
    from posttrain.analysis.report import write_comparison

    sweep = Path(shutil.copytree(judged_sweep, tmp_path / "judged"))
    _calibrate(read_json(sweep / f"0_{BASE}" / "summary.json")["judge_instrument"])
    gate = write_comparison(sweep, plots=False)["gate"]
    assert gate["verdict"] == "PASS", gate["reasons"]
    return sweep


@pytest.mark.e2e
def test_judged_runs_pass_without_confirmation_refused_forgery_refused_confirmed_proceeds(judged: Path,
                                                                                        compose: Any) -> None:
    """The Done-when cases on real judged runs: the gate PASSes from the records; stage=sft without a
    confirmation is refused; a forged comparison.json (one number changed) is refused naming it; the
    honest one with a confirmation plans."""
    from posttrain.analysis.review import write_review

    with pytest.raises(PosttrainError, match="is PASS, but no person has confirmed it"):
        _plan(compose, judged)
    path, review = write_review(judged)
    assert set(_discordant(judged)) <= {it.item_id for p in review.pairs for it in p.items}
    honest = read_json(judged / "comparison.json")
    forged = json.loads(json.dumps(honest))
    forged["gate"]["n_paired"] += 50  # "more evidence" than the records hold
    write_json(judged / "comparison.json", forged)
    with pytest.raises(PosttrainError, match=r"gate\.n_paired: \d+ in comparison\.json, \d+ recomputed"):
        _plan(compose, judged)
    write_json(judged / "comparison.json", honest)
    _confirm(judged, reviewed=10)
    gate = _plan(compose, judged).state["gate"]
    assert gate["gate_recomputed"] is True and gate["review"]["n_reviewed"] == 10
