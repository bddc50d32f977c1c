"""Unit tests of the durable pieces in xverse_eval/results.py: the tolerant log reader, atomic
writes, the response store and its keys, the run-dir lock and manifest, and the fault hook. Also the
out-of-memory splitting of the transformers runner (with its forward pass replaced, no model)."""
from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xverse_eval.errors import EvalError
from xverse_eval.results import ResponseStore, RunDir, atomic_write, flatten, read_jsonl_tolerant, write_json
from xverse_eval.types import GenerateRequest, Generation, Loglikelihood, LoglikelihoodRequest

MODEL = {"model": "m", "path": "/m", "revision": "abc", "dtype": "float32", "backend": "transformers"}
TASKS = {"mmlu": {"version": "1", "prompt_hash": "p1", "data_revision": "d"}}


def req(i: int, context: str = "ctx", cont: str = " A") -> LoglikelihoodRequest:
    return LoglikelihoodRequest(f"mmlu/x/{i}/0", context, cont)


# ----------------------------------------------------------------------------- read_jsonl_tolerant


def test_torn_last_line_is_cut_off_the_file(tmp_path):
    log = tmp_path / "responses.jsonl"
    log.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b": "tor')
    assert read_jsonl_tolerant(log) == [{"a": 1}, {"a": 2}]
    assert log.read_bytes() == b'{"a": 1}\n{"a": 2}\n'  # so the next append starts on a fresh line


def test_complete_line_missing_only_its_newline_counts_as_torn(tmp_path):
    log = tmp_path / "responses.jsonl"
    log.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert read_jsonl_tolerant(log) == [{"a": 1}]


def test_interior_corruption_is_an_error_naming_file_and_line(tmp_path):
    log = tmp_path / "responses.jsonl"
    original = b'{"a": 1}\n{"a": \n{"a": 3}\n'
    log.write_bytes(original)
    with pytest.raises(EvalError, match=rf"^{log}:2: corrupt line inside the log \(not a torn final write\)"):
        read_jsonl_tolerant(log)
    assert log.read_bytes() == original  # never "repaired" by deleting data


def test_missing_and_empty_logs(tmp_path):
    assert read_jsonl_tolerant(tmp_path / "nope.jsonl") == []
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_jsonl_tolerant(tmp_path / "empty.jsonl") == []


