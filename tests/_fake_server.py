"""A small stdlib OpenAI-compatible completions server for the served backend's known-bad behaviours
(tests/test_served.py). The real comparison runs against a real vLLM server; this one exists only to
misbehave on purpose, on 127.0.0.1, in a thread of the test process.

Its "model" is a fixed function of the token ids: after a prefix, the greedy token is `greedy(prefix)`
with log-prob GREEDY_LP, every other token t has `lp(prefix, t)` (< GREEDY_LP). Answers follow
vLLM's shapes: `echo` + `logprobs` returns token_logprobs with null at position 0, tokens as
"token_id:N", top_logprobs with the token and the greedy one. /tokenize uses the tokenizer it is given.

Behaviours (`FakeServer.mode`, changeable between calls): "ok"; "shifted" (the prompt's echoed log-probs
one position late, the generated tokens' right: llama.cpp's server for a tokenizer without BOS); "no_logprobs" (echo returns no
log-probs); "other_tokenizer" (/tokenize answers other ids); "no_tokenize" (no /tokenize endpoint). `fail_next` = [status, ...]: the next
completions calls answer these HTTP statuses (429 with Retry-After: 0) before answering normally.
`calls` counts completions calls.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREEDY_LP = -0.25
MODEL = "fake-served"


def greedy(prefix: list[int]) -> int:
    """The fake model's argmax after `prefix`."""
    return 100 + (sum(prefix) * 31 + len(prefix)) % 5000


def lp(prefix: list[int], token: int) -> float:
    """The fake model's log-prob of `token` after `prefix`."""
    if token == greedy(prefix):
        return GREEDY_LP
    return -(1.0 + ((prefix[-1] if prefix else 7) * 7919 + token * 104729) % 1000 / 100.0)


class FakeServer:
    """Serve on a free port of 127.0.0.1 until `stop()`; `url` is the base URL (…/v1)."""

    def __init__(self, tokenizer, max_model_len: int = 2048):
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self.mode = "ok"
        self.fail_next: list[int] = []
        self.calls = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answers

    def completion(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls += 1
            if self.fail_next:
                status = self.fail_next.pop(0)
                return status, {"error": {"message": f"fake failure {status}", "code": status}}
        if body.get("model") != MODEL:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        prompt = body["prompt"]
        if isinstance(prompt, str):
            prompt = self.tokenizer(prompt, add_special_tokens=False).input_ids
        new = [greedy(prompt)]
        for _ in range(max(0, int(body.get("max_tokens", 16)) - 1)):
            new.append(greedy(prompt + new))
        ids = prompt + new if body.get("echo") else new
        start = 0 if body.get("echo") else len(prompt)
        choice = {"index": 0, "text": self.tokenizer.decode(ids), "finish_reason": "length", "stop_reason": None}
        if body.get("logprobs") is not None and self.mode != "no_logprobs":
            seq = prompt + new
            values = [None if p == 0 else lp(seq[:p], seq[p]) for p in range(len(seq))]
            if self.mode == "shifted":  # the prompt's echo one position late (llama.cpp); new tokens right
                values = [None, None] + values[1 : len(prompt) - 1] + values[len(prompt):]
            tops = [None if p == 0 else {f"token_id:{seq[p]}": values[p], f"token_id:{greedy(seq[:p])}": GREEDY_LP}
                    for p in range(len(seq))]
            choice["logprobs"] = {"tokens": [f"token_id:{t}" for t in seq[start:]], "token_logprobs": values[start:],
                                  "top_logprobs": tops[start:], "text_offset": list(range(len(seq) - start))}
        else:
            choice["logprobs"] = None
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(new), "total_tokens": len(prompt) + len(new)}
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": MODEL, "choices": [choice],
                     "usage": usage, "system_fingerprint": "fake-1"}

    def tokenize(self, body: dict) -> dict:
        ids = self.tokenizer(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True))).input_ids
        if self.mode == "other_tokenizer":
            ids = [t + 1 for t in ids]
        return {"count": len(ids), "tokens": ids, "max_model_len": self.max_model_len}


def _handler(server: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, data: dict) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests",
                                                             "root": None, "max_model_len": server.max_model_len}]})
            elif self.path == "/version":
                self._send(200, {"version": "fake-0"})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path == "/v1/completions":
                self._send(*server.completion(body))
            elif self.path == "/tokenize" and server.mode != "no_tokenize":
                self._send(200, server.tokenize(body))
            else:
                self._send(404, {"error": {"message": "not found"}})

    return Handler
