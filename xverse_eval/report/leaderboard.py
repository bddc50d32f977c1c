"""The leaderboard: one row per model (runs of one model merged where they can be) and per reported
model, one column per task in the XVERSE table's order, and an average whose title says what it
averages.

Runs of one model (same name and fingerprint, same run-wide settings: chat template, system
instruction, shots as turns) that share no task merge into one row; a run that repeats a task of
the row starts another row (two measurements of one task are two rows). A task whose runs are not
the same measurement (comparable.py: task version, variant, prompt hash, split, shots, limit,
subsets, data revision, metric, averaging, sandbox, chat settings, declared deviations) is flagged
(‡) and left out of the average; a departure from the reported protocol (†: a non-default variant,
a chat template, ...) or a run of some items (*) is flagged too, since the reported rows used the
default protocol on all items. The CSV export keeps numbers and markers in separate columns.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .. import comparable
from ..errors import EvalError
from .runs import dataset_label, headline, interval, is_full, numbered, reported, reported_row, task_order
from .table import DIFFER_MARK, LIMIT_MARK, VARIANT_MARK, markdown


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _model_key(run: dict[str, Any]) -> str:
    """The model a run measured: its name and fingerprint (the manifest's model entry for old runs)."""
    config = run["config"]
    return json.dumps([config["model"].get("name"), config.get("identity", {}).get("model", config["model"])], sort_keys=True, default=str)


def merge_runs(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs grouped into leaderboard rows, in order of first appearance: a run joins the first row of
    the same model and run-wide settings that has none of its tasks, else starts a row."""
    groups: list[list[dict[str, Any]]] = []
    for run in runs:
        home = next((g for g in groups if _model_key(g[0]) == _model_key(run)
                     and comparable.run_settings(g[0]) == comparable.run_settings(run)
                     and not any(set(r["results"]) & set(run["results"]) for r in g)), None)
        if home is None:
            groups.append([run])
        else:
            home.append(run)
    return groups


def row_labels(groups: list[list[dict[str, Any]]]) -> list[str]:
    """One distinct title per row: the model name, then the run dirs' names where two rows share a
    model, then a number where even that repeats."""
    names = [g[0]["config"]["model"]["name"] for g in groups]
    out = []
    for name, group in zip(names, groups):
        dirs = [Path(r["path"]).name for r in group if r.get("path")]
        out.append(f"{name} [{'+'.join(dirs)}]" if names.count(name) > 1 and dirs else name)
    return numbered(out)


def build(runs: list[dict[str, Any]], sort: str | None = None) -> dict[str, Any]:
    """{"tasks", "columns", "average_of", "average_title", "rows": [{"model", "kind", "runs", "scores",
    "intervals", "marks", "average"}], "notes"}; scores and 95% Wilson intervals in percent (None
    where there is none)."""
    tasks = task_order({t for r in runs for t in r["results"]})
    having = {t: [r for r in runs if t in r["results"]] for t in tasks}
    name_of = {t: dataset_label(t, having[t][0]) for t in tasks}
    order = comparable.TASK_FIELDS + comparable.RUN_FIELDS
    differ = {t: sorted({d[0] for r in having[t][1:] for d in comparable.differences(having[t][0], r, t)}, key=order.index) for t in tasks}
    mixed = [t for t in tasks if differ[t]]
    groups = merge_runs(runs)
    average_of = [t for t in tasks if t not in mixed and all(any(t in r["results"] for r in g) for g in groups)]
    rows = []
    for group, name in zip(groups, row_labels(groups)):
        scores, intervals, marks = {}, {}, {}
        for t in tasks:
            run = next((r for r in group if t in r["results"]), None)
            score = headline(run["results"][t])[0] if run else None
            ci = interval(run, t) if run else None
            scores[t] = None if score is None else round(100 * score, 2)
            intervals[t] = None if ci is None else [round(100 * ci[0], 2), round(100 * ci[1], 2)]
            marks[t] = "" if run is None else "".join(m for m, on in ((LIMIT_MARK, not is_full(run, t)), (VARIANT_MARK, comparable.departures(run, t)),
                                                                    (DIFFER_MARK, t in mixed)) if on)
        rows.append({"model": name, "kind": "run", "runs": [r.get("path") for r in group], "scores": scores, "intervals": intervals, "marks": marks})
    for model in reported()["models"]:
        scores = {t: (reported_row(t) or {}).get("scores", {}).get(model) for t in tasks}
        rows.append({"model": model, "kind": "reported", "runs": [], "scores": scores, "intervals": {t: None for t in tasks},
                     "marks": {t: "" for t in tasks}})
    for row in rows:
        values = [row["scores"][t] for t in average_of]
        row["average"] = round(_mean(values), 2) if values and None not in values else None
    notes = []
    if average_of:
        notes.append(f"Average: unweighted mean of {', '.join(name_of[t] for t in average_of)}; '-' where a row lacks one of them.")
    else:
        notes.append("Average: none (no task that every run has with one configuration).")
    for t in mixed:
        notes.append(f"{DIFFER_MARK} runs differ in {', '.join(differ[t])}: {name_of[t]}; not averaged.")
    if any(VARIANT_MARK in m for r in rows for m in r["marks"].values()):
        notes.append(f"{VARIANT_MARK} not the reported protocol (a non-default variant, a chat template, a system instruction, shots as turns "
                     "or a declared deviation); the reported rows used the default protocol.")
    if any(LIMIT_MARK in m for r in rows for m in r["marks"].values()):
        notes.append(f"{LIMIT_MARK} a run of some items (--limit or some subsets): not comparable with the reported rows.")
    notes.append(f"Reported rows: {reported()['source']}; shipped as results/reported_scores.json.")
    board = {"tasks": tasks, "columns": [name_of[t] for t in tasks], "average_of": average_of,
             "average_title": average_title([name_of[t] for t in average_of], len(tasks)), "rows": rows, "notes": notes}
    if sort:
        sort_rows(board, sort)
    return board


def average_title(names: list[str], n_tasks: int) -> str:
    """The average column's title names what it averages (a count when that is every task, over 3)."""
    if not names:
        return "Average"
    if len(names) == n_tasks and n_tasks > 3:
        return f"Average ({n_tasks} tasks)"
    return f"Average ({', '.join(names)})"


def sort_rows(board: dict[str, Any], column: str) -> None:
    """Highest first by a column named by its title, task name, or "average"; rows without a value last."""
    key = column.strip().lower()
    by_name = {t: t for t in board["tasks"]}
    by_name.update({c.lower(): t for c, t in zip(board["columns"], board["tasks"])})
    if key in ("average", "avg", board["average_title"].lower()):
        value = lambda row: row["average"]  # noqa: E731
    elif key in by_name:
        value = lambda row: row["scores"][by_name[key]]  # noqa: E731
    else:
        raise EvalError(f"--sort {column!r}: no such column; use one of average, {', '.join(board['tasks'])}")
    board["rows"].sort(key=lambda row: (value(row) is None, -(value(row) or 0.0)))


def rows(board: dict[str, Any]) -> list[list[str]]:
    """The markdown table's rows: scores with their markers beside them."""
    header = ["Model", "Kind", *board["columns"], board["average_title"]]
    out = [header]
    for row in board["rows"]:
        cells = ["-" if row["scores"][t] is None else f"{row['scores'][t]:.1f}{row['marks'][t]}" for t in board["tasks"]]
        kind = "ours" if row["kind"] == "run" else "reported"
        out.append([row["model"], kind, *cells, "-" if row["average"] is None else f"{row['average']:.1f}"])
    return out


def csv_rows(board: dict[str, Any]) -> list[list[str]]:
    """The CSV table: Model, Kind, one numeric column per task (percent, at most 2 decimals, empty where
    missing), the average; then each task's markers and 95% CI bounds in their own columns."""
    num = lambda x: "" if x is None else str(x)  # noqa: E731  (build rounded them to 2 decimals)
    columns = board["columns"]
    header = ["Model", "Kind", *columns, board["average_title"], *[f"{c} marks" for c in columns],
              *[f"{c} 95% CI {end}" for c in columns for end in ("low", "high")]]
    out = [header]
    for row in board["rows"]:
        kind = "ours" if row["kind"] == "run" else "reported"
        out.append([row["model"], kind, *[num(row["scores"][t]) for t in board["tasks"]], num(row["average"]),
                    *[row["marks"][t] for t in board["tasks"]],
                    *[num(row["intervals"][t] and row["intervals"][t][i]) for t in board["tasks"] for i in (0, 1)]])
    return out


def render(runs: list[dict[str, Any]], fmt: str = "md", sort: str | None = None) -> str:
    """The leaderboard as md (table and notes), csv (`csv_rows`) or json (`build`'s dict)."""
    board = build(runs, sort)
    if fmt == "json":
        return json.dumps(board, indent=2, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(csv_rows(board))
        return buf.getvalue()
    if fmt != "md":
        raise EvalError(f"unknown leaderboard format {fmt!r}; use md, csv or json")
    notes = [f"- {n.replace(LIMIT_MARK, chr(92) + LIMIT_MARK, 1) if n.startswith(LIMIT_MARK) else n}" for n in board["notes"]]
    return "\n".join(["## Leaderboard (percent)", "", markdown(rows(board)), "", *notes]) + "\n"
