"""One notion of "comparable": whether two runs' results of a task are the same measurement.

`compare` (refuses incomparable runs, exit 3), `report` (flags a column that differs from the
row's first run, ‡) and `leaderboard` (flags the task and leaves it out of the average, ‡; merges
runs of one model into one row) all decide it here, from the same fields:

- per task: task version, variant, prompt hash, split, shots, --limit, subsets, data revision,
  headline metric, how the headline averages items (micro, macro, weighted), the sandbox mode for
  tasks that execute code, and any declared deviation from the protocol;
- per run: whether a chat template was applied, the system instruction, and fewshot-as-multiturn.

Everything about the model itself (weights, tokenizer, and so the chat template's text, which
ships with the tokenizer) is what a comparison varies, so it is not a field: two models are
comparable when both ran plain, or both through their own chat templates with the same settings.
A run dict is ours (runs.load_results): {"results": {task: TaskResult dict}, "config": manifest};
keys older runs lack read as their defaults.
"""
from __future__ import annotations

import json
from typing import Any

# (label, how a run's value is read) in the order messages name them
TASK_FIELDS = ("task version", "variant", "prompt hash", "split", "shots", "limit", "subsets", "data revision", "metric", "average",
               "sandbox", "deviations")
RUN_FIELDS = ("chat template", "system instruction", "fewshot as multiturn")


def _identity(run: dict[str, Any], task: str) -> dict[str, Any]:
    return run.get("config", {}).get("identity", {}).get("tasks", {}).get(task, {})


def declared_average(run: dict[str, Any], task: str) -> str:
    """How TASK's headline averages its items in RUN: the result's "average", else the task class's
    declared `average` (runs written before results carried it), else "micro"."""
    res = run["results"][task]
    if res.get("average"):
        return res["average"]
    try:
        from .registry import get_task_class

        return get_task_class(task).average
    except Exception:  # a task this install does not know (an old plugin): items count equally
        return "micro"


def executes_code(run: dict[str, Any], task: str) -> bool:
    """Whether TASK's score comes from running model-written code (its sandbox mode then matters)."""
    if run["results"][task]["metric"].startswith("pass@"):
        return True
    try:
        from .registry import get_task_class

        return bool(get_task_class(task).needs_sandbox)
    except Exception:
        return False


def deviations(run: dict[str, Any], task: str) -> list[str]:
    """Declared departures from TASK's protocol (a result's or the manifest's "deviations"), sorted."""
    res, config = run["results"][task], run.get("config", {})
    found = list(res.get("deviations") or ())
    declared = config.get("deviations") or {}
    found += list(declared.get(task, ()) if isinstance(declared, dict) else declared)
    return sorted({str(d) for d in found})


def run_settings(run: dict[str, Any]) -> dict[str, Any]:
    """The run-wide settings that change what every task measures (RUN_FIELDS -> value)."""
    chat = run.get("config", {}).get("chat") or {}
    return {"chat template": bool(chat), "system instruction": chat.get("system_instruction") or None,
            "fewshot as multiturn": bool(chat.get("fewshot_as_multiturn"))}


def signature(run: dict[str, Any], task: str) -> dict[str, Any]:
    """Everything but the model that determines TASK's number in RUN: TASK_FIELDS then RUN_FIELDS,
    label -> a hashable value. Two results are comparable iff their signatures are equal."""
    res, ident = run["results"][task], _identity(run, task)
    subsets = ident.get("subsets", "all")
    out = {
        "task version": res["version"], "variant": res["variant"], "prompt hash": res["prompt_hash"], "split": res["split"],
        "shots": res["shots"], "limit": res.get("limit"),
        "subsets": subsets if isinstance(subsets, str) else json.dumps(list(subsets)),
        "data revision": ident.get("data_revision", res["data_revision"]), "metric": res["metric"],
        "average": declared_average(run, task),
        "sandbox": run.get("config", {}).get("sandbox") if executes_code(run, task) else None,
        "deviations": ", ".join(deviations(run, task)) or None,
    }
    out.update(run_settings(run))
    return out


def key(run: dict[str, Any], task: str) -> tuple:
    """The signature as a tuple, for grouping runs by measurement."""
    return tuple(signature(run, task).values())


def differences(a: dict[str, Any], b: dict[str, Any], task: str) -> list[tuple[str, Any, Any]]:
    """(field, a's value, b's value) for every field of TASK's signature where A and B differ."""
    sa, sb = signature(a, task), signature(b, task)
    return [(name, sa[name], sb[name]) for name in sa if sa[name] != sb[name]]


def comparable(a: dict[str, Any], b: dict[str, Any], task: str) -> bool:
    """Whether A's and B's results of TASK are the same measurement (of possibly different models)."""
    return not differences(a, b, task)


def describe(diffs: list[tuple[str, Any, Any]]) -> str:
    """'variant ('default' -> 'lm-eval'), limit (30 -> 10)': the differences, old -> new."""
    return ", ".join(f"{name} ({x!r} -> {y!r})" for name, x, y in diffs)


def departures(run: dict[str, Any], task: str) -> list[str]:
    """What makes RUN's TASK depart from the protocol behind the reported numbers (default variant,
    plain prompts, no declared deviation): the report's and leaderboard's † mark, in words."""
    res, settings = run["results"][task], run_settings(run)
    out = []
    if res["variant"] != "default":
        out.append(f"variant `{res['variant']}`")
    if settings["chat template"]:
        out.append("chat template")
    if settings["system instruction"]:
        out.append("system instruction")
    if settings["fewshot as multiturn"]:
        out.append("shots as turns")
    out += [f"deviation: {d}" for d in deviations(run, task)]
    return out
