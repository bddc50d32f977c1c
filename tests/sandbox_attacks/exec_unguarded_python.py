# tries: start a fresh interpreter (no audit hook in it) that connects to the supervisor as soon as
#   it can: subprocess, os.execv in place (keeping the pid the supervisor trusts), posix_spawn
# problem: HumanEval/2
# expect: refused: os.exec
    return 0.5


import os, sys
os.execv(sys.executable, [sys.executable, "-c", "import _socket"])
