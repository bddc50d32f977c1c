"""Plain metric functions: means with their standard errors, group averages, pass@k."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    n = len(values)
    if n < 2:
        return 0.0
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def macro(values_by_group: dict[str, Sequence[float]]) -> float:
    """Unweighted mean of the group means (C-Eval, CMMLU, AGIEval)."""
    return mean([mean(v) for v in values_by_group.values()])


def macro_stderr(values_by_group: dict[str, Sequence[float]]) -> float:
    """Standard error of an unweighted mean of independent group means."""
    k = len(values_by_group)
    return math.sqrt(sum(stderr(v) ** 2 for v in values_by_group.values())) / k if k else 0.0


def group_by(pairs: Iterable[tuple[str, float]]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for name, value in pairs:
        groups[name].append(value)
    return dict(groups)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), in a stable product form."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


# ----------------------------------------------------------------------------- intervals

Z95 = 1.959963984540054  # two-sided 95% normal quantile, scipy.stats.norm.ppf(0.975)


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """sum(w * x) / sum(w): the headline of a task from its Records' scores and weights."""
    total = sum(weights)
    if not values or total <= 0:
        raise ValueError("weighted mean of no values (or of zero total weight)")
    return sum(w * x for w, x in zip(weights, values)) / total


def effective_n(weights: Sequence[float]) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: n for equal weights, fewer for a macro
    average over subsets of unequal sizes (a weighted mean has the variance of a plain mean of this
    many items when the items' variances are equal). 0 for no weights."""
    sq = sum(w * w for w in weights)
    return sum(weights) ** 2 / sq if sq > 0 else 0.0


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) of a proportion p observed on n items,
    fractions. n may be fractional (an effective n of a weighted mean); for integer p * n it equals
    scipy.stats.binomtest(k, n).proportion_ci(method="wilson"). Unlike the normal (Wald) interval it
    never collapses at 0 or 1 (0/16 -> 0 to 19.4%) nor leaves [0, 1] (3/5 -> 23.1 to 88.2%).
    Per-item scores in [0, 1] that are not 0/1 (pass@k over several samples) have a variance at most
    p(1 - p), so the interval is conservative for them. (nan, nan) for n <= 0.
    Source: E. B. Wilson (1927), JASA 22:209; Brown, Cai and DasGupta (2001), Statist. Sci. 16:101."""
    if not n > 0 or math.isnan(p):
        return math.nan, math.nan
    p = min(1.0, max(0.0, p))
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
