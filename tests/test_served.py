"""The served backend (runner/served.py).

Against a real vLLM server (marked `served`; `make test-served` builds its venv and runs them): the
session fixture serves SmolLM2-135M float32 -- the very weights `--model smollm2-135m --dtype float32`
evaluates in-process -- and the same MMLU / PIQA / RACE / GSM8K items run both ways must give the same
predictions, log-likelihoods within 1e-3 and identical greedy texts; a server killed mid-run is
resumed, every request stored once. They run only under `-m served`, and skip, saying so, when the
vLLM venv is not built.

Against tests/_fake_server.py (fast, unmarked): only the known-bad behaviours a real server does not
show on demand -- a shifted echo, 429 / 503 then success, a 400 that must fail at once, no prompt
log-probs, another tokenizer, a wrong model name -- and the null first-token log-prob of whole-sequence
PPL. An unreachable URL exits 2 in one line.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from xverse_eval.errors import EvalError
from xverse_eval.runner.served import ServedModel, parse_options
from xverse_eval.types import GenerateRequest, LoglikelihoodRequest

sys.path.insert(0, str(Path(__file__).parent))
import _fake_server as fake  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
XE = [sys.executable, "-m", "xverse_eval"]


def _serve_script():
    """scripts/serve_smollm2.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("serve_smollm2", ROOT / "scripts" / "serve_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- options (no server)


def test_options_spellings():
    ours = parse_options("openai-completions:http://127.0.0.1:8000/v1/", {"model": "m", "max_concurrency": 4})
    lm_eval = parse_options("local-completions", {"base_url": "http://127.0.0.1:8000/v1/completions", "model": "m",
                                                  "num_concurrent": 4, "tokenized_requests": True})
    assert ours == lm_eval
    assert ours.base_url == "http://127.0.0.1:8000/v1" and ours.root == "http://127.0.0.1:8000"
    assert parse_options("openai-completions:http://h:1", None).base_url == "http://h:1/v1"
    with pytest.raises(EvalError, match="no prompt log-probabilities"):
        parse_options("local-chat-completions", {"base_url": "http://h:1/v1"})
    with pytest.raises(EvalError, match="not an option of the served backend"):
        parse_options("openai-completions:http://h:1/v1", {"temperature": 0.7})
    with pytest.raises(EvalError, match="give the server"):
        parse_options("local-completions", {"model": "m"})
    with pytest.raises(EvalError, match="always sends token ids"):
        parse_options("local-completions", {"base_url": "http://h:1/v1", "tokenized_requests": False})


def test_unreachable_url_exits_2_in_one_line(tmp_path, data_dir):
    port = _serve_script().free_port()  # nothing listens there
    proc = subprocess.run([*XE, "run", "--model", f"openai-completions:http://127.0.0.1:{port}/v1", "--tasks", "piqa",
                           "--limit", "1", "--data-dir", data_dir, "--output-dir", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the server" in lines[0] and "connection refused" in lines[0], proc.stderr


# ----------------------------------------------------------------------------- known-bad servers (fake)


@pytest.fixture(scope="module")
def tokenizer():
    from xverse_eval.runner.load import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


@pytest.fixture
def server(tokenizer):
    s = fake.FakeServer(tokenizer)
    yield s
    s.stop()


def _load(server, **args):
    return ServedModel.load(f"openai-completions:{server.url}", model_args={"tokenizer": "smollm2-135m", **args})


def _expected(tokenizer, context: str, continuation: str, whole_sequence: bool = False):
    """(continuation logprob, context logprob of tokens 2..N) of the fake model, from its formula."""
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    seq = tokenizer(context + continuation, add_special_tokens=False).input_ids
    cont = sum(fake.lp(seq[:p], seq[p]) for p in range(len(ctx), len(seq)))
    return cont, sum(fake.lp(seq[:p], seq[p]) for p in range(1, len(ctx)))


def test_fake_server_scores_whole_sequences_past_the_null_first_logprob(server, tokenizer):
    model = _load(server)
    assert model.fingerprint["server"] == {"id": "fake-served", "root": None, "owned_by": "tests", "max_model_len": 2048,
                                           "version": "fake-0", "system_fingerprint": "fake-1"}
    assert "127.0.0.1" not in json.dumps(model.fingerprint)  # the URL is not identity
    reqs = [LoglikelihoodRequest("a", "The capital of France is", " Paris"),
            LoglikelihoodRequest("b", "The capital of France is", " Paris", whole_sequence=True),
            LoglikelihoodRequest("c", "Question: 2+2=? Answer:", " A")]
    seen = []
    out = model.loglikelihood(reqs, on_done=seen.extend)
    assert sorted(r.key for r, _ in seen) == ["a", "b", "c"]
    cont, ctx = _expected(tokenizer, reqs[1].context, reqs[1].continuation)
    assert out[0].logprob == pytest.approx(cont, abs=1e-9) and out[0].context_logprob is None
    assert out[1].logprob == pytest.approx(cont, abs=1e-9) and out[1].context_logprob == pytest.approx(ctx, abs=1e-9)
    assert out[1].n_context_tokens == len(tokenizer(reqs[1].context, add_special_tokens=False).input_ids)
    assert server.calls == 2 + 2  # the self-check's two, then one per distinct token row (a and b share theirs)


def test_fake_server_generation_cuts_stop_strings_here(server, tokenizer):
    model = _load(server)
    prompt = "def f(x):"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    new = []
    for _ in range(8):
        new.append(fake.greedy(ids + new))
    full = tokenizer.decode(new)
    stop = full[len(full) // 2 : len(full) // 2 + 2]  # the fake server applies no stop string: the client must
    [plain, cut] = model.generate([GenerateRequest("p", prompt, 8), GenerateRequest("s", prompt, 8, (stop,))])
    assert (plain.text, plain.finish_reason, plain.n_tokens) == (full, "length", 8)
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"


def test_429_and_503_are_retried(server, tokenizer):
    model = _load(server)
    server.calls, server.fail_next = 0, [429, 503]
    req = LoglikelihoodRequest("a", "The capital of France is", " Paris")
    [resp] = model.loglikelihood([req])
    assert resp.logprob == pytest.approx(_expected(tokenizer, req.context, req.continuation)[0], abs=1e-9)
    assert server.calls == 3


def test_other_4xx_fails_fast_in_one_line(server):
    model = _load(server, retries=5)
    server.calls, server.fail_next = 0, [400]
    with pytest.raises(EvalError) as err:
        model.loglikelihood([LoglikelihoodRequest("a", "The capital of France is", " Paris")])
    assert "HTTP 400: fake failure 400" in str(err.value) and "\n" not in str(err.value)
    assert server.calls == 1  # no retry


def test_retries_give_up_with_the_count(server):
    model = _load(server, retries=1)
    server.fail_next = [500, 500]
    with pytest.raises(EvalError, match=r"HTTP 500: fake failure 500 \(after 1 retries\)"):
        model.loglikelihood([LoglikelihoodRequest("a", "The capital of France is", " Paris")])


@pytest.mark.parametrize("mode, message", [
    ("shifted", "echoed log-probabilities disagree with its own generation"),
    ("no_logprobs", "returned no prompt log-probabilities"),
    ("other_tokenizer", "is not the server's"),
])
def test_bad_servers_are_refused_at_load(server, mode, message):
    server.mode = mode
    with pytest.raises(EvalError, match=message) as err:
        _load(server)
    assert "\n" not in str(err.value)


def test_tokenizer_checked_by_echo_without_a_tokenize_endpoint(server):
    server.mode = "no_tokenize"
    server.calls = 0
    _load(server)
    assert server.calls == 3  # the probe sent as text and echoed, then the self-check's two


def test_wrong_model_name(server):
    with pytest.raises(EvalError, match="serves fake-served, not nope"):
        _load(server, model="nope")


# ----------------------------------------------------------------------------- a real vLLM server


class Served:
    """The session's vLLM server; `restart()` starts a new one (a new port) after a kill."""

    def __init__(self, module):
        self.module = module
        self.folder = module.model_folder()
        self.server = module.Server(self.folder, module.vllm_python()).start()

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        self.server.stop(signal.SIGKILL)
        self.server = self.module.Server(self.folder, self.module.vllm_python()).start()

    def requests_served(self) -> float:
        """vLLM's count of finished requests (its /metrics)."""
        with urllib.request.urlopen(self.server.url.removesuffix("/v1") + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total{"))


@pytest.fixture(scope="session")
def vllm(request):
    module = _serve_script()
    if "served" not in (request.config.getoption("-m") or ""):  # minutes of CPU: only when asked for
        pytest.skip("a real vLLM server runs only under -m served (make test-served)")
    if module.vllm_python() is None:
        pytest.skip("the vLLM venv is not built: scripts/vllm_env.sh builds it (make test-served does both)")
    served = Served(module)
    yield served
    served.server.stop()


def _run(model_args: list[str], tasks: str, limit: int, out: Path, data_dir: str, timeout: float = 1200):
    return subprocess.run([*XE, "run", *model_args, "--tasks", tasks, "--limit", str(limit), "--data-dir", data_dir,
                           "--output-dir", str(out)], capture_output=True, text=True, timeout=timeout, cwd=out.parent)


def _responses(run: Path) -> dict:
    return {json.loads(line)["request"]: json.loads(line)["response"] for line in (run / "responses.jsonl").read_text().splitlines()}


def _served_args(url: str, **extra) -> list[str]:
    args = ",".join(f"{k}={v}" for k, v in {"tokenizer": "smollm2-135m", **extra}.items())
    return ["--model", f"openai-completions:{url}", "--model-args", args]


@pytest.mark.served
def test_served_equals_in_process(vllm, data_dir, tmp_path):
    tasks = "mmlu:abstract_algebra,piqa,race,gsm8k"
    served = _run(_served_args(vllm.url), tasks, 2, tmp_path / "served", data_dir)
    assert served.returncode == 0, served.stderr[-2000:]
    local = _run(["--model", "smollm2-135m", "--dtype", "float32", "--device", "cpu"], tasks, 2, tmp_path / "local", data_dir)
    assert local.returncode == 0, local.stderr[-2000:]
    theirs, ours = _responses(tmp_path / "served"), _responses(tmp_path / "local")
    assert theirs.keys() == ours.keys() and len(ours) > 20
    for key, a in theirs.items():
        b = ours[key]
        if a["kind"] == "Loglikelihood":
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3), key
            assert a["n_tokens"] == b["n_tokens"], key
        else:
            assert (a["text"], a["finish_reason"]) == (b["text"], b["finish_reason"]), key
    for task in ("mmlu", "piqa", "race", "gsm8k"):
        preds = [[json.loads(line)["prediction"] for line in (tmp_path / run / "samples" / f"{task}.jsonl").read_text().splitlines()]
                 for run in ("served", "local")]
        assert preds[0] == preds[1] and preds[0], task


@pytest.mark.served
def test_kill_the_server_mid_run_and_resume(vllm, data_dir, tmp_path):
    out = tmp_path / "run"
    args = _served_args(vllm.url, max_concurrency=1, retries=0)
    run = subprocess.Popen([*XE, "run", *args, "--tasks", "piqa", "--limit", "40", "--data-dir", data_dir, "--output-dir", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    responses = out / "responses.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run.poll() is None:
        if responses.is_file() and len(responses.read_text().splitlines()) >= 10:
            break
        time.sleep(0.2)
    vllm.server.stop(signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("xverse-eval: error:")]
    assert len(errors) == 1 and "cannot reach the server" in errors[0] and err.strip().endswith(errors[0]), err[-2000:]
    stored = len(responses.read_text().splitlines())
    assert 10 <= stored < 80
    vllm.restart()  # another port: the URL is not the identity, the stored responses are reused
    before = vllm.requests_served()
    again = _run(_served_args(vllm.url), "piqa", 40, out, data_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    lines = [json.loads(line)["request"] for line in responses.read_text().splitlines()]
    assert len(lines) == len(set(lines)) == 80  # 40 questions x 2 solutions, each stored once
    assert vllm.requests_served() - before == 80 - stored + 2  # the missing ones, and the self-check's two
