"""xverse-eval's runner against lm-eval 0.4.13's HFLM: one process, one device, the same model object
and the same requests, built from the benchmark data in its published layout.

Workloads (--workloads, comma-separated):
  mmlu   MMLU-shaped: 200 questions of 8 subjects (25 each), hendrycks 5-shot, " A".." D" after "Answer:"
  race   RACE-shaped: 200 RACE-M questions, article + question, log P(option | context) per option
  csqa   CSQA-shaped: 200 questions, the fixed 7-shot block, log P(option | context) per option
  gsm8k  GSM8K-shaped: 64 problems, 4-shot, greedy 256 new tokens, stop at "\\n\\n" or "Question:"
Both tools get the same (context, continuation) pairs (for generation the same prompts and stops).

Per workload and tool: a warm-up on a slice, then --reps timed repetitions (the best is reported).
Columns: wall seconds; real tokens/s (tokens of the distinct rows, what scoring each row whole
computes, over the wall time; generation: prompt + generated tokens); MFU (2 x matmul params of the
decoder layers x tokens actually computed / wall / 790 TFLOP/s: the H200's dense bf16 peak; lm-eval
computes every row whole, ours what its prefix tree computes); speed-up (lm-eval wall / ours); agreement:
scoring, the same argmax per question as lm-eval and as our plain path (--no-prefix-cache); generation,
texts identical to lm-eval's and to our plain greedy path (no shared prompt prefix).

    # GPU (H200): XVERSE-65B widths at 16 layers, random bf16 weights built on the GPU
    python benchmarks/vs_lmeval.py --data-dir .devdata/data --tokenizer .devdata/smollm2-tokenizer
    # CPU smoke test: two small layers
    python benchmarks/vs_lmeval.py --device cpu --layers 2 --hidden 256 --heads 4 --kv-heads 2 --ffn 512 \\
        --vocab 49152 --questions 16 --problems 2 --max-new 16 --reps 1

Writes $OUT/vs_lmeval.json (or --json PATH) when set. lm-eval must be importable (the 0.4.13 wheel,
installed --no-deps).
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

from xverse_eval.evaluate import TaskSpec, build, make_task  # noqa: E402
from xverse_eval.runner import work  # noqa: E402
from xverse_eval.runner.attention import kernels  # noqa: E402
from xverse_eval.runner.hf import HFModel  # noqa: E402
from xverse_eval.types import GenerateRequest, LoglikelihoodRequest  # noqa: E402

PEAK_FLOPS = 790e12  # H200 dense bf16
MMLU_SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "college_biology", "high_school_physics", "marketing", "philosophy", "virology"]
STOPS = ("\n\n", "Question:")


# ----------------------------------------------------------------------------- model


def random_model(args, tokenizer) -> HFModel:
    """Llama with the given widths and random weights, built directly on the device in its dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=max(args.vocab, len(tokenizer)), hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, intermediate_size=args.ffn,
                         max_position_embeddings=4096, rms_norm_eps=1e-6, attn_implementation="sdpa")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(saved)
    return HFModel(tokenizer, model, "random-xverse-widths", {"model": "random"}, args.device)


def matmul_params(config) -> int:
    """Weights of the decoder layers' matmuls (attention projections and MLP), all layers."""
    from xverse_eval.runner.shape import Shape

    return Shape.of(config).sharded_params()  # the layers' projections: what tensor parallel splits


# ----------------------------------------------------------------------------- workloads


def items_for(name: str, args, model):
    if name == "mmlu":
        task = make_task(TaskSpec("mmlu", MMLU_SUBJECTS), args.data_dir)
        return build(task, task.samples(limit=max(1, args.questions // len(MMLU_SUBJECTS))), model)
    if name == "piqa":
        task = make_task(TaskSpec("piqa", variant="lm-eval"), args.data_dir)
    elif name == "race":
        task = make_task(TaskSpec("race"), args.data_dir)
    elif name == "csqa":
        task = make_task(TaskSpec("csqa"), args.data_dir)
    elif name == "gsm8k":
        task = make_task(TaskSpec("gsm8k"), args.data_dir)
        return build(task, task.samples(limit=args.problems), model)
    else:
        raise SystemExit(f"unknown workload {name!r}")
    return build(task, task.samples(limit=args.questions), model)


def scoring_requests(items) -> list[list[LoglikelihoodRequest]]:
    """Per question, its choices as plain (context, continuation) requests for both tools."""
    return [[LoglikelihoodRequest(r.key, r.context, r.continuation, r.shared_prefix) for r in item.requests] for item in items]


def generation_requests(items, max_new: int) -> list[GenerateRequest]:
    return [GenerateRequest(item.requests[0].key, item.requests[0].prompt, max_new, STOPS) for item in items]


# ----------------------------------------------------------------------------- the two tools


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int):
    """(result of the last run, best wall seconds over `reps` runs)."""
    best, out = float("inf"), None
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


def lm_eval_scores(lm, questions) -> list[list[float]]:
    from lm_eval.api.instance import Instance

    flat = [r for q in questions for r in q]
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=k) for k, r in enumerate(flat)]
    out = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    return regroup(questions, out)


