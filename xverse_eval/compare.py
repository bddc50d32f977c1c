"""The regression gate: `xverse-eval compare BASELINE NEW`.

Two runs are compared task by task on their per-sample Records (samples/<task>.jsonl), paired by
item id, with the statistic the task reports: its headline is a weighted mean of per-item scores,
headline == sum(w_i * x_i) / sum(w_i) (Record `weight`: 1 for a micro average, 1/n_subset for a mean
of subset means such as C-Eval, CMMLU and AGIEval, points/n_file for Gaokao-Bench), so the change is

    D = sum(w_i * (new_i - base_i)) / sum(w_i)          (= the difference of the two headlines)

and the p-value, the interval and the direction are all of D:

- p: a paired sign-flip permutation test of sum(w_i * d_i) (under "no change" each item's
  difference is as likely negated), exact over all 2^m sign patterns of the m changed items when
  m <= EXACT_MAX (scipy.stats.permutation_test), else NULL_RESAMPLES random ones (seed 0). For 0/1
  scores with equal weights this is exactly the exact McNemar test, which is then computed as such
  (scipy.stats.binomtest on the discordant pairs) and named so.
- 95% CI of D: for 0/1 scores, Newcombe's hybrid score interval for paired proportions (his method
  10, built from Wilson intervals: it never collapses to a point at small n), with the effective n
  (sum w)^2 / sum w^2 for unequal weights; for other scores (pass@k over several samples) a paired
  percentile bootstrap of D, resampling items within each subset (BOOTSTRAP_RESAMPLES, seed 0).

A task regresses only when D drops by more than the tolerance (points) AND p <= alpha. A sign-flip
test over m changed items cannot give p below 2 / 2^m: when that is above alpha, a drop beyond the
tolerance is "inconclusive (too few items to reach alpha)", which does not fail the gate (exit 0)
but says so in the verdict and the summary's last line. A significant change upwards is an
improvement, never a regression.

Runs that are not the same measurement (comparable.py: task version, variant, prompt hash, split,
shots, data revision, subsets, --limit, metric, averaging, sandbox, chat settings, declared
deviations; here also the item set) are refused: exit 3, naming what differs.
Exit codes: 0 pass, 1 regression, 2 usage error, 3 incomparable.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import comparable
from .errors import EvalError
from .metrics import Z95, effective_n, wilson
from .report.runs import dataset_label, labels, load_records, load_results, subset_weights, task_order

EXACT_MAX = 20  # changed items up to which the sign-flip test enumerates every sign pattern (2^20)
NULL_RESAMPLES = 9999  # random sign patterns above that: p >= 1 / (NULL_RESAMPLES + 1)
BOOTSTRAP_RESAMPLES = 2000
SEED = 0


class Incomparable(EvalError):
    """The two runs do not measure the same thing; the message names every difference."""

    exit_code = 3


@dataclass
class TaskComparison:
    """One task's verdict. Scores and the CI are fractions; `delta` is D, new - baseline."""

    task: str
    metric: str
    baseline: float  # headline scores, fractions
    new: float
    n: int
    test: str  # "McNemar" | "sign-flip (exact)" | "sign-flip (9999 random)"
    p: float
    ci: tuple[float, float]  # 95% CI of D
    verdict: str = ""
    discordant: tuple[int, int] | None = None  # (baseline right & new wrong, baseline wrong & new right), 0/1 scores
    note: str = ""
    label: str = ""  # the dataset as tables name it ("MMLU (anatomy)")
    changed: int = 0  # items whose score changed (m)
    min_p: float = 0.0  # the smallest p the test can give with these items
    average: str = "micro"

    @property
    def delta(self) -> float:
        return self.new - self.baseline


@dataclass
class Comparison:
    baseline: str
    new: str
    tolerance: float  # points
    alpha: float
    tasks: list[TaskComparison] = field(default_factory=list)

    @property
    def regressed(self) -> list[str]:
        return [t.task for t in self.tasks if t.verdict == "regression"]

    @property
    def inconclusive(self) -> list[str]:
        return [t.task for t in self.tasks if t.verdict.startswith("inconclusive")]

    @property
    def exit_code(self) -> int:
        """1 when a task regressed, else 0 (an inconclusive task does not fail the gate)."""
        return 1 if self.regressed else 0


