"""`make bench`: the performance figures of docs/benchmarks.md, measured on this machine.

Each figure is the median of several repeats, and each is reported with the ratio that should
hold across machines (batched / sequential, measured / ideal, ...), since absolute seconds do
not. Nothing here is a test: a slow machine gives slower numbers, not a failure.

Run: ``python bench/run.py --out docs/benchmarks.md [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.llm_server, the loopback API used as the judge
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def bench_generation(cache: Path, repeats: int, n_prompts: int = 64, new_tokens: int = 32) -> dict[str, Any]:
    """Batched (one call of 64) against one prompt at a time, greedy, tiny_base, transcript format."""
    from omegaconf import OmegaConf

    from posttrain.config import ModelConfig, PromptConfig
    from posttrain.generation.backends import HFBackend, SamplingParams
    from posttrain.generation.prompts import render_prompt, stop_strings
    from posttrain.models.loader import load_model

    cfg = OmegaConf.structured(ModelConfig(name="tiny_base", path="tiny_base", tiny="base", kind="base",
                                           dtype="float32"))
    lm = load_model(cfg, cache_dir=cache, device="cpu")
    pc = PromptConfig()
    prompts = [render_prompt([(f"My name is Alice and I live in city {i}." + " Please." * (i % 5), None)],
                             "transcript", pc, kind="base") for i in range(n_prompts)]
    be = HFBackend(lm.model, lm.tokenizer, "cpu")
    out: dict[str, Any] = {"n_prompts": n_prompts, "new_tokens": new_tokens}
    for label, stops in (("no_stop_strings", ()), ("with_stop_strings", tuple(stop_strings("transcript", pc)))):
        params = SamplingParams(max_new_tokens=new_tokens, stop_strings=stops)
        seq_repeats = max(1, repeats // 2)  # the slow side: fewer repeats
        tb, _, gb = median_time(lambda p=params: be.generate(prompts, p), repeats)
        ts, _, gs = median_time(lambda p=params: [be.generate([x], p)[0] for x in prompts], seq_repeats)
        tokens = sum(g.n_new_tokens for g in gb)
        out[label] = {"batched_s": tb, "sequential_s": ts, "batched_tok_s": tokens / tb,
                      "sequential_tok_s": sum(g.n_new_tokens for g in gs) / ts, "ratio": ts / tb,
                      "identical_outputs": gb == gs, "batched_runs": repeats, "sequential_runs": seq_repeats}
    return out


def bench_judge(repeats: int, latency: float = 0.5, n_items: int = 24) -> dict[str, Any]:
    """Judge concurrency 1, 4, 16 against a loopback server adding ``latency`` seconds per call."""
    from omegaconf import OmegaConf

    from posttrain.benchmarks import load_benchmark
    from posttrain.config import load_group_option
    from posttrain.judges import judge_generations
    from tests.llm_server import FakeLLMServer

    items = load_benchmark("conversations", limit=n_items).items
    rows = [{"item_id": it.id, "category": it.category, "source": it.source, "model": "m", "prompt_format": "x",
             "turns": [{"turn": k, "user": t.user, "prompt_sha256": "", "reply": f"reply {k}", "n_prompt_tokens": 1,
                        "n_new_tokens": 1, "finish_reason": "eos"} for k, t in enumerate(it.turns)]} for it in items]
    n_calls = sum(len(it.judged_turns) for it in items)
    os.environ.setdefault("ANTHROPIC_API_KEY", "bench-key")
    out: dict[str, Any] = {"latency_s": latency, "judged_turns": n_calls, "levels": {}}
    with FakeLLMServer(latency_s=latency) as srv:
        for conc in (1, 4, 16):
            cfg = OmegaConf.merge(load_group_option("judge", "claude"), {"base_url": srv.url, "concurrency": conc})

            def once(c: Any = cfg) -> None:
                with tempfile.TemporaryDirectory() as d:
                    judge_generations(items, rows, c, cache_dir=Path(d), progress=False)

            runs = repeats if conc > 1 else 1  # concurrency 1 takes ~30 s a run: once
            t, _, _ = median_time(once, runs)
            ideal = -(-n_calls // conc) * latency  # ceil(calls / concurrency) waves x latency
            out["levels"][str(conc)] = {"seconds": t, "ideal_s": ideal, "vs_ideal": t / ideal, "runs": runs}
        # A cached rerun: the second run over the same cache makes no API call.
        cfg = OmegaConf.merge(load_group_option("judge", "claude"), {"base_url": srv.url, "concurrency": 16})
        with tempfile.TemporaryDirectory() as d:
            t_first, _, _ = median_time(lambda: judge_generations(items, rows, cfg, cache_dir=Path(d), progress=False), 1)
            before = srv.model_calls
            t_cached, _, _ = median_time(lambda: judge_generations(items, rows, cfg, cache_dir=Path(d),
                                                                   progress=False), repeats)
            out["cached_rerun"] = {"first_s": t_first, "cached_s": t_cached, "reruns": repeats,
                                   "api_calls_in_reruns": srv.model_calls - before}
    s1 = out["levels"]["1"]["seconds"]
    for v in out["levels"].values():
        v["speedup"] = s1 / v["seconds"]
    return out


def _cli(args: list[str], home: Path, cache: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one posttrain run in its own process."""
    env = os.environ | {"POSTTRAIN_HOME": str(home), "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", f"cache_dir={cache}", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"posttrain {' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    return wall, usage.ru_maxrss


def bench_resume(home: Path, cache: Path) -> dict[str, Any]:
    """Generation time of a full eval against a rerun after a kill at 50% (half the rows kept)."""
    with tempfile.TemporaryDirectory() as d:
        full, cut = Path(d) / "full", Path(d) / "cut"
        args = ["model=tiny_base", "scorer=heuristic_triage", "benchmark.split=pilot", "stage.sentinel=false",
                "generation.max_new_tokens=48", "tracking=disabled"]
        _cli([*args, f"hydra.run.dir={full}"], home, cache)
        lines = (full / "generations.jsonl").read_text().splitlines(keepends=True)
        cut.mkdir()
        (cut / "generations.jsonl").write_text("".join(lines[: len(lines) // 2]))
        _cli([*args, f"hydra.run.dir={cut}"], home, cache)
        g_full = json.loads((full / "summary.json").read_text())["generation"]
        g_cut = json.loads((cut / "summary.json").read_text())["generation"]
        same = (cut / "generations.jsonl").read_text() == (full / "generations.jsonl").read_text()
    return {"full_generation_s": g_full["generation_seconds"], "resumed_generation_s": g_cut["generation_seconds"],
            "reused": g_cut["reused"], "generated": g_cut["generated"],
            "saving": 1 - g_cut["generation_seconds"] / g_full["generation_seconds"], "records_identical": same}


def bench_dpo(home: Path, cache: Path, repeats: int) -> dict[str, Any]:
    """stage=dpo_only with and without precomputed reference log-probabilities (time, peak RSS)."""
    out: dict[str, Any] = {}
    for pre in (False, True):
        walls, rss = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as d:
                w, r = _cli(["stage=dpo_only", "model=tiny_base", "stage.override_gate=true",
                             f"stage.precompute_ref_log_probs={str(pre).lower()}", f"hydra.run.dir={d}/run"], home, cache)
            walls.append(w)
            rss.append(r)
        out["precompute" if pre else "on_the_fly"] = {"wall_s": statistics.median(walls),
                                                      "peak_rss_mib": statistics.median(rss) / 1024, "runs": repeats}
    return out


def bench_startup(repeats: int) -> dict[str, Any]:
    t, _, _ = median_time(lambda: subprocess.run([sys.executable, "-m", "posttrain", "--help"], cwd=REPO,
                                                 capture_output=True, check=True), repeats)
    c, _, _ = median_time(lambda: subprocess.run([sys.executable, "-m", "posttrain", "--cfg", "job", "model=qwen32b",
                                                  "scorer=llm"], cwd=REPO, capture_output=True, check=True), repeats)
    return {"help_s": t, "cfg_job_s": c}


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def render(results: dict[str, Any]) -> str:
    m, g, j = results["machine"], results["generation"], results["judge"]
    lines = [
        "# Benchmarks", "",
        f"Measured by `make bench` (bench/run.py) on {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['threads']} threads), Python {m['python']}, {m['date']}. Each figure is the median of "
        f"{results['repeats']} repeats unless noted; ratios travel across machines, seconds do not. "
        "Raw numbers: `docs/benchmarks.json`.", "",
        "## Generation: batched against one prompt at a time",
        f"tiny_base, {g['n_prompts']} prompts x {g['new_tokens']} greedy tokens, transcript format.", "",
        "| | batched s | sequential s | batched tok/s | sequential tok/s | ratio | same outputs |", "|---|---|---|---|---|---|---|",
    ]
    for label in ("no_stop_strings", "with_stop_strings"):
        r = g[label]
        lines.append(f"| {label.replace('_', ' ')} | {r['batched_s']:.3f} | {r['sequential_s']:.3f} | "
                     f"{r['batched_tok_s']:.0f} | {r['sequential_tok_s']:.0f} | **{r['ratio']:.1f}x** | {r['identical_outputs']} |")
    r0 = g["no_stop_strings"]
    lines += ["", f"Batched: median of {r0.get('batched_runs', results['repeats'])} runs; sequential (64 calls a run): "
              f"median of {r0.get('sequential_runs', 1)} run(s).", "With stop strings each `generate` call also builds transformers' stop-string matcher, a fixed "
              "cost per call that batching pays once per batch.", "",
              "## Judge concurrency against a loopback API with injected latency",
              f"{j['judged_turns']} judged turns, {j['latency_s']:.2f} s added to every call by the server; "
              "ideal = ceil(turns / concurrency) x latency.", "",
              "| concurrency | runs (median) | seconds | ideal s | measured / ideal | speedup vs 1 |",
              "|---|---|---|---|---|---|"]
    for c, v in j["levels"].items():
        lines.append(f"| {c} | {v.get('runs', '?')} | {v['seconds']:.2f} | {v['ideal_s']:.2f} | {v['vs_ideal']:.2f}x | "
                     f"{v['speedup']:.1f}x |")
    cr = j["cached_rerun"]
    lines += ["", "## Cached rerun",
              f"The same judging again over the same cache: {cr['first_s']:.2f} s first (one run), "
              f"{cr['cached_s']:.3f} s rerun (median of {cr.get('reruns', results['repeats'])}), "
              f"**{cr['api_calls_in_reruns']} API calls** in the reruns.", ""]
    if "resume" in results:
        r = results["resume"]
        lines += ["## Resume after a kill at 50%",
                  f"Eval of the 40-conversation pilot on tiny_base (48 new tokens per turn): generation took "
                  f"{r['full_generation_s']:.2f} s uninterrupted; after keeping half the rows (a kill at 50%), the rerun "
                  f"reused {r['reused']}, generated {r['generated']} in {r['resumed_generation_s']:.2f} s "
                  f"(**{100 * r['saving']:.0f}% saved**); records identical to the uninterrupted run: {r['records_identical']}. "
                  "One run each; the kill is simulated by keeping the first half of generations.jsonl plus a torn "
                  "line (tests/test_eval.py kills a real process with SIGKILL).", ""]
    if "dpo" in results:
        d = results["dpo"]
        if "error" in d:
            lines += ["## DPO with and without precomputed reference log-probabilities", f"Not measured: {d['error']}", ""]
        else:
            a, b = d["on_the_fly"], d["precompute"]
            lines += ["## DPO with and without precomputed reference log-probabilities",
                      f"`stage=dpo_only model=tiny_base` (whole process: imports, data, training); median of "
                      f"{a.get('runs', 1)} run(s) each. Peak RSS is host memory of the CPU process, not GPU memory.",
                      "",
                      "| reference log-probs | wall s | peak RSS MiB |", "|---|---|---|",
                      f"| computed each step | {a['wall_s']:.1f} | {a['peak_rss_mib']:.0f} |",
                      f"| precomputed | {b['wall_s']:.1f} | {b['peak_rss_mib']:.0f} |", "",
                      "On a tiny model the reference forward pass is negligible next to process start-up; the "
                      "saving that matters is GPU memory on the 32B model, where the reference pass no longer "
                      "runs beside the policy's activations.", ""]
    s = results["startup"]
    lines += ["## Start-up", f"`posttrain --help`: {s['help_s']:.2f} s; `posttrain --cfg job model=qwen32b scorer=llm`: "
              f"{s['cfg_job_s']:.2f} s (no torch, transformers or SDK imported before a stage runs).",
              "Most of `posttrain --help` is Hydra composing every option of every group to list them; the",
              "imports take about 0.2 s of it.", ""]
    if "real_model" in results:  # issue 13's section, with its own targets table (bench/real_model.py)
        from bench.real_model import render as render_real

        lines += render_real(results["real_model"])
    if "demo" in results:  # issue 19: `make run` end to end (bench/demo.py)
        from bench.demo import render as render_demo

        lines += render_demo(results["demo"])
    lines += ["## Targets (issue 7)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**NO**'} |" for name, value, ok in targets(results)]
    lines.append("")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The ratios the issue asks for: batched/sequential >= 5x, concurrency 16 within 1.5x of ideal."""
    ratio = min(results["generation"][k]["ratio"] for k in ("no_stop_strings", "with_stop_strings"))
    c16 = results["judge"]["levels"]["16"]["vs_ideal"]
    calls = results["judge"]["cached_rerun"]["api_calls_in_reruns"]
    return [("batched / sequential generation >= 5x (tiny model)", f"{ratio:.1f}x", ratio >= 5.0),
            ("judge concurrency 16 within 1.5x of ideal", f"{c16:.2f}x", c16 <= 1.5),
            ("cached rerun makes no API call", str(calls), calls == 0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the subprocess figures (resume, DPO)")
    ap.add_argument("--no-real", action="store_true", help="skip the SmolLM2 figures (bench/real_model.py)")
    ap.add_argument("--only-real", action="store_true",
                    help="measure only the SmolLM2 figures; the others are kept from the existing JSON")
    ap.add_argument("--no-demo", action="store_true", help="skip timing `make run` (bench/demo.py, about 5 minutes)")
    ap.add_argument("--only-demo", action="store_true",
                    help="time only `make run`; the other figures are kept from the existing JSON")
    args = ap.parse_args(argv)
    if args.only_demo:
        results = json.loads(args.out.with_suffix(".json").read_text())
        results["demo"] = _demo(args.out)
        return _write(args.out, results)
    if args.only_real:
        results = json.loads(args.out.with_suffix(".json").read_text())
        results["real_model"] = _real_model()
        return _write(args.out, results)
    with tempfile.TemporaryDirectory() as home_dir:
        home = Path(home_dir)
        cache = home / "cache"
        results: dict[str, Any] = {"machine": machine(), "repeats": args.repeats}
        print("generation ...", flush=True)
        results["generation"] = bench_generation(cache, args.repeats)
        print("judge ...", flush=True)
        results["judge"] = bench_judge(args.repeats)
        print("start-up ...", flush=True)
        results["startup"] = bench_startup(args.repeats)
        if not args.quick:
            print("resume ...", flush=True)
            results["resume"] = bench_resume(home, cache)
            print("dpo ...", flush=True)
            try:
                results["dpo"] = bench_dpo(home, cache, max(1, args.repeats // 2))
            except RuntimeError as exc:
                results["dpo"] = {"error": str(exc).splitlines()[-1][:300]}
        if not args.no_real:
            print("real model (SmolLM2) ...", flush=True)
            results["real_model"] = _real_model()
        if not args.no_demo:
            print("make run (the demo) ...", flush=True)
            results["demo"] = _demo(args.out)
    return _write(args.out, results)


def _demo(out: Path) -> dict[str, Any]:
    from bench.demo import measure as measure_demo

    log = REPO / "multirun" / "bench-make-run.log"  # what `make run` printed (git-ignored, beside the sweeps)
    log.parent.mkdir(exist_ok=True)
    return measure_demo(log)


def _real_model() -> dict[str, Any]:
    from bench.real_model import measure
    from posttrain.models.smollm2 import ensure_smollm2
    from posttrain.paths import cache_dir

    ensure_smollm2(cache_dir())
    return measure(cache_dir())


def _write(out: Path, results: dict[str, Any]) -> int:
    out.write_text(render(results))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {out}")
    if "real_model" in results:
        from bench.real_model import targets as real_targets

        for name, value, ok in real_targets(results["real_model"]):
            if not ok:  # reported on the page with the reason; not a failure of make bench
                print(f"bench: {name}: {value} (missed; docs/benchmarks.md says why)", file=sys.stderr)
    if "demo" in results:
        from bench.demo import targets as demo_targets

        for name, value, ok in demo_targets(results["demo"]):
            if not ok:
                print(f"bench: {name}: {value} (missed)", file=sys.stderr)
    missed = [f"{name}: {value}" for name, value, ok in targets(results) if not ok]
    if missed:
        print("bench: targets missed (a busy machine can do this; rerun on an idle one before reading it as a "
              "regression): " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
