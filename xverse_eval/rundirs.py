"""`xverse-eval runs`: the run dirs under a folder (default results/runs), one line each.

A run dir is a folder holding a config.json (the manifest `run` writes before any model work); its
results.json, when there, says whether the run is complete or partial (--limit, some subsets) and
holds each task's headline score. A run without results.json is `running` while a process holds
its lock (read from /proc/locks, so listing never takes a lock itself), else `unfinished`: re-run
its command to finish it, resuming from the responses it stored. Nothing here loads a model or data.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import EvalError

DEFAULT_ROOT = Path("results") / "runs"


@dataclass(frozen=True)
class RunInfo:
    """One run dir as `runs` shows it. `items`: the items scored (complete/partial runs) or planned
    (unfinished ones, None before the plan is written); `scores`: "task metric value" strings."""

    path: Path
    model: str
    tasks: str
    status: str
    items: int | None
    scores: str
    created: str


def find_runs(root: Path) -> list[Path]:
    """Every folder under `root` (root itself included) that holds a config.json, sorted by path.
    Raises EvalError when `root` is not a folder."""
    if not root.is_dir():
        raise EvalError(f"no run dirs: {root} is not a folder (runs are written under {DEFAULT_ROOT} by default)")
    found = [Path(dirpath) for dirpath, _, files in os.walk(root) if "config.json" in files]
    return sorted(found)


def _task_label(spec: dict) -> str:
    """A task of the manifest as --tasks spells it: `mmlu:anatomy`, `humaneval:variant=instruct`."""
    parts = [spec.get("name", "?"), *spec.get("subsets", [])]
    if spec.get("variant", "default") != "default":
        parts.append(f"variant={spec['variant']}")
    return ":".join(parts)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _locked(path: Path) -> bool:
    """Whether some process holds a lock on `path` (Linux /proc/locks: device and inode)."""
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    tag = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(len(fields) > 5 and fields[5] == tag for fields in (line.split() for line in locks.splitlines()))


def _score(entry: dict) -> str:
    metric = entry.get("metric") or next(iter(entry.get("metrics", {})), "")
    value = entry.get("metrics", {}).get(metric)
    return f"{entry.get('task', '?')} {metric} {100 * value:.1f}" if isinstance(value, (int, float)) else f"{entry.get('task', '?')} -"


def read_run(path: Path) -> RunInfo:
    """What `runs` shows of one run dir. Raises EvalError naming the file for a config.json or
    results.json that is not JSON."""
    def load(name: str) -> dict | None:
        file = path / name
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise EvalError(f"{file}: malformed JSON ({exc})") from None

    config = load("config.json") or {}
    results = load("results.json")
    model = (config.get("model") or {}).get("name", "?")
    tasks = ",".join(_task_label(t) for t in config.get("tasks", [])) or "?"
    created = str(config.get("created", ""))[:16].replace("T", " ")
    if results is not None:
        ours = results.get("xverse_eval", results)  # xverse-eval/1 files have our block at the top level
        entries = list((ours.get("results") or {}).values())
        return RunInfo(path, model, tasks, ours.get("status", "?"), sum(int(e.get("n", 0)) for e in entries),
                       ", ".join(_score(e) for e in entries), created)
    plan = path / "plan.jsonl"
    items = _count_lines(plan) if plan.is_file() else None
    stored = sum(_count_lines(f) for f in path.glob("responses*.jsonl"))
    status = "running" if _locked(path / ".lock") else "unfinished"
    return RunInfo(path, model, tasks, status, items, f"{stored:,} responses stored", created)


def render(runs: list[RunInfo], root: Path) -> str:
    """The `runs` table: run (relative to root), model, tasks, status, items, scores, created (UTC)."""
    rows = [["run", "model", "tasks", "status", "items", "scores", "created (UTC)"]]
    for r in runs:
        rel = str(r.path.relative_to(root)) if r.path != root else str(root)
        rows.append([rel, r.model, r.tasks, r.status, f"{r.items:,}" if r.items is not None else "-", r.scores, r.created])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def list_runs(root: str | Path | None = None) -> str:
    """`xverse-eval runs [ROOT]`: the table of every run dir under ROOT (default results/runs), or a
    line saying there is none. Raises EvalError for a ROOT that is not a folder or a broken file."""
    folder = Path(root) if root else DEFAULT_ROOT
    if root is None and not folder.exists():
        return f"no run dirs under {folder} (xverse-eval run writes them there)"
    runs = [read_run(p) for p in find_runs(folder)]
    if not runs:
        return f"no run dirs under {folder} (xverse-eval run writes them there)"
    return render(runs, folder)
