"""The regression gate: `xverse-eval compare BASELINE NEW`.

Two runs are compared task by task on their per-sample Records (samples/<task>.jsonl), paired by
item id. A task regresses only when its score drops by more than the tolerance (points) AND the
paired test says the drop is significant at alpha:

- 0/1 per-item scores (accuracy, pass@1 with one sample): exact McNemar test, i.e. a two-sided
  binomial test (p = 1/2) on the discordant pairs (scipy.stats.binomtest);
- other per-item scores (pass@k over several samples, means): paired bootstrap of the mean
  difference (scipy.stats.bootstrap; p from the bootstrap distribution shifted to the null).

The 95% CI of the delta is a paired percentile bootstrap of the per-item difference, weighted as the
task's headline is (micro, or macro over subsets where the headline is the mean of subset means).
Runs whose tasks differ in anything but the model (task version, variant, prompt hash, split, shots,
data revision, subsets, item set, --limit, sandbox, chat settings) are refused: exit 3, naming what
differs. Exit codes: 0 pass, 1 regression, 2 usage error, 3 incomparable.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EvalError
from .report.runs import dataset_label, identity, labels, load_records, load_results, task_order

N_RESAMPLES = 2000
SEED = 0


class Incomparable(EvalError):
    """The two runs do not measure the same thing; the message names every difference."""

    exit_code = 3


@dataclass
class TaskComparison:
    task: str
    metric: str
    baseline: float  # headline scores, fractions
    new: float
    n: int
    test: str  # "McNemar" | "paired bootstrap"
    p: float
    ci: tuple[float, float]  # 95% CI of new - baseline, fraction (per-item, weighted as the headline)
    verdict: str = ""
    discordant: tuple[int, int] | None = None  # (baseline right & new wrong, baseline wrong & new right)
    note: str = ""
    label: str = ""  # the dataset as tables name it ("MMLU (anatomy)")

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
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


# ----------------------------------------------------------------------------- statistics


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of min(b, c) successes in b + c discordant pairs
    at p = 1/2; 1.0 when there are none. Equals min(1, 2 * P[X <= min(b, c)]), X ~ Bin(b + c, 1/2)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap(diffs, weights, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[tuple[float, float], float]:
    """(95% percentile CI, two-sided p) of the weighted mean of paired differences, resampling items.
    p = (1 + #{|b - d| >= |d|}) / (1 + B) over bootstrap means b (the null-shifted distribution)."""
    import numpy as np
    from scipy.stats import bootstrap

    d, w = np.asarray(diffs, dtype=float), np.asarray(weights, dtype=float)
    observed = float((d * w).sum() / w.sum())
    if np.all(d == d[0]):  # every resample is the same number
        return (observed, observed), (1.0 if observed == 0 else 1 / (1 + n_resamples))

    def weighted_mean(dd, ww, axis=-1):
        return (dd * ww).sum(axis=axis) / ww.sum(axis=axis)

    res = bootstrap((d, w), weighted_mean, paired=True, vectorized=True, n_resamples=n_resamples,
                    confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution
    p = (1 + int(np.sum(np.abs(dist - observed) >= abs(observed) - 1e-12))) / (1 + len(dist)) if observed else 1.0
    return (float(res.confidence_interval.low), float(res.confidence_interval.high)), min(1.0, p)


# ----------------------------------------------------------------------------- comparability


def _differences(base: dict, new: dict, task: str) -> list[str]:
    """What differs for TASK apart from the model, as 'task: what (old -> new)'."""
    out = []
    a, b = base["results"][task], new["results"][task]
    ia, ib = identity(base, task), identity(new, task)
    fields = [("task version", a["version"], b["version"]), ("variant", a["variant"], b["variant"]),
              ("prompt hash", a["prompt_hash"], b["prompt_hash"]), ("split", a["split"], b["split"]),
              ("shots", a["shots"], b["shots"]), ("limit", a.get("limit"), b.get("limit")),
              ("data revision", ia.get("data_revision", a["data_revision"]), ib.get("data_revision", b["data_revision"])),
              ("subsets", ia.get("subsets", "all"), ib.get("subsets", "all")), ("metric", a["metric"], b["metric"])]
    if a["metric"].startswith("pass@"):
        fields.append(("sandbox", base["config"].get("sandbox"), new["config"].get("sandbox")))
    chat_a, chat_b = base["config"].get("chat") or {}, new["config"].get("chat") or {}
    for key in ("system_instruction", "fewshot_as_multiturn"):
        fields.append((f"chat {key}", chat_a.get(key), chat_b.get(key)))
    fields.append(("chat template used", bool(chat_a), bool(chat_b)))
    return [f"{task}: {name} ({x!r} -> {y!r})" for name, x, y in fields if x != y]


def _item_values(records: list[dict], metric: str) -> dict[str, tuple[str, float]]:
    """id -> (subset, per-item score): the record's score for the headline metric, else `correct`."""
    return {r["id"]: (r.get("subset", ""), float(r["scores"][metric]) if metric in r.get("scores", {}) else float(r["correct"]))
            for r in records}


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


def _weights(values: dict[str, tuple[str, float]], ids: list[str], headline: float) -> tuple[list[float], str]:
    """Per-item weights that make the weighted item mean the headline: 1 (micro), or 1/(k * n_subset)
    when the headline is the unweighted mean of subset means; micro with a note otherwise."""
    n = len(ids)
    micro = sum(values[i][1] for i in ids) / n
    if math.isclose(micro, headline, abs_tol=1e-9):
        return [1.0] * n, ""
    sizes: dict[str, int] = {}
    for i in ids:
        sizes[values[i][0]] = sizes.get(values[i][0], 0) + 1
    macro = sum(sum(values[i][1] for i in ids if values[i][0] == s) / k for s, k in sizes.items()) / len(sizes)
    if math.isclose(macro, headline, abs_tol=1e-9):
        return [1.0 / sizes[values[i][0]] for i in ids], ""
    return [1.0] * n, "headline weighted otherwise (e.g. by points): CI and p are on the item mean"


def compare_task(base: dict, new: dict, task: str, tolerance: float, alpha: float) -> TaskComparison:
    metric = base["results"][task]["metric"]
    old_v = _item_values(load_records(base, task), metric)
    new_v = _item_values(load_records(new, task), metric)
    if set(old_v) != set(new_v):
        only_old, only_new = sorted(set(old_v) - set(new_v)), sorted(set(new_v) - set(old_v))
        raise Incomparable(f"runs are incomparable: {task}: item set differs ({len(only_old)} only in the baseline, e.g. "
                           f"{only_old[:1]}; {len(only_new)} only in the new run, e.g. {only_new[:1]})")
    ids = sorted(old_v)
    head_old = base["results"][task]["metrics"][metric]
    head_new = new["results"][task]["metrics"][metric]
    weights, note = _weights(old_v, ids, head_old)
    diffs = [new_v[i][1] - old_v[i][1] for i in ids]
    ci, p_boot = paired_bootstrap(diffs, weights)
    binary = all(v[1] in (0.0, 1.0) for v in (*old_v.values(), *new_v.values()))
    if binary:
        b = sum(1 for i in ids if old_v[i][1] == 1.0 and new_v[i][1] == 0.0)
        c = sum(1 for i in ids if old_v[i][1] == 0.0 and new_v[i][1] == 1.0)
        out = TaskComparison(task, metric, head_old, head_new, len(ids), "McNemar", mcnemar_exact(b, c), ci, discordant=(b, c), note=note)
    else:
        out = TaskComparison(task, metric, head_old, head_new, len(ids), "paired bootstrap", p_boot, ci, note=note)
    out.label = dataset_label(task, base)
    drop_pts = -100 * out.delta
    if out.p < alpha and drop_pts > tolerance:
        out.verdict = "regression"
    elif out.p < alpha and -drop_pts > tolerance:
        out.verdict = "improvement"
    elif abs(drop_pts) > tolerance:
        out.verdict = "pass (not significant)"
    else:
        out.verdict = "pass (within tolerance)"
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


def markdown(c: Comparison) -> str:
    """The summary: one row per task (points), then the verdict line."""
    lines = [f"## Regression check: {c.new} vs baseline {c.baseline}", "",
             "| Task | Metric | Baseline | New | Δ (pts) | 95% CI of Δ | p | Test | n | Verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in c.tasks:
        test = t.test + (f" (discordant {t.discordant[0]}↓ {t.discordant[1]}↑)" if t.discordant else "")
        verdict = f"**{t.verdict}**" if t.verdict == "regression" else t.verdict
        lines.append(f"| {t.label or t.task} | {t.metric} | {100 * t.baseline:.2f} | {100 * t.new:.2f} | {100 * t.delta:+.2f} | "
                     f"{100 * t.ci[0]:+.2f} to {100 * t.ci[1]:+.2f} | {t.p:.4g} | {test} | {t.n} | {verdict} |")
    lines.append("")
    notes = [f"{t.label or t.task}: {t.note}" for t in c.tasks if t.note]
    lines += [f"- {n}" for n in notes]
    lines.append(f"- A task regresses when it drops by more than {c.tolerance:g} points and p < {c.alpha:g}. "
                 f"CI: paired percentile bootstrap ({N_RESAMPLES} resamples, seed {SEED}).")
    lines.append("")
    lines.append(f"**FAIL**: regression in {', '.join(c.regressed)}" if c.regressed else "**PASS**: no task regressed")
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
