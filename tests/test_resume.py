"""Kill a real run with SIGKILL at several points, re-run the same command, and check that the result
is exactly the uninterrupted one: nothing lost, nothing counted twice, only the missing requests
computed again. Also: the run-dir lock, a changed config refused, `score` refused while incomplete,
and the out-of-memory fallback of the transformers runner.

The killed runs are real `python -m xverse_eval run` processes. Most use the deterministic fake model
(xverse_eval/runner/fake.py: the model is not what is tested there, the pipeline around it is); one
uses the real SmolLM2-135M on CPU. Kill points come from the XVERSE_EVAL_FAULT hook in
xverse_eval/results.py (the process SIGKILLs itself at an exact point) or from the test itself
(SIGKILL while a batch is in flight).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from xverse_eval import cli

DATA = os.environ.get("XVERSE_TEST_DATA")
pytestmark = pytest.mark.skipif(not DATA or not Path(DATA, "mmlu").is_dir(),
                                reason="needs the benchmark data: set XVERSE_TEST_DATA (make test sets it to ../shared/data)")

MODEL = "fake:7"
TASKS = "mmlu:anatomy:astronomy"
LIMIT = 6  # per subject: 12 items, 48 requests, 12 batches of 4
N_REQUESTS = 2 * LIMIT * 4


def run_args(out: Path, model: str = MODEL, limit: int = LIMIT, batch: int = 4) -> list[str]:
    return ["run", "--model", model, "--tasks", TASKS, "--data-dir", DATA, "--limit", str(limit),
            "--batch-size", str(batch), "--output-dir", str(out)]


def child_env(fault: str | None = None, trace: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XVERSE_EVAL_FAULT", "XVERSE_EVAL_FAKE_TRACE")}
    if fault:
        env["XVERSE_EVAL_FAULT"] = fault
    if trace:
        env["XVERSE_EVAL_FAKE_TRACE"] = str(trace)
    return env


def run_killed(args: list[str], fault: str | None, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI in a child process that the fault hook SIGKILLs; it must die by that signal."""
    proc = subprocess.run([sys.executable, "-m", "xverse_eval", *args], cwd=cwd, env=child_env(fault, cwd / "trace-killed.txt"),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, f"expected death by SIGKILL at {fault}, got rc {proc.returncode}:\n{proc.stderr[-2000:]}"
    return proc


def rerun(args: list[str], trace: Path, monkeypatch, capsys) -> None:
    """Re-run the same command (in this process: the CLI's main, as the console script calls it)."""
    monkeypatch.delenv("XVERSE_EVAL_FAULT", raising=False)
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(trace))
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 0, err


