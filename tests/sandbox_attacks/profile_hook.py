# tries: a profile hook (sys.setprofile; also threading.setprofile) that sees the check's frame when
#   it is called and rewrites what it compares against
# problem: HumanEval/2
# expect: refused: sys.setprofile
    return 0.5


import sys, threading
threading.setprofile(lambda *a: None)
sys.setprofile(lambda frame, event, arg: frame.f_locals)
