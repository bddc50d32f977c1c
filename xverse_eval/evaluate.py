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
import time
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


# suite names for --tasks: "xverse" = the 11 benchmarks of the XVERSE-65B card, in its table's order
SUITES = {"xverse": ["ceval", "cmmlu", "gaokao", "mmlu", "gaokao_english", "agieval", "race", "csqa", "piqa", "gsm8k", "humaneval"]}


def parse_tasks(text: str) -> list[TaskSpec]:
    """`--tasks` text -> TaskSpecs in the order given; a suite name (`xverse`) stands for its tasks."""
    specs: dict[str, TaskSpec] = {}
    items = [t.strip() for t in text.split(",")]
    items = [x for item in items for x in (SUITES[item] if item in SUITES else [item])]
    for item in filter(None, items):
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


def build(task: Task, samples, model=None, chat=None) -> list[Prepared]:
    """Prompts and requests; a prompt over the task's token limit drops shots (tokenizer of `model`).
    `chat` (a (ChatTemplate, ChatOptions) pair, --apply-chat-template): each built item is then
    rendered as a conversation (xverse_eval/chat.py); the one-token letter check runs on that."""
    limit = getattr(task, "max_prompt_tokens", None)
    fits = TokenLimit(model.count_tokens, limit) if (model is not None and limit) else always_fits
    items = [task.build(s, fits) for s in samples]
    if chat is not None:
        from . import chat as chat_mod

        items = [chat_mod.apply(task, item, *chat) for item in items]
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


def infer(model, items: Sequence[Prepared], store: ResponseStore, dist=None) -> None:
    """Ask the model for every request not already stored; each batch is stored as it finishes.
    Under torchrun (`dist`, parallel.Dist) this replica computes only its shard of what is left, and
    rank 0 shows the progress of the whole job until every rank has finished (parallel.py)."""
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
    if dist is not None and dist.active:
        return infer_shard(model, todo, store, dist)
    if todo[LoglikelihoodRequest]:
        model.loglikelihood(todo[LoglikelihoodRequest], on_done=store.append)
    if todo[GenerateRequest]:
        model.generate(todo[GenerateRequest], on_done=store.append)


def infer_shard(model, todo: dict[type, list[Request]], store: ResponseStore, dist) -> None:
    """One replica's part of `todo` (the same list on every rank), then the barrier at the end of the
    job. Only the first rank of a TP group stores; rank 0 counts every replica's stored lines."""
    from . import parallel

    job = parallel.JobProgress(store.path.parent, store.path, sum(len(v) for v in todo.values()), set(store.done)) if dist.main else None

    def on_done(pairs) -> None:
        if dist.writer:
            store.append(pairs)
        if job:
            job.own_done(len(pairs))

    for kind, method in ((LoglikelihoodRequest, model.loglikelihood), (GenerateRequest, model.generate)):
        mine = parallel.shard(todo[kind], dist.replicas, dist.replica)
        if mine:
            method(mine, on_done=on_done)
    parallel.wait_all(dist, job)


def collect(items: Sequence[Prepared], store: ResponseStore, task: str):
    responses = [[store.get(r) for r in i.requests] for i in items]
    missing = [r.key for i, resp in zip(items, responses) for r, x in zip(i.requests, resp) if x is None]
    if missing:
        total = sum(len(i.requests) for i in items)
        raise EvalError(f"{task}: incomplete run, {total - len(missing)}/{total} responses stored (first missing: {missing[0]}); re-run the same command to finish it")
    return responses


def score_and_report(run: RunDir, tasks: list[Task], items: dict[str, list[Prepared]], store: ResponseStore, manifest: dict, limit: int | None,
                     started: float | None = None) -> dict:
    chat_note = chat_summary(manifest.get("chat"))
    results = {}
    responses_of = {task.name: collect(items[task.name], store, task.name) for task in tasks}  # all present, or no metrics
    for task in tasks:
        fault("score")
        responses = responses_of[task.name]
        records = task.score_all(items[task.name], responses)
        write_jsonl(run.path / "samples" / f"{task.name}.jsonl", (r.to_dict() for r in records))
        results[task.name] = task.aggregate(records, limit).to_dict()
        if chat_note:  # the provenance table shows notes: a chat-templated number says so beside itself
            results[task.name]["notes"] = [*results[task.name]["notes"], chat_note]
    out = {  # our record of the run; results.json holds it under "xverse_eval", beside lm-eval's layout
        "schema_version": report.SCHEMA,
        "status": "partial" if limit else "complete",
        "results": results,
        "config": manifest,
    }
    elapsed = time.monotonic() - started if started is not None else 0.0
    write_json(run.path / "results.json", report.lm_eval_results(out, {t.name: t.subsets for t in tasks},
                                                                 {t.name: full_size(t, limit, len(items[t.name])) for t in tasks}, elapsed))
    fault("report")
    atomic_write(run.path / "report.md", report.render([out]))
    return out


