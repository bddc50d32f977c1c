"""Task base classes. A benchmark is one module in tasks/ plus one template in prompts/.

Phases, each a small method a task may override:
  load       load_split() / samples() -> Samples of the evaluated split, in published order, counts checked
  build      fewshot() -> choose_shots() -> render() -> build(): the prompt and the Requests for one
             Sample (too-long prompts lose shots the way the reference does; xverse_eval/build.py
             runs this for every sample, with token counts done in batches)
  score      score() per item, score_all() for the task: one Record per Sample from its Responses,
             each with the `weight` that makes the headline their weighted mean
  aggregate  aggregate() -> the TaskResult, averaged the way the task declares (`average`)

A task declares its protocols as `variants`: name -> Variant (a one-line description plus the class
settings it changes: shots, split, metric, formulation, expected size, and task-specific `fields`),
so a task's code reads settings, not variant names.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Mapping, Sequence

from . import metrics, prompts
from .data import DataSource
from .errors import EvalError
from .types import GenerateRequest, Generation, Loglikelihood, LoglikelihoodRequest, Record, Request, Response, Sample, TaskResult

Fits = Callable[[str], bool]
AVERAGES = ("micro", "macro", "weighted")


def always_fits(text: str) -> bool:
    """The `fits` of a build without a tokenizer (or a task without a length rule): every text fits."""
    return True


class TokenLimit:
    """`fits` for a model: a text fits when it has at most `limit` tokens (the model's tokenizer,
    special tokens included). Tasks whose length rule needs the counts themselves (CMMLU drops the
    longest shot, AGIEval counts the demo block) read `count` and `limit`. `count` is any
    str -> int; xverse_eval/build.py passes one whose counts were made in batches beforehand."""

    def __init__(self, count: Callable[[str], int], limit: int):
        self.count = count
        self.limit = limit

    def __call__(self, text: str) -> bool:
        return self.count(text) <= self.limit


class _Keep:
    """Marks a Variant setting left as the class declares it (None is a value: no expected count)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()
VARIANT_SETTINGS = ("shots", "split", "fewshot_split", "metric", "formulation", "expected_count", "max_prompt_tokens",
                    "max_new_tokens", "stop")


