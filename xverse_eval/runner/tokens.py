"""Text <-> token ids as the model sees them: whole prompts, context/continuation pairs, new text.

Special tokens are never left to the tokenizer's post-processor: a tokenizer.json whose
TemplateProcessing appends EOS (as `add_eos_token=True` tokenizers do), or a SEP, would otherwise put
that token after every prompt and inside every scored continuation (letter scoring would read
log P(EOS | prompt + " A")). Text is encoded with `add_special_tokens=False`, and only the special
tokens the tokenizer puts *before* text (BOS for Llama, Gemma, Mistral; nothing for GPT-2-style
byte-level BPE such as SmolLM2 or Qwen) are added back, once.
"""
from __future__ import annotations

import logging
from array import array
from collections import OrderedDict
from typing import Sequence

from ..errors import EvalError

log = logging.getLogger(__name__)

PROBE = "Hello world"  # any plain text: only what the post-processor adds around it matters
CACHE_TOKENS = 1 << 25  # ids kept for reuse (int32: 128 MiB); the least recently used text goes first
BATCH = 4096  # texts per tokenizer call: a fast tokenizer encodes a batch in parallel threads


class IdCache:
    """Token ids of texts already encoded, memory-bounded: each text's ids as a compact int32 array,
    least recently used dropped first once more than `budget` ids are held. The text itself is the
    key (requests hold those strings anyway, so a key costs no copy).

    Build calls `count_many` for every prompt; the scorer then encodes the same contexts again: with
    the cache, each text is tokenised once per run (issue 17)."""

    def __init__(self, budget: int = CACHE_TOKENS):
        self.budget = budget
        self.held = 0
        self.hits = self.misses = 0
        self._ids: OrderedDict[str, array] = OrderedDict()

    def get(self, text: str) -> list[int] | None:
        """The cached ids of `text` (a new list), or None."""
        ids = self._ids.get(text)
        if ids is None:
            self.misses += 1
            return None
        self.hits += 1
        self._ids.move_to_end(text)
        return ids.tolist()

    def length(self, text: str) -> int | None:
        """len(ids) of a cached text, without materialising the list."""
        ids = self._ids.get(text)
        if ids is None:
            return None
        self._ids.move_to_end(text)
        return len(ids)

    def put(self, text: str, ids: Sequence[int]) -> None:
        """Keep `ids` for `text`, dropping the least recently used texts beyond the budget."""
        if len(ids) > self.budget or text in self._ids:
            return
        self._ids[text] = array("i", ids)
        self.held += len(ids)
        while self.held > self.budget:
            _, old = self._ids.popitem(last=False)
            self.held -= len(old)


