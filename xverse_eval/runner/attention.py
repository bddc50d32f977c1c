"""Packed shared-prefix attention: one pass holds many rows back to back, with no padding, and each row
also attends the K/V of the prefix segments above it (its k-shot block, its article) without a copy per row.

A pass is one sequence of T tokens: the segments of B rows packed end to end (`cu`, cumulative
lengths, int32 (B+1,)), each at its own positions (rotary sees the row's real positions). Per layer:

    (a) every row attends itself causally: one variable-length (varlen) attention over the packed
        sequence, block-diagonal by `cu`;
    (b) per depth of the prefix tree (`levels`), the query tokens of the rows below each prefix
        segment of that depth attend that segment's K/V without a mask (every token of a row sees the
        whole of its prefix): one varlen call, the pass's tokens grouped by segment (`cu_q`: a pass
        holds rows of one depth, grouped by parent, so the groups tile it) and the segments' K/V
        packed (`cu_k`);
    out = the softmax over all those keys, merged exactly from each part's output and log-sum-exp
          (the FlashInfer / vLLM cascade merge): e^lse_a out_a + e^lse_b out_b over e^lse_a + e^lse_b.

So a pass mixes the rows of many prefixes (the questions of 40 RACE articles) in three kernel calls per
layer, instead of one padded batch per prefix. On CUDA (bf16/fp16, head_dim <= 256) the varlen calls
are FlashAttention's (`aten._flash_attention_forward` with cumulative lengths; grouped-query heads
native), checked once against the reference before use; elsewhere (CPU, float32) the reference runs
each sequence through the fused CPU kernel. The function is registered with transformers'
AttentionInterface under NAME and receives its state through the `shared_prefix` keyword the model's
forward passes to every attention call (Llama, Qwen2/3, Mistral, Gemma and the others that forward
**kwargs); the scorer selects NAME only for its own passes (`use_packed`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

NAME = "xverse_packed_prefix"


class Unsupported(Exception):
    """The model asked for something this attention cannot do (a soft cap, a window shorter than the rows)."""


@dataclass
class Level:
    """The prefix segments of one depth of a packed pass, and the query tokens below each.

    Every token of the pass lies below exactly one segment of each depth (a pass holds nodes of one
    depth), in order: `cu_q`/`max_q` are the cumulative/maximum token counts below each segment;
    `kv`: per segment, its K/V per layer (layer -> (key, value), each (n, kv_heads, head_dim));
    `cu_k`/`max_k`: the segments' cumulative/maximum lengths."""

    cu_q: torch.Tensor
    max_q: int
    kv: list[dict]
    cu_k: torch.Tensor
    max_k: int

    def keys(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This depth's segments' K and V at `layer`, packed: (sum n, kv_heads, head_dim) each."""
        if len(self.kv) == 1:
            return self.kv[0][layer]
        return torch.cat([kv[layer][0] for kv in self.kv]), torch.cat([kv[layer][1] for kv in self.kv])


@dataclass
class Packed:
    """The state one packed pass hands every attention layer.

    `cu`/`max_len`: the rows' cumulative/maximum lengths in the pass. `levels`: the prefix segments
    above the rows, one Level per depth. With `record`, each layer stores this pass's own (key,
    value), (T, kv_heads, head_dim) after rotary, in `recorded` (the scorer keeps the slices of the
    segments whose children run next). `calls` counts the layers that ran through this function: a
    model that does not pass the keyword down shows fewer than its layers."""

    cu: torch.Tensor
    max_len: int
    levels: list[Level] = field(default_factory=list)
    record: bool = False
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    calls: int = 0
    longest_view: int = 0  # prefix + row tokens the longest row sees (for a sliding-window check)
    _moved: dict = field(default_factory=dict)

    def lengths_on(self, device: torch.device) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """`cu` and every level's (cu_q, cu_k) on `device`: a model split over GPUs (device_map) runs
        each layer on its own device, and the kernels want their lengths there; copied once each."""
        key = str(device)
        if key not in self._moved:
            self._moved[key] = (self.cu.to(device), [(l.cu_q.to(device), l.cu_k.to(device)) for l in self.levels])
        return self._moved[key]


# ----------------------------------------------------------------------------- varlen kernels


def reference_varlen(q, k, v, cu_q, cu_k, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen attention, one sequence at a time: q (Tq, H, d), k/v (Tk, kv_heads, d), cumulative
    lengths cu_q/cu_k (N+1,). Returns out (Tq, H, d) in q's dtype and lse (Tq, H) float32. Causal
    masks are aligned at the sequences' ends (equal lengths: the usual lower triangle)."""
    H, groups = q.shape[1], q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], H, dtype=torch.float32, device=q.device)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for n in range(len(bq) - 1):
        a, b, c, e = bq[n], bq[n + 1], bk[n], bk[n + 1]
        if b == a:
            continue
        qi = q[a:b].transpose(0, 1)[None]
        ki, vi = k[c:e].transpose(0, 1), v[c:e].transpose(0, 1)
        if groups > 1:
            ki, vi = ki.repeat_interleave(groups, dim=0), vi.repeat_interleave(groups, dim=0)
        o, l = attend(qi, ki[None], vi[None], causal, scale)
        out[a:b] = o[0].transpose(0, 1)
        lse[a:b] = l[0].transpose(0, 1)
    return out, lse


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, H, L, d) and its log-sum-exp (B, H, L), float32; k, v (B, H, S, d).

    The fused flash kernel where it returns the log-sum-exp (CPU; CUDA half precision), else the
    plain formula. A causal mask is aligned at the end (query i sees keys up to S - L + i)."""
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and (not causal or q.shape[-2] == k.shape[-2]):
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return out[0], out[1]
    if q.device.type == "cpu" and (not causal or q.shape[-2] == k.shape[-2]):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        L, S = q.shape[-2], k.shape[-2]
        scores.masked_fill_(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(S - L + 1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(q.dtype), lse


def _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, expand):
    if expand and k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out, lse = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale)[:2]
    # the log-sum-exp of the varlen path is (H, Tq); accept (Tq, H) too
    if lse.dim() == 2 and lse.shape[0] == q.shape[1] and lse.shape[1] == q.shape[0]:
        lse = lse.transpose(0, 1)
    return out, lse.float()


_FLASH: dict[tuple, str] = {}  # (device, dtype, head_dim, grouped) -> "native" | "expand" | "reference"


def _flash_mode(q: torch.Tensor, k: torch.Tensor) -> str:
    """How this device runs varlen attention for these shapes, decided once by comparing the flash
    kernel with the reference on a small random problem (a kernel or layout this torch does not have,
    or gets wrong, falls back loudly instead of scoring wrong numbers)."""
    grouped = k.shape[1] != q.shape[1]
    key = (str(q.device), q.dtype, q.shape[-1], grouped)
    if key in _FLASH:
        return _FLASH[key]
    mode = "reference"
    gen = torch.Generator(device=q.device).manual_seed(0)
    H, kvh, d = 4, (2 if grouped else 4), q.shape[-1]
    lengths = [5, 17, 1]
    cu = torch.tensor([0, 5, 22, 23], dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0, 9, 9 + 30, 9 + 30 + 4], dtype=torch.int32, device=q.device)
    sample = lambda n, h: torch.randn(n, h, d, generator=gen, device=q.device, dtype=torch.float32).to(q.dtype)
    qs, ks, vs = sample(sum(lengths), H), sample(43, kvh), sample(43, kvh)
    for candidate in ("native", "expand"):
        try:
            ok = True
            for causal, kk, vv, ck, max_k in ((True, ks[:23], vs[:23], cu, 17), (False, ks, vs, cu_k, 30)):
                out, lse = _flash_varlen(qs, kk, vv, cu, ck, 17, max_k, causal, d ** -0.5, candidate == "expand")
                ref_out, ref_lse = reference_varlen(qs.float(), kk.float(), vv.float(), cu, ck, causal, d ** -0.5)
                ok = ok and lse.shape == ref_lse.shape and torch.allclose(out.float(), ref_out, atol=3e-2, rtol=0) \
                    and torch.allclose(lse, ref_lse, atol=3e-2, rtol=0)
            if ok:
                mode = candidate
                break
        except (RuntimeError, TypeError) as exc:
            log.info("varlen flash attention (%s) unavailable: %s", candidate, str(exc).splitlines()[0])
    if mode == "reference":
        log.warning("varlen flash attention disagrees with the reference or is missing on %s %s; using the per-sequence reference", q.device, q.dtype)
    _FLASH[key] = mode
    return mode


def kernels() -> dict[str, str]:
    """The varlen kernel chosen so far per (device, dtype, head_dim, grouped-query) key: "native"
    (FlashAttention, grouped heads as they are), "expand" (K/V repeated to the query heads) or
    "reference" (one sequence at a time). For benchmark reports."""
    return {" ".join(map(str, key)): mode for key, mode in _FLASH.items()}


def varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen attention: q (Tq, H, d), k/v (Tk, kv_heads, d), int32 cumulative lengths cu_q/cu_k
    (N+1,) on q's device, longest sequences max_q/max_k. Returns out (Tq, H, d) in q's dtype and its
    log-sum-exp (Tq, H) float32. FlashAttention on CUDA half precision; the reference elsewhere."""
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        mode = _flash_mode(q, k)
        if mode != "reference":
            return _flash_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu_q, cu_k, max_q, max_k, causal, scale, mode == "expand")
    return reference_varlen(q, k, v, cu_q, cu_k, causal, scale)


