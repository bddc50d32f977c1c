"""The report: the XVERSE card's table with each run's column (score, 95% Wilson interval, n, delta
to XVERSE-65B), footnotes only for what some row carries, and where each number came from.

The markdown table shows markers beside the numbers ("33.3*"); the CSV export keeps numbers in
numeric columns and the markers in their own columns."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from .. import comparable
from ..errors import EvalError
from .runs import dataset_label, headline, interval, is_full, labels, reported, reported_row, task_order

LIMIT_MARK, VARIANT_MARK, DIFFER_MARK = "*", "†", "‡"
SINGLE_ANSWER_MARK = "(1)"


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def ci_text(ci: tuple[float, float] | None) -> str:
    """An interval of fractions as the table shows it, in percent: "16.2–50.5"; "-" for none."""
    return "-" if ci is None else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def variant_text(task: str, variant: str) -> str:
    try:
        from ..registry import get_task_class

        declared = get_task_class(task).variants.get(variant, "")
        return str(getattr(declared, "doc", declared))
    except Exception:  # an unknown task name in an old run: the variant name alone
        return ""


class Footnotes:
    """Markers attached to cells, and the one line each marker explains (only markers used)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}

    def add(self, mark: str, text: str) -> str:
        bucket = self.lines.setdefault(mark, [])
        if text not in bucket:
            bucket.append(text)
        return mark

    def render(self) -> list[str]:
        return [f"{mark.replace('*', chr(92) + '*')} {line}" for mark in (LIMIT_MARK, VARIANT_MARK, DIFFER_MARK) for line in self.lines.get(mark, [])]


def cell_marks(run: dict[str, Any], task: str, first: dict[str, Any], notes: Footnotes, label: str) -> str:
    """The markers of RUN's cell of TASK (*, †, ‡), each explained once in NOTES."""
    res = run["results"][task]
    marks = ""
    if res.get("limit"):
        marks += notes.add(LIMIT_MARK, "run with --limit (the first N items of each subset): not comparable with the reported numbers, so no Δ.")
    departures = comparable.departures(run, task)
    if departures:
        if res["variant"] != "default" and variant_text(task, res["variant"]):
            departures[0] += f", {variant_text(task, res['variant'])}"
        marks += notes.add(VARIANT_MARK, f"{dataset_label(task)} ({label}): {'; '.join(departures)}; the reported numbers used the default protocol.")
    if run is not first:
        diff = comparable.differences(first, run, task)
        if diff:
            marks += notes.add(DIFFER_MARK, f"{dataset_label(task)}: {label} differs from the first run in {', '.join(d[0] for d in diff)}; "
                                            "not the same measurement.")
    return marks


@dataclass
class Cell:
    """One run's numbers for one task: fractions (None where missing), the markers beside them."""

    score: float | None = None
    ci: tuple[float, float] | None = None
    n: int | None = None
    delta: float | None = None  # points: ours minus XVERSE-65B's, only for runs of all items
    marks: str = ""


@dataclass
class Row:
    """One dataset of the card: its cells per run and the reported scores (percent)."""

    task: str
    capability: str
    dataset: str
    dataset_mark: str
    shots: int
    cells: list[Cell]
    reported: list[float | None]


def rows_of(runs: list[dict[str, Any]], notes: Footnotes | None = None) -> list[Row]:
    """The comparison table as numbers: one Row per task of any run, in the card's order."""
    notes = notes if notes is not None else Footnotes()
    models = reported()["models"]
    names = labels(runs)
    out = []
    for task in task_order({t for r in runs for t in r["results"]}):
        ref = reported_row(task)
        first = next(r for r in runs if task in r["results"])
        cells = []
        for run, name in zip(runs, names):
            res = run["results"].get(task)
            if res is None:
                cells.append(Cell())
                continue
            score = headline(res)[0]
            ref_x = ref["scores"].get("XVERSE-65B") if ref else None
            delta = None if ref_x is None or score is None or not is_full(run, task) else 100 * score - ref_x
            cells.append(Cell(score, interval(run, task), res["n"], delta, cell_marks(run, task, first, notes, name)))
        out.append(Row(task, ref["capability"] if ref else "", dataset_label(task, first),
                       SINGLE_ANSWER_MARK if ref and ref.get("footnote_single_answer_mc") else "", first["results"][task]["shots"],
                       cells, [None if ref is None else ref["scores"].get(m) for m in models]))
    return out


