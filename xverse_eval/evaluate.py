"""The pipeline: load -> build -> infer -> score -> aggregate -> report. The only module that sees
all of it; `score_run` re-runs the last three from a run dir without a model."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import __version__, report
from .errors import EvalError
from .registry import get_task_class
from .results import ResponseStore, RunDir, atomic_write, digest, fault, write_json, write_jsonl
from .task import Prepared, Task, TokenLimit, always_fits
from .types import GenerateRequest, LoglikelihoodRequest, Request

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- task selection


@dataclass
class TaskSpec:
    """`name[:subset[:subset]][:variant=v]` from --tasks; the same name twice merges subsets."""

    name: str
    subsets: list[str] = field(default_factory=list)
    variant: str = "default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_tasks(text: str) -> list[TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, *rest = item.split(":")
        spec = specs.setdefault(name, TaskSpec(name))
        for part in rest:
            if part.startswith("variant="):
                spec.variant = part.split("=", 1)[1]
            elif "=" in part:
                raise EvalError(f"--tasks {item!r}: unknown option {part.split('=')[0]!r} (only variant=...)")
            elif part:
                spec.subsets.append(part)
    if not specs:
        raise EvalError("--tasks is empty")
    return list(specs.values())


def make_task(spec: TaskSpec, data_dir: str | None, **options: Any) -> Task:
    return get_task_class(spec.name)(data_dir=data_dir, subsets=spec.subsets or None, variant=spec.variant, **options)


def is_code_task(task: Task) -> bool:
    return task.metric.startswith("pass@")


# ----------------------------------------------------------------------------- phases


def build(task: Task, samples, model=None) -> list[Prepared]:
    """Prompts and requests; a prompt over the task's token limit drops shots (tokenizer of `model`)."""
    limit = getattr(task, "max_prompt_tokens", None)
    fits = TokenLimit(model.count_tokens, limit) if (model is not None and limit) else always_fits
    items = [task.build(s, fits) for s in samples]
    if model is not None and getattr(task, "formulation", None) == "letters":
        check_letter_tokens(task, items, model)
    return mark_shared_prefixes(items)


def check_letter_tokens(task: Task, items: Sequence[Prepared], model) -> None:
    """Letter scoring reads one next-token log-prob per answer: refuse a tokenizer that makes an
    answer letter more (or less) than one token after the prompt before any model work, not after
    it (checked on the first item of each subset; scoring checks every response again)."""
    seen: set[str] = set()
    for item in items:
        if item.sample.subset in seen:
            continue
        seen.add(item.sample.subset)
        for req in item.requests:
            n = model.count_tokens(req.context + req.continuation) - model.count_tokens(req.context)
            if n != 1:
                raise EvalError(f"{task.name}: request {req.key}: the answer {req.continuation!r} is {n} tokens after the prompt "
                                f"for the tokenizer of {model.name}; letter scoring needs exactly one")


def mark_shared_prefixes(items: list[Prepared]) -> list[Prepared]:
    """Tell the runner which leading text the prompts of one subset share (the k-shot block), so it
    can compute it once."""
    by_subset: dict[str, list[Prepared]] = {}
    for item in items:
        by_subset.setdefault(item.sample.subset, []).append(item)
    for group in by_subset.values():
        if len(group) < 2:
            continue
        shared = os.path.commonprefix([g.prompt for g in group])
        if not shared:
            continue
        for item in group:
            item.requests = [dataclasses.replace(r, shared_prefix=shared) for r in item.requests]
    return items


