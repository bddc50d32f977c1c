"""Served backend: a model behind an OpenAI-compatible completions server (vLLM, SGLang, ...), behind
the same Model contract as the in-process runner (runner/__init__.py).

    --model openai-completions:http://HOST:PORT/v1 [--model-args model=NAME,tokenizer=PATH_OR_ID,...]
    --model local-completions --model-args base_url=http://HOST:PORT/v1/completions,model=NAME,...   (lm-eval's spelling)

Model args: `model` (the served name; default: the only model the server lists), `tokenizer` (a hub
id, folder, .gguf file or alias whose tokenizer is the server's; default: the model's `root` that
/v1/models reports, else its name), `max_concurrency` (requests in flight, default 8; lm-eval's
`num_concurrent`), `timeout` (seconds per HTTP request, default 600), `retries` (default 5; lm-eval's
`max_retries`), `max_length` (context in tokens, default the server's `max_model_len`), `seed` (sent
with every request, default 0).

How each answer is computed (vLLM's API; SGLang speaks the same fields):
- Every prompt goes as token ids, tokenised here exactly as the in-process runner does
  (runner/tokens.py: add_special_tokens=False, the tokenizer's leading specials added once), so the
  server adds no special token and never re-tokenises; the tokenizer must be the server's, which
  `load` checks against the server's /tokenize (or, without one, against the ids it echoes for a text
  prompt) and refuses on any difference.
- log-likelihood: `echo=true, logprobs=1, max_tokens=1` on context+continuation, tokenised as one
  string and split where the context's own tokens end (Tokens.encode_pairs); the continuation's
  log-probs are read at those token offsets of the echoed `token_logprobs` (never by string search),
  `is_greedy` from `top_logprobs`. Position 0 has no log-prob (null): whole-sequence PPL reads tokens
  2..N as in-process; a null anywhere else is refused. Letter scoring is the same call.
- self-check at load: the greedy next token of a probe and its log-prob, then the echo of probe + that
  token; the two log-probs of that token must agree. llama.cpp's server fails this (for a model whose
  tokenizer adds no BOS its echoed log-probs are shifted by one position), and is refused.
- generation: greedy (`temperature=0`) with every sampling parameter sent (top_p=1, top_k=-1, min_p=0,
  penalties neutral, `seed`), since vLLM fills any gap from the model's generation_config.json;
  `max_tokens` = the request's max_new_tokens, stop strings sent and re-applied here, the EOS ids and
  those of `stop_at_tokens` sent as `stop_token_ids`.
- transport: a bounded thread pool (`max_concurrency`), one prompt per HTTP request (the server
  batches concurrent requests itself); connection errors, timeouts, 408, 429 and 5xx are retried with
  exponential backoff (429's Retry-After honoured), any other 4xx fails at once with the server's
  message. Responses go to `on_done` as they arrive (flushed at least every second), so the pipeline
  stores them durably and a resumed run computes only what is missing.

Identity: the served model's name, what /v1/models says of it (root, owner, context), the server's
version (/version) and `system_fingerprint`, the sha256 of the tokenizer, and `compute` (this file's
version) -- never the URL, so a moved server keeps its stored responses and a changed deployment
gets new ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import EvalError
from ..progress import progress
from ..types import Generation, GenerateRequest, Loglikelihood, LoglikelihoodRequest
from . import OnDone, Work
from .tokens import CountsTokens, Tokens

log = logging.getLogger(__name__)

PREFIX = "openai-completions:"  # --model openai-completions:URL
LM_EVAL_TYPES = ("local-completions", "openai-completions")  # lm-eval's --model types (base_url in model args)
CHAT_TYPES = ("local-chat-completions", "openai-chat-completions")
COMPUTE = "served-1"  # bump with every change here that can alter a response
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FLUSH_SECONDS = 1.0  # on_done at least this often while responses arrive (each call is one fsync)
# The probe of the tokenizer check and the self-check: Latin, CJK, digits, code, whitespace runs.
PROBE = "The answer is (B). 答案：C\n\n12 + 345 = 357\ndef f(x):\n    return x  # done"
SELF_CHECK_TOLERANCE = 0.05  # nats (+1% relative): prefill vs decode numerics of one token's log-prob


def is_served(spec: str) -> bool:
    """Whether `--model spec` names the served backend."""
    return spec.startswith(PREFIX) or spec in LM_EVAL_TYPES or spec in CHAT_TYPES


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """What --model and --model-args say. `base_url` ends in /v1 (no /completions); the rest as in the
    module docstring."""

    base_url: str
    model: str | None = None
    tokenizer: str | None = None
    max_concurrency: int = 8
    timeout: float = 600.0
    retries: int = 5
    max_length: int | None = None
    seed: int = 0

    @property
    def root(self) -> str:
        """The server's root URL (vLLM's /tokenize and /version live there, not under /v1)."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url


