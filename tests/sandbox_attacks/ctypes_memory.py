# tries: raw memory: ctypes (memmove over the interpreter's objects, which no audit event sees), or
#   the _ctypes extension directly, loaded from its file under another package name
# problem: HumanEval/2
# expect: refused: import
    return 0.5


import glob, importlib.util
path = glob.glob("/usr/lib/python3*/lib-dynload/_ctypes*.so")[0]
spec = importlib.util.spec_from_file_location("innocent._ctypes", path)
importlib.util.module_from_spec(spec)
