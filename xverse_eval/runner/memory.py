"""Memory planning before a model is loaded: will it fit on each GPU, and if not, what would?

    need per GPU = weights on it  +  KV cache of the smallest planned batches on it  +  activations  +  reserve

against the free memory of the GPU (torch.cuda.mem_get_info, after the CUDA context exists). Two ways
of spreading a model over K GPUs are planned, from config.json alone (runner/shape.py):

- tensor parallel, `--tp-size K` (K processes under torchrun): every GPU holds 1/K of each layer's
  projections and of the KV heads, plus the whole embedding, LM head and norms;
- a device map, `--device-map auto` (one process, K GPUs, layers in sequence): every GPU holds about
  1/K of the layers and their KV; the embedding sits on the first GPU, the LM head on the last, and
  the planned GPU is the fullest one (the last: its layers plus the head and the float32 logits).

The smallest planned batches are what the runner cannot go below -- one scoring batch of
MIN_SCORING_TOKENS tokens and one generation row of GEN_TOKENS tokens -- because the runner sizes its
batches from the memory left after loading and halves a batch on out-of-memory; bigger batches only
make it faster. When the minimum does not fit, `check` refuses with one line naming the flag (and so
the number of GPUs) at which it would, instead of an out-of-memory later; `plan` says, for every mode
and K, what is left per GPU for KV (the dry run prints it).

Sizes in bytes; GiB = 2**30 bytes in messages. Parameter counts: runner/shape.py (XVERSE-65B MHA 66.4B,
GQA-8 57.0B).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import EvalError
from .shape import Shape

log = logging.getLogger(__name__)

GIB = 2**30
MIN_SCORING_TOKENS = 4096  # the scorer's smallest token budget
GEN_TOKENS = 2048 + 512  # one generation row: a long few-shot prompt plus 512 new tokens
RESERVE = int(1.5 * GIB)  # allocator fragmentation, kernel workspaces, NCCL buffers
TP_CHOICES = (1, 2, 4, 8)
MODES = ("tp", "device_map")


def param_count(config) -> int:
    """Parameters of a decoder config (runner/shape.py)."""
    return Shape.of(config).params


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """K and V bytes of one token over all layers (runner/shape.py)."""
    return Shape.of(config).kv_bytes_per_token(dtype_bytes)


@dataclass(frozen=True)
class Estimate:
    """Bytes the fullest GPU needs when the model is spread over `k` GPUs by `mode` ("tp" or
    "device_map"): weights, KV and activations of the smallest batches, reserve."""

    tp: int  # K, the GPUs the model is spread over (the name kept from when TP was the only mode)
    weights: int
    kv: int
    activations: int
    reserve: int = RESERVE
    mode: str = "tp"

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.activations + self.reserve

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f} + KV {self.kv / GIB:.1f} "
                f"+ activations {self.activations / GIB:.1f} + reserve {self.reserve / GIB:.1f})")

    def flag(self) -> str:
        """The command-line spelling of this mode and K."""
        if self.mode == "device_map":
            return f"--device-map auto over {self.tp} GPUs (CUDA_VISIBLE_DEVICES with {self.tp} GPUs, one process)"
        return f"--tp-size {self.tp}"


def estimate(config, dtype: torch.dtype, tp: int = 1, mode: str = "tp") -> Estimate:
    """What the fullest GPU needs for `config` in `dtype`, spread over `tp` GPUs by `mode`.

    tp: projections and KV shard by tp, embeddings, norms and LM head stay whole on every rank;
    activations per token: the residual stream and attention/MLP inputs (4 H), this rank's q/k/v and
    MLP intermediates (3 H / tp + 3 I / tp). device_map: the last GPU holds ceil(layers / K) layers,
    their KV, the final norm and LM head (the embedding too when tied), and whole activations. Both add
    float32 logits of one scored position per row (vocab x 4 B for up to 512 rows)."""
    if mode not in MODES:
        raise ValueError(f"unknown memory planning mode {mode!r}")
    s = Shape.of(config)
    b = torch.empty((), dtype=dtype).element_size()
    head = 512 * s.vocab * 4
    if mode == "device_map":
        layers = -(-s.layers // tp)
        weights = (layers * s.layer_params + s.vocab * s.hidden + s.hidden) * b
        kv = layers * 2 * s.kv_width * b * GEN_TOKENS
        per_token = b * (4 * s.hidden + 3 * s.hidden + 3 * s.ffn)
        return Estimate(tp, weights, kv, per_token * MIN_SCORING_TOKENS + head, mode=mode)
    sharded = s.sharded_params()
    weights = (sharded // tp + s.params - sharded) * b
    kv = s.kv_bytes_per_token(b) * GEN_TOKENS // tp
    per_token = b * (4 * s.hidden + (3 * s.hidden + 3 * s.ffn) // tp)
    return Estimate(tp, weights, kv, per_token * MIN_SCORING_TOKENS + head, mode=mode)


def free_bytes(device: str) -> int | None:
    """Free memory of a CUDA device in bytes; None on CPU (not planned: the OS swaps or kills)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    where = torch.device(device)
    if where.index is None:  # "cuda" means the current device; torch's per-process queries need an index
        where = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(where)
    # a cap set by torch.cuda.set_per_process_memory_fraction binds this process before the device does
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(where)
    if fraction < 1.0:
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(where))
    return free


