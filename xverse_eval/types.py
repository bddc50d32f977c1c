"""The vocabulary of xverse-eval. Every module speaks in these types and nothing else.

Sample    one benchmark item, normalised by its task.
Request   what the model is asked: LoglikelihoodRequest or GenerateRequest.
Response  what the model answered: Loglikelihood or Generation.
Record    one line of per-sample output (samples/<task>.jsonl).
TaskResult a task's aggregate, with everything needed to say where the number came from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Sample:
    """One benchmark item.

    `index` is the 0-based position in the published file of the evaluated split (what
    `show-prompt --index` and `--limit` refer to); `id` is stable and unique within the task.
    `target` is a choice index for multiple choice, a string for generation tasks.
    """

    id: str
    index: int
    subset: str
    question: str
    choices: tuple[str, ...] = ()
    target: Any = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score log P(continuation | context).

    Whitespace at the boundary belongs to the continuation (" A" after "Answer:"), as in lm-eval.
    `shared_prefix` is the part of `context` that many requests share (the k-shot block); the runner
    may compute it once. `whole_sequence` asks also for the log-likelihood of the context tokens, for
    OpenCompass-style perplexity over the whole string.
    """

    key: str
    context: str
    continuation: str
    shared_prefix: str = ""
    whole_sequence: bool = False


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy generation of at most `max_new_tokens` new tokens.

    Generation may stop at the first of `stop` (the stop string and what follows are cut off); a task
    only sets `stop` where cutting there cannot change what it extracts.
    """

    key: str
    prompt: str
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    shared_prefix: str = ""


Request = Union[LoglikelihoodRequest, GenerateRequest]


@dataclass(frozen=True)
class Loglikelihood:
    """Sum of continuation token log-probs; `is_greedy` if every continuation token was the argmax.

    With `whole_sequence`, `context_logprob` sums the log-probs of context tokens 2..N and
    `n_context_tokens` counts every context token (BOS included), which is what OpenCompass divides by.
    """

    logprob: float
    is_greedy: bool
    n_tokens: int
    context_logprob: float | None = None
    n_context_tokens: int | None = None


@dataclass(frozen=True)
class Generation:
    """A greedy generation: the text (stop string and what follows cut off), why it ended, and its
    number of new tokens."""

    text: str
    finish_reason: str = "length"  # "length" | "stop" | "eos"
    n_tokens: int = 0


Response = Union[Loglikelihood, Generation]


def response_to_dict(response: Response) -> dict[str, Any]:
    """A Response as a JSON-able dict, with its kind."""
    return {"kind": type(response).__name__, **asdict(response)}


def response_from_dict(data: dict[str, Any]) -> Response:
    """The Response that response_to_dict wrote."""
    data = dict(data)
    kind = data.pop("kind")
    return {"Loglikelihood": Loglikelihood, "Generation": Generation}[kind](**data)


@dataclass(frozen=True)
class Record:
    """One line of samples/<task>.jsonl: everything needed to audit one item's score.

    `scores` holds the per-item value of the task's metrics (0/1 for accuracy and pass@1);
    `weight` is the item's share of the headline: the task's headline == sum(weight *
    scores[metric]) / sum(weight) (micro: 1; macro over subsets: 1/n of its subset; Gaokao: its
    file's points / n of the file), set by Task.score_all, which sees every record."""

    task: str
    subset: str
    index: int
    id: str
    prompt: str
    prompt_hash: str
    prediction: Any
    target: Any
    correct: bool
    scores: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict of samples/<task>.jsonl."""
        return asdict(self)


@dataclass(frozen=True)
class TaskResult:
    """A task's aggregate. Scores are fractions in [0, 1]; tables render them x100.

    `average` says how the headline `metrics[metric]` averages the items: "micro" (over items),
    "macro" (the unweighted mean of subset means) or "weighted" (subset means weighted as the task
    declares); the Records' `weight` reproduces it. `limit` is --limit as given (N or a fraction)."""

    task: str
    version: str
    metric: str  # name of the headline metric in `metrics`
    metrics: dict[str, float]
    groups: dict[str, dict[str, Any]]
    n: int
    shots: int
    variant: str
    prompt_hash: str
    data_revision: str
    split: str
    limit: int | float | None = None
    notes: tuple[str, ...] = ()
    average: str = "micro"

    @property
    def score(self) -> float:
        """The headline value, a fraction."""
        return self.metrics[self.metric]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict results.json holds per task."""
        return asdict(self)
