# tries: patch `abs` only while the check runs (from inside the candidate, so nothing is patched
#   before the check starts), and undo it from the fake abs itself, so nothing looks patched after
# problem: HumanEval/2
# expect: AssertionError
    import builtins
    real = builtins.abs
    def fake(x):
        builtins.abs = real
        return 0
    builtins.abs = fake
    return 0.5