def stored_lines(path: Path) -> list[dict]:
    """The complete lines of responses.jsonl (what a resumed run counts as done)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def traced(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def outputs(run: Path) -> dict:
    """What must equal the uninterrupted run: scores, per-item records, and every stored response."""
    results = json.loads((run / "results.json").read_text())["xverse_eval"]  # ours, beside lm-eval's layout
    return {
        "status": results["status"],
        "results": results["results"],
        "samples": {p.name: p.read_text() for p in sorted((run / "samples").glob("*.jsonl"))},
        "responses": {row["key"]: row for row in stored_lines(run / "responses.jsonl")},
        "report_exists": (run / "report.md").is_file(),
    }


def assert_exactly_once(run: Path) -> None:
    rows = stored_lines(run / "responses.jsonl")
    keys = Counter(row["key"] for row in rows)
    assert not [k for k, n in keys.items() if n > 1], "a response was stored twice"
    assert len(rows) == N_REQUESTS
    assert (run / "responses.jsonl").read_bytes().endswith(b"\n")
    assert not list(run.glob(".*.tmp.*")) and not list(run.glob("*/.*.tmp.*")), "temp files of a killed write were left behind"
    for name, text in outputs(run)["samples"].items():
        ids = [json.loads(line)["id"] for line in text.splitlines()]
        assert len(ids) == len(set(ids)) == 2 * LIMIT, name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(run_args(out)) == 0
    ref = outputs(out)
    assert len(ref["responses"]) == N_REQUESTS and ref["report_exists"]
    return ref


# (fault point, what it interrupts); the hook's counts: atomic_write 1 config.json, 2 plan.jsonl,
# 3 samples/mmlu.jsonl, 4 results.json, 5 report.md
KILL_POINTS = {
    "append@3": "a batch computed but not yet written (in flight)",
    "torn_write@4": "mid-write: half of a batch's bytes written and fsynced",
    "appended@12": "every response stored, before scoring",
    "score@1": "during scoring",
    "atomic_write@4": "results.json written to its temp file, not yet renamed",
    "report@1": "results.json written, report.md not yet",
}


@pytest.mark.parametrize("fault", list(KILL_POINTS), ids=list(KILL_POINTS))
def test_kill_then_resume_equals_uninterrupted(fault, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = run_args(out)
    run_killed(args, fault, tmp_path)
    log = out / "responses.jsonl"
    before = [row["request"] for row in stored_lines(log)]
    computed_before = traced(tmp_path / "trace-killed.txt")
    assert set(before) <= set(computed_before)
    if fault.startswith("torn_write"):
        assert not log.read_bytes().endswith(b"\n"), "the kill should have left a torn last line"
    if fault.startswith(("score", "atomic_write", "report")):
        assert len(before) == N_REQUESTS
    if fault.startswith(("append", "torn_write", "appended", "score", "atomic_write")):
        assert not (out / "results.json").exists(), "metrics must not exist before the run is complete"

    rerun(args, tmp_path / "trace-resumed.txt", monkeypatch, capsys)

    resumed = traced(tmp_path / "trace-resumed.txt")
    all_requests = set(reference_requests(reference))
    assert len(resumed) == len(set(resumed)), "a request was computed twice by the resumed run"
    assert set(resumed) == all_requests - set(before), "the resumed run must compute exactly the missing requests"
    assert outputs(out) == reference
    assert_exactly_once(out)


def reference_requests(reference: dict) -> list[str]:
    return [row["request"] for row in reference["responses"].values()]


def test_sigkill_mid_batch_from_outside(reference, tmp_path, monkeypatch, capsys):
    """SIGKILL from another process while batches are in flight (the fake model sleeps per batch)."""
    out = tmp_path / "run"
    args = run_args(out, model=MODEL + ":sleep=0.15")
    log = out / "responses.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "xverse_eval", *args], cwd=tmp_path, env=child_env(trace=tmp_path / "trace-killed.txt"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(stored_lines(log)) < 16 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.07)  # into the next batch's sleep
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = [row["request"] for row in stored_lines(log)]
    assert 16 <= len(before) < N_REQUESTS
    rerun(args, tmp_path / "trace-resumed.txt", monkeypatch, capsys)
    resumed = traced(tmp_path / "trace-resumed.txt")
    assert sorted(resumed) == sorted(set(reference_requests(reference)) - set(before))
    assert outputs(out) == reference
    assert_exactly_once(out)


def test_killed_again_and_again(reference, tmp_path, monkeypatch, capsys):
    """Three kills in a row on one run dir (each resuming the last), then a clean finish; and a
    re-run of a finished run computes nothing and changes nothing."""
    out = tmp_path / "run"
    args = run_args(out)
    for fault in ("torn_write@2", "append@3", "atomic_write@3"):
        run_killed(args, fault, tmp_path)
    rerun(args, tmp_path / "trace-resumed.txt", monkeypatch, capsys)
    assert outputs(out) == reference
    assert_exactly_once(out)
    log_bytes = (out / "responses.jsonl").read_bytes()
    rerun(args, tmp_path / "trace-noop.txt", monkeypatch, capsys)
    assert traced(tmp_path / "trace-noop.txt") == []
    assert (out / "responses.jsonl").read_bytes() == log_bytes
    assert outputs(out) == reference


def test_score_refuses_an_incomplete_run_then_rescores_a_complete_one(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = run_args(out)
    run_killed(args, "append@2", tmp_path)
    assert cli.main(["score", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "mmlu: incomplete run, 4/48 responses stored" in err and "re-run the same command" in err
    assert not (out / "results.json").exists()
    rerun(args, tmp_path / "trace.txt", monkeypatch, capsys)
    (out / "results.json").unlink()
    assert cli.main(["score", str(out)]) == 0  # from saved responses only, no model
    capsys.readouterr()
    assert outputs(out) == reference


def test_second_process_on_one_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = run_args(out, model=MODEL + ":sleep=0.3")
    proc = subprocess.Popen([sys.executable, "-m", "xverse_eval", *args], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not stored_lines(out / "responses.jsonl") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the first run should still be running"
        before = (out / "responses.jsonl").read_bytes()
        monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(tmp_path / "trace-second.txt"))
        assert cli.main(run_args(out)) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"xverse-eval: error: another xverse-eval process is using {out} (it holds {out / '.lock'}); wait for it or use another --output-dir"
        assert not (tmp_path / "trace-second.txt").exists(), "the second process must not compute anything"
        assert (out / "responses.jsonl").read_bytes().startswith(before)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("change, differs", [
    (dict(limit=5), "limit (6 -> 5)"),
    (dict(model="fake:8"), 'model.model ("fake:7" -> "fake:8")'),
])
def test_changed_config_is_refused(change, differs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run_killed(run_args(out), "append@2", tmp_path)
    before = (out / "responses.jsonl").read_bytes()
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(tmp_path / "trace.txt"))
    assert cli.main(run_args(out, **change)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{out} holds a run with another config, refusing to mix them; differs in: {differs}" in err
    assert (out / "responses.jsonl").read_bytes() == before
    assert not (tmp_path / "trace.txt").exists()


# ----------------------------------------------------------------------------- the real model

REAL_TEST = "test_real_model_killed_mid_run_resumes_exactly"
REAL_ARGS = ["run", "--model", "smollm2-135m", "--tasks", "mmlu:world_religions", "--limit", "3", "--batch-size", "1", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def real_child(request, tmp_path_factory):
    """The real-model run to be killed is a child process that spends most of its life loading the
    model; start it when this module starts, so that load overlaps the fake-model tests."""
    if not DATA or not any(item.name == REAL_TEST for item in request.session.items):
        yield None
        return
    cwd = tmp_path_factory.mktemp("real-kill")
    args = [*REAL_ARGS, "--data-dir", DATA, "--output-dir", str(cwd / "run")]
    proc = subprocess.Popen([sys.executable, "-m", "xverse_eval", *args], cwd=cwd, env=child_env("append@2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc, cwd, args
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stderr.close()


@pytest.fixture(scope="module")
def smollm2_model(request):
    try:
        return request.getfixturevalue("smollm2")  # tests/conftest.py's shared fixture, where it exists
    except pytest.FixtureLookupError:
        pytest.importorskip("torch")
        from xverse_eval.runner import load_model

        return load_model("smollm2-135m", device="cpu")


@pytest.mark.slow
def test_real_model_killed_mid_run_resumes_exactly(real_child, smollm2_model, tmp_path, monkeypatch):
    """SmolLM2-135M on CPU, 3 MMLU items (world_religions: the shortest 5-shot prompts), one per
    batch: the child loads the model, stores batch 1 and is SIGKILLed with batch 2 computed but not
    written; the resumed run computes the other two items only, and the result equals an uninterrupted run
    (same batch size, so the same arithmetic)."""
    from xverse_eval import evaluate

    model = smollm2_model
    proc, cwd, args = real_child
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == -signal.SIGKILL, f"expected death by SIGKILL at append@2, got rc {proc.returncode}:\n{stderr[-2000:]}"
    out = cwd / "run"
    before = [row["request"] for row in stored_lines(out / "responses.jsonl")]
    assert len(before) == 4 and len({key.rsplit("/", 1)[0] for key in before}) == 1  # one item (the 4 letters of one row)
    everything = {f"mmlu/world_religions/test/{i}/{j}" for i in range(3) for j in range(4)}

    calls = []
    original = model.loglikelihood

    def counting(requests, on_done=None):
        calls.extend(r.key for r in requests)
        return original(requests, on_done=on_done)

    monkeypatch.setattr(model, "loglikelihood", counting)
    monkeypatch.setattr(model, "batch_size", 1)
    specs = evaluate.parse_tasks("mmlu:world_religions")
    path, resumed = evaluate.run("smollm2-135m", specs, data_dir=DATA, limit=3, output_dir=str(out), model=model)
    assert len(calls) == len(set(calls)) and set(calls) == everything - set(before)
    calls.clear()
    _, uninterrupted = evaluate.run("smollm2-135m", specs, data_dir=DATA, limit=3, output_dir=str(tmp_path / "ref"), model=model)
    assert resumed["results"] == uninterrupted["results"]
    # every record equal; the choice log-probs up to float rounding (which rows share a prefix pass
    # depends on which requests are left, so the resumed run groups its rows differently)
    got, ref = (read_records(d / "samples" / "mmlu.jsonl") for d in (out, tmp_path / "ref"))
    assert [strip_scores(r) for r in got] == [strip_scores(r) for r in ref]
    for a, b in zip(got, ref):
        assert a["extra"]["choice_scores"]["logprob"] == pytest.approx(b["extra"]["choice_scores"]["logprob"], abs=1e-5)
    rows = stored_lines(out / "responses.jsonl")
    assert len(rows) == len({r["key"] for r in rows}) == 12


@pytest.mark.slow
def test_real_model_out_of_memory_halves_the_batch(smollm2_model, monkeypatch):
    """torch.OutOfMemoryError on any batch of more than one row (injected: this is a CPU box) makes
    the runner split the batch and go on; every response arrives once, equal to the unsplit ones."""
    import torch

    from xverse_eval.errors import EvalError
    from xverse_eval.types import LoglikelihoodRequest

    model = smollm2_model
    contexts = ["The capital of France is", "Two plus two equals", "The opposite of hot is"]
    requests = [LoglikelihoodRequest(f"t/{i}/{j}", c, w) for i, c in enumerate(contexts) for j, w in enumerate([" Paris", " four", " cold"])]
    monkeypatch.setattr(model, "batch_size", "auto")
    plain = model.loglikelihood(requests)

    scorer = model.scorer
    real_score = scorer._score
    seen_sizes = []

    def score_or_oom(batch, reqs, *args, **kwargs):
        seen_sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_score(batch, reqs, *args, **kwargs)

    monkeypatch.setattr(scorer, "_score", score_or_oom)
    delivered = []
    split = model.loglikelihood(requests, on_done=delivered.extend)
    n_rows = len(scorer._rows(requests))
    assert n_rows >= 3 and max(seen_sizes) > 1 and seen_sizes.count(1) == n_rows  # split down to single rows
    assert sorted(r.key for r, _ in delivered) == sorted(r.key for r in requests)
    for a, b in zip(plain, split):
        assert a.n_tokens == b.n_tokens and a.logprob == pytest.approx(b.logprob, abs=1e-4)

    # a single row that does not fit: a clear error, and the batches before it were delivered
    monkeypatch.setattr(scorer, "_score", lambda batch, reqs, *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("injected")))
    with pytest.raises(EvalError, match=r"out of memory on a single row of \d+ tokens"):
        model.loglikelihood(requests[:3])


@pytest.mark.slow
def test_real_model_prompt_longer_than_context(smollm2_model, tmp_path, monkeypatch):
    """A prompt over the model's context is refused, naming the request, before any batch runs."""
    from xverse_eval import evaluate
    from xverse_eval.errors import EvalError

    monkeypatch.setattr(smollm2_model, "max_length", 64)
    with pytest.raises(EvalError, match=r"^request mmlu/anatomy/test/\d+/\d: \d+ tokens exceed the model's context of 64$"):
        evaluate.run("smollm2-135m", evaluate.parse_tasks("mmlu:anatomy"), data_dir=DATA, limit=2, output_dir=str(tmp_path / "run"), model=smollm2_model)
    assert not (tmp_path / "run" / "responses.jsonl").exists()


