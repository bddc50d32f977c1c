"""Writes the golden prompts under tests/golden/ from ports of the reference code, independent of
xverse-eval's templates: run `python tests/golden/reference_ports.py DATA_DIR` to regenerate.

ceval   hkust-nlp/ceval code/evaluator_series/evaluators/llama.py format_example + generate_few_shot_prompt
cmmlu   haonan-li/CMMLU src/mp_utils.py format_example + gen_prompt (tokenizer=None: no length rule)
cmmlu   opencompass variant: configs/datasets/cmmlu/cmmlu_ppl_8b9c76.py, base-model rendering (turns and
        shots joined by "\\n", docs/benchmarks/cmmlu.md), data read as CMMLUDataset does (csv.reader)
agieval ruixiangcui/AGIEval src/dataset_loader.py combine_prompt + concat_prompt (no token cut) +
        convert_few_shot, plus "The answer is therefore" / "答案是" for letter scoring
gaokao, gaokao_english: the suggested prompts of docs/benchmarks/gaokao.md and gaokao_english.md (XVERSE disclosed none)
The scored string for choice J is the prompt followed by the letter exactly as the shots show it.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import sys

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))


def write(task: str, name: str, text: str) -> None:
    os.makedirs(os.path.join(HERE, task), exist_ok=True)
    with open(os.path.join(HERE, task, name), "w", encoding="utf-8", newline="") as f:
        f.write(text)


# ---------------------------------------------------------------- C-Eval (llama.py)

def ceval_format_example(line, include_answer=True):
    example = line["question"]
    for choice in ["A", "B", "C", "D"]:
        example += f'\n{choice}. {line[f"{choice}"]}'
    if include_answer:
        example += "\n答案：" + line["answer"] + "\n\n"
    else:
        example += "\n答案："
    return example


def ceval(data, subject, index, header_name, suffix=""):
    dev = pd.read_csv(os.path.join(data, "ceval", "dev", f"{subject}_dev.csv"))
    val = pd.read_csv(os.path.join(data, "ceval", "val", f"{subject}_val.csv"))
    prompt = f"以下是中国关于{header_name}考试的单项选择题，请选出其中的正确答案。\n\n"
    for i in range(5):
        prompt += ceval_format_example(dev.iloc[i, :])
    prompt += ceval_format_example(val.iloc[index, :], include_answer=False)
    write("ceval", f"{subject}_{index}{suffix}.txt", prompt)
    write("ceval", f"{subject}_{index}{suffix}_choice{'ABCD'.index(val.iloc[index]['answer'])}.txt", prompt + val.iloc[index]["answer"])


# ---------------------------------------------------------------- CMMLU (mp_utils.py)

def cmmlu_format_example(df, idx, include_answer=True):
    prompt = "题目：" + df.iloc[idx, 0]
    k = df.shape[1] - 2
    for j in range(k):
        prompt += "\n{}. {}".format("ABCD"[j], df.iloc[idx, j + 1])
    prompt += "\n答案是："
    if include_answer:
        prompt += "{}\n\n".format(df.iloc[idx, k + 1])
    return prompt


def cmmlu(data, subject, zh, index):
    dev = pd.read_csv(os.path.join(data, "cmmlu", "data", "dev", subject + ".csv"), header=0, index_col=0)
    test = pd.read_csv(os.path.join(data, "cmmlu", "data", "test", subject + ".csv"), header=0, index_col=0)
    prompt = "以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n".format(zh)
    for i in range(5):
        prompt += cmmlu_format_example(dev, i)
    prompt += cmmlu_format_example(test, index, include_answer=False)
    write("cmmlu", f"{subject}_{index}.txt", prompt)
    write("cmmlu", f"{subject}_{index}_choice3.txt", prompt + "D")


def cmmlu_oc(data, subject, zh, index, choice):
    def rows(split):
        with open(os.path.join(data, "cmmlu", "data", split, subject + ".csv"), encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader)
            return [dict(zip(["question", "A", "B", "C", "D", "answer"], r[1:])) for r in reader]

    def human(r):
        return f"以下是关于{zh}的单项选择题，请直接给出正确答案的选项。\n题目：{r['question']}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\nD. {r['D']}"

    dev, test = rows("dev"), rows("test")
    turns = []
    for r in dev[:5]:
        turns += [human(r), f"答案是: {r['answer']}"]
    turns += [human(test[index]), f"答案是: {'ABCD'[choice]}"]
    write("cmmlu", f"{subject}_{index}_opencompass_choice{choice}.txt", "\n".join(turns))


# ---------------------------------------------------------------- AGIEval (dataset_loader.py)

EN = ["lsat-ar", "lsat-lr", "lsat-rc", "logiqa-en", "sat-math", "sat-en", "aqua-rat", "sat-en-without-passage", "gaokao-english"]


def agieval(data, name, index, version="v1", choice=None, suffix=""):
    skip_passage = name == "sat-en-without-passage"
    col = "sat-en" if skip_passage else name
    ctx = pd.read_csv(os.path.join(data, "agieval", "few_shot_prompts.csv"), header=0,
                      skiprows=lambda x: x not in [0, 1, 3, 5, 7, 9], keep_default_na=False)
    demos = []
    for idx, line in enumerate([ast.literal_eval(c) for c in ctx[col] if c]):
        passage = line["passage"] if line["passage"] is not None and not skip_passage else ""
        options = line["options"] if line["options"] is not None else ""
        label = line["label"] if line["label"] is not None else ""
        if name in EN:
            demos.append("Problem {}.   ".format(idx + 1) + passage + " " + line["question"] + "\n"
                         + "Choose from the following options:    " + " ".join(options) + "\n"
                         + "The answer is therefore {}".format(label) + "\n")
        else:
            demos.append("问题 {}.   ".format(idx + 1) + passage + " " + line["question"] + "\n"
                         + "从以下选项中选择:    " + " ".join(options) + "\n" + "答案是 {}".format(label) + "\n")
    head = "Here are the answers for the problems in the exam.\n" if name in EN else "以下是考试中各个问题的答案。\n"
    for d in demos:
        head += d + "\n"
    with open(os.path.join(data, "agieval", version, name + ".jsonl"), encoding="utf-8") as f:
        line = [json.loads(x) for x in f if x.strip()][index]
    passage = line["passage"] if line["passage"] is not None else ""
    n = len(demos)
    if name in EN:
        prompt = head + "Problem {}.   ".format(n + 1) + passage + " " + line["question"] + "\n" \
            + "Choose from the following options:    " + " ".join(line["options"]) + "\n" + "The answer is therefore"
    else:
        prompt = head + "问题 {}.   ".format(n + 1) + passage + " " + line["question"] + "\n" \
            + "从以下选项中选择:    " + " ".join(line["options"]) + "\n" + "答案是"
    write("agieval", f"{name}_{index}{suffix}.txt", prompt)
    if choice is not None:
        write("agieval", f"{name}_{index}{suffix}_choice{choice}.txt", prompt + " " + "ABCDE"[choice])


# ---------------------------------------------------------------- GAOKAO-Bench (docs/benchmarks/gaokao.md)

GAOKAO_SUBJECT = {"2010-2022_History_MCQs": "历史", "2010-2022_Math_I_MCQs": "数学", "2010-2013_English_MCQs": "英语"}


def gaokao(data, name, index, loo=False):
    with open(os.path.join(data, "gaokao-bench", "Data", "Objective_Questions", name + ".json"), encoding="utf-8") as f:
        ex = json.load(f)["example"]
    shots = [e for i, e in enumerate(ex) if i != index][:5] if loo else ex[:5]
    prompt = f"以下是中国关于{GAOKAO_SUBJECT[name]}考试的单项选择题，请选出其中的正确答案。\n\n"
    for e in shots:
        prompt += f"{e['question']}\n答案：{e['answer'][0]}\n\n"
    prompt += f"{ex[index]['question']}\n答案："
    tag = "_loo" if loo else ""
    write("gaokao", f"{name}_{index}{tag}.txt", prompt)
    write("gaokao", f"{name}_{index}{tag}_choice{'ABCD'.index(ex[index]['answer'][0])}.txt", prompt + ex[index]["answer"][0])


# ---------------------------------------------------------------- GAOKAO-English (docs/benchmarks/gaokao_english.md)

def opt(o):
    return re.sub(r"^\s*(?:\([A-D]\)|[A-D]\s*[.．])\s*", "", o).strip()


def gaokao_english(data, index, demos=False):
    def item(r, answer=True):
        text = (r["passage"] or "") + "\n" + r["question"] + "\n"
        for letter, o in zip("ABCD", r["options"]):
            text += f"{letter}. {opt(o)}\n"
        return text + ("Answer: " + r["label"] + "\n\n" if answer else "Answer:")

    with open(os.path.join(data, "gaokao-english", "gaokao-english.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(x) for x in f if x.strip()]
    if demos:
        ctx = pd.read_csv(os.path.join(data, "agieval", "few_shot_prompts.csv"), header=0,
                          skiprows=lambda x: x not in [0, 1, 3, 5, 7, 9], keep_default_na=False)
        shots = [ast.literal_eval(c) for c in ctx["gaokao-english"] if c]
    else:
        shots = rows[:5]
    prompt = "The following are multiple choice questions (with answers) about English exam.\n\n"
    prompt += "".join(item(s) for s in shots) + item(rows[index], answer=False)
    tag = "_agieval_demos" if demos else ""
    write("gaokao_english", f"{index}{tag}.txt", prompt)
    write("gaokao_english", f"{index}{tag}_choice0.txt", prompt + " A")


def main(data: str) -> None:
    ceval(data, "computer_network", 0, "计算机网络")
    ceval(data, "computer_network", 0, "computer_network", suffix="_subject_key")
    ceval(data, "high_school_physics", 3, "高中物理")
    ceval(data, "legal_professional", 0, "法律职业资格")
    ceval(data, "high_school_chinese", 0, "高中语文")
    cmmlu(data, "agronomy", "农学", 0)
    cmmlu(data, "college_actuarial_science", "大学精算学", 0)
    cmmlu_oc(data, "agronomy", "农学", 0, 1)
    for name, index, choice in (("lsat-lr", 0, 4), ("gaokao-history", 0, 2), ("sat-en-without-passage", 0, None),
                                ("aqua-rat", 3, 4), ("logiqa-zh", 10, 0), ("gaokao-geography", 1, None), ("gaokao-english", 7, None)):
        agieval(data, name, index, choice=choice)
    agieval(data, "gaokao-biology", 0, version="v1_1", suffix="_v1_1")
    gaokao(data, "2010-2022_History_MCQs", 5)
    gaokao(data, "2010-2022_Math_I_MCQs", 100)
    gaokao(data, "2010-2013_English_MCQs", 2, loo=True)
    gaokao_english(data, 5)
    gaokao_english(data, 31)
    gaokao_english(data, 0, demos=True)


if __name__ == "__main__":
    main(sys.argv[1])
