# tries: skip the check by rewriting the trusted state reachable from the program: every closure cell
#   of every function in __main__ (cell_contents is writable), the bottom frame's globals (the names
#   it calls after the program: exec, sys, the check event's name), and f_locals of every frame
#   below (which write through from Python 3.13; the bottom frame's f_locals are its globals, so
#   `sys` is None there when it asks for the check: an AttributeError)
# problem: HumanEval/2
# expect: AssertionError | refused | AttributeError
    return 0.5


import __main__, sys, types
for value in list(vars(__main__).values()):
    for cell in getattr(value, "__closure__", None) or ():
        try:
            cell.cell_contents = None
        except Exception:
            pass
fake_sys = types.SimpleNamespace(audit=lambda *a: None, stdout=sys.stdout, stderr=sys.stderr)
__main__.sys = fake_sys
__main__.CHECK_EVENT = "nothing"
frame = sys._getframe(0).f_back
while frame is not None:
    for name in list(frame.f_locals):
        try:
            frame.f_locals[name] = None
        except Exception:
            pass
    frame = frame.f_back
