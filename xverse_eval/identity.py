"""What a run is: its identity, the run dir it lives in, the key of every stored response, and what a
resume compares. The one module that decides these (evaluate.py, results.py and `score` ask it).

A run's identity has five parts:

- `model`: the model's fingerprint (runner/fingerprint.py: files' sha256 or hub commit, dtype,
  --model-args, trust_remote_code, backend);
- `tasks`: per task its version, variant, subsets, prompt hash, shots and data revision
  (`task_identity`);
- `limit`: --limit as given (an int or a fraction), stamped here once;
- `chat`: the chat template's identity, only when --apply-chat-template is on (a plain run's identity
  stays as it always was);
- `compute`: the version of the code that turns text into log-probs and texts (`COMPUTE_VERSIONS`,
  one per backend) and the major.minor versions of the libraries it runs on (torch, transformers).

The run dir's name is the digest of the first four: a harness upgrade finds the run dir of the same
command again. Every response key holds `compute` too, so after an upgrade that changes responses the
old lines no longer match: they are ignored (never deleted), recomputed, and the run says so in one
line naming what changed (issue 20, item 7). A difference in the other four parts is refused instead
(the run dir holds another run).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def canonical(obj: Any) -> str:
    """`obj` as compact JSON with sorted keys: the text an identity's digest is taken of."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def digest(obj: Any) -> str:
    """sha256 hex of `canonical(obj)`."""
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"dtype": "x"}} -> {"model.dtype": "x"}: the keys a config difference is named by."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


log = logging.getLogger(__name__)

# The compute version of each backend: bump it with every change that can alter a response of that
# backend (tokenisation, BOS handling, the prefix-sharing path, the scoring or generation engine,
# numerics). History -- transformers 1: the first keyed version (prefix cache, varlen scoring, the
# paged generation engine of December 2026); fake 1: runner/fake.py as of then.
COMPUTE_VERSIONS: dict[str, int] = {
    "transformers": 1,
    "transformers-random": 1,
    "fake": 1,
    "served": 1,
}

# the libraries whose version (major.minor) can change a backend's numbers
LIBRARIES: dict[str, tuple[str, ...]] = {
    "transformers": ("torch", "transformers"),
    "transformers-random": ("torch", "transformers"),
    "fake": (),
    "served": ("transformers",),  # the server computes; our tokenizer splits context and continuation
}


def major_minor(package: str) -> str | None:
    """`2.13` for torch 2.13.0+cpu: the installed version's major.minor (no import), None if absent."""
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def compute_identity(fingerprint: dict) -> dict:
    """The `compute` part of a run's identity for a model of this fingerprint: its backend, the
    backend's compute version, and the major.minor of each library it runs on. A backend this table
    does not know gets version 0 (still keyed by its name and the libraries)."""
    backend = fingerprint.get("backend") or "transformers"
    out: dict[str, Any] = {"backend": backend, "version": COMPUTE_VERSIONS.get(backend, 0)}
    for package in LIBRARIES.get(backend, ("torch", "transformers")):
        out[package] = major_minor(package)
    return out


def task_identity(task, data: bool = True) -> dict:
    """What of a task determines its responses and scores: version, variant, subsets ("all" for all),
    prompt hash, shots and (`data=True`) the data revision -- which reads the few-shot files, so
    `data=False` is what is known before the data is read."""
    out = {"version": task.version, "variant": task.variant, "subsets": task.subsets if task.subsets != task.all_subsets() else "all",
           "prompt_hash": task.prompt_hash, "shots": task.shots}
    if data:
        out["data_revision"] = task.data.revision()
    return out


def slug(text: str) -> str:
    """A folder name from a model spec: `org/name` -> `org_name`, at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip("/"))[-80:]


@dataclass(frozen=True)
class Identity:
    """One run's identity (see the module docstring). `model`: the fingerprint dict; `tasks`: task
    name -> `task_identity`; `limit`; `chat`: the chat identity or None; `compute`: from
    `compute_identity` (None: computed from `model`)."""

    model: dict
    tasks: dict
    limit: int | float | None
    chat: dict | None = None
    compute: dict | None = field(default=None)

    def __post_init__(self):
        if self.compute is None:
            object.__setattr__(self, "compute", compute_identity(self.model))

    @classmethod
    def of(cls, fingerprint: dict, tasks, limit, chat: dict | None = None) -> "Identity":
        """The identity of a run of `tasks` (Task objects, their data read) on a model of `fingerprint`."""
        return cls(fingerprint, {t.name: task_identity(t) for t in tasks}, limit, chat)

    @classmethod
    def from_dict(cls, stored: dict) -> "Identity":
        """The identity stored in a run dir's config.json ("identity"); one written before compute
        versions existed gets compute {} (so every stored key differs: recomputed, as it must be)."""
        return cls(stored["model"], stored.get("tasks") or {}, stored.get("limit"), stored.get("chat"), stored.get("compute") or {})

    def to_dict(self) -> dict:
        """The JSON stored as config.json's "identity" (`chat` only when set)."""
        out = {"model": self.model, "tasks": self.tasks, "limit": self.limit}
        if self.chat is not None:
            out["chat"] = self.chat
        out["compute"] = self.compute
        return out

    def without_compute(self) -> dict:
        """The identity a run dir is named by and a resume refuses to mix: all but `compute`."""
        out = self.to_dict()
        out.pop("compute")
        return out

    def run_dir(self, output_dir: str | None, model_name: str | None = None) -> Path:
        """--output-dir, or results/runs/<model>/<first 12 hex of the identity digest>."""
        if output_dir:
            return Path(output_dir)
        return Path("results") / "runs" / slug(model_name or self.model.get("model") or "model") / digest(self.without_compute())[:12]

    def response_key(self, request) -> str:
        """The key of `request`'s stored response: the sha256 (32 hex) of the model identity, the task's
        version and prompt hash, the compute identity and the whole request (its text included). Not
        the data revision: the request text already carries what the data changes."""
        return response_key(self.model, self.tasks, request, self.compute)


def response_key(model: dict, tasks: dict, request, compute: dict | None = None) -> str:
    """See Identity.response_key; `tasks` maps a task name to (at least) its version and prompt hash,
    and `compute` None leaves it out (the keys of a store opened without one)."""
    name = request.key.split("/", 1)[0]
    entry = tasks.get(name) or {}
    body = {"model": model, "task": {"name": name, "version": entry.get("version"), "prompt_hash": entry.get("prompt_hash")},
            "request": {"kind": type(request).__name__, **dataclasses.asdict(request)}}
    if compute is not None:
        body["compute"] = compute
    return digest(body)[:32]


def compute_changes(stored: dict, current: dict) -> list[str]:
    """`key (old -> new)` for each part of `compute` that differs between a stored identity's and
    this run's (empty: the stored responses were computed by the same code)."""
    old, new = flatten(stored.get("compute") or {}), flatten(current.get("compute") or {})
    old.pop("", None)
    new.pop("", None)
    return [f"{k} ({canonical(old.get(k))} -> {canonical(new.get(k))})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