# ----------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"a": 1})
    atomic_write(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def run_child(code: str, cwd: Path, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XVERSE_EVAL_FAULT": fault}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_kill_during_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old\n")
    proc = run_child(f"""
        from pathlib import Path
        from xverse_eval.results import atomic_write
        atomic_write(Path({str(path)!r}), "new\\n")
    """, tmp_path, "atomic_write")
    assert proc.returncode == -signal.SIGKILL
    assert path.read_text() == "old\n"
    leftovers = list(tmp_path.glob(".results.json.tmp.*"))
    assert len(leftovers) == 1
    with RunDir(tmp_path):  # a run dir drops temp files that a killed process never renamed
        pass
    assert not list(tmp_path.glob(".results.json.tmp.*"))


# ----------------------------------------------------------------------------- ResponseStore


def test_store_round_trip_and_exactly_once(tmp_path):
    log = tmp_path / "responses.jsonl"
    store = ResponseStore(log, MODEL, TASKS)
    pairs = [(req(i), Loglikelihood(-float(i) - 0.123456789012345, i % 2 == 0, 1)) for i in range(3)]
    store.append(pairs[:2])
    store.append(pairs)  # the first two again: skipped
    store.append([(req(3), Loglikelihood(-1.0, False, 1)), (req(3), Loglikelihood(-2.0, False, 1))])  # twice in one batch
    lines = log.read_text().splitlines()
    assert len(lines) == 4
    again = ResponseStore(log, MODEL, TASKS)
    for r, resp in pairs:
        assert again.get(r) == resp  # floats survive exactly
    assert again.get(req(3)) == Loglikelihood(-1.0, False, 1)
    gen = GenerateRequest("humaneval/HumanEval/0/0", "def f():\n", 512, ("\nclass",))
    again.append([(gen, Generation("    return 1\n", "eos", 5))])
    assert ResponseStore(log, MODEL, TASKS).get(gen) == Generation("    return 1\n", "eos", 5)


def test_key_covers_model_task_version_prompt_hash_and_request(tmp_path):
    base = ResponseStore(tmp_path / "a.jsonl", MODEL, TASKS).key(req(0))
    assert ResponseStore(tmp_path / "elsewhere.jsonl", dict(MODEL), TASKS).key(req(0)) == base  # not the path
    changed = [
        ResponseStore(tmp_path / "a.jsonl", {**MODEL, "dtype": "bfloat16"}, TASKS).key(req(0)),
        ResponseStore(tmp_path / "a.jsonl", {**MODEL, "revision": "def"}, TASKS).key(req(0)),
        ResponseStore(tmp_path / "a.jsonl", {**MODEL, "model": "other"}, TASKS).key(req(0)),
        ResponseStore(tmp_path / "a.jsonl", MODEL, {"mmlu": {**TASKS["mmlu"], "version": "2"}}).key(req(0)),
        ResponseStore(tmp_path / "a.jsonl", MODEL, {"mmlu": {**TASKS["mmlu"], "prompt_hash": "p2"}}).key(req(0)),
        ResponseStore(tmp_path / "a.jsonl", MODEL, TASKS).key(req(0, context="ctx2")),
        ResponseStore(tmp_path / "a.jsonl", MODEL, TASKS).key(req(0, cont=" B")),
        ResponseStore(tmp_path / "a.jsonl", MODEL, TASKS).key(dataclasses.replace(req(0), whole_sequence=True)),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    # the data revision is not in the key: the request text already carries what the data changes
    assert ResponseStore(tmp_path / "a.jsonl", MODEL, {"mmlu": {**TASKS["mmlu"], "data_revision": "x"}}).key(req(0)) == base


def test_store_line_without_key_is_an_error(tmp_path):
    log = tmp_path / "responses.jsonl"
    log.write_text('{"something": "else"}\n')
    with pytest.raises(EvalError, match=rf"^{log}:1: not a response line"):
        ResponseStore(log, MODEL, TASKS)


# ----------------------------------------------------------------------------- RunDir


def manifest(**identity) -> dict:
    ident = {"model": MODEL, "tasks": TASKS, "limit": None, **identity}
    return {"identity": ident, "command": "x"}


def test_lock_refuses_a_second_holder(tmp_path):
    with RunDir(tmp_path / "run"):
        with pytest.raises(EvalError, match=r"another xverse-eval process is using .*run"):
            with RunDir(tmp_path / "run"):
                pass
    with RunDir(tmp_path / "run"):  # released
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from xverse_eval.results import RunDir
        with RunDir({str(run)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(EvalError, match="another xverse-eval process"):
            with RunDir(run):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with RunDir(run):
        pass


def test_claim_refuses_another_config_listing_the_keys(tmp_path):
    with RunDir(tmp_path / "run") as run:
        run.claim(manifest())
        run.claim(manifest())  # the same identity: fine (resume)
        with pytest.raises(EvalError) as info:
            run.claim(manifest(limit=5, model={**MODEL, "dtype": "bfloat16"}))
        msg = str(info.value)
        assert "\n" not in msg
        assert 'differs in: limit (null -> 5); model.dtype ("float32" -> "bfloat16")' in msg
        # a partial identity (before the model is loaded) compares only what it has
        run.check({"limit": None, "tasks": {"mmlu": {"version": "1", "prompt_hash": "p1"}}}, partial=True)
        with pytest.raises(EvalError, match=r'differs in: tasks\.mmlu\.prompt_hash \("p1" -> "p9"\)'):
            run.check({"tasks": {"mmlu": {"prompt_hash": "p9"}}}, partial=True)
        with pytest.raises(EvalError, match=r"differs in: tasks\.humaneval\.version"):
            run.claim(manifest(tasks={**TASKS, "humaneval": {"version": "1"}}))


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"identity": {')
    with RunDir(run) as rd:
        with pytest.raises(EvalError, match=rf"^{run / 'config.json'}: not valid JSON"):
            rd.claim(manifest())


def test_unwritable_run_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvalError, match=rf"^run dir is not writable: {tmp_path / 'file' / 'run'} \(Not a directory\)"):
        with RunDir(tmp_path / "file" / "run"):
            pass


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1], "e": {}}


# ----------------------------------------------------------------------------- the fault hook


def test_torn_write_fault_leaves_a_torn_tail_that_the_next_open_cuts(tmp_path):
    log = tmp_path / "responses.jsonl"
    code = f"""
        from pathlib import Path
        from xverse_eval.results import ResponseStore
        from xverse_eval.types import Loglikelihood, LoglikelihoodRequest
        store = ResponseStore(Path({str(log)!r}), {MODEL!r}, {TASKS!r})
        for b in range(3):
            store.append([(LoglikelihoodRequest(f"mmlu/x/{{b}}/{{j}}", "c", " A"), Loglikelihood(-1.0, False, 1)) for j in range(3)])
    """
    proc = run_child(code, tmp_path, "torn_write@2")
    assert proc.returncode == -signal.SIGKILL
    data = log.read_bytes()
    assert not data.endswith(b"\n") and data.count(b"\n") == 4  # batch 1 whole, batch 2: one line and a half
    store = ResponseStore(log, MODEL, TASKS)
    assert len(store.done) == 4
    assert log.read_bytes().endswith(b"\n")

    proc = run_child(code, tmp_path, "append@1=raise")  # "=raise": an EvalError instead of a kill
    assert proc.returncode == 1 and "injected fault at append" in proc.stderr


# ----------------------------------------------------------------------------- out of memory (runner)


def test_oom_splits_batches_down_to_single_rows():
    torch = pytest.importorskip("torch")
    from xverse_eval.runner.engine import Engine
    from xverse_eval.runner.scoring import Row, Scorer

    model = Scorer.__new__(Scorer)  # no weights: only the splitting logic is under test
    sizes = []
    # arguments after (batch, requests) vary with the runner's version (prefix cache): pass them neutral
    extra = [{"n": 0}.get(name) for name in list(inspect.signature(Scorer._score_resilient).parameters)[3:]]

    def score(batch, requests, *args, **kwargs):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("injected")
        return [(row.reads[0][0], Loglikelihood(-float(row.reads[0][0]), True, 1)) for row in batch]

    model._score = score
    rows = [Row([1] * (10 - i), [(i, [0], [1], 1)]) for i in range(7)]
    done = model._score_resilient(rows, None, *extra)
    assert sorted(i for i, _ in done) == list(range(7))
    assert sizes == [7, 3, 1, 2, 4, 2, 2]  # halved until it fits, each half once

    def generate(batch, requests):
        if len(batch) > 1:
            raise torch.OutOfMemoryError("injected")
        return [(i, Generation("x", "length", 1)) for i, _ in batch]

    engine = Engine.__new__(Engine)
    engine._generate = generate
    assert sorted(i for i, _ in engine._generate_resilient([(i, [1, 2]) for i in range(5)], None)) == list(range(5))

    model._score = lambda batch, requests, *args, **kwargs: (_ for _ in ()).throw(torch.OutOfMemoryError("injected"))
    with pytest.raises(EvalError, match=r"^out of memory on a single row of 10 tokens"):
        model._score_resilient(rows[:1], None, *extra)


# ----------------------------------------------------------------------------- the pipeline's records


def test_model_args_reach_results_json_and_the_report_footer(data_dir, tmp_path, monkeypatch, capsys):
    """Issue 21: `--model-args` appear in results.json's lm-eval `config.model_args` and in the
    report's footer line of the run (a real tiny Llama checkpoint, a real run)."""
    import json

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_llama import make_checkpoint

    from xverse_eval import cli

    monkeypatch.setenv("XVERSE_EVAL_CACHE", str(tmp_path / "cache"))
    folder = make_checkpoint(tmp_path / "tiny-llama", data_dir)
    out = tmp_path / "run"
    rc = cli.main(["run", "--model", str(folder), "--tasks", "mmlu:anatomy", "--data-dir", data_dir, "--limit", "2",
                   "--device", "cpu", "--model-args", "attn_implementation=eager", "--output-dir", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert "attn_implementation=eager" in config["model_args"].split(",")
    footer = [line for line in stdout.splitlines() if line.startswith("- ") and "xverse-eval" in line and "dtype" in line]
    assert footer and "model args attn_implementation=eager" in footer[0]