class Variant(str):
    """One protocol of a task: its one-line description (the string itself: what `xverse-eval list`
    and the report show) plus the class settings it changes.

    `Variant(doc, shots=8, metric="acc_norm", ..., fields={...})`: any of VARIANT_SETTINGS not given
    keeps the class's value; `fields` holds task-specific settings (a data folder, an extractor, a
    prompt style), read by the task as `self.protocol.fields[...]` / `self.setting(...)` and by its
    template as `protocol.fields`. Immutable. A plain string in `variants` is a Variant that changes
    nothing."""

    def __new__(cls, doc: str, fields: Mapping[str, Any] | None = None, **settings: Any):
        unknown = set(settings) - set(VARIANT_SETTINGS)
        if unknown:
            raise TypeError(f"Variant: unknown setting(s) {', '.join(sorted(unknown))} (settings: {', '.join(VARIANT_SETTINGS)}; others go in fields=)")
        self = super().__new__(cls, doc)
        object.__setattr__(self, "settings", {k: v for k, v in settings.items() if v is not KEEP})
        object.__setattr__(self, "fields", dict(fields or {}))
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Variant is immutable")

    @property
    def doc(self) -> str:
        """The one-line description."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Variant({self.doc!r}, settings={self.settings!r}, fields={self.fields!r})"

    def __reduce__(self):  # pickle and copy: rebuilt through __new__ (the attributes are read-only)
        return _variant, (self.doc, self.fields, self.settings)


def _variant(doc: str, fields: Mapping[str, Any], settings: Mapping[str, Any]) -> Variant:
    return Variant(doc, fields, **settings)


@dataclass
class Shots:
    """What `choose_shots` decided for one sample: the shots kept (in prompt order), notes on the
    decision (recorded with the item), extra template variables (CMMLU's `header`), and the
    context those render to when the rule rendered it already (else None)."""

    samples: list[Sample]
    notes: list[str] = field(default_factory=list)
    render: dict[str, Any] = field(default_factory=dict)
    context: str | None = None


@dataclass
class Prepared:
    """A Sample made ready for the model: its prompt (the shared context) and its Requests.
    `shots` is how many shots the prompt holds; `notes` say what the build decided about this item
    (shots dropped, the item among its own shots); `shot_ids` the ids of those shots."""

    sample: Sample
    prompt: str
    requests: list[Request]
    shots: int
    notes: list[str] = field(default_factory=list)
    shot_ids: tuple[str, ...] = ()


class Task:
    """A benchmark: class settings, the load/build/score/aggregate hooks, and its declared protocols.

    Class settings (a Variant may change the starred ones): name, version, shots*, split*,
    fewshot_split* (None: no pool), data_folder (under --data-dir), expected_count* (items of the full
    evaluated split; None: unchecked), metric* (the headline key of TaskResult.metrics and of every
    Record's scores), average ("micro" over items | "macro" over subsets | "weighted": subsets by
    `subset_weight`), source (where the protocol comes from), variants (name -> Variant).
    An instance holds `variant` (the chosen name), `protocol` (its Variant, whose settings it has
    applied to itself), `subsets` and `options`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    shots: ClassVar[int] = 0
    split: ClassVar[str] = "test"
    fewshot_split: ClassVar[str | None] = None
    data_folder: ClassVar[str] = ""  # folder under --data-dir, as published
    expected_count: ClassVar[int | None] = None  # size of the full evaluated split
    variants: ClassVar[dict[str, str]] = {"default": "the protocol behind the reported number"}
    metric: ClassVar[str] = "acc"
    average: ClassVar[str] = "micro"
    source: ClassVar[str] = ""  # where the protocol comes from
    needs_sandbox: ClassVar[bool] = False  # CodeTask: the pipeline passes `sandbox=`

    def __init__(self, data_dir: str | None = None, subsets: Sequence[str] | None = None, variant: str = "default", **options: Any):
        """`data_dir`: the benchmarks in their published layout (None: the hub, where the task has a
        loader); `subsets`: some of `all_subsets()` (None: all); `variant`: a key of `variants`;
        `options`: task-specific (e.g. allow_hub). Raises EvalError for an unknown variant or subset."""
        if variant not in self.variants:
            raise EvalError(f"unknown variant {variant!r} for task {self.name}; known: {', '.join(self.variants)}")
        if self.average not in AVERAGES:
            raise EvalError(f"task {self.name}: average {self.average!r} is not one of {', '.join(AVERAGES)}")
        self.variant = variant
        declared = self.variants[variant]
        self.protocol = declared if isinstance(declared, Variant) else Variant(declared)
        for key, value in self.protocol.settings.items():
            setattr(self, key, value)
        self.data = DataSource(self.name, self.data_folder, data_dir)
        self.options = options
        self.subsets = self._check_subsets(subsets)

    def _check_subsets(self, subsets: Sequence[str] | None) -> list[str]:
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
        return list(subsets) if subsets else known

    def setting(self, key: str, default: Any = None) -> Any:
        """A task-specific setting of the chosen variant (`Variant(fields=...)`), else `default`."""
        return self.protocol.fields.get(key, default)

    # ------------------------------------------------------------------ load

    @classmethod
    def all_subsets(cls) -> list[str]:
        """Every subset name, in the order results list them; [""] for a task without subsets."""
        return [""]

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The Samples of one subset's split, in published order (`index` = 0-based position in the
        published file). Raises EvalError naming the file and item for malformed data."""
        raise NotImplementedError

    def samples(self, limit: int | float | None = None) -> list[Sample]:
        """The evaluated split of the selected subsets. `limit`: an int N keeps the first N of each
        subset; a float in (0, 1) keeps the first ceil(len * limit) of each (lm-eval's rule).
        Raises EvalError for an empty split, duplicate ids, a bad limit, or (without limit, all
        subsets) a count other than `expected_count`."""
        if limit is not None and not (isinstance(limit, int) and limit > 0 or isinstance(limit, float) and 0 < limit < 1):
            raise EvalError(f"--limit must be a positive whole number or a fraction in (0, 1), got {limit}")
        out: list[Sample] = []
        for subset in self.subsets:
            items = self.load_split(subset, self.split)
            if not items:
                raise EvalError(f"{self.name}{':' + subset if subset else ''}: the {self.split} split is empty ({self.data.describe()})")
            out.extend(items[: limit_count(len(items), limit)])
        ids = [s.id for s in out]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise EvalError(f"{self.name}: duplicate item id {dup!r}")
        if self.expected_count and not limit and self.subsets == self.all_subsets() and len(out) != self.expected_count:
            raise EvalError(f"{self.name}: {len(out)} items in the {self.split} split, expected {self.expected_count} ({self.data.describe()})")
        return out

    def sample_at(self, subset: str, index: int) -> Sample:
        """The item at 0-based `index` of the published file of the evaluated split (show-prompt)."""
        items = self.load_split(subset, self.split)
        if not 0 <= index < len(items):
            raise EvalError(f"{self.name}{':' + subset if subset else ''}: --index {index} is out of range (0..{len(items) - 1})")
        return items[index]

    # ------------------------------------------------------------------ build

    def fewshot(self, sample: Sample) -> list[Sample]:
        """The first `shots` items of the few-shot split of the sample's subset (file order), the
        sample itself excluded by id (a pool that is the evaluated split then gives the next one).
        Raises EvalError when the pool has too few."""
        if not self.shots:
            return []
        pool = [s for s in self.fewshot_pool(sample.subset) if s.id != sample.id]
        if len(pool) < self.shots:
            raise EvalError(f"{self.name}:{sample.subset}: {self.shots} shots asked for, but the {self.fewshot_split} split has {len(pool)} (other than the item)")
        return pool[: self.shots]

    def fewshot_pool(self, subset: str) -> list[Sample]:
        """The candidate shots of a subset, in order: its `fewshot_split` (read once), or none."""
        cache = self.__dict__.setdefault("_pools", {})
        if subset not in cache:
            cache[subset] = self.load_split(subset, self.fewshot_split) if self.fewshot_split else []
        return cache[subset]

    def shot_is_item(self, sample: Sample, shot: Sample) -> bool:
        """Whether `shot` is the evaluated item itself. By id here (fewshot() never returns it);
        a task whose reference keeps such a shot (AGIEval's demos) compares content, and the build
        records the item in its notes."""
        return shot.id == sample.id

    def render(self, sample: Sample, shots: Sequence[Sample], choice: int | None = None, **extra: Any) -> str:
        """The prompt text from prompts/<name>.jinja: the shared context (`choice=None`) or the whole
        scored string for choice `choice`. Templates see doc, shots, choice, variant (its name),
        protocol (the Variant), task, LETTERS and `extra` (e.g. a task's own variables)."""
        own = {**self.render_vars(sample), **extra}
        common = {"variant": self.variant, "protocol": self.protocol, "task": self}
        head = self._head(sample, shots, own, common) if prompts.has_parts(self.name) else None
        if head is None:
            return prompts.render(self.name, doc=sample, shots=list(shots), choice=choice, **common, **own)
        return head + prompts.render_block(self.name, "question", doc=sample, shots=list(shots), choice=choice, **common, **own)

    def _head(self, sample: Sample, shots: Sequence[Sample], own: dict[str, Any], common: dict[str, Any]) -> str | None:
        """The head block (header and shots), rendered once per subset, shots and task variables;
        None when those cannot key a cache (an unhashable variable): the whole template then."""
        key = (sample.subset, tuple(shots), tuple(sorted(own.items())))
        heads = self.__dict__.setdefault("_heads", {})
        try:
            head = heads.get(key)
        except TypeError:
            return None
        if head is None:
            if len(heads) >= 4096:  # shots that change per item (none of the built-in tasks): keep memory bounded
                heads.clear()
            head = heads[key] = prompts.render_block(self.name, "head", doc=prompts.SubsetOnly(sample.subset), shots=list(shots), **common, **own)
        return head

    def render_vars(self, sample: Sample) -> dict[str, Any]:
        """Extra template variables a task computes from the sample (AGIEval's language, CMMLU's
        Chinese subject name); none by default."""
        return {}

    def choose_shots(self, sample: Sample, fits: Fits = always_fits) -> Shots:
        """The shots the prompt holds: `fewshot(sample)` as long as the prompt fits; while it does
        not, `drop_shot` removes one (hendrycks/test drops the last). The override point for other
        length rules (CMMLU drops the longest, AGIEval counts the demo block)."""
        shots = self.fewshot(sample)
        context = self.render(sample, shots)
        while shots and not fits(context):
            shots = self.drop_shot(shots)
            context = self.render(sample, shots)
        return Shots(shots, context=context)

    def drop_shot(self, shots: list[Sample]) -> list[Sample]:
        """Which shot goes when the prompt is too long: the last one (hendrycks/test)."""
        return shots[:-1]

    def length_texts(self, sample: Sample) -> list[str]:
        """The texts whose token counts `choose_shots` asks for first (build.py counts them for every
        sample in one batch before building); the full few-shot prompt by default. Only speed
        depends on this list: a text it misses is counted when asked."""
        return [self.render(sample, self.fewshot(sample))] if self.shots else []

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        """Prompt and Requests for one sample; `fits(text)` says whether a prompt is short enough."""
        raise NotImplementedError

    def prepared(self, sample: Sample, prompt: str, requests: list[Request], chosen: Shots) -> Prepared:
        """A Prepared from the build's parts; notes the item when it is among its own shots."""
        notes = list(chosen.notes)
        own = [k + 1 for k, s in enumerate(chosen.samples) if self.shot_is_item(sample, s)]
        if own:
            notes.append(f"the item is also shot {', '.join(map(str, own))} of its prompt (as the reference protocol builds it)")
        return Prepared(sample, prompt, requests, len(chosen.samples), notes, tuple(s.id for s in chosen.samples))

    def key(self, sample: Sample, j: int) -> str:
        """The stable key of request `j` of `sample` (task/sample id/index)."""
        return f"{self.name}/{sample.id}/{j}"

    # ------------------------------------------------------------------ score

    def score(self, item: Prepared, responses: list[Response]) -> Record:
        """The Record of one item from the Responses to its requests (in request order)."""
        raise NotImplementedError

    def score_many(self, items: list[Prepared], responses: list[list[Response]]) -> list[Record]:
        """Records of all items (CodeTask runs its programs together here); `score` per item."""
        return [self.score(item, resp) for item, resp in zip(items, responses)]

    def score_all(self, items: list[Prepared], responses: list[list[Response]]) -> list[Record]:
        """One Record per item, each with its `weight` (see `weights`): what samples/<task>.jsonl holds."""
        records = self.score_many(items, responses)
        return [dataclasses.replace(r, weight=w) for r, w in zip(records, self.weights(records))]

    def record(self, item: Prepared, prediction: Any, correct: bool, scores: dict[str, Any], **extra: Any) -> Record:
        """The Record of `item`: prompt and its hash, shots, the item's build notes, and `extra`."""
        s = item.sample
        extra = {"shots": item.shots, **extra}
        if item.notes:
            extra["notes"] = list(item.notes)
        return Record(self.name, s.subset, s.index, s.id, item.prompt, prompts.sha256(item.prompt)[:16],
                      prediction=prediction, target=s.target, correct=correct, scores=scores, extra=extra)

    def weights(self, records: Sequence[Record]) -> list[float]:
        """Per-record weights w such that the headline == sum(w * scores[metric]) / sum(w), from the
        declared `average`: micro 1; macro 1/n of the record's subset; weighted subset_weight/n."""
        sizes: dict[str, int] = {}
        for r in records:
            sizes[r.subset] = sizes.get(r.subset, 0) + 1
        if self.average == "micro":
            return [1.0] * len(records)
        if self.average == "macro":
            return [1.0 / sizes[r.subset] for r in records]
        return [self.subset_weight(r.subset) / sizes[r.subset] for r in records]

    def subset_weight(self, subset: str) -> float:
        """The weight of a subset's accuracy in a "weighted" average (Gaokao: the file's points)."""
        raise NotImplementedError(f"task {self.name} declares average 'weighted' but no subset_weight")

    # ------------------------------------------------------------------ aggregate

    def headline(self, records: Sequence[Record], key: str | None = None) -> float:
        """The headline value of `key` (default: the metric) over records, averaged as declared:
        micro over items, the unweighted mean of subset means (subsets in `all_subsets()` order), or
        the subset means weighted by `subset_weight`. NaN for no records."""
        key = key or self.metric
        values = [score_of(r, key) for r in records]
        if not values:
            return math.nan
        if self.average == "micro":
            return metrics.mean(values)
        by_subset = self.by_subset(records, key)
        if self.average == "macro":
            return metrics.macro(by_subset)
        w = {s: self.subset_weight(s) for s in by_subset}
        return sum(w[s] * metrics.mean(v) for s, v in by_subset.items()) / sum(w.values())

    def by_subset(self, records: Sequence[Record], key: str | None = None) -> dict[str, list[float]]:
        """subset -> its records' `key` scores (default: the metric), subsets in `all_subsets()` order."""
        key = key or self.metric
        grouped = metrics.group_by((r.subset, score_of(r, key)) for r in records)
        order = {s: i for i, s in enumerate(self.all_subsets())}
        return {s: grouped[s] for s in sorted(grouped, key=lambda s: (order.get(s, len(order)), s))}

    def aggregate(self, records: list[Record], limit: int | float | None = None) -> TaskResult:
        """The TaskResult: the headline (as declared by `average`) with the items' stderr, plus one
        group per subset (micro within it)."""
        values = [score_of(r, self.metric) for r in records]
        groups = {name: {self.metric: metrics.mean(v), "n": len(v)} for name, v in sorted(self.by_subset(records).items()) if name}
        return self.result({self.metric: self.headline(records), f"{self.metric}_stderr": metrics.stderr(values)}, groups, records, limit)

    def result(self, values: dict[str, float], groups: dict, records: list[Record], limit: int | float | None, metric: str | None = None,
               notes: Sequence[str] = ()) -> TaskResult:
        """The TaskResult with this task's identity; adds the notes every task shares (shots dropped,
        items among their own shots)."""
        shots_used = sorted({r.extra.get("shots", self.shots) for r in records})
        notes = list(notes)
        if shots_used and shots_used != [self.shots]:
            notes.append(f"shots used per item: {min(shots_used)}-{max(shots_used)} (prompts over the length limit dropped shots)")
        own = [r.id for r in records if any("is also shot" in n for n in r.extra.get("notes", ()))]
        if own:
            notes.append(f"{len(own)} item(s) appear among their own shots, as the reference protocol builds them: {', '.join(own)}")
        return TaskResult(
            task=self.name, version=self.version, metric=metric or self.metric, metrics=values, groups=groups,
            n=len(records), shots=self.shots, variant=self.variant, prompt_hash=self.prompt_hash,
            data_revision=self.data.revision(), split=self.split, limit=limit, notes=tuple(notes), average=self.average,
        )

    @cached_property
    def prompt_hash(self) -> str:
        """Hash of the template file: changes whenever the prompt could change."""
        return prompts.template_hash(self.name)


def limit_count(n: int, limit: int | float | None) -> int:
    """How many of a subset's `n` items a --limit keeps: all (None), the first N (int), or
    ceil(n * f) for a fraction f in (0, 1), as lm-eval does."""
    if limit is None:
        return n
    if isinstance(limit, float):
        return min(n, math.ceil(n * limit))
    return min(n, limit)


def score_of(record: Record, key: str) -> float:
    """The record's per-item score for `key`, else its 0/1 correctness."""
    return float(record.scores[key]) if key in record.scores else float(record.correct)


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
                        The default.
    continuation        log P(choice text | context); acc and length-normalised acc_norm (lm-eval).
    whole_sequence_ppl  mean log-prob over every token of context+choice (OpenCompass PPL mode, 2023).

    The template renders the shared context with `choice=None` and the whole scored string with
    `choice=j`; the continuation is the difference, so the exact scored string is in one file.
    `max_prompt_tokens`: the length rule's limit (None: no rule).
    """

    formulation: ClassVar[str] = "letters"
    max_prompt_tokens: ClassVar[int | None] = None  # drop shots while the prompt is longer (tokens)

    def length_texts(self, sample: Sample) -> list[str]:
        """The full few-shot prompt when the task has a length rule (max_prompt_tokens), else nothing."""
        return super().length_texts(sample) if self.max_prompt_tokens else []

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        """choose_shots, then the shared context and one request per choice (choice_requests)."""
        chosen = self.choose_shots(sample, fits)
        context = chosen.context if chosen.context is not None else self.render(sample, chosen.samples, **chosen.render)
        return self.prepared(sample, context, self.choice_requests(sample, chosen, context), chosen)

    def choice_requests(self, sample: Sample, chosen: Shots, context: str) -> list[Request]:
        """One LoglikelihoodRequest per choice: the context and what the template adds for choice j.
        Raises EvalError when a choice's string does not start with the context."""
        requests: list[Request] = []
        for j in range(len(sample.choices)):
            whole = self.render(sample, chosen.samples, choice=j, **chosen.render)
            if not whole.startswith(context):
                raise EvalError(f"prompts/{self.name}.jinja: the string for choice {j} does not start with the shared context")
            requests.append(LoglikelihoodRequest(self.key(sample, j), context, whole[len(context):],
                                                 whole_sequence=self.formulation == "whole_sequence_ppl"))
        return requests

    def choice_scores(self, item: Prepared, responses: list[Loglikelihood]) -> dict[str, list[float]]:
        """Per-choice scores by formulation; the first key decides the prediction. Raises EvalError
        when letter scoring got an answer of other than one token."""
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
        """argmax of the first choice score (first on ties); acc, and acc_norm for `continuation`."""
        scores = self.choice_scores(item, responses)  # type: ignore[arg-type]
        pred = argmax(scores[next(iter(scores))])
        values: dict[str, Any] = {"acc": float(pred == item.sample.target)}
        if "logprob_per_char" in scores:
            values["acc_norm"] = float(argmax(scores["logprob_per_char"]) == item.sample.target)
        values.setdefault(self.metric, values["acc"])  # a weighted headline (Gaokao's acc_weighted) averages the item's acc
        return self.record(item, pred, pred == item.sample.target, values, choice_scores=scores)


class GenerationTask(Task):
    """Greedy generation, then an answer extracted from the text (`extract`) and compared with the
    target (`is_correct`). `max_new_tokens` and `stop` go into each GenerateRequest."""

    max_new_tokens: ClassVar[int] = 512
    stop: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str] = "acc"

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        """One GenerateRequest for the rendered prompt (no length rule)."""
        chosen = Shots(self.fewshot(sample))
        prompt = self.render(sample, chosen.samples)
        return self.prepared(sample, prompt, [GenerateRequest(self.key(sample, 0), prompt, self.max_new_tokens, self.stop)], chosen)

    def extract(self, text: str) -> str:
        """The answer in a generation (the task's post-processing)."""
        raise NotImplementedError

    def is_correct(self, prediction: str, target: Any) -> bool:
        """Whether the extracted answer counts as the target: string equality by default."""
        return prediction == target

    def score(self, item: Prepared, responses: list[Response]) -> Record:
        """extract, is_correct; the generation and how it finished are kept in the Record."""
        gen: Generation = responses[0]  # type: ignore[assignment]
        pred = self.extract(gen.text)
        correct = self.is_correct(pred, item.sample.target)
        return self.record(item, pred, correct, {self.metric: float(correct)},
                           generation=gen.text, finish_reason=gen.finish_reason, n_tokens=gen.n_tokens)


class CodeTask(GenerationTask):
    """Generation whose completions run as programs in the sandbox (pass@1).

    The pipeline sees `needs_sandbox` and passes the Sandbox as the constructor's `sandbox=` (until
    every caller does, `options["sandbox"]` is read too). A task gives `program(sample, completion)`
    (the text to run) besides `extract`; scoring runs every program together (sandbox.run_many)."""

    needs_sandbox: ClassVar[bool] = True
    metric: ClassVar[str] = "pass@1"

    def __init__(self, *args: Any, sandbox: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sandbox = sandbox

    @property
    def sandbox(self):
        """The Sandbox that runs the programs (xverse_eval.sandbox.Sandbox), or None before one is given."""
        return self._sandbox if self._sandbox is not None else self.options.get("sandbox")

    @sandbox.setter
    def sandbox(self, value) -> None:
        self._sandbox = value

    def program(self, sample: Sample, completion: str) -> str:
        """The program that checks `completion` of `sample` (its tests included)."""
        raise NotImplementedError

    def score_many(self, items: list[Prepared], responses: list[list[Response]]) -> list[Record]:
        """Every completion extracted, every program run in the sandbox, one Record each.
        Raises EvalError when no sandbox was given."""
        from .sandbox import run_many

        sandbox = self.sandbox
        if sandbox is None:
            raise EvalError(f"{self.name}: scoring runs model-written code and needs a sandbox (none was given)")
        completions = [self.extract(resp[0].text) for resp in responses]
        results = run_many(sandbox, [self.program(item.sample, c) for item, c in zip(items, completions)])
        records = []
        for item, resp, completion, result in zip(items, responses, completions, results):
            gen: Generation = resp[0]  # type: ignore[assignment]
            records.append(self.record(item, completion, result.passed, {self.metric: float(result.passed)},
                                       generation=gen.text, finish_reason=gen.finish_reason,
                                       result=result.outcome + (f": {result.detail}" if result.detail and not result.passed else ""),
                                       sandbox=sandbox.mode, attempts=result.attempts, sandbox_limits=sandbox.limits))
        return records


def safe_mean(values: list[float]) -> float:
    """mean, or NaN for no values."""
    return metrics.mean(values) if values else math.nan