def our_scores(model: HFModel, questions) -> list[list[float]]:
    """Our log-probs per question; the id cache is emptied first, so each timed call pays its whole
    tokenisation as lm-eval's does (in a run, building requests has already counted the contexts)."""
    flat = [r for q in questions for r in q]
    model.tokens.forget()
    return regroup(questions, [r.logprob for r in model.loglikelihood(flat)])


def regroup(questions, values):
    out, at = [], 0
    for q in questions:
        out.append(values[at : at + len(q)])
        at += len(q)
    return out


def lm_eval_texts(lm, requests: list[GenerateRequest]) -> list[str]:
    from lm_eval.api.instance import Instance

    instances = [Instance(request_type="generate_until", doc={}, idx=k,
                          arguments=(r.prompt, {"until": list(r.stop), "max_gen_toks": r.max_new_tokens, "do_sample": False}))
                 for k, r in enumerate(requests)]
    return lm.generate_until(instances, disable_tqdm=True)


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


# ----------------------------------------------------------------------------- one workload


def run_scoring(name, args, model, lm, flops_per_token):
    questions = scoring_requests(items_for(name, args, model))
    planned = work([r for q in questions for r in q], model.tokens)
    whole_tokens = planned.distinct_tokens
    warm = questions[: max(1, len(questions) // 8)]
    lm_eval_scores(lm, warm)
    our_scores(model, warm)
    theirs, t_theirs = timed(lambda: lm_eval_scores(lm, questions), args.device, args.reps)
    model.prefix_cache = True
    before = model.counters()
    ours, t_ours = timed(lambda: our_scores(model, questions), args.device, args.reps)
    computed = (model.counters().computed_tokens - before.computed_tokens) // args.reps
    model.prefix_cache = False
    plain, t_plain = timed(lambda: our_scores(model, questions), args.device, 1)
    model.prefix_cache = True
    agree = sum(argmax(a) == argmax(b) for a, b in zip(ours, theirs))
    agree_plain = sum(argmax(a) == argmax(b) for a, b in zip(ours, plain))
    worst = max(abs(x - y) for a, b in zip(ours, plain) for x, y in zip(a, b))
    return {
        "workload": name, "questions": len(questions), "requests": sum(map(len, questions)),
        "tokens": whole_tokens, "computed_tokens": computed, "planned_computed_tokens": planned.computed_tokens,
        "lm_eval_s": t_theirs, "ours_s": t_ours, "ours_plain_s": t_plain,
        "lm_eval_tok_s": whole_tokens / t_theirs, "ours_tok_s": whole_tokens / t_ours,
        "lm_eval_mfu": flops_per_token * whole_tokens / t_theirs / PEAK_FLOPS,
        "ours_mfu": flops_per_token * computed / t_ours / PEAK_FLOPS,
        "speedup": t_theirs / t_ours, "agree_lm_eval": agree, "agree_plain": agree_plain,
        "max_abs_logprob_diff_vs_plain": worst,
    }


def run_generation(name, args, model, lm, flops_per_token):
    requests = generation_requests(items_for(name, args, model), args.max_new)
    prompt_tokens = sum(model.count_tokens(r.prompt) for r in requests)
    lm_eval_texts(lm, requests[:2])
    model.generate(requests[:2])
    theirs, t_theirs = timed(lambda: lm_eval_texts(lm, requests), args.device, args.reps)
    ours, t_ours = timed(lambda: model.generate(requests), args.device, args.reps)
    new_tokens = sum(g.n_tokens for g in ours)
    # our plain greedy path: no shared prompt prefix
    model.prefix_cache = False
    try:
        plain = model.generate(requests)
    finally:
        model.prefix_cache = True
    tokens = prompt_tokens + new_tokens
    return {
        "workload": name, "questions": len(requests), "requests": len(requests), "tokens": tokens, "new_tokens": new_tokens,
        "lm_eval_s": t_theirs, "ours_s": t_ours,
        "lm_eval_tok_s": tokens / t_theirs, "ours_tok_s": tokens / t_ours,
        "lm_eval_mfu": flops_per_token * tokens / t_theirs / PEAK_FLOPS, "ours_mfu": flops_per_token * tokens / t_ours / PEAK_FLOPS,
        "speedup": t_theirs / t_ours,
        "agree_plain": sum(a.text == b.text for a, b in zip(ours, plain)),
        "agree_lm_eval": sum(a.text == b for a, b in zip(ours, theirs)),
        "lm_eval_agree_plain": sum(b.text == a for a, b in zip(theirs, plain)),
    }


def run_one_tool(name, args, model, lm):
    """One scoring workload with one tool, timed once after a warm-up: per-question verdicts and wall
    time (peak memory is the process's: run each tool in its own process, under /usr/bin/time -v)."""
    questions = scoring_requests(items_for(name, args, model))
    warm = questions[:8]
    score = (lambda qs: lm_eval_scores(lm, qs)) if args.tools == "lm-eval" else (lambda qs: our_scores(model, qs))
    score(warm)
    scores, wall = timed(lambda: score(questions), args.device, args.reps)
    return {"workload": name, "tool": args.tools, "questions": len(questions), "wall_s": wall,
            "verdicts": [argmax(q) for q in scores]}


def table(results, device) -> str:
    lines = [f"| workload | questions | tokens | lm-eval s | ours s | lm-eval tok/s | ours tok/s | lm-eval MFU | ours MFU | speed-up | agree lm-eval | agree plain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['workload']} | {r['questions']} | {r['tokens']:,} | {r['lm_eval_s']:.2f} | {r['ours_s']:.2f} | "
                     f"{r['lm_eval_tok_s']:,.0f} | {r['ours_tok_s']:,.0f} | {r['lm_eval_mfu']:.1%} | {r['ours_mfu']:.1%} | "
                     f"{r['speedup']:.2f}x | {r['agree_lm_eval']}/{r['questions']} | {r['agree_plain']}/{r['questions']} |")
    return "\n".join(lines)


def profile(name: str, args, model: HFModel) -> None:
    """Where our scoring time goes: phases timed by hand (tokenise+rows, the whole call), then one
    call under torch.profiler, top ops by self CPU and by device time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    questions = scoring_requests(items_for(name, args, model))
    flat = [r for q in questions for r in q]
    model.loglikelihood(flat)  # warm-up
    sync(args.device)
    t = time.perf_counter()
    model.tokens.forget()
    planned = work(flat, model.tokens)
    rows_s = time.perf_counter() - t
    model.tokens.forget()
    _, whole_s = timed(lambda: model.loglikelihood(flat), args.device, 1)
    print(f"{name}: whole call {whole_s:.3f} s, of which tokenise + rows + tree {rows_s:.3f} s; {planned}; varlen kernels {kernels()}", flush=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        model.loglikelihood(flat)
        sync(args.device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60), flush=True)
    if args.device.startswith("cuda"):
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=".devdata/data")
    ap.add_argument("--tokenizer", default=".devdata/smollm2-tokenizer")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=22016)
    ap.add_argument("--vocab", type=int, default=100534)
    ap.add_argument("--workloads", default="mmlu,race,csqa,gsm8k")
    ap.add_argument("--questions", type=int, default=200, help="questions per scoring workload")
    ap.add_argument("--problems", type=int, default=64, help="GSM8K problems")
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--lm-eval-batch", type=int, default=32)
    ap.add_argument("--model", help="a real model (GGUF file, folder, alias) instead of random weights; float32 on CPU")
    ap.add_argument("--tools", default="both", choices=["both", "ours", "lm-eval"],
                    help="one tool alone (CPU memory: measure each in its own process); no speed-up then")
    ap.add_argument("--profile", default=None, help="instead of the comparison: profile our scoring of these workloads once (torch.profiler), print the top ops")
    ap.add_argument("--json", default=os.path.join(os.environ["OUT"], "vs_lmeval.json") if os.environ.get("OUT") else None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    if args.tools != "ours":
        from lm_eval.models.huggingface import HFLM

    t = time.perf_counter()
    if args.model:
        from xverse_eval.runner import load_model

        model = load_model(args.model, device=args.device)
        tokenizer = model.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        model = random_model(args, tokenizer)
    model.report_progress = False
    c = model.model.config.get_text_config()
    print(f"model {'loaded' if args.model else 'built'} in {time.perf_counter() - t:.1f} s: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"{c.num_attention_heads} heads / {getattr(c, 'num_key_value_heads', None) or c.num_attention_heads} KV, ffn {c.intermediate_size}, "
          f"vocab {c.vocab_size}, {args.device}", flush=True)
    lm = None if args.tools == "ours" else HFLM(pretrained=model.model, tokenizer=tokenizer, batch_size=args.lm_eval_batch, device=args.device)
    flops_per_token = 2 * matmul_params(model.model.config.get_text_config())
    if args.profile:
        for name in args.profile.split(","):
            profile(name, args, model)
        return
    results = []
    if args.tools != "both":
        for name in args.workloads.split(","):
            results.append(run_one_tool(name, args, model, lm))
            print(json.dumps(results[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
        return
    for name in args.workloads.split(","):
        t = time.perf_counter()
        run = run_generation if name == "gsm8k" else run_scoring
        results.append(run(name, args, model, lm, flops_per_token))
        print(f"{name}: done in {time.perf_counter() - t:.0f} s: {json.dumps(results[-1])}", flush=True)
    print()
    print(table(results, args.device))
    print(f"varlen attention kernels: {kernels()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                                               "torch": torch.__version__, "kernels": kernels(), "results": results}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