def infer(model, items: Sequence[Prepared], store: ResponseStore) -> None:
    """Ask the model for every request not already stored; each batch is stored as it finishes."""
    todo: dict[type, list[Request]] = {LoglikelihoodRequest: [], GenerateRequest: []}
    seen = set()
    for item in items:
        for req in item.requests:
            k = store.key(req)  # hashes the whole prompt: once per request
            if k not in store.done and k not in seen:
                seen.add(k)
                todo[type(req)].append(req)
    done = sum(len(i.requests) for i in items) - sum(len(v) for v in todo.values())
    if done:
        log.info("resuming: %d responses already stored, %d to go", done, sum(len(v) for v in todo.values()))
    if todo[LoglikelihoodRequest]:
        model.loglikelihood(todo[LoglikelihoodRequest], on_done=store.append)
    if todo[GenerateRequest]:
        model.generate(todo[GenerateRequest], on_done=store.append)


def collect(items: Sequence[Prepared], store: ResponseStore, task: str):
    responses = [[store.get(r) for r in i.requests] for i in items]
    missing = [r.key for i, resp in zip(items, responses) for r, x in zip(i.requests, resp) if x is None]
    if missing:
        total = sum(len(i.requests) for i in items)
        raise EvalError(f"{task}: incomplete run, {total - len(missing)}/{total} responses stored (first missing: {missing[0]}); re-run the same command to finish it")
    return responses


def score_and_report(run: RunDir, tasks: list[Task], items: dict[str, list[Prepared]], store: ResponseStore, manifest: dict, limit: int | None) -> dict:
    results = {}
    responses_of = {task.name: collect(items[task.name], store, task.name) for task in tasks}  # all present, or no metrics
    for task in tasks:
        fault("score")
        responses = responses_of[task.name]
        records = task.score_all(items[task.name], responses)
        write_jsonl(run.path / "samples" / f"{task.name}.jsonl", (r.to_dict() for r in records))
        results[task.name] = task.aggregate(records, limit).to_dict()
    out = {
        "schema_version": "xverse-eval/1",
        "status": "partial" if limit else "complete",
        "results": results,
        "config": manifest,
    }
    write_json(run.path / "results.json", out)
    fault("report")
    atomic_write(run.path / "report.md", report.render([out]))
    return out


# ----------------------------------------------------------------------------- run


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip("/"))[-80:]


def make_sandbox(tasks: list[Task], mode: str):
    if not any(is_code_task(t) for t in tasks):
        return None
    from .sandbox import Sandbox, SandboxUnavailable

    try:
        sandbox = Sandbox(mode=mode)
        sandbox.self_check()
    except SandboxUnavailable as exc:
        raise EvalError(f"refusing to run model-written code: {exc} (install bubblewrap, or pass --allow-unsafe-exec to run it with rlimits only)") from None
    return sandbox


