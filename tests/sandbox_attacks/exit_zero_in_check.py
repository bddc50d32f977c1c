# tries: exit 0 from inside the check, at the first call of the candidate: os._exit(0), after a
#   flush, so the process status is a clean 0 and no assertion ever fails
# problem: HumanEval/2
# expect: exited with status 0 before the tests finished
    import os, sys
    sys.stdout.flush()
    os._exit(0)
