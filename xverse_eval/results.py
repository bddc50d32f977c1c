"""Run directories: a manifest, a lock, durable responses, and final files written by atomic rename.

results/runs/<model>/<config hash>/
  config.json            the manifest: what determines every response (refused if it changes)
  plan.jsonl             every sample's prompt, shots and requests (so `score` needs no model)
  responses.jsonl        append-only; one line per finished request, fsynced per batch
  samples/<task>.jsonl   one Record per item
  results.json           TaskResults (+ run config, versions)
  report.md              the comparison table

Why JSONL and not SQLite: benchmarks/durability.py and benchmarks/RESULTS.md ("Durability"). Both
cost one fsync per batch for the same guarantee; the log is plain text and needs no schema.

Test hook: XVERSE_EVAL_FAULT=<point>[@<n>][=raise] SIGKILLs this process (or, with "=raise", raises
an EvalError) the n-th time (default: the first) it reaches `fault("<point>")`; "torn_write@<n>=stall"
instead holds the half-written batch for $XVERSE_EVAL_FAULT_STALL seconds (default 5), then writes the
rest (a write in flight, for the concurrent-run test). Points: "append"
(a batch computed, not yet written), "torn_write" (half of a batch's bytes written and fsynced),
"appended" (a batch stored), "atomic_write" (a final file's temp copy written, not yet renamed),
"score" (before scoring each task), "report" (results.json written, report.md not yet).
tests/test_resume.py kills runs at these points and checks that a re-run finishes them exactly.
Under torchrun, XVERSE_EVAL_FAULT_RANK=<rank> fires it in that rank only (tests/test_parallel.py).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from .errors import EvalError
from .identity import canonical, compute_changes, digest, flatten, response_key  # noqa: F401 (canonical, digest: re-exported)
from .types import Request, Response, response_from_dict, response_to_dict

log = logging.getLogger(__name__)


_FAULT_HITS: dict[str, int] = {}


def _fault_due(point: str) -> str | None:
    """The action ("kill" or "raise") if the XVERSE_EVAL_FAULT hook fires at this hit of `point`."""
    spec = os.environ.get("XVERSE_EVAL_FAULT")
    if not spec:
        return None
    where, _, action = spec.partition("=")
    name, _, nth = where.partition("@")
    if name != point:
        return None
    only = os.environ.get("XVERSE_EVAL_FAULT_RANK")  # under torchrun: fire in this rank only
    if only is not None and only != os.environ.get("RANK", "0"):
        return None
    _FAULT_HITS[point] = _FAULT_HITS.get(point, 0) + 1
    return (action or "kill") if _FAULT_HITS[point] == int(nth or 1) else None


def _fire(point: str, action: str) -> None:
    if action == "raise":
        raise EvalError(f"injected fault at {point} (XVERSE_EVAL_FAULT={os.environ.get('XVERSE_EVAL_FAULT')})")
    os.kill(os.getpid(), signal.SIGKILL)


def fault(point: str) -> None:
    """The XVERSE_EVAL_FAULT test hook (see the module docstring); does nothing when it is unset."""
    action = _fault_due(point)
    if action:
        _fire(point, action)


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, rename over, fsync the folder: a reader sees
    the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    fault("atomic_write")
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Append whole lines in one write, then fsync (a crash leaves at most a torn last line, which
    `read_jsonl_tolerant` skips, and the lock holder cuts)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl_tolerant(path: Path, truncate: bool = True) -> list[dict]:
    """Read an append-only log. Every write ends in a newline, so bytes after the last newline are a
    write torn by a crash: they are cut off the file (that request is simply computed again). A
    line that does not parse anywhere before that is damage, not a crash, and is an error.
    `truncate=False` only skips a torn tail: for another rank's file, which only its writer may cut."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and truncate:
        log.warning("%s: cutting off a torn last line (%d bytes) left by a crash; those requests run again", path, len(data) - end)
        with open(path, "r+b") as fh:
            fh.truncate(end)
    rows = []
    for n, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            raise EvalError(f"{path}:{n}: corrupt line inside the log (not a torn final write); move the file away to start over") from None
    return rows


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"{path}: not valid JSON ({exc}); move the run dir away to start over") from None


