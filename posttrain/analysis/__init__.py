"""Analysis: everything that turns scored records into a decision, and nothing that produces them.

- ``stats``: pure statistics (Wilson, McNemar, Cohen's h, Holm, kappa, power, clustered inference).
- ``gates``: the gate (eligibility before numbers, PASS / FAIL / NOT_ELIGIBLE).
- ``comparison``: a sweep's jobs -> pairs, per-category results, the gate on the primary pair.
- ``report``: ``posttrain-report`` and comparison.json / comparison.md, rendered from records.
- ``plots``: the figures of a comparison.
- ``pairwise``: ``posttrain-pairwise``, two runs judged head to head.
"""
