"""Tensor parallel for the transformers backend: the model's split over a TP group, and sharded loading.

The split (`tensor_parallel`) is Megatron's for a Llama-architecture decoder (XVERSE loads as Llama):
q/k/v and gate/up projections split by output rows ("colwise"), o and down projections split by input
columns ("rowwise") followed by one all-reduce of their output; embeddings, norms and the LM head stay
whole. It is the plan transformers' own `base_model_tp_plan` gives Llama. Each rank then runs plain
tensors (its heads and its slice of the MLP), so the scoring and generation paths run unchanged, with
two all-reduces per layer.

Sharded loading (`load_sharded`): the module tree is made with its parameters on the meta device, split,
and then each parameter is read from the checkpoint's safetensors files -- only this rank's slice, by
positioned reads (os.preadv) of exactly its bytes -- straight into a host buffer of that one tensor and
on to the rank's device. Peak host memory per rank: the largest single slice (at XVERSE-65B widths the
embedding, 1.6 GB in bf16), not the model, not even one shard file; bytes read per rank: its share of
the sharded projections plus the whole embeddings, norms and head (`Reader.bytes_read` counts them).

Which engine: under `--tp-size K` a local checkpoint whose model class has a tensor-parallel plan loads
with transformers' own (`tp_plan="auto"` over the TP group's device mesh; runner/load.py plan_and_load),
the maintained engine; this module's split serves the rest (random models, GGUF conversions, hub ids,
architectures without a plan) and `XVERSE_EVAL_TP=ours`. Measured on CPU/gloo (transformers 5.24,
torch 2.13; tests/test_sharded.py, a 134 MB checkpoint in 7 shards): both equal one process within
1e-5; peak host memory per rank over its share: ours +1-2 MB, transformers' +6-11 MB (it reads through
a memory map and its weights are DTensors). Which is faster on GPUs is to be measured (RESULTS.md).
safetensors' own `get_slice` also reads through a memory map, whose page faults map whole
neighbourhoods (fault-around), so a column slice touches every page of a tensor: positioned reads make
"each rank reads its share" exact, and countable (`Reader.bytes_read`, /proc/self/io rchar).

The safetensors format (https://github.com/huggingface/safetensors, "Format"): 8 bytes little-endian
header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": ...},
then the data; offsets are relative to the end of the header, tensors are C-contiguous, little-endian.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dist import Dist
from ..errors import EvalError
from .shape import Shape

log = logging.getLogger(__name__)

COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output rows split: each rank its heads / MLP slice
ROWWISE = ("o_proj", "down_proj")  # input columns split, output all-reduced


# ----------------------------------------------------------------------------- the split


def tp_check(config, tp_size: int) -> None:
    """Refuse a --tp-size that does not split the heads and the MLP evenly (one line, before loading)."""
    Shape.of(config).check_tp(tp_size)


def split_of(name: str, tp_size: int) -> int | None:
    """The dimension along which parameter `name` is split over `tp_size` ranks, or None (whole)."""
    if tp_size == 1:
        return None
    leaf = name.split(".")[-2] if name.endswith(("weight", "bias")) else name
    if leaf in COLWISE:
        return 0
    if leaf in ROWWISE and name.endswith("weight"):
        return 1
    return None


def shard_weight(full: torch.Tensor, name: str, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's slice of a weight or bias named `name` (the full tensor, any device)."""
    dim = split_of(name, tp_size)
    return full if dim is None else full.chunk(tp_size, dim=dim)[tp_rank]


class _AllReduce:
    """Forward hook of a row-parallel projection: sum the partial outputs of the TP group."""

    def __init__(self, group):
        self.group = group

    def __call__(self, module, inputs, output):
        import torch.distributed as dist

        dist.all_reduce(output, group=self.group)
        return output


