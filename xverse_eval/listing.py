"""`xverse-eval list TASK`: what a task offers, in plain text.

Variants with their one-line descriptions and what each changes that the header shows (shots, split,
items of the full evaluated split, metric); then the subsets. Subset sizes need the data: they are
counted from the files when a data dir is given (--data-dir or $XVERSE_EVAL_DATA), else only the
total the task checks against is shown. Nothing here loads a model.
"""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from .data import data_root
from .paths import PACKAGE

if TYPE_CHECKING:
    from .task import Task


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() for r in rows]


def _count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "-"


def _variant_rows(cls: type["Task"]) -> list[list[str]]:
    """One row per variant: name, shots, split, items, metric, description. A variant may change
    shots, split or the expected size in its constructor (csqa, ceval:test, gaokao:loo), so each is
    built (without data: constructors only read their options)."""
    rows = [["variant", "shots", "split", "items", "metric", "description"]]
    for name, text in cls.variants.items():
        task = cls(data_dir=None, variant=name)
        rows.append([name, str(task.shots), task.split, _count(task.expected_count), task.metric, text])
    return rows


def _subset_sizes(cls: type["Task"], data_dir: str) -> dict[str, int]:
    """Items in the evaluated split of each subset (default variant), read from `data_dir`."""
    task = cls(data_dir=data_dir)
    return {subset: len(task.load_split(subset, task.split)) for subset in task.all_subsets()}


def protocol_page(task: str) -> str | None:
    """`docs/benchmarks/<task>.md`, the page of a built-in benchmark's protocol decisions, where this
    checkout has it (an installed wheel does not ship docs/); None otherwise."""
    page = PACKAGE.parent / "docs" / "benchmarks" / f"{task}.md"
    return str(page.relative_to(PACKAGE.parent)) if page.is_file() else None


def describe_task(cls: type["Task"], data_dir: str | None = None, width: int = 100) -> str:
    """The text of `xverse-eval list TASK` (no trailing newline). Raises EvalError for a data dir
    that does not exist or data files that are missing or malformed."""
    root = data_root(data_dir)
    lines = [f"{cls.name} (version {cls.version}): {cls.split} split, {cls.shots} shots"
             + (f" from {cls.fewshot_split}" if cls.fewshot_split else "")
             + f", metric {cls.metric}" + (f", {cls.formulation} scoring" if hasattr(cls, "formulation") else "")]
    if cls.source:
        lines += textwrap.wrap(f"source: {cls.source}", width, subsequent_indent="  ")
    page = protocol_page(cls.name)
    if page:
        lines.append(f"protocol: {page}")
    lines += ["", f"variants (--tasks {cls.name}:variant=NAME):"]
    lines += _table(_variant_rows(cls))
    subsets = cls.all_subsets()
    sizes = _subset_sizes(cls, str(root)) if root is not None else None
    lines.append("")
    if subsets == [""]:
        lines.append("no subsets" + (f"; {sizes['']:,} items in {root}" if sizes else ""))
        return "\n".join(lines)
    if sizes:
        lines.append(f"subsets ({len(subsets)}, {sum(sizes.values()):,} items in {root}; --tasks {cls.name}:SUBSET[:SUBSET...]):")
        lines += _table([["subset", "items"]] + [[s, f"{sizes[s]:,}"] for s in subsets])
    else:
        lines.append(f"subsets ({len(subsets)}; --tasks {cls.name}:SUBSET[:SUBSET...]; items per subset with --data-dir):")
        lines += textwrap.wrap(", ".join(subsets), width, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)
