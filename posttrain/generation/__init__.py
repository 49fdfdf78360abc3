"""Generation: how a model is asked (prompt formats), how it answers (HF and vLLM backends), and
the format-sensitivity probe.

- ``prompts``: render a conversation as a chat template, a transcript, an instruction cue, ...
- ``backends``: batched, resumable HF generation with stop strings (left padding).
- ``vllm``: the same contract on vLLM (GPU only).
- ``sentinel``: the probe that shows whether a format cue alone changes what a model can do.

Importing this package imports no model library.
"""
