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
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        seen[name] = seen.get(name, 0) + 1
        if out.count(name) > 1:
            out[i] = f"{name} #{seen[name]}"
    return out


def headline(result: dict[str, Any]) -> tuple[float | None, float | None]:
    """(score, stderr) of a TaskResult dict, fractions."""
    metric = result["metric"]
    return result["metrics"].get(metric), result["metrics"].get(f"{metric}_stderr")
