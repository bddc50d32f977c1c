"""Phase 2 of the pipeline, build: Samples -> Prepared items (prompt + Requests), for every task.

`build(task, samples, model, chat)` renders each sample's prompt through its task (few-shot picked,
too-long prompts lose shots the way the task's reference does), applies a chat template when asked,
refuses a tokenizer that breaks letter scoring, and marks the prefix the prompts of one subset share
so the runner can compute it once.

Speed (issue 17): a length rule's decisions come from exact token counts of the exact texts the old
one-item-at-a-time path counted, so they are the same; what changed is when the counting happens.
Before any item is built, every text each item's rule asks for first (`Task.length_texts`: the full
few-shot prompt; CMMLU's header, item and per-shot pieces; AGIEval's demo blocks) is counted in
one batched call (`Model.count_tokens_many`, which keeps the ids, so the scorer does not tokenise
those prompts again), each distinct text once; only a text the rule asks for afterwards (a prompt
that lost a shot) is counted on its own.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

from .errors import EvalError
from .task import Fits, Prepared, Task, TokenLimit, always_fits
from .types import Sample

Progress = Callable[[int, int], None]  # (items built so far, items in all)


class Uncounted(BaseException):
    """Raised by a deferring Counts for a text it has not counted yet: build.py catches it, counts
    every such text of a round in one batch and builds those items again. A BaseException, so a
    task's own `except Exception` cannot swallow it."""

    def __init__(self, text: str):
        self.text = text


class Counts:
    """Token counts of texts with `model`'s tokenizer (whole prompts, BOS included where the model
    adds one), each text counted once: `prefetch` counts many in one batched call. Callable:
    `counts(text) -> int`; a text not counted yet is counted alone, or, while `defer` is set, raises
    Uncounted so that the caller can batch it."""

    def __init__(self, model):
        self.model = model
        self.known: dict[str, int] = {}
        self.defer = False
        self.batches = 0

    def prefetch(self, texts: Sequence[str]) -> None:
        """Count the texts not counted yet, in one call (count_tokens_many where the model has it)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.known]
        if not todo:
            return
        many = getattr(self.model, "count_tokens_many", None)
        counts = many(todo) if many is not None else [self.model.count_tokens(t) for t in todo]
        self.known.update(zip(todo, counts))
        self.batches += 1

    def __call__(self, text: str) -> int:
        n = self.known.get(text)
        if n is None:
            if self.defer:
                raise Uncounted(text)
            n = self.known[text] = self.model.count_tokens(text)
        return n


def length_rule(task: Task, samples: Sequence[Sample], model) -> Fits:
    """The `fits` of task.build: a TokenLimit at the task's `max_prompt_tokens` whose counts for the
    texts the task names (`length_texts`) are made in one batch up front; `always_fits` without a
    model or a limit."""
    limit = getattr(task, "max_prompt_tokens", None)
    if model is None or not limit:
        return always_fits
    counts = Counts(model)
    counts.prefetch([text for s in samples for text in task.length_texts(s)])
    return TokenLimit(counts, limit)


def build_items(task: Task, samples: Sequence[Sample], fits: Fits, progress: Progress | None = None) -> list[Prepared]:
    """task.build of every sample, in rounds: an item whose length rule asks for a text not counted
    yet is put back, and the texts of the whole round are counted in one batch before its next
    attempt (the rule then decides on exactly the counts it would have got one by one)."""
    counts = getattr(fits, "count", None)
    deferring = isinstance(counts, Counts)
    items: list[Prepared | None] = [None] * len(samples)
    pending = list(range(len(samples)))
    done = 0
    while pending:
        asked: list[str] = []
        retry: list[int] = []
        if deferring:
            counts.defer = True
        try:
            for i in pending:
                try:
                    items[i] = task.build(samples[i], fits)
                except Uncounted as missing:
                    asked.append(missing.text)
                    retry.append(i)
                    continue
                done += 1
                if progress is not None and done % 1000 == 0:
                    progress(done, len(samples))
        finally:
            if deferring:
                counts.defer = False
        if asked:
            counts.prefetch(asked)
        pending = retry
    if progress is not None:
        progress(len(samples), len(samples))
    return items  # type: ignore[return-value]


def build(task: Task, samples, model=None, chat=None, progress: Progress | None = None) -> list[Prepared]:
    """Prompts and requests for `samples` (list[Sample]) of `task`, in order, one Prepared each.

    A prompt over the task's token limit (`max_prompt_tokens`) drops shots, counted with the
    tokenizer of `model` (no model: nothing is dropped). `chat` is a (ChatTemplate, ChatOptions)
    pair for --apply-chat-template: each built item is then rendered as a conversation
    (xverse_eval/chat.py) and the one-token letter check runs on that. `progress(done, total)`
    is called every 1,000 items and at the end. Raises EvalError for a template that breaks the
    shared-context rule or a tokenizer that breaks letter scoring."""
    items = build_items(task, samples, length_rule(task, samples, model), progress)
    if chat is not None:
        from . import chat as chat_mod

        items = [chat_mod.apply(task, item, *chat) for item in items]
    if model is not None and getattr(task, "formulation", None) == "letters":
        check_letter_tokens(task, items, model)
    return mark_shared_prefixes(items)


def check_letter_tokens(task: Task, items: Sequence[Prepared], model) -> None:
    """Letter scoring reads one next-token log-prob per answer: refuse a tokenizer that makes an
    answer letter more (or less) than one token after the prompt before any model work, not after
    it (checked on the first item of each subset; scoring checks every response again).
    Raises EvalError naming the request and the model."""
    seen: set[str] = set()
    checked = []
    for item in items:
        if item.sample.subset not in seen:
            seen.add(item.sample.subset)
            checked.extend(item.requests)
    counts = Counts(model)
    counts.prefetch([t for req in checked for t in (req.context, req.context + req.continuation)])
    for req in checked:
        n = counts(req.context + req.continuation) - counts(req.context)
        if n != 1:
            raise EvalError(f"{task.name}: request {req.key}: the answer {req.continuation!r} is {n} tokens after the prompt "
                            f"for the tokenizer of {model.name}; letter scoring needs exactly one")


def mark_shared_prefixes(items: list[Prepared]) -> list[Prepared]:
    """Tell the runner which leading text the prompts of one subset share (the k-shot block), so it
    can compute it once: sets `shared_prefix` on every request of a subset with 2+ items. Returns
    `items` (changed in place)."""
    by_subset: dict[str, list[Prepared]] = {}
    for item in items:
        by_subset.setdefault(item.sample.subset, []).append(item)
    for group in by_subset.values():
        if len(group) < 2:
            continue
        shared = os.path.commonprefix([g.prompt for g in group])
        if not shared:
            continue
        for item in group:
            item.requests = [dataclasses.replace(r, shared_prefix=shared) for r in item.requests]
    return items
