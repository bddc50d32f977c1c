"""The build phase as it was before issue 17, kept as a test-only oracle: one item at a time, every
length-rule text counted on its own with `model.count_tokens`, every prompt rendered from the whole
template (no head/question parts, no cached heads), shots picked by each task's old code.

tests/test_build.py checks that xverse_eval.build gives the same prompts, requests and shot counts.
"""
from __future__ import annotations

import dataclasses
import os

from xverse_eval import prompts
from xverse_eval.types import GenerateRequest, LoglikelihoodRequest


def render(task, sample, shots, choice=None, **extra) -> str:
    """The whole template, rendered in one go (what Task.render did before template parts)."""
    if task.name == "humaneval" and task.setting("instruct"):
        return task.render(sample, shots, choice)  # built in Python, no template
    return prompts.render(task.name, doc=sample, shots=list(shots), choice=choice, variant=task.variant, protocol=task.protocol,
                          task=task, **{**task.render_vars(sample), **extra})


def fewshot(task, sample) -> list:
    """The old shot selection of each task (no exclusion by id in the base class)."""
    if task.name == "gaokao":
        items = task._all_items(sample.subset)
        if task.variant == "loo":
            return [s for s in items if s.index != sample.index][: task.shots]
        return items[: task.shots]
    if task.name == "gaokao_english":
        return task.fewshot_pool("")[: task.shots]
    if task.name in ("agieval", "gsm8k"):
        return task.fewshot(sample)
    if not task.shots:
        return []
    return task.fewshot_pool(sample.subset)[: task.shots]


def build(task, samples, model=None) -> list[tuple[str, list, int]]:
    """(prompt, requests, shots) per sample, as the old evaluate.build made them (no chat template)."""
    limit = getattr(task, "max_prompt_tokens", None)
    count = model.count_tokens if (model is not None and limit) else None
    out = [build_one(task, s, count, limit) for s in samples]
    return mark_shared(task, samples, out)


def build_one(task, sample, count, limit):
    if task.name in ("gsm8k", "humaneval"):
        prompt = render(task, sample, [])
        req = GenerateRequest(task.key(sample, 0), prompt, task.max_new_tokens, tuple(task.stop))
        return prompt, [req], task.shots if task.name == "gsm8k" else 0
    shots, extra = fewshot(task, sample), {}
    if task.name == "cmmlu" and task.variant != "opencompass" and count is not None:
        end = render(task, sample, [], header=False)
        head = render(task, sample, [])[: -len(end)]
        start_end = count(head) + count(end)
        if start_end > limit:
            shots, extra = [], {"header": False}
        else:
            pieces = [(s, count(render(task, sample, [s], header=False)[: -len(end)])) for s in shots]
            while pieces and sum(n for _, n in pieces) >= limit - start_end:
                longest = max(n for _, n in pieces)
                pieces = [(s, n) for s, n in pieces if n != longest]
            shots = [s for s, _ in pieces]
    elif task.name == "agieval" and count is not None:
        n = 0
        for k in range(1, len(shots) + 1):
            if count(render(task, sample, shots[:k], demos_only=True)) < limit:
                n = k
            else:
                break
        shots = shots[:n]
    elif count is not None and task.name != "agieval":
        context = render(task, sample, shots)
        while shots and count(context) > limit:
            shots = shots[:-1]
            context = render(task, sample, shots)
    context = render(task, sample, shots, **extra)
    requests = []
    for j in range(len(sample.choices)):
        whole = render(task, sample, shots, choice=j, **extra)
        assert whole.startswith(context)
        requests.append(LoglikelihoodRequest(task.key(sample, j), context, whole[len(context):],
                                             whole_sequence=task.formulation == "whole_sequence_ppl"))
    return context, requests, len(shots)


def mark_shared(task, samples, built):
    by_subset: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_subset.setdefault(s.subset, []).append(i)
    out = list(built)
    for group in by_subset.values():
        if len(group) < 2:
            continue
        shared = os.path.commonprefix([built[i][0] for i in group])
        if not shared:
            continue
        for i in group:
            prompt, reqs, shots = out[i]
            out[i] = (prompt, [dataclasses.replace(r, shared_prefix=shared) for r in reqs], shots)
    return out
