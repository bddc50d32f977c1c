"""Task base classes. A benchmark is one module in tasks/ plus one template in prompts/.

Phases, each a small method a task may override:
  load       samples()   -> Samples of the evaluated split, in published order, counts checked
  build      build()     -> the prompt and the Requests for one Sample (few-shot picked, too-long
                            prompts lose shots the way the reference does)
  score      score_all() -> one Record per Sample from its Responses
  aggregate  aggregate() -> the TaskResult, averaged the way the benchmark averages
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Sequence

from . import metrics, prompts
from .data import DataSource
from .errors import EvalError
from .types import GenerateRequest, Generation, Loglikelihood, LoglikelihoodRequest, Record, Request, Response, Sample, TaskResult

Fits = Callable[[str], bool]


def always_fits(text: str) -> bool:
    return True


class TokenLimit:
    """`fits` for a model: a text fits when it has at most `limit` tokens (the model's tokenizer,
    special tokens included). Tasks whose length rule needs the counts themselves (CMMLU drops the
    longest shot, AGIEval counts the demo block) read `count` and `limit`."""

    def __init__(self, count: Callable[[str], int], limit: int):
        self.count = count
        self.limit = limit

    def __call__(self, text: str) -> bool:
        return self.count(text) <= self.limit


@dataclass
class Prepared:
    """A Sample made ready for the model: its prompt (the shared context) and its Requests."""

    sample: Sample
    prompt: str
    requests: list[Request]
    shots: int
    notes: list[str] = field(default_factory=list)


class Task:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    shots: ClassVar[int] = 0
    split: ClassVar[str] = "test"
    fewshot_split: ClassVar[str | None] = None
    data_folder: ClassVar[str] = ""  # folder under --data-dir, as in ../shared/data
    expected_count: ClassVar[int | None] = None  # size of the full evaluated split
    variants: ClassVar[dict[str, str]] = {"default": "the protocol behind the reported number"}
    metric: ClassVar[str] = "acc"
    source: ClassVar[str] = ""  # where the protocol comes from

    def __init__(self, data_dir: str | None = None, subsets: Sequence[str] | None = None, variant: str = "default", **options: Any):
        if variant not in self.variants:
            raise EvalError(f"unknown variant {variant!r} for task {self.name}; known: {', '.join(self.variants)}")
        self.variant = variant
        self.data = DataSource(self.name, self.data_folder, data_dir)
        self.options = options
        known = self.all_subsets()
        for subset in subsets or ():
            if subset not in known:
                import difflib

                close = difflib.get_close_matches(subset, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                if known == [""]:
                    hint = "; it has no subsets"
                elif len(known) <= 20:
                    hint += f" (subsets: {', '.join(known)})"
                else:
                    hint += f" ({len(known)} subsets: see `xverse-eval list {self.name}`)"
                raise EvalError(f"unknown subset {subset!r} of task {self.name}{hint}")
        self.subsets = list(subsets) if subsets else known

    # ------------------------------------------------------------------ load

    @classmethod
    def all_subsets(cls) -> list[str]:
        return [""]

    def load_split(self, subset: str, split: str) -> list[Sample]:
        raise NotImplementedError

    def samples(self, limit: int | None = None) -> list[Sample]:
        """The evaluated split of the selected subsets; `limit` keeps the first N of each subset."""
        out: list[Sample] = []
        for subset in self.subsets:
            items = self.load_split(subset, self.split)
            if not items:
                raise EvalError(f"{self.name}{':' + subset if subset else ''}: the {self.split} split is empty ({self.data.describe()})")
            out.extend(items[:limit] if limit else items)
        ids = [s.id for s in out]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise EvalError(f"{self.name}: duplicate item id {dup!r}")
        if self.expected_count and not limit and self.subsets == self.all_subsets() and len(out) != self.expected_count:
            raise EvalError(f"{self.name}: {len(out)} items in the {self.split} split, expected {self.expected_count} ({self.data.describe()})")
        return out

    def sample_at(self, subset: str, index: int) -> Sample:
        items = self.load_split(subset, self.split)
        if not 0 <= index < len(items):
            raise EvalError(f"{self.name}{':' + subset if subset else ''}: --index {index} is out of range (0..{len(items) - 1})")
        return items[index]

    # ------------------------------------------------------------------ build

    def fewshot(self, sample: Sample) -> list[Sample]:
        """The first `shots` items of the few-shot split of the sample's subset (file order)."""
        if not self.shots:
            return []
        pool = self._fewshot_pool(sample.subset)
        if len(pool) < self.shots:
            raise EvalError(f"{self.name}:{sample.subset}: {self.shots} shots asked for, but the {self.fewshot_split} split has {len(pool)}")
        return pool[: self.shots]

    def _fewshot_pool(self, subset: str) -> list[Sample]:
        cache = self.__dict__.setdefault("_pools", {})
        if subset not in cache:
            cache[subset] = self.load_split(subset, self.fewshot_split) if self.fewshot_split else []
        return cache[subset]

    def render(self, sample: Sample, shots: Sequence[Sample], choice: int | None = None) -> str:
        return prompts.render(self.name, doc=sample, shots=list(shots), choice=choice, variant=self.variant, task=self)

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        raise NotImplementedError

    def key(self, sample: Sample, j: int) -> str:
        return f"{self.name}/{sample.id}/{j}"

    # ------------------------------------------------------------------ score

    def score(self, item: Prepared, responses: list[Response]) -> Record:
        raise NotImplementedError

    def score_all(self, items: list[Prepared], responses: list[list[Response]]) -> list[Record]:
        return [self.score(item, resp) for item, resp in zip(items, responses)]

    # ------------------------------------------------------------------ aggregate

    def aggregate(self, records: list[Record], limit: int | None = None) -> TaskResult:
        """Micro average over items, plus one group per subset."""
        values = [float(r.correct) for r in records]
        groups = {
            name: {"acc": metrics.mean(v), "n": len(v)}
            for name, v in sorted(metrics.group_by((r.subset, float(r.correct)) for r in records).items())
            if name
        }
        return self.result({"acc": metrics.mean(values), "acc_stderr": metrics.stderr(values)}, groups, records, limit)

    def result(self, values: dict[str, float], groups: dict, records: list[Record], limit: int | None, metric: str | None = None, notes: Sequence[str] = ()) -> TaskResult:
        shots_used = sorted({r.extra.get("shots", self.shots) for r in records})
        notes = list(notes)
        if shots_used and shots_used != [self.shots]:
            notes.append(f"shots used per item: {min(shots_used)}-{max(shots_used)} (prompts over the length limit dropped shots)")
        return TaskResult(
            task=self.name, version=self.version, metric=metric or self.metric, metrics=values, groups=groups,
            n=len(records), shots=self.shots, variant=self.variant, prompt_hash=self.prompt_hash,
            data_revision=self.data.revision(), split=self.split, limit=limit, notes=tuple(notes),
        )

    @cached_property
    def prompt_hash(self) -> str:
        return prompts.template_hash(self.name)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "version": self.version, "shots": self.shots, "split": self.split,
                "fewshot_split": self.fewshot_split, "variants": list(self.variants), "metric": self.metric}


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (numpy's rule, which the references use)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


class MultipleChoiceTask(Task):
    """Choices scored by log-likelihood. Three formulations:

    letters             next-token log-prob of each answer letter at the end of the prompt (hendrycks/test):
                        every continuation must be exactly one token, else the tokenizer lacks the letter.
    continuation        log P(choice text | context); acc and length-normalised acc_norm (lm-eval).
    whole_sequence_ppl  mean log-prob over every token of context+choice (OpenCompass PPL mode, 2023).

    The template renders the shared context with `choice=None` and the whole scored string with
    `choice=j`; the continuation is the difference, so the exact scored string is in one file.
    """

    formulation: ClassVar[str] = "letters"
    max_prompt_tokens: ClassVar[int | None] = None  # drop shots while the prompt is longer (tokens)

    def drop_shot(self, shots: list[Sample]) -> list[Sample]:
        """Which shot goes when the prompt is too long: the last one (hendrycks/test)."""
        return shots[:-1]

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        shots = self.fewshot(sample)
        context = self.render(sample, shots)
        while shots and not fits(context):
            shots = self.drop_shot(shots)
            context = self.render(sample, shots)
        requests: list[Request] = []
        for j in range(len(sample.choices)):
            whole = self.render(sample, shots, choice=j)
            if not whole.startswith(context):
                raise EvalError(f"prompts/{self.name}.jinja: the string for choice {j} does not start with the shared context")
            requests.append(LoglikelihoodRequest(self.key(sample, j), context, whole[len(context):],
                                                 whole_sequence=self.formulation == "whole_sequence_ppl"))
        return Prepared(sample, context, requests, len(shots))

    def choice_scores(self, item: Prepared, responses: list[Loglikelihood]) -> dict[str, list[float]]:
        if self.formulation == "letters":
            for req, resp in zip(item.requests, responses):
                if resp.n_tokens != 1:
                    raise EvalError(f"{self.name}: request {req.key}: the answer {req.continuation!r} is {resp.n_tokens} tokens after the prompt for this tokenizer; letter scoring needs exactly one")
            return {"logprob": [r.logprob for r in responses]}
        if self.formulation == "continuation":
            return {"logprob": [r.logprob for r in responses],
                    # lm-eval's acc_norm: divided by the characters of the choice text (no delimiter)
                    "logprob_per_char": [r.logprob / max(1, len(c)) for c, r in zip(item.sample.choices, responses)]}
        if self.formulation == "whole_sequence_ppl":
            return {"mean_logprob": [(r.context_logprob + r.logprob) / (r.n_context_tokens + r.n_tokens) for r in responses]}
        raise EvalError(f"{self.name}: unknown formulation {self.formulation!r}")

    def score(self, item: Prepared, responses: list[Response]) -> Record:
        scores = self.choice_scores(item, responses)  # type: ignore[arg-type]
        first = next(iter(scores))
        pred = argmax(scores[first])
        extra: dict[str, Any] = {"shots": item.shots, "choice_scores": scores}
        values: dict[str, Any] = {"acc": float(pred == item.sample.target)}
        if "logprob_per_char" in scores:
            values["acc_norm"] = float(argmax(scores["logprob_per_char"]) == item.sample.target)
        return Record(self.name, item.sample.subset, item.sample.index, item.sample.id, item.prompt, prompts.sha256(item.prompt)[:16],
                      prediction=pred, target=item.sample.target, correct=pred == item.sample.target, scores=values, extra=extra)


class GenerationTask(Task):
    """Greedy generation, then an answer extracted from the text and compared with the target."""

    max_new_tokens: ClassVar[int] = 512
    stop: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str] = "acc"

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        shots = self.fewshot(sample)
        prompt = self.render(sample, shots)
        return Prepared(sample, prompt, [GenerateRequest(self.key(sample, 0), prompt, self.max_new_tokens, self.stop)], len(shots))

    def extract(self, text: str) -> str:
        raise NotImplementedError

    def score(self, item: Prepared, responses: list[Response]) -> Record:
        gen: Generation = responses[0]  # type: ignore[assignment]
        pred = self.extract(gen.text)
        correct = pred == item.sample.target
        return Record(self.name, item.sample.subset, item.sample.index, item.sample.id, item.prompt, prompts.sha256(item.prompt)[:16],
                      prediction=pred, target=item.sample.target, correct=correct, scores={"acc": float(correct)},
                      extra={"shots": item.shots, "generation": gen.text, "finish_reason": gen.finish_reason, "n_tokens": gen.n_tokens})


def safe_mean(values: list[float]) -> float:
    return metrics.mean(values) if values else math.nan
