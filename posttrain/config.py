"""Typed schemas for every config group, registered in Hydra's ConfigStore.

YAML files under ``conf/`` hold values only; each extends its group's schema through
``defaults: [base_<group>, _self_]``, so a misspelt key or a wrong type fails when Hydra
composes the config, not an hour into a run. Registration is an explicit call
(:func:`register_configs`) made by the entrypoint and the tests: nothing happens at import.

Range checks that a type cannot express live in :func:`validate`, which the entrypoint runs
before any model load or API call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in records and W&B tags, e.g. "qwen32b"
    path: str = MISSING  # Hugging Face repo id, or a local folder
    kind: str = MISSING  # "base" | "instruct"
    revision: str | None = None  # 40-hex commit for Hub models, "sha256:<hex>" for local folders
    tiny: str | None = None  # recipe name ("base", "instruct", "alt_base") to build the model locally
    gguf: str | None = None  # "smollm2": the GGUF in a pinned PyPI wheel, converted once (models/smollm2.py)
    dtype: str = "bfloat16"  # "bfloat16" | "float16" | "float32" | "auto"
    quantization: str | None = None  # None | "nf4"
    max_context: int = 4096
    requires_gpu: bool = False
    gpu_type: str = "cpu"
    num_gpus: int = 0
    gpu_price_per_hour: float = 0.0  # USD per GPU-hour, for the budget ledger
    adapter: str | None = None  # PEFT adapter folder, or a training run folder holding adapter/
    allow_chat_template_on_base: bool = False  # explicit ablation override, recorded in provenance
    trust_remote_code: bool = False  # never honoured: the loader refuses True
    # "auto": eager attention on the CPU and sdpa on a GPU. On an idle 2-core CPU the two decode SmolLM2
    # alike at batch 1 (20-22 tok/s), but with other processes on the cores torch's CPU flash-attention
    # kernel fell to 5.3 tok/s (3.8 ms per call at one query token) against eager's 21.6, and eager was
    # also faster at batch 32 (241 vs 172 tok/s); docs/benchmarks.md. Recorded in provenance.json.
    attn_implementation: str = "auto"  # "auto" | "eager" | "sdpa"


@dataclass
class StageConfig:
    name: str = MISSING  # "eval" | "sft" | "dpo" | "dpo_only"
    # Evaluation first: training refuses to start without a gate PASS in this comparison.json
    # unless override_gate is set (and the override is written into every record of the run).
    comparison: str | None = None
    override_gate: bool = False


@dataclass
class EvalStageConfig(StageConfig):
    name: str = "eval"
    sentinel: bool = True  # run the format-sensitivity probe set for this model
    sentinel_formats: list[str] = field(default_factory=lambda: ["raw", "instruction_cue", "transcript"])


@dataclass
class TrainStageConfig(StageConfig):
    data: str | None = None  # training data file (JSONL); None = generate from the base model
    num_examples: int = 200  # SFT conversations kept (the design's ~200)
    max_steps: int = 30
    learning_rate: float = 2e-4
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    save_steps: int = 10
    logging_steps: int = 1
    beta: float = 0.1  # DPO only
    precompute_ref_log_probs: bool = False  # DPO only
    init_adapter: str | None = None  # DPO from an SFT adapter (stage=dpo)
    step0_loss_tolerance: float = 0.05  # DPO: |loss_0 - ln 2| must be below this
    # --- training data (posttrain/training/data.py; docs/training.md) ---
    data_source: str = "auto"  # auto (synthetic for tiny models, generated otherwise) | generated | synthetic
    # Self-Instruct seed tasks (human-written; plan() refuses any near a held-out or benchmark text)
    seed_tasks: list[str] = field(default_factory=lambda: [
        "Write a short poem about autumn leaves.",
        "Explain how the gears on a bicycle make pedalling easier.",
        "Give three tips for someone learning to play the guitar.",
        "Suggest a name for a small coffee shop near a university.",
        "Describe the water cycle to a ten-year-old.",
        "Write a polite email asking a landlord to fix a leaking tap.",
        "What are the pros and cons of buying a used laptop?",
        "Explain why bread goes stale when it is left out.",
        "Plan a one-day itinerary for a rainy day in a big city.",
        "Explain the difference between a simile and a metaphor, with an example of each.",
        "Write a haiku about the ocean at night.",
        "How do I politely end a long phone call with a talkative friend?",
        "Give me a simple recipe for tomato soup.",
        "Summarise the main idea of supply and demand in plain words.",
        "Write a two-sentence story about a lost umbrella.",
    ])
    fewshot_k: int = 6  # tasks shown per self-instruct prompt (about a third machine-written once available)
    rouge_threshold: float = 0.7  # ROUGE-L F at or above which a candidate is a near-duplicate / contaminated
    min_instruction_words: int = 3
    max_instruction_words: int = 60
    # Self-Instruct's keyword filter: tasks a text-only model cannot do
    banned_keywords: list[str] = field(default_factory=lambda: [
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
        "go to", "video", "audio", "music", "flowchart", "diagram",
    ])
    max_rounds: int = 50  # self-instruct rounds (each one batch of generation.batch_size proposals)
    instruction_max_new_tokens: int = 48
    # a self-instruct reply's own limit (not generation.max_new_tokens, the eval's): a reply cut there is dropped
    reply_max_new_tokens: int = 256
    # transformers' repetition penalty on the replies only (1.0 = off). SmolLM2, 32 replies greedy at 256
    # tokens: 14 looping and 12 complete without it, 2 looping and 18 complete at 1.1 (docs/training.md)
    reply_repetition_penalty: float = 1.1
    multiturn_fraction: float = 0.3  # share of generated instructions continued into a conversation
    followup_turns: int = 1  # templated follow-up user turns per multi-turn conversation
    critic: str = "pmi"  # pmi | loglik | judge | both (base-model logprob critic; training/critic.py)
    critic_keep_fraction: float = 0.8  # keep the best fraction of candidates by critic score
    synthetic_templates: list[str] = field(default_factory=lambda: ["name", "city"])  # + "name_city" (harder)
    # share of prompts that state a constraint (a banned word) the reply keeps; the reply that breaks it
    # is kept as the constraint_violation negative (synthetic: a paraphrase; generated: the model's other answer
    # to the same plain question, the word banned after the fact: paired samples, data.py step 4)
    constraint_fraction: float = 0.3
    # the temperature of that second, sampled answer (generated data)
    constraint_temperature: float = 0.7
    # --- optimisation and checkpoints ---
    lora_target_modules: str = "all-linear"
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    optim: str | None = None  # None: paged_adamw_8bit for QLoRA on CUDA, adamw_torch otherwise
    save_total_limit: int = 2
    label_audit_examples: int = 8  # rendered in label_audit.txt (every example is checked)
    # --- DPO ---
    # content-only types; truncated and padded_repetitive differ in form by construction (leaky, opt-in)
    negative_types: list[str] = field(default_factory=lambda: ["wrong_instruction", "constraint_violation",
                                                               "corrupted_facts"])
    negatives_per_example: int = 1
    # where corrupted_facts draws its wrong values: "data" (the chosen replies' own values, the default) or
    # "lists" (the old fixed pools of 25 names and 30 cities, kept to show the leakage check refusing them)
    fact_pool: str = "data"
    leakage_threshold: float = 0.6  # DPO refuses when a classifier over the replies beats this pair accuracy
    allow_leaky_negatives: bool = False  # train anyway on separable negatives (recorded in every record)
    eval_pairs_fraction: float = 0.1  # held-out DPO pairs per negative type (TRL eval_dataset dict)
    step0_batches: int = 2  # batches evaluated by the step-0 sanity check


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # "conversations" | "instructions" | "mt_bench" | "mt_bench_101" | "ifeval"
    # ... | "system_prompt" | "structured_output" | "length" | "refusal" (capability benchmarks)
    split: str = "full"
    limit: int | None = None
    path: str | None = None  # user's copy of a public benchmark file


@dataclass
class PromptConfig:
    # "auto": chat_template for instruct models, transcript for base models.
    format: str = "auto"  # auto | raw | instruction_cue | transcript | urial | chat_template
    preamble: str = "The following is a conversation between a user and a helpful, honest assistant."
    user_marker: str = "User:"
    assistant_marker: str = "Assistant:"
    system_prompt: str | None = None
    stop_strings: list[str] = field(default_factory=lambda: ["\nUser:", "\nInstruction:", "\n\n\n"])


@dataclass
class GenerationConfig:
    backend: str = "hf"  # "hf" | "vllm"
    max_new_tokens: int = 128
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass
class JudgeConfig:
    name: str = MISSING  # "claude" | "gpt4" | "openai_compatible"
    provider: str = MISSING  # "anthropic" | "openai"
    model: str = MISSING
    base_url: str | None = None  # None: the SDK default or ANTHROPIC_BASE_URL / OPENAI_BASE_URL
    api_key_env: str = MISSING  # the environment variable holding the key (never the key itself)
    temperature: float | None = 0.0  # None: not sent (reasoning models and current Claude models refuse it)
    max_tokens: int = 512  # output cap, thinking included: size it for the thinking the model does
    # Thinking and effort, sent as the provider names them (docs/judging.md, "Request shapes"):
    # anthropic thinking={"type": <thinking>} and output_config.effort=<effort>; openai reasoning_effort=<effort>.
    thinking: str | None = None  # "adaptive" | "disabled" | "between_tools"; None: the model's default
    effort: str | None = None  # "low" | "medium" | "high" | "xhigh" | "max"; None: the model's default
    # "json_schema": structured output (anthropic output_config.format, openai response_format).
    # "forced_tool": the old anthropic forced tool call, only for models that still accept it.
    structured_output: str = "json_schema"
    preflight: bool = True  # ask the provider for the model's lifecycle before anything is spent
    max_same_client_errors: int = 3  # stop the run after this many identical 4xx answers (bad model, key, request)
    price_input_per_mtok: float = MISSING  # USD per million input tokens
    price_output_per_mtok: float = MISSING
    # The judge model the two prices above are for: a judge.model override without new prices (and
    # judge.prices_for naming that model) would be budgeted at another model's prices, so it is refused.
    prices_for: str | None = None
    batch_discount: float = 0.5  # batch APIs cost half
    concurrency: int = 8
    max_retries: int = 4
    max_reasks: int = 2  # re-ask when a verdict does not parse or fails validation
    # None: the SDK sizes a non-streaming request's timeout (600 s; max_tokens over 21,333 is refused);
    # a number is used as given (docs/judging.md, "Transport"). A timeout is never retried.
    timeout_s: float | None = None
    mode: str = "sync"  # "sync" | "batch" | "pairwise"
    template_version: str = "conv-judge-v3"  # judges.prompt.TEMPLATE_VERSION (docs/judging.md)
    spot_check: float = 0.0  # fraction re-judged by the second judge
    second_judge: str | None = None  # judge config name used for the spot check
    cache_dir: str | None = None  # None: <data dir>/judge_cache
    est_input_tokens: int = 1200  # per judged turn, for the cost estimate before the run
    est_output_tokens: int = 200


@dataclass
class ScorerConfig:
    name: str = MISSING  # "llm" | "heuristic_triage" | "verifiable"


@dataclass
class PrimaryPair:
    treatment: str = MISSING  # the model whose claimed improvement is tested (model.name)
    control: str = MISSING  # the model it is tested against
    # The rule that decides the pair: "gap" (the seed's Phase-1 rates) or "superiority" (treatment beats control)
    kind: str = "gap"


@dataclass
class GateConfig:
    base_max_success: float = 0.30
    instruct_min_success: float = 0.80
    mcnemar_alpha: float = 0.01
    min_cohens_h: float = 0.5
    min_kappa: float = 0.7
    max_error_rate: float = 0.05
    # None: 80% power for the smallest accepted gap, at least 100 (gates.default_min_paired; docs/statistics.md)
    min_paired: int | None = None
    # The pre-registered primary pair(s), written to <sweep>/primary.json before any job runs.
    primary: list[PrimaryPair] = field(default_factory=list)
    # The registered secondary family: Holm-adjusted among themselves, reported, never deciding.
    secondary: list[PrimaryPair] = field(default_factory=list)
    # superiority's minimum Cohen's h (docs/statistics.md, "Two kinds of gate")
    min_effect_h: float = 0.2
    # gap's rate rule: "point" estimates (the seed's) or one-sided 95% "bound"s against the thresholds
    rates: str = "point"
    # A human calibration counts only with at least this many labelled conversations (the design's 30);
    # with fewer, kappa's interval is too wide to tell a good judge from a lucky one.
    min_calibration_items: int = 30


@dataclass
class AtlasConfig:
    """The capability atlas (``+experiment=atlas``; docs/comparisons.md, "The capability atlas").

    Every job of the sweep carries this block; the sweep callback registers it in primary.json before
    any job runs, and the atlas callback reads each job's ``role`` to know which split it evaluated.
    """

    role: str = "train"  # swept: "train" (the base model's format is chosen here) | "test" (reported)
    base: str | None = None  # the base arm's model name; None: the swept model of kind=base (else the only one)
    instruct: str | None = None  # the instruct arm's model name; None: the swept model of kind=instruct
    base_formats: list[str] = field(default_factory=lambda: ["transcript", "instruction_cue", "urial", "raw"])
    instruct_format: str = "chat_template"  # the instruct arm's format, fixed before the sweep (not chosen)
    capabilities: list[str] = field(default_factory=lambda: ["conversations", "instructions"])
    # benchmark -> {"train": split, "test": split}: the benchmark's own split names for the two roles
    splits: dict[str, dict[str, str]] = field(default_factory=dict)
    # role -> items per job (null: the whole split); the same for every benchmark of that role
    limits: dict[str, int | None] = field(default_factory=lambda: {"train": None, "test": None})
    # benchmark -> scorer name (verifiable where the items are definitions, else llm or heuristic_triage)
    scorers: dict[str, str] = field(default_factory=dict)


@dataclass
class BudgetConfig:
    cap_usd: float = 300.0
    ledger_path: str | None = None  # None: $POSTTRAIN_HOME/ledger.jsonl (~/.local/share/posttrain)
    enforce: bool = True
    # Rough throughput figures used only to ESTIMATE a run's GPU cost before it starts; the
    # ledger records measured wall time. 300 tok/s: a 4-bit 32B model decoding a batch of 16 on one
    # 48 GB GPU: about 19 tok/s per sequence, under the ~43 tok/s roofline in docs/scaling.md.
    est_decode_tokens_per_s: float = 300.0
    est_train_seconds_per_step: float = 20.0


@dataclass
class TrackingConfig:
    mode: str = "offline"  # "offline" | "online" | "disabled"
    project: str = "posttrain"
    entity: str | None = None
    group: str | None = None  # None: the sweep folder name for multiruns


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    stage: StageConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = MISSING
    scorer: ScorerConfig = MISSING
    gate: GateConfig = field(default_factory=GateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    atlas: AtlasConfig | None = None  # set by +experiment=atlas*: the capability atlas sweep
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    cache_dir: str | None = None  # tiny models and other built artefacts; None: $POSTTRAIN_HOME/cache


_GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "benchmark": BenchmarkConfig,
    "prompt": PromptConfig,
    "generation": GenerationConfig,
    "judge": JudgeConfig,
    "scorer": ScorerConfig,
    "gate": GateConfig,
    "budget": BudgetConfig,
    "tracking": TrackingConfig,
}


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for group, schema in _GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    cs.store(group="stage", name="base_stage", node=StageConfig)
    cs.store(group="stage", name="base_eval", node=EvalStageConfig)
    cs.store(group="stage", name="base_train", node=TrainStageConfig)


# ---------------------------------------------------------------------------------------------
# Range checks that types cannot express. Each message names the setting and the valid range.

VALID = {
    "model.kind": ("base", "instruct"),
    "model.dtype": ("bfloat16", "float16", "float32", "auto"),
    "model.quantization": (None, "nf4"),
    "model.attn_implementation": ("auto", "eager", "sdpa"),
    "stage.name": ("eval", "sft", "dpo", "dpo_only"),
    "benchmark.name": ("conversations", "instructions", "mt_bench", "mt_bench_101", "ifeval",
                       "system_prompt", "structured_output", "length", "refusal"),
    "prompt.format": ("auto", "raw", "instruction_cue", "transcript", "urial", "chat_template"),
    "generation.backend": ("hf", "vllm"),
    "judge.provider": ("anthropic", "openai"),
    "judge.mode": ("sync", "batch", "pairwise"),
    "judge.thinking": (None, "adaptive", "disabled", "between_tools"),
    "judge.effort": (None, "low", "medium", "high", "xhigh", "max"),
    "judge.structured_output": ("json_schema", "forced_tool"),
    "scorer.name": ("llm", "heuristic_triage", "verifiable"),
    "tracking.mode": ("offline", "online", "disabled"),
    "device": ("auto", "cpu", "cuda"),
}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


class ConfigError(ValueError):
    """A setting is out of range. Raised before any model load or API call."""


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def validate(cfg: Any) -> None:
    """Check ranges and enumerations of a composed config; raise ConfigError listing every problem.

    Nothing has been loaded or spent when this raises.
    """
    problems: list[str] = []
    for key, allowed in VALID.items():
        value = _get(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r} is not valid; choose one of {list(allowed)}")

    def positive(key: str, allow_none: bool = False) -> None:
        value = _get(cfg, key)
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            problems.append(f"{key}={value!r} must be a positive number")

    def unit(key: str) -> None:
        value = _get(cfg, key)
        if not 0.0 <= value <= 1.0:
            problems.append(f"{key}={value!r} must lie in [0, 1]")

    positive("generation.max_new_tokens")
    positive("generation.batch_size")
    positive("model.max_context")
    positive("benchmark.limit", allow_none=True)
    positive("judge.concurrency")
    positive("judge.max_tokens")
    positive("judge.timeout_s", allow_none=True)
    if cfg.judge.structured_output == "forced_tool" and cfg.judge.thinking not in (None, "disabled"):
        problems.append(f"judge.structured_output=forced_tool with judge.thinking={cfg.judge.thinking!r}: Claude refuses "
                        "forced tool use while thinking; use judge.structured_output=json_schema, or "
                        "judge.thinking=disabled on a model that still accepts forced tools")
    atlas = getattr(cfg, "atlas", None)
    if atlas is not None and atlas.role not in ("train", "test"):
        problems.append(f"atlas.role={atlas.role!r} is not valid; choose one of ['train', 'test']")
    positive("gate.min_calibration_items")
    positive("judge.max_same_client_errors")
    if cfg.judge.max_retries < 0:
        problems.append(f"judge.max_retries={cfg.judge.max_retries} must be >= 0")
    if cfg.judge.price_input_per_mtok < 0 or cfg.judge.price_output_per_mtok < 0:
        problems.append("judge.price_input_per_mtok / judge.price_output_per_mtok must be >= 0 (USD per 1M tokens)")
    if cfg.scorer.name == "llm" and cfg.judge.prices_for != cfg.judge.model:
        problems.append(
            f"judge.model={cfg.judge.model!r} has no known price: judge.price_input_per_mtok="
            f"{cfg.judge.price_input_per_mtok} / judge.price_output_per_mtok={cfg.judge.price_output_per_mtok} are "
            f"the prices of {cfg.judge.prices_for!r} (judge.prices_for). Set both prices (USD per 1M tokens, >= 0) "
            f"for {cfg.judge.model!r} and judge.prices_for={cfg.judge.model}, so the budget counts what it costs")
    for key in ("gate.base_max_success", "gate.instruct_min_success", "gate.mcnemar_alpha",
                "gate.min_kappa", "gate.max_error_rate", "judge.spot_check"):
        unit(key)
    if cfg.gate.min_cohens_h < 0:
        problems.append(f"gate.min_cohens_h={cfg.gate.min_cohens_h} must be >= 0")
    if cfg.gate.min_effect_h < 0:
        problems.append(f"gate.min_effect_h={cfg.gate.min_effect_h} must be >= 0")
    if cfg.gate.rates not in ("point", "bound"):
        problems.append(f"gate.rates={cfg.gate.rates!r} is not valid; choose one of ['point', 'bound']")
    for fam in ("primary", "secondary"):
        for p in getattr(cfg.gate, fam, None) or []:
            if p.kind not in ("gap", "superiority"):
                problems.append(f"gate.{fam}: {p.treatment} vs {p.control} has kind={p.kind!r}; choose one of "
                                "['gap', 'superiority']")
    if cfg.gate.min_paired is not None and cfg.gate.min_paired < 100:
        problems.append(f"gate.min_paired={cfg.gate.min_paired} must be >= 100 (or null for the power-analysis "
                        "default; docs/statistics.md)")
    if cfg.budget.cap_usd < 0:
        problems.append(f"budget.cap_usd={cfg.budget.cap_usd} must be >= 0 (USD)")
    if cfg.model.gpu_price_per_hour < 0:
        problems.append(f"model.gpu_price_per_hour={cfg.model.gpu_price_per_hour} must be >= 0")
    rev = cfg.model.revision
    if rev is not None and not (_HEX40.match(rev) or _SHA256.match(rev)):
        problems.append(
            f"model.revision={rev!r} must be a 40-character commit hash (Hub models) or "
            "'sha256:<64 hex>' (a local folder's weight hash); branch names like 'main' move and are refused"
        )
    if cfg.model.trust_remote_code:
        problems.append("model.trust_remote_code=true is refused: posttrain never runs code shipped with weights")
    if cfg.model.quantization == "nf4" and cfg.model.kind not in VALID["model.kind"]:
        pass  # already reported
    if cfg.generation.do_sample and not 0.0 < cfg.generation.temperature:
        problems.append(f"generation.temperature={cfg.generation.temperature} must be > 0 when sampling")
    if cfg.stage.name != "eval":
        positive("stage.max_steps")
        positive("stage.learning_rate")
        positive("stage.per_device_batch_size")
        positive("stage.max_length")
        positive("stage.lora_r")
    if problems:
        raise ConfigError(
            "invalid configuration (nothing was loaded or spent):\n  - " + "\n  - ".join(problems)
        )


def load_group_option(group: str, name: str) -> Any:
    """Load one option of a group (e.g. the spot-check judge) onto its schema, outside composition."""
    from omegaconf import OmegaConf

    from posttrain.paths import conf_dir

    path = conf_dir() / group / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{group}={name!r} does not exist; choose one of {options}")
    values = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(values, dict)
    values.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(_GROUP_SCHEMAS[group]), values)
