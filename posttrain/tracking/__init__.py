"""Tracking: where a run's numbers and money go besides its records on disk.

- ``tracker``: one W&B run per job (offline by default), metrics.jsonl mirror, tables, artifacts.
- ``budget``: the spend ledger (GPU-hours, API dollars) and the cap that refuses a run.
(``posttrain-dashboard``, the W&B workspace built from code, is an entrypoint: posttrain/dashboard.py.)

A service floor: every floor above may use it; it imports only the ground floor.
"""
