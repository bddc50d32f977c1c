"""The build phase (xverse_eval/build.py, issue 17) and the task-side contract around it (issue 22,
issue 20 §8): the fast path gives the same prompts, requests and shot decisions as the old
one-item-at-a-time path (tests/build_reference.py) on every task, on real data, with the real
SmolLM2 tokenizer, under a limit tight enough that many items drop shots; counts are made in
batches; Records carry the weight that reproduces the headline; an item never is its own shot
unless the reference protocol builds it that way, and then the result says so."""
from __future__ import annotations

import json
import math
import statistics

import pytest

import build_reference
from xverse_eval import build as build_mod
from xverse_eval.errors import EvalError
from xverse_eval.evaluate import make_task, parse_tasks, run
from xverse_eval.registry import include_path
from xverse_eval.task import Variant
from xverse_eval.types import Record

# (task spec, items per subset): a few subsets of every task, each variant with its own shots or prompt
SPECS = [
    ("mmlu:anatomy:high_school_european_history:professional_law", 12),
    ("ceval:law:high_school_physics", 10),
    ("ceval:computer_network:variant=subject_key", 6),
    ("cmmlu:agronomy:chinese_history:college_law", 10),
    ("cmmlu:agronomy:variant=opencompass", 8),
    ("gaokao:2010-2022_History_MCQs:2010-2013_English_MCQs", 10),
    ("gaokao:2010-2022_Biology_MCQs:variant=loo", 10),
    ("gaokao_english", 20),
    ("gaokao_english:variant=agieval_demos", 10),
    ("agieval:lsat-rc:sat-en:sat-en-without-passage:gaokao-chemistry:logiqa-zh", 8),
    ("race", 8),
    ("csqa", 6), ("csqa:variant=c49e77", 6),
    ("piqa", 6), ("piqa:variant=lm-eval", 6), ("piqa:variant=0cfff2", 6),
    ("gsm8k", 4), ("humaneval", 4), ("humaneval:variant=instruct", 2),
]


def task_of(spec: str, data_dir: str):
    return make_task(parse_tasks(spec)[0], data_dir)


def tighten(task, samples, model) -> None:
    """A limit at the median length of the texts the rule counts, so about half the items drop."""
    if getattr(task, "max_prompt_tokens", None):
        # CMMLU's official rule counts header, item and each shot apart: the limit splits their sums
        pieces = task.name == "cmmlu" and not task.setting("opencompass")
        need = [sum(model.count_tokens_many(task.length_texts(s) if pieces else task.length_texts(s)[-1:])) for s in samples]
        task.max_prompt_tokens = int(statistics.median(need))


@pytest.mark.slow
@pytest.mark.parametrize("spec,n", SPECS, ids=[s for s, _ in SPECS])
def test_fast_build_equals_the_reference_path(spec, n, data_dir, smollm2):
    task, oracle = task_of(spec, data_dir), task_of(spec, data_dir)
    samples = task.samples(n)
    tighten(task, samples, smollm2)
    oracle.max_prompt_tokens = getattr(task, "max_prompt_tokens", None)
    got = build_mod.build(task, samples, smollm2)
    want = build_reference.build(oracle, oracle.samples(n), smollm2)
    assert [(i.prompt, i.requests, i.shots) for i in got] == want
    if getattr(task, "max_prompt_tokens", None) and task.shots:
        assert len({i.shots for i in got}) > 1, "the tight limit made no drop decision"


class Counting:
    """smollm2 seen through the model contract, counting its tokenizer calls."""

    def __init__(self, model):
        self.model, self.single, self.batches = model, 0, []
        self.name = model.name

    def count_tokens(self, text):
        self.single += 1
        return self.model.count_tokens(text)

    def count_tokens_many(self, texts):
        self.batches.append(len(texts))
        return self.model.count_tokens_many(texts)


