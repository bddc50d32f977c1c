"""MMLU against the hendrycks/test protocol, and letter scoring against a hand computation on the real model."""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import torch

from hendrycks_reference import prompt_for
from xverse_eval.cli import main
from xverse_eval.evaluate import TaskSpec, build, make_task, run
from xverse_eval.types import LoglikelihoodRequest

GOLDEN = Path(__file__).parent / "golden" / "mmlu"


def show_prompt(*args: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["show-prompt", *args]) == 0
    return buf.getvalue()


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.txt")), ids=lambda p: p.stem)
def test_show_prompt_is_byte_identical_to_golden(golden, data_dir):
    stem, choice = golden.stem, []
    if "_choice" in stem:  # <subject>_<index>_choice<J>: the whole string scored for choice J
        stem, j = stem.rsplit("_choice", 1)
        choice = ["--choice", j]
    subject, index = stem.rsplit("_", 1)
    expected = golden.read_bytes().decode("utf-8")
    assert show_prompt(f"mmlu:{subject}", "--index", index, *choice, "--data-dir", data_dir) == expected


def test_golden_files_have_the_reference_quirks():
    text = (GOLDEN / "anatomy_3.txt").read_text()
    assert text.startswith("The following are multiple choice questions (with answers) about  anatomy.\n\n")  # two spaces
    assert text.endswith("\nAnswer:") and text.count("\nAnswer: ") == 5  # five shots, letter after a space
    assert "nan" in (GOLDEN / "college_computer_science_10.txt").read_text()  # pandas reads the cell None as NaN
    assert "\r\n" in (GOLDEN / "college_mathematics_40.txt").read_bytes().decode()  # a quoted CRLF in a dev row survives


@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_european_history", "world_religions"])
def test_every_item_of_a_subject_matches_the_reference(subject, data_dir):
    task = make_task(TaskSpec("mmlu", [subject]), data_dir)
    samples = task.samples()
    assert len(samples) == len(pd.read_csv(f"{data_dir}/mmlu/data/test/{subject}_test.csv", header=None))
    for s in samples:
        assert task.build(s).prompt == prompt_for(data_dir, subject, s.index)


def test_counts_and_categories(data_dir):
    task = make_task(TaskSpec("mmlu"), data_dir)
    samples = task.samples()
    assert len(samples) == 14042 and len(task.subsets) == 57
    from collections import Counter

    assert Counter(s.meta["category"] for s in samples) == {"STEM": 3018, "humanities": 4705, "social sciences": 3077, "other": 3242}


def test_letter_token_is_the_one_seen_after_answer_colon(smollm2):
    tok = smollm2.tokenizer
    context = "Question?\nA. x\nB. y\nC. z\nD. w\nAnswer:"
    for letter in "ABCD":
        ctx, cont = smollm2.tokens.encode_pair(context, " " + letter)
        assert ctx == smollm2.encode(context)
        assert len(cont) == 1 and tok.convert_ids_to_tokens(cont) == ["Ġ" + letter]
        assert cont[0] == smollm2.encode(context + " " + letter)[-1]
        # the bare letter (what tokenizer("A").input_ids[-1] gives a byte-level BPE) is another token
        assert cont[0] != tok("A", add_special_tokens=False).input_ids[-1]


def hand_letter_logprobs(model, prompt: str) -> list[float]:
    """log_softmax of the logits at the last prompt position, read at the four letter tokens."""
    tok, net = model.tokenizer, model.model
    ids = torch.tensor([tok(prompt).input_ids])
    with torch.no_grad():
        logits = net(input_ids=ids).logits[0, -1].double()
    logp = torch.log_softmax(logits, -1)
    return [float(logp[tok(prompt + " " + x).input_ids[-1]]) for x in "ABCD"]


def test_loglikelihood_equals_hand_computation(smollm2, data_dir):
    prompt = (GOLDEN / "anatomy_3.txt").read_text()
    reqs = [LoglikelihoodRequest(f"k{j}", prompt, " " + x) for j, x in enumerate("ABCD")]
    got = [r.logprob for r in smollm2.loglikelihood(reqs)]
    assert got == pytest.approx(hand_letter_logprobs(smollm2, prompt), abs=1e-4)


def test_scores_do_not_depend_on_batching(smollm2, data_dir):
    task = make_task(TaskSpec("mmlu", ["anatomy", "virology"]), data_dir)
    items = build(task, task.samples(limit=3), smollm2)
    reqs = [r for i in items for r in i.requests]
    batched = smollm2.loglikelihood(reqs)
    saved = smollm2.batch_size
    try:
        smollm2.batch_size = 1
        single = smollm2.loglikelihood(reqs)
    finally:
        smollm2.batch_size = saved
    assert [r.logprob for r in batched] == pytest.approx([r.logprob for r in single], abs=1e-4)


def test_mmlu_run_on_real_model(smollm2, data_dir, tmp_path):
    path, results = run("smollm2-135m", [TaskSpec("mmlu", ["anatomy", "college_physics"])], data_dir=data_dir, limit=3,
                        output_dir=str(tmp_path / "run"), model=smollm2)
    res = results["results"]["mmlu"]
    assert res["n"] == 6 and res["shots"] == 5 and results["status"] == "partial"
    records = [__import__("json").loads(line) for line in (path / "samples" / "mmlu.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for rec in records:
        expected = hand_letter_logprobs(smollm2, rec["prompt"])
        assert rec["extra"]["choice_scores"]["logprob"] == pytest.approx(expected, abs=1e-4)
        assert rec["prediction"] == max(range(4), key=lambda j: expected[j])
        assert rec["correct"] == (rec["prediction"] == rec["target"])
    assert res["metrics"]["acc"] == pytest.approx(sum(r["correct"] for r in records) / 6)
    assert {"anatomy", "college_physics", "STEM", "other"} <= set(res["groups"])
    assert "| MMLU (2 subsets) | 5-shot |" in (path / "report.md").read_text()


def test_long_prompts_drop_trailing_shots(smollm2, data_dir):
    task = make_task(TaskSpec("mmlu", ["high_school_european_history"]), data_dir)
    sample = task.samples(limit=1)[0]
    full = task.build(sample)
    n = smollm2.count_tokens(full.prompt)
    task.max_prompt_tokens = n - 1  # one token too many for five shots
    item = build(task, [sample], smollm2)[0]
    assert item.shots == 4
    assert item.prompt == prompt_for(data_dir, "high_school_european_history", 0, k=4)
