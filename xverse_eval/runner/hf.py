"""transformers backend: any causal LM from the hub, a local folder or a GGUF file, behind the
two-method Model contract. The work lives in rooms: load.py (locate and load), tokens.py (text <->
ids), scoring.py (log-likelihoods), engine.py (generation)."""
from __future__ import annotations

import inspect
import logging
from typing import Sequence

import torch

from ..errors import EvalError
from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest
from . import OnDone
from .engine import Engine
from .load import context_length, default_device, identify, load_transformers
from .scoring import Scorer
from .tokens import Tokens

log = logging.getLogger(__name__)


class HFModel:
    def __init__(self, tokenizer, model, name: str, fingerprint: dict, device: str, batch_size: str | int = "auto",
                 max_length: int | None = None, prefix_cache: bool = True):
        self.tokenizer = tokenizer
        self.tokens = Tokens(tokenizer)
        self.model = model
        self.decoder = model.get_decoder()  # the transformer body; the LM head is applied only where scored
        self.prefix_cache = prefix_cache
        # transformers renamed `past_key_values` to `cache` (5.2x); use whichever this version takes
        self.cache_arg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        self.name = name
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length or context_length(model.config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        # generation ends at the tokenizer's EOS or any EOS the model's generation config names
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        configured = configured if isinstance(configured, list) else [configured]
        self.eos_ids = {t for t in [tokenizer.eos_token_id, *configured] if t is not None}
        self.report_progress = True  # off on non-zero ranks under torchrun: rank 0 reports the whole job
        self.scorer = Scorer(self)
        self.engine = Engine(self)

    @classmethod
    def load(cls, spec: str, device: str | None = None, dtype: str = "auto", batch_size: str | int = "auto", revision: str | None = None,
             max_length: int | None = None, prefix_cache: bool = True, model_args: dict | None = None,
             trust_remote_code: bool = False, **from_pretrained) -> "HFModel":
        """Load `spec`. `model_args` (--model-args) and `trust_remote_code` go to from_pretrained and
        into the fingerprint (runner/fingerprint.py, computed from the files before loading);
        `from_pretrained` is loader plumbing that does not change what is computed (tp_plan,
        device_mesh under torchrun) and is passed through as is."""
        device = device or default_device()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EvalError("--device cuda was asked for, but torch sees no CUDA device")
        source, torch_dtype, fingerprint = identify(spec, device, dtype, revision, model_args, trust_remote_code)
        # a hub model loads at the commit its fingerprint names, so weights and identity agree
        tokenizer, model = load_transformers(source, torch_dtype, device, fingerprint["revision"], trust_remote_code=fingerprint["trust_remote_code"],
                                             **fingerprint["model_args"], **from_pretrained)
        return cls(tokenizer, model, spec, fingerprint, device, batch_size, max_length, prefix_cache)

    def stop_at_tokens(self, ids: set[int]) -> None:
        """Generation also ends at these token ids (a chat template's end-of-turn tokens). The set is
        widened in place: the engine holds the same set."""
        self.eos_ids.update(ids)

    # -- the contract

    def encode(self, text: str) -> list[int]:
        return self.tokens.encode(text)

    def count_tokens(self, text: str) -> int:
        return self.tokens.count(text)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        return self.scorer.loglikelihood(requests, on_done)

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        return self.engine.generate(requests, on_done)