def full_size(task: Task, limit: int | None, effective: int) -> int:
    """Items of the evaluated split of the task's subsets without --limit (lm-eval's n-samples
    "original"); the effective count where the split cannot be read again."""
    if not limit:
        return effective
    try:
        return len(task.samples())
    except EvalError:
        return effective


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
        revision: str | None = None, sandbox_mode: str = "auto", command: str = "", model=None, prefix_cache: bool = True,
        chat_options=None, tp_size: int = 1, dist=None, model_args: dict | None = None,
        trust_remote_code: bool = False) -> tuple[Path, dict | None]:
    """The whole pipeline; returns the run dir and results.json's content. Under torchrun every rank
    calls it: ranks other than 0 return (run dir, None) once their shard is stored (parallel.py)."""
    from . import parallel

    started = time.monotonic()  # lm-eval's total_evaluation_time_seconds
    if limit is not None and limit <= 0:
        raise EvalError(f"--limit must be a positive number, got {limit}")
    if chat_options is not None:
        chat_options.check()
    # 1 load: bad data fails here, before a model is loaded
    tasks = [make_task(s, data_dir) for s in task_specs]
    samples = {t.name: t.samples(limit) for t in tasks}
    d = dist or parallel.setup(tp_size, device)
    sandbox = make_sandbox(tasks, sandbox_mode) if d.main else None  # only rank 0 scores
    for t in tasks:
        t.options["sandbox"] = sandbox
    load_args = dict(device=device, dtype=dtype, revision=revision, model_args=model_args, trust_remote_code=trust_remote_code)
    known = None  # the model's fingerprint from its files, where that needs no loaded model
    if model is None and not d.active:
        from .runner import model_identity

        known = model_identity(model_spec, **load_args)
    if known is not None and not (chat_options is not None and chat_options.enabled):
        finished = finished_run(known, tasks, samples, limit, output_dir, data_dir, sandbox_mode)
        if finished is not None:  # a resume with nothing left to compute: the model is not loaded
            return finished
    with contextlib.ExitStack() as stack:
        run_dir, error = None, None
        if output_dir:  # an explicit run dir: lock it and check its config before the model loads
            try:  # rank 0 holds the lock for the whole job; the other ranks write only their own files
                run_dir = stack.enter_context(RunDir(Path(output_dir), lock=d.main))
                if d.main:
                    run_dir.check({"tasks": {t.name: task_identity(t, data=False) for t in tasks}, "limit": limit,
                                   **({"model": known} if known else {})}, partial=True)
            except EvalError as exc:
                error = exc
        parallel.agree(d, error)  # every rank stops here if rank 0 could not take the run dir
        if model is None:
            from .runner import load_model

            model = load_model(model_spec, batch_size=batch_size, prefix_cache=prefix_cache, **load_args,
                               **({"dist": d} if d.active else {}))
        if d.active and hasattr(model, "report_progress"):
            model.report_progress = False  # rank 0 reports the whole job instead (parallel.JobProgress)
        # 2 build
        chat = chat_template(model, chat_options)
        items = {t.name: build(t, samples[t.name], model, chat) for t in tasks}
        identity = {
            "model": model.fingerprint,
            "tasks": {t.name: task_identity(t) for t in tasks},
            "limit": limit,
        }
        if chat is not None:  # only when asked: the identity (and run dir) of a plain run stays as it was
            identity["chat"] = chat_identity(*chat)
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
        if chat is not None:
            manifest["chat"] = identity["chat"]
        from .registry import included_paths

        if included_paths():
            manifest["include_paths"] = included_paths()
        try:
            if run_dir is None:
                run_dir = stack.enter_context(RunDir(Path("results") / "runs" / slug(model.name) / digest(identity)[:12], lock=d.main))
            if d.main:  # only rank 0 writes the run's files; the others read what is stored
                run_dir.claim(manifest)
                manifest = run_dir.manifest()
                write_jsonl(run_dir.path / "plan.jsonl", (plan_row(t.name, i) for t in tasks for i in items[t.name]))
            store = ResponseStore(d.responses_file(run_dir.path), identity["model"], identity["tasks"])
        except EvalError as exc:
            error = exc
        parallel.agree(d, error)  # every rank has read the stored responses before any rank appends
        # 3-4 infer, all tasks' requests together so the runner can batch across them
        infer(model, [i for t in tasks for i in items[t.name]], store, d)
        if not d.main:
            parallel.finish(d)
            return run_dir.path, None
        if d.active:  # every replica's file, merged
            store = ResponseStore(d.responses_file(run_dir.path), identity["model"], identity["tasks"])
        # 5-7 score, aggregate, report
        out = score_and_report(run_dir, tasks, items, store, manifest, limit, started)
        parallel.finish(d)
        return run_dir.path, out


