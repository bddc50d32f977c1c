"""Batch planning: how many tokens one forward pass may hold, from the device's free memory and the
model's widths, and the real token counts of the rows; never by probing at the maximum length.

The estimate is of the transient memory one token costs in one decoder layer (activations of the
attention and MLP blocks, in the model's dtype, plus the float32 accumulators of the cascade
attention) and of the K/V a pass records for the prefixes it computes (every layer, kept to the end of
the pass). The out-of-memory halving in scoring.py stays as the safety net under this estimate.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import EvalError

GiB = 1 << 30
CPU_PASS_BYTES = 256 << 20  # activations of one CPU pass: a few layers' worth stays in the caches
CPU_HEAD_BYTES = 96 << 20  # logits of one LM-head chunk on CPU (Gemma-3's 262k vocabulary: ~32 positions)
CUDA_HEAD_FRACTION = 0.05  # of free memory, for the logits of one LM-head chunk
CUDA_PASS_FRACTION = 0.6  # of free memory, for one pass's activations and recorded K/V
MAX_TOKENS = {"cpu": 4096, "cuda": 65536}  # beyond this a pass is no faster per token
MAX_ROWS = {"cpu": 256, "cuda": 2048}
MAX_PADDING = 0.25  # a pass is cut before its padded tokens exceed its real ones by more than this


class Plan:
    """Pass sizes for one model on one device. Widths are read from the model's config."""

    def __init__(self, model, device: str):
        from .shape import Shape

        shape = Shape.of(model.config)
        self.kind = "cuda" if str(device).startswith("cuda") else "cpu"
        self.hidden, self.head_dim, self.q_width, self.kv_width = shape.hidden, shape.head_dim, shape.q_width, shape.kv_width
        self.intermediate, self.layers, self.vocab = shape.ffn, shape.layers, shape.vocab
        try:
            self.dtype_bytes = next(model.parameters()).element_size()
        except StopIteration:
            self.dtype_bytes = 4

    # -- per-token costs

    def token_bytes(self, record: bool = True) -> int:
        """Bytes one token of a pass holds at the peak of a layer (+ its recorded K/V over all layers)."""
        b = self.dtype_bytes
        activations = b * (8 * self.hidden + 4 * self.intermediate + 4 * self.q_width) + 8 * self.q_width
        recorded = self.layers * 2 * self.kv_width * b if record else 0
        return activations + recorded

    def free_bytes(self) -> int:
        """Bytes a pass may use: the device's free memory plus what torch's allocator holds unused
        (CUDA), or a fixed CPU working set scaled so that token_budget gives CPU_PASS_BYTES."""
        if self.kind == "cuda":
            free, _ = torch.cuda.mem_get_info()
            # memory the caching allocator holds but does not use is free for our tensors too
            from .memory import group_min  # the same on every rank of a TP group: they cut the same batches

            return group_min(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
        return CPU_PASS_BYTES / CUDA_PASS_FRACTION

    def token_budget(self) -> int:
        """Tokens (rows x padded width) one pass may hold."""
        tokens = int(self.free_bytes() * CUDA_PASS_FRACTION) // self.token_bytes()
        return max(1, min(tokens, MAX_TOKENS[self.kind]))

    def head_chunk(self) -> int:
        """Positions whose logits (float32, plus the log-softmax and a temporary) may exist at once."""
        budget = CPU_HEAD_BYTES if self.kind == "cpu" else int(self.free_bytes() * CUDA_HEAD_FRACTION)
        return max(1, budget // (12 * self.vocab))

    # -- checks and batches

    def check_rows(self, rows: Sequence, requests: Sequence) -> None:
        """One clear line for a request whose single row cannot fit the device, before any work."""
        if self.kind != "cuda" or not rows:
            return
        longest = max(rows, key=lambda r: len(r.ids))
        need = len(longest.ids) * self.token_bytes() + 12 * self.vocab
        free = self.free_bytes()
        if need > free:
            key = requests[longest.reads[0][0]].key
            raise EvalError(f"request {key}: its {len(longest.ids)} tokens need about {need / GiB:.1f} GiB for one forward pass; "
                            f"the device has {free / GiB:.1f} GiB free (use a GPU with more memory, fewer layers per GPU or --dtype bfloat16)")

    def batches(self, members: Sequence, batch_size: str | int = "auto", packed: bool = False) -> list[list]:
        """Consecutive runs of `members` (objects with `.width`, the tokens they add) for one pass each:
        a fixed number of rows when `batch_size` is an int, else as many as the token budget holds.
        Right-padded passes (`packed=False`) count rows x widest row and are cut before padding
        exceeds MAX_PADDING of the real tokens: measured on an H200 (benchmarks/RESULTS.md), one pass
        over MMLU suffixes of 30-400 tokens computed 3.4 padded tokens per real one. Packed passes
        (attention.py: rows end to end) count the real tokens only. The order is kept: it groups rows
        by prefix (callers sort each group by width, longest first, so the cuts make buckets of
        similar widths)."""
        if isinstance(batch_size, int):
            return [list(members[k : k + batch_size]) for k in range(0, len(members), batch_size)]
        budget, rows_cap = self.token_budget(), MAX_ROWS[self.kind] * (4 if packed and self.kind == "cuda" else 1)
        batches, current, widest, real = [], [], 0, 0
        for member in members:
            wide = max(widest, member.width)
            padded = real + member.width if packed else (len(current) + 1) * wide
            wasteful = padded - (real + member.width) > MAX_PADDING * (real + member.width)
            if current and (padded > budget or len(current) >= rows_cap or wasteful):
                batches.append(current)
                current, wide, real = [], member.width, 0
            current.append(member)
            widest, real = wide, real + member.width
        if current:
            batches.append(current)
        return batches
