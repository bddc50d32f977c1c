# tries: reach /proc/<pid>/mem or the supervisor's fds by a name without "proc" in it: a symlink in
#   /tmp, /dev/fd/../.., a chdir into /proc
# problem: HumanEval/2
# expect: refused
    return 0.5


import os
try:
    open("/dev/fd/../mem", "r+b")
finally:
    os.symlink("/proc/self/mem", "/tmp/m")
