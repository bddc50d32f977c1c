"""Text <-> token ids as the model sees them: whole prompts, context/continuation pairs, new text."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Tokens:
    """The tokenizer seen through the three questions the runner asks of it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        """Tokenise as the model sees a whole prompt: with the tokenizer's default special tokens (BOS)."""
        return self.tokenizer(text).input_ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokenise context+continuation as one string, then split where the context's own tokens end.

        Encoding the whole string keeps the continuation's first token the one the model really sees
        after the context (" A" after "Answer:", "A" after "答案："), never a token of `continuation`
        encoded on its own.
        """
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        n = len(context_ids)
        if whole[:n] != context_ids:
            # The boundary merged into one token: keep lm-eval's rule (the context keeps as many tokens
            # as it has on its own) so the split is deterministic; the caller can see n_tokens.
            log.debug("context/continuation boundary merged for %r", continuation)
        return whole[:n], whole[n:]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
