"""ROUGE-L (longest common subsequence) between two texts, written out so the filter is auditable.

Tokenisation follows the ``rouge_score`` package that Self-Instruct used (no stemming): lower-case,
every run of characters other than ``[a-z0-9]`` becomes a separator. For token sequences X (the
candidate, length m) and Y (the reference, length n) with LCS length L:

    precision P = L / m,   recall R = L / n,   F = (1 + beta^2) P R / (R + beta^2 P)

with beta = 1 (the harmonic mean), which is what ``rouge_score``'s ``fmeasure`` reports. Two empty
texts score 0.

The LCS is the classic O(m n) dynamic programme over one rolling row; instructions are short
(a few dozen tokens), so comparing a candidate with a pool of a few thousand takes milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_SPLIT = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Lower-case alphanumeric tokens, as ``rouge_score``'s default tokenizer produces them."""
    return [t for t in _SPLIT.split(text.lower()) if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(candidate: str | Sequence[str], reference: str | Sequence[str], beta: float = 1.0) -> float:
    """ROUGE-L F-measure of ``candidate`` against ``reference`` (texts or token lists), in [0, 1]."""
    c = rouge_tokens(candidate) if isinstance(candidate, str) else list(candidate)
    r = rouge_tokens(reference) if isinstance(reference, str) else list(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    b2 = beta * beta
    return (1 + b2) * p * rec / (rec + b2 * p)


class RougePool:
    """A set of texts that a new candidate must not resemble (ROUGE-L F >= threshold).

    Token lists are cached, and a cheap bound skips most LCS computations: ROUGE-L F can never
    exceed 2 min(m, n) / (m + n), so references whose length alone rules out the threshold are
    not compared.
    """

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7):
        self.threshold = threshold
        self.texts: list[str] = []
        self._tokens: list[list[str]] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self._tokens.append(rouge_tokens(text))

    def max_match(self, text: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F of ``text`` against the pool, and the text that reached it."""
        c = rouge_tokens(text)
        best, best_text = 0.0, None
        m = len(c)
        if m == 0:
            return 0.0, None
        for ref_text, ref in zip(self.texts, self._tokens, strict=True):
            n = len(ref)
            if n == 0 or 2 * min(m, n) / (m + n) <= best:
                continue
            score = rouge_l(c, ref)
            if score > best:
                best, best_text = score, ref_text
        return best, best_text

    def too_similar(self, text: str) -> tuple[bool, float, str | None]:
        """Whether ``text`` reaches the threshold against any pool member (and the closest one)."""
        score, match = self.max_match(text)
        return score >= self.threshold, score, match
