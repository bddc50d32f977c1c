"""The transformers backend's two kinds of state (runner/hf.py's docstring says why they are apart):
`Loaded`, what loading produced and nothing changes afterwards, and `Settings`, one call's knobs.
A room of its own so that the model (hf.py), the scorer and the engine all import it and none of
them imports another."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from .tokens import Tokens


def text_config(config):
    """The language model's config of a (possibly multimodal) transformers config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class Loaded:
    """One loaded transformers model, as the scorer and the engine use it.

    `model`: the *ForCausalLM; `decoder`: its transformer body (the LM head is applied only where a
    position is scored); `config`: its text config; `tokens`: the tokenizer seen as runner/tokens.py
    sees it; `pad_id`: the id right-padding uses (never attended); `eos_ids`: the tokenizer's EOS and
    every EOS the generation config names; `cache_arg`: the decoder's keyword for a KV cache
    (`cache` from transformers 5.2x, `past_key_values` before)."""

    tokenizer: Any
    tokens: Tokens
    model: Any
    decoder: Any
    config: Any
    device: str
    pad_id: int
    eos_ids: frozenset
    cache_arg: str

    @classmethod
    def of(cls, tokenizer, model, device: str) -> "Loaded":
        """The Loaded state of a tokenizer and model already on `device`."""
        decoder = model.get_decoder()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        configured = configured if isinstance(configured, list) else [configured]
        eos = frozenset(t for t in [tokenizer.eos_token_id, *configured] if t is not None)
        cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        return cls(tokenizer, Tokens(tokenizer), model, decoder, text_config(model.config), device, pad, eos, cache_arg)


@dataclass(frozen=True)
class Settings:
    """One call's knobs: `batch_size` (rows per pass, or "auto": from free memory), `prefix_cache`
    (compute shared prefixes once), `max_length` (context, tokens), `report_progress` (off on
    non-zero torchrun ranks), `stop_ids` (generation ends at these too, beside `Loaded.eos_ids`)."""

    batch_size: str | int = "auto"
    prefix_cache: bool = True
    max_length: int = 2048
    report_progress: bool = True
    stop_ids: frozenset = frozenset()


