"""Scorers that need no API: deterministic checks, heuristic triage and scorer diagnostics.

- :mod:`.checks`: one reply against one expectation (entities, forbidden strings, constraints).
- :mod:`.triage`: whole conversations into score rows (``scorer="heuristic_triage"``).
- :mod:`.refusal`: refusal markers in a reply's opening, a heuristic triage alone reads
  (``Expectation.explicit_decline``).
- :mod:`.verifiable`: exact verdicts on turns declared verifiable (``scorer="verifiable"``; may gate).
- :mod:`.diagnostics`: does length alone predict the verdicts; stratified spot-check samples.
"""

from posttrain.scorers.checks import check_expectation, detect_language
from posttrain.scorers.diagnostics import length_bias, spot_check_sample
from posttrain.scorers.triage import triage_generations, triage_item

__all__ = [
    "check_expectation",
    "detect_language",
    "length_bias",
    "spot_check_sample",
    "triage_generations",
    "triage_item",
]
