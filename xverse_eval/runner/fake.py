"""A deterministic fake model, for tests of everything around the model (resume, kills, bad input).

    --model fake:SEED[:option=value...]

Options: `sleep=S` seconds per batch (a window to kill a run mid-batch), `max_length=N` (context, in
fake tokens), `split_letters=1` (a tokenizer that splits " A" into two tokens). --batch-size sets the
requests per batch ("auto": 4). Responses depend only on the seed, the options that change answers
(not sleep or batch size) and the request text, so a killed and resumed run must reproduce an
uninterrupted one exactly. With $XVERSE_EVAL_FAKE_TRACE set, the key of every request the model
computes is appended to that file (one line each), so a test can see what a resumed run recomputed.

Fake tokens: a word, a digit, one other character, or one whitespace character, each with the
whitespace before it; the whole prompt gets a BOS token.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Sequence

from ..errors import EvalError
from ..progress import progress
from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest
from . import OnDone, Work

TOKEN = re.compile(r"\s?[^\W\d_]+|\s?\d|\s?[^\w\s]|\s?_|\s", re.UNICODE)
OPTIONS = {"sleep": float, "max_length": int, "split_letters": int}


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts`."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class FakeModel:
    """The fake backend behind the Model contract (see the module docstring); no tokenizer."""

    tokenizer = None

    def __init__(self, seed: str, sleep: float = 0.0, max_length: int = 4096, split_letters: int = 0, batch_size: str | int = "auto"):
        self.seed = seed
        self.sleep = sleep
        self.max_length = max_length
        self.split_letters = bool(split_letters)
        self.batch_size = batch_size if isinstance(batch_size, int) else 4
        self.name = f"fake:{seed}"
        self.fingerprint = {"model": self.name, "path": None, "gguf_file": None, "revision": None, "dtype": "float32",
                            "backend": "fake", "max_length": max_length, "split_letters": self.split_letters}
        self.stop_ids: set[int] = set()
        self._counters = Work()

    @classmethod
    def load(cls, spec: str, batch_size: str | int = "auto", **_ignored) -> "FakeModel":
        """Parse `fake:SEED[:option=value...]`; EvalError for an unknown option or a bad value."""
        _, _, rest = spec.partition(":")
        seed, *opts = rest.split(":")
        kwargs = {}
        for opt in opts:
            name, eq, value = opt.partition("=")
            if name not in OPTIONS or not eq:
                raise EvalError(f"--model {spec}: unknown fake-model option {opt!r} (known: {', '.join(OPTIONS)})")
            try:
                kwargs[name] = OPTIONS[name](value)
            except ValueError:
                raise EvalError(f"--model {spec}: option {name} needs a {OPTIONS[name].__name__}, got {value!r}") from None
        if not seed:
            raise EvalError(f"--model {spec}: use fake:SEED[:option=value...]")
        return cls(seed, batch_size=batch_size, **kwargs)

    # -- tokens

    def tokens(self, text: str) -> list[str]:
        """The fake tokens of `text` (no BOS)."""
        if self.split_letters:
            return list(text)
        return TOKEN.findall(text)

    def count_tokens(self, text: str) -> int:
        """Fake tokens of `text` as a whole prompt: BOS + its tokens."""
        return 1 + len(self.tokens(text))

    def count_tokens_many(self, texts: Sequence[str]) -> list[int]:
        """count_tokens of every text, in order."""
        return [self.count_tokens(t) for t in texts]

    def stop_at_tokens(self, ids: set[int]) -> None:
        """Recorded only: fake generations contain no token ids."""
        self.stop_ids.update(ids)

    def counters(self) -> Work:
        """Requests answered and their fake tokens (every token computed: nothing is shared)."""
        return self._counters

    # -- the contract

    def _batches(self, requests):
        return [list(range(k, min(k + self.batch_size, len(requests)))) for k in range(0, len(requests), self.batch_size)]

    def _run(self, requests, answer, on_done: OnDone | None, desc: str):
        results = [None] * len(requests)
        trace = os.environ.get("XVERSE_EVAL_FAKE_TRACE")
        bar = progress(len(requests), desc, "req")  # like the real backends, so progress output is testable here
        for batch in self._batches(requests):
            if self.sleep:
                time.sleep(self.sleep)
            done = [(i, answer(requests[i])) for i in batch]
            if trace:
                with open(trace, "a", encoding="utf-8") as fh:
                    fh.write("".join(requests[i].key + "\n" for i in batch))
            for i, resp in done:
                results[i] = resp
            if on_done:
                on_done([(requests[i], resp) for i, resp in done])
            bar.update(len(batch))
        bar.close()
        return results

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        """Deterministic responses from the seed and the request text (see Model.loglikelihood)."""
        for req in requests:  # like the transformers backend: every request is checked before any batch runs
            n = self.count_tokens(req.context + req.continuation)
            if n - 1 > self.max_length:
                raise EvalError(f"request {req.key}: {n} tokens exceed the model's context of {self.max_length}")

        def answer(req: LoglikelihoodRequest) -> Loglikelihood:
            n_cont = self.count_tokens(req.context + req.continuation) - self.count_tokens(req.context)
            u = _unit(self.seed, "ll", req.context, req.continuation)
            resp = Loglikelihood(-8.0 * u - 0.5 * n_cont, u < 0.25, n_cont)
            if req.whole_sequence:
                n_ctx = self.count_tokens(req.context)
                resp = Loglikelihood(resp.logprob, resp.is_greedy, n_cont, -2.0 * n_ctx * _unit(self.seed, "ctx", req.context), n_ctx)
            return resp

        n = sum(self.count_tokens(r.context + r.continuation) for r in requests)
        self._counters = self._counters + Work(len(requests), n, n)
        return self._run(requests, answer, on_done, "loglikelihood")

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        """Deterministic `    return N` texts cut at the request's stop strings (see Model.generate)."""
        for req in requests:
            n = self.count_tokens(req.prompt)
            if n + req.max_new_tokens > self.max_length:
                raise EvalError(f"request {req.key}: prompt of {n} tokens + {req.max_new_tokens} new tokens exceed the model's context of {self.max_length}")

        def answer(req: GenerateRequest) -> Generation:
            value = int(_unit(self.seed, "gen", req.prompt) * 1000)
            text = f"    return {value}\n\n# {value}\n"
            reason = "length"
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            return Generation(text, reason, len(self.tokens(text)))

        results = self._run(requests, answer, on_done, "generate")
        n = sum(self.count_tokens(r.prompt) for r in requests)
        self._counters = self._counters + Work(len(requests), n, n, sum(g.n_tokens for g in results))
        return results
