"""The model contract: everything the pipeline may read of a model, and nothing more.

Two batched methods do the work, in the manner of lm-eval's `LM`: `loglikelihood` and `generate` take
requests in any order and return responses in the same order. `on_done(pairs)` is called with
(request, response) pairs as soon as a batch finishes, so the caller can store them durably before the
next batch starts: a crash loses at most the batch in flight. The rest is what building requests needs
(`max_length`, `count_tokens_many`, the tokenizer for chat templates and letter checks), the run's
identity (`name`, `fingerprint`), and the work counters (`counters`) that the dry run and the MFU
summary print beside `work(requests, tokenizer)`, the same figures computed without a model.

Backends: runner/hf.py (transformers), runner/fake.py (deterministic, for tests).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Protocol, Sequence

from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest

OnDone = Callable[[list], None]


@dataclass(frozen=True)
class Work:
    """What inference of some requests costs, in tokens.

    `requests`: how many. `distinct_tokens`: tokens of the distinct token rows (scoring: each row once,
    as scoring every row whole computes it; generation: the prompts). `computed_tokens`: tokens after
    prefix sharing (each shared prefix once: a subject's k-shot block, a RACE article, GSM8K's 4-shot
    block). `generated_tokens`: generation only; an upper bound (max_new_tokens) from `work`, the
    tokens really produced from `Model.counters`. `padded_tokens`: tokens computed as padding
    (counters only). FLOPs of a dense decoder ~ 2 x matmul params x (computed + generated) tokens."""

    requests: int = 0
    distinct_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    padded_tokens: int = 0

    def __add__(self, other: "Work") -> "Work":
        return Work(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def work(requests: Sequence[LoglikelihoodRequest | GenerateRequest], tokenizer: Any, prefix_cache: bool = True) -> Work:
    """The Work of `requests` from a tokenizer alone (no weights): rows and the prefix tree exactly as
    the transformers scorer builds them (runner/scoring.py), generation prompts grouped by their
    shared prefix as the engine groups them. `tokenizer`: a transformers tokenizer or a
    runner.tokens.Tokens (whose id cache is then reused). `prefix_cache=False`: what
    `--no-prefix-cache` computes. Raises EvalError for a request the scorer would refuse."""
    from .engine import generation_work
    from .scoring import scoring_work
    from .tokens import Tokens

    tokens = tokenizer if isinstance(tokenizer, Tokens) else Tokens(tokenizer)
    scored = [r for r in requests if isinstance(r, LoglikelihoodRequest)]
    generated = [r for r in requests if isinstance(r, GenerateRequest)]
    return scoring_work(scored, tokens, prefix_cache) + generation_work(generated, tokens, prefix_cache)


class Model(Protocol):
    """A loaded model, as the pipeline sees it.

    Attributes: `name` (the --model spec); `fingerprint` (a JSON-able dict of everything that
    determines a response: id, revision, dtype, backend, ...: the run's identity); `max_length` (the
    context in tokens: prompt + continuation, or prompt + max_new_tokens, must fit); `tokenizer` (the
    transformers tokenizer, for chat templates and the letter-token checks; None for a backend
    without one)."""

    name: str
    fingerprint: dict
    max_length: int
    tokenizer: Any

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as a whole prompt (BOS included where the model expects one)."""
        ...

    def count_tokens_many(self, texts: Sequence[str]) -> list[int]:
        """count_tokens of every text, in order, batched; the ids are kept (memory-bounded) so that
        scoring the same texts later does not tokenise them again."""
        ...

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        """log P(continuation | context) per request, in request order.

        Each response: `logprob` (natural log, summed over the continuation's tokens), `is_greedy`
        (every continuation token is the argmax), `n_tokens`; with `whole_sequence`, also the context
        tokens' log-likelihood (`context_logprob`, tokens 2..N) and `n_context_tokens`. Context and
        continuation are tokenised as one string and split where the context's own tokens end.
        Raises EvalError (naming the request's key) for a request longer than `max_length`, a
        continuation that adds no token or holds a special token, or one that cannot fit in memory."""
        ...

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        """Greedy continuation of each prompt, in request order: text up to (not including) the first
        stop string, an end-of-sequence token or `max_new_tokens` tokens; `finish_reason` says which.
        Raises EvalError when a prompt plus its max_new_tokens exceed `max_length`."""
        ...

    def stop_at_tokens(self, ids: set[int]) -> None:
        """Generation also ends at these token ids from now on (a chat template's end-of-turn tokens)."""
        ...

    def counters(self) -> Work:
        """What this model has computed so far (all calls): requests answered, tokens computed after
        prefix sharing, padding, tokens generated. A run's MFU = FLOPs of these tokens / wall / peak."""
        ...


def load_model(spec: str, **kwargs) -> Model:
    """Load `spec` (hub id, local folder, .gguf file or alias) with the transformers backend.
    `fake:SEED[:opt=v...]` is the deterministic fake model of runner/fake.py (for tests);
    `random:ARCH[:layers=N]...` a random-weight model of a real architecture (runner/xverse.py).
    `dist` (dist.Dist, under torchrun): load on the rank's GPU, sharded over its TP group."""
    dist = kwargs.pop("dist", None)
    if spec.startswith("fake:"):
        from .fake import FakeModel

        return FakeModel.load(spec, **kwargs)
    if spec.startswith("random:"):
        from .xverse import load_random

        return load_random(spec, dist=dist, **kwargs)
    from .served import ServedModel, is_served

    if is_served(spec):  # an OpenAI-compatible server (runner/served.py)
        return ServedModel.load(spec, **kwargs)
    from .hf import HFModel

    if dist is None or not dist.active:
        return HFModel.load(spec, **kwargs)
    from .load import plan_and_load

    return plan_and_load(HFModel, spec, dist, **kwargs)


def model_identity(spec: str, **kwargs) -> dict | None:
    """The fingerprint `load_model(spec, **kwargs).fingerprint` will have, computed without loading
    the weights (runner/fingerprint.py), or None where only a loaded model knows it (random weights,
    a torchrun job). A resume with nothing left to compute uses it to find its finished run."""
    dist = kwargs.get("dist")
    from .served import is_served

    if spec.startswith("random:") or (dist is not None and dist.active) or is_served(spec):  # served: the server knows
        return None
    if spec.startswith("fake:"):
        from .fake import FakeModel

        return FakeModel.load(spec, **kwargs).fingerprint
    from .load import identify

    keys = ("device", "dtype", "revision", "model_args", "trust_remote_code")
    return identify(spec, **{k: kwargs[k] for k in keys if k in kwargs})[2]
