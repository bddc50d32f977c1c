"""Throughput of the served backend (runner/served.py) against the in-process runner, same requests.

Workloads, from the real data: `mmlu` -- the 4 letter-scoring requests of each of the first N MMLU
items (5-shot, every subject in turn); `piqa` -- the 2 solutions of the first N PIQA items; `gsm8k` --
greedy generation for the first N GSM8K problems (4-shot, at most M new tokens, the task's stops).
Each is run once per backend after a warm-up request; prints wall time, requests/s (and new tokens/s
for generation), the ratio served / in-process, and the agreement (largest |log-likelihood
difference|, generations whose text is identical). With --out, also writes the numbers as JSON.

    # CPU, here: starts vLLM (SmolLM2-135M float32) itself from scripts/vllm_env.sh's venv
    .venv/bin/python benchmarks/served_speed.py --data-dir ../shared/data --start --n 16 --max-new 64
    # against a server already running (any OpenAI-compatible one; the in-process side loads --model)
    .venv/bin/python benchmarks/served_speed.py --data-dir DATA --url http://127.0.0.1:8000/v1 \\
        --model-args tokenizer=smollm2-135m --model smollm2-135m --dtype float32 --n 16

On GPUs (vLLM installed where the model runs; the lent H200 machines have no network, so vLLM cannot be
installed there from this repo), e.g. XVERSE-65B over 8 GPUs:

    vllm serve xverse/XVERSE-65B --tensor-parallel-size 8 --dtype bfloat16 --max-model-len 4096 \\
        --generation-config vllm --trust-remote-code --port 8000 &
    python benchmarks/served_speed.py --data-dir DATA --url http://127.0.0.1:8000/v1 \\
        --model-args model=xverse/XVERSE-65B,tokenizer=xverse/XVERSE-65B,max_concurrency=64 \\
        --model xverse/XVERSE-65B --dtype bfloat16 --device cuda --n 256 --max-new 256 --out $OUT/served_speed.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xverse_eval.registry import get_task_class  # noqa: E402
from xverse_eval.runner import load_model  # noqa: E402
from xverse_eval.runner.fingerprint import parse_model_args  # noqa: E402
from xverse_eval.types import GenerateRequest, LoglikelihoodRequest  # noqa: E402


def workload(name: str, data_dir: str, n: int, max_new: int) -> list:
    """The requests of the first `n` items of `name` (see the module docstring)."""
    task = get_task_class(name)(data_dir=data_dir)
    requests = [r for s in task.samples(n) for r in task.build(s).requests][: n * 4]
    if name == "gsm8k":
        requests = [GenerateRequest(r.key, r.prompt, max_new, r.stop, r.shared_prefix) for r in requests]
    return requests


def timed(model, requests: list) -> tuple[float, list]:
    """(seconds, responses) of one call, after a one-request warm-up."""
    call = model.generate if isinstance(requests[0], GenerateRequest) else model.loglikelihood
    call(requests[:1])
    start = time.perf_counter()
    out = call(requests)
    return time.perf_counter() - start, out


def agreement(requests: list, a: list, b: list) -> dict:
    if isinstance(requests[0], LoglikelihoodRequest):
        return {"max_abs_logprob_diff": max(abs(x.logprob - y.logprob) for x, y in zip(a, b))}
    return {"identical_texts": sum(x.text == y.text for x, y in zip(a, b)), "of": len(requests)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--url", help="a running server's base URL (…/v1)")
    p.add_argument("--start", action="store_true", help="start vLLM (SmolLM2-135M float32) here, stop it at the end")
    p.add_argument("--model-args", default="", help="the served backend's --model-args (model=, tokenizer=, max_concurrency=)")
    p.add_argument("--model", default="smollm2-135m", help="the in-process model (the same weights as the server's)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tasks", default="mmlu,piqa,gsm8k")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--out")
    args = p.parse_args()
    server = None
    if args.start:
        spec = importlib.util.spec_from_file_location("serve_smollm2", ROOT / "scripts" / "serve_smollm2.py")
        serve = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(serve)
        if serve.vllm_python() is None:
            raise SystemExit("the vLLM venv is not built: run scripts/vllm_env.sh first")
        server = serve.Server(serve.model_folder(), serve.vllm_python()).start()
        args.url = server.url
        args.model_args = args.model_args or "tokenizer=smollm2-135m"
    if not args.url:
        raise SystemExit("give --url of a running server, or --start")
    try:
        served = load_model(f"openai-completions:{args.url}", model_args=parse_model_args(args.model_args))
        local = load_model(args.model, dtype=args.dtype, device=args.device)
        rows = []
        for name in args.tasks.split(","):
            requests = workload(name, args.data_dir, args.n, args.max_new)
            t_served, a = timed(served, requests)
            t_local, b = timed(local, requests)
            row = {"task": name, "requests": len(requests), "served_s": round(t_served, 3), "in_process_s": round(t_local, 3),
                   "served_req_s": round(len(requests) / t_served, 2), "in_process_req_s": round(len(requests) / t_local, 2),
                   "speedup_served": round(t_local / t_served, 2), **agreement(requests, a, b)}
            if name == "gsm8k":
                row["served_new_tok_s"] = round(sum(g.n_tokens for g in a) / t_served, 1)
                row["in_process_new_tok_s"] = round(sum(g.n_tokens for g in b) / t_local, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        result = {"url_kind": "started here" if server else "given", "served": served.fingerprint,
                  "in_process": args.model, "dtype": args.dtype, "device": args.device, "rows": rows}
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
