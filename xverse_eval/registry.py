"""Task registry: `@register_task` on a Task class in tasks/<name>.py; names are unique."""
from __future__ import annotations

import difflib
import importlib.util
import sys
from typing import TYPE_CHECKING

from .errors import EvalError
from .paths import tasks_dir

if TYPE_CHECKING:
    from .task import Task

_TASKS: dict[str, type["Task"]] = {}
_loaded = False


def register_task(cls: type["Task"]) -> type["Task"]:
    name = cls.name
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is registered twice ({_TASKS[name].__module__} and {cls.__module__})")
    _TASKS[name] = cls
    return cls


def load_tasks() -> None:
    """Import every tasks/*.py by path (under a private module name), then entry-point plugins."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for path in sorted(tasks_dir().glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"xverse_eval_tasks.{path.stem}"
        if module_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    from importlib.metadata import entry_points

    for ep in entry_points(group="xverse_eval.tasks"):
        ep.load()


def task_names() -> list[str]:
    load_tasks()
    return sorted(_TASKS)


def get_task_class(name: str) -> type["Task"]:
    load_tasks()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, _TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known tasks: {', '.join(sorted(_TASKS))}"
        raise EvalError(f"unknown task {name!r}{hint}")
    return _TASKS[name]
