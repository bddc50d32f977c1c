# tries: run the trusted wrapper's own bottom-frame code again (found by walking f_back from the
#   program's frame), with globals of the program's choosing, so its `else` branch connects
# problem: HumanEval/2
# expect: refused
    return 0.5


import sys
sys.argv = open("/proc/self/cmdline", "rb").read().decode().split("\0")[3:-1]  # what the wrapper read
frame = sys._getframe(0)
while frame.f_back is not None:
    frame = frame.f_back
exec(frame.f_code, {"__name__": "__main__", "_run": lambda: None})
