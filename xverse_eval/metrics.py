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
