# tries: write the interpreter's own memory through /proc/self/mem (self access passes the kernel's
#   ptrace check), by its name and through /dev/fd
# problem: HumanEval/2
# expect: refused: open for writing
    return 0.5


open("/proc/self/mem", "r+b")
