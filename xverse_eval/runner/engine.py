"""Greedy generation: a continuous-batching engine over a fixed pool of KV slots.

Two paths, one contract (`Engine.generate`):

- **The slot engine** (`SlotRun`), for the Llama family (`SLOT_MODEL_TYPES`: Llama, Mistral, Qwen2/3,
  XVERSE loaded as Llama; every layer full attention). A static cache holds, per layer, K and V of shape
  [slots, kv_heads, max_len, head_dim]. Requests wait in a queue; free slots are refilled as rows finish
  (their prefill done as one batch) while the other slots keep decoding. The prompts are grouped by the
  prefix they share on token ids (`prefix_groups`: the scorer's prefix tree, so GSM8K's 4-shot block is
  found as the scorer finds a k-shot block), and each group's prefix is prefilled once; admission copies its KV into the slot (a device-to-device copy). The model's own
  modules run (so tensor-parallel shards work: only local heads are ever seen); only the attention
  function is ours (`slot_attention`, registered with transformers' `AttentionInterface` and selected
  for the engine's forwards only), because rows sit at different positions. On CUDA the decode step is
  captured in a CUDA graph per batch width (widths are powers of two; the active rows are packed into
  the lowest slots and padded up to the next width); on CPU the same steps run eagerly.
- **The plain loop** (`Engine._generate`), for every other architecture: static batches, rows dropped
  from the batch when finished, the model's own cache and attention.

Progress counts generated tokens (`TokenMeter`): the expected total is every request's
max_new_tokens, lowered as rows finish early, so the ETA is of the work left rather than of requests
(16 requests of 512 tokens are not done when 13 short ones are).

Both stop at EOS (not part of the text), at a stop string (checked only on newly decoded text; the
text is cut before the first stop string) or after `max_new_tokens`. The stored text is exactly what the
model produced after the prompt: new tokens are decoded together with the prompt's last tokens and the
prompt's own text is cut off, because SentencePiece-style decoders strip the first space of a decoded
string (decoding the new tokens alone turns a 4-space indent into 3).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import torch

from ..errors import EvalError
from ..progress import progress
from ..types import Generation, GenerateRequest
from . import OnDone, Work
from .load import spans_devices
from .memory import group_min
from .state import Loaded, Settings
from .tokens import Tokens

log = logging.getLogger(__name__)

# Architectures whose attention modules call `cache.update(key, value, layer_idx, ...)` then the
# configured attention function on [batch, heads, q, head_dim] tensors with no per-layer extras the slot
# attention would ignore (sliding windows, soft-capping, sinks). Others use the plain loop.
SLOT_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
ATTENTION_NAME = "xverse_slots"
ANCHOR_TOKENS = 6  # prompt tokens decoded with the new ones so the decoder's leading-space strip hits them


# ----------------------------------------------------------------------------- exact text of new tokens


class Decoding:
    """One request's greedy decoding state: its new tokens, their exact text, why it stopped.

    `anchor` holds the prompt's last few non-special tokens. Text is always decoded as anchor + new
    tokens and the anchor's own text is cut off: exact for decoders that strip a leading space
    (SentencePiece / Llama: Replace("▁", " ") + ByteFallback + Fuse + Strip(" ", 1, 0)) and for
    byte-level BPE alike. Stop strings are searched incrementally: each step decodes only a short window
    (prefix_offset .. end) and a character still incomplete ("\\ufffd" at the end) waits for the next token.
    """

    def __init__(self, index: int, request: GenerateRequest, prompt_ids: Sequence[int], special_ids: set[int]):
        self.index, self.request = index, request
        anchor = [t for t in prompt_ids if t not in special_ids][-ANCHOR_TOKENS:]
        self.anchor = anchor
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.text = ""  # exact text of the tokens decoded so far (a held-back partial character excepted)
        self._ids = list(anchor)  # anchor + new tokens
        self._prefix_offset, self._read_offset = 0, len(anchor)
        self._longest_stop = max((len(s) for s in request.stop), default=0)
        self.steps = 0  # tokens taken, EOS included: what TokenMeter counted for this request

    def step(self, token: int, eos_ids: set[int] | frozenset, tokenizer) -> bool:
        """Take one generated token; return True when the request is finished."""
        self.steps += 1
        if token in eos_ids:
            self.reason = "eos"
            return True
        self.tokens.append(token)
        self._ids.append(token)
        if self.request.stop:
            before = len(self.text)
            self._advance(tokenizer)
            start = max(0, before - self._longest_stop + 1)
            if len(self.text) > before and any(s in self.text[start:] for s in self.request.stop):
                self.reason = "stop"
                return True
        if len(self.tokens) >= self.request.max_new_tokens:
            self.reason = "length"
            return True
        return False

    def _advance(self, tokenizer) -> None:
        ids = self._ids
        prefix = tokenizer.decode(ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        whole = tokenizer.decode(ids[self._prefix_offset:], skip_special_tokens=True)
        if len(whole) > len(prefix) and whole.startswith(prefix) and not whole.endswith("\ufffd"):
            self.text += whole[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(ids)

    def result(self, tokenizer) -> Generation:
        """The Generation: the exact new text cut before the first stop string, why it ended, its tokens."""
        text = new_text(tokenizer, self.anchor, self.tokens)
        cut = min((text.find(s) for s in self.request.stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        return Generation(text, self.reason or "length", len(self.tokens))


def new_text(tokenizer, anchor: Sequence[int], tokens: Sequence[int]) -> str:
    """The text `tokens` add after a prompt ending in `anchor`: decode(anchor + tokens) minus decode(anchor).

    Falls back to decoding the tokens alone only if the anchor's text is not a prefix of the whole
    (never seen with byte-level BPE or SentencePiece decoders; logged)."""
    head = tokenizer.decode(list(anchor), skip_special_tokens=True)
    whole = tokenizer.decode(list(anchor) + list(tokens), skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head):]
    log.warning("decoded prompt tail is not a prefix of prompt tail + generation; decoding the generation alone")
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


# ----------------------------------------------------------------------------- the engine


class TokenMeter:
    """Generation progress in tokens: `total` starts as the sum of the requests' max_new_tokens and
    drops by what a request leaves unused when it finishes, so rate and ETA are of tokens still to
    generate (progress.py prints them). The loops call `stepped(n)` after each step that gave n rows
    a token and `finished(decoding)` when a row ends."""

    def __init__(self, requests: Sequence[GenerateRequest], enabled: bool = True):
        self.total = sum(r.max_new_tokens for r in requests)
        self.bar = progress(self.total, "generate", "tok", enabled=enabled)

    def stepped(self, n: int) -> None:
        """n rows took one token each."""
        self.bar.update(n)

    def finished(self, decoding: "Decoding") -> None:
        """A row ended: its unused max_new_tokens leave the total."""
        unused = decoding.request.max_new_tokens - decoding.steps
        if unused > 0:
            self.total -= unused
            if hasattr(self.bar, "total"):
                self.bar.total = self.total  # tqdm and progress.LineProgress both read it on their next line
                if hasattr(self.bar, "refresh"):
                    self.bar.refresh()

    def close(self) -> None:
        """The closing progress line."""
        self.bar.close()


def generation_work(requests: Sequence[GenerateRequest], tokens: "Tokens", prefix_cache: bool = True) -> Work:
    """The Work of generating for `requests` from the tokenizer alone: prompt tokens, tokens computed
    after the shared prompt prefix of each group (as the slot engine groups them), and the upper
    bound of generated tokens (every max_new_tokens)."""
    if not requests:
        return Work()
    ids = tokens.encode_many([r.prompt for r in requests])
    prompts = [ids[r.prompt] for r in requests]
    computed = sum(len(p) for p in prompts)
    for prefix, group in prefix_groups(prompts, prefix_cache):
        computed -= (len(group) - 1) * len(prefix)
    return Work(len(requests), sum(len(p) for p in prompts), computed, sum(r.max_new_tokens for r in requests))


def prefix_groups(prompts: Sequence[Sequence[int]], shared: bool = True) -> list[tuple[list[int], list[int]]]:
    """[(prefix ids, prompt indices)]: the prompts grouped as the slot engine runs them, each group's
    prefix prefilled once. The groups are the top nodes of the scorer's prefix tree
    (scoring.build_tree) over the prompts less their last token, so the one rule of what is shared
    (on token ids, at least MIN_PREFIX tokens that pay for themselves) serves both; every prompt keeps
    at least its last token to run (it gives the first new token's logits). Prompts sharing nothing
    worth it form one group with no prefix; `shared=False` (--no-prefix-cache) puts all there."""
    from .scoring import Row, build_tree

    if not shared:
        return [([], list(range(len(prompts))))] if prompts else []
    nodes = build_tree([Row(list(ids[:-1]), [(i, [], [], 0)]) for i, ids in enumerate(prompts)], shared=True)
    groups, loose = [], []
    for node in nodes:
        members = [i for below in _subtree(node) if below.row is not None for i, *_ in below.row.reads]
        if node.children:
            groups.append((common_prefix([list(prompts[i]) for i in members]), sorted(members)))
        else:
            loose.extend(members)
    if loose:
        groups.append(([], sorted(loose)))
    return groups


def _subtree(node):
    stack = [node]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        yield node


class Engine:
    """Greedy generation for one loaded model (`loaded`: tokenizer, weights, device; runner/hf.py).

    Per-call state (settings, EOS ids, the token meter) is set by `generate`; the slot pool and the
    captured CUDA graphs are kept between calls of one shape (`keep_pool`). `counters`: the Work of
    every call (prompt tokens, computed after the shared prefix, generated)."""

    def __init__(self, loaded: "Loaded"):
        self.loaded = loaded
        self.tokens = loaded.tokens
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.decoder = loaded.decoder
        self.device = loaded.device
        self.pad_id = loaded.pad_id
        self.cache_arg = loaded.cache_arg
        self.eos_ids: frozenset = loaded.eos_ids
        self.special_ids = set(getattr(loaded.tokenizer, "all_special_ids", []) or [])
        # XVERSE_EVAL_ENGINE=plain forces the static-batch loop; =eager keeps the slot engine off CUDA graphs
        self.mode = os.environ.get("XVERSE_EVAL_ENGINE", "auto")
        self.slots: int | None = None  # slot count (None: planned per call); tests set it
        self.use_slots = self.mode != "plain" and slot_engine_supports(loaded.model)
        self.graph_pool = None  # one CUDA graph memory pool shared by the decode graphs of every width
        self.pool: dict | None = None  # the slot engine's device state, reused by the next group (SlotRun._take_pool)
        self.keep_pool = False  # keep it (and its CUDA graphs) after a call too; off: scoring gets the memory back
        # counters of the slot engine (benchmarks/engine_speed.py reads them): decode steps, rows decoded,
        # seconds in decode steps and in prefills (each ends in a host sync, so the times are real)
        self.stats = {"decode_steps": 0, "decode_rows": 0, "decode_s": 0.0, "prefill_s": 0.0, "prefill_tokens": 0}
        self.counters = Work()
        self.batch_size: str | int = "auto"
        self.max_length = 1 << 30
        self.prefix_cache = True
        self.meter: TokenMeter | None = None

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None, settings: "Settings | None" = None) -> list[Generation]:
        """Greedy generations for `requests`, in request order (see Model.generate); `on_done(pairs)`
        as results finish. `settings`: this call's batch width, prefix cache, context limit, progress
        and extra stop ids (runner/hf.py: Settings; default: its defaults with no context limit).

        Raises EvalError when a prompt plus its new tokens exceed the model's context, or when even a
        single request does not fit in memory."""
        settings = settings or Settings(max_length=1 << 30)
        self.batch_size, self.max_length, self.prefix_cache = settings.batch_size, settings.max_length, settings.prefix_cache
        self.eos_ids = self.loaded.eos_ids | settings.stop_ids
        encoded = self._encode(requests)
        results: list[Generation | None] = [None] * len(requests)
        self.meter = TokenMeter(requests, enabled=settings.report_progress)
        prefill_before = self.stats["prefill_tokens"]

        def deliver(done: list[tuple[int, Generation]]) -> None:
            for i, gen in done:
                results[i] = gen
            if on_done:
                on_done([(requests[i], gen) for i, gen in done])

        try:
            if self.use_slots:
                self._generate_slots(encoded, requests, deliver)
            else:
                self._generate_plain(encoded, requests, deliver)
        finally:
            self.meter.close()
        prompt_tokens = sum(len(ids) for _, ids in encoded)
        computed = self.stats["prefill_tokens"] - prefill_before if self.use_slots else prompt_tokens
        self.counters = self.counters + Work(len(requests), prompt_tokens, computed, sum(g.n_tokens for g in results if g is not None))
        return results  # type: ignore[return-value]

    def _encode(self, requests: Sequence[GenerateRequest]) -> list[tuple[int, list[int]]]:
        """(index, prompt ids) per request, batched through the Tokens id cache; refuses a request
        whose prompt and max_new_tokens exceed the context."""
        ids_of = self.tokens.encode_many([req.prompt for req in requests])
        encoded = []
        for i, req in enumerate(requests):
            ids = ids_of[req.prompt]
            if len(ids) + req.max_new_tokens > self.max_length:
                raise EvalError(f"request {req.key}: prompt of {len(ids)} tokens + {req.max_new_tokens} new tokens exceed the model's context of {self.max_length}")
            encoded.append((i, ids))
        return encoded

    def _default_width(self) -> int:
        if isinstance(self.batch_size, int):
            return self.batch_size
        return 64 if self.device.startswith("cuda") else 16

    # -- the slot engine

    def _generate_slots(self, encoded, requests, deliver) -> None:
        """Run the slot engine over every group of requests sharing a prefix; on OOM, halve the slots and
        go on with the requests not yet delivered (delivered ones are kept)."""
        prompts = [ids for _, ids in encoded]
        for prefix, members in prefix_groups(prompts, self.prefix_cache):
            group = [encoded[k] for k in members]
            slots = self.slots or self._plan_slots(group, requests)
            pending = group
            while pending:
                delivered: set[int] = set()

                def track(done, _delivered=delivered):
                    _delivered.update(i for i, _ in done)
                    deliver(done)

                try:
                    SlotRun(self, requests, pending, slots, prefix).run(track)
                    pending = []
                except torch.OutOfMemoryError:
                    pending = [(i, ids) for i, ids in pending if i not in delivered]
                    self.graph_pool = self.pool = None
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    if slots == 1:
                        raise EvalError("out of memory generating for a single prompt; use a smaller model or a GPU with more memory")
                    slots = max(1, slots // 2)
                    log.warning("out of memory in generation: going on with %d slots", slots)
        if not self.keep_pool:
            self.release()

    def _plan_slots(self, group, requests) -> int:
        """Slots = the batch width asked for (default 64 on CUDA, 16 on CPU), at most one per request, and on
        CUDA at most what half the free memory holds as KV cache at this call's longest sequence."""
        slots = min(self._default_width(), len(group))
        if self.device.startswith("cuda"):
            longest = max(len(ids) + requests[i].max_new_tokens for i, ids in group)
            per_slot = kv_bytes_per_token(self.model) * longest
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            free += self.pool_bytes()  # the kept slot cache is reused or released
            free = group_min(free)  # every rank of a TP group picks the same slots
            slots = max(1, min(slots, int(free * 0.5 // max(per_slot, 1))))
        return slots

    def pool_bytes(self) -> int:
        """Bytes of the kept slot cache (0 when none is kept)."""
        if self.pool is None:
            return 0
        cache = self.pool["cache"]
        return sum(t.numel() * t.element_size() for t in cache.keys + cache.values)

    def release(self) -> None:
        """Drop the kept slot cache and CUDA graphs (their memory returns to torch's allocator)."""
        self.pool = self.graph_pool = None

    # -- the plain loop (architectures the slot engine does not support)

    def _generate_plain(self, encoded, requests, deliver) -> None:
        encoded = sorted(encoded, key=lambda item: -len(item[1]))
        size = self._default_width()
        for k in range(0, len(encoded), size):
            deliver(self._generate_resilient(encoded[k : k + size], requests))

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
        """Static-batch greedy decoding with the model's own KV cache, left-padded. A row leaves the batch
        as soon as it is finished (EOS, a stop string, or its token budget)."""
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
        rows = [Decoding(i, requests[i], row, self.special_ids) for i, row in batch]
        active = rows
        while True:
            tokens = out.logits[:, -1].argmax(-1).tolist()
            finished = [row.step(token, self.eos_ids, self.tokenizer) for row, token in zip(active, tokens)]
            self.meter.stepped(len(active))
            for row, done in zip(active, finished):
                if done:
                    self.meter.finished(row)
            keep = [k for k, done in enumerate(finished) if not done]
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
                             position_ids=position, use_cache=True, **{self.cache_arg: cache})
        return [(row.index, row.result(self.tokenizer)) for row in rows]


def slot_engine_supports(model) -> bool:
    """True for the Llama family with full attention in every layer (see SLOT_MODEL_TYPES)."""
    config = model.config
    if getattr(config, "model_type", None) not in SLOT_MODEL_TYPES:
        return False
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return False
    if getattr(config, "model_type", None) == "mistral" and getattr(config, "sliding_window", None):
        return False
    return getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "eager", None)


def kv_bytes_per_token(model) -> int:
    """Bytes of K and V one token occupies over all layers (an upper bound under tensor parallelism)."""
    from .shape import Shape

    return Shape.of(model.config).kv_bytes_per_token(next(model.parameters()).element_size())


# ----------------------------------------------------------------------------- the slot cache and attention


class SlotCache:
    """Per layer K and V of shape [slots, kv_heads, max_len, head_dim], allocated at the layer's first
    write (so tensor-parallel shards size it by their local heads), plus the shared prefix's K and V.

    The engine sets `mode` before each forward; the model's attention modules call `update`:
    - "prefix": keys/values of the shared prefix [1, kvh, P, hd] are kept as they are.
    - "prefill": rows `rows` (slot indices [n]) get the prefix copied to [0, P) and their suffix written at
      [P, P+T); attention sees prefix + suffix.
    - "decode": slot b (b < width) writes its one new token at `positions[b]`; attention sees the slots'
      first `kv_len` positions.
    """

    is_compileable = False

    def __init__(self, slots: int, max_len: int):
        self.slots, self.max_len = slots, max_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.prefix_keys: list[torch.Tensor] = []
        self.prefix_values: list[torch.Tensor] = []
        self.mode = "prefix"
        self.rows: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.prefix_len = 0
        self.kv_len = max_len

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' cache hook: store this forward's key/value [B, kvh, T, hd] of `layer_idx`
        as `mode` says (see the class docstring); return the key/value attention must see."""
        if self.mode == "prefix":
            if len(self.prefix_keys) == layer_idx:
                self.prefix_keys.append(key)
                self.prefix_values.append(value)
            return key, value
        if len(self.keys) == layer_idx:  # first write of this layer: allocate its slots
            shape = (self.slots, key.shape[1], self.max_len, key.shape[3])
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.mode == "prefill":
            P, T = self.prefix_len, key.shape[2]
            if P:
                pk, pv = self.prefix_keys[layer_idx], self.prefix_values[layer_idx]
                rows = self.rows.to(key.device)  # a device map puts layers on several GPUs; a no-op on one
                keys[rows, :, :P] = pk[0]
                values[rows, :, :P] = pv[0]
                n = key.shape[0]
                key_all = torch.cat([pk.expand(n, -1, -1, -1), key], dim=2)
                value_all = torch.cat([pv.expand(n, -1, -1, -1), value], dim=2)
            else:
                key_all, value_all = key, value
            keys[self.rows.to(key.device), :, P:P + T] = key
            values[self.rows.to(key.device), :, P:P + T] = value
            return key_all, value_all
        width = key.shape[0]
        row = torch.arange(width, device=key.device)
        positions = self.positions.to(key.device)
        keys[row, :, positions] = key[:, :, 0]
        values[row, :, positions] = value[:, :, 0]
        return keys[:width, :, :self.kv_len], values[:width, :, :self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """0: positions are always passed explicitly, so transformers needs no cache length."""
        return 0

    def clear_prefix(self) -> None:
        """Forget the shared prefix's key/value (the next group prefills its own)."""
        self.prefix_keys, self.prefix_values = [], []


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the slot engine. query [B, H, q, D]; key/value [B, kvh, K, D]; attention_mask a bool
    [B or 1, 1, q, K] (True: attend). Returns ([B, q, H, D], None) as transformers' attention functions do.

    One query per row (decode): grouped matmuls read each KV head once for its H/kvh query heads (SDPA
    with a mask would expand K and V to all heads on CUDA); scores and softmax in float32.
    Longer queries (prefill): SDPA with K and V expanded to the query heads and the mask."""
    B, H, q, D = query.shape
    kvh = key.shape[1]
    groups = H // kvh
    scale = scaling if scaling is not None else D ** -0.5
    if q == 1:
        grouped = query.reshape(B, kvh, groups, D)
        scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # [B, kvh, groups, K]
        scores = scores.masked_fill(~attention_mask.reshape(attention_mask.shape[0], 1, 1, -1), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        out = torch.matmul(probs, value).reshape(B, H, 1, D)
    else:
        if groups > 1:
            key = key[:, :, None].expand(B, kvh, groups, *key.shape[2:]).reshape(B, H, *key.shape[2:])
            value = value[:, :, None].expand(B, kvh, groups, *value.shape[2:]).reshape(B, H, *value.shape[2:])
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
    return out.transpose(1, 2), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, slot_attention)


class _SlotAttention:
    """Selects `slot_attention` on the model's configs for the engine's forwards, restoring them after."""

    def __init__(self, model):
        self.configs = {id(c): c for c in [model.config, *(getattr(m, "config", None) for m in model.modules())]
                        if c is not None and hasattr(c, "_attn_implementation")}.values()

    def __enter__(self):
        _register_attention()
        self.saved = [(c, c._attn_implementation) for c in self.configs]
        for c, _ in self.saved:
            c._attn_implementation = ATTENTION_NAME

    def __exit__(self, *exc):
        for c, name in self.saved:
            c._attn_implementation = name


# ----------------------------------------------------------------------------- one run of the slot engine


def _widths(slots: int) -> list[int]:
    widths, w = [], 1
    while w < slots:
        widths.append(w)
        w *= 2
    return widths + [slots]


class SlotRun:
    """Continuous batching over `slots` KV slots for `group` ([(request index, prompt ids)]) whose
    prompts all start with `prefix` (prefix_groups), prefilled once. Host state: `rows[slot]` (a Decoding or None). Device state: `current` [slots] (each
    slot's latest token, fed to the next step) and `positions` [slots] (where that token is written)."""

    def __init__(self, engine: Engine, requests, group, slots: int, prefix: list[int]):
        self.engine, self.requests = engine, requests
        self.model, self.device = engine.model, torch.device(engine.device)
        self.decoder = engine.decoder
        head = engine.model.get_output_embeddings()
        # under a device map the head may sit on another GPU: its tokens come back to the input device
        self.lm_head = (lambda hidden: head(hidden).to(self.device)) if spans_devices(self.model) else head
        self.queue = sorted(group, key=lambda item: -len(item[1]))  # longest first: the slowest prefills early
        self.slots = max(1, min(slots, len(group)))
        self.prefix = prefix if len(group) > 1 else []  # prefilled once, then copied into each slot
        longest = max(len(ids) + requests[i].max_new_tokens for i, ids in group)
        self.max_len = min(-(-longest // 64) * 64, max(engine.max_length, longest))
        self.rows: list[Decoding | None] = [None] * self.slots
        self._take_pool()
        self.cuda = self.device.type == "cuda"
        # CUDA graphs: not under torch.distributed (collectives inside a captured graph are the TP runner's call)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        # nor over a device map (a captured graph replays on one device; accelerate's hooks move tensors between)
        self.graphs = self.cuda and engine.mode != "eager" and not distributed and not spans_devices(self.model)
        # prefill chunks: at most this many new tokens per forward (bounds activations and attention scores)
        self.prefill_tokens = 16384 if self.cuda else 2048

    def _take_pool(self) -> None:
        """The device state: the slot cache, each slot's current token and position, the graphs' output
        and the captured graphs (width -> CUDA graph; False: capture failed). The engine keeps it between
        calls of the same shape, so graphs captured once are replayed by later calls (a graph reads
        fixed addresses); a call of another shape drops it first."""
        key = (self.slots, self.max_len, str(self.device))
        pool = self.engine.pool
        if pool is None or pool["key"] != key:
            self.engine.pool = None  # release the old buffers (and graphs) before allocating new ones
            pool = {"key": key, "cache": SlotCache(self.slots, self.max_len), "captured": {},
                    **{name: torch.zeros(self.slots, dtype=torch.long, device=self.device) for name in ("current", "positions", "next")}}
            self.engine.pool = pool
        self.cache, self.captured = pool["cache"], pool["captured"]
        self.current, self.positions, self._next = pool["current"], pool["positions"], pool["next"]
        self.positions.zero_()

    # -- the loop

    @torch.inference_mode()
    def run(self, deliver) -> None:
        """Prefill the prefix, then admit and decode until every request of the group is delivered."""
        with _SlotAttention(self.model):
            if self.prefix:
                self._prefill_prefix()
            while self.queue or any(r is not None for r in self.rows):
                self._admit(deliver)
                if not any(r is not None for r in self.rows):
                    continue
                if not self.queue:
                    self._compact()
                self._decode_step(deliver)
            self.cache.clear_prefix()

    def _forward(self, ids, positions, mask):
        """Hidden states of the decoder for ids/positions [B, T] with a bool mask [B|1, 1, T, K]."""
        out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                           **{self.engine.cache_arg: self.cache})
        return out.last_hidden_state.to(self.device)  # from the last layer's device, under a device map

    def _prefill_prefix(self) -> None:
        start = time.perf_counter()
        P = len(self.prefix)
        self.cache.clear_prefix()
        self.cache.mode = "prefix"
        ids = torch.tensor([self.prefix], device=self.device)
        mask = torch.ones(P, P, dtype=torch.bool, device=self.device).tril()[None, None]
        self._forward(ids, torch.arange(P, device=self.device)[None], mask)
        self.cache.prefix_len = P
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.engine.stats["prefill_s"] += time.perf_counter() - start
        self.engine.stats["prefill_tokens"] += P

    def _admit(self, deliver) -> None:
        """Prefill waiting requests into free slots, in batches, while there are both. Admission waits
        until an eighth of the slots are free (or everything left fits, or nothing runs): a prefill
        forward costs about one decode step however few rows it holds."""
        while self.queue:
            free = [s for s, r in enumerate(self.rows) if r is None]
            busy = self.slots - len(free)
            if not free or (busy and len(free) < max(1, self.slots // 8) and len(free) < len(self.queue)):
                return
            batch = []
            P = len(self.prefix)
            for slot in free:
                if not self.queue:
                    break
                suffix = len(self.queue[0][1]) - P
                width = max([suffix] + [len(ids) - P for _, ids in batch])
                if batch and (len(batch) + 1) * width > self.prefill_tokens:
                    break
                batch.append(self.queue.pop(0))
            self._prefill(free[:len(batch)], batch, deliver)

    def _prefill(self, slots: list[int], batch, deliver) -> None:
        start = time.perf_counter()
        P = len(self.prefix)
        n, T = len(batch), max(len(ids) - P for _, ids in batch)
        ids = torch.full((n, T), self.engine.pad_id, dtype=torch.long)
        for b, (_, row) in enumerate(batch):
            ids[b, :len(row) - P] = torch.tensor(row[P:])
        ids = ids.to(self.device)
        positions = (P + torch.arange(T, device=self.device))[None].expand(n, T)
        # query i (position P+i) sees keys 0..P+i; right padding only writes past each row's end
        mask = (torch.arange(P + T, device=self.device)[None, :] <= positions[0][:, None])[None, None]
        self.cache.mode, self.cache.prefix_len = "prefill", P
        self.cache.rows = torch.tensor(slots, device=self.device)
        hidden = self._forward(ids, positions, mask)
        last = torch.tensor([len(row) - P - 1 for _, row in batch], device=self.device)
        first = self.lm_head(hidden[torch.arange(n, device=self.device), last]).argmax(-1)
        lengths = torch.tensor([len(row) for _, row in batch], device=self.device)
        slot_index = self.cache.rows
        self.current[slot_index] = first
        self.positions[slot_index] = lengths
        done = []
        first = first.tolist()
        stats = self.engine.stats
        stats["prefill_s"] += time.perf_counter() - start
        stats["prefill_tokens"] += sum(len(row) - P for _, row in batch)
        for slot, (i, row), token in zip(slots, batch, first):
            decoding = Decoding(i, self.requests[i], row, self.engine.special_ids)
            self.rows[slot] = decoding
            if decoding.step(token, self.engine.eos_ids, self.engine.tokenizer):
                done.append(self._finish(slot))
        self.engine.meter.stepped(len(batch))
        if done:
            deliver(done)

    def _finish(self, slot: int) -> tuple[int, Generation]:
        row = self.rows[slot]
        self.engine.meter.finished(row)
        self.rows[slot] = None
        self.positions[slot] = 0  # a free slot keeps stepping (as padding): keep its writes in bounds
        return row.index, row.result(self.engine.tokenizer)

    def _compact(self) -> None:
        """With nobody waiting, move rows from high slots into free low ones so the decode width shrinks
        (a device copy of one slot's KV per move)."""
        active = [s for s, r in enumerate(self.rows) if r is not None]
        target = self._width(len(active))
        movers = [s for s in active if s >= target]
        holes = [s for s in range(target) if self.rows[s] is None]
        for src, dst in zip(movers, holes):
            for store in (self.cache.keys, self.cache.values):
                for layer in store:
                    layer[dst].copy_(layer[src])
            self.current[dst] = self.current[src]
            self.positions[dst] = self.positions[src]
            self.rows[dst], self.rows[src] = self.rows[src], None
            self.positions[src] = 0

    def _width(self, n: int) -> int:
        if not self.graphs:
            return n
        return next(w for w in _widths(self.slots) if w >= n)

    def _decode_step(self, deliver) -> None:
        start = time.perf_counter()
        top = max(s for s, r in enumerate(self.rows) if r is not None) + 1
        width = self._width(top)
        tokens = self._step(width).tolist()  # the one host sync of a step
        stats = self.engine.stats
        stats["decode_steps"] += 1
        stats["decode_rows"] += sum(r is not None for r in self.rows)
        stats["decode_s"] += time.perf_counter() - start
        done = []
        self.engine.meter.stepped(sum(r is not None for r in self.rows[:top]))
        for slot in range(top):
            row = self.rows[slot]
            if row is not None and row.step(tokens[slot], self.engine.eos_ids, self.engine.tokenizer):
                done.append(self._finish(slot))
        self.current[:width] = self._next[:width]
        self.positions[:width].add_(1).clamp_(max=self.max_len - 1)
        if done:
            deliver(done)

    def _step(self, width: int) -> torch.Tensor:
        """One decode step over slots [0, width): returns their next tokens [width] (on the device)."""
        if not self.graphs:
            self.cache.kv_len = int(self.positions[:width].max()) + 1 if not self.cuda else self.max_len
            self._next = self._eager_step(width)
            return self._next
        graph = self.captured.get(width)
        if graph is None:
            graph = self._capture(width)
        if graph is False:
            self._next = self._eager_step(width)
            return self._next
        graph.replay()
        return self._next[:width]

    def _eager_step(self, width: int) -> torch.Tensor:
        self.cache.mode = "decode"
        positions = self.positions[:width]
        self.cache.positions = positions
        mask = (torch.arange(self.cache.kv_len, device=self.device)[None, :] <= positions[:, None])[:, None, None]
        hidden = self._forward(self.current[:width, None], positions[:, None], mask)
        return self.lm_head(hidden[:, -1]).argmax(-1)

    def _capture(self, width: int):
        """Capture the decode step at `width` in a CUDA graph; check it against the eager step once (the
        same inputs write the same KV, so running both is harmless); False when capture fails."""
        self.cache.kv_len = self.max_len
        try:
            expected = self._eager_step(width)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._eager_step(width)  # warm-up outside the graph (allocator, lazy inits)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.engine.graph_pool):
                self._next[:width] = self._eager_step(width)
            if self.engine.graph_pool is None:
                self.engine.graph_pool = graph.pool()
            graph.replay()
            if not torch.equal(self._next[:width], expected):
                raise RuntimeError("the captured decode step disagrees with the eager one")
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # capture is an optimisation: fall back to eager steps, loudly
            log.warning("CUDA graph capture of the decode step failed (%s); decoding eagerly", str(exc).splitlines()[0])
            self.graphs = False
            graph = False
        self.captured[width] = graph
        return graph


def common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest token prefix of all rows, leaving each row at least one token of its own (the last
    prompt token must run through the model to give the first new token's logits)."""
    first = rows[0]
    n = min(len(r) for r in rows) - 1
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return first[:max(n, 0)]
