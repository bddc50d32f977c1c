"""Generation speed: the slot engine against the plain static-batch loop and HF `model.generate`.

Workload (GSM8K-shaped, as in issue 8): the first N GSM8K test problems with the task's real 4-shot
prompt (its shared prefix marked as evaluate.py marks it), greedy, M new tokens, stop "\\n\\n" (the
task's stop) plus "Question:". One process, one model object, each path after a warm-up:

- engine:   HFModel.generate with the slot engine (continuous batching, shared prefix prefilled once,
            CUDA-graph decode steps on CUDA)
- plain:    the same HFModel with the static-batch loop (XVERSE_EVAL_ENGINE=plain does the same)
- hf-generate: `model.generate` in left-padded batches of 32 with `stop_strings` (what lm-eval's HFLM does)

Prints wall time, new tokens/s, the engine's decode ms/step and mean rows per step, speed-ups, and how many
texts equal the plain loop's. With --out, also writes the numbers as JSON.

    # CPU, here (SmolLM2-135M, float32): a minute or two on 2 idle cores
    python benchmarks/engine_speed.py --data-dir ../shared/data --model smollm2-135m --n 8 --max-new 32
    # H200: XVERSE-65B widths at 16 layers, random bf16 weights built on the GPU, SmolLM2's tokenizer
    python benchmarks/engine_speed.py --data-dir DATA --random xverse65b-16 --tokenizer .devdata/smollm2-tokenizer \\
        --device cuda --n 64 --max-new 256 --out $OUT/engine_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xverse_eval.registry import get_task_class  # noqa: E402
from xverse_eval.runner.hf import HFModel  # noqa: E402
from xverse_eval.types import Generation, GenerateRequest  # noqa: E402

SHAPES = {  # (hidden, layers, heads, kv heads, intermediate)
    "xverse65b-16": (8192, 16, 64, 8, 22016),
    "llama-1b": (2048, 16, 32, 8, 8192),
}


def random_model(shape: str, tokenizer_dir: str, device: str) -> HFModel:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return HFModel(tok, model, f"random-{shape}", {"model": shape}, device)


def gsm8k_requests(data_dir: str, n: int, max_new: int) -> list[GenerateRequest]:
    task = get_task_class("gsm8k")(data_dir=data_dir)
    reqs = [task.build(task.sample_at("", i)).requests[0] for i in range(n)]
    shared = os.path.commonprefix([r.prompt for r in reqs])
    return [GenerateRequest(r.key, r.prompt, max_new, ("\n\n", "Question:"), shared) for r in reqs]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def hf_generate(model: HFModel, requests: list[GenerateRequest], batch_size: int = 32) -> list[Generation]:
    """lm-eval HFLM-style: left-padded batches, model.generate greedy with the stop strings."""
    tok = model.tokenizer
    out = []
    for k in range(0, len(requests), batch_size):
        batch = requests[k:k + batch_size]
        rows = [model.tokens.encode(r.prompt) for r in batch]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), model.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        gen = model.model.generate(ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=batch[0].max_new_tokens,
                                   do_sample=False, pad_token_id=model.pad_id, stop_strings=list(batch[0].stop), tokenizer=tok)
        for b, r in enumerate(batch):
            new = [t for t in gen[b, width:].tolist() if t not in model.eos_ids and t != model.pad_id]
            text = tok.decode(rows[b] + new, skip_special_tokens=True)[len(tok.decode(rows[b], skip_special_tokens=True)):]
            cut = min((text.find(s) for s in r.stop if s in text), default=-1)
            out.append(Generation(text[:cut] if cut >= 0 else text, "", len(new)))
    return out


def timed(name: str, fn, device: str, reps: int):
    fn()  # warm-up (allocator, cuBLAS handles, kernels)
    best = None
    for _ in range(reps):
        sync(device)
        t, cpu = time.perf_counter(), time.process_time()
        value = fn()
        sync(device)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        best = elapsed if best is None or elapsed < best else best
        # on a shared CPU the process's CPU seconds compare paths better than wall time
        print(f"  {name}: {elapsed:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)
    return value, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--random", choices=sorted(SHAPES), help="random weights of this shape instead of --model")
    ap.add_argument("--tokenizer", help="tokenizer folder for --random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated paths not to time: plain,hf-generate")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.random:
        model = random_model(args.random, args.tokenizer, args.device)
    else:
        from xverse_eval.runner import load_model

        model = load_model(args.model, device=args.device)
    model.report_progress = False
    requests = gsm8k_requests(args.data_dir, args.n, args.max_new)
    engine = model.engine
    engine.keep_pool = True  # timed runs replay the decode graphs the warm-up captured
    print(f"{model.name} on {args.device}: {args.n} GSM8K problems, 4-shot, greedy {args.max_new} tokens; slot engine "
          f"{'on' if engine.use_slots else 'off (architecture not supported)'}", file=sys.stderr)
    rows = {}

    def run_engine():
        engine.stats = {k: 0 * v for k, v in engine.stats.items()}
        return model.generate(requests)

    ours, t = timed("engine", run_engine, args.device, args.reps)
    stats = dict(engine.stats)
    rows["engine"] = (ours, t)
    skip = set(filter(None, args.skip.split(",")))
    if "plain" not in skip:
        def run_plain():
            engine.use_slots, saved = False, engine.use_slots
            try:
                return model.generate(requests)
            finally:
                engine.use_slots = saved
        rows["plain"] = timed("plain", run_plain, args.device, args.reps)
    if "hf-generate" not in skip:
        rows["hf-generate"] = timed("hf-generate", lambda: hf_generate(model, requests), args.device, args.reps)
    reference = rows.get("plain", rows["engine"])[0]
    steps = max(stats["decode_steps"], 1)
    print(f"\n| path | wall s | new tokens/s | vs hf-generate | vs plain | texts equal to plain |")
    print("|---|---:|---:|---:|---:|---:|")
    result = {"model": model.name, "device": args.device, "n": args.n, "max_new": args.max_new, "engine_stats": stats, "paths": {}}
    for name, (gens, t) in rows.items():
        tokens = sum(g.n_tokens for g in gens)
        equal = sum(a.text == b.text for a, b in zip(gens, reference))
        vs_hf = rows["hf-generate"][1] / t if "hf-generate" in rows else float("nan")
        vs_plain = rows["plain"][1] / t if "plain" in rows else float("nan")
        print(f"| {name} | {t:.2f} | {tokens / t:.0f} | {vs_hf:.2f}x | {vs_plain:.2f}x | {equal}/{len(gens)} |")
        result["paths"][name] = {"wall_s": t, "new_tokens": tokens, "tokens_per_s": tokens / t, "equal_to_plain": equal}
    print(f"\nengine (last run): {stats['decode_steps']} decode steps, {1000 * stats['decode_s'] / steps:.1f} ms/step, "
          f"{stats['decode_rows'] / steps:.1f} rows/step; prefill {stats['prefill_s']:.2f} s for {stats['prefill_tokens']} tokens "
          f"(the shared prefix once, then each prompt's own tokens)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