def finished_run(fingerprint: dict, tasks: list[Task], samples: dict, limit: int | None, output_dir: str | None, data_dir: str | None,
                 sandbox_mode: str) -> tuple[Path, dict] | None:
    """(run dir, results) when the run this command names already holds every response: with the
    model's `fingerprint` computed from its files (runner.model_identity), the run dir is found from
    it and the stored responses are re-scored as `score` does -- no model load. None when anything is
    left to compute or the run dir holds another config (the caller then runs as usual)."""
    from .results import read_json_file, read_jsonl_tolerant

    for t in tasks:
        for sample in samples[t.name]:
            t.fewshot(sample)  # read (and hash) the few-shot files, as building the prompts does
    identity = {"model": fingerprint, "tasks": {t.name: task_identity(t) for t in tasks}, "limit": limit}
    path = Path(output_dir) if output_dir else Path("results") / "runs" / slug(fingerprint["model"]) / digest(identity)[:12]
    config = path / "config.json"
    if not config.is_file() or not (path / "plan.jsonl").is_file() or RunDir(path).differences(identity):
        return None
    stored_data = read_json_file(config).get("data_dir")
    if stored_data != (str(Path(data_dir).resolve()) if data_dir else os.environ.get("XVERSE_EVAL_DATA")):
        return None  # `score` reads the data from where the run did: let the full path handle a move
    plan = {(row["task"], row["id"]): row for row in read_jsonl_tolerant(path / "plan.jsonl")}
    store = ResponseStore(path / "responses.jsonl", identity["model"], identity["tasks"])
    for t in tasks:
        for sample in samples[t.name]:
            row = plan.get((t.name, sample.id))
            if row is None or any(store.get(request_from_dict(r)) is None for r in row["requests"]):
                return None
    log.info("%s: every response is stored; re-scoring without loading the model", path)
    return path, score_run(str(path), sandbox_mode)


def chat_template(model, options):
    """(ChatTemplate, ChatOptions) for --apply-chat-template, or None; the model stops generating
    at the template's end-of-turn tokens too."""
    if options is None or not options.enabled:
        return None
    from .chat import ChatTemplate

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise EvalError(f"--apply-chat-template: model {model.name} has no tokenizer with a chat template")
    template = ChatTemplate(tokenizer, model.name, options.template)
    if hasattr(model, "stop_at_tokens"):
        model.stop_at_tokens(template.end_of_turn_ids())
    return template, options


def chat_identity(template, options) -> dict:
    return {**template.identity(), "system_instruction": options.system_instruction, "fewshot_as_multiturn": options.fewshot_as_multiturn}


def chat_summary(chat: dict | None) -> str:
    """One note line for a chat-templated run (the report's provenance column)."""
    if not chat:
        return ""
    parts = [f"chat template {chat['name']} (sha256 {chat['hash']})"]
    if chat.get("fewshot_as_multiturn"):
        parts.append("shots as turns")
    if chat.get("system_instruction"):
        parts.append(f"system instruction {chat['system_instruction'][:40]!r}")
    return ", ".join(parts)


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

    started = time.monotonic()
    with RunDir(Path(run_path)) as run_dir:
        manifest = run_dir.manifest()
        specs = [TaskSpec(**s) for s in manifest["tasks"]]
        for folder in manifest.get("include_paths") or ():  # the run's out-of-tree tasks (--include-path)
            from .registry import include_path

            include_path(folder)
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
        return score_and_report(run_dir, tasks, items, store, manifest, manifest["limit"], started)


def request_from_dict(data: dict) -> Request:
    data = dict(data)
    if data.pop("kind") == "LoglikelihoodRequest":
        return LoglikelihoodRequest(**data)
    return GenerateRequest(**{**data, "stop": tuple(data.get("stop", ()))})
