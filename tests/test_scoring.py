"""Shared-prefix scoring (the default) equals scoring each row whole, on the real SmolLM2 in float32
on CPU and real prompts; the prefix tree is built on token ids; batches and LM-head chunks do not
change a number."""
from __future__ import annotations

import pytest
import torch

from xverse_eval.evaluate import TaskSpec, build, make_task
from xverse_eval.runner.plan import Plan
from xverse_eval.runner.scoring import MIN_PREFIX, Row, build_tree, tree_tokens

# ----------------------------------------------------------------------------- the tree, on token ids


def rows_of(*seqs):
    return [Row(list(s), [(k, [len(s) - 1], [0], len(s))]) for k, s in enumerate(seqs)]


def test_tree_groups_neighbours_by_their_common_prefix_and_nests_where_it_pays():
    shots, article = list(range(100, 100 + 60)), list(range(500, 500 + 80))
    rows = rows_of(shots + [1, 2, 3],  # one k-shot block, three questions
                   shots + [1, 2, 4, 5],
                   shots + article + [7],  # ... two options of one article under it: a nested node
                   shots + article + [8, 9],
                   list(range(900, 900 + 50)))  # shares nothing
    top = build_tree(rows, shared=True)
    inner = [n for n in top if n.children]
    assert len(top) == 2 and len(inner) == 1
    block = inner[0]
    assert (block.start, block.end) == (0, 60) and block.ids == shots
    nested = [n for n in block.children if n.children]
    assert len(nested) == 1 and (nested[0].start, nested[0].end) == (60, 140)
    assert sorted((c.start, c.end) for c in nested[0].children) == [(140, 141), (140, 142)]
    leaves = [n for n in block.children if n.row is not None]
    assert sorted((c.start, c.end) for c in leaves) == [(60, 63), (60, 64)]
    # below MIN_PREFIX shared tokens, or without the rows to pay for a pass, rows stay whole
    short = build_tree(rows_of(shots[: MIN_PREFIX - 1] + [1], shots[: MIN_PREFIX - 1] + [2]), shared=True)
    assert [(n.start, n.end, n.row is not None) for n in short] == [(0, MIN_PREFIX, True)] * 2
    assert all(n.row is not None and n.start == 0 for n in build_tree(rows, shared=False))


def test_a_row_inside_another_rows_prefix_reads_from_the_shared_segment():
    base = list(range(10, 80))
    top = build_tree(rows_of(base, base + [1, 2], base + [3, 4]), shared=True)
    assert len(top) == 1 and (top[0].start, top[0].end) == (0, 70)
    assert sorted(c.width for c in top[0].children) == [0, 2, 2]