ALIASES = {"num_concurrent": "max_concurrency", "max_retries": "retries"}  # lm-eval's names
INTS = ("max_concurrency", "retries", "max_length", "seed")
# lm-eval keys accepted and without effect here (the value they must have, None: any)
NO_EFFECT = {"tokenized_requests": True, "tokenizer_backend": "huggingface", "batch_size": None}


def base_url_of(url: str, where: str) -> str:
    """`http://h:p`, `http://h:p/v1`, `http://h:p/v1/completions` -> `http://h:p/v1`."""
    url = str(url).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EvalError(f"{where}: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    url = url.removesuffix("/completions").removesuffix("/chat").rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def parse_options(spec: str, model_args: dict | None) -> Options:
    """Options of `--model spec --model-args ...`; EvalError for a chat-completions type, a missing or
    doubled base URL, an unknown key or a bad value."""
    args = dict(model_args or {})
    if spec in CHAT_TYPES:
        raise EvalError(f"--model {spec}: chat completions return no prompt log-probabilities; "
                        f"use --model local-completions (the same server's /v1/completions)")
    url = spec[len(PREFIX):] if spec.startswith(PREFIX) else None
    if "base_url" in args:
        if url:
            raise EvalError(f"--model {spec} and --model-args base_url={args['base_url']}: give the URL once")
        url = args.pop("base_url")
    if not url:
        raise EvalError(f"--model {spec}: give the server, as --model {PREFIX}http://HOST:PORT/v1 "
                        f"or --model-args base_url=http://HOST:PORT/v1/completions")
    for old, new in ALIASES.items():
        if old in args:
            args[new] = args.pop(old)
    for key, needed in NO_EFFECT.items():
        if key in args:
            value = args.pop(key)
            if needed is not None and str(value).lower() != str(needed).lower():
                raise EvalError(f"--model-args {key}={value}: the served backend always sends token ids tokenised by a "
                                f"transformers tokenizer ({key}={needed})")
    known = {"model", "tokenizer", "timeout", *INTS}
    unknown = sorted(set(args) - known)
    if unknown:
        raise EvalError(f"--model-args {unknown[0]}=...: not an option of the served backend (known: base_url, "
                        f"{', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for key, value in args.items():
        try:
            out[key] = int(value) if key in INTS else float(value) if key == "timeout" else str(value)
        except (TypeError, ValueError):
            raise EvalError(f"--model-args {key}={value!r}: needs a {'number' if key == 'timeout' else 'whole number'}") from None
    if out.get("max_concurrency", 1) < 1 or out.get("retries", 0) < 0 or out.get("timeout", 1.0) <= 0:
        raise EvalError("--model-args: max_concurrency must be >= 1, retries >= 0 and timeout > 0")
    return Options(base_url_of(url, f"--model {spec}"), **out)


# ----------------------------------------------------------------------------- transport


class ServerError(EvalError):
    """An HTTP exchange that failed for good (after its retries, or at once for a 4xx): `url` and
    `problem` (what went wrong, in a few words)."""

    def __init__(self, url: str, problem: str):
        super().__init__(f"{url}: {problem}")
        self.url, self.problem = url, problem


def _message(body: str) -> str:
    """The server's own one-line message of an error body (OpenAI's {"error": {"message": ...}})."""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except ValueError:
        text = body
    return " ".join(text.split())[:300]


class Client:
    """JSON over HTTP to one server, from many threads: one requests.Session per thread (a Session
    is not thread-safe; each keeps its connections alive), retries with exponential backoff."""

    def __init__(self, options: Options):
        self.options = options
        self._local = threading.local()

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def call(self, method: str, url: str, body: dict | None = None, retries: int | None = None) -> dict:
        """The JSON answer of `method url` (body as JSON). Retries connection errors, timeouts, 408,
        429 and 5xx `retries` times (default: the options'), sleeping 1, 2, 4, ... s (at most 30,
        with jitter; a 429's Retry-After when given); raises ServerError naming the URL and what went
        wrong after the last try, or at once for any other 4xx."""
        import requests

        retries = self.options.retries if retries is None else retries
        for attempt in range(retries + 1):
            wait_s = min(30.0, 2.0 ** attempt) * (0.75 + 0.5 * random.random())
            try:
                r = self._session().request(method, url, json=body, timeout=self.options.timeout)
            except requests.exceptions.RequestException as exc:
                problem = f"cannot reach the server ({_reason(exc)})"
            else:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        raise ServerError(url, f"the server answered 200 with a body that is not JSON: {r.text[:120]!r}") from None
                problem = f"HTTP {r.status_code}: {_message(r.text)}"
                if r.status_code not in RETRY_STATUS:
                    raise ServerError(url, problem)
                retry_after = r.headers.get("Retry-After", "")
                if r.status_code == 429 and retry_after.replace(".", "", 1).isdigit():
                    wait_s = min(60.0, float(retry_after))
            if attempt < retries:
                log.warning("%s: %s; retry %d of %d in %.1f s", url, problem, attempt + 1, retries, wait_s)
                time.sleep(wait_s)
        raise ServerError(url, problem + (f" (after {retries} retries)" if retries else ""))

    def completions(self, body: dict) -> dict:
        return self.call("POST", self.options.base_url + "/completions", body)


def _reason(exc: BaseException) -> str:
    """Why a request got no answer, in a few words (requests' messages nest the cause three deep)."""
    text = str(exc)
    for needle, said in (("Connection refused", "connection refused: is it running?"), ("Name or service not known", "unknown host"),
                         ("Temporary failure in name resolution", "unknown host"), ("timed out", "timed out"),
                         ("Read timed out", "timed out"), ("RemoteDisconnected", "the server closed the connection"),
                         ("Connection reset", "connection reset"), ("Connection aborted", "connection aborted")):
        if needle in text:
            return said
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ----------------------------------------------------------------------------- echoed log-probs


@dataclass(frozen=True)
class Echo:
    """What an echo request returned for its prompt of `n` tokens (and the generated tokens after):
    `ids` the token ids the server echoes (None when it names tokens by text), `logprobs[p]` the
    log-prob of token p given tokens < p (None at p = 0), `greedy[p]` whether token p is the argmax."""

    ids: list[int] | None
    logprobs: list[float | None]
    greedy: list[bool | None]


def parse_echo(answer: dict, n: int, where: str) -> Echo:
    """The Echo of a completions answer to an echo request whose prompt has `n` tokens. Raises
    EvalError (naming `where`) when the server returned no prompt log-probs."""
    try:
        lp = answer["choices"][0]["logprobs"]
        tokens, token_lps, tops = lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        lp = tokens = token_lps = tops = None
    if not token_lps or len(token_lps) < n or len(tokens) != len(token_lps) or all(v is None for v in token_lps[1:n]):
        raise EvalError(f"{where}: the server returned no prompt log-probabilities for an echo request "
                        f"(echo=true, logprobs=1): it cannot score log-likelihoods (vLLM and SGLang can)")
    ids = None
    if all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        ids = [int(t[len("token_id:"):]) for t in tokens]
    greedy = []
    for value, top in zip(token_lps, tops or [None] * len(token_lps)):
        greedy.append(None if value is None or not top else value >= max(top.values()))
    return Echo(ids, list(token_lps), greedy)


# ----------------------------------------------------------------------------- the model


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of everything that decides the tokenizer's ids: its tokenizer.json (vocab, merges,
    normalizer, pre-tokenizer, post-processor) or, for a slow tokenizer, its vocabulary; its special
    tokens; its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([sorted(tokenizer.all_special_tokens), getattr(tokenizer, "chat_template", None)], default=str)
    return hashlib.sha256((core + "\x1f" + extra).encode("utf-8")).hexdigest()


def _generation_eos(source: str) -> set[int]:
    """The EOS ids a local model folder's generation_config.json names (the in-process runner stops
    at these too); none for a hub id or a file."""
    path = Path(source).expanduser() / "generation_config.json"
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError):
        return set()
    return {int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None}


