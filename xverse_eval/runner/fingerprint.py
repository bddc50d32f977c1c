"""What a model's outputs depend on, computed from its files without loading it.

A run dir and every stored response are keyed by `fingerprint(...)`: re-running a command reuses
stored responses only when this dict is equal. It holds

- for a local folder: the sha256 of every file that can change outputs (weights, index files,
  config.json, generation_config.json, tokenizer files, chat templates, remote code), by name;
- for a .gguf file: the sha256 of the file (weights, tokenizer and chat template all live in it);
- for a hub id: the commit the revision resolves to (online: the hub's answer; offline: the local
  cache's refs; else the revision as given), and the model is then loaded at that commit;
- the runner settings that change numbers: dtype, from_pretrained arguments (`--model-args`),
  trust_remote_code.

Hashing is cached: `HashIndex` remembers (path, size, mtime_ns, ctime_ns, inode) -> sha256 in
$XVERSE_EVAL_CACHE/file-hashes.json (default ~/.cache/xverse-eval), so a second run does not re-read
hundreds of MB. Any write to a file changes its ctime (which no user call can set back), so a
weights file overwritten with the same size and a restored mtime still gets hashed again. Files are
hashed in parallel threads (hashlib releases the GIL), about one read of the checkpoint the first
time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import EvalError

log = logging.getLogger(__name__)

# Files of a model folder that never change its outputs; everything else in the folder is hashed.
DOC_FILES = re.compile(r"(?i)^(readme|license|licence|notice|copying|use_policy|citation)([._-].*)?$|\.(md|png|jpe?g|gif|svg|webp|pdf)$")
SHA = re.compile(r"^[0-9a-f]{40}$")


def cache_root() -> Path:
    """$XVERSE_EVAL_CACHE, or ~/.cache/xverse-eval: file hashes and converted GGUF weights."""
    return Path(os.environ.get("XVERSE_EVAL_CACHE") or Path.home() / ".cache" / "xverse-eval").expanduser()


# ----------------------------------------------------------------------------- content hashes


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class HashIndex:
    """sha256 of files, remembered per (path, size, mtime_ns, ctime_ns, inode) in one JSON file.

    The index is advisory: unreadable, unwritable or raced, it only costs a re-hash."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / "file-hashes.json"

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, new: dict) -> None:
        """Merge `new` into the file as it is now (another process may have added entries) and
        replace it atomically."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read(), **new}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".file-hashes.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(merged, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot store file hashes in %s (%s); they are computed again next time", self.path, exc)

    def hashes(self, paths: list[Path]) -> dict[Path, str]:
        """{path: sha256 hex} for existing regular files; only files whose stat changed are read."""
        known, out, todo = self._read(), {}, []
        for path in paths:
            key = str(path.resolve())
            entry = known.get(key)
            stat = _stat_key(path)
            if isinstance(entry, list) and entry[:4] == stat:
                out[path] = entry[4]
            else:
                todo.append((path, key, stat))
        if todo:
            with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1, 8)) as pool:
                digests = list(pool.map(lambda item: _sha256(item[0]), todo))
            new = {}
            for (path, key, stat), sha in zip(todo, digests):
                out[path] = sha
                if _stat_key(path) == stat:  # unchanged while it was read: safe to remember
                    new[key] = [*stat, sha]
            self._write(new)
        return out


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of one file, through the hash index."""
    path = Path(path)
    return HashIndex().hashes([path])[path]


# ----------------------------------------------------------------------------- which files


def model_files(folder: Path, subfolder: str | None = None) -> list[Path]:
    """The files of a local model folder that can change outputs: every regular file at its top level
    (and in `subfolder`, where from_pretrained reads then) except documentation and hidden files."""
    roots = [folder] + ([folder / subfolder] if subfolder else [])
    files = []
    for root in roots:
        if not root.is_dir():
            raise EvalError(f"model folder has no subfolder {subfolder!r}: {folder}")
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or not path.is_file() or DOC_FILES.search(path.name):
                continue
            files.append(path)
    return files


