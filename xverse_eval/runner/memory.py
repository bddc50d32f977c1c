"""Memory planning before a model is loaded: will it fit on each GPU, and if not, what would?

    need per GPU = weights / tp  +  KV cache of the smallest planned batches / tp  +  activations  +  reserve

against the free memory of this rank's GPU (torch.cuda.mem_get_info, after the CUDA context exists).
The smallest planned batches are what the runner cannot go below -- one scoring batch of
MIN_SCORING_TOKENS tokens and one generation row of GEN_TOKENS tokens -- because the runner sizes its
batches from the memory left after loading and halves a batch on out-of-memory; bigger batches only
make it faster. When the minimum does not fit, `check` refuses with one line naming the --tp-size
(and so the number of GPUs per replica) at which it would, instead of an out-of-memory later.

Sizes in bytes; GiB = 2**30 bytes in messages. Parameter counts follow the Llama layout (XVERSE is
Llama): per layer q,o (H x H), k,v (H x kv_heads x head_dim), gate,up,down (H x I), two norms; plus the
embedding, the final norm and the LM head unless tied. Checked against the count of a real module in
tests/test_parallel.py and against the table in research/performance.md (XVERSE-65B MHA 66.4B, GQA-8 57.0B).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import EvalError

log = logging.getLogger(__name__)

GIB = 2**30
MIN_SCORING_TOKENS = 4096  # the scorer's smallest token budget
GEN_TOKENS = 2048 + 512  # one generation row: a long few-shot prompt plus 512 new tokens
RESERVE = int(1.5 * GIB)  # allocator fragmentation, kernel workspaces, NCCL buffers
TP_CHOICES = (1, 2, 4, 8)


def param_count(config) -> int:
    """Parameters of a Llama-architecture config (biases ignored: Llama and XVERSE have none)."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    per_layer = 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter + 2 * h
    embeddings = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return layers * per_layer + embeddings + h


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv * head_dim * dtype_bytes


@dataclass
class Estimate:
    """Bytes one GPU needs at `tp`: weights, KV and activations of the smallest batches, reserve."""

    tp: int
    weights: int
    kv: int
    activations: int
    reserve: int = RESERVE

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.activations + self.reserve

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f} + KV {self.kv / GIB:.1f} "
                f"+ activations {self.activations / GIB:.1f} + reserve {self.reserve / GIB:.1f})")


def estimate(config, dtype: torch.dtype, tp: int = 1) -> Estimate:
    """What one rank of a `tp`-way tensor-parallel replica needs for `config` in `dtype`.

    Weights shard by tp except embeddings, norms and LM head (kept whole on every rank); KV shards by
    heads; activations per token: the residual stream and attention/MLP inputs (4 H), this rank's
    q/k/v and MLP intermediates (3 H / tp + 3 I / tp), in `dtype`, plus float32 logits of one scored
    position per row (vocab x 4 B for up to 512 rows)."""
    b = torch.empty((), dtype=dtype).element_size()
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    whole = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2) + h
    sharded = param_count(config) - whole
    weights = (sharded // tp + whole) * b
    kv = kv_bytes_per_token(config, b) * GEN_TOKENS // tp
    per_token = b * (4 * h + (3 * h + 3 * inter) // tp)
    activations = per_token * MIN_SCORING_TOKENS + 512 * vocab * 4
    return Estimate(tp, weights, kv, activations)


def free_bytes(device: str) -> int | None:
    """Free memory of a CUDA device in bytes; None on CPU (not planned: the OS swaps or kills)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free


def valid_tp(config, tp: int) -> bool:
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return heads % tp == 0 and kv % tp == 0 and config.intermediate_size % tp == 0


def check(config, dtype: torch.dtype, device: str, tp: int = 1, name: str = "model", world_size: int = 1, free: int | None = None) -> Estimate:
    """Refuse (EvalError, one line) if the model does not fit on `device` at `tp`; return the estimate.

    `free` overrides the measured free bytes (for tests and for planning another GPU)."""
    need = estimate(config, dtype, tp)
    free = free_bytes(device) if free is None else free
    if free is None:
        return need
    log.info("memory plan for %s on %s at tp %d: %s of %.1f GiB free", name, device, tp, need.describe(), free / GIB)
    if need.total <= free:
        return need
    fits = [t for t in TP_CHOICES if t > tp and valid_tp(config, t) and estimate(config, dtype, t).total <= free]
    params = param_count(config) / 1e9
    head = (f"{name} ({params:.1f}B parameters, {str(dtype).removeprefix('torch.')}) needs {need.describe()} per GPU "
            f"at --tp-size {tp}, but {device} has {free / GIB:.1f} GiB free")
    if fits:
        t = fits[0]
        replicas = f"; {world_size} GPUs make {world_size // t} replicas" if world_size >= t and world_size % t == 0 else ""
        raise EvalError(f"{head}: use --tp-size {t} (torchrun --nproc-per-node {t} or a multiple of it{replicas})")
    raise EvalError(f"{head}, and no --tp-size up to {TP_CHOICES[-1]} fits on GPUs this size: use GPUs with more memory or a smaller --dtype")