def tensor_parallel(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """Split a Llama-architecture model across `d`'s TP group, in place; its weights may be real or
    on the meta device (sharded loading and random models split the shapes before allocating).

    After it, each rank's attention sees `heads / tp` heads (the modules reshape with -1 heads, so they
    run unchanged) and the row-parallel projections all-reduce their outputs. A row-parallel bias is
    added once, after the sum (it stays whole on rank 0 of the group and is zeroed on the others)."""
    if d.tp_size == 1:
        return model
    tp_check(model.config, d.tp_size)
    hook = _AllReduce(d.tp_group)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in COLWISE + ROWWISE or not isinstance(module, torch.nn.Linear):
            continue
        with torch.no_grad():
            module.weight = torch.nn.Parameter(shard_weight(module.weight.data, f"{name}.weight", d.tp_rank, d.tp_size).contiguous(), requires_grad=False)
            if module.bias is not None:
                bias = shard_weight(module.bias.data, f"{name}.bias", d.tp_rank, d.tp_size).contiguous()
                if leaf in ROWWISE and d.tp_rank:
                    bias = torch.zeros_like(bias)
                module.bias = torch.nn.Parameter(bias, requires_grad=False)
        module.in_features, module.out_features = module.weight.shape[1], module.weight.shape[0]
        if leaf in ROWWISE:
            module.register_forward_hook(hook)
    from .memory import agree_on_free_memory

    agree_on_free_memory(d)
    return model


# ----------------------------------------------------------------------------- reading slices of safetensors files

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies: its file, dtype, shape and absolute byte offset of its data."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int


class Reader:
    """The tensors of a folder's safetensors files (model.safetensors, or the shards that
    model.safetensors.index.json names), read by slices. `bytes_read` counts the data bytes read.
    Raises EvalError naming the file for a missing or malformed file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.entries: dict[str, Entry] = {}
        self.bytes_read = 0
        for file in self._files():
            self.entries.update(self._header(file))

    def _files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise EvalError(f"{index}: not a safetensors index ({exc})") from None
            return [self.folder / n for n in names]
        single = self.folder / "model.safetensors"
        if single.is_file():
            return [single]
        raise EvalError(f"{self.folder}: no model.safetensors nor model.safetensors.index.json to load sharded "
                        f"(a .bin checkpoint loads whole: convert it, or use --model-args tp_plan=auto)")

    @staticmethod
    def _header(file: Path) -> dict[str, Entry]:
        try:
            with open(file, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, struct.error, ValueError) as exc:
            raise EvalError(f"{file}: not a readable safetensors file ({exc})") from None
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in DTYPES:
                raise EvalError(f"{file}: tensor {name} has dtype {meta['dtype']}, which sharded loading does not read")
            out[name] = Entry(file, DTYPES[meta["dtype"]], tuple(meta["shape"]), 8 + n + meta["data_offsets"][0])
        return out

    def read(self, name: str, dim: int | None = None, rank: int = 0, parts: int = 1) -> torch.Tensor:
        """Tensor `name` on the CPU, or its `rank`-th of `parts` equal chunks along `dim` (0: rows, 1:
        columns of a 2-D tensor, or 0 of a 1-D one), read with positioned reads of only those bytes."""
        e = self.entries[name]
        size = torch.empty((), dtype=e.dtype).element_size()
        shape = list(e.shape)
        if dim is None or parts == 1:
            ranges, shape_out = [(e.offset, _numel(shape) * size)], shape
        else:
            if shape[dim] % parts:
                raise EvalError(f"{e.file}: tensor {name} of shape {tuple(shape)} does not split in {parts} along dim {dim}")
            step = shape[dim] // parts
            inner = _numel(shape[dim + 1:]) * size  # bytes of one index along dim
            outer = _numel(shape[:dim])
            row = shape[dim] * inner
            ranges = [(e.offset + o * row + rank * step * inner, step * inner) for o in range(outer)]
            shape_out = shape[:dim] + [step] + shape[dim + 1:]
        buffer = torch.empty(sum(n for _, n in ranges), dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        fd = os.open(e.file, os.O_RDONLY)
        try:
            at = 0
            for offset, n in ranges:
                got = os.preadv(fd, [view[at : at + n]], offset)
                if got != n:
                    raise EvalError(f"{e.file}: tensor {name} is cut short (read {got} of {n} bytes at {offset})")
                at += n
        finally:
            os.close(fd)
        self.bytes_read += len(buffer)
        return buffer.view(e.dtype).view(shape_out)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ----------------------------------------------------------------------------- sharded loading


def load_sharded(folder: str | Path, config, dtype: torch.dtype, device: str, d: Dist) -> tuple[torch.nn.Module, Reader]:
    """The *ForCausalLM of `config` with this rank's slices of the checkpoint in `folder`, on `device`
    in `dtype`, split over `d`'s TP group (any tp_size, 1 included: then a plain load straight to the
    device, one tensor at a time through host memory). Returns (model in eval mode, its Reader: how
    many bytes were read).

    Raises EvalError when the checkpoint lacks a parameter of the model or has one of another shape
    (an architecture whose names differ from its module's: load it with --model-args tp_plan=auto)."""
    from transformers import AutoModelForCausalLM

    reader = Reader(folder)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensor_parallel(model, d)
    tied = {id(p) for n, p in model.named_parameters() if n.endswith("lm_head.weight")} if _tied(config) else set()
    for name, param in list(model.named_parameters()):
        if id(param) in tied:
            continue
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        key = _checkpoint_name(name, reader)
        dim = split_of(name, d.tp_size)
        value = reader.read(key, dim, d.tp_rank, d.tp_size)
        if tuple(value.shape) != tuple(param.shape):
            raise EvalError(f"{folder}: tensor {key} has shape {tuple(reader.entries[key].shape)}, "
                            f"the model's {name} wants {tuple(param.shape)} (x{d.tp_size} split): not this architecture")
        value = value.to(device=device, dtype=dtype)
        if leaf == "bias" and dim is None and split_of(name.rsplit('.', 1)[0] + ".weight", d.tp_size) == 1 and d.tp_rank:
            value = torch.zeros_like(value)  # a row-parallel bias is added once, after the all-reduce
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    if tied:
        model.tie_weights()
    model.to(device)  # the buffers; the parameters are there already
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise EvalError(f"{folder}: parameters not loaded: {', '.join(left[:3])}")
    log.info("rank %d of %d read %.1f MB of %s", d.tp_rank, d.tp_size, reader.bytes_read / 1e6, folder)
    return model.eval(), reader


@contextlib.contextmanager
def parameters_on_meta():
    """Modules made inside get their parameters on the meta device (no memory, no initialisation)
    and their buffers for real (rotary frequencies are computed in __init__, not loaded). This is
    accelerate's init_empty_weights(include_buffers=False), which accelerate (an optional dependency
    of transformers) may not be installed to give."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            kind = type(module._parameters[name])
            module._parameters[name] = kind(module._parameters[name].to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _tied(config) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def _checkpoint_name(name: str, reader: Reader) -> str:
    """The checkpoint's name of model parameter `name` (the same, or without a `model.` prefix that
    some checkpoints lack). Raises EvalError naming the missing tensor."""
    for candidate in (name, name.removeprefix("model.")):
        if candidate in reader.entries:
            return candidate
    raise EvalError(f"{reader.folder}: the checkpoint has no tensor {name} (its names do not match the model's: "
                    f"load it with --model-args tp_plan=auto)")
