"""The pipeline: load -> build -> infer -> score -> report, over one frozen `RunConfig`.

    run_config(config)                       # what `xverse-eval run` calls (through `run`)
      open_sandbox, make_tasks                 the tasks, a CodeTask given its sandbox explicitly
      ModelLoader.start                        the weights load in a thread while the data loads and
                                               the requests build (with the tokenizer alone)
      load_samples, read_fewshot               the data (progress per task)
      finished_run                             a resume with nothing left: re-scored, no model
      Builder                                  builds task N+1 while task N is inferred
      claim_run_dir                            identity (identity.py), lock, manifest
      infer                                    each task's missing requests, stored per batch
      score_and_report                         records, TaskResults, results.json, report.md, summary

`score_run` re-runs the last phase from a run dir without a model; `--dry-run` stops after build
(dry_run below: plan.jsonl and the cost of every task, no weights).

What a run *is* (its run dir, the key of every response, what a resume compares) lives in
identity.py alone; durable files in results.py; the torchrun job in parallel.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import __version__, report
from .build import build, check_letter_tokens, mark_shared_prefixes  # noqa: F401 -- re-exported: callers import them from here
from .errors import EvalError
from .identity import Identity, slug, task_identity  # noqa: F401 -- slug, task_identity re-exported
from .progress import progress
from .registry import SUITES, get_task_class
from .results import ResponseStore, RunDir, append_jsonl, atomic_write, fault, write_json, write_jsonl
from .task import Prepared, Task
from .types import GenerateRequest, LoglikelihoodRequest, Request

log = logging.getLogger(__name__)


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0.0 elsewhere): the start-up figures count
    from the command's start, imports included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def say(line: str) -> None:
    """One line for the person running the command (stderr: stdout carries the report)."""
    print(line, file=sys.stderr, flush=True)


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
    """The Task of `spec` reading `data_dir`; `options` go to its constructor (a CodeTask's `sandbox=`)."""
    return get_task_class(spec.name)(data_dir=data_dir, subsets=spec.subsets or None, variant=spec.variant, **options)


def needs_sandbox(task_class) -> bool:
    """Whether a task's completions run as programs (a CodeTask; pass@k metrics before CodeTask)."""
    return bool(getattr(task_class, "needs_sandbox", False) or str(getattr(task_class, "metric", "")).startswith("pass@"))


def is_code_task(task: Task) -> bool:
    return needs_sandbox(task)


# ----------------------------------------------------------------------------- the run's configuration


@dataclass(frozen=True)
class RunConfig:
    """Everything `xverse-eval run` was asked, frozen, passed down whole.

    `model`: the --model spec; `tasks`: TaskSpecs; `limit`: N per subset or a fraction in (0, 1);
    `output_dir`: None = results/runs/<model>/<identity digest>; `sandbox_mode`: "auto" or "unsafe";
    `chat`: chat.ChatOptions or None; `model_args`: the parsed --model-args; `dry_run`: stop after
    build (no weights); `peak_tflops`: the accelerator's peak for the compute floor and MFU (None:
    $XVERSE_EVAL_PEAK_TFLOPS or the device table of runner/dry.py)."""

    model: str
    tasks: tuple = ()
    data_dir: str | None = None
    limit: int | float | None = None
    output_dir: str | None = None
    batch_size: str | int = "auto"
    device: str | None = None
    dtype: str = "auto"
    revision: str | None = None
    sandbox_mode: str = "auto"
    command: str = ""
    prefix_cache: bool = True
    chat: Any = None
    tp_size: int = 1
    model_args: dict | None = None
    trust_remote_code: bool = False
    dry_run: bool = False
    peak_tflops: float | None = None

    @property
    def chat_on(self) -> bool:
        return self.chat is not None and bool(getattr(self.chat, "enabled", False))

    def load_args(self) -> dict:
        """The keyword arguments of runner.load_model / model_identity / DryModel.load."""
        return dict(device=self.device, dtype=self.dtype, revision=self.revision, model_args=self.model_args,
                    trust_remote_code=self.trust_remote_code)

    def data_location(self) -> str | None:
        """The data dir as the manifest records it (absolute), or $XVERSE_EVAL_DATA."""
        return str(Path(self.data_dir).resolve()) if self.data_dir else os.environ.get("XVERSE_EVAL_DATA")

    def check(self) -> None:
        """Refuse (EvalError) what needs no data or model to be wrong: a non-positive limit, bad chat options."""
        if self.limit is not None and self.limit <= 0:
            raise EvalError(f"--limit must be a positive number, got {self.limit}")
        if self.chat is not None:
            self.chat.check()


def run(model_spec: str, task_specs: list[TaskSpec], data_dir: str | None = None, limit: int | float | None = None,
        output_dir: str | None = None, batch_size: str | int = "auto", device: str | None = None, dtype: str = "auto",
        revision: str | None = None, sandbox_mode: str = "auto", command: str = "", model=None, prefix_cache: bool = True,
        chat_options=None, tp_size: int = 1, dist=None, model_args: dict | None = None,
        trust_remote_code: bool = False, dry_run: bool = False, peak_tflops: float | None = None) -> tuple[Path, dict | None]:
    """The whole pipeline for these arguments (see RunConfig); returns the run dir and results.json's
    content. `model`: an already loaded Model (tests, benchmarks) instead of loading `model_spec`;
    `dist`: the torchrun job (parallel.setup) where the caller made it. Ranks other than 0, and a dry
    run, return (run dir, None)."""
    config = RunConfig(model_spec, tuple(task_specs), data_dir, limit, output_dir, batch_size, device, dtype, revision,
                       sandbox_mode, command, prefix_cache, chat_options, tp_size, model_args, trust_remote_code, dry_run, peak_tflops)
    return run_config(config, model=model, dist=dist)


def run_config(config: RunConfig, model=None, dist=None) -> tuple[Path, dict | None]:
    """`run` over a RunConfig: load -> build -> infer -> score -> report (module docstring)."""
    from . import parallel

    started = time.monotonic()  # lm-eval's total_evaluation_time_seconds
    timeline = {"started": started - process_age()}  # the command's start, imports included
    config.check()
    d = dist or parallel.setup(config.tp_size, config.device)
    sandbox = open_sandbox(config, d.main) if not config.dry_run else None  # only rank 0 scores
    tasks = make_tasks(config, sandbox)
    if config.dry_run:
        return dry_run(config, tasks, started)
    known = known_fingerprint(config, model, d)
    loader = ModelLoader(config, d, model)
    with contextlib.ExitStack() as stack:
        explicit = None
        resumable = may_be_finished(config, known)
        if not resumable:  # nothing to re-score: lock, then the weights load while the data loads and builds
            explicit = lock_explicit_dir(config, d, stack, known, tasks)
            loader.start()
        elif config.output_dir and d.main:  # a run in progress or of another config there: refused now
            with RunDir(Path(config.output_dir)) as there:
                there.check(partial_identity(config, known, tasks), partial=True)
        samples = load_samples(tasks, config.limit)
        if resumable:
            finished = finished_run(config, known, tasks, samples)
            if finished is not None:  # a resume with nothing left to compute: the model is not loaded
                return finished
            explicit = lock_explicit_dir(config, d, stack, known, tasks)
            loader.start()
        builder = Builder(tasks, samples, loader.tokenizer_model(), config.chat, overlap=loader.overlap)
        model = loader.wait(builder)
        timeline["model_ready"] = time.monotonic()
        if builder.chat is not None:
            stop_at_end_of_turn(model, builder.chat[0])
        identity = Identity.of(model.fingerprint, tasks, config.limit, chat_identity(*builder.chat) if builder.chat else None)
        run_dir, manifest, store = claim_run_dir(config, d, stack, explicit, identity, model, sandbox)
        items = infer_all(model, builder, store, d, run_dir, timeline)
        if not d.main:
            parallel.finish(d)
            return run_dir.path, None
        if d.active:  # every replica's file, merged
            store = ResponseStore(d.responses_file(run_dir.path), identity.model, identity.tasks, identity.compute)
        out = score_and_report(run_dir, tasks, items, store, manifest, config.limit, started)
        print_summary(config, model, loader.shape, timeline, time.monotonic() - started)
        parallel.finish(d)
        return run_dir.path, out


# ----------------------------------------------------------------------------- 1 load


def open_sandbox(config: RunConfig, main: bool = True):
    """The Sandbox for the run's code tasks (self-checked), or None when no task runs code or on a
    rank that does not score. Raises EvalError when isolation is unavailable and unsafe exec not allowed."""
    if not main or not any(needs_sandbox(get_task_class(s.name)) for s in config.tasks):
        return None
    return make_sandbox_for(config.sandbox_mode)


def make_sandbox_for(mode: str):
    """A self-checked Sandbox in `mode` ("auto" or "unsafe"); EvalError when isolation is unavailable."""
    from .sandbox import Sandbox, SandboxUnavailable

    try:
        sandbox = Sandbox(mode=mode)
        sandbox.self_check()
    except SandboxUnavailable as exc:
        raise EvalError(f"refusing to run model-written code: {exc} (install bubblewrap, or pass --allow-unsafe-exec to run it with rlimits only)") from None
    return sandbox


def make_tasks(config: RunConfig, sandbox) -> list[Task]:
    """The Tasks of the config; a task that runs code receives the sandbox in its constructor."""
    return [make_task(s, config.data_dir, **({"sandbox": sandbox} if needs_sandbox(get_task_class(s.name)) else {}))
            for s in config.tasks]


def load_samples(tasks: list[Task], limit) -> dict[str, list]:
    """Each task's evaluated samples (`limit` applied), and its few-shot files read (so the data
    revision in the identity covers them); progress per task."""
    samples = {}
    with progress(len(tasks), "load data", "task", brief=True) as bar:
        for t in tasks:
            samples[t.name] = t.samples(limit)
            read_fewshot(t, samples[t.name])
            bar.update(1)
    return samples


def read_fewshot(task: Task, samples: Sequence) -> None:
    """Read (and hash) the few-shot files, as building the prompts does."""
    for sample in samples:
        task.fewshot(sample)


def known_fingerprint(config: RunConfig, model, d) -> dict | None:
    """The model's fingerprint from its files, where that needs no loaded model (runner.model_identity)."""
    if model is not None:
        return model.fingerprint
    if d.active:
        return None
    from .runner import model_identity

    return model_identity(config.model, **config.load_args())


def may_be_finished(config: RunConfig, known: dict | None) -> bool:
    """Whether a finished run of this command can exist (so the weights must not load before that is
    checked): a known fingerprint and a run dir with a plan where this command's would be."""
    if known is None or config.chat_on:
        return False
    if config.output_dir:
        return Path(config.output_dir, "plan.jsonl").is_file()
    return any(Path("results", "runs", slug(known["model"])).glob("*/plan.jsonl"))


def import_model_libraries(spec: str) -> None:
    """Import torch and the transformers classes loading uses, completely, in one thread: transformers
    resolves its names lazily, and two threads doing that at once can see a half-made module."""
    if spec.startswith("fake:"):
        return
    import torch  # noqa: F401
    import transformers

    for name in ("AutoTokenizer", "AutoConfig", "AutoModelForCausalLM", "LlamaConfig", "PreTrainedTokenizerFast"):
        getattr(transformers, name, None)


class ModelLoader:
    """The model, loaded in a thread where that is safe (one process; the loaders release the GIL in
    file reads and tensor ops) while the data loads and the requests build with the tokenizer alone
    (runner/dry.py: the same tokenisation as the loaded model's). Under torchrun it loads in the
    main thread (its collectives must run in one order on every rank)."""

    def __init__(self, config: RunConfig, d, model=None):
        self.config, self.d, self.given = config, d, model
        self.started = model is not None
        self.overlap = False  # whether the builder may run beside inference (separate tokenizers)
        self._thread: threading.Thread | None = None
        self._result: Any = model
        self._error: BaseException | None = None
        self._dry = None
        self.imported = threading.Event()  # set once the loader thread has imported torch and transformers

    def start(self) -> None:
        """Begin loading (once); in a thread unless under torchrun."""
        if self.started:
            return
        self.started = True
        if self.d.active:
            return  # loaded in wait(), in the main thread
        self._thread = threading.Thread(target=self._load, name="load model", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            try:
                import_model_libraries(self.config.model)
            finally:
                self.imported.set()
            self._result = self._load_now()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread by wait()
            self._error = exc

    def _load_now(self):
        from .runner import load_model

        c = self.config
        return load_model(c.model, batch_size=c.batch_size, prefix_cache=c.prefix_cache, **c.load_args(),
                          **({"dist": self.d} if self.d.active else {}))

    def tokenizer_model(self):
        """What builds the requests: the given model, or (while the weights load in a thread) the
        weightless DryModel of the spec; under torchrun the loaded model itself."""
        if self.given is not None:
            return self.given
        from .runner.served import is_served

        if self._thread is None or is_served(self.config.model):  # served: nothing to overlap, no dry model
            return self.wait()
        self.imported.wait()  # transformers' lazy imports are not safe from two threads at once
        if self._error is not None:
            raise self._error
        from .runner.dry import DryModel

        self._dry = DryModel.load(self.config.model, **self.config.load_args())
        self.overlap = True
        return self._dry

    @property
    def shape(self):
        """The architecture's Shape where the dry model read one (for FLOPs), else None."""
        return getattr(self._dry, "shape", None)

    def wait(self, builder: "Builder | None" = None):
        """The loaded model (raises what loading raised); a `builder` that fails meanwhile raises its
        error at once (bad input is reported before the weights finish loading)."""
        if self._thread is None and self._result is None:
            self._result = self._load_now()
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.1)
            if builder is not None and builder.error is not None:
                raise builder.error
        self._thread = None
        if self._error is not None:
            raise self._error
        model = self._result
        if self.d.active and hasattr(model, "report_progress"):
            model.report_progress = False  # rank 0 reports the whole job instead (parallel.JobProgress)
        return model


# ----------------------------------------------------------------------------- 2 build


class Builder:
    """Prepared items per task, in task order. With `overlap` (the builder's tokenizer is not the
    inference model's), a thread builds task N+1 while task N is inferred; otherwise every task is
    built before inference starts (one tokenizer is not shared between threads). Progress counts
    items; a task is built one subset at a time (the shared prefix is marked per subset, so this
    equals one call per task). `chat` is the (ChatTemplate, ChatOptions) pair, or None."""

    def __init__(self, tasks: list[Task], samples: dict, model, chat_options, overlap: bool = False):
        self.tasks, self.samples, self.model = tasks, samples, model
        self.chat = chat_template_of(model, chat_options)
        self.built: dict[str, list[Prepared]] = {}
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._bar = progress(sum(len(v) for v in samples.values()), "build", "item", brief=True)
        if overlap:
            threading.Thread(target=self._build_all, name="build", daemon=True).start()
        else:
            self._build_all()
            if self.error is not None:
                raise self.error

    def _build_all(self) -> None:
        try:
            for t in self.tasks:
                self._queue.put((t, self.build_task(t)))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread by tasks_in_order()
            self.error = exc
            self._queue.put((None, exc))
        finally:
            self._bar.close()

    def build_task(self, task: Task) -> list[Prepared]:
        items: list[Prepared] = []
        by_subset: dict[str, list] = {}
        for s in self.samples[task.name]:
            by_subset.setdefault(s.subset, []).append(s)
        for group in by_subset.values():
            items.extend(build(task, group, self.model, self.chat))
            self._bar.update(len(group))
        return items

    def tasks_in_order(self):
        """(task, items) as each task is built; raises what building raised."""
        for _ in self.tasks:
            task, items = self._queue.get()
            if task is None:
                raise items
            self.built[task.name] = items
            yield task, items


def chat_template_of(model, options):
    """(ChatTemplate, ChatOptions) for --apply-chat-template, or None."""
    if options is None or not options.enabled:
        return None
    from .chat import ChatTemplate

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise EvalError(f"--apply-chat-template: model {model.name} has no tokenizer with a chat template")
    return ChatTemplate(tokenizer, model.name, options.template), options


def stop_at_end_of_turn(model, template) -> None:
    """Generation ends at the template's end-of-turn tokens too."""
    if hasattr(model, "stop_at_tokens"):
        model.stop_at_tokens(template.end_of_turn_ids())


def chat_template(model, options):
    """(ChatTemplate, ChatOptions) for --apply-chat-template, or None; the model stops generating
    at the template's end-of-turn tokens too."""
    chat = chat_template_of(model, options)
    if chat is not None:
        stop_at_end_of_turn(model, chat[0])
    return chat


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


def plan_row(task: str, item: Prepared) -> dict:
    return {"task": task, "id": item.sample.id, "prompt": item.prompt,
            "shots": item.shots, "requests": [{"kind": type(r).__name__, **dataclasses.asdict(r)} for r in item.requests]}


def write_plan(run_path: Path, tasks: list[Task], items: dict[str, list[Prepared]]) -> None:
    """plan.jsonl: every item's prompt, shots and requests (so `score` needs no model)."""
    write_jsonl(run_path / "plan.jsonl", (plan_row(t.name, i) for t in tasks for i in items[t.name]))


class PlanWriter:
    """plan.jsonl written task by task, each task's rows before its inference starts (so `score`
    of an interrupted run names what is missing): the first task's by an atomic write that replaces
    an earlier run's plan, the next ones appended (results.append_jsonl)."""

    def __init__(self, run_path: Path):
        self.path = run_path / "plan.jsonl"
        self.started = False

    def add(self, task: str, items: Sequence[Prepared]) -> None:
        rows = (plan_row(task, i) for i in items)
        if self.started:
            append_jsonl(self.path, rows)
        else:
            write_jsonl(self.path, rows)
            self.started = True


# ----------------------------------------------------------------------------- the run dir


def lock_explicit_dir(config: RunConfig, d, stack, known: dict | None, tasks: list[Task]):
    """An explicit --output-dir is locked, and its config checked, before the model loads (rank 0
    holds the lock for the whole job; the other ranks write only their own files)."""
    from . import parallel

    run_dir, error = None, None
    if config.output_dir:
        try:
            run_dir = stack.enter_context(RunDir(Path(config.output_dir), lock=d.main))
            if d.main:
                run_dir.check(partial_identity(config, known, tasks), partial=True)
        except EvalError as exc:
            error = exc
    parallel.agree(d, error)  # every rank stops here if rank 0 could not take the run dir
    return run_dir


def partial_identity(config: RunConfig, known: dict | None, tasks: list[Task]) -> dict:
    """What of the identity is known before the data is read (and, for `known` None, the model loaded)."""
    return {"tasks": {t.name: task_identity(t, data=False) for t in tasks}, "limit": config.limit, **({"model": known} if known else {})}


def manifest_of(config: RunConfig, identity: Identity, model, sandbox) -> dict:
    """config.json: the identity (what a resume compares) and what else describes the run."""
    from .registry import included_paths

    manifest = {
        "identity": identity.to_dict(),
        "model": {"name": model.name, **model.fingerprint},
        "model_args": dict(config.model_args or {}),
        "tasks": [s.to_dict() for s in config.tasks],
        "data_dir": config.data_location(),
        "limit": config.limit,
        "sandbox": sandbox.mode if sandbox else None,
        "xverse_eval_version": __version__,
        "git_sha": git_sha(),
        "command": config.command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if identity.chat is not None:
        manifest["chat"] = identity.chat
    if included_paths():
        manifest["include_paths"] = included_paths()
    return manifest


def claim_run_dir(config: RunConfig, d, stack, run_dir, identity: Identity, model, sandbox):
    """(RunDir, manifest as stored, ResponseStore): the default run dir locked, the manifest written
    or matched (a compute change noted, identity.py), the stored responses read."""
    from . import parallel

    manifest, store, error = None, None, None
    try:
        if run_dir is None:
            run_dir = stack.enter_context(RunDir(identity.run_dir(None, model.name), lock=d.main))
        if d.main:  # only rank 0 writes the run's files; the others read what is stored
            changed = run_dir.claim(manifest_of(config, identity, model, sandbox))
            if changed:
                say(f"{run_dir.path}: its responses were computed by other code and are ignored (kept in the file), "
                    f"computing them again; compute changed: {'; '.join(changed)}")
            manifest = run_dir.manifest()
        store = ResponseStore(d.responses_file(run_dir.path), identity.model, identity.tasks, identity.compute)
    except EvalError as exc:
        error = exc
    parallel.agree(d, error)  # every rank has read the stored responses before any rank appends
    return run_dir, manifest, store


# ----------------------------------------------------------------------------- 3 infer


def todo_of(items: Sequence[Prepared], store: ResponseStore) -> dict[type, list[Request]]:
    """The requests of `items` with no stored response, each once, by kind."""
    todo: dict[type, list[Request]] = {LoglikelihoodRequest: [], GenerateRequest: []}
    seen = set()
    for item in items:
        for req in item.requests:
            k = store.key(req)  # hashes the whole prompt: once per request
            if k not in store.done and k not in seen:
                seen.add(k)
                todo[type(req)].append(req)
    return todo


def infer_all(model, builder: Builder, store: ResponseStore, d, run_dir: RunDir, timeline: dict | None = None) -> dict[str, list[Prepared]]:
    """Each task's missing requests, as soon as the task is built and its plan rows are written
    (under torchrun: all tasks' together, sharded). `timeline` gets "first_request" (monotonic
    seconds) when the model is first asked. Returns task -> items."""
    timeline = timeline if timeline is not None else {}
    plan = PlanWriter(run_dir.path) if d.main else None
    if d.active:
        pairs = list(builder.tasks_in_order())
        if plan:
            write_plan(run_dir.path, builder.tasks, builder.built)
        timeline.setdefault("first_request", time.monotonic())
        infer(model, [i for _, items in pairs for i in items], store, d)
        return builder.built
    reused = left = 0
    for task, items in builder.tasks_in_order():
        plan.add(task.name, items)
        if "first_request" not in timeline:
            timeline["first_request"] = time.monotonic()
            if "started" in timeline:  # benchmarks/startup.py reads this line (--verbosity INFO)
                log.info("first request reaches the model %.1f s after the command started", timeline["first_request"] - timeline["started"])
        r, n = infer(model, items, store, label=task.name)
        reused, left = reused + r, left + n
    if reused:
        say(f"resumed: {reused} responses reused from {store.path.parent}, {left} computed")
    return builder.built


def infer(model, items: Sequence[Prepared], store: ResponseStore, dist=None, label: str | None = None) -> tuple[int, int]:
    """Ask the model for every request not already stored; each batch is stored as it finishes.
    Under torchrun (`dist`, parallel.Dist) this replica computes only its shard of what is left, and
    rank 0 shows the progress of the whole job until every rank has finished (parallel.py).
    Returns (responses reused, requests left to compute)."""
    todo = todo_of(items, store)
    left = sum(len(v) for v in todo.values())
    done = sum(len(i.requests) for i in items) - left
    if done:
        say(f"{label + ': ' if label else ''}resuming: {done} responses already stored, {left} to compute")
    if dist is not None and dist.active:
        infer_shard(model, todo, store, dist)
        return done, left
    if todo[LoglikelihoodRequest]:
        model.loglikelihood(todo[LoglikelihoodRequest], on_done=store.append)
    if todo[GenerateRequest]:
        model.generate(todo[GenerateRequest], on_done=store.append)
    return done, left


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


# ----------------------------------------------------------------------------- 4-5 score, report


def collect(items: Sequence[Prepared], store: ResponseStore, task: str):
    responses = [[store.get(r) for r in i.requests] for i in items]
    missing = [r.key for i, resp in zip(items, responses) for r, x in zip(i.requests, resp) if x is None]
    if missing:
        total = sum(len(i.requests) for i in items)
        raise EvalError(f"{task}: incomplete run, {total - len(missing)}/{total} responses stored (first missing: {missing[0]}); re-run the same command to finish it")
    return responses


def score_and_report(run: RunDir, tasks: list[Task], items: dict[str, list[Prepared]], store: ResponseStore, manifest: dict, limit,
                     started: float | None = None) -> dict:
    """Records (samples/<task>.jsonl), TaskResults, results.json and report.md; returns our block."""
    chat_note = chat_summary(manifest.get("chat"))
    results = {}
    responses_of = {task.name: collect(items[task.name], store, task.name) for task in tasks}  # all present, or no metrics
    with progress(len(tasks), "score", "task", brief=True) as bar:
        for task in tasks:
            fault("score")
            records = task.score_all(items[task.name], responses_of[task.name])
            write_jsonl(run.path / "samples" / f"{task.name}.jsonl", (r.to_dict() for r in records))
            results[task.name] = task.aggregate(records, limit).to_dict()
            if chat_note:  # the provenance table shows notes: a chat-templated number says so beside itself
                results[task.name]["notes"] = [*results[task.name]["notes"], chat_note]
            bar.update(1)
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


def full_size(task: Task, limit, effective: int) -> int:
    """Items of the evaluated split of the task's subsets without --limit (lm-eval's n-samples
    "original"); the effective count where the split cannot be read again."""
    if not limit:
        return effective
    try:
        return len(task.samples())
    except EvalError:
        return effective


def print_summary(config: RunConfig, model, shape, timeline: dict, wall: float) -> None:
    """After a real run, one line: when the model got its first request, what it computed (requests,
    tokens after prefix sharing, generated), the FLOPs of those tokens, the achieved TFLOP/s over the
    wall time and the MFU against the device's peak (runner/dry.py)."""
    from .runner import dry

    parts = []
    if "first_request" in timeline:
        parts.append(f"first request {timeline['first_request'] - timeline['started']:.1f} s after the command started")
    counters = getattr(model, "counters", None)
    work = counters() if counters is not None else None
    shape = shape or shape_of_loaded(model)
    if work is not None and work.requests:
        text = f"computed {work.requests:,} requests, {work.computed_tokens:,} tokens after prefix sharing"
        if work.generated_tokens:
            text += f", {work.generated_tokens:,} generated"
        parts.append(text)
        if shape is not None:
            flops = shape.flops_per_token(0) * (work.computed_tokens + work.generated_tokens)
            achieved = flops / wall / 1e12 if wall > 0 else 0.0
            text = f"{flops / 1e12:,.1f} TFLOP (matmuls) in {wall:.0f} s = {achieved:.2f} TFLOP/s"
            peak = dry.peak_tflops(dry.device_name(config.device), config.peak_tflops)
            if peak:
                text += f", MFU {100 * achieved / peak:.1f}% of {peak:g} (floor {flops / (peak * 1e12):.1f} s)"
            parts.append(text)
    if parts:
        say("summary: " + "; ".join(parts))


def shape_of_loaded(model):
    """The Shape of a loaded transformers model (its config), or None."""
    config = getattr(getattr(model, "model", None), "config", None)
    if config is None:
        return None
    try:
        from .runner.shape import Shape

        return Shape.of(config)
    except EvalError:
        return None


# ----------------------------------------------------------------------------- the resume shortcut


def finished_run(config: RunConfig, fingerprint: dict, tasks: list[Task], samples: dict) -> tuple[Path, dict] | None:
    """(run dir, results) when the run this command names already holds every response: the run dir
    found from the identity (identity.py; the model's `fingerprint` from its files), the stored
    responses re-scored as `score` does -- no model load. None when anything is left to compute, the
    run dir holds another config or responses of other code (the caller then runs as usual).
    Reads without the run dir's lock, so it never cuts a file: a torn last line may be another
    process's write in flight."""
    from .identity import compute_changes
    from .results import read_json_file, read_jsonl_tolerant

    identity = Identity.of(fingerprint, tasks, config.limit)
    path = identity.run_dir(config.output_dir, fingerprint["model"])
    manifest_path = path / "config.json"
    if not manifest_path.is_file() or not (path / "plan.jsonl").is_file() or RunDir(path).differences(identity.to_dict()):
        return None
    stored = read_json_file(manifest_path)
    if stored.get("data_dir") != config.data_location():
        return None  # `score` reads the data from where the run did: let the full path handle a move
    if compute_changes(stored.get("identity", {}), identity.to_dict()):
        return None  # computed by other code: the full path says what changed and recomputes
    plan = {(row["task"], row["id"]): row for row in read_jsonl_tolerant(path / "plan.jsonl", truncate=False)}
    store = ResponseStore(path / "responses.jsonl", identity.model, identity.tasks, identity.compute, repair=False)
    total = 0
    for t in tasks:
        for sample in samples[t.name]:
            row = plan.get((t.name, sample.id))
            if row is None or any(store.get(request_from_dict(r)) is None for r in row["requests"]):
                return None
            total += len(row["requests"])
    say(f"resumed: all {total} responses are stored in {path}; re-scoring them without loading the model, 0 left to compute")
    return path, score_run(str(path), config.sandbox_mode)


# ----------------------------------------------------------------------------- provenance


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- score, from a run dir


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
        sandbox = make_sandbox_for(sandbox_mode) if any(needs_sandbox(get_task_class(s.name)) for s in specs) else None
        tasks = [make_task(s, manifest.get("data_dir"), **({"sandbox": sandbox} if needs_sandbox(get_task_class(s.name)) else {}))
                 for s in specs]
        plan = {(row["task"], row["id"]): row for row in read_jsonl_tolerant(run_dir.path / "plan.jsonl")}
        items = {}
        for t in tasks:
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
        ident = manifest["identity"]
        store = ResponseStore(run_dir.path / "responses.jsonl", ident["model"], ident.get("tasks"), ident.get("compute"))
        return score_and_report(run_dir, tasks, items, store, manifest, manifest["limit"], started)


def request_from_dict(data: dict) -> Request:
    data = dict(data)
    if data.pop("kind") == "LoglikelihoodRequest":
        return LoglikelihoodRequest(**data)
    return GenerateRequest(**{**data, "stop": tuple(data.get("stop", ()))})


# ----------------------------------------------------------------------------- --dry-run


def dry_run(config: RunConfig, tasks: list[Task], started: float) -> tuple[Path, None]:
    """Load the data, build and tokenise every request with the model's tokenizer alone (no weights),
    write plan.jsonl where the run would, and print per task the requests, distinct tokens, tokens
    after prefix sharing and the compute floor on the device (runner/dry.py). Returns (run dir, None)."""
    from .runner.dry import DryModel

    samples = load_samples(tasks, config.limit)
    model = DryModel.load(config.model, **config.load_args())
    builder = Builder(tasks, samples, model, config.chat)
    for _ in builder.tasks_in_order():
        pass
    fingerprint = model.fingerprint or {"model": config.model, "backend": "dry"}
    identity = Identity.of(fingerprint, tasks, config.limit, chat_identity(*builder.chat) if builder.chat else None)
    path = identity.run_dir(config.output_dir, config.model)
    with RunDir(path) as run_dir:
        write_plan(run_dir.path, tasks, builder.built)
    from .runner.dry import cost_table

    print(cost_table(config, model, tasks, builder.built, started))
    say(f"dry run: plan written to {path / 'plan.jsonl'}; no weights loaded")
    return path, None
