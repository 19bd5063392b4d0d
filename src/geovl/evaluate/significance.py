"""Uncertainty of a paired before/after accuracy change (what ``geovl compare`` reports per qtype).

Both functions need only the paired counts of one group: ``fixed`` (wrong before, right after),
``broken`` (right before, wrong after) and ``n`` (all matched samples of the group).

- :func:`mcnemar_exact`: the exact McNemar test, i.e. a two-sided binomial test of ``fixed`` out of
  the ``fixed + broken`` discordant pairs against p = 1/2 (the concordant pairs carry no
  information about the change). Computed with integer arithmetic (``math.comb``).
- :func:`bootstrap_delta_ci`: a paired percentile bootstrap interval for ``after_acc − before_acc``.
  Resampling the n pairs with replacement only changes how many fixed / broken / unchanged pairs are
  drawn, so each replicate is one multinomial draw of those three counts: exact for the paired
  bootstrap, O(reps) memory whatever n is, and repeatable (fixed seed).
"""

from __future__ import annotations

import math

BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: ``min(1, 2·P(X ≤ min(b, c)))`` with X ~ Binomial(b + c, 1/2).
    No discordant pairs → 1.0 (no evidence of a change)."""
    if fixed < 0 or broken < 0:
        raise ValueError(f"counts must be >= 0, got fixed={fixed}, broken={broken}")
    m = fixed + broken
    if m == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, (2 * tail) / (1 << m))  # exact rational 2·tail / 2^m, rounded once to float


def bootstrap_delta_ci(
    fixed: int,
    broken: int,
    n: int,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of the accuracy change ``(fixed − broken) / n``."""
    import numpy as np

    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if fixed < 0 or broken < 0 or fixed + broken > n:
        raise ValueError(f"need 0 <= fixed + broken <= n, got fixed={fixed}, broken={broken}, n={n}")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [fixed / n, broken / n, (n - fixed - broken) / n], size=reps)
    deltas = (draws[:, 0] - draws[:, 1]) / n
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(deltas, [alpha, 1 - alpha])
    return float(lo), float(hi)


def verdict(ci: tuple[float, float]) -> str:
    """``gain`` / ``loss`` when the interval excludes zero, else ``no measurable change``."""
    lo, hi = ci
    if lo > 0:
        return "gain"
    if hi < 0:
        return "loss"
    return "no measurable change"
