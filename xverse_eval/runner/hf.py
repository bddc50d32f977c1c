"""transformers backend: any causal LM from the hub, a local folder or a GGUF file, behind the Model
contract of runner/__init__.py. The work lives in rooms: load.py (locate and load), tokens.py (text <->
ids), scoring.py (log-likelihoods), engine.py (generation).

State comes in two kinds, kept apart. `Loaded` is what loading produced and nothing changes afterwards
(tokenizer, weights, device, EOS ids, ...): one frozen object that the Scorer and the Engine receive.
`Settings` are the knobs a caller may turn between calls (batch size, prefix cache, context limit,
progress, extra stop ids): HFModel keeps them as plain attributes and hands a frozen snapshot to every
call, so no room reads another's attributes and no setting travels back through a property.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..errors import EvalError
from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest
from . import OnDone, Work
from .engine import Engine
from .load import context_length, default_device, identify, load_transformers
from .scoring import Scorer
from .state import Loaded, Settings, text_config  # noqa: F401 (Loaded, text_config: re-exported)
from .tokens import CountsTokens, Tokens

log = logging.getLogger(__name__)


class HFModel(CountsTokens):
    """A transformers causal LM behind the Model contract.

    Plain attributes a caller (or a test) may change between calls: `batch_size`, `prefix_cache`,
    `max_length`, `report_progress`. `loaded` is the frozen loaded state; `tokenizer`, `tokens`,
    `model` and `decoder` are its parts, for callers that build requests or benchmarks."""

    def __init__(self, tokenizer, model, name: str, fingerprint: dict, device: str, batch_size: str | int = "auto",
                 max_length: int | None = None, prefix_cache: bool = True):
        self.loaded = Loaded.of(tokenizer, model, device)
        # its parts, for callers that build requests or benchmarks (plain attributes: never read back)
        self.tokenizer, self.tokens, self.model, self.decoder = tokenizer, self.loaded.tokens, model, self.loaded.decoder
        self.device, self.pad_id = device, self.loaded.pad_id
        self.name = name
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self.max_length = max_length or context_length(model.config)
        self.report_progress = True  # off on non-zero ranks under torchrun: rank 0 reports the whole job
        self.stop_ids: frozenset = frozenset()
        self.scorer = Scorer(self.loaded)
        self.engine = Engine(self.loaded)

    @property
    def eos_ids(self) -> frozenset:
        """Every token id generation ends at: the loaded EOS ids and those added by stop_at_tokens."""
        return self.loaded.eos_ids | self.stop_ids

    @classmethod
    def load(cls, spec: str, device: str | None = None, dtype: str = "auto", batch_size: str | int = "auto", revision: str | None = None,
             max_length: int | None = None, prefix_cache: bool = True, model_args: dict | None = None,
             trust_remote_code: bool = False, **from_pretrained) -> "HFModel":
        """Load `spec`. `model_args` (--model-args) and `trust_remote_code` go to from_pretrained and
        into the fingerprint (runner/fingerprint.py, computed from the files before loading);
        `from_pretrained` is loader plumbing that does not change what is computed (tp_plan,
        device_mesh under torchrun) and is passed through as is. Raises EvalError for a CUDA device
        torch cannot see, and whatever load.py raises for a bad spec."""
        device = device or default_device()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EvalError("--device cuda was asked for, but torch sees no CUDA device")
        source, torch_dtype, fingerprint = identify(spec, device, dtype, revision, model_args, trust_remote_code)
        # a hub model loads at the commit its fingerprint names, so weights and identity agree
        tokenizer, model = load_transformers(source, torch_dtype, device, fingerprint["revision"], trust_remote_code=fingerprint["trust_remote_code"],
                                             **fingerprint["model_args"], **from_pretrained)
        return cls(tokenizer, model, spec, fingerprint, device, batch_size, max_length, prefix_cache)

    def settings(self) -> Settings:
        """This call's snapshot of the attributes a caller may change."""
        return Settings(self.batch_size, self.prefix_cache, self.max_length, self.report_progress, self.stop_ids)

    # -- the contract

    def encode(self, text: str) -> list[int]:
        """Token ids of a whole prompt (runner/tokens.py: Tokens.encode)."""
        return self.tokens.encode(text)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        """See Model.loglikelihood (runner/scoring.py does the work)."""
        return self.scorer.loglikelihood(requests, on_done, self.settings())

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        """See Model.generate (runner/engine.py does the work)."""
        return self.engine.generate(requests, on_done, self.settings())

    def counters(self) -> Work:
        """Work computed so far by the scorer and the engine, all calls."""
        return self.scorer.counters + self.engine.counters
