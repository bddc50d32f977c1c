# tries: a background thread that reads the main thread's frames (sys._current_frames) while the
#   check runs and patches the check's builtins
# problem: HumanEval/2
# expect: refused: sys._current_frames
    import sys, time
    for frame in sys._current_frames().values():
        while frame is not None:
            frame.f_builtins["abs"] = lambda x: 0
            frame = frame.f_back
    return 0.5
