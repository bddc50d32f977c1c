# tries: find the check function, its private builtins and the wrapper's closures through the
#   garbage collector (gc.get_objects, get_referrers) and patch them
# problem: HumanEval/2
# expect: refused: gc.get_objects
    import gc
    for obj in gc.get_objects():
        if isinstance(obj, dict) and "abs" in obj and obj is not __builtins__:
            obj["abs"] = lambda x: 0
    return 0.5
