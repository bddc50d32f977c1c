"""Benchmark data: local files in the published format (--data-dir or $XVERSE_EVAL_DATA), or the
Hugging Face hub at a pinned revision. Every file read is hashed, so a result names the exact bytes
it was computed from."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from .errors import EvalError

ENV_VAR = "XVERSE_EVAL_DATA"


def data_root(data_dir: str | None) -> Path | None:
    root = data_dir or os.environ.get(ENV_VAR)
    if not root:
        return None
    path = Path(root).expanduser()
    if not path.is_dir():
        raise EvalError(f"data dir does not exist: {root}")
    return path


class DataSource:
    """The files of one task. `folder` is the task's folder under the data dir."""

    def __init__(self, task: str, folder: str, data_dir: str | None):
        self.task = task
        self.root = data_root(data_dir)
        self.folder = folder
        self.hashes: dict[str, str] = {}
        self.hub: str | None = None

    @property
    def local(self) -> bool:
        return self.root is not None

    def path(self, *parts: str) -> Path:
        """A file or folder of this task; a clear error if the data dir lacks it."""
        base = self.root / self.folder if self.root is not None and (self.root / self.folder).is_dir() else self.root
        if base is None:
            raise EvalError(f"{self.task}: no data dir given (--data-dir or ${ENV_VAR})")
        path = base.joinpath(*parts)
        if not path.exists():
            raise EvalError(f"{self.task}: missing {path} (expected the published layout under {base})")
        return path

    def describe(self) -> str:
        return f"data from {self.root / self.folder}" if self.root else (f"data from {self.hub}" if self.hub else "embedded data")

    # -- reading, with hashing

    def read_bytes(self, path: Path) -> bytes:
        data = path.read_bytes()
        self.hashes[str(path)] = hashlib.sha256(data).hexdigest()
        return data

    def read_text(self, path: Path) -> str:
        data = self.read_bytes(path)
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        try:
            # a UTF-8 byte-order mark is dropped, as pandas.read_csv drops it in the reference scripts
            return data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise EvalError(f"{path}: not UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None

    def read_jsonl(self, path: Path) -> list[dict[str, Any]]:
        rows = []
        text = self.read_text(path)
        if "\x00" in text:
            raise EvalError(f"{path}: contains NUL bytes")
        if text.lstrip().startswith("["):
            raise EvalError(f"{path}: is a JSON array; expected JSON Lines (one object per line)")
        # Lines end where the reference readers' `for line in open(path)` (text mode: universal
        # newlines) ends them, at "\n", "\r\n" or "\r". str.splitlines() would also split inside
        # strings at raw U+2028, U+0085, form feeds and the like, which JSON allows there.
        lines = re.split(r"\r\n|\r|\n", text)
        if lines and lines[-1] == "":
            lines.pop()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                torn = "; the last line is cut short: a truncated file?" if n == len(lines) and not text.endswith("\n") else ""
                raise EvalError(f"{path}:{n}: malformed JSON ({exc.msg}: column {exc.colno}){torn}") from None
            if not isinstance(row, dict):
                raise EvalError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
        return rows

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(self.read_text(path))
        except json.JSONDecodeError as exc:
            raise EvalError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None

    def read_csv_pandas(self, path: Path, columns: int, header: int | None = None, index_col: int | None = None):
        """Read a CSV exactly as the reference scripts do (pandas.read_csv), so cells like "None" or
        numbers render in prompts the way they rendered for the reference (NaN -> "nan", 0.50 -> 0.5)."""
        import pandas as pd

        text = self.read_text(path)
        if "\x00" in text:
            raise EvalError(f"{path}: contains NUL bytes")
        if not text.strip():
            raise EvalError(f"{path}: empty file (no rows)")
        try:
            frame = pd.read_csv(io.StringIO(text), header=header, index_col=index_col)
        except Exception as exc:  # pandas raises several types for malformed CSV
            raise EvalError(f"{path}: malformed CSV ({str(exc).splitlines()[0]})") from None
        if frame.shape[1] != columns:
            raise EvalError(f"{path}: {frame.shape[1]} columns, expected {columns}")
        return frame

    def read_csv_rows(self, path: Path) -> Iterator[dict[str, str]]:
        yield from csv.DictReader(io.StringIO(self.read_text(path)))

    def revision(self) -> str:
        if self.hub:
            return self.hub
        if not self.hashes:
            return "unknown"
        digest = hashlib.sha256("".join(f"{Path(p).name}:{h}\n" for p, h in sorted(self.hashes.items())).encode()).hexdigest()
        return f"sha256:{digest[:16]} ({len(self.hashes)} files)"

    # -- hub

    def load_hub(self, dataset: str, config: str | None, split: str, revision: str) -> list[dict[str, Any]]:
        """Load a split from the Hugging Face hub at a pinned revision (needs the network or the HF cache).

        Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or the hub's host unreachable within
        HUB_PROBE_SECONDS) it makes one cache-only attempt instead of the hub client's ~26 s of retries.
        Errors: EvalError, one line naming the dataset and the cause's type."""
        try:
            import datasets
        except ImportError:
            raise EvalError(f"{self.task}: no --data-dir given and the `datasets` package is not installed") from None
        try:
            with _offline_mode(not _hub_reachable()):
                ds = datasets.load_dataset(dataset, config, split=split, revision=revision)
        except Exception as exc:
            raise EvalError(f"{self.task}: cannot load {dataset}{'/' + config if config else ''} from the hub ({type(exc).__name__}); pass --data-dir with the published files") from None
        self.hub = f"hub:{dataset}@{revision}"
        return [dict(row) for row in ds]


HUB_PROBE_SECONDS = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def _hub_reachable() -> bool:
    """Whether the hub can be reached: False at once when an offline variable is set, else one TCP
    connection to the endpoint's host (HF_ENDPOINT honoured) within HUB_PROBE_SECONDS. Behind a proxy
    the probe cannot tell, so the hub client decides (True)."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=HUB_PROBE_SECONDS).close()
        return True
    except OSError:
        return False


class _offline_mode:
    """Within: the hub clients' offline switches on (cache only, no retries), when `on`. They read the
    environment once at import, so the flags are set on their modules and restored afterwards."""

    _FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
              ("datasets.config", "HF_DATASETS_OFFLINE"))

    def __init__(self, on: bool):
        self.on, self.saved = on, []

    def __enter__(self):
        if self.on:
            import importlib

            for module, name in self._FLAGS:
                mod = importlib.import_module(module)
                if hasattr(mod, name):
                    self.saved.append((mod, name, getattr(mod, name)))
                    setattr(mod, name, True)
        return self

    def __exit__(self, *exc):
        for mod, name, value in self.saved:
            setattr(mod, name, value)
        return False