def valid_tp(config, tp: int) -> bool:
    """Whether `tp` splits the heads, KV heads and MLP width evenly (runner/shape.py)."""
    return Shape.of(config).tp_ok(tp)


def plan(config, dtype: torch.dtype, free: int, gpus: int = 8) -> list[tuple[Estimate, int]]:
    """Every (mode, K <= gpus) that fits GPUs with `free` bytes each, with the KV room it leaves on
    the fullest GPU (bytes beyond the minimum): what the dry run prints. Tensor parallel first."""
    out = []
    for mode in MODES:
        for k in TP_CHOICES:
            if k > gpus or (mode == "tp" and not valid_tp(config, k)) or (mode == "device_map" and k == 1):
                continue
            need = estimate(config, dtype, k, mode)
            if need.total <= free:
                out.append((need, free - need.total))
    return out


def check(config, dtype: torch.dtype, device: str, tp: int = 1, name: str = "model", world_size: int = 1, free: int | None = None,
          mode: str = "tp") -> Estimate:
    """Refuse (EvalError, one line) if the model does not fit on `device` spread over `tp` GPUs by
    `mode`; return the estimate. The refusal names the smallest --tp-size that fits (tensor parallel
    is faster than a device map: every GPU works on every token), else the device map that does.

    `free` overrides the measured free bytes (for tests and for planning another GPU)."""
    need = estimate(config, dtype, tp, mode)
    free = free_bytes(device) if free is None else free
    if free is None:
        return need
    log.info("memory plan for %s on %s, %s: %s of %.1f GiB free", name, device, need.flag(), need.describe(), free / GIB)
    if need.total <= free:
        return need
    params = param_count(config) / 1e9
    spread = f"at --tp-size {tp}" if mode == "tp" else f"with --device-map over {tp} GPUs"
    head = (f"{name} ({params:.1f}B parameters, {str(dtype).removeprefix('torch.')}) needs {need.describe()} per GPU "
            f"{spread}, but {device} has {free / GIB:.1f} GiB free")
    fits = [t for t in TP_CHOICES if t > (tp if mode == "tp" else 1) and valid_tp(config, t) and estimate(config, dtype, t).total <= free]
    if fits:
        t = fits[0]
        replicas = f"; {world_size} GPUs make {world_size // t} replicas" if world_size >= t and world_size % t == 0 else ""
        raise EvalError(f"{head}: use --tp-size {t} (torchrun --nproc-per-node {t} or a multiple of it{replicas}) "
                        f"or --device-map auto over {t} GPUs in one process")
    maps = [t for t in TP_CHOICES if t > 1 and estimate(config, dtype, t, "device_map").total <= free]
    if maps:
        raise EvalError(f"{head}: use --device-map auto over {maps[0]} GPUs (one process; its heads do not split for tensor parallel)")
    raise EvalError(f"{head}, and no --tp-size up to {TP_CHOICES[-1]} fits on GPUs this size: use GPUs with more memory or a smaller --dtype")


# ----------------------------------------------------------------------------- one answer per TP group

_GROUP: dict = {}  # this process's TP group, once its model is split (runner/tp.py): {"group": ..., "device": ...}


def agree_on_free_memory(d) -> None:
    """Under tensor parallel every rank of a group must cut the same batches (each forward pass holds
    collectives), but the runner sizes batches from the free memory of its own GPU, which differs by a
    few MB between ranks (NCCL buffers, the CUDA context). From here on `group_min` answers, on every
    rank of `d`'s TP group (a dist.Dist), the group's minimum. Nothing global is patched: the batch
    planners call `group_min` on what they measured, at the same points on every rank."""
    if d.tp_size > 1 and d.tp_group is not None and str(d.device).startswith("cuda"):
        _GROUP.update(group=d.tp_group, device=d.device)


def group_min(value: int) -> int:
    """`value` (bytes free, measured on this rank) made the same on every rank of this process's TP
    group: their minimum, by one tiny all-reduce. Without tensor parallel, `value` itself."""
    if not _GROUP:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([int(value)], dtype=torch.int64, device=_GROUP["device"])
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=_GROUP["group"])
    return int(tensor.item())
