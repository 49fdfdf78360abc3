"""Print what `make run` shows before the comparison: each job's first replies, side by side.

Usage: python bench/show_replies.py SWEEP_DIR [N]  (reads <job>/generations.jsonl; loads nothing)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(sweep: str, n: int = 2) -> None:
    for job in sorted(p for p in Path(sweep).iterdir() if (p / "generations.jsonl").is_file()):
        rows = [json.loads(line) for line in (job / "generations.jsonl").read_text().splitlines() if line.strip()]
        print(f"--- {job.name} ({rows[0]['prompt_format'] if rows else '?'})")
        for row in rows[:n]:
            turn = row["turns"][0]
            print(f"  user:  {turn['user']}\n  reply: {turn['reply']!r} ({turn['finish_reason']})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