class Tokens:
    """The tokenizer seen through the three questions the runner asks of it.

    `prefix`: the special token ids the model expects before every sequence (e.g. [BOS], or []),
    found by encoding a probe text with and without the tokenizer's specials. `special_ids`: the
    tokenizer's special tokens (unk excepted: it stands for text, not structure); none may appear in a
    scored continuation."""

    def __init__(self, tokenizer, cache_tokens: int = CACHE_TOKENS):
        self.tokenizer = tokenizer
        self.cache = IdCache(cache_tokens)
        self.special_ids = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
        self.prefix = self._leading_specials()
        self.prefix_text = tokenizer.decode(self.prefix) if self.prefix else ""

    def _leading_specials(self) -> list[int]:
        """The special tokens the tokenizer's own encoding puts before the text, trailing ones dropped."""
        plain = self.tokenizer(PROBE, add_special_tokens=False).input_ids
        full = self.tokenizer(PROBE).input_ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                lead = full[:start]
                break
        else:  # the post-processor rewrote the text's own tokens: trust nothing it adds
            log.warning("the tokenizer's special tokens wrap %r unexpectedly (%s vs %s); adding none", PROBE, full, plain)
            return []
        if any(t not in self.special_ids for t in lead):
            log.warning("the tokenizer puts non-special tokens %s before text; adding none", lead)
            return []
        return lead

    def forget(self) -> None:
        """Drop every cached id (a benchmark that times tokenisation starts cold)."""
        self.cache = IdCache(self.cache.budget)

    def encode(self, text: str) -> list[int]:
        """Token ids of a whole prompt: `prefix` (BOS where the model expects one) + the text's own
        tokens; no trailing EOS/SEP, and no second BOS when the text already starts with one (a chat
        template that renders it). Memoised (see IdCache)."""
        ids = self.cache.get(text)
        if ids is None:
            ids = self._with_prefix(text, self.tokenizer(text, add_special_tokens=False).input_ids)
            self.cache.put(text, ids)
        return ids

    def _with_prefix(self, text: str, ids: list[int]) -> list[int]:
        if not self.prefix or ids[: len(self.prefix)] == self.prefix or (self.prefix_text and text.startswith(self.prefix_text)):
            return ids
        return self.prefix + ids

    def encode_many(self, texts: Sequence[str]) -> dict[str, list[int]]:
        """`encode` of every distinct text, the ones not cached in batched tokenizer calls (BATCH
        texts each): a fast tokenizer encodes a batch in parallel threads, and a text that many
        requests share (a question's context, read by each of its choices) is encoded once.
        Returns text -> ids."""
        out: dict[str, list[int]] = {}
        missing = []
        for text in dict.fromkeys(texts):
            ids = self.cache.get(text)
            if ids is None:
                missing.append(text)
            else:
                out[text] = ids
        for start in range(0, len(missing), BATCH):
            chunk = missing[start : start + BATCH]
            for text, ids in zip(chunk, self.tokenizer(chunk, add_special_tokens=False).input_ids):
                ids = self._with_prefix(text, ids)
                self.cache.put(text, ids)
                out[text] = ids
        return out

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """len(encode(t)) for every text, in order: cached lengths first, the rest encoded in batches
        (and kept, so the scorer reuses those ids)."""
        counts = [self.cache.length(t) for t in texts]
        missing = [t for t, n in zip(texts, counts) if n is None]
        if missing:
            encoded = self.encode_many(missing)
            counts = [len(encoded[t]) if n is None else n for t, n in zip(texts, counts)]
        return counts  # type: ignore[return-value]

    def encode_pairs(self, pairs: list[tuple[str, str]], keys: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
        """`encode_pair` of many (context, continuation) pairs, each distinct string encoded once, in
        batches; the same split and checks as `encode_pair`."""
        ids = self.encode_many([c for c, _ in pairs] + [c + x for c, x in pairs])
        keys = keys or [None] * len(pairs)
        return [self._split(ids[c + x], ids[c], x, key) for (c, x), key in zip(pairs, keys)]

    def count(self, text: str) -> int:
        """len(encode(text)), memoised."""
        n = self.cache.length(text)
        return len(self.encode(text)) if n is None else n

    def encode_pair(self, context: str, continuation: str, key: str | None = None) -> tuple[list[int], list[int]]:
        """Tokenise context+continuation as one string, then split where the context's own tokens end.

        Encoding the whole string keeps the continuation's first token the one the model really sees
        after the context (" A" after "Answer:", "A" after "答案："), never a token of `continuation`
        encoded on its own. Raises EvalError (naming request `key`) when the continuation's tokens
        hold a special token: its log-probability would be scored as if it were text.
        """
        return self._split(self.encode(context + continuation), self.encode(context), continuation, key)

    def _split(self, whole: list[int], context_ids: list[int], continuation: str, key: str | None) -> tuple[list[int], list[int]]:
        n = len(context_ids)
        if whole[:n] != context_ids:
            # The boundary merged into one token: keep lm-eval's rule (the context keeps as many tokens
            # as it has on its own) so the split is deterministic; the caller can see n_tokens.
            log.debug("context/continuation boundary merged for %r", continuation)
        continuation_ids = whole[n:]
        special = [t for t in continuation_ids if t in self.special_ids]
        if special:
            name = self.tokenizer.convert_ids_to_tokens(special[0])
            where = f"request {key}: the" if key else "the"
            raise EvalError(f"{where} continuation {continuation!r} holds the special token {name!r} (id {special[0]}); only text may be scored")
        return whole[:n], continuation_ids

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class CountsTokens:
    """The token side of the Model contract for a model that holds a `Tokens` as `self.tokens` and
    its extra stop ids as `self.stop_ids` (a frozenset): the in-process, served and dry models."""

    tokens: Tokens
    stop_ids: frozenset

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as a whole prompt, leading specials (BOS) included where the model expects them; memoised."""
        return self.tokens.count(text)

    def count_tokens_many(self, texts) -> list[int]:
        """count_tokens of every text, in order; batched, and the ids kept for the requests that reuse them."""
        return self.tokens.count_many(texts)

    def stop_at_tokens(self, ids: set[int]) -> None:
        """Generation also ends at these token ids (a chat template's end-of-turn tokens)."""
        self.stop_ids = self.stop_ids | frozenset(ids)