class RunDir:
    """One run's folder. Holding it (`with RunDir(...)`) takes an exclusive lock, so two processes
    can never append to one run; the kernel drops the lock when its process dies, even by SIGKILL."""

    def __init__(self, path: Path, lock: bool = True):
        self.path = Path(path)
        self.lock = lock  # False: a non-zero torchrun rank, inside the job whose rank 0 holds the lock
        self._lock_fh = None

    def __enter__(self) -> "RunDir":
        if not self.lock:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EvalError(f"run dir is not writable: {self.path} ({exc.strerror or exc})") from None
            return self
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-probe.{os.getpid()}"
            probe.write_bytes(b"")  # os.access says yes to root on a read-only mount; a real write does not
            probe.unlink()
            self._lock_fh = open(self.path / ".lock", "w")
        except OSError as exc:
            raise EvalError(f"run dir is not writable: {self.path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise EvalError(f"another xverse-eval process is using {self.path} (it holds {self.path / '.lock'}); wait for it or use another --output-dir") from None
        # temp files of atomic writes that a killed process never renamed: never read, safe to drop
        for tmp in [*self.path.glob(".*.tmp.*"), *self.path.glob("*/.*.tmp.*")]:
            tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fh:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- manifest

    def differences(self, identity: dict, partial: bool = False) -> list[str]:
        """Keys (dotted) where `identity` differs from the stored run's, with both values. With
        `partial`, only the keys `identity` has are compared (a check before the model is loaded).
        `compute` (the code's version, identity.py) is not compared: a change there recomputes the
        responses (`claim`), it does not make another run."""
        path = self.path / "config.json"
        if not path.exists():
            return []
        old, new = flatten(read_json_file(path).get("identity", {})), flatten(identity)
        keys = sorted(k for k in (set(new) if partial else set(old) | set(new)) if k != "compute" and not k.startswith("compute."))
        return [f"{k} ({_short(old.get(k))} -> {_short(new.get(k))})" for k in keys if old.get(k) != new.get(k)]

    def check(self, identity: dict, partial: bool = False) -> None:
        diff = self.differences(identity, partial)
        if diff:
            raise EvalError(f"{self.path} holds a run with another config, refusing to mix them; differs in: {'; '.join(diff)}. "
                            "Use another --output-dir (or the default one), or move this one away")

    def claim(self, manifest: dict) -> list[str]:
        """Write the manifest, or check that the one there matches: responses from another model,
        prompt or task version must never mix with this run's (EvalError). Where only the compute
        identity differs (a harness or library upgrade, identity.py), the stored manifest takes the new
        one and the old responses stop matching (they stay in the file, ignored). Returns those
        compute changes, `key (old -> new)` (empty when none), for the caller to report."""

        path = self.path / "config.json"
        if not path.exists():
            write_json(path, manifest)
            return []
        self.check(manifest["identity"])
        stored = read_json_file(path)
        changed = compute_changes(stored.get("identity", {}), manifest["identity"])
        if changed:  # the caller says so (one line for the person running it)
            stored["identity"]["compute"] = manifest["identity"].get("compute")
            write_json(path, stored)
        return changed

    def manifest(self) -> dict:
        path = self.path / "config.json"
        if not path.exists():
            raise EvalError(f"not a run dir (no config.json): {self.path}")
        return read_json_file(path)


class ResponseStore:
    """Durable responses: append-only JSONL, one write + fsync per batch, keyed by `key()`.

    A key is the sha256 of everything that determines a response: the model identity (id, path,
    revision, dtype, backend), the task's version and template hash, and the whole request (its
    rendered text included). A resumed run asks the model only for the keys not stored yet; a key is
    written at most once, so nothing is counted twice.

    `path` is the file this process appends to: responses.jsonl, or responses.rank<R>.jsonl for
    replica R of a torchrun job (parallel.py). Reading merges every responses*.jsonl in its folder,
    so a run resumes from the files of any earlier world size; only `path` itself is ever cut or
    written, and only by the holder of the run dir's lock (`repair=False` for any other reader).
    `compute` (identity.compute_identity) is part of every key: responses of other code never match."""

    def __init__(self, path: Path, identity: dict, tasks: dict[str, dict] | None = None, compute: dict | None = None,
                 repair: bool = True):
        self.path = path
        self.identity = identity
        self.tasks = {name: {"version": t.get("version"), "prompt_hash": t.get("prompt_hash")} for name, t in (tasks or {}).items()}
        self.compute = compute  # identity.compute_identity: part of every key (None: left out)
        self.done: dict[str, Response] = {}
        self.stored_lines = 0  # complete lines read, whether or not their key is this run's
        others = sorted(p for p in path.parent.glob("responses*.jsonl") if p != path)
        for file in [path, *others]:
            # only the holder of the run dir's lock may cut its own file: a reader without it (the
            # resume shortcut of a second command) skips a torn tail, which may be a write in flight
            for n, row in enumerate(read_jsonl_tolerant(file, truncate=repair and file == path), 1):
                try:
                    self.done.setdefault(row["key"], response_from_dict(row["response"]))
                except (KeyError, TypeError):
                    raise EvalError(f"{file}:{n}: not a response line (no key/response); move the file away to start over") from None
                self.stored_lines += 1

    def key(self, request: Request) -> str:
        """The request's key (identity.response_key)."""

        return response_key(self.identity, self.tasks, request, self.compute)

    def get(self, request: Request) -> Response | None:
        return self.done.get(self.key(request))

    def append(self, pairs: list[tuple[Request, Response]]) -> None:
        """Store a finished batch: one write of whole lines, then fsync. A crash inside the write
        leaves a torn last line, which the next open cuts off (those requests are computed again)."""
        lines, new = [], {}
        for request, response in pairs:
            k = self.key(request)
            if k in self.done or k in new:
                continue
            new[k] = response
            lines.append(json.dumps({"key": k, "request": request.key, "response": response_to_dict(response)}, ensure_ascii=False) + "\n")
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        fault("append")
        with open(self.path, "ab") as fh:
            action = _fault_due("torn_write")
            if action:
                half = len(data) // 2
                fh.write(data[:half])
                fh.flush()
                os.fsync(fh.fileno())
                if action == "stall":  # a write in flight, held open for a second process to see
                    time.sleep(float(os.environ.get("XVERSE_EVAL_FAULT_STALL", "5")))
                    data = data[half:]
                else:
                    _fire("torn_write", action)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.done.update(new)
        fault("appended")
