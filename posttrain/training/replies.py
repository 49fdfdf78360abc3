"""When a reply is complete: the text rules every training source and the DPO negatives share.

A reply that stopped at the token limit, loops, or ends inside a sentence is never a training target
(docs/training.md, "Complete replies only"). Pure text functions, no model and no project imports, so
that both data.py and negatives.py can use them.
"""

from __future__ import annotations

import re

_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d+[.)]|#+)\s")
_CLOSED = (".", "!", "?", "…", '"', "'", "”", "’", ")", "]", "}", "*", "`", ">")


def looping(text: str) -> bool:
    """Whether a reply repeats itself: a line or sentence of 3+ words three times or more, or more
    than 40% of its word 4-grams repeats (replies of 20+ words), numbers counting as one word (so
    "11. Pasta\n12. Pasta\n13. Pasta" repeats). SmolLM2 writes such loops ("Pros of Buying Used:"
    again and again) until the length limit; a loop is no ending."""
    norm = re.sub(r"\d+", "#", text.lower())
    units = [u.strip() for u in re.split(r"(?<=[.!?])\s+|\n+", norm) if len(u.split()) >= 3]
    counts: dict[str, int] = {}
    for u in units:
        counts[u] = counts.get(u, 0) + 1
    if counts and max(counts.values()) >= 3:
        return True
    words = re.findall(r"\w+|#", norm)
    if len(words) < 20:
        return False
    grams = list(zip(words, words[1:], words[2:], words[3:], strict=False))
    return 1.0 - len(set(grams)) / len(grams) > 0.4


def incomplete_reason(text: str, finish_reason: str | None = None) -> str | None:
    """Why a reply must not be a training target, or None when it is complete.

    ``"length"``: generation stopped at ``max_new_tokens`` (TRL would append EOS to it and teach the
    model to stop mid-thought). ``"looping"``: the reply repeats itself (:func:`looping`), even if
    it ended. ``"mid_sentence"``: the reply ends inside a sentence: on ``, ; : -`` or an open
    bracket, or its last line is prose (4+ words, not a list item, heading or code) that does not
    end like a sentence. Lists, code blocks and short lines (a title, a signature) pass.
    """
    body = text.rstrip()
    if body and looping(body):
        return "looping"
    if finish_reason == "length":
        return "length"
    if not body:
        return "empty"
    if body.endswith((",", ";", ":", "-", "(", "[", "{", "—", "–")):
        return "mid_sentence"
    last = body.splitlines()[-1]
    if body.endswith(_CLOSED) or _LIST_ITEM.match(last) or last.lstrip().startswith(("|", "```", "    ")):
        return None
    return "mid_sentence" if len(last.split()) >= 4 else None


# An apology, a statement of inability or a question back instead of an answer, in a reply's opening.
# SmolLM2 answers a harmless instruction that states a constraint this way about half the time ("I'm
# sorry for any confusion, but as an AI designed to assist with creative writing, I don't have the
# ability to..."): as the chosen reply of a constraint pair it taught "apologise", and word n-grams
# separated those pairs at 0.89 (docs/training.md).
_NON_ANSWER = re.compile(
    r"\b(?:I'?m (?:so |very |really |truly )?sorry|I am (?:so |very |really )?sorry|I apologi[sz]e|as an AI\b"
    r"|I'?m afraid|I (?:don'?t|do not) have the (?:ability|capability|capacity)"
    r"|I (?:can'?t|cannot|am unable to|am not able to|'m unable to|'m not able to) "
    r"(?:help|assist|provide|do|answer|fulfil|fulfill|comply|determine|generate|create|write)"
    r"|(?:what|how) (?:can|may) I (?:help|assist)|what (?:would you like|do you need) (?:me )?(?:to|help))",
    re.I)


def non_answer(text: str) -> bool:
    """Whether a reply opens (first two sentences, 300 characters at most) with an apology, a statement
    that it cannot do the task, or a question back ("What can I help you with?") instead of an answer.

    Used where a reply must answer its instruction to be worth preferring: the replies of a stated
    constraint pair (data.py). Not a refusal detector: a harmless instruction was asked."""
    head = " ".join(re.split(r"(?<=[.!?])\s+", text.strip()[:300])[:2])
    return _NON_ANSWER.search(head) is not None


def uses_word_form(text: str, word: str) -> bool:
    """Whether any word of ``text`` starts with ``word`` (case-insensitive): "breathtakingly" and
    "likes" use "breathtaking" and "like". The test a reply must pass to honour "Do not use the word
    'w'": a whole-word test let "breathtakingly" through as honouring a ban on "breathtaking"."""
    return re.search(rf"\b{re.escape(word)}", text, flags=re.I) is not None
