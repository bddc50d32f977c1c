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
    `fake:SEED[:opt=v...]` is the deterministic fake model of runner/fake.py (for tests);
    `random:ARCH[:layers=N]...` a random-weight model of a real architecture (runner/xverse.py).
    `dist` (parallel.Dist, under torchrun): load on the rank's GPU, sharded over its TP group."""
    dist = kwargs.pop("dist", None)
    if spec.startswith("fake:"):
        from .fake import FakeModel

        return FakeModel.load(spec, **kwargs)
    if spec.startswith("random:"):
        from .xverse import load_random

        return load_random(spec, dist=dist, **kwargs)
    from .hf import HFModel

    if dist is None or not dist.active:
        return HFModel.load(spec, **kwargs)
    from ..parallel import plan_and_load

    return plan_and_load(HFModel, spec, dist, **kwargs)


def model_identity(spec: str, **kwargs) -> dict | None:
    """The fingerprint `load_model(spec, **kwargs).fingerprint` will have, computed without loading
    the weights (runner/fingerprint.py), or None where only a loaded model knows it (random weights,
    a torchrun job). A resume with nothing left to compute uses it to find its finished run."""
    dist = kwargs.get("dist")
    if spec.startswith("random:") or (dist is not None and dist.active):
        return None
    if spec.startswith("fake:"):
        from .fake import FakeModel

        return FakeModel.load(spec, **kwargs).fingerprint
    from .load import identify

    keys = ("device", "dtype", "revision", "model_args", "trust_remote_code")
    return identify(spec, **{k: kwargs[k] for k in keys if k in kwargs})[2]
