"""Log-likelihood scoring speed: xverse-eval's runner against an lm-eval-HF-style baseline, one run.

Workload: MMLU 5-shot letter scoring on real prompts (the first N questions of K subjects, real
tokenizer). Baseline "lm-eval-hf": what lm-evaluation-harness's HF backend does for this workload --
one row per question (its one-token-continuation cache), rows sorted by length, right-padded fixed
batches, logits and log_softmax at every position. Ours: rows deduplicated the same way, token-budget
batches, left padding, LM head and log_softmax only at the scored position. Both must agree.

    python benchmarks/runner_speed.py --data-dir ../shared/data --model smollm2-135m --device cpu
    python benchmarks/runner_speed.py --data-dir D --random llama-7b --tokenizer TOKDIR --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xverse_eval.evaluate import TaskSpec, build, make_task  # noqa: E402
from xverse_eval.runner.hf import HFModel  # noqa: E402

SHAPES = {  # (hidden, layers, heads, kv heads, intermediate)
    "llama-1b": (2048, 16, 32, 8, 8192),
    "llama-7b": (4096, 32, 32, 32, 11008),
    "llama-8b-gqa": (4096, 32, 32, 8, 14336),
}


def random_model(shape: str, tokenizer_dir: str, device: str) -> HFModel:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device.startswith("cuda") else torch.float32).eval()
    return HFModel(tok, model, f"random-{shape}", {"model": shape}, device)


@torch.inference_mode()
def lm_eval_style(model: HFModel, requests, batch_size: int) -> list[float]:
    """Baseline: right-padded fixed batches, full-vocab log_softmax at every position."""
    rows = {}
    for i, req in enumerate(requests):
        ctx, cont = model.tokens.encode_pair(req.context, req.continuation)
        rows.setdefault(tuple(ctx + cont[:-1]), []).append((i, len(ctx) - 1, cont[0]))
    ordered = sorted(rows.items(), key=lambda kv: -len(kv[0]))
    out = [0.0] * len(requests)
    for k in range(0, len(ordered), batch_size):
        batch = ordered[k:k + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), model.pad_id, dtype=torch.long)
        for b, (row, _) in enumerate(batch):
            ids[b, :len(row)] = torch.tensor(row)
        logits = model.model(input_ids=ids.to(model.device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for b, (_, reads) in enumerate(batch):
            for i, pos, tok in reads:
                out[i] = float(logp[b, pos, tok])
    return out


def timed(fn, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    value = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--random", choices=sorted(SHAPES), help="random weights of this shape instead of --model")
    ap.add_argument("--tokenizer", help="tokenizer folder for --random")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--limit", type=int, default=40, help="questions per subject")
    ap.add_argument("--baseline-batch", type=int, default=32)
    args = ap.parse_args()

    model = random_model(args.random, args.tokenizer, args.device) if args.random else HFModel.load(args.model, device=args.device)
    task = make_task(TaskSpec("mmlu"), args.data_dir)
    task.subsets = task.subsets[: args.subjects]
    items = build(task, task.samples(limit=args.limit), model)
    requests = [r for item in items for r in item.requests]
    n_tokens = sum(model.count_tokens(item.prompt) for item in items)

    # warm-up (CUDA context, kernels) on a slice, then one timed pass each
    lm_eval_style(model, requests[:64], args.baseline_batch)
    model.loglikelihood(requests[:64])
    base, t_base = timed(lambda: lm_eval_style(model, requests, args.baseline_batch), args.device)
    runs = {}
    for prefix_cache in (False, True):
        model.prefix_cache = prefix_cache
        runs[prefix_cache] = timed(lambda: [r.logprob for r in model.loglikelihood(requests)], args.device)
    name = args.random or args.model
    print(f"model={name} device={args.device} questions={len(items)} prompt_tokens={n_tokens}")
    print(f"  baseline lm-eval-hf-style (batch {args.baseline_batch}): {t_base:.2f} s  {n_tokens / t_base:,.0f} tok/s")
    for prefix_cache, (ours, t) in runs.items():
        worst = max(abs(a - b) for a, b in zip(base, ours))
        agree = sum(argmax4(base, q) == argmax4(ours, q) for q in range(len(items)))
        label = "xverse-eval, shared-prefix reuse" if prefix_cache else "xverse-eval, no prefix reuse    "
        print(f"  {label}: {t:.2f} s  {n_tokens / t:,.0f} tok/s  speed-up {t_base / t:.2f}x  "
              f"max |logprob diff| {worst:.1e}  same argmax {agree}/{len(items)}")


def argmax4(values: list[float], q: int) -> int:
    return max(range(4), key=lambda j: values[4 * q + j])


if __name__ == "__main__":
    main()