def merge_into(out: torch.Tensor, lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor) -> None:
    """out (T, H, d), lse (T, H), float32, in place <- the softmax over both key sets, from each
    one's output and log-sum-exp."""
    total = torch.logaddexp(lse, part_lse)
    out.mul_(torch.exp(lse - total)[..., None]).add_(part.float() * torch.exp(part_lse - total)[..., None])
    lse.copy_(total)


# ----------------------------------------------------------------------------- the attention function


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function for a packed pass: query (1, H, T, d), key/value
    (1, kv_heads, T, d) of this pass's tokens; returns ((1, T, H, d), None) as every attention
    interface does. Causal within each row (`cu`); every token also sees the whole of each prefix
    segment above its row (`levels`). Raises Unsupported for soft-capping, bidirectional attention or
    a sliding window shorter than what a row sees."""
    state: Packed = kwargs["shared_prefix"]
    if kwargs.get("softcap") is not None or getattr(module, "attn_logit_softcapping", None) is not None:
        raise Unsupported("attention logit soft-capping")
    if not getattr(module, "is_causal", True):
        raise Unsupported("bidirectional attention")
    window = kwargs.get("sliding_window")
    if window is not None and state.longest_view > window:
        raise Unsupported(f"a sliding window of {window} tokens shorter than the rows")
    layer = module.layer_idx
    state.calls += 1
    d = query.shape[-1]
    scale = scaling if scaling is not None else d ** -0.5
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)  # (T, heads, d)
    if state.record:
        state.recorded[layer] = (k, v)
    cu, level_lengths = state.lengths_on(q.device)
    out, lse = varlen(q, k, v, cu, cu, state.max_len, state.max_len, True, scale)
    if state.levels:
        out = out.float()
        for level, (cu_q, cu_k) in zip(state.levels, level_lengths):
            k_pre, v_pre = level.keys(layer)
            part, part_lse = varlen(q, k_pre, v_pre, cu_q, cu_k, level.max_q, level.max_k, False, scale)
            merge_into(out, lse, part, part_lse)
        out = out.to(query.dtype)
    return out[None], None


def register() -> None:
    """Make NAME known to transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention)


@contextlib.contextmanager
def use_packed(model):
    """Route `model`'s attention through packed_attention for the duration of the block. No mask
    function is registered under NAME, so transformers builds no mask (none is needed)."""
    register()
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = saved