# ----------------------------------------------------------------------------- hub


def hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit sha `revision` (default "main") of hub model `repo` resolves to: the hub's answer
    when online, else the local cache's refs/<revision>, else `revision` as given (None stays None)."""
    if revision and SHA.match(revision):
        return revision
    ref = revision or "main"
    try:
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo, revision=ref, timeout=10).sha
    except Exception as exc:  # no network, no such repo, gated: the loader will say which, if it matters
        log.info("cannot resolve %s@%s on the hub (%s); using the local cache's ref", repo, ref, exc)
    try:
        from huggingface_hub import constants

        cached = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / ref
        sha = cached.read_text().strip()
        if SHA.match(sha):
            return sha
    except (OSError, ImportError):
        pass
    return revision


# ----------------------------------------------------------------------------- the fingerprint


def fingerprint(spec: str, source, dtype: str, revision: str | None = None, model_args: dict | None = None,
                trust_remote_code: bool = False) -> dict:
    """The model identity of runner/load.py's `Source`, as a JSON-able dict (see the module docstring).

    `dtype` is the resolved torch dtype's name ("float32", "bfloat16", "float16"). `model_args` are
    the extra from_pretrained keyword arguments (JSON values) as `normalize_model_args` returns them.
    For a hub model, the returned "revision" is the commit to load."""
    model_args = dict(model_args or {})
    out: dict[str, Any] = {"model": spec, "path": source.path, "gguf_file": source.gguf_file}
    if not source.local:
        out["revision"] = hub_commit(source.path, revision)
        out["files"] = None
    else:
        if source.gguf_file:
            paths = [Path(source.path, source.gguf_file)]
        else:
            paths = model_files(Path(source.path), model_args.get("subfolder"))
        hashes = HashIndex().hashes(paths)
        base = Path(source.path)
        out["revision"] = revision
        out["files"] = {str(p.relative_to(base)): hashes[p] for p in paths}
    out.update({"dtype": dtype, "backend": "transformers", "model_args": model_args, "trust_remote_code": bool(trust_remote_code)})
    return out


# ----------------------------------------------------------------------------- --model-args


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes: `a=1,b=[1,2]` -> ["a=1", "b=[1,2]"]."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_model_args(text: str) -> dict[str, Any]:
    """`key=value,...` -> {key: value}: a value is JSON where it parses (true, 3, 0.5, [1,2], {...},
    "quoted"), else the string itself (eager, main, org/name). Raises EvalError on an item without '='."""
    out: dict[str, Any] = {}
    for item in _split_top_level(text or ""):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise EvalError(f"--model-args {item!r}: expected key=value (e.g. attn_implementation=eager,revision=main)")
        raw = raw.strip()
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# from_pretrained arguments that have their own flag: one way to set each keeps the identity unique
OWN_FLAGS = {"dtype": "--dtype", "torch_dtype": "--dtype", "gguf_file": "--model FILE.gguf"}


def normalize_model_args(model_args: dict | None, trust_remote_code: bool = False, revision: str | None = None) -> tuple[dict, bool, str | None]:
    """(model_args without trust_remote_code and revision, trust_remote_code, revision): the flags and
    their --model-args spellings merged; an argument that has its own flag is refused (EvalError)."""
    args = dict(model_args or {})
    for key, flag in OWN_FLAGS.items():
        if key in args:
            raise EvalError(f"--model-args {key}=...: use {flag} instead")
    trust = args.pop("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise EvalError(f"--model-args trust_remote_code={trust!r}: use true or false")
    arg_revision = args.pop("revision", None)
    if arg_revision is not None and revision is not None and str(arg_revision) != revision:
        raise EvalError(f"--revision {revision} and --model-args revision={arg_revision} disagree")
    return args, bool(trust_remote_code or trust), (str(arg_revision) if arg_revision is not None else revision)
