# tries: raise SystemExit(0) inside the check (sys.exit(0) at the first call): Python exits with status
#   0 and no traceback, which a harness judging by exit status counts as a pass
# problem: HumanEval/2
# expect: exited with status 0 before the tests finished
    raise SystemExit(0)