class ServedModel(CountsTokens):
    """A model behind an OpenAI-compatible completions server (see the module docstring).

    `tokenizer`: the server's tokenizer, loaded here (transformers); `tokens`: it as runner/tokens.py
    sees it; `client`: the HTTP client; `options`: the parsed --model / --model-args."""

    def __init__(self, options: Options, client: Client, served: str, tokenizer, max_length: int,
                 fingerprint: dict, eos_ids: set[int]):
        self.options, self.client, self.served = options, client, served
        self.tokenizer = tokenizer
        self.tokens = Tokens(tokenizer)
        self.max_length = max_length
        self.name = f"served:{served}"
        self.fingerprint = fingerprint
        self.eos_ids = frozenset(eos_ids)
        self.stop_ids: frozenset = frozenset()
        self.report_progress = True
        self._counters = Work()

    # -- loading: connect, pick the model, load and check the tokenizer, self-check

    @classmethod
    def load(cls, spec: str, model_args: dict | None = None, dtype: str = "auto", revision: str | None = None,
             trust_remote_code: bool = False, **_ignored) -> "ServedModel":
        """Connect to the server of `spec` / `model_args` (see parse_options), pick the served model,
        load its tokenizer and check it against the server, and self-check the echoed log-probs.
        `dtype` and `revision` are the server's business (refused when set); `device`, `batch_size`
        and `prefix_cache` have no effect. Raises EvalError, in one line, for an unreachable server, a
        model it does not serve, a tokenizer that differs from its own, or a server whose echoed
        log-probs are missing or shifted."""
        if dtype not in (None, "auto") or revision:
            raise EvalError(f"--model {spec}: the server decides dtype and revision; drop --dtype / --revision")
        options = parse_options(spec, model_args)
        client = Client(options)
        entry = cls._served_entry(client, options)
        served = entry["id"]
        tokenizer_source = options.tokenizer or entry.get("root") or served
        tokenizer = cls._load_tokenizer(tokenizer_source, trust_remote_code)
        max_length = options.max_length or entry.get("max_model_len")
        if not max_length:
            raise EvalError(f"{options.base_url}: the server does not say its context length (max_model_len); "
                            f"give --model-args max_length=N")
        server = {"id": served, "root": entry.get("root"), "owned_by": entry.get("owned_by"),
                  "max_model_len": entry.get("max_model_len"), "version": cls._version(client, options)}
        eos = {t for t in [tokenizer.eos_token_id] if t is not None} | _generation_eos(tokenizer_source)
        fingerprint = {"model": served, "backend": "served", "compute": COMPUTE, "server": server,
                       "tokenizer_sha256": tokenizer_sha256(tokenizer), "max_length": int(max_length)}
        model = cls(options, client, served, tokenizer, int(max_length), fingerprint, eos)
        model.check_tokenizer()
        server["system_fingerprint"] = model.self_check()
        return model

    @staticmethod
    def _served_entry(client: Client, options: Options) -> dict:
        """The /v1/models entry of the model to evaluate; one try: a server that is not up now is
        said at once, not after minutes of retries."""
        try:
            listed = client.call("GET", options.base_url + "/models", retries=0)
        except ServerError as exc:
            raise EvalError(f"--model {PREFIX}{options.base_url}: {exc.problem.replace('the server', 'the server there', 1)}") from None
        entries = [e for e in listed.get("data", []) if isinstance(e, dict) and e.get("id")]
        names = [e["id"] for e in entries]
        if options.model is None:
            if len(entries) != 1:
                raise EvalError(f"{options.base_url} serves {', '.join(names) or 'no model'}: name one with --model-args model=NAME")
            return entries[0]
        for e in entries:
            if e["id"] == options.model:
                return e
        raise EvalError(f"--model-args model={options.model}: the server at {options.base_url} serves "
                        f"{', '.join(names) or 'no model'}, not {options.model}")

    @staticmethod
    def _version(client: Client, options: Options) -> str | None:
        """The server's version (vLLM's /version), None where it has no such endpoint."""
        try:
            return client.call("GET", options.root + "/version", retries=0).get("version")
        except EvalError:
            return None

    @staticmethod
    def _load_tokenizer(source: str, trust_remote_code: bool):
        """The tokenizer of `source` through our loader (aliases, folders, .gguf files, hub ids)."""
        from .load import load_tokenizer, resolve

        try:
            return load_tokenizer(resolve(source), trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 -- whatever the loader raises, said in one line
            raise EvalError(f"cannot load the tokenizer {source!r} of the served model ({_first_line(exc)}); "
                            f"give the server's tokenizer with --model-args tokenizer=HUB_ID_OR_FOLDER") from None

    def check_tokenizer(self) -> None:
        """Refuse a tokenizer whose ids differ from the server's on PROBE: compared with the server's
        /tokenize where it has one, else with the ids it echoes for PROBE sent as text."""
        ours = self.tokenizer(PROBE, add_special_tokens=False).input_ids
        try:
            answer = self.client.call("POST", self.options.root + "/tokenize",
                                      {"model": self.served, "prompt": PROBE, "add_special_tokens": False}, retries=0)
            theirs = answer.get("tokens")
        except ServerError:
            theirs = None
        if theirs is None:  # no /tokenize: the server's own tokenisation of a text prompt, echoed
            ours = self.tokens.encode(PROBE)
            answer = self.client.completions(self._echo_body(PROBE))
            echo = parse_echo(answer, answer.get("usage", {}).get("prompt_tokens") or 0, "the tokenizer check")
            theirs = echo.ids[: len(echo.ids) - 1] if echo.ids is not None else None
            if theirs is None:  # ids not echoed: the count is what can be compared
                n = answer.get("usage", {}).get("prompt_tokens")
                theirs, ours = [n], [len(ours)]
        if list(theirs) != list(ours):
            at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
            raise EvalError(f"the tokenizer {self.options.tokenizer or self.fingerprint['server']['root'] or self.served!r} is not the "
                            f"server's: token {at} of a probe text is {ours[at] if at < len(ours) else 'missing'} here and "
                            f"{theirs[at] if at < len(theirs) else 'missing'} on the server; give --model-args tokenizer=THE_SERVED_MODEL")

    def _echo_body(self, prompt) -> dict:
        """An echo request: the prompt's log-probs (and one greedy token's, after it)."""
        return {"model": self.served, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1,
                "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": self.options.seed, "n": 1,
                "return_tokens_as_token_ids": True}

    def self_check(self) -> str | None:
        """The greedy next token of PROBE and its log-prob, then the echo of PROBE + that token: the
        log-prob the echo gives that token must agree (within SELF_CHECK_TOLERANCE). A server whose
        echo is shifted (llama.cpp's for a tokenizer without BOS), re-tokenises the prompt or returns
        no prompt log-probs is refused. Returns the server's system_fingerprint (None if it sends
        none)."""
        ids = self.tokens.encode(PROBE)
        first = self.client.completions(self._echo_body(ids))
        echo = parse_echo(first, len(ids) + 1, "the self-check")
        if echo.ids is not None and echo.ids[: len(ids)] != ids:
            raise EvalError(f"{self.options.base_url}: the server echoes other token ids than it was sent "
                            f"({echo.ids[:8]}... for {ids[:8]}...): it re-tokenises token-id prompts")
        if len(echo.logprobs) != len(ids) + 1:
            raise EvalError(f"{self.options.base_url}: asked for 1 new token after a {len(ids)}-token prompt, the server "
                            f"returned {len(echo.logprobs) - len(ids)} (max_tokens is not honoured)")
        generated = echo.ids[-1] if echo.ids is not None else None
        if generated is None:
            generated = self.tokens.encode(PROBE + first["choices"][0]["text"][-1:])[-1]  # pragma: no cover -- servers that echo text
        second = self.client.completions(self._echo_body(ids + [generated]))
        again = parse_echo(second, len(ids) + 1, "the self-check")
        decoded, echoed = echo.logprobs[-1], again.logprobs[len(ids)]
        if decoded is None or echoed is None or abs(decoded - echoed) > SELF_CHECK_TOLERANCE + 0.01 * abs(decoded):
            raise EvalError(f"{self.options.base_url}: the server's echoed log-probabilities disagree with its own generation "
                            f"(token {generated} after a probe: {decoded} generated, {echoed} echoed): its echo is shifted or "
                            f"wrong (llama.cpp's server has this bug); serve the model with vLLM or SGLang")
        return first.get("system_fingerprint")

    # -- work

    def counters(self) -> Work:
        """Requests answered and the tokens sent (the server's prefix sharing is not seen from here)."""
        return self._counters

    # -- fan-out: many requests in flight, responses delivered as they arrive

    def _fan_out(self, jobs: list, call: Callable[[Any], Any], finish: Callable[[Any, Any], list], on_done: OnDone | None,
                 total: int, desc: str) -> None:
        """Run `call(job)` for every job in a pool of max_concurrency threads; in this thread,
        `finish(job, answer)` -> [(request, response), ...] for each answer as it arrives, handed to
        `on_done` in groups at least every FLUSH_SECONDS. On the first failure the jobs not started
        are cancelled, what finished is still handed over, and the error is raised."""
        pending: list = []
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal pending, last_flush
            if pending and on_done:
                on_done(pending)
            pending, last_flush = [], time.monotonic()

        # the context manager closes the bar without a "done" line when a request fails
        with progress(total, desc, "req", enabled=self.report_progress) as bar:
            pool = ThreadPoolExecutor(max_workers=self.options.max_concurrency, thread_name_prefix="served")
            futures = {pool.submit(call, job): job for job in jobs}
            running = set(futures)

            def take(future) -> None:
                running.discard(future)
                pairs = finish(futures[future], future.result())  # raises the worker's error
                pending.extend(pairs)
                bar.update(len(pairs))

            try:
                while running:
                    done, _ = wait(running, timeout=FLUSH_SECONDS, return_when=FIRST_COMPLETED)
                    for future in done:
                        take(future)
                    if time.monotonic() - last_flush >= FLUSH_SECONDS:
                        flush()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                for future in [f for f in running if f.done() and not f.cancelled() and f.exception() is None]:
                    try:  # answers that arrived while another request failed: stored too
                        take(future)
                    except EvalError:
                        pass
                flush()

    # -- the contract

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_done: OnDone | None = None) -> list[Loglikelihood]:
        """See Model.loglikelihood: one echo request per distinct token row (context+continuation),
        the continuation read at its token offsets. Raises EvalError before any request is sent for
        a continuation that adds no token or holds a special token, or a row longer than the context;
        and as the answers come for a server that returns no log-prob where one is needed."""
        rows = self._rows(requests)
        results: list[Loglikelihood | None] = [None] * len(requests)

        def call(row):
            whole, _ = row
            return self.client.completions(self._echo_body(whole))

        def finish(row, answer):
            whole, reads = row
            echo = parse_echo(answer, len(whole), f"request {requests[reads[0][0]].key}")
            if echo.ids is not None and echo.ids[: len(whole)] != whole:
                raise EvalError(f"request {requests[reads[0][0]].key}: the server echoed other token ids than it was sent")
            out = []
            for i, n_context in reads:
                results[i] = self._response(requests[i], echo, n_context, len(whole))
                out.append((requests[i], results[i]))
            return out

        self._fan_out(rows, call, finish, on_done, len(requests), "loglikelihood")
        n = sum(len(whole) for whole, _ in rows)
        self._counters = self._counters + Work(len(requests), n, n)
        return results  # type: ignore[return-value]

    def _rows(self, requests: Sequence[LoglikelihoodRequest]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """The distinct token rows: (context+continuation ids, [(request index, context tokens), ...]),
        split exactly as the in-process scorer splits them (runner/scoring.py: rows_of), with its
        checks and messages."""
        encoded = self.tokens.encode_pairs([(r.context, r.continuation) for r in requests], [r.key for r in requests])
        rows: dict[tuple[int, ...], tuple[list[int], list[tuple[int, int]]]] = {}
        for i, (req, (context_ids, cont_ids)) in enumerate(zip(requests, encoded)):
            if not cont_ids:
                raise EvalError(f"request {req.key}: the continuation {req.continuation!r} adds no token")
            whole = context_ids + cont_ids
            if len(whole) + 1 > self.max_length:  # the server needs room for the one token it generates
                raise EvalError(f"request {req.key}: {len(whole)} tokens exceed the model's context of {self.max_length}")
            if not context_ids:
                raise EvalError(f"request {req.key}: an empty context (and no BOS): the continuation's first token has no log-probability")
            rows.setdefault(tuple(whole), (whole, []))[1].append((i, len(context_ids)))
        return list(rows.values())

    @staticmethod
    def _response(req: LoglikelihoodRequest, echo: Echo, n_context: int, n: int) -> Loglikelihood:
        """The Loglikelihood of one request from its row's echo: continuation = positions n_context..n-1;
        with whole_sequence also the context's positions 1..n_context-1 (tokens 2..N), and is_greedy
        over every position read, as the in-process scorer reads them."""
        first = 1 if req.whole_sequence else n_context
        missing = [p for p in range(first, n) if echo.logprobs[p] is None]
        if missing:
            raise EvalError(f"request {req.key}: the server gave no log-probability for token {missing[0]} of {n}")
        greedy = all(echo.greedy[p] is not False for p in range(first, n))
        cont = sum(echo.logprobs[p] for p in range(n_context, n))  # type: ignore[misc]
        if not req.whole_sequence:
            return Loglikelihood(cont, greedy, n - n_context)
        context = sum(echo.logprobs[p] for p in range(1, n_context))  # type: ignore[misc]
        return Loglikelihood(cont, greedy, n - n_context, context, n_context)

    def generate(self, requests: Sequence[GenerateRequest], on_done: OnDone | None = None) -> list[Generation]:
        """See Model.generate: greedy completions of the prompt's token ids, stop strings sent and
        re-applied here. Raises EvalError before any request is sent when a prompt plus its
        max_new_tokens exceed the context."""
        ids_of = self.tokens.encode_many([r.prompt for r in requests])
        for req in requests:
            n = len(ids_of[req.prompt])
            if n + req.max_new_tokens > self.max_length:
                raise EvalError(f"request {req.key}: prompt of {n} tokens + {req.max_new_tokens} new tokens exceed the model's context of {self.max_length}")
        results: list[Generation | None] = [None] * len(requests)
        stop_ids = sorted(self.eos_ids | self.stop_ids)

        def call(i):
            req = requests[i]
            body = {"model": self.served, "prompt": ids_of[req.prompt], "max_tokens": req.max_new_tokens,
                    "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                    "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": self.options.seed, "n": 1,
                    "stop": list(req.stop), "stop_token_ids": stop_ids, "ignore_eos": False, "min_tokens": 0,
                    "skip_special_tokens": True, "include_stop_str_in_output": False, "echo": False,
                    "logprobs": None, "return_token_ids": True}
            return self.client.completions(body)

        def finish(i, answer):
            results[i] = self._generation(requests[i], answer, set(stop_ids))
            return [(requests[i], results[i])]

        self._fan_out(list(range(len(requests))), call, finish, on_done, len(requests), "generate")
        n = sum(len(ids_of[r.prompt]) for r in requests)
        self._counters = self._counters + Work(len(requests), n, n, sum(g.n_tokens for g in results if g is not None))
        return results  # type: ignore[return-value]

    @staticmethod
    def _generation(req: GenerateRequest, answer: dict, stop_ids: set[int]) -> Generation:
        """A Generation from a completions answer. `finish_reason`: "stop" for a stop string (the
        server's, or one found here), "eos" for an EOS / stop token, "length" at max_tokens; n_tokens
        without the EOS token, as the in-process engine counts."""
        try:
            choice = answer["choices"][0]
            text = choice["text"]
        except (KeyError, IndexError, TypeError):
            raise EvalError(f"request {req.key}: the server's answer has no completion text") from None
        token_ids = choice.get("token_ids")
        n_tokens = len(token_ids) if token_ids is not None else int(answer.get("usage", {}).get("completion_tokens") or 0)
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        if reason == "stop" and not isinstance(choice.get("stop_reason"), str):
            reason = "eos"
            if token_ids and token_ids[-1] in stop_ids:
                n_tokens -= 1
        cut = min((text.find(s) for s in req.stop if s in text), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        return Generation(text, reason, n_tokens)
