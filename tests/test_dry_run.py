"""`xverse-eval run ... --dry-run` (issue 17): the data loaded, every request built and tokenised with
the model's tokenizer alone, plan.jsonl written exactly as a normal run writes it, the cost of each
task printed (requests, distinct tokens, tokens after prefix sharing, the compute floor), and no
weights loaded. Real data, the real SmolLM2 tokenizer, a real normal run to compare with."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from xverse_eval import cli

DATA = os.environ.get("XVERSE_TEST_DATA")
pytestmark = pytest.mark.skipif(not DATA or not Path(DATA, "mmlu").is_dir(), reason="needs the benchmark data: set XVERSE_TEST_DATA")

TASKS = "mmlu:anatomy,race"
LIMIT = 2


def refuse_weights(monkeypatch) -> None:
    """Any attempt to load weights fails the test (a dry run must not)."""
    from xverse_eval import runner
    from xverse_eval.runner import hf

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr(runner, "load_model", refuse)
    monkeypatch.setattr(hf.HFModel, "load", classmethod(refuse))


def test_dry_run_plan_equals_a_normal_runs_plan(smollm2, tmp_path, monkeypatch, capsys):
    from xverse_eval.evaluate import parse_tasks, run

    normal, _ = run("smollm2-135m", parse_tasks(TASKS), data_dir=DATA, limit=LIMIT, output_dir=str(tmp_path / "normal"), model=smollm2)
    capsys.readouterr()
    refuse_weights(monkeypatch)
    dry = tmp_path / "dry"
    rc = cli.main(["run", "--model", "smollm2-135m", "--tasks", TASKS, "--data-dir", DATA, "--limit", str(LIMIT),
                   "--device", "cpu", "--output-dir", str(dry), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (dry / "plan.jsonl").read_bytes() == (normal / "plan.jsonl").read_bytes()  # prompts, shots, requests
    assert not (dry / "responses.jsonl").exists() and not (dry / "results.json").exists()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split() and line.split()[0] in ("mmlu", "race", "total")}
    assert rows["mmlu"][0] == str(LIMIT * 4) and rows["race"][0] == str(LIMIT * 4)
    assert int(rows["total"][0]) == LIMIT * 8
    distinct, shared = (int(rows["mmlu"][i].replace(",", "")) for i in (1, 2))
    assert 0 < shared < distinct  # the 5-shot block once per subject, not once per row
    assert "no weights loaded" in err


def test_dry_run_of_a_random_architecture_prints_its_compute_floor(smollm2, tmp_path, monkeypatch, capsys):
    """`random:` specs work (a config and a tokenizer are enough), and the floor is the matmul FLOPs of
    the tokens after prefix sharing over the peak given in $XVERSE_EVAL_PEAK_TFLOPS."""
    from xverse_eval.runner import work
    from xverse_eval.runner.shape import Shape
    from xverse_eval.runner.xverse import random_config

    tokenizer_dir = tmp_path / "tokenizer"
    smollm2.tokenizer.save_pretrained(tokenizer_dir)
    spec = f"random:xverse-65b:layers=2:kv_heads=8:tokenizer={tokenizer_dir}"
    refuse_weights(monkeypatch)
    monkeypatch.setenv("XVERSE_EVAL_PEAK_TFLOPS", "100")
    rc = cli.main(["run", "--model", spec, "--tasks", "mmlu:anatomy", "--data-dir", DATA, "--limit", str(LIMIT),
                   "--device", "cpu", "--output-dir", str(tmp_path / "dry"), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    total = next(line.split() for line in out.splitlines() if line.startswith("total"))
    computed = int(total[3].replace(",", ""))
    from xverse_eval.evaluate import request_from_dict
    import json

    requests = [request_from_dict(r) for line in (tmp_path / "dry" / "plan.jsonl").read_text().splitlines()
                for r in json.loads(line)["requests"]]
    assert computed == work(requests, smollm2.tokenizer).computed_tokens
    flops = Shape.of(random_config(spec)).flops_per_token(0) * computed
    assert float(total[5].replace(",", "")) == pytest.approx(flops / 1e12, abs=0.05)
    assert float(total[6].rstrip("s")) == pytest.approx(flops / 100e12, abs=0.05)
    assert re.search(r"/ 100 TFLOP/s", out)
