"""Core pieces without a model: registry, templates, metrics, task selection."""
from __future__ import annotations

import math

import jinja2
import pytest

from xverse_eval import metrics, prompts
from xverse_eval.errors import EvalError
from xverse_eval.evaluate import parse_tasks
from xverse_eval.registry import get_task_class, register_task, task_names
from xverse_eval.task import MultipleChoiceTask, argmax


def test_every_task_module_has_its_template_and_one_name():
    from xverse_eval.paths import prompts_dir, tasks_dir

    names = task_names()
    assert {"mmlu", "humaneval"} <= set(names)
    for name in names:
        cls = get_task_class(name)
        assert (tasks_dir() / f"{name}.py").exists(), f"{name} is not defined in tasks/{name}.py"
        assert (prompts_dir() / f"{name}.jinja").exists(), f"prompts/{name}.jinja is missing"
        assert cls.variants and "default" in cls.variants


def test_duplicate_registration_fails():
    mmlu = get_task_class("mmlu")
    clone = type("MMLU2", (MultipleChoiceTask,), {"name": "mmlu"})
    with pytest.raises(ValueError, match="registered twice"):
        register_task(clone)
    assert get_task_class("mmlu") is mmlu


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(EvalError, match="did you mean 'mmlu'"):
        get_task_class("mmluu")
    with pytest.raises(EvalError, match="unknown task 'zzz'"):
        get_task_class("zzz")


def test_unknown_subset_and_variant(data_dir):
    cls = get_task_class("mmlu")
    with pytest.raises(EvalError, match="did you mean 'anatomy'"):
        cls(data_dir=data_dir, subsets=["anatomyy"])
    with pytest.raises(EvalError, match="unknown variant 'x'"):
        cls(data_dir=data_dir, variant="x")


def test_templates_refuse_undefined_variables():
    env = prompts.environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ doc.nothing_here }}").render(doc={})


def test_prompt_hash_follows_the_template_bytes():
    h = prompts.template_hash("mmlu")
    assert h == prompts.sha256(prompts.template_source("mmlu"))[:12] and len(h) == 12


def test_parse_tasks_merges_subsets_and_reads_variants():
    specs = parse_tasks("mmlu:anatomy,humaneval:variant=raw,mmlu:virology")
    assert [(s.name, s.subsets, s.variant) for s in specs] == [("mmlu", ["anatomy", "virology"], "default"), ("humaneval", [], "raw")]
    with pytest.raises(EvalError):
        parse_tasks("mmlu:shots=3")
    with pytest.raises(EvalError):
        parse_tasks(" , ")


def test_metrics_against_hand_computation():
    values = [1.0, 0.0, 1.0, 1.0]
    assert metrics.mean(values) == 0.75
    # sample std = sqrt(((.25^2)*3 + .75^2)/3) = 0.5; stderr = 0.5/2
    assert metrics.stderr(values) == pytest.approx(0.25)
    assert metrics.macro({"a": [1.0, 0.0], "b": [1.0]}) == pytest.approx(0.75)
    assert metrics.pass_at_k(1, 1, 1) == 1.0 and metrics.pass_at_k(1, 0, 1) == 0.0
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        metrics.pass_at_k(1, 1, 2)
    assert argmax([0.1, 0.3, 0.3]) == 1  # first maximum wins, as numpy's argmax
    assert math.isclose(metrics.macro_stderr({"a": [1.0, 0.0], "b": [1.0, 0.0]}), math.sqrt(0.25 + 0.25) / 2)
