# tries: a trace function that, when the check's frame starts, jumps its line to the last one
#   (frame.f_lineno), so every assertion is skipped and the check returns normally
# problem: HumanEval/2
# expect: refused: sys.settrace
    return 0.5


import sys
def tracer(frame, event, arg):
    if frame.f_code.co_name == "check" and event == "line":
        frame.f_lineno = frame.f_code.co_firstlineno + 4
    return tracer
sys.settrace(tracer)
