"""Greedy generation with a KV cache; a row leaves the batch as soon as it is finished."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..errors import EvalError
from ..progress import progress
from ..types import Generation, GenerateRequest
from . import OnDone

log = logging.getLogger(__name__)


class Engine:
    """Greedy generation for one loaded model (`hf`: the HFModel that owns tokenizer, weights and settings)."""

    def __init__(self, hf):
        self.hf = hf
        self.tokens = hf.tokens
        self.tokenizer = hf.tokenizer
        self.model = hf.model
        self.device = hf.device
        self.batch_size = hf.batch_size
        self.max_length = hf.max_length
        self.pad_id = hf.pad_id
        self.eos_ids = hf.eos_ids
        self._cache_arg = hf.cache_arg

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        encoded = []
        for i, req in enumerate(requests):
            ids = self.tokens.encode(req.prompt)
            if len(ids) + req.max_new_tokens > self.max_length:
                raise EvalError(f"request {req.key}: prompt of {len(ids)} tokens + {req.max_new_tokens} new tokens exceed the model's context of {self.max_length}")
            encoded.append((i, ids))
        encoded.sort(key=lambda item: -len(item[1]))
        size = self.batch_size if isinstance(self.batch_size, int) else (64 if self.device.startswith("cuda") else 16)
        results: list[Generation | None] = [None] * len(requests)
        batches = [encoded[k : k + size] for k in range(0, len(encoded), size)]
        bar = progress(len(requests), "generate", "req", enabled=self.hf.report_progress)
        for batch in batches:
            done = self._generate_resilient(batch, requests)
            for i, gen in done:
                results[i] = gen
            if on_done:
                on_done([(requests[i], gen) for i, gen in done])
            bar.update(len(done))
        bar.close()
        return results  # type: ignore[return-value]

    def _generate_resilient(self, batch, requests):
        try:
            return self._generate(batch, requests)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise EvalError("out of memory generating for a single prompt; use a smaller model or a GPU with more memory")
            torch.cuda.empty_cache()
            half = len(batch) // 2
            return self._generate_resilient(batch[:half], requests) + self._generate_resilient(batch[half:], requests)

    @torch.inference_mode()
    def _generate(self, batch, requests) -> list[tuple[int, Generation]]:
        """Greedy decoding with a KV cache. A row leaves the batch as soon as it is finished (EOS, a
        stop string, or its token budget), so later steps cost only the rows still running."""
        width = max(len(ids) for _, ids in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (_, row) in enumerate(batch):
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        position = position[:, -1:]
        rows = [Decoding(i, requests[i]) for i, _ in batch]
        active = rows
        while True:
            tokens = out.logits[:, -1].argmax(-1).tolist()
            for row, token in zip(active, tokens):
                row.step(token, self.eos_ids, self.tokenizer)
            keep = [k for k, row in enumerate(active) if row.reason is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, position = mask[index], position[index]
                tokens = [tokens[k] for k in keep]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            position = position + 1
            out = self.model(input_ids=torch.tensor(tokens, device=self.device)[:, None], attention_mask=mask,
                             position_ids=position, use_cache=True, **{self._cache_arg: cache})
        return [(row.index, row.result(self.tokenizer)) for row in rows]


class Decoding:
    """One row's greedy decoding state: its new tokens and why it stopped."""

    def __init__(self, index: int, request: GenerateRequest):
        self.index, self.request = index, request
        self.tokens: list[int] = []
        self.reason: str | None = None
        # a token holds at least one byte: decoding this many last tokens sees any stop string
        self.tail = max((len(x.encode()) for x in request.stop), default=0) + 4

    def step(self, token: int, eos_ids: set[int], tokenizer) -> None:
        if token in eos_ids:
            self.reason = "eos"
            return
        self.tokens.append(token)
        if self.request.stop and any(x in tokenizer.decode(self.tokens[-self.tail:], skip_special_tokens=True) for x in self.request.stop):
            self.reason = "stop"
        elif len(self.tokens) >= self.request.max_new_tokens:
            self.reason = "length"

    def result(self, tokenizer) -> Generation:
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((text.find(x) for x in self.request.stop if x in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        return Generation(text, self.reason or "length", len(self.tokens))


