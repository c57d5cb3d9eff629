"""Uncertainty over seeds (DESIGN.md, "Leaderboard": "several seeds, shown as mean ± standard error, with the
methods not distinguishable from the best marked"; issue 18 item 3).

* :func:`standard_error`: the standard error of a mean over seeds, ``s / sqrt(n)`` with the sample standard
  deviation ``s`` (``ddof = 1``); None with fewer than two seeds (one seed says nothing about the seed spread).
* :func:`paired_p_value`: the two-sided p-value of a paired t-test (``scipy.stats.ttest_rel``) between two
  settings' scores over the (seed, task) pairs both have. Pairing by seed removes what a seed shares across methods
  (the suite, the checkpoints); pairing by task removes the tasks' difficulty. Identical scores give p = 1.
* :func:`not_distinguishable`: which rows cannot be told from the best AVG at the 95% level (p >= 0.05). The test
  needs two or more common seeds, so a single-seed table has no such marks (and no ± either).

The t-test over seeds x tasks treats the pairs as independent, which tasks of one seed are not quite; it is the
usual leaderboard convention (and the one the issue asks for), not an exact test.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["ALPHA", "MIN_SEEDS", "standard_error", "paired_p_value", "not_distinguishable"]

#: the level of the not-distinguishable-from-the-best marks (95%)
ALPHA = 0.05
#: seeds a row needs for a standard error and a test
MIN_SEEDS = 2


def standard_error(values: Sequence[float]) -> float | None:
    """``s / sqrt(n)`` of per-seed values (``ddof = 1``); None for fewer than :data:`MIN_SEEDS` values."""
    n = len(values)
    if n < MIN_SEEDS:
        return None
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def paired_p_value(a: Mapping[tuple[int, str], float], b: Mapping[tuple[int, str], float]) -> float | None:
    """Two-sided paired t-test p-value of ``a`` against ``b``, each ``(seed, task) -> score``, over their common
    keys; None when they share fewer than :data:`MIN_SEEDS` seeds. Equal scores everywhere give 1.0."""
    common = sorted(set(a) & set(b), key=repr)
    if len({s for s, _ in common}) < MIN_SEEDS:
        return None
    diffs = [a[k] - b[k] for k in common]
    if all(abs(d) < 1e-12 for d in diffs):
        return 1.0
    from scipy.stats import ttest_rel

    p = float(ttest_rel([a[k] for k in common], [b[k] for k in common]).pvalue)
    return 1.0 if math.isnan(p) else p


def not_distinguishable(rows: Mapping[str, tuple[float, Mapping[tuple[int, str], float]]],
                        alpha: float = ALPHA) -> tuple[str | None, dict[str, float]]:
    """``rows``: name -> (AVG, (seed, task) -> score). Returns the best row's name (the highest AVG; the first on a
    tie) and, for every other row the test applies to, its p-value against the best where ``p >= alpha`` (those
    are not distinguishable from the best)."""
    if not rows:
        return None, {}
    names = list(rows)
    best = max(names, key=lambda n: (rows[n][0], -names.index(n)))
    out: dict[str, float] = {}
    for n in names:
        if n == best:
            continue
        p = paired_p_value(rows[n][1], rows[best][1])
        if p is not None and p >= alpha:
            out[n] = p
    return best, out
