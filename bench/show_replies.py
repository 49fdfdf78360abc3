"""Print what `make run` shows around the comparison: each job's first replies, and the verdict in brief.

Usage:
  python bench/show_replies.py SWEEP_DIR [N]     each job's first N replies (reads <job>/generations.jsonl)
  python bench/show_replies.py SWEEP_DIR --gate  the primary pair's verdict, p-values, h, each format's
                                                 pass rate and truncation rate (reads comparison.json)
Loads no model; everything comes from the sweep's records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(sweep: str, n: int = 2) -> None:
    for job in sorted(p for p in Path(sweep).iterdir() if (p / "generations.jsonl").is_file()):
        rows = [json.loads(line) for line in (job / "generations.jsonl").read_text().splitlines() if line.strip()]
        print(f"--- {job.name} ({rows[0]['prompt_format'] if rows else '?'})")
        for row in rows[:n]:
            turn = row["turns"][0]
            print(f"  user:  {turn['user']}\n  reply: {turn['reply']!r} ({turn['finish_reason']})")


def _num(x: Any, spec: str = ".3g") -> str:
    return "—" if x is None else format(x, spec)


def gate_lines(comparison: dict[str, Any]) -> list[str]:
    """The verdict in a few lines: what decided, on how many pairs, with which numbers."""
    g = comparison["gate"]
    lines = ["=== the pre-registered test ==="]
    for m in comparison["models"]:
        t = m.get("truncation") or {}
        lines.append(f"  {m['model']}: {m['n_pass']}/{m['n_pass'] + m['n_fail']} pass "
                     f"({_num(m.get('success_rate'), '.1%')}), {m.get('n_not_scored', 0)} not scored, "
                     f"{m['n_error']} error; truncated {t.get('length_stopped', '?')}/{t.get('turns', '?')} turns "
                     f"({_num(t.get('rate'), '.1%')})")
    for reg in (comparison.get("primary") or {}).get("pairs") or []:
        tr, co = reg["treatment"], reg["control"]
        p = next((q for q in comparison["pairs"] if {q["a"], q["b"]} == {tr, co}), None)
        if p is None:
            lines.append(f"  {tr} vs {co}: no such pair was compared")
            continue
        flip = p["a"] == tr  # pairs run in sweep order (a, b) with h = h(b) - h(a); show treatment - control
        t_only, c_only = (p["a_only"], p["b_only"]) if flip else (p["b_only"], p["a_only"])
        h = None if p["cohens_h"] is None else (-p["cohens_h"] if flip else p["cohens_h"]) + 0.0  # no "-0"
        ra, rb = p.get("truncation_rates") or [None, None]
        rt, rc = (ra, rb) if flip else (rb, ra)
        lines.append(f"  {tr} vs {co} ({reg.get('kind')}): {p['n_paired']} paired items; only {tr} passes "
                     f"{t_only}, only {co} passes {c_only}; McNemar p = {_num(p['mcnemar_p'])}, cluster p = "
                     f"{_num(p['cluster_p'])}, Cohen's h = {_num(h)}; truncation {_num(rt, '.1%')} vs "
                     f"{_num(rc, '.1%')}" + (" (FLAGGED: more than 10 points apart)" if p.get("truncation_flagged")
                                             else ""))
    kind = g.get("kind") or ((comparison.get("primary") or {}).get("pairs") or [{}])[0].get("kind")
    lines.append(f"  gate ({kind}): {g['verdict']}")
    lines += [f"    - {r}" for r in g.get("reasons") or ([g["reason"]] if g.get("reason") else [])]
    return lines


if __name__ == "__main__":
    if "--gate" in sys.argv[2:]:
        print("\n".join(gate_lines(json.loads((Path(sys.argv[1]) / "comparison.json").read_text()))))
    else:
        main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
