# tries: catch the guard itself mid-run: a 20 us interval timer whose handler interrupts whatever
#   runs, takes its own frame's f_back and, when that is the guard's frame, rewrites the guard's state
#   through f_locals (which writes through to its cells from Python 3.13), while the program raises
#   audit events in a loop so that the guard runs most of the time
# problem: HumanEval/2
# expect: AssertionError
    return 0.5


import os, signal, sys, time
hits = []
def handler(signum, frame):
    try:
        below = sys._getframe(0).f_back
        if below is not None and below.f_code.co_name == "guard":
            hits.append(below)
            below.f_locals["state"] = 2
            below.f_locals["test_code"] = compile("def check(candidate):\n    pass\n", "fake", "exec")
    except Exception:
        pass
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.00002, 0.00002)
end = time.monotonic() + 0.3
while time.monotonic() < end:
    try:
        sys.audit("anything", 1)
        open(__file__).close()
    except Exception:
        pass
signal.setitimer(signal.ITIMER_REAL, 0)
