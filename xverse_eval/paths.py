"""Where tasks, prompts and reported scores live: next to the package in a source checkout, inside
it (as xverse_eval/_tasks, _prompts, _results) in an installed wheel."""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (PACKAGE.parent / name, PACKAGE / f"_{name}"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ folder next to or inside {PACKAGE}")


def tasks_dir() -> Path:
    return _find("tasks")


def prompts_dir() -> Path:
    return _find("prompts")


def results_dir() -> Path:
    return _find("results")