@pytest.mark.slow
def test_length_rule_counts_in_batches_not_one_by_one(data_dir, smollm2):
    task = task_of("mmlu:professional_law:high_school_european_history", data_dir)
    samples = task.samples(40)
    task.max_prompt_tokens = 1200  # most of these prompts are longer: up to 5 rounds of drops
    model = Counting(smollm2)
    items = build_mod.build_items(task, samples, build_mod.length_rule(task, samples, model))
    assert model.single == 0
    assert model.batches[0] == len(samples) and 1 < len(model.batches) <= 1 + task.shots
    assert {i.shots for i in items} >= {0, 5} or len({i.shots for i in items}) > 2


def test_fraction_limit_is_lm_evals_rule(data_dir):
    task = task_of("mmlu:anatomy:virology", data_dir)
    sizes = {s: len(task.load_split(s, "test")) for s in task.subsets}  # 135, 166
    got = task.samples(0.1)
    assert [sum(1 for x in got if x.subset == s) for s in sizes] == [math.ceil(n * 0.1) for n in sizes.values()] == [14, 17]
    assert len(task.samples(3)) == 6
    for bad in (0.0, 1.5, -2, 0):
        with pytest.raises(EvalError, match="--limit"):
            task.samples(bad)


def test_variants_are_their_descriptions_and_settings(data_dir):
    csqa = task_of("csqa:variant=c49e77", data_dir)
    assert isinstance(csqa.protocol, Variant) and csqa.shots == 8 and csqa.setting("letters") is True
    assert task_of("csqa", data_dir).shots == 7
    piqa = task_of("piqa:variant=lm-eval-norm", data_dir)
    assert (piqa.formulation, piqa.metric) == ("continuation", "acc_norm")
    assert type(piqa).formulation == "whole_sequence_ppl"  # the class keeps its default
    assert type(piqa).variants["lm-eval-norm"].startswith("lm-eval piqa, acc_norm")  # what `list` prints
    with pytest.raises(TypeError, match="unknown setting"):
        Variant("x", shotz=3)
    import pickle

    again = pickle.loads(pickle.dumps(csqa.protocol))  # a task crosses process boundaries intact
    assert (again, again.settings, again.fields) == (csqa.protocol, {"shots": 8}, {"letters": True})


# ----------------------------------------------------------------------------- weights


def fake_records(task, samples, seed: int = 7) -> list[Record]:
    """Records of real samples with pseudo-random correctness (a fixed rule, not a model)."""
    out = []
    for k, s in enumerate(samples):
        correct = (k * 7919 + seed) % 5 < 1 + len(s.subset) % 3  # a different rate per subset
        out.append(Record(task.name, s.subset, s.index, s.id, "p", "h", 0, s.target, correct, {task.metric: float(correct)}, {"shots": task.shots}))
    return out


@pytest.mark.parametrize("spec,average", [("mmlu:anatomy:virology", "micro"), ("ceval:law:logic:marxism", "macro"),
                                          ("cmmlu:agronomy:arts", "macro"), ("agieval:lsat-ar:gaokao-chemistry", "macro"),
                                          ("gaokao", "weighted"), ("race", "micro")])
def test_weights_reproduce_the_headline(spec, average, data_dir):
    task = task_of(spec, data_dir)
    samples = task.samples()
    records = fake_records(task, samples)
    weights = task.weights(records)
    result = task.aggregate(records)
    assert task.average == result.average == average
    weighted = sum(w * float(r.correct) for w, r in zip(weights, records)) / sum(weights)
    assert weighted == pytest.approx(result.score, abs=1e-12)
    if average != "micro":  # and it is not the pooled mean
        assert weighted != pytest.approx(sum(r.correct for r in records) / len(records), abs=1e-6)


def test_samples_lines_carry_the_weight_and_results_the_average(data_dir, tmp_path):
    """A real run (the fake model behind the Model contract): samples/<task>.jsonl weights give the
    headline that results.json reports, for a macro and a weighted task."""
    specs = parse_tasks("ceval:law:logic,gaokao:2010-2022_History_MCQs:2010-2013_English_MCQs")
    path, out = run("fake:3", specs, data_dir=data_dir, limit=7, output_dir=str(tmp_path / "run"))
    results = out["results"]
    for name, average in (("ceval", "macro"), ("gaokao", "weighted")):
        lines = [json.loads(x) for x in (path / "samples" / f"{name}.jsonl").read_text().splitlines()]
        assert results[name]["average"] == average
        w = [r["weight"] for r in lines]
        head = sum(wi * float(r["correct"]) for wi, r in zip(w, lines)) / sum(w)
        assert head == pytest.approx(results[name]["metrics"][results[name]["metric"]], abs=1e-12)


