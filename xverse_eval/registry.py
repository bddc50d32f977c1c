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

# suite names for --tasks: "xverse" = the 11 benchmarks of the XVERSE-65B card, in its table's order
SUITES = {"xverse": ["ceval", "cmmlu", "gaokao", "mmlu", "gaokao_english", "agieval", "race", "csqa", "piqa", "gsm8k", "humaneval"]}

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
    """The registered class of task `name` (our name: `mmlu`, not an alias). Raises EvalError with a
    did-you-mean (over task names and their lm-eval spellings) for an unknown name."""
    load_tasks()
    if name not in _TASKS:
        raise EvalError(f"unknown task {name!r}{_did_you_mean(name)}")
    return _TASKS[name]


# ----------------------------------------------------------------------------- lm-eval's names
#
# lm-evaluation-harness 0.4 names (lm_eval/tasks/*/*.yaml) for our benchmarks where they are another
# word for the same data. A name maps to the data, not to lm-eval's protocol: `--tasks mmlu_anatomy`
# runs MMLU anatomy the way XVERSE ran it (the variants hold lm-eval's protocols where we have them).
# Not mapped, on purpose: lm-eval's `race` is RACE-high (ours is RACE-M, the card's row), and
# `humaneval_instruct` is another prompt than our `humaneval:variant=instruct` (EvalPlus's).
TASK_ALIASES = {
    "commonsense_qa": "csqa",
    "ceval-valid": "ceval",
}
# lm-eval names that look like ours but are another protocol or grouping: refused with the reason
LM_EVAL_UNMAPPED = {
    "humaneval_instruct": "lm-eval's instruct prompt is another one; humaneval:variant=instruct (with --apply-chat-template) is EvalPlus's",
    "humaneval_64_instruct": "lm-eval's instruct prompt is another one; humaneval:variant=instruct (with --apply-chat-template) is EvalPlus's",
    "humaneval_64": "no sampling here: HumanEval is greedy, one sample per problem (pass@1)",
    "humaneval_plus": "HumanEval+ tests are not here; humaneval runs the original tests",
    "gsm8k_cot": "another GSM8K protocol (8-shot CoT); gsm8k is OpenCompass's 4-shot, gsm8k:variant=lm-eval-strict lm-eval's extraction",
    "gsm8k_cot_zeroshot": "another GSM8K protocol (0-shot CoT); gsm8k is OpenCompass's 4-shot, gsm8k:variant=lm-eval-strict lm-eval's extraction",
    "gsm8k_cot_llama": "another GSM8K protocol (Llama's chat CoT); gsm8k is OpenCompass's 4-shot",
    "gsm8k_cot_self_consistency": "no sampling here: decoding is greedy",
    "mmlu_stem": "lm-eval groups MMLU subjects differently from hendrycks' categories.py (anatomy is STEM there); "
                 "run mmlu: results.json has the 4 hendrycks categories",
    "mmlu_humanities": "run mmlu: results.json has the 4 hendrycks categories (lm-eval's groups differ)",
    "mmlu_social_sciences": "run mmlu: results.json has the 4 hendrycks categories (lm-eval's groups differ)",
    "mmlu_other": "run mmlu: results.json has the 4 hendrycks categories (lm-eval's groups differ)",
    "agieval_en": "run agieval: results.json has its English and Chinese averages",
    "agieval_cn": "run agieval: results.json has its English and Chinese averages",
    "agieval_nous": "run agieval with the subsets you want: agieval:lsat-ar:lsat-lr:...",
}
# Subsets are named `<prefix><subset>`: `<task>_<subset>` for every task with subsets (lm-eval's
# names, and the subtask names of our results.json), plus lm-eval's `ceval-valid_<subject>`; a `-`
# in our subset name is a `_` in lm-eval's (`agieval_lsat_ar` = `agieval:lsat-ar`).
SUBSET_PREFIXES = {"ceval-valid_": "ceval"}


