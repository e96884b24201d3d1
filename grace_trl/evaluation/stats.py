"""Is model A better than model B on the same STS pairs, or is it sampling noise?

A paired bootstrap (``scipy.stats.bootstrap(paired=True)``): both models' cosines and the gold scores of a
pair are resampled together, so the interval is for the difference on the same pairs, not for two
independent samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    n: int
    score_a: float  # Spearman × 100
    score_b: float
    difference: float  # score_a - score_b
    low: float  # confidence interval of the difference
    high: float
    p_not_better: float  # share of resamples with A - B <= 0
    confidence_level: float


def paired_spearman_difference(cos_a, cos_b, gold, n_resamples: int = 2000, seed: int = 42,
                               confidence_level: float = 0.95) -> PairedDifference:
    """Spearman × 100 of A and B against ``gold`` and a percentile interval for A - B over resampled pairs."""
    from scipy.stats import bootstrap, spearmanr

    cos_a, cos_b, gold = (np.asarray(x, dtype=float) for x in (cos_a, cos_b, gold))
    if not len(cos_a) == len(cos_b) == len(gold):
        raise ValueError(f"cos_a, cos_b and gold must be one value per pair, got {len(cos_a)}, {len(cos_b)}, "
                         f"{len(gold)}")
    if len(gold) < 3:
        raise ValueError(f"a bootstrap over {len(gold)} pairs says nothing; need at least 3")

    def spearman100(cos, g):
        return 100 * spearmanr(cos, g).statistic

    def difference(a, b, g):
        return spearman100(a, g) - spearman100(b, g)

    res = bootstrap((cos_a, cos_b, gold), difference, paired=True, vectorized=False, n_resamples=n_resamples,
                    confidence_level=confidence_level, method="percentile", rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution)
    a, b = spearman100(cos_a, gold), spearman100(cos_b, gold)
    return PairedDifference(n=len(gold), score_a=a, score_b=b, difference=a - b,
                            low=float(res.confidence_interval.low), high=float(res.confidence_interval.high),
                            p_not_better=float(np.mean(dist[np.isfinite(dist)] <= 0)),
                            confidence_level=confidence_level)


@dataclass(frozen=True)
class ScoreInterval:
    """A task's main score over ``n`` items (pairs, queries, examples) and its bootstrap interval (0-1 scale)."""

    n: int
    unit: str
    score: float
    low: float
    high: float
    confidence_level: float


def _interval(data: tuple, statistic, n: int, unit: str, score: float, n_resamples: int, seed: int,
              confidence_level: float, paired: bool, vectorized: bool) -> ScoreInterval:
    from scipy.stats import bootstrap

    if n < 3:
        raise ValueError(f"a bootstrap over {n} {unit} says nothing; need at least 3")
    res = bootstrap(data, statistic, paired=paired, vectorized=vectorized, n_resamples=n_resamples,
                    confidence_level=confidence_level, method="percentile", rng=np.random.default_rng(seed))
    return ScoreInterval(n=n, unit=unit, score=float(score), low=float(res.confidence_interval.low),
                         high=float(res.confidence_interval.high), confidence_level=confidence_level)


def spearman_interval(predicted, gold, n_resamples: int = 2000, seed: int = 42,
                      confidence_level: float = 0.95) -> ScoreInterval:
    """Spearman of ``predicted`` against ``gold`` with a percentile interval over resampled pairs (paired)."""
    from scipy.stats import spearmanr

    predicted, gold = np.asarray(predicted, dtype=float), np.asarray(gold, dtype=float)
    if len(predicted) != len(gold):
        raise ValueError(f"predicted and gold must be one value per pair, got {len(predicted)} and {len(gold)}")

    def spearman(p, g):
        return spearmanr(p, g).statistic

    return _interval((predicted, gold), spearman, len(gold), "pairs", spearman(predicted, gold), n_resamples, seed,
                     confidence_level, paired=True, vectorized=False)


def mean_interval(values, unit: str, n_resamples: int = 2000, seed: int = 42,
                  confidence_level: float = 0.95) -> ScoreInterval:
    """Mean of per-item scores (a query's nDCG, an example's accuracy) with a percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    return _interval((values,), np.mean, len(values), unit, values.mean(), n_resamples, seed, confidence_level,
                     paired=False, vectorized=True)
