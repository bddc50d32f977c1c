"""Shared-prefix (cascade) attention: many suffixes attend one prefix's K/V without a per-row copy.

For a batch of B suffixes that all continue the same prefix of n tokens, softmax attention over
"prefix + own suffix" splits into two independent softmaxes whose results merge exactly by their
log-sum-exp (the FlashInfer / vLLM cascade trick):

    (a) all B x L suffix queries, flattened into one sequence, attend the prefix K/V (1, kv_heads, n, d)
        without a mask (every suffix token sees the whole prefix);
    (b) each suffix attends itself causally (right-padded batch, fused causal kernel);
    out = (e^lse_a * out_a + e^lse_b * out_b) / (e^lse_a + e^lse_b).

The prefix K/V is kept once per layer (batch 1), so memory and work for the prefix are paid once.
The function is registered with transformers' AttentionInterface under NAME and receives its state
through the `shared_prefix` keyword that the model's forward passes down to every attention call
(Llama, Qwen2, Mistral, Gemma3 and the other models that forward **kwargs). The scorer switches a
model to NAME only for its own passes (`use_shared_prefix`); generation and the plain path never see it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

NAME = "xverse_shared_prefix"


class Unsupported(Exception):
    """The model asked for something this attention cannot do (a soft cap, a window shorter than the rows)."""


@dataclass
class SharedPrefix:
    """The state one forward pass hands every attention layer.

    `spans` = [(first, end, kv)]: batch members first..end-1 all continue a prefix segment whose K/V per
    layer is kv[layer] = (key, value), each (1, kv_heads, n, head_dim) after rotary. A member below
    several segments (a k-shot block, then an article) appears in several spans; the segments' order
    does not matter, as softmax pieces merge by log-sum-exp. With `record`, each layer stores its own
    (key, value) for this pass's tokens, (B, kv_heads, L, head_dim), in `recorded`. `calls` counts the
    layers that ran through this function: a model that does not pass the keyword down shows 0.
    """

    spans: list = field(default_factory=list)
    record: bool = False
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    calls: int = 0


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, H, L, d) and its log-sum-exp (B, H, L), float32; k, v have H heads too.

    Uses the fused flash kernels where they return the log-sum-exp (CUDA half precision, CPU), else
    the plain formula (CUDA float32)."""
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return out[0], out[1]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        L, S = q.shape[-2], k.shape[-2]
        scores.masked_fill_(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(S - L + 1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(q.dtype), lse


def merge_into(out: torch.Tensor, lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor) -> None:
    """out, lse (float32) <- the softmax over both key sets, from each one's output and log-sum-exp."""
    total = torch.logaddexp(lse, part_lse)
    out.mul_(torch.exp(lse - total)[..., None]).add_(part.float() * torch.exp(part_lse - total)[..., None])
    lse.copy_(total)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query (B, H, L, d), key/value (B, kv_heads, L, d) of this pass's
    tokens; returns ((B, L, H, d), None) as every attention interface does. Causal within the pass;
    every query also sees the whole of each prefix segment its member lies under (`shared_prefix`)."""
    state: SharedPrefix = kwargs["shared_prefix"]
    if kwargs.get("softcap") is not None or getattr(module, "attn_logit_softcapping", None) is not None:
        raise Unsupported("attention logit soft-capping")
    if not getattr(module, "is_causal", True):
        raise Unsupported("bidirectional attention")
    layer = module.layer_idx
    B, H, L, d = query.shape
    window = kwargs.get("sliding_window")
    if window is not None and sum(kv[layer][0].shape[2] for _, _, kv in state.spans) + L > window:
        raise Unsupported(f"a sliding window of {window} tokens shorter than the rows")
    state.calls += 1
    if state.record:
        state.recorded[layer] = (key, value)
    kv_heads = key.shape[1]
    groups = H // kv_heads
    scale = scaling if scaling is not None else d ** -0.5
    k_self = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v_self = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    out, lse = attend(query, k_self, v_self, True, scale)
    if not state.spans:
        return out.transpose(1, 2).contiguous(), None
    out, lse = out.float(), lse.float().clone()
    for first, end, kv in state.spans:
        k_pre, v_pre = kv[layer]
        b = end - first
        # the attention to a prefix has no mask, so the query order is free: fold the query heads of
        # one KV head and all b x L positions into one sequence per KV head (GQA without repeating K/V)
        q = query[first:end].reshape(b, kv_heads, groups, L, d).permute(1, 2, 0, 3, 4).reshape(1, kv_heads, groups * b * L, d)
        part, part_lse = attend(q, k_pre, v_pre, False, scale)
        part = part.reshape(kv_heads, groups, b, L, d).permute(2, 0, 1, 3, 4).reshape(b, H, L, d)
        part_lse = part_lse.reshape(kv_heads, groups, b, L).permute(2, 0, 1, 3).reshape(b, H, L)
        merge_into(out[first:end], lse[first:end], part, part_lse)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, shared_prefix_attention)


@contextlib.contextmanager
def use_shared_prefix(model):
    """Route `model`'s attention through shared_prefix_attention for the duration of the block.
    No mask function is registered under NAME, so transformers builds no mask (none is needed)."""
    register()
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = saved