# ----------------------------------------------------------------------------- two runs at once


def test_second_run_never_cuts_the_first_runs_write_in_flight(reference, tmp_path, capsys):
    """Issue 20: a second `run` of the same command, started while the first is half-way through
    writing a batch, must not cut that batch off the file (only the lock holder repairs a file).
    The first run holds a half-written batch (XVERSE_EVAL_FAULT=torn_write@2=stall) while the second
    one -- the default run dir, so it reads the stored responses for its resume shortcut before it
    can know the lock is taken -- runs; then the first finishes exactly as if alone."""
    args = [a for a in run_args(tmp_path / "unused") if a not in ("--output-dir", str(tmp_path / "unused"))]
    env = {**child_env("torn_write@2=stall"), "XVERSE_EVAL_FAULT_STALL": "8"}
    first = subprocess.Popen([sys.executable, "-m", "xverse_eval", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        torn = None
        while time.monotonic() < deadline and first.poll() is None:
            found = list(tmp_path.glob("results/runs/*/*/responses.jsonl"))
            if found and found[0].read_bytes() and not found[0].read_bytes().endswith(b"\n"):
                torn = found[0]
                break
            time.sleep(0.02)
        assert torn is not None, "the first run never held a half-written batch"
        before = torn.read_bytes()
        second = subprocess.run([sys.executable, "-m", "xverse_eval", *args], cwd=tmp_path, env=child_env(),
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run should still be holding its write"
        assert second.returncode == 2, second.stderr
        assert "another xverse-eval process is using" in second.stderr.strip().splitlines()[-1]
        assert torn.read_bytes() == before, "the second run changed the first run's file"
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        first.stderr.close()
    assert_exactly_once(torn.parent)  # every line whole, each response once
    assert outputs(torn.parent) == reference
    assert cli.main(["score", str(torn.parent)]) == 0  # and the file reads back whole
    capsys.readouterr()


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_scores(record: dict) -> dict:
    """The record without its choice log-probs (compared with a tolerance)."""
    return {**record, "extra": {k: v for k, v in record["extra"].items() if k != "choice_scores"}}
