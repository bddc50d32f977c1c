"""The report: the XVERSE card's table with each run's column (score, 95% CI, n, delta to
XVERSE-65B), footnotes only for what some row carries, and where each number came from."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from ..errors import EvalError
from .runs import dataset_label, headline, identity, is_full, labels, reported, reported_row, task_order

Z95 = 1.959963984540054  # two-sided 95% normal quantile

LIMIT_MARK, VARIANT_MARK, DIFFER_MARK = "*", "†", "‡"


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def ci95(score: float | None, stderr: float | None) -> str:
    """Normal-approximation 95% interval score ± 1.96 stderr, clipped to [0, 100], in percent."""
    if score is None or stderr is None:
        return "-"
    lo, hi = max(0.0, score - Z95 * stderr), min(1.0, score + Z95 * stderr)
    return f"{100 * lo:.1f}–{100 * hi:.1f}"


def comparable_key(run: dict[str, Any], task: str) -> tuple:
    """What must match for two runs' scores of a task to be the same measurement."""
    res, ident = run["results"][task], identity(run, task)
    return (res["version"], res["variant"], res["prompt_hash"], res["split"], res["shots"], res.get("limit"),
            json.dumps(ident.get("subsets", "all")), ident.get("data_revision", res["data_revision"]))


def variant_text(task: str, variant: str) -> str:
    try:
        from ..registry import get_task_class

        return get_task_class(task).variants.get(variant, "")
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
    res = run["results"][task]
    marks = ""
    if res.get("limit"):
        marks += notes.add(LIMIT_MARK, f"run with --limit (the first N items of each subset): not comparable with the reported numbers, so no Δ.")
    if res["variant"] != "default":
        text = variant_text(task, res["variant"])
        marks += notes.add(VARIANT_MARK, f"{dataset_label(task)} ({label}): variant `{res['variant']}`" + (f", {text}" if text else "")
                           + "; the reported numbers used the default protocol.")
    if run is not first and comparable_key(run, task) != comparable_key(first, task):
        fields = ("task version", "variant", "prompt hash", "split", "shots", "limit", "subsets", "data revision")
        diff = [f for f, a, b in zip(fields, comparable_key(first, task), comparable_key(run, task)) if a != b]
        marks += notes.add(DIFFER_MARK, f"{dataset_label(task)}: {label} differs from the first run in {', '.join(diff)}; not the same measurement.")
    return marks


def table(runs: list[dict[str, Any]], notes: Footnotes | None = None) -> list[list[str]]:
    """Rows of the comparison table (first row is the header); scores in percent."""
    notes = notes if notes is not None else Footnotes()
    models = reported()["models"]
    names = labels(runs)
    header = ["Capability", "Dataset", "Shots"]
    for name in names:
        header += [f"{name} (ours)", "95% CI", "n", "Δ vs XVERSE-65B"]
    out = [header + models]
    for task in task_order({t for r in runs for t in r["results"]}):
        ref = reported_row(task)
        first = next(r for r in runs if task in r["results"])
        dataset = dataset_label(task, first) + (" (1)" if ref and ref.get("footnote_single_answer_mc") else "")
        row = [ref["capability"] if ref else "", dataset, f"{first['results'][task]['shots']}-shot"]
        for run, name in zip(runs, names):
            res = run["results"].get(task)
            if res is None:
                row += ["-", "-", "-", "-"]
                continue
            score, stderr = headline(res)
            ref_x = ref["scores"].get("XVERSE-65B") if ref else None
            delta = "-" if ref_x is None or score is None or not is_full(run, task) else f"{100 * score - ref_x:+.1f}"
            row += [_pct(score) + cell_marks(run, task, first, notes, name), ci95(score, stderr), str(res["n"]), delta]
        row += ["-" if ref is None or ref["scores"].get(m) is None else f"{ref['scores'][m]:.1f}" for m in models]
        out.append(row)
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


def footer(runs: list[dict[str, Any]], notes: Footnotes) -> list[str]:
    """The lines under the table: used footnotes, the card's footnote (1) if a row carries it, the
    source of the reported columns, and how the interval is made."""
    ref = reported()
    tasks = {t for r in runs for t in r["results"]}
    lines = notes.render()
    if any((reported_row(t) or {}).get("footnote_single_answer_mc") for t in tasks):
        lines.append(f"(1) {ref['footnote_1']}")
    lines.append("95% CI: score ± 1.96 standard errors (normal approximation). "
                 "Δ: our score minus XVERSE-65B's, only for runs of all items.")
    lines.append(f"Reported columns: {ref['source']}; shipped as results/reported_scores.json. {ref['note']}")
    return lines


def render(runs: list[dict[str, Any]], fmt: str = "md") -> str:
    """The report of RUNS (run dicts from runs.load_results, or as evaluate returns them) as md, csv or json."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(table(runs))
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
        parts.append(f"- {name}: dtype {model.get('dtype')}, revision {model.get('revision') or '-'}, "
                     f"xverse-eval {run['config'].get('xverse_eval_version')}, git {run['config'].get('git_sha') or '-'}")
    return "\n".join(parts) + "\n"
