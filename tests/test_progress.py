"""Progress lines when stderr is not a terminal (CI, nohup, `| tee`): xverse_eval/progress.py.

The line format and timing are checked on a fake clock with hand-computed numbers; the heartbeat on
a real (short) interval; and the whole path on a real `python -m xverse_eval run` process whose
stderr is a pipe (the deterministic fake model, which reports through progress.py like the real
backends).
"""
from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xverse_eval.progress import LineProgress, _interval, duration, progress

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def reporter(total=50, interval=10.0):
    clock, lines = Clock(), []
    return LineProgress(total, "loglikelihood", "req", interval=interval, clock=clock, emit=lines.append), clock, lines


def test_lines_on_a_fake_clock():
    bar, clock, lines = reporter()
    clock.t += 4
    bar.update(8)  # 4 s < 10 s: no line yet
    assert lines == []
    clock.t += 6
    bar.update(12)  # 10 s: 20/50 done at 2.0 req/s; 30 left -> 15 s
    assert lines == ["loglikelihood: 20/50 req (40%), 2.0 req/s, 10s elapsed, ETA 15s"]
    clock.t += 9
    bar.update(5)  # 9 s after the last line: none
    assert len(lines) == 1
    clock.t += 81
    bar.update(25)  # 100 s: 50/50, nothing left: no ETA
    assert lines[-1] == "loglikelihood: 50/50 req (100%), 0.5 req/s, 1m40s elapsed"
    bar.close()
    bar.close()  # once only
    assert lines[-1] == "loglikelihood: 50/50 req (100%), 0.5 req/s, 1m40s elapsed, done"
    assert len(lines) == 3
    bar.update(1)  # after close: silent
    assert len(lines) == 3


def test_interval_zero_prints_only_the_final_line_and_empty_phases_print_nothing():
    bar, clock, lines = reporter(total=4, interval=0)
    for _ in range(4):
        clock.t += 100
        bar.update(1)
    bar.close()
    assert lines == ["loglikelihood: 4/4 req (100%), 0.6 req/min, 6m40s elapsed, done"]
    empty, _, lines = reporter(total=0)
    empty.close()
    assert lines == []


def test_eta_and_duration_formats():
    bar, clock, lines = reporter(total=7300)
    clock.t += 10
    bar.update(1)  # 0.1 req/s, 7299 left -> 72990 s = 20h16m30s
    assert lines == ["loglikelihood: 1/7300 req (0%), 0.1 req/s, 10s elapsed, ETA 20h16m"]
    assert [duration(s) for s in (0, 59.4, 60, 187, 3600, 7500)] == ["0s", "59s", "1m00s", "3m07s", "1h00m", "2h05m"]


def test_a_slow_rate_is_given_per_minute():
    bar, clock, lines = reporter(total=16)
    clock.t += 150
    bar.update(3)  # 3 in 150 s = 0.02/s = 1.2/min; 13 left -> 650 s
    assert lines == ["loglikelihood: 3/16 req (19%), 1.2 req/min, 2m30s elapsed, ETA 10m50s"]


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("XVERSE_EVAL_PROGRESS_EVERY", "2.5")
    assert _interval() == 2.5
    monkeypatch.setenv("XVERSE_EVAL_PROGRESS_EVERY", "0")
    assert _interval() == 0
    for bad in ("soon", "-1"):
        monkeypatch.setenv("XVERSE_EVAL_PROGRESS_EVERY", bad)
        assert _interval() == 10.0
    monkeypatch.delenv("XVERSE_EVAL_PROGRESS_EVERY")
    assert _interval() == 10.0


def test_heartbeat_reports_a_slow_batch_and_stops_when_closed():
    lines = []
    bar = LineProgress(16, "generate", "req", interval=0.05, emit=lines.append, heartbeat=True)
    time.sleep(0.4)  # one long batch: no update at all
    assert len(lines) >= 2, lines
    assert all(re.fullmatch(r"generate: 0/16 req \(0%\), 0\.0 req/s, \d+s elapsed", line) for line in lines), lines
    bar.update(16)
    bar.close()
    assert lines[-1].startswith("generate: 16/16 req (100%)") and lines[-1].endswith(", done")
    count = len(lines)
    time.sleep(0.2)
    assert len(lines) == count and not bar._thread.is_alive()


