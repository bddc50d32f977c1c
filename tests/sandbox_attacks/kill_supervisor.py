# tries: kill whatever judges from inside: the parent, pid 1, every process the uid may signal, then
#   exit 0, so that a harness that saw no one object might count a pass
# problem: HumanEval/2
# expect: exited with status 0 before the tests finished
    return 0.5


import os, signal
for target in (os.getppid(), 1, -1):
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
        try:
            os.kill(target, sig)
        except OSError:
            pass
os._exit(0)