# ----------------------------------------------------------------------------- an item among its own shots

SELF_POOL = '''
from xverse_eval import register_task
from xverse_eval.task import MultipleChoiceTask
from xverse_eval.types import Sample


@register_task
class Echo(MultipleChoiceTask):
    name = "echo_pool"
    shots = 2
    split = "test"
    fewshot_split = "test"  # no dev split: the shots come from the evaluated split

    def load_split(self, subset, split):
        return [Sample(id=f"e{i}", index=i, subset="", question=f"question {i}", choices=("yes", "no"), target=i % 2) for i in range(4)]
'''
SELF_TEMPLATE = ('{% for s in shots %}{{ s.question }}? {{ LETTERS[s.target] }}\n{% endfor %}{{ doc.question }}?'
                 '{% if choice is not none %} {{ LETTERS[choice] }}{% endif %}')


@pytest.fixture
def registry_restored():
    """Forget the plugins a test registers, so later tests see only the built-in tasks."""
    from xverse_eval import registry

    registry.load_tasks()  # the built-ins first: what is restored
    saved = dict(registry._TASKS), dict(registry._ORIGINS), list(registry._INCLUDED)
    yield
    for current, old in zip((registry._TASKS, registry._ORIGINS, registry._INCLUDED), saved):
        current.clear()
        current.update(old) if isinstance(current, dict) else current.extend(old)


def test_an_item_is_never_its_own_shot(tmp_path, registry_restored):
    (tmp_path / "echo_pool.py").write_text(SELF_POOL)
    (tmp_path / "echo_pool.jinja").write_text(SELF_TEMPLATE)
    include_path(tmp_path)
    task = make_task(parse_tasks("echo_pool")[0], None)
    items = build_mod.build(task, task.samples())
    assert [[s.id for s in task.fewshot(i.sample)] for i in items] == [["e1", "e2"], ["e0", "e2"], ["e0", "e1"], ["e0", "e1"]]
    assert items[0].prompt == "question 1? B\nquestion 2? A\nquestion 0?"
    assert all(i.sample.question + "? " not in i.prompt for i in items)
    assert all(not i.notes for i in items)


def test_agieval_keeps_its_demo_that_is_a_test_item_and_says_so(data_dir):
    task = task_of("agieval:gaokao-chemistry", data_dir)
    samples = task.samples()
    items = {i.sample.id: i for i in build_mod.build(task, samples)}
    item = items["gaokao-chemistry/38"]
    assert item.notes == ["the item is also shot 1 of its prompt (as the reference protocol builds it)"]
    assert item.prompt.count(item.sample.question) == 2  # as the demo and as the question: the reference's bytes
    assert sum(1 for i in items.values() if i.notes) == 1
    records = fake_records(task, samples)
    records = [Record(**{**r.__dict__, "extra": {**r.extra, "notes": items[r.id].notes}}) if items[r.id].notes else r for r in records]
    notes = task.aggregate(records).notes
    assert any("1 item(s) appear among their own shots" in n and "gaokao-chemistry/38" in n for n in notes)


def test_template_parts_and_a_head_that_reads_the_item_fails():
    import jinja2

    from xverse_eval import prompts

    assert {n for n in ("mmlu", "ceval", "cmmlu", "gaokao", "gaokao_english", "agieval", "csqa", "race") if prompts.has_parts(n)} == {
        "mmlu", "ceval", "cmmlu", "gaokao", "gaokao_english", "agieval", "csqa"}
    env = prompts.environment()
    assert env.from_string("{{ doc.subset }}").render(doc=prompts.SubsetOnly("law")) == "law"
    for head in ("{{ doc.question }}", "{{ doc.meta['subject'] }}", "{% if choice %}x{% endif %}"):
        with pytest.raises(jinja2.UndefinedError):
            env.from_string(head).render(doc=prompts.SubsetOnly("law"))
