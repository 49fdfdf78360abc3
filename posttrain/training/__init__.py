"""Post-training (issue 6): training data, the logprob critic, negatives, SFT and DPO on LoRA adapters.

Entry points are the stages (posttrain/stages/train.py); docs/training.md explains the pipeline.
Modules import torch / TRL / PEFT only inside functions, so importing this package is cheap.
"""
