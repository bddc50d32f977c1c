# tries: take a frame before the check starts (allowed then: the wrapper's, below the program) and,
#   from the candidate, walk it to reach the check's globals and builtins, or an exception's
#   traceback frame
# problem: HumanEval/2
# expect: refused tb_frame
    try:
        raise ValueError
    except ValueError as exc:
        tb = exc.__traceback__
    frame = tb.tb_frame.f_back
    frame.f_builtins["abs"] = lambda x: 0
    return 0.5


import sys
SAVED = sys._getframe(0).f_back
