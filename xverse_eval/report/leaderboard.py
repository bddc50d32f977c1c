"""The leaderboard: one row per run and per reported model, one column per task in the XVERSE
table's order, and an average whose title says what it averages.

A task whose runs differ in task version, variant, prompt hash, split, shots, limit, subsets or data
revision is flagged (‡) and left out of the average; a non-default variant (†) or a run of some items
(*) is flagged too, since the reported rows used the default protocol on all items.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from ..errors import EvalError
from .runs import dataset_label, headline, is_full, labels, reported, reported_row, task_order
from .table import DIFFER_MARK, LIMIT_MARK, VARIANT_MARK, comparable_key, markdown


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def build(runs: list[dict[str, Any]], sort: str | None = None) -> dict[str, Any]:
    """{"tasks", "columns", "average_of", "rows": [{"model", "kind", "scores", "marks", "average"}], "notes"};
    scores in percent (None where there is none)."""
    tasks = task_order({t for r in runs for t in r["results"]})
    first = {t: next(r for r in runs if t in r["results"]) for t in tasks}
    name_of = {t: dataset_label(t, first[t]) for t in tasks}
    mixed = [t for t in tasks if len({comparable_key(r, t) for r in runs if t in r["results"]}) > 1]
    average_of = [t for t in tasks if t not in mixed and all(t in r["results"] for r in runs)]
    rows = []
    for run, name in zip(runs, labels(runs)):
        scores, marks = {}, {}
        for t in tasks:
            res = run["results"].get(t)
            score = headline(res)[0] if res else None
            scores[t] = None if score is None else round(100 * score, 2)
            marks[t] = "".join(m for m, on in ((LIMIT_MARK, res and not is_full(run, t)), (VARIANT_MARK, res and res["variant"] != "default"),
                                               (DIFFER_MARK, res and t in mixed)) if on)
        rows.append({"model": name, "kind": "run", "scores": scores, "marks": marks})
    for model in reported()["models"]:
        scores = {t: (reported_row(t) or {}).get("scores", {}).get(model) for t in tasks}
        rows.append({"model": model, "kind": "reported", "scores": scores, "marks": {t: "" for t in tasks}})
    for row in rows:
        values = [row["scores"][t] for t in average_of]
        row["average"] = round(_mean(values), 2) if values and None not in values else None
    notes = []
    if average_of:
        notes.append(f"Average: unweighted mean of {', '.join(name_of[t] for t in average_of)}; '-' where a row lacks one of them.")
    else:
        notes.append("Average: none (no task that every run has with one configuration).")
    if mixed:
        notes.append(f"{DIFFER_MARK} runs differ in task version, variant, prompt hash, split, shots, limit, subsets or data revision: "
                     f"{', '.join(name_of[t] for t in mixed)}; not averaged.")
    if any(VARIANT_MARK in m for r in rows for m in r["marks"].values()):
        notes.append(f"{VARIANT_MARK} a non-default variant; the reported rows used the default protocol.")
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
    header = ["Model", "Kind", *board["columns"], board["average_title"]]
    out = [header]
    for row in board["rows"]:
        cells = ["-" if row["scores"][t] is None else f"{row['scores'][t]:.1f}{row['marks'][t]}" for t in board["tasks"]]
        kind = "ours" if row["kind"] == "run" else "reported"
        out.append([row["model"], kind, *cells, "-" if row["average"] is None else f"{row['average']:.1f}"])
    return out


def render(runs: list[dict[str, Any]], fmt: str = "md", sort: str | None = None) -> str:
    """The leaderboard as md (table and notes), csv (the table) or json (`build`'s dict)."""
    board = build(runs, sort)
    if fmt == "json":
        return json.dumps(board, indent=2, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows(board))
        return buf.getvalue()
    if fmt != "md":
        raise EvalError(f"unknown leaderboard format {fmt!r}; use md, csv or json")
    notes = [f"- {n.replace(LIMIT_MARK, chr(92) + LIMIT_MARK, 1) if n.startswith(LIMIT_MARK) else n}" for n in board["notes"]]
    return "\n".join(["## Leaderboard (percent)", "", markdown(rows(board)), "", *notes]) + "\n"