def run(model_spec: str, task_specs: list[TaskSpec], data_dir: str | None = None, limit: int | None = None,
        output_dir: str | None = None, batch_size: str | int = "auto", device: str | None = None, dtype: str = "auto",
        revision: str | None = None, sandbox_mode: str = "auto", command: str = "", model=None, prefix_cache: bool = False) -> tuple[Path, dict]:
    if limit is not None and limit <= 0:
        raise EvalError(f"--limit must be a positive number, got {limit}")
    # 1 load: bad data fails here, before a model is loaded
    tasks = [make_task(s, data_dir) for s in task_specs]
    samples = {t.name: t.samples(limit) for t in tasks}
    sandbox = make_sandbox(tasks, sandbox_mode)
    for t in tasks:
        t.options["sandbox"] = sandbox
    with contextlib.ExitStack() as stack:
        run_dir = None
        if output_dir:  # an explicit run dir: lock it and check its config before the model loads
            run_dir = stack.enter_context(RunDir(Path(output_dir)))
            run_dir.check({"tasks": {t.name: task_identity(t, data=False) for t in tasks}, "limit": limit}, partial=True)
        if model is None:
            from .runner import load_model

            model = load_model(model_spec, device=device, dtype=dtype, batch_size=batch_size, revision=revision, prefix_cache=prefix_cache)
        # 2 build
        items = {t.name: build(t, samples[t.name], model) for t in tasks}
        identity = {
            "model": model.fingerprint,
            "tasks": {t.name: task_identity(t) for t in tasks},
            "limit": limit,
        }
        manifest = {
            "identity": identity,
            "model": {"name": model.name, **model.fingerprint},
            "tasks": [s.to_dict() for s in task_specs],
            "data_dir": str(Path(data_dir).resolve()) if data_dir else os.environ.get("XVERSE_EVAL_DATA"),
            "limit": limit,
            "sandbox": sandbox.mode if sandbox else None,
            "xverse_eval_version": __version__,
            "git_sha": git_sha(),
            "command": command,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if run_dir is None:
            run_dir = stack.enter_context(RunDir(Path("results") / "runs" / slug(model.name) / digest(identity)[:12]))
        run_dir.claim(manifest)
        manifest = run_dir.manifest()
        write_jsonl(run_dir.path / "plan.jsonl", (plan_row(t.name, i) for t in tasks for i in items[t.name]))
        store = ResponseStore(run_dir.path / "responses.jsonl", identity["model"], identity["tasks"])
        # 3-4 infer, all tasks' requests together so the runner can batch across them
        infer(model, [i for t in tasks for i in items[t.name]], store)
        # 5-7 score, aggregate, report
        return run_dir.path, score_and_report(run_dir, tasks, items, store, manifest, limit)


def task_identity(t: Task, data: bool = True) -> dict:
    """What of a task determines its responses and scores (`data=False`: what is known before the
    few-shot files are read)."""
    out = {"version": t.version, "variant": t.variant, "subsets": t.subsets if t.subsets != t.all_subsets() else "all",
           "prompt_hash": t.prompt_hash, "shots": t.shots}
    if data:
        out["data_revision"] = t.data.revision()
    return out


def plan_row(task: str, item: Prepared) -> dict:
    return {"task": task, "id": item.sample.id, "prompt": item.prompt,
            "shots": item.shots, "requests": [{"kind": type(r).__name__, **dataclasses.asdict(r)} for r in item.requests]}


def score_run(run_path: str, sandbox_mode: str = "auto") -> dict:
    """Re-score saved responses: no model needed (prompts and requests come from plan.jsonl)."""
    from .results import read_jsonl_tolerant

    with RunDir(Path(run_path)) as run_dir:
        manifest = run_dir.manifest()
        specs = [TaskSpec(**s) for s in manifest["tasks"]]
        tasks = [make_task(s, manifest.get("data_dir")) for s in specs]
        sandbox = make_sandbox(tasks, sandbox_mode)
        plan = {(row["task"], row["id"]): row for row in read_jsonl_tolerant(run_dir.path / "plan.jsonl")}
        items = {}
        for t in tasks:
            t.options["sandbox"] = sandbox
            items[t.name] = []
            for s in t.samples(manifest["limit"]):
                row = plan.get((t.name, s.id))
                if row is None:
                    raise EvalError(f"{run_path}: plan.jsonl has no entry for {t.name}/{s.id}")
                reqs = [request_from_dict(r) for r in row["requests"]]
                items[t.name].append(Prepared(s, row["prompt"], reqs, row["shots"]))
                t.fewshot(s)  # read (and hash) the few-shot files too, as the run did
            stored = manifest["identity"].get("tasks", {}).get(t.name, {}).get("data_revision")
            if stored and t.data.revision() != stored:
                raise EvalError(f"{run_path}: the {t.name} data changed since the run ({stored} -> {t.data.revision()}); re-run it instead of re-scoring")
        store = ResponseStore(run_dir.path / "responses.jsonl", manifest["identity"]["model"], manifest["identity"].get("tasks"))
        return score_and_report(run_dir, tasks, items, store, manifest, manifest["limit"])


def request_from_dict(data: dict) -> Request:
    data = dict(data)
    if data.pop("kind") == "LoglikelihoodRequest":
        return LoglikelihoodRequest(**data)
    return GenerateRequest(**{**data, "stop": tuple(data.get("stop", ()))})
