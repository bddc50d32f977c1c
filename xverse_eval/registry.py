"""Task registry: `@register_task` on a Task class; names are unique. Tasks come from three places:

- built in: every tasks/*.py of the package (templates in prompts/);
- entry points: the `xverse_eval.tasks` group of installed distributions (loading the entry point
  imports the module, whose decorator registers the task);
- --include-path DIR: every DIR/<name>.py (files starting with "_" are helpers, not imported), with
  its template DIR/<name>.jinja beside it (rendered with the same jinja settings as prompts/).

`task_origin(name)` says which; `xverse-eval list` prints it. A plugin that fails to import, clashes
with a known task name or registers nothing is refused with one line naming its file (EvalError).
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EvalError
from .paths import tasks_dir

if TYPE_CHECKING:
    from .task import Task

_TASKS: dict[str, type["Task"]] = {}
_ORIGINS: dict[str, str] = {}  # task name -> "built-in", "entry point NAME = VALUE" or a plugin file path
_INCLUDED: list[Path] = []
_loaded = False
_origin_now = "built-in"  # what register_task records while a source is being imported


def register_task(cls: type["Task"]) -> type["Task"]:
    name = cls.name
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is registered twice ({_TASKS[name].__module__} and {cls.__module__})")
    _TASKS[name] = cls
    _ORIGINS.setdefault(name, _origin_now)
    return cls


def _import_file(path: Path, module_name: str) -> None:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def load_tasks() -> None:
    """Import every tasks/*.py by path (under a private module name), then entry-point plugins."""
    global _loaded, _origin_now
    if _loaded:
        return
    _loaded = True
    for path in sorted(tasks_dir().glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"xverse_eval_tasks.{path.stem}"
        if module_name in sys.modules:
            continue
        _import_file(path, module_name)
    from importlib.metadata import entry_points

    for ep in entry_points(group="xverse_eval.tasks"):
        _origin_now = f"entry point {ep.name} = {ep.value}"
        try:
            ep.load()
        finally:
            _origin_now = "built-in"


def include_path(folder: str | Path) -> list[str]:
    """Load the task modules of an out-of-tree folder (--include-path): each DIR/<name>.py, with its
    templates from DIR. Returns the names of the tasks it registered. Idempotent per folder.
    Raises EvalError naming the file for a module that fails to import, registers nothing, or
    takes the name of a task that already exists."""
    global _origin_now
    load_tasks()
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise EvalError(f"--include-path {folder}: not a folder")
    if root in _INCLUDED:
        return [n for n, o in _ORIGINS.items() if o.startswith(str(root))]
    _INCLUDED.append(root)
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    added: list[str] = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        before = set(_TASKS)
        _origin_now = str(path)
        try:
            _import_file(path, f"xverse_eval_plugins.p{tag}.{path.stem}")
        except EvalError as exc:
            raise EvalError(f"task plugin {path}: {exc}") from None
        except ValueError as exc:
            if "registered twice" in str(exc):
                raise EvalError(f"task plugin {path}: {exc}") from None
            raise EvalError(f"task plugin {path}: {_one_line(exc)}") from None
        except BaseException as exc:  # SyntaxError, ImportError, anything its top level raises
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise EvalError(f"task plugin {path}: {_one_line(exc)}") from None
        finally:
            _origin_now = "built-in"
        new = sorted(set(_TASKS) - before)
        if not new:
            raise EvalError(f"task plugin {path}: registers no task (decorate a Task subclass with @register_task)")
        for name in new:
            _attach_templates(_TASKS[name], root, path)
        added += new
    return added


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _attach_templates(cls, root: Path, path: Path) -> None:
    """Make a plugin task render from its own folder: DIR/<name>.jinja, same jinja settings as the
    package's prompts (an overlay of that environment), and hash that file for its prompt hash."""
    from . import prompts
    from .task import Task

    if cls.render is not Task.render:  # the task renders its prompts itself
        return
    template = root / f"{cls.name}.jinja"
    if not template.is_file():
        raise EvalError(f"task plugin {path}: task {cls.name!r} has no template {template.name} beside it")
    import jinja2

    env = prompts.environment().overlay(loader=jinja2.FileSystemLoader(str(root)))
    source_hash = prompts.sha256(template.read_text(encoding="utf-8"))[:12]

    def render(self, sample, shots, choice=None):
        return env.get_template(template.name).render(doc=sample, shots=list(shots), choice=choice, variant=self.variant, task=self)

    cls.render = render
    cls.prompt_hash = property(lambda self: source_hash)


def included_paths() -> list[str]:
    return [str(p) for p in _INCLUDED]


def task_origin(name: str) -> str:
    load_tasks()
    return _ORIGINS.get(name, "built-in")


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
