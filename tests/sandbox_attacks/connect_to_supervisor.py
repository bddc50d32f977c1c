# tries: produce the pass signal itself: find the supervisor's abstract socket in /proc/net/unix and
#   connect to it, from the main thread, from a thread, and through the wrapper's own bound connect
#   method found in __main__, then exit 0
# problem: HumanEval/2
# expect: refused: socket.connect
    return 0.5


import __main__, _socket, os, threading
names = [n for n in open("/proc/net/unix").read().split() if n.startswith("@xverse-sandbox-")]
address = b"\0" + names[0][1:].encode()
thread = threading.Thread(target=lambda: _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM).connect(address))
thread.start()
thread.join()  # the thread's try first, then the main thread's: the verdict names the first refusal
getattr(__main__, "_connect")(address)
os._exit(0)