def table(runs: list[dict[str, Any]], notes: Footnotes | None = None) -> list[list[str]]:
    """Rows of the comparison table as text (first row is the header); scores in percent, markers
    beside them."""
    models = reported()["models"]
    header = ["Capability", "Dataset", "Shots"]
    for name in labels(runs):
        header += [f"{name} (ours)", "95% CI", "n", "Δ vs XVERSE-65B"]
    out = [header + models]
    for row in rows_of(runs, notes):
        line = [row.capability, row.dataset + (f" {row.dataset_mark}" if row.dataset_mark else ""), f"{row.shots}-shot"]
        for c in row.cells:
            line += ["-", "-", "-", "-"] if c.n is None else \
                [_pct(c.score) + c.marks, ci_text(c.ci), str(c.n), "-" if c.delta is None else f"{c.delta:+.1f}"]
        out.append(line + ["-" if x is None else f"{x:.1f}" for x in row.reported])
    return out


def _num(x: float | None, scale: float = 100.0) -> str:
    """A CSV number: percent rounded to 2 decimals ("33.33", "86.4"), empty where there is none."""
    return "" if x is None or x != x else str(round(scale * x, 2))


def csv_table(runs: list[dict[str, Any]]) -> list[list[str]]:
    """The comparison table for spreadsheets: numbers only in numeric columns (percent, at most 2 decimals;
    empty where missing), markers (*, †, ‡, (1)) in their own columns."""
    models = reported()["models"]
    header = ["Capability", "Dataset", "Dataset mark", "Shots"]
    for name in labels(runs):
        header += [f"{name} (ours)", f"{name} marks", f"{name} 95% CI low", f"{name} 95% CI high", f"{name} n", f"{name} Δ vs XVERSE-65B"]
    out = [header + models]
    for row in rows_of(runs):
        line = [row.capability, row.dataset, row.dataset_mark, str(row.shots)]
        for c in row.cells:
            line += [_num(c.score), c.marks, _num(c.ci and c.ci[0]), _num(c.ci and c.ci[1]), "" if c.n is None else str(c.n),
                     _num(c.delta, 1.0)]
        out.append(line + [_num(x, 1.0) for x in row.reported])
    return out


def provenance(runs: list[dict[str, Any]]) -> list[list[str]]:
    out = [["Run", "Task", "Version", "Variant", "Split", "Shots", "n", "Limit", "Prompt hash", "Data revision", "Notes"]]
    for run, name in zip(runs, labels(runs)):
        for task in task_order(run["results"]):
            x = run["results"][task]
            out.append([name, task, x["version"], x["variant"], x["split"], str(x["shots"]), str(x["n"]),
                        str(x["limit"] or "-"), x["prompt_hash"], x["data_revision"], "; ".join(x["notes"]) or "-"])
    return out


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


INTERVAL_NOTE = ("95% CI: Wilson score interval; for a headline that weights items unequally (a mean over subjects, "
                 "Gaokao's points) with the effective n = (Σw)²/Σw² of its item weights.")


def footer(runs: list[dict[str, Any]], notes: Footnotes) -> list[str]:
    """The lines under the table: used footnotes, the card's footnote (1) if a row carries it, the
    source of the reported columns, and how the interval is made."""
    ref = reported()
    tasks = {t for r in runs for t in r["results"]}
    lines = notes.render()
    if any((reported_row(t) or {}).get("footnote_single_answer_mc") for t in tasks):
        lines.append(f"(1) {ref['footnote_1']}")
    lines.append(f"{INTERVAL_NOTE} Δ: our score minus XVERSE-65B's, only for runs of all items.")
    lines.append(f"Reported columns: {ref['source']}; shipped as results/reported_scores.json. {ref['note']}")
    return lines


def render(runs: list[dict[str, Any]], fmt: str = "md") -> str:
    """The report of RUNS (run dicts from runs.load_results, or as evaluate returns them) as md, csv
    (csv_table) or json (the text table and the provenance)."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(csv_table(runs))
        return buf.getvalue()
    if fmt == "json":
        return json.dumps({"table": table(runs), "provenance": provenance(runs)}, indent=2, ensure_ascii=False)
    if fmt != "md":
        raise EvalError(f"unknown report format {fmt!r}; use md, csv or json")
    notes = Footnotes()
    rows = table(runs, notes)
    parts = ["## Scores (percent)", "", markdown(rows), "", *[f"- {line}" for line in footer(runs, notes)], "",
             "## Where each number came from", "", markdown(provenance(runs)), ""]
    for run, name in zip(runs, labels(runs)):
        model = run["config"]["model"]
        margs = ",".join(f"{k}={v}" for k, v in (model.get("model_args") or {}).items())
        parts.append(f"- {name}: dtype {model.get('dtype')}, revision {model.get('revision') or '-'}, "
                     + (f"model args {margs}, " if margs else "")
                     + f"xverse-eval {run['config'].get('xverse_eval_version')}, git {run['config'].get('git_sha') or '-'}")
    return "\n".join(parts) + "\n"
