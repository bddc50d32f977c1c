"""Run directories: a manifest, a lock, durable responses, and final files written by atomic rename.

results/runs/<model>/<config hash>/
  config.json            the manifest: what determines every response (refused if it changes)
  plan.jsonl             every sample's prompt, shots and requests (so `score` needs no model)
  responses.jsonl        append-only; one line per finished request, fsynced per batch
  samples/<task>.jsonl   one Record per item
  results.json           TaskResults (+ run config, versions)
  report.md              the comparison table
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from .errors import EvalError
from .types import Request, Response, response_from_dict, response_to_dict


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, rename over, fsync the folder: a reader sees
    the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
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


def read_jsonl_tolerant(path: Path) -> list[dict]:
    """Read an append-only log. Every write ends in a newline, so bytes after the last newline are a
    write torn by a crash: they are cut off the file (that request is simply computed again). A
    line that does not parse anywhere before that is damage, not a crash, and is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
    rows = []
    for n, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except json.JSONDecodeError:
            raise EvalError(f"{path}:{n}: corrupt line inside the log (not a torn final write); move the file away to start over") from None
    return rows


class RunDir:
    """One run's folder. Holding it (`with RunDir(...)`) takes an exclusive lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fh = None

    def __enter__(self) -> "RunDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EvalError(f"cannot create the run dir {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise EvalError(f"run dir is not writable: {self.path}")
        self._lock_fh = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalError(f"another xverse-eval process is using {self.path}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fh:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    # -- manifest

    def claim(self, manifest: dict) -> None:
        """Write the manifest, or check that the one there matches: responses from another model,
        prompt or task version must never mix with this run's."""
        path = self.path / "config.json"
        if path.exists():
            old = json.loads(path.read_text())["identity"]
            new = manifest["identity"]
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise EvalError(f"{self.path} holds a run with another config (differs in: {', '.join(diff)}); use another --output-dir")
            return
        write_json(path, manifest)

    def manifest(self) -> dict:
        path = self.path / "config.json"
        if not path.exists():
            raise EvalError(f"not a run dir (no config.json): {self.path}")
        return json.loads(path.read_text())


class ResponseStore:
    """Durable responses: append-only JSONL, one write + fsync per batch, keyed by `response_key`."""

    def __init__(self, path: Path, identity: dict):
        self.path = path
        self.identity = identity
        self.done: dict[str, Response] = {}
        for row in read_jsonl_tolerant(path):
            self.done[row["key"]] = response_from_dict(row["response"])

    def key(self, request: Request) -> str:
        """Everything that determines a response: the model identity and the request itself."""
        return digest({"model": self.identity, "request": {"kind": type(request).__name__, **asdict(request)}})[:32]

    def get(self, request: Request) -> Response | None:
        return self.done.get(self.key(request))

    def append(self, pairs: list[tuple[Request, Response]]) -> None:
        lines = []
        for request, response in pairs:
            k = self.key(request)
            if k in self.done:
                continue
            self.done[k] = response
            lines.append(json.dumps({"key": k, "request": request.key, "response": response_to_dict(response)}, ensure_ascii=False) + "\n")
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
