"""C-Eval, CMMLU, GAOKAO-Bench, GAOKAO-English and AGIEval: golden prompts written from the reference
code (tests/golden/reference_ports.py), counts, length rules, hand-computed averages, letter tokens on
two tokenizers, and a real-model CPU run over a few items of each."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from xverse_eval import cli
from xverse_eval.errors import EvalError
from xverse_eval.evaluate import make_task, parse_tasks
from xverse_eval.task import TokenLimit
from xverse_eval.types import Record

GOLDEN = Path(__file__).parent / "golden"
DATA = os.environ.get("XVERSE_TEST_DATA")
needs_data = pytest.mark.skipif(not DATA or not os.path.isdir(DATA), reason="XVERSE_TEST_DATA is not set to the benchmark data dir (make test sets it)")


def task(spec: str):
    return make_task(parse_tasks(spec)[0], DATA)


def show_prompt(capsys, spec: str, index: int, choice: int | None = None) -> str:
    argv = ["show-prompt", spec, "--index", str(index), "--data-dir", DATA] + ([] if choice is None else ["--choice", str(choice)])
    assert cli.main(argv) == 0
    return capsys.readouterr().out


# ----------------------------------------------------------------------------- golden prompts

GOLDEN_CASES = [
    # (show-prompt task spec, index, choice, golden file)
    ("ceval:computer_network", 0, None, "ceval/computer_network_0.txt"),
    ("ceval:computer_network", 0, 2, "ceval/computer_network_0_choice2.txt"),
    ("ceval:computer_network:variant=subject_key", 0, None, "ceval/computer_network_0_subject_key.txt"),
    ("ceval:high_school_physics", 3, 1, "ceval/high_school_physics_3_choice1.txt"),
    ("ceval:legal_professional", 0, 3, "ceval/legal_professional_0_choice3.txt"),
    ("ceval:high_school_chinese", 0, None, "ceval/high_school_chinese_0.txt"),  # CRLF inside a quoted cell
    ("cmmlu:agronomy", 0, None, "cmmlu/agronomy_0.txt"),
    ("cmmlu:agronomy", 0, 3, "cmmlu/agronomy_0_choice3.txt"),
    ("cmmlu:college_actuarial_science", 0, None, "cmmlu/college_actuarial_science_0.txt"),  # numeric dev cells
    ("cmmlu:agronomy:variant=opencompass", 0, 1, "cmmlu/agronomy_0_opencompass_choice1.txt"),
    ("gaokao:2010-2022_History_MCQs", 5, None, "gaokao/2010-2022_History_MCQs_5.txt"),
    ("gaokao:2010-2022_History_MCQs", 5, 2, "gaokao/2010-2022_History_MCQs_5_choice2.txt"),
    ("gaokao:2010-2022_Math_I_MCQs", 100, None, "gaokao/2010-2022_Math_I_MCQs_100.txt"),
    ("gaokao:2010-2013_English_MCQs:variant=loo", 2, 1, "gaokao/2010-2013_English_MCQs_2_loo_choice1.txt"),
    ("gaokao_english", 5, None, "gaokao_english/5.txt"),
    ("gaokao_english", 31, 0, "gaokao_english/31_choice0.txt"),  # options written as "     A. ..."
    ("gaokao_english:variant=agieval_demos", 0, 0, "gaokao_english/0_agieval_demos_choice0.txt"),
    ("agieval:lsat-lr", 0, None, "agieval/lsat-lr_0.txt"),
    ("agieval:lsat-lr", 0, 4, "agieval/lsat-lr_0_choice4.txt"),
    ("agieval:gaokao-history", 0, 2, "agieval/gaokao-history_0_choice2.txt"),
    ("agieval:sat-en-without-passage", 0, None, "agieval/sat-en-without-passage_0.txt"),
    ("agieval:aqua-rat", 3, 4, "agieval/aqua-rat_3_choice4.txt"),
    ("agieval:logiqa-zh", 10, 0, "agieval/logiqa-zh_10_choice0.txt"),
    ("agieval:gaokao-geography", 1, None, "agieval/gaokao-geography_1.txt"),
    ("agieval:gaokao-english", 7, None, "agieval/gaokao-english_7.txt"),
    ("agieval:gaokao-biology:variant=v1_1", 0, None, "agieval/gaokao-biology_0_v1_1.txt"),
]


@needs_data
@pytest.mark.parametrize("spec,index,choice,golden", GOLDEN_CASES, ids=[c[3] for c in GOLDEN_CASES])
def test_golden_prompt(capsys, spec, index, choice, golden):
    expected = (GOLDEN / golden).read_bytes().decode("utf-8")
    assert show_prompt(capsys, spec, index, choice) == expected


# ----------------------------------------------------------------------------- counts and data rules

@needs_data
@pytest.mark.parametrize("spec,count,split", [
    ("ceval", 1346, "val"), ("cmmlu", 11582, "test"), ("gaokao", 1383, "test"), ("gaokao:variant=loo", 1418, "test"),
    ("gaokao_english", 301, "test"), ("gaokao_english:variant=agieval_demos", 306, "test"),
    ("agieval", 4951, "test"), ("agieval:variant=v1_1", 4968, "test"),
])
def test_counts(spec, count, split):
    t = task(spec)
    samples = t.samples()
    assert len(samples) == count == t.expected_count and t.split == split
    assert len({s.id for s in samples}) == count


@needs_data
def test_ceval_test_split_without_labels_is_a_clear_error():
    with pytest.raises(EvalError, match="no answer label"):
        task("ceval:computer_network:variant=test").samples()


@needs_data
def test_held_out_shots_are_not_scored_and_index_is_the_file_position():
    t = task("gaokao:2010-2022_Biology_MCQs")
    assert [s.index for s in t.samples()][:2] == [5, 6]
    assert t.sample_at("2010-2022_Biology_MCQs", 5).index == 5
    with pytest.raises(EvalError, match="few-shot exemplar"):
        t.sample_at("2010-2022_Biology_MCQs", 4)
    loo = task("gaokao:2010-2022_Biology_MCQs:variant=loo")
    first = loo.sample_at("2010-2022_Biology_MCQs", 0)
    assert [s.index for s in loo.fewshot(first)] == [1, 2, 3, 4, 5]


@needs_data
def test_agieval_shots_per_subset_and_multi_letter_labels():
    t = task("agieval")
    shots = {sub: len(t.fewshot(t.load_split(sub, "test")[0])) for sub in t.all_subsets()}
    assert shots["lsat-ar"] == shots["gaokao-english"] == shots["sat-en-without-passage"] == 3
    assert shots["sat-math"] == shots["gaokao-mathqa"] == shots["aqua-rat"] == 5
    mathqa = t.load_split("gaokao-mathqa", "test")
    multi = [s for s in mathqa if s.target == -1]
    assert len(multi) == 7 and len(mathqa) == 351
    assert {len(s.choices) for s in t.load_split("lsat-ar", "test")} == {5}


# ----------------------------------------------------------------------------- length rules

def char_limit(limit):
    return TokenLimit(len, limit)  # a "tokenizer" with one token per character


@needs_data
def test_cmmlu_drops_every_longest_shot_and_then_the_header():
    t = task("cmmlu:agronomy")
    sample = t.samples()[0]
    shots = t.fewshot(sample)
    end = t.render(sample, [], header=False)
    head = t.render(sample, [])[: -len(end)]
    lengths = [len(t.render(sample, [s], header=False)) - len(end) for s in shots]
    budget = len(head) + len(end)
    # room for all shots but the longest one(s): sum(kept) < limit - budget <= sum(all)
    longest = max(lengths)
    kept = [n for n in lengths if n != longest]
    item = t.build(sample, char_limit(budget + sum(kept) + 1))
    assert item.shots == len(kept) == 4
    assert all(t.render(sample, [s], header=False)[: -len(end)] in item.prompt for s, n in zip(shots, lengths) if n != longest)
    full = t.build(sample, char_limit(budget + sum(lengths) + 1))
    assert full.shots == 5
    alone = t.build(sample, char_limit(budget - 1))
    assert alone.shots == 0 and alone.prompt == end and alone.notes


@needs_data
def test_agieval_demo_block_limit():
    t = task("agieval:sat-math")
    sample = t.samples()[0]
    demos = t.fewshot(sample)
    block3 = len(t.render(sample, demos[:3], demos_only=True))
    item = t.build(sample, char_limit(block3 + 1))
    assert item.shots == 3 and item.prompt.count("The answer is therefore") == 4 and "Problem 4.   " in item.prompt


@needs_data
def test_hendrycks_rule_drops_the_last_shot():
    t = task("ceval:computer_network")
    sample = t.samples()[0]
    full = t.build(sample)
    item = t.build(sample, char_limit(len(full.prompt) - 1))
    shots = t.fewshot(sample)
    assert full.shots == 5 and item.shots == 4
    assert shots[3].question in item.prompt and shots[4].question not in item.prompt


# ----------------------------------------------------------------------------- aggregation (hand-computed)

def rec(taskname, subset, index, correct, shots=5, target=0):
    return Record(taskname, subset, index, f"{subset}/{index}", "p", "h", 0, target, correct, {"acc": float(correct)}, {"shots": shots})


def test_ceval_macro_categories_and_hard():
    from xverse_eval.registry import get_task_class

    t = get_task_class("ceval")(data_dir=None)
    records = ([rec("ceval", "computer_network", i, c) for i, c in enumerate([1, 1, 0, 0])]  # STEM 0.5
               + [rec("ceval", "college_physics", i, c) for i, c in enumerate([1, 0, 0])]  # STEM, hard 1/3
               + [rec("ceval", "law", i, c) for i, c in enumerate([1])])  # Humanities 1.0
    r = t.aggregate(records)
    assert r.metrics["acc"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 3)
    assert r.metrics["acc_micro"] == pytest.approx(4 / 8)
    assert r.groups["STEM"]["acc"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert r.groups["Humanities"]["acc"] == 1.0 and "Other" not in r.groups
    assert r.metrics["acc_hard"] == pytest.approx(1 / 3)
    assert r.split == "val" and any("split: val" in n for n in r.notes)


def test_cmmlu_macro_and_overlapping_categories():
    from xverse_eval.registry import get_task_class

    t = get_task_class("cmmlu")(data_dir=None)
    records = ([rec("cmmlu", "ancient_chinese", i, c) for i, c in enumerate([1, 0])]  # Social Science + China specific
               + [rec("cmmlu", "anatomy", i, c) for i, c in enumerate([1, 1, 1, 0])]  # STEM 0.75
               + [rec("cmmlu", "arts", 0, 0)])  # Humanities 0
    r = t.aggregate(records)
    assert r.metrics["acc"] == pytest.approx((0.5 + 0.75 + 0.0) / 3)
    assert r.metrics["acc_micro"] == pytest.approx(4 / 7)
    assert r.groups["China specific"]["acc"] == 0.5 and r.groups["Social Science"]["acc"] == 0.5
    assert r.groups["STEM"]["acc"] == 0.75 and r.groups["Humanities"]["acc"] == 0.0


@needs_data
def test_gaokao_micro_macro_point_weighted():
    t = task("gaokao")
    # History items are 4 points, Biology 6, English 1 (from the data)
    records = ([rec("gaokao", "2010-2022_History_MCQs", i, c) for i, c in zip(range(5, 9), [1, 1, 1, 0])]
               + [rec("gaokao", "2010-2022_Biology_MCQs", i, c) for i, c in zip(range(5, 7), [0, 1])]
               + [rec("gaokao", "2010-2013_English_MCQs", 5, 0)])
    r = t.aggregate(records)
    assert r.metrics["acc"] == pytest.approx(4 / 7)
    assert r.metrics["acc_macro"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert r.metrics["acc_weighted"] == pytest.approx((1148 * 0.75 + 900 * 0.5 + 105 * 0) / (1148 + 900 + 105))
    assert r.metrics["points_rate"] == pytest.approx((3 * 4 + 6) / (4 * 4 + 2 * 6 + 1))
    assert r.metric == "acc_weighted"


def test_agieval_macro_micro_and_languages():
    from xverse_eval.registry import get_task_class

    t = get_task_class("agieval")(data_dir=None)
    records = ([rec("agieval", "lsat-lr", i, c, shots=3) for i, c in enumerate([1, 0, 0, 0])]  # en 0.25
               + [rec("agieval", "sat-math", i, c) for i, c in enumerate([1, 1])]  # en 1.0
               + [rec("agieval", "gaokao-mathqa", i, c, target=-1 if i else 0) for i, c in enumerate([1, 0])])  # zh 0.5
    r = t.aggregate(records)
    assert r.metrics["acc"] == pytest.approx((0.25 + 1.0 + 0.5) / 3)
    assert r.metrics["acc_micro"] == pytest.approx(4 / 8)
    assert r.metrics["acc_en"] == pytest.approx(0.625) and r.metrics["acc_zh"] == 0.5
    assert r.groups["lsat-lr"]["shots"] == [3]
    assert any("shots used per item: 3-5" in n for n in r.notes) and any("multi-letter" in n for n in r.notes)


# ----------------------------------------------------------------------------- letter tokens, two tokenizers

def fake_model(tokenizer):
    from xverse_eval.runner.hf import HFModel
    from xverse_eval.runner.tokens import Tokens

    m = HFModel.__new__(HFModel)
    m.tokenizer = tokenizer
    m.tokens = Tokens(tokenizer)
    return m


LETTER_CASES = [("ceval:computer_network", "A", "答案："), ("cmmlu:agronomy", "A", "答案是："),
                ("gaokao:2010-2022_History_MCQs", "A", "答案："), ("gaokao_english", " A", "Answer:"),
                ("agieval:lsat-lr", " A", "The answer is therefore"), ("agieval:logiqa-zh", " A", "答案是")]


def check_letters(model):
    for spec, first, ending in LETTER_CASES:
        t = task(spec)
        item = t.build(t.samples()[0])
        assert item.prompt.endswith(ending), spec
        for j, req in enumerate(item.requests):
            assert req.continuation == first.replace("A", "ABCDE"[j])
            context_ids, cont_ids = model.tokens.encode_pair(req.context, req.continuation)
            assert len(cont_ids) == 1, (spec, req.continuation, cont_ids)
            assert model.tokenizer.decode(cont_ids) == req.continuation, spec
            # the scored token is the one the tokenizer produces in the whole string
            assert model.encode(req.context + req.continuation)[-1] == cont_ids[0]


@needs_data
def test_letter_tokens_on_a_chinese_heavy_tokenizer():
    from _zh_tokenizer import build_zh_tokenizer

    tok = build_zh_tokenizer(DATA)
    text = "以下是中国关于计算机网络考试的单项选择题"
    assert len(tok(text).input_ids) < 0.75 * len(text)  # CJK merges: a Chinese-heavy vocabulary
    check_letters(fake_model(tok))


# ----------------------------------------------------------------------------- real model (CPU)

# the `smollm2` fixture (the real model, loaded once per session) comes from conftest.py


@needs_data
@pytest.mark.slow
def test_letter_tokens_on_smollm2(smollm2):
    check_letters(smollm2)
    # SmolLM2 has both "A" and " A": after "答案：" the letter is "A", after "Answer:" it is " A"
    assert smollm2.encode("答案：A")[-1] != smollm2.encode("Answer: A")[-1]


@needs_data
@pytest.mark.slow
def test_real_model_run(smollm2, tmp_path):
    from xverse_eval.evaluate import run

    specs = parse_tasks("ceval:computer_network:high_school_physics,cmmlu:agronomy,gaokao:2010-2013_English_MCQs,gaokao_english,agieval:sat-math:logiqa-en")
    path, out = run("smollm2-135m", specs, data_dir=DATA, limit=1, output_dir=str(tmp_path / "run"), model=smollm2)
    results = out["results"]
    assert set(results) == {"ceval", "cmmlu", "gaokao", "gaokao_english", "agieval"}
    assert results["ceval"]["n"] == 2 and results["agieval"]["n"] == 2 and results["cmmlu"]["n"] == 1
    for name, r in results.items():
        assert 0.0 <= r["metrics"][r["metric"]] <= 1.0 and r["variant"] == "default"
    assert results["ceval"]["split"] == "val"
    saved = json.loads((path / "results.json").read_text())
    assert saved["xverse_eval"]["results"]["agieval"]["variant"] == "default"
    lines = [json.loads(line) for line in (path / "samples" / "agieval.jsonl").read_text().splitlines()]
    assert {r["extra"]["shots"] for r in lines} == {3, 5}
    assert not any(math.isnan(r["metrics"]["acc"]) for r in results.values())


# ----------------------------------------------------------------------------- other layouts, bad input

def test_gaokao_english_reads_the_ai_gaokao_layout(tmp_path):
    paper = tmp_path / "gaokao-english" / "ai-gaokao" / "gaokao2019_np1"
    paper.mkdir(parents=True)
    rows = [{"context": f"Passage {i}.", "question": f"Q{i}?", "options": ["yes", "no", "maybe", "never"], "answer": "no"} for i in range(6)]
    (paper / "processed_reading_mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cloze = {"context": "I <Q41> home.", "question_mark": "<Q41>", "options": ["go", "went", "gone", "going"], "answer": "went"}
    (paper / "processed_cloze_choice.jsonl").write_text(json.dumps(cloze) + "\n", encoding="utf-8")
    t = make_task(parse_tasks("gaokao_english:variant=ai_gaokao")[0], str(tmp_path))
    samples = t.samples()
    # file order: listening, cloze, reading per paper; the first 5 (cloze + 4 reading) are the shots
    assert [s.id for s in samples] == ["gaokao2019_np1/reading_mc/4", "gaokao2019_np1/reading_mc/5"] and samples[0].target == 1
    prompt = t.build(samples[-1]).prompt
    assert prompt.startswith("The following are multiple choice questions (with answers) about English exam.\n\n"
                             "I <Q41> home.\nWhich option best fills <Q41>?\nA. go\nB. went\nC. gone\nD. going\nAnswer: B\n\n")
    assert prompt.endswith("Passage 5.\nQ5?\nA. yes\nB. no\nC. maybe\nD. never\nAnswer:") and prompt.count("Answer: B\n\n") == 5


def test_bad_gaokao_answer_is_a_one_line_error(tmp_path):
    folder = tmp_path / "gaokao-bench" / "Data" / "Objective_Questions"
    folder.mkdir(parents=True)
    items = [{"question": f"{i}. q\nA. a B. b C. c D. d\n", "answer": ["A"], "score": 5} for i in range(6)]
    items[5]["answer"] = ["A", "C"]
    (folder / "2010-2022_Math_II_MCQs.json").write_text(json.dumps({"keywords": "x", "example": items}), encoding="utf-8")
    t = make_task(parse_tasks("gaokao:2010-2022_Math_II_MCQs")[0], str(tmp_path))
    with pytest.raises(EvalError, match=r"example 5: answer \['A', 'C'\] is not a single letter") as exc:
        t.samples()
    assert "\n" not in str(exc.value)