def test_heartbeat_stops_when_a_failed_phase_drops_its_reporter():
    """A phase that raises before close() must not leave a thread printing after the error."""
    lines = []
    bar = LineProgress(3, "generate", "req", interval=0.05, emit=lines.append, heartbeat=True)
    thread = bar._thread
    del bar
    gc.collect()
    thread.join(timeout=2)
    assert not thread.is_alive()


def test_progress_picks_lines_off_a_terminal_and_nothing_when_disabled():
    # pytest captures stderr: not a terminal here
    assert not sys.stderr.isatty()
    with progress(3, "generate") as bar:
        assert isinstance(bar, LineProgress) and bar._thread is not None
    assert not isinstance(progress(3, "generate", enabled=False), LineProgress)


def test_a_run_with_stderr_in_a_pipe_prints_progress_lines(data_dir, tmp_path):
    """The real CLI in a child process, stderr a pipe: periodic lines while it runs, then the final one."""
    env = dict(os.environ, XVERSE_EVAL_PROGRESS_EVERY="0.1", PYTHONPATH=str(REPO))
    # mmlu:anatomy, 6 items x 4 letters = 24 requests, 4 per batch, 0.15 s per batch: ~0.9 s of work
    argv = [sys.executable, "-m", "xverse_eval", "run", "--model", "fake:0:sleep=0.15", "--tasks", "mmlu:anatomy",
            "--limit", "6", "--data-dir", data_dir, "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("loglikelihood: ")]
    pattern = r"loglikelihood: (\d+)/24 req \(\d+%\), \d+\.\d req/s, \d+s elapsed(, ETA \d+s)?(, done)?"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert len(lines) >= 3, proc.stderr  # some while it ran, not only the last
    done = [int(re.match(pattern, line).group(1)) for line in lines]
    assert done == sorted(done) and done[0] < 24
    assert lines[-1].startswith("loglikelihood: 24/24 req (100%)") and lines[-1].endswith(", done")
    assert "\r" not in proc.stderr  # no terminal bar in a log


def test_brief_phase_is_silent_when_short_and_reports_when_long():
    """The pipeline's own phases (load data, build, score) are `brief`: a small run prints nothing for
    them (so an error after them is still the only line), a long one reports like any other, and a
    phase that fails never prints a closing "done"."""
    clock, lines = Clock(), []
    short = LineProgress(10, "build", "item", interval=10.0, clock=clock, emit=lines.append, brief=True)
    clock.t += 3
    short.update(10)
    short.close()
    assert lines == []
    long = LineProgress(10, "build", "item", interval=10.0, clock=clock, emit=lines.append, brief=True)
    clock.t += 12
    long.update(4)
    long.update(6)
    long.close()
    assert lines == ["build: 4/10 item (40%), 0.3 item/s, 12s elapsed, ETA 18s", "build: 10/10 item (100%), 0.8 item/s, 12s elapsed, done"]
    failed = LineProgress(10, "load data", "task", interval=10.0, clock=clock, emit=lines.append)
    with pytest.raises(ValueError):
        with failed:
            clock.t += 20
            raise ValueError("bad data")
    assert len(lines) == 2  # no "load data: 0/10 task, done" after an error


def test_a_run_reports_every_phase_in_a_pipe(data_dir, tmp_path):
    """Load data, build, the model's phase and score each report in a log once they take longer than
    the interval (here 0: every phase's closing line)."""
    env = dict(os.environ, XVERSE_EVAL_PROGRESS_EVERY="0", PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "xverse_eval", "run", "--model", "fake:0", "--tasks", "mmlu:anatomy",
            "--limit", "3", "--data-dir", data_dir, "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    phases = [line.split(":")[0] for line in proc.stderr.splitlines() if line.endswith(", done")]
    assert phases == ["load data", "build", "loglikelihood", "score"], proc.stderr
