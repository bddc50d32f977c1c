# tries: the candidate leaves an object in its frame whose __del__ runs while the AssertionError
#   unwinds the check: it exits 0 from there, and tries to connect to the supervisor first
# problem: HumanEval/2
# expect: refused: socket.connect
    class Swallow:
        def __del__(self):
            import _socket, os
            for name in open("/proc/net/unix").read().split():
                if name.startswith("@xverse-sandbox-"):
                    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                    s.connect(b"\0" + name[1:].encode())
            os._exit(0)
    keep = Swallow()
    return 0.0
