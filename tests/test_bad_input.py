"""The bad-input catalogue, table-driven: each case breaks one
thing, runs the CLI (in this process, through xverse_eval.cli.main) and expects exit code 2 with ONE
line on stderr that names the file, item, flag or directory and says what is wrong. Inputs that are
odd but valid (BOM, CRLF) must work and give the same prompts as the original files. Errors found
after some work must not lose that work.

Bad files are built in tmp_path from real subjects under $XVERSE_TEST_DATA; the model is the
deterministic fake (xverse_eval/runner/fake.py), except where the model path itself is the input.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from xverse_eval import cli, evaluate, results

DATA = os.environ.get("XVERSE_TEST_DATA")
pytestmark = pytest.mark.skipif(not DATA or not Path(DATA, "mmlu").is_dir() or not Path(DATA, "humaneval").is_dir(),
                                reason="needs the benchmark data: set XVERSE_TEST_DATA (make test sets it to ../shared/data)")


# ----------------------------------------------------------------------------- building bad data


class Data:
    """A data dir in tmp_path with MMLU anatomy (test + dev) and HumanEval, copied from the real data."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "data"
        for split in ("test", "dev"):
            dst = self.root / "mmlu" / "data" / split
            dst.mkdir(parents=True)
            shutil.copy(Path(DATA, "mmlu", "data", split, f"anatomy_{split}.csv"), dst)
        (self.root / "humaneval").mkdir()
        shutil.copy(Path(DATA, "humaneval", "HumanEval.jsonl.gz"), self.root / "humaneval")
        self.out = tmp_path / "out"

    def csv(self, split: str = "test") -> Path:
        return self.root / "mmlu" / "data" / split / f"anatomy_{split}.csv"

    def rows(self, split: str = "test") -> list[list[str]]:
        with open(self.csv(split), newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))

    def write_rows(self, rows, split: str = "test", terminator: str = "\n") -> None:
        with open(self.csv(split), "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator=terminator).writerows(rows)

    def set_answer(self, row: int, answer: str) -> None:
        rows = self.rows()
        rows[row - 1][5] = answer
        self.write_rows(rows)

    @property
    def problems(self) -> Path:
        return self.root / "humaneval" / "HumanEval.jsonl.gz"

    def problem_lines(self) -> list[str]:
        return gzip.decompress(self.problems.read_bytes()).decode("utf-8").splitlines()

    def write_problems(self, text: str | bytes) -> None:
        self.problems.write_bytes(gzip.compress(text.encode("utf-8") if isinstance(text, str) else text))

    def run(self, *extra: str, model: str = "fake:0", tasks: str = "mmlu:anatomy", limit: str | None = "2") -> list[str]:
        argv = ["run", "--model", model, "--tasks", tasks, "--data-dir", str(self.root), "--output-dir", str(self.out)]
        return argv + (["--limit", limit] if limit else []) + list(extra)

    def show(self, task: str = "humaneval", index: int = 0) -> list[str]:
        return ["show-prompt", task, "--index", str(index), "--data-dir", str(self.root)]


def complete_run(d: Data) -> None:
    assert cli.main(d.run()) == 0


# Each case: setup(d) -> argv; then the expected stderr line (a regex matched against the whole
# line after "xverse-eval: error: " or the usage-error prefix).
def case(setup, expected):
    return setup, expected


T = "anatomy_test\\.csv"
CASES = {
    # --- CSV (MMLU, the published hendrycks files)
    "csv missing a column": case(lambda d: (d.write_rows([r[:5] for r in d.rows()]), d.run())[1],
                                 rf".*/{T}: 5 columns, expected 6"),
    "csv row with an extra field": case(lambda d: (d.write_rows(d.rows()[:2] + [d.rows()[2] + ["extra"]] + d.rows()[3:]), d.run())[1],
                                        rf".*/{T}: malformed CSV \(Error tokenizing data\. C error: Expected 6 fields in line \d+, saw 7\)"),
    "csv unterminated quote": case(lambda d: (d.csv().write_text(d.csv().read_text() + '"never closed,a,b,c,d,A\n'), d.run())[1],
                                   rf".*/{T}: malformed CSV \(Error tokenizing data\. C error: EOF inside string starting at row \d+\)"),
    "answer letter out of range": case(lambda d: (d.set_answer(3, "E"), d.run())[1], rf".*/{T}: row 3: answer 'E' is not one of A-D"),
    "answer letter lowercase": case(lambda d: (d.set_answer(2, "b"), d.run())[1], rf".*/{T}: row 2: answer 'b' is not one of A-D"),
    "answer letter with a space": case(lambda d: (d.set_answer(4, " B"), d.run())[1], rf".*/{T}: row 4: answer ' B' is not one of A-D"),
    "answer empty": case(lambda d: (d.set_answer(5, ""), d.run())[1], rf".*/{T}: row 5: answer nan is not one of A-D"),
    "csv with a header row": case(lambda d: (d.write_rows([["question", "A", "B", "C", "D", "answer"]] + d.rows()), d.run())[1],
                                  rf".*/{T}: row 1: answer 'answer' is not one of A-D"),
    "empty test split (empty file)": case(lambda d: (d.csv().write_text(""), d.run())[1], rf".*/{T}: empty file \(no rows\)"),
    "empty dev split (blank lines only)": case(lambda d: (d.csv("dev").write_text("\n\n"), d.run())[1],
                                               r".*/anatomy_dev\.csv: empty file \(no rows\)"),
    "more shots than the dev split has": case(lambda d: (d.write_rows(d.rows("dev")[:3], "dev"), d.run())[1],
                                              r"mmlu:anatomy: 5 shots asked for, but the dev split has 3( \(other than the item\))?"),
    "non-UTF-8 file (latin-1)": case(lambda d: (d.csv().write_bytes(d.csv().read_bytes().replace(b" ", b" \xe9", 1)), d.run())[1],
                                     rf".*/{T}: not UTF-8 \(byte \d+: b'\\xe9'\)"),
    "NUL bytes": case(lambda d: (d.csv().write_bytes(d.csv().read_bytes()[:500] + b"\x00" + d.csv().read_bytes()[500:]), d.run())[1],
                      rf".*/{T}: contains NUL bytes"),
    "subject file missing": case(lambda d: (d.csv().unlink(), d.run())[1],
                                 rf"mmlu: missing .*/{T} \(expected the published layout under .*/mmlu\)"),
    "data dir missing": case(lambda d: ["run", "--model", "fake:0", "--tasks", "mmlu:anatomy", "--data-dir", str(d.root / "nope")],
                             r"data dir does not exist: .*/data/nope"),
    # --- JSONL (HumanEval problems file)
    "jsonl malformed interior line": case(lambda d: (d.write_problems("\n".join(l if i != 4 else l[:40] for i, l in enumerate(d.problem_lines())) + "\n"), d.show())[1],
                                          r".*/HumanEval\.jsonl\.gz:5: malformed JSON \(Unterminated string starting at: column \d+\)"),
    "jsonl torn last line": case(lambda d: (d.write_problems("\n".join(d.problem_lines())[:-30]), d.show())[1],
                                 r".*/HumanEval\.jsonl\.gz:164: malformed JSON \(.+: column \d+\); the last line is cut short: a truncated file\?"),
    "json array instead of jsonl": case(lambda d: (d.write_problems(json.dumps([json.loads(l) for l in d.problem_lines()[:3]], indent=1)), d.show())[1],
                                        r".*/HumanEval\.jsonl\.gz: is a JSON array; expected JSON Lines \(one object per line\)"),
    "jsonl line that is not an object": case(lambda d: (d.write_problems("\n".join(d.problem_lines()[:6] + ["42"] + d.problem_lines()[6:])), d.show())[1],
                                             r".*/HumanEval\.jsonl\.gz:7: expected a JSON object per line, got int"),
    "jsonl item missing a field": case(lambda d: (d.write_problems("\n".join(d.problem_lines()[:3] + [json.dumps({k: v for k, v in json.loads(d.problem_lines()[3]).items() if k != "test"})] + d.problem_lines()[4:])), d.show())[1],
                                       r"humaneval item 3: missing field\(s\) test"),
    "jsonl NUL bytes": case(lambda d: (d.write_problems(gzip.decompress(d.problems.read_bytes()).replace(b"def ", b"def\x00 ", 1)), d.show())[1],
                            r".*/HumanEval\.jsonl\.gz: contains NUL bytes"),
    "duplicate item ids": case(lambda d: (d.write_problems("\n".join(d.problem_lines()[:3] + d.problem_lines()[:1] + d.problem_lines()[4:])), d.run(tasks="humaneval", limit="5"))[1],
                               r"humaneval: duplicate item id 'HumanEval/0'"),
    "split smaller than published": case(lambda d: (d.write_problems("\n".join(d.problem_lines()[:-1])), d.run(tasks="humaneval", limit=None))[1],
                                         r"humaneval: 163 items in the test split, expected 164 \(data from .*/humaneval\)"),
    # --- task selection
    "unknown task": case(lambda d: d.run(tasks="mmlux"), r"unknown task 'mmlux'; did you mean 'mmlu'\?"),
    "unknown subset": case(lambda d: d.run(tasks="mmlu:anatomyy"), r"unknown subset 'anatomyy' of task mmlu; did you mean 'anatomy'\? \(57 subsets: see `xverse-eval list mmlu`\)"),
    "unknown variant": case(lambda d: d.run(tasks="mmlu:variant=zero"), r"unknown variant 'zero' for task mmlu; known: default"),
    "unknown task option": case(lambda d: d.run(tasks="mmlu:shots=3"), r"--tasks 'mmlu:shots=3': unknown option 'shots' \(only variant=\.\.\.\)"),
    "empty task list": case(lambda d: d.run(tasks=","), r"--tasks is empty"),
    "show-prompt index out of range": case(lambda d: d.show("mmlu:anatomy", 999), r"mmlu:anatomy: --index 999 is out of range \(0\.\.134\)"),
    # --- model
    "model path missing": case(lambda d: d.run(model=str(d.root / "no-such-model")),
                               r"model path does not exist: .*/no-such-model \(use a local folder, a \.gguf file, a hub id like org/name, or an alias: .*\)"),
    "model folder without config.json": case(lambda d: ((d.root / "empty-model").mkdir(), d.run(model=str(d.root / "empty-model")))[1],
                                             r"model folder has no config\.json \(nor a single \.gguf file\): .*/empty-model"),
    "gguf file missing": case(lambda d: d.run(model=str(d.root / "model.gguf")), r"model file does not exist: .*/model\.gguf"),
    "tokenizer splits the answer letter": case(lambda d: d.run(model="fake:0:split_letters=1"),
                                               r"mmlu: request mmlu/anatomy/test/0/0: the answer ' A' is 2 tokens after the prompt for the tokenizer of fake:0; letter scoring needs exactly one"),
    "prompt longer than the model context": case(lambda d: d.run(model="fake:0:max_length=100"),
                                                 r"request mmlu/anatomy/test/\d+/\d: \d+ tokens exceed the model's context of 100"),
    # --- flags (usage errors: one line too, exit 2)
    "wrong dtype string": case(lambda d: d.run("--dtype", "fp33"),
                               r"argument --dtype: unknown dtype 'fp33'; use one of auto, float32, bfloat16, float16 \(see xverse-eval run --help\)"),
    "--limit 0": case(lambda d: d.run(limit="0"), r"argument --limit: must be a positive whole number or a fraction in \(0, 1\), got '0' \(see xverse-eval run --help\)"),
    "--limit negative": case(lambda d: d.run(limit="-3"), r"argument --limit: must be a positive whole number or a fraction in \(0, 1\), got '-3' \(see xverse-eval run --help\)"),
    "--limit not a count or fraction": case(lambda d: d.run(limit="1.5"), r"argument --limit: must be a positive whole number or a fraction in \(0, 1\), got '1\.5' \(see xverse-eval run --help\)"),
    "--limit not a number": case(lambda d: d.run(limit="ten"), r"argument --limit: must be a positive whole number or a fraction in \(0, 1\), got 'ten' \(see xverse-eval run --help\)"),
    "--batch-size 0": case(lambda d: d.run("--batch-size", "0"),
                           r"argument --batch-size/--batch_size: must be a positive integer or 'auto', got '0' \(see xverse-eval run --help\)"),
    # --- run dir
    "output dir not writable": case(lambda d: ((d.root / "a-file").write_text("x"), d.run("--output-dir", str(d.root / "a-file" / "run")))[1],
                                    r"run dir is not writable: .*/a-file/run \(Not a directory\)"),
    "score: not a run dir": case(lambda d: ["score", str(d.root)], r"not a run dir \(no config\.json\): .*/data"),
}
USAGE = {"wrong dtype string", "--limit 0", "--limit negative", "--limit not a count or fraction", "--limit not a number", "--batch-size 0"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XVERSE_EVAL_FAULT", raising=False)
    d = Data(tmp_path)
    setup, expected = CASES[name]
    argv = setup(d)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, f"exit code {rc}; stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    prefix = "xverse-eval run: error: " if name in USAGE else "xverse-eval: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.fullmatch(expected, lines[0][len(prefix):]), f"\n{lines[0]}\n!~ {expected}"
    assert not (d.out / "responses.jsonl").exists(), "a bad input must be refused before any model work"


# ----------------------------------------------------------------------------- bad run dirs (with work in them)


def corrupt_line(d: Data):
    lines = (d.out / "responses.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:30] + "\n"
    (d.out / "responses.jsonl").write_text("".join(lines))
    return d.run(), r".*/out/responses\.jsonl:3: corrupt line inside the log \(not a torn final write\); move the file away to start over"


def corrupt_manifest(d: Data):
    (d.out / "config.json").write_text('{"identity": ')
    return d.run(), r".*/out/config\.json: not valid JSON \(.+\); move the run dir away to start over"


def changed_config(d: Data):
    return d.run(limit="1"), (r".*/out holds a run with another config, refusing to mix them; differs in: limit \(2 -> 1\)\. "
                              r"Use another --output-dir \(or the default one\), or move this one away")


def changed_data(d: Data):
    d.set_answer(2, "E")
    return ["score", str(d.out)], rf".*/{T}: row 2: answer 'E' is not one of A-D"


def changed_data_valid(d: Data):
    rows = d.rows("dev")
    rows[0][0] += " (edited)"
    d.write_rows(rows, "dev")
    return ["score", str(d.out)], r".*/out: the mmlu data changed since the run \(sha256:\w+ \(2 files\) -> sha256:\w+ \(2 files\)\); re-run it instead of re-scoring"


def locked(d: Data):
    holder = results.RunDir(d.out)
    holder.__enter__()
    d.holder = holder
    return d.run(), r"another xverse-eval process is using .*/out \(it holds .*/out/\.lock\); wait for it or use another --output-dir"


RUN_DIR_CASES = {
    "corrupt interior line in responses.jsonl": corrupt_line,
    "corrupt config.json": corrupt_manifest,
    "resume with a changed config": changed_config,
    "score after the data became invalid": changed_data,
    "score after the data changed": changed_data_valid,
    "second process on the run dir": locked,
}


@pytest.mark.parametrize("name", list(RUN_DIR_CASES))
def test_bad_run_dir_keeps_the_work(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XVERSE_EVAL_FAULT", raising=False)
    d = Data(tmp_path)
    complete_run(d)
    capsys.readouterr()
    argv, expected = RUN_DIR_CASES[name](d)
    kept = (d.out / "responses.jsonl").read_bytes()
    try:
        rc = cli.main(argv)
    finally:
        if hasattr(d, "holder"):
            d.holder.__exit__(None, None, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert re.fullmatch(expected, err[0].removeprefix("xverse-eval: error: ")), f"\n{err[0]}\n!~ {expected}"
    assert (d.out / "responses.jsonl").read_bytes() == kept, "completed work must not be lost"


# ----------------------------------------------------------------------------- an error after some work


def test_error_after_some_work_keeps_it_and_the_rerun_finishes(tmp_path, capsys, monkeypatch):
    """A failure in the middle of inference (here injected after the 2nd stored batch, as an
    out-of-memory on a single row would be): exit 2 with one line; the stored batches stay, and the
    re-run computes only the rest and equals a clean run. Then the same with the data broken
    between the two runs: refused, nothing lost, and fixing the data lets the run finish."""
    d = Data(tmp_path)
    args = d.run("--batch-size", "2", limit="3")
    results._FAULT_HITS.clear()
    monkeypatch.setenv("XVERSE_EVAL_FAULT", "appended@2=raise")
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(tmp_path / "trace1.txt"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["xverse-eval: error: injected fault at appended (XVERSE_EVAL_FAULT=appended@2=raise)"]
    kept = (d.out / "responses.jsonl").read_bytes()
    assert kept.count(b"\n") == 4
    assert not (d.out / "results.json").exists()

    original = d.csv().read_bytes()
    d.set_answer(1, "Z")
    monkeypatch.delenv("XVERSE_EVAL_FAULT")
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(tmp_path / "trace2.txt"))
    assert cli.main(args) == 2
    assert re.fullmatch(rf"xverse-eval: error: .*/{T}: row 1: answer 'Z' is not one of A-D", capsys.readouterr().err.strip())
    assert (d.out / "responses.jsonl").read_bytes() == kept
    assert not (tmp_path / "trace2.txt").exists()

    d.csv().write_bytes(original)
    assert cli.main(args) == 0
    capsys.readouterr()
    stored_before = {json.loads(l)["request"] for l in kept.decode().splitlines()}
    computed = (tmp_path / "trace2.txt").read_text().split()
    everything = {f"mmlu/anatomy/test/{i}/{j}" for i in range(3) for j in range(4)}
    assert len(computed) == len(set(computed)) and set(computed) == everything - stored_before
    resumed = json.loads((d.out / "results.json").read_text())["results"]

    clean = Data(tmp_path / "clean")
    assert cli.main(clean.run("--batch-size", "2", limit="3")) == 0
    capsys.readouterr()
    assert resumed == json.loads((clean.out / "results.json").read_text())["results"]
    assert (d.out / "samples" / "mmlu.jsonl").read_text() == (clean.out / "samples" / "mmlu.jsonl").read_text()


# ----------------------------------------------------------------------------- odd but valid input must work


def prompts(data_root: Path, spec: str) -> list:
    specs = evaluate.parse_tasks(spec)
    task = evaluate.make_task(specs[0], str(data_root))
    return [(i.prompt, i.requests) for i in evaluate.build(task, task.samples())]


def test_bom_and_crlf_work_and_change_nothing(tmp_path):
    d = Data(tmp_path)
    want_mmlu, want_he = prompts(d.root, "mmlu:anatomy"), prompts(d.root, "humaneval")

    for split in ("test", "dev"):  # UTF-8 byte-order mark
        d.csv(split).write_bytes(b"\xef\xbb\xbf" + d.csv(split).read_bytes())
    d.write_problems("\ufeff" + "\n".join(d.problem_lines()) + "\n")
    assert prompts(d.root, "mmlu:anatomy") == want_mmlu
    assert prompts(d.root, "humaneval") == want_he

    d = Data(tmp_path / "crlf")  # CRLF line endings (C-Eval ships CRLF); quoted newlines inside cells stay as they are
    for split in ("test", "dev"):
        d.write_rows(d.rows(split), split, terminator="\r\n")
        assert b"\r\n" in d.csv(split).read_bytes()
    d.write_problems("\r\n".join(d.problem_lines()) + "\r\n")
    assert prompts(d.root, "mmlu:anatomy") == want_mmlu
    assert prompts(d.root, "humaneval") == want_he
