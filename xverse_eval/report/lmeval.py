"""results.json in lm-evaluation-harness's layout (v0.4, typed in lm_eval/result_schema.py
`EvalResults`), so tools that read lm-eval results (its `make_table`, leaderboards, trackers) read
ours; our own record of the run sits beside it under "xverse_eval".

Differences from lm-eval (also in the README): metrics carry the filter "none" only; a task with
subsets (MMLU subjects, C-Eval subjects, AGIEval files) is a group whose subtasks are named
`<task>_<subset>` and hold the plain per-subset accuracy (micro, with its stderr), while the group's
own entry is the task's headline metric as XVERSE averaged it (macro for C-Eval/CMMLU/AGIEval);
MMLU categories and other groupings stay in our block only; `configs` holds strings that say what
ran (variant, split, prompt hash, data revision), not lm-eval task YAML; `date` is when the run
started; `total_evaluation_time_seconds` is this invocation's wall time (a resumed run's last leg,
a re-score's scoring time).
"""
from __future__ import annotations

import datetime
import math
from typing import Any


def _metric_entries(values: dict[str, float]) -> dict[str, float]:
    return {f"{k},none": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _subset_stderr(acc: float, n: int) -> float:
    """Standard error of a mean of n 0/1 values with mean acc (sample std / sqrt(n), as lm-eval)."""
    return math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else 0.0


def _timestamp(iso: str | None) -> float:
    try:
        return datetime.datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def _model_args(model: dict[str, Any]) -> str:
    parts = [f"pretrained={model.get('path') or model.get('model') or model.get('name')}"]
    parts += [f"{k}={model[k]}" for k in ("gguf_file", "revision", "dtype") if model.get(k)]
    parts += [f"{k}={v}" for k, v in (model.get("model_args") or {}).items()]  # --model-args, as given
    return ",".join(parts)


def lm_eval_results(ours: dict[str, Any], subsets: dict[str, list[str]], original: dict[str, int], elapsed_s: float) -> dict[str, Any]:
    """The whole results.json: lm-eval's keys from `ours` (the xverse_eval block: status, results,
    config), plus "xverse_eval": ours. `subsets`: task -> the subsets it evaluated ([""] if none);
    `original`: task -> items in the evaluated split of those subsets without --limit."""
    results: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    group_subtasks: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    for task, res in ours["results"].items():
        entry = {"name": task, "alias": task, "sample_len": res["n"], **_metric_entries(res["metrics"])}
        results[task] = entry
        named = [s for s in subsets.get(task, []) if s and s in res["groups"]]
        group_subtasks[task] = [f"{task}_{s}" for s in named]
        if named:
            groups[task] = dict(entry)
            for s in named:
                g = res["groups"][s]
                acc = float(g.get("acc", 0.0))
                results[f"{task}_{s}"] = {"name": f"{task}_{s}", "alias": s, "sample_len": int(g.get("n", 0)),
                                          "acc,none": acc, "acc_stderr,none": _subset_stderr(acc, int(g.get("n", 0)))}
    manifest = ours["config"]
    model = manifest.get("model", {})
    out["results"] = results
    if groups:
        out["groups"] = groups
    out["group_subtasks"] = group_subtasks
    out["configs"] = {task: {"task": task, "variant": res["variant"], "split": res["split"], "prompt_hash": res["prompt_hash"],
                             "data_revision": res["data_revision"]} for task, res in ours["results"].items()}
    parent = {sub: task for task, subs in group_subtasks.items() for sub in subs}  # subtask -> its task
    out["versions"] = {name: ours["results"][parent.get(name, name)]["version"] for name in results}
    out["n-shot"] = {name: ours["results"][parent.get(name, name)]["shots"] for name in results}
    out["higher_is_better"] = {name: {m.partition(",")[0]: True for m in entry if "," in m and "_stderr," not in m} for name, entry in results.items()}
    out["n-samples"] = {task: {"original": original.get(task, res["n"]), "effective": res["n"]} for task, res in ours["results"].items()}
    out["config"] = {"model": model.get("backend") or "transformers", "model_args": _model_args(model),
                     "model_dtype": str(model.get("dtype")), "model_revision": str(model.get("revision") or ""),
                     "limit": manifest.get("limit")}
    out["git_hash"] = manifest.get("git_sha") or ""
    out["date"] = _timestamp(manifest.get("created"))
    out["model_name"] = str(model.get("name") or model.get("model") or "")
    out["model_source"] = str(model.get("backend") or "")
    out["task_hashes"] = {task: res["prompt_hash"] for task, res in ours["results"].items()}
    out["total_evaluation_time_seconds"] = f"{elapsed_s:.2f}"
    out["xverse_eval"] = ours
    return out

