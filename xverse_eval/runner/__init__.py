"""The model contract. Everything model-specific stays behind these two batched methods.

`loglikelihood` and `generate` take requests in any order and return responses in the same order.
`on_done(pairs)` is called with (request, response) pairs as soon as a batch finishes, so the caller
can store them durably before the next batch starts: a crash loses at most the batch in flight.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest

OnDone = Callable[[list], None]


class Model(Protocol):
    name: str
    fingerprint: dict  # everything that determines a response: id, revision, dtype, ...
    max_length: int

    def count_tokens(self, text: str) -> int: ...

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]: ...

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]: ...


def load_model(spec: str, **kwargs) -> Model:
    """Load `spec` (hub id, local folder, .gguf file or alias) with the transformers backend.
    `fake:SEED[:opt=v...]` is the deterministic fake model of runner/fake.py (for tests)."""
    if spec.startswith("fake:"):
        from .fake import FakeModel

        return FakeModel.load(spec, **kwargs)
    from .hf import HFModel

    return HFModel.load(spec, **kwargs)
