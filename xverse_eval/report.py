"""The comparison table: our scores beside the scores XVERSE reported, and where each number came from."""
from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import EvalError
from .paths import results_dir


@lru_cache(maxsize=None)
def reported() -> dict[str, Any]:
    return json.loads((results_dir() / "reported_scores.json").read_text(encoding="utf-8"))


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise EvalError(f"no results.json in {run_dir} (run `xverse-eval score {run_dir}` first)")
    return json.loads(path.read_text(encoding="utf-8"))


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _row_order(tasks: set[str]) -> list[tuple[str, dict | None]]:
    rows = [(r["task"], r) for r in reported()["rows"] if r["task"] in tasks]
    extra = sorted(tasks - {t for t, _ in rows})
    return rows + [(t, None) for t in extra]


def table(runs: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the comparison table (first row is the header)."""
    models = reported()["models"]
    names = [r["config"]["model"]["name"] for r in runs]
    header = ["Capability", "Dataset", "Shots"] + [f"{n} (ours)" for n in names] + ["± stderr", "n"] + models + ["Δ vs XVERSE-65B"]
    out = [header]
    tasks = {t for r in runs for t in r["results"]}
    for task, ref in _row_order(tasks):
        results = [r["results"].get(task) for r in runs]
        first = next(x for x in results if x)
        ours = [x["metrics"][x["metric"]] if x else None for x in results]
        stderr_key = f"{first['metric']}_stderr"
        row = [ref["capability"] if ref else "", ref["dataset"] if ref else task, f"{first['shots']}-shot"]
        row += [_pct(v) + ("*" if x and x.get("limit") else "") for v, x in zip(ours, results)]
        row += [_pct(first["metrics"].get(stderr_key)), str(first["n"])]
        row += [("-" if ref is None or ref["scores"].get(m) is None else f"{ref['scores'][m]:.1f}") for m in models]
        ref_x = ref["scores"].get("XVERSE-65B") if ref else None
        row.append("-" if ref_x is None or ours[-1] is None else f"{100 * ours[-1] - ref_x:+.1f}")
        out.append(row)
    return out


def provenance(runs: list[dict[str, Any]]) -> list[list[str]]:
    out = [["Run", "Task", "Version", "Variant", "Split", "Shots", "n", "Limit", "Prompt hash", "Data revision", "Notes"]]
    for run in runs:
        for task, x in run["results"].items():
            out.append([run["config"]["model"]["name"], task, x["version"], x["variant"], x["split"], str(x["shots"]), str(x["n"]),
                        str(x["limit"] or "-"), x["prompt_hash"], x["data_revision"], "; ".join(x["notes"]) or "-"])
    return out


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def render(runs: list[dict[str, Any]], fmt: str = "md") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows(table(runs))
        return buf.getvalue()
    if fmt == "json":
        return json.dumps({"table": table(runs), "provenance": provenance(runs)}, indent=2, ensure_ascii=False)
    if fmt != "md":
        raise EvalError(f"unknown report format {fmt!r}; use md, csv or json")
    ref = reported()
    parts = [
        "## Scores (percent)",
        "",
        markdown(table(runs)),
        "",
        "`*` = run with --limit (a subset of the items): not comparable with the reported numbers.",
        f"Reported columns: {ref['source']}. {ref['note']}",
        "",
        "## Where each number came from",
        "",
        markdown(provenance(runs)),
        "",
    ]
    for run in runs:
        model = run["config"]["model"]
        parts.append(f"- {model['name']}: dtype {model.get('dtype')}, revision {model.get('revision') or '-'}, "
                     f"xverse-eval {run['config'].get('xverse_eval_version')}, git {run['config'].get('git_sha') or '-'}")
    return "\n".join(parts) + "\n"