def _subset_aliases() -> dict[str, tuple[str, str]]:
    """Every `<prefix><subset>` spelling -> (task, subset), for every task with subsets."""
    load_tasks()
    out: dict[str, tuple[str, str]] = {}
    for prefix, task in _prefixes().items():
        subsets = _TASKS[task].all_subsets() if task in _TASKS else [""]
        if subsets == [""]:
            continue
        for subset in subsets:
            for spelling in {subset, subset.replace("-", "_")}:
                out.setdefault(prefix + spelling, (task, subset))
    return out


def resolve_task_name(name: str) -> tuple[str, list[str]]:
    """A task name as a user may write it -> (our task name, subsets it selects).

    `mmlu` -> ("mmlu", []); `commonsense_qa` -> ("csqa", []); `mmlu_anatomy` -> ("mmlu", ["anatomy"]);
    `agieval_lsat_ar` -> ("agieval", ["lsat-ar"]). Our own names win over aliases (`gaokao_english`
    is a task, not a subset of `gaokao`). Raises EvalError with a did-you-mean for anything else."""
    load_tasks()
    if name in _TASKS:
        return name, []
    if name in TASK_ALIASES:
        return TASK_ALIASES[name], []
    subset = _subset_aliases().get(name)
    if subset:
        return subset[0], [subset[1]]
    if name in LM_EVAL_UNMAPPED:
        raise EvalError(f"task {name!r} (lm-eval) is not mapped: {LM_EVAL_UNMAPPED[name]}")
    prefix = max((p for p in _prefixes() if name.startswith(p) and _prefixes()[p] in _TASKS), key=len, default=None)
    if prefix and _TASKS[_prefixes()[prefix]].all_subsets() != [""]:
        raise EvalError(_unknown_subset(name, prefix))
    raise EvalError(f"unknown task {name!r}{_did_you_mean(name)}")


def _prefixes() -> dict[str, str]:
    return {f"{name}_": name for name in _TASKS} | SUBSET_PREFIXES


def _unknown_subset(name: str, prefix: str) -> str:
    """`mmlu_anatomyy`: the task is known, the subset is not; name the closest subset."""
    task = _prefixes()[prefix]
    subsets = _TASKS[task].all_subsets()
    wanted = name[len(prefix):]
    spellings = {s.replace("-", "_"): s for s in subsets} | {s: s for s in subsets}
    close = difflib.get_close_matches(wanted, list(spellings), n=1, cutoff=0.75)
    hint = f"; did you mean {prefix + close[0]!r} ({task}:{spellings[close[0]]})?" if close else \
        f"; `xverse-eval list {task}` shows its {len(subsets)} subsets"
    return f"unknown task {name!r}: {task} has no subset {wanted!r}{hint}"


def canonical_tasks(text: str) -> str:
    """`--tasks` text with every lm-eval spelling replaced by ours, items in the order given:
    `mmlu_anatomy,commonsense_qa:variant=c49e77` -> `mmlu:anatomy,csqa:variant=c49e77`. Suite names
    (`xverse`) pass through. Raises EvalError naming an unknown task (with a did-you-mean)."""

    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item or item in SUITES:
            out.append(item)
            continue
        name, *rest = item.split(":")
        task, subsets = resolve_task_name(name)
        out.append(":".join([task, *subsets, *rest]))
    return ",".join(out)


def _did_you_mean(name: str) -> str:
    """"; did you mean 'x'?" over task names, aliases and `<task>_<subset>` spellings, else the task list."""
    names = list(_TASKS) + list(TASK_ALIASES)
    close = difflib.get_close_matches(name, names, n=1)
    if not close and ("_" in name or "-" in name):
        close = difflib.get_close_matches(name, list(_subset_aliases()), n=1, cutoff=0.75)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known tasks: {', '.join(sorted(_TASKS))} (xverse-eval list)"