def test_batches_follow_the_token_budget_and_keep_the_order():
    from xverse_eval.runner.scoring import Node

    class Config:
        hidden_size, num_attention_heads, num_hidden_layers, vocab_size, intermediate_size = 64, 4, 2, 1000, 256

    class Model(torch.nn.Module):
        config = Config()

    plan = Plan(Model(), "cpu")
    budget = plan.token_budget()
    members = [Node([0] * w, 0, w) for w in (budget // 2, budget // 2, budget // 3, 5, 5)]
    batches = plan.batches(members)
    # the budget cuts after the two halves; the padding rule keeps the short rows out of the third's pass
    assert [len(b) for b in batches] == [2, 1, 2] and [m for b in batches for m in b] == members
    for b in batches:
        widths = [m.width for m in b]
        assert len(b) * max(widths) <= budget and len(b) * max(widths) - sum(widths) <= 0.25 * sum(widths)
    assert [len(b) for b in plan.batches(members, 2)] == [2, 2, 1]
    # packed passes (rows end to end) count real tokens only: the short rows join the third's pass
    assert [len(b) for b in plan.batches(members, packed=True)] == [2, 3]
    assert plan.head_chunk() == (96 << 20) // (12 * 1000)


# ----------------------------------------------------------------------------- the real model


def items_of(model, data_dir, spec: TaskSpec, limit: int, subsets: int | None = None):
    task = make_task(spec, data_dir)
    if subsets:
        task.subsets = task.subsets[:subsets]
    return task, build(task, task.samples(limit=limit), model)


def score_both(model, requests, **settings):
    saved = (model.prefix_cache, model.batch_size)
    try:
        model.prefix_cache, model.batch_size = True, settings.get("batch_size", "auto")
        shared = model.loglikelihood(requests)
        computed = model.scorer.stats["tokens"]
        model.prefix_cache = False
        plain = model.loglikelihood(requests)
        assert model.scorer.stats["tokens"] == sum(len(r.ids) for r in model.scorer._rows(requests))
    finally:
        model.prefix_cache, model.batch_size = saved
    return shared, plain, computed


def assert_same(task, items, shared, plain):
    at = 0
    for item in items:
        n = len(item.requests)
        a, b = shared[at : at + n], plain[at : at + n]
        at += n
        for x, y in zip(a, b):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
            assert (x.n_tokens, x.n_context_tokens, x.is_greedy) == (y.n_tokens, y.n_context_tokens, y.is_greedy)
            if x.context_logprob is not None:
                assert x.context_logprob == pytest.approx(y.context_logprob, abs=1e-4 * max(1, y.n_context_tokens))
        for name, values in task.choice_scores(item, a).items():
            reference = task.choice_scores(item, b)[name]
            assert max(range(n), key=values.__getitem__) == max(range(n), key=reference.__getitem__), (item.sample.id, name)


CASES = {
    # (task spec, items, subsets): the shared part each exercises
    "mmlu": (TaskSpec("mmlu"), 3, 1),  # 5-shot block per subject; the four letters read one row
    "race": (TaskSpec("race"), 2, None),  # article shared by questions, question by its options, whole sequence
    "csqa": (TaskSpec("csqa"), 2, None),  # fixed 7-shot block, whole sequence over it
    "piqa": (TaskSpec("piqa", variant="lm-eval"), 4, None),  # short goal shared by two solutions
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_prefix_path_equals_the_plain_path(smollm2, data_dir, name):
    spec, limit, subsets = CASES[name]
    task, items = items_of(smollm2, data_dir, spec, limit, subsets)
    requests = [r for item in items for r in item.requests]
    shared, plain, computed = score_both(smollm2, requests)
    assert_same(task, items, shared, plain)
    whole = sum(len(r.ids) for r in smollm2.scorer._rows(requests))
    if name != "piqa":  # PIQA's goals are shorter than MIN_PREFIX: nothing to share, the plain passes
        assert computed < 0.6 * whole, (computed, whole)


@pytest.mark.slow
def test_batch_size_does_not_change_a_response(smollm2, data_dir):
    task, items = items_of(smollm2, data_dir, TaskSpec("race"), 2)
    requests = [r for item in items for r in item.requests]
    saved = smollm2.batch_size
    try:
        runs = []
        for size in (1, 3, "auto"):  # shared path: article, then question nodes, then options
            smollm2.batch_size = size
            runs.append(smollm2.loglikelihood(requests))
    finally:
        smollm2.batch_size = saved
    for other in runs[1:]:
        assert_same(task, items, other, runs[0])


@pytest.mark.slow
def test_chunked_lm_head_equals_one_chunk(smollm2):
    ids = torch.tensor([smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is Rome.").input_ids])
    with torch.inference_mode():
        hidden = smollm2.decoder(input_ids=ids).last_hidden_state[0]
        full = torch.log_softmax(smollm2.model(input_ids=ids).logits[0].float(), dim=-1)
    index = torch.arange(ids.shape[1] - 1)
    targets = ids[0, 1:]
    one_lp, one_greedy = smollm2.scorer.read_positions(hidden, index, targets, chunk=len(index))
    for chunk in (1, 3, 7):
        lp, greedy = smollm2.scorer.read_positions(hidden, index, targets, chunk=chunk)
        assert torch.equal(greedy, one_greedy) and torch.allclose(lp, one_lp, atol=1e-5, rtol=0)
    # and both are the model's own log-softmax at those positions
    assert torch.allclose(one_lp, full[index, targets].double(), atol=1e-4, rtol=0)
    assert torch.equal(one_greedy, full[index].argmax(-1) == targets)


@pytest.mark.slow
def test_packed_passes_of_two_depths_equal_the_plain_path(smollm2, data_dir):
    """Real RACE text where the tree nests: the article (shared by 2 questions), each question with its
    options (shared by the 4 option texts scored as whole sequences after it). The packed passes mix
    the rows of two prefixes at depth 2; every number equals scoring each row whole."""
    from xverse_eval.types import LoglikelihoodRequest

    task, items = items_of(smollm2, data_dir, TaskSpec("race"), 2)
    requests = [LoglikelihoodRequest(f"{item.sample.id}/{k}", item.requests[0].context, " " + choice, whole_sequence=True)
                for item in items for k, choice in enumerate(item.sample.choices)]
    rows = smollm2.scorer._rows(requests)
    top = build_tree(rows, shared=True)
    depth2 = [c for n in top for c in n.children if c.children]
    assert len(top) == 1 and len(depth2) == 2  # one article, then its two questions, then their options
    seen = []
    original = smollm2.scorer._levels
    try:
        smollm2.scorer._levels = lambda batch, offsets: seen.append(len(batch)) or original(batch, offsets)
        shared, plain, computed = score_both(smollm2, requests)
    finally:
        del smollm2.scorer._levels
    assert seen[-1] > 4  # the last pass packs the option rows of both questions (one-token options end in their question's pass)
    for a, b in zip(shared, plain):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.n_tokens == b.n_tokens and a.is_greedy == b.is_greedy
        assert a.context_logprob == pytest.approx(b.context_logprob, abs=1e-4 * b.n_context_tokens)
    assert computed == tree_tokens(top) < 0.5 * sum(len(r.ids) for r in rows)


def test_work_counts_what_the_scorer_computes_from_the_tokenizer_alone(smollm2, data_dir):
    """runner.work (the dry run's figures: no weights) counts the scorer's rows and tree: MMLU's 5-shot
    block once per subject; distinct tokens are every row whole; --no-prefix-cache computes them all."""
    from xverse_eval.runner import work
    from xverse_eval.runner.tokens import Tokens

    task, items = items_of(smollm2, data_dir, TaskSpec("mmlu", ["anatomy", "virology"]), 3)
    requests = [r for item in items for r in item.requests]
    w = work(requests, smollm2.tokenizer)
    rows = smollm2.scorer._rows(requests)
    assert (w.requests, w.distinct_tokens) == (len(requests), sum(len(r.ids) for r in rows))
    assert w.computed_tokens == tree_tokens(build_tree(rows, shared=True)) < 0.6 * w.distinct_tokens
    assert work(requests, Tokens(smollm2.tokenizer), prefix_cache=False).computed_tokens == w.distinct_tokens


def test_token_ids_are_counted_once_and_reused(smollm2, data_dir):
    """count_tokens_many (what building requests calls) keeps the ids, bounded: the scorer's encode of
    the same contexts is then a cache hit, and a text beyond the budget pushes out the oldest."""
    from xverse_eval.runner.tokens import Tokens

    task, items = items_of(smollm2, data_dir, TaskSpec("mmlu", ["anatomy"]), 4)
    contexts = [item.requests[0].context for item in items]
    tokens = Tokens(smollm2.tokenizer)
    counts = tokens.count_many(contexts)
    assert counts == [len(smollm2.tokenizer(c, add_special_tokens=False).input_ids) for c in contexts]
    hits = tokens.cache.hits
    assert [tokens.encode(c) for c in contexts] == [smollm2.tokenizer(c, add_special_tokens=False).input_ids for c in contexts]
    assert tokens.cache.hits == hits + len(contexts)
    small = Tokens(smollm2.tokenizer, cache_tokens=max(counts) + 1)
    small.count_many(contexts)
    assert small.cache.held <= max(counts) + 1 and small.cache.length(contexts[-1]) == counts[-1] and small.cache.length(contexts[0]) is None
