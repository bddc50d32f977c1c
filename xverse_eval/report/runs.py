"""Reading finished runs: results.json, per-sample records, the reported scores, and the names a
table gives each run and each dataset.

results.json holds lm-eval's layout at the top level and ours under "xverse_eval" (see lmeval.py);
every reader here works on ours: {"schema_version", "status", "results": {task: TaskResult dict},
"config": the run manifest}. A run dict that came from a file also carries "path" (its run dir).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import EvalError
from ..paths import results_dir

SCHEMA = "xverse-eval/2"
KNOWN_SCHEMAS = ("xverse-eval/1", SCHEMA)  # /1: the whole file was ours, before the lm-eval layout


@lru_cache(maxsize=None)
def reported() -> dict[str, Any]:
    """results/reported_scores.json: the XVERSE-65B card's table (percent), rows in the card's order."""
    return json.loads((results_dir() / "reported_scores.json").read_text(encoding="utf-8"))


def reported_row(task: str) -> dict[str, Any] | None:
    return next((r for r in reported()["rows"] if r["task"] == task), None)


def task_order(tasks) -> list[str]:
    """Tasks in the XVERSE table's order, tasks the table does not have after them (sorted)."""
    card = [r["task"] for r in reported()["rows"]]
    return [t for t in card if t in tasks] + sorted(set(tasks) - set(card))


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Our part of RUN_DIR/results.json (either schema), plus "path". EvalError (exit 2) if it is
    missing or is not ours."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise EvalError(f"no results.json in {run_dir} (run `xverse-eval score {run_dir}` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"{path}: not valid JSON ({exc})") from None
    ours = data.get("xverse_eval", data) if isinstance(data, dict) else None
    if not isinstance(ours, dict) or ours.get("schema_version") not in KNOWN_SCHEMAS or "results" not in ours or "config" not in ours:
        raise EvalError(f"{path}: not an xverse-eval results file (no xverse_eval block with schema {SCHEMA})")
    return {**ours, "path": str(Path(run_dir))}


def load_records(run: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """The Records of samples/<task>.jsonl of a run loaded from disk, in file order."""
    if "path" not in run:
        raise EvalError(f"{run['config']['model']['name']}: per-sample records need a run dir")
    path = Path(run["path"]) / "samples" / f"{task}.jsonl"
    if not path.exists():
        raise EvalError(f"{path}: missing (the run's per-sample records of {task})")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise EvalError(f"{path}:{n}: not a JSON line") from None
    return rows


def identity(run: dict[str, Any], task: str) -> dict[str, Any]:
    """What determines a task's responses apart from the model: version, variant, subsets, prompt
    hash, shots, data revision (from the manifest; older manifests lack some)."""
    return run["config"].get("identity", {}).get("tasks", {}).get(task, {})


def subsets(run: dict[str, Any], task: str) -> list[str] | None:
    """The subsets a run evaluated, or None for all of them."""
    chosen = identity(run, task).get("subsets", "all")
    return None if chosen == "all" else list(chosen)


def is_full(run: dict[str, Any], task: str) -> bool:
    """All items of all subsets: the only runs a reported number can be compared with."""
    return not run["results"][task].get("limit") and subsets(run, task) is None


def dataset_label(task: str, run: dict[str, Any] | None = None) -> str:
    """The card's dataset name; a run of some subsets says which ("MMLU (anatomy)", "MMLU (3 subsets)")."""
    ref = reported_row(task)
    name = ref["dataset"] if ref else task
    chosen = subsets(run, task) if run else None
    if chosen:
        name += f" ({chosen[0]})" if len(chosen) == 1 else f" ({len(chosen)} subsets)"
    return name


def labels(runs: list[dict[str, Any]]) -> list[str]:
    """One distinct column title per run: the model name, then the run dir's name where two runs
    share a model, then a number where even that repeats."""
    names = [r["config"]["model"]["name"] for r in runs]
    out = []
    for name, run in zip(names, runs):
        if names.count(name) > 1 and run.get("path"):
            name = f"{name} [{Path(run['path']).name}]"
        out.append(name)
    return numbered(out)


def numbered(titles: list[str]) -> list[str]:
    """`titles` with " #1", " #2", ... after each one that still repeats (report columns, leaderboard rows)."""
    out = list(titles)
    seen: dict[str, int] = {}
    for i, name in enumerate(titles):
        seen[name] = seen.get(name, 0) + 1
        if titles.count(name) > 1:
            out[i] = f"{name} #{seen[name]}"
    return out


def headline(result: dict[str, Any]) -> tuple[float | None, float | None]:
    """(score, stderr) of a TaskResult dict, fractions."""
    metric = result["metric"]
    return result["metrics"].get(metric), result["metrics"].get(f"{metric}_stderr")


def subset_sizes(result: dict[str, Any]) -> dict[str, int]:
    """subset -> its items, from a TaskResult dict's groups (categories and other groupings, which
    carry a "kind", are not subsets); {} where the groups do not add up to the result's n."""
    sizes = {s: int(g["n"]) for s, g in result.get("groups", {}).items() if isinstance(g, dict) and "n" in g and "kind" not in g}
    return sizes if sum(sizes.values()) == result.get("n") else {}


def subset_weights(run: dict[str, Any], task: str) -> dict[str, float] | None:
    """subset -> the weight of its mean in TASK's headline (macro: 1 each; weighted: the group's
    declared "weight", Gaokao's points), or None where items count equally (micro) or the weights
    cannot be read from the result."""
    from ..comparable import declared_average

    average, result = declared_average(run, task), run["results"][task]
    sizes = subset_sizes(result)
    if average == "micro" or not sizes:
        return None
    if average == "macro":
        return {s: 1.0 for s in sizes}
    weights = {s: result["groups"][s].get("weight") for s in sizes}
    return None if any(not isinstance(w, (int, float)) for w in weights.values()) else {s: float(w) for s, w in weights.items()}


def effective_n(run: dict[str, Any], task: str) -> float:
    """Kish's effective n, (sum w)^2 / sum w^2, of the item weights of TASK's headline (item weight =
    its subset's weight / the subset's size): n for a micro average (or where the subsets are not in
    the result), fewer for a macro or weighted one."""
    result = run["results"][task]
    weights, sizes = subset_weights(run, task), subset_sizes(result)
    if weights is None:
        return float(result["n"])
    total = sum(weights.values())
    squares = sum(weights[s] ** 2 / sizes[s] for s in sizes)
    return total * total / squares if squares > 0 else float(result["n"])


def interval(run: dict[str, Any], task: str) -> tuple[float, float] | None:
    """The 95% Wilson interval of TASK's headline in RUN (fractions) with the headline's effective
    n (metrics.wilson, effective_n); None where there is no score."""
    from ..metrics import wilson

    score = headline(run["results"][task])[0]
    if score is None or score != score:  # missing or NaN
        return None
    return wilson(score, effective_n(run, task))