# ----------------------------------------------------------------------------- statistics


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of min(b, c) successes in b + c discordant pairs
    at p = 1/2; 1.0 when there are none. Equals min(1, 2 * P[X <= min(b, c)]), X ~ Bin(b + c, 1/2)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def sign_flip(terms: Sequence[float], n_resamples: int = NULL_RESAMPLES, seed: int = SEED) -> tuple[float, str]:
    """(two-sided p, method) of a paired sign-flip permutation test of S = sum(terms), terms = w_i * d_i:
    exact over all 2^m sign patterns of the m nonzero terms when m <= EXACT_MAX
    (scipy.stats.permutation_test, permutation_type="samples", which flips signs for one sample),
    else `n_resamples` random patterns (seed `seed`), p = (1 + #{|S*| >= |S|}) / (1 + n_resamples)
    (the null is symmetric, so this is the two-sided p; it counts the observed pattern, so p >=
    1 / (n_resamples + 1)). p = 1 for no change or one (both sign patterns are as extreme)."""
    import numpy as np

    t = np.asarray([x for x in terms if x != 0], dtype=float)
    if t.size <= 1 or t.sum() == 0:
        return 1.0, "sign-flip (exact)" if t.size <= EXACT_MAX else f"sign-flip ({n_resamples} random)"
    if t.size <= EXACT_MAX:
        from scipy.stats import permutation_test

        res = permutation_test((t,), lambda x, axis=-1: x.sum(axis=axis), permutation_type="samples", vectorized=True,
                               n_resamples=2 ** t.size, batch=1 << 16, alternative="two-sided")
        return min(1.0, float(res.pvalue)), "sign-flip (exact)"
    rng, size, observed = np.random.default_rng(seed), np.abs(t), abs(float(t.sum()))
    batch = max(1, (1 << 22) // t.size)  # at most 4M signs in memory (an MMLU run changes thousands of items)
    extreme = 0
    for start in range(0, n_resamples, batch):
        signs = rng.integers(0, 2, size=(min(batch, n_resamples - start), t.size), dtype=np.int8) * 2 - 1
        extreme += int(np.sum(np.abs(signs @ size) >= observed * (1 - 1e-12)))  # ties up to float rounding count
    return (1 + extreme) / (1 + n_resamples), f"sign-flip ({n_resamples} random)"


def smallest_p(changed: int, exact: bool = True, n_resamples: int = NULL_RESAMPLES) -> float:
    """The smallest two-sided p a sign-flip (or exact McNemar) test can reach with `changed` nonzero
    differences: 2 / 2^m (every change the same way), 1 / (B + 1) when sampled; 1 for none."""
    if changed == 0:
        return 1.0
    return min(1.0, 2.0 ** (1 - changed)) if exact else 1.0 / (n_resamples + 1)


def paired_ci_binary(base: Sequence[float], new: Sequence[float], weights: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """95% CI of D = weighted mean(new - base) for 0/1 scores: Newcombe's hybrid score interval for
    paired proportions (R. G. Newcombe, Stat. Med. 1998; 17:2635, method 10) with the cell
    proportions weighted and n the effective n (sum w)^2 / sum w^2. Wilson bounds l, u of both
    headlines, phi the correlation of the 2x2 table (0 where a margin is empty):
    D - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2), D + sqrt((u1-p1)^2 - 2 phi (u1-p1)(p2-l2) + (p2-l2)^2),
    with p1 = new, p2 = baseline."""
    total = sum(weights)
    cell = lambda x, y: sum(w for w, b, a in zip(weights, base, new) if a == x and b == y) / total  # noqa: E731
    both, gain, loss, neither = cell(1, 1), cell(1, 0), cell(0, 1), cell(0, 0)  # (new, base)
    n = effective_n(weights)
    p1, p2 = both + gain, both + loss
    l1, u1 = wilson(p1, n, z)
    l2, u2 = wilson(p2, n, z)
    margins = (both + gain) * (loss + neither) * (both + loss) * (gain + neither)
    phi = (both * neither - gain * loss) / math.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def bootstrap_ci(diffs: Sequence[float], weights: Sequence[float], strata: Sequence[str] | None = None,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """95% percentile CI of D = sum(w d) / sum(w), resampling items with replacement within each
    stratum (subset), so every resample keeps the subsets' sizes; a point when every d is equal."""
    import numpy as np

    d, w = np.asarray(diffs, dtype=float), np.asarray(weights, dtype=float)
    observed = float((d * w).sum() / w.sum())
    if np.all(d == d[0]):
        return observed, observed
    rng = np.random.default_rng(seed)
    strata = list(strata) if strata is not None else [""] * len(d)
    num, den = np.zeros(n_resamples), np.zeros(n_resamples)
    for s in sorted(set(strata)):
        idx = np.array([i for i, x in enumerate(strata) if x == s])
        pick = idx[rng.integers(0, len(idx), size=(n_resamples, len(idx)))]
        num += (d[pick] * w[pick]).sum(axis=1)
        den += w[pick].sum(axis=1)
    lo, hi = np.percentile(num / den, [2.5, 97.5])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- per-item data


def item_values(records: list[dict], metric: str) -> dict[str, tuple[str, float, float | None]]:
    """id -> (subset, per-item score, weight or None): the record's score for the headline metric
    (else `correct`) and its `weight` (absent in runs written before Records carried it)."""
    out = {}
    for r in records:
        score = float(r["scores"][metric]) if metric in r.get("scores", {}) else float(r["correct"])
        out[r["id"]] = (r.get("subset", ""), score, float(r["weight"]) if "weight" in r else None)
    return out


def item_weights(run: dict, task: str, values: dict[str, tuple[str, float, float | None]], ids: list[str]) -> tuple[list[float], str]:
    """The items' weights in TASK's headline: the Records' own, else rebuilt from the declared
    average (micro 1; macro 1/n_subset; weighted the subset's weight in results.json / n_subset);
    with a note where they had to be rebuilt as micro."""
    if all(values[i][2] is not None for i in ids):
        return [values[i][2] for i in ids], ""
    sizes: dict[str, int] = {}
    for i in ids:
        sizes[values[i][0]] = sizes.get(values[i][0], 0) + 1
    average = comparable.declared_average(run, task)
    if average == "micro":
        return [1.0] * len(ids), ""
    subset_w = {s: 1.0 for s in sizes} if average == "macro" else subset_weights(run, task)
    if not subset_w or any(s not in subset_w for s in sizes):
        return [1.0] * len(ids), f"records carry no weights and the {average} average's weights are not in results.json: items weighted equally"
    return [subset_w[values[i][0]] / sizes[values[i][0]] for i in ids], ""


# ----------------------------------------------------------------------------- comparability


def _differences(base: dict, new: dict, task: str) -> list[str]:
    """What differs for TASK apart from the model, as 'task: what (old -> new)'."""
    return [f"{task}: {comparable.describe([d])}" for d in comparable.differences(base, new, task)]


def select_tasks(base: dict, new: dict, tasks: list[str] | None) -> list[str]:
    if tasks:
        from .evaluate import parse_tasks

        names = [s.name for s in parse_tasks(",".join(tasks))]
    else:
        names = task_order(base["results"])
    unknown = [t for t in names if t not in base["results"] and t not in new["results"]]
    if unknown:
        raise EvalError(f"--tasks: {', '.join(unknown)} in neither run (the baseline has {', '.join(task_order(base['results']))})")
    missing = [f"{t}: not in the {side} run" for t in names for side, run in (("baseline", base), ("new", new)) if t not in run["results"]]
    if missing:
        raise Incomparable("runs are incomparable: " + "; ".join(missing))
    return names


# ----------------------------------------------------------------------------- the gate


def verdict(delta: float, p: float, min_p: float, tolerance: float, alpha: float) -> str:
    """The verdict of a change of `delta` (fraction) with p-value `p`; `min_p` the smallest p the
    test could give with these items."""
    change_pts = 100 * delta
    if abs(change_pts) <= tolerance:
        return "pass (within tolerance)"
    if p <= alpha:
        return "regression" if change_pts < 0 else "improvement"
    if min_p > alpha:
        return f"inconclusive (too few items to reach alpha={alpha:g})"
    return "pass (not significant)"


def compare_task(base: dict, new: dict, task: str, tolerance: float, alpha: float) -> TaskComparison:
    """TASK's comparison (see the module docstring). Incomparable for another item set."""
    metric = base["results"][task]["metric"]
    old_v = item_values(load_records(base, task), metric)
    new_v = item_values(load_records(new, task), metric)
    if set(old_v) != set(new_v):
        only_old, only_new = sorted(set(old_v) - set(new_v)), sorted(set(new_v) - set(old_v))
        raise Incomparable(f"runs are incomparable: {task}: item set differs ({len(only_old)} only in the baseline, e.g. "
                           f"{only_old[:1]}; {len(only_new)} only in the new run, e.g. {only_new[:1]})")
    ids = sorted(old_v)
    weights, note = item_weights(base, task, old_v, ids)
    x, y = [old_v[i][1] for i in ids], [new_v[i][1] for i in ids]
    total = sum(weights)
    head_old, head_new = (sum(w * v for w, v in zip(weights, vals)) / total for vals in (x, y))
    notes = [note] if note else []
    for side, run, value in (("baseline", base, head_old), ("new", new, head_new)):
        stored = run["results"][task]["metrics"].get(metric)
        if stored is not None and not math.isclose(stored, value, abs_tol=1e-6):
            notes.append(f"the {side}'s records give {100 * value:.2f}, its results.json {100 * stored:.2f}: the test is on the records")
    terms = [w * (b - a) for w, a, b in zip(weights, x, y)]
    changed = sum(1 for t in terms if t != 0)
    binary = all(v in (0.0, 1.0) for v in (*x, *y))
    discordant = None
    if binary:
        discordant = (sum(1 for a, b in zip(x, y) if a > b), sum(1 for a, b in zip(x, y) if b > a))
        ci = paired_ci_binary(x, y, weights)
    else:
        ci = bootstrap_ci([b - a for a, b in zip(x, y)], weights, [old_v[i][0] for i in ids])
    if binary and max(weights) == min(weights):  # the sign-flip test is then exactly McNemar's
        test, p, exact = "McNemar", mcnemar_exact(*discordant), True
    else:
        p, test = sign_flip(terms)
        exact = test.endswith("(exact)")
    out = TaskComparison(task, metric, head_old, head_new, len(ids), test, p, ci, discordant=discordant, note="; ".join(notes),
                         label=dataset_label(task, base), changed=changed, min_p=smallest_p(changed, exact),
                         average=comparable.declared_average(base, task))
    out.verdict = verdict(out.delta, p, out.min_p, tolerance, alpha)
    return out


def compare(baseline: str | Path, new: str | Path, tolerance: float = 0.0, alpha: float = 0.05, tasks: list[str] | None = None) -> Comparison:
    """Compare two run dirs. EvalError (exit 2) for a missing or unreadable run; Incomparable (exit 3)
    naming every difference between them."""
    if tolerance < 0 or not 0 < alpha < 1:
        raise EvalError(f"--tolerance must be >= 0 points and --alpha in (0, 1); got {tolerance} and {alpha}")
    base, cand = load_results(baseline), load_results(new)
    names = select_tasks(base, cand, tasks)
    diffs = [d for t in names for d in _differences(base, cand, t)]
    if diffs:
        raise Incomparable("runs are incomparable: " + "; ".join(diffs))
    base_label, new_label = labels([base, cand])
    result = Comparison(base_label, new_label, tolerance, alpha)
    result.tasks = [compare_task(base, cand, t, tolerance, alpha) for t in names]
    return result


AVERAGE_WORDS = {"micro": "items", "macro": "subsets equally", "weighted": "subsets by weight"}


def markdown(c: Comparison) -> str:
    """The summary: one row per task (points), then the verdict line."""
    lines = [f"## Regression check: {c.new} vs baseline {c.baseline}", "",
             "| Task | Metric | Baseline | New | Δ (pts) | 95% CI of Δ | p | Test | n | Verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in c.tasks:
        test = t.test + (f" (discordant {t.discordant[0]}↓ {t.discordant[1]}↑)" if t.discordant else "")
        verdict_text = f"**{t.verdict}**" if t.verdict == "regression" else t.verdict
        lines.append(f"| {t.label or t.task} | {t.metric} ({AVERAGE_WORDS.get(t.average, t.average)}) | {100 * t.baseline:.2f} | {100 * t.new:.2f} | "
                     f"{100 * t.delta:+.2f} | {100 * t.ci[0]:+.2f} to {100 * t.ci[1]:+.2f} | {t.p:.4g} | {test} | {t.n} | {verdict_text} |")
    lines.append("")
    lines += [f"- {t.label or t.task}: {t.note}" for t in c.tasks if t.note]
    lines += [f"- {t.label or t.task}: {t.changed} changed item(s) cannot give p below {t.min_p:.3g} > alpha {c.alpha:g}; "
              "run more items (a larger --limit) to decide" for t in c.tasks if t.verdict.startswith("inconclusive")]
    lines.append(f"- A task regresses when its headline drops by more than {c.tolerance:g} points and p <= {c.alpha:g}. "
                 f"Δ, p and CI are of the headline (items weighted as it weights them): p from a paired sign-flip test "
                 f"(exact McNemar for 0/1 scores weighted equally), CI Newcombe's paired score interval for 0/1 scores, "
                 f"else a paired bootstrap within subsets ({BOOTSTRAP_RESAMPLES} resamples, seed {SEED}).")
    lines.append("")
    if c.regressed:
        lines.append(f"**FAIL**: regression in {', '.join(c.regressed)}")
    elif c.inconclusive:
        lines.append(f"**PASS**: no task regressed; inconclusive (too few items to reach alpha={c.alpha:g}): {', '.join(c.inconclusive)}")
    else:
        lines.append("**PASS**: no task regressed")
    return "\n".join(lines) + "\n"


def step_summary(text: str) -> None:
    """Append TEXT to $GITHUB_STEP_SUMMARY when GitHub Actions sets it."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            raise EvalError(f"$GITHUB_STEP_SUMMARY={path}: cannot append ({exc.strerror or exc})") from None
