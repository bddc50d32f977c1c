# tries: a signal handler that exits 0: SIGALRM fires 50 ms into the check (the candidate loops), and
#   SIGPROF (the CPU-time limit) and SIGTERM are caught the same way
# problem: HumanEval/2
# expect: exited with status 0 before the tests finished
    while True:
        pass


import os, signal
for sig in (signal.SIGALRM, signal.SIGPROF, signal.SIGTERM):
    signal.signal(sig, lambda *args: os._exit(0))
signal.setitimer(signal.ITIMER_REAL, 0.05)
