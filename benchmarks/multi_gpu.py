"""Multi-GPU measurements, one rank per process under torchrun (benchmarks/multi_gpu.sh runs them all).

    torchrun --nproc-per-node N benchmarks/multi_gpu.py dp --model random:xverse-65b:layers=16 --data-dir D --out DIR
    torchrun --nproc-per-node K benchmarks/multi_gpu.py tp --model random:xverse-65b --tp-size K --data-dir D --out DIR
    python benchmarks/multi_gpu.py compare DIR_A DIR_B

`dp`: the MMLU-shaped workload (the first --limit questions of --subjects subjects, 5-shot, letter
scoring) through the same path as `xverse-eval run` (evaluate.build, then evaluate.infer with this
rank's Dist: sharded, per-rank responses files, barrier). The time is the inference phase only,
between two barriers, after a warm-up batch (model building and process start are reported apart).
Writes DIR/timing.json and DIR/responses.rank<R>.jsonl.

`tp`: one replica over --tp-size GPUs: scoring throughput (prompt tokens per second over the MMLU
rows) and greedy decode time per step (a batch of --decode-rows prompts, 1 and 1+--decode-steps new
tokens; ms/step = the difference / decode steps). Writes DIR/timing.json.

`compare`: the responses of two runs key by key (content hashes): how many equal bit for bit, the
largest log-prob difference, and whether every question's predicted letter is the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from xverse_eval import parallel  # noqa: E402
from xverse_eval.evaluate import TaskSpec, build, infer, make_task  # noqa: E402
from xverse_eval.results import ResponseStore  # noqa: E402
from xverse_eval.types import GenerateRequest  # noqa: E402

SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "college_biology", "high_school_us_history", "marketing",
            "professional_law", "world_religions"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load(args, d):
    from xverse_eval.runner import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, device="cuda" if torch.cuda.is_available() else "cpu", dtype="auto",
                       prefix_cache=args.prefix_cache, **({"dist": d} if d.active else {}))
    sync()
    if d.active:
        model.report_progress = False
    return model, time.perf_counter() - t0


def mmlu_items(args, model):
    task = make_task(TaskSpec("mmlu", SUBJECTS[: args.subjects]), args.data_dir)
    return task, build(task, task.samples(args.limit), model)


def cmd_dp(args) -> None:
    d = parallel.setup(1)
    model, load_s = load(args, d)
    task, items = mmlu_items(args, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = [r for r in items[0].requests]
    model.loglikelihood(warm)  # kernels, allocator, autotuning: not part of the timed phase
    store = ResponseStore(d.responses_file(out), model.fingerprint, {"mmlu": {"version": task.version, "prompt_hash": task.prompt_hash}})
    parallel.barrier(d)
    sync()
    t0 = time.perf_counter()
    infer(model, items, store, d)  # ends with the barrier of the whole job
    sync()
    seconds = time.perf_counter() - t0
    tokens = sum(model.count_tokens(i.prompt) for i in items)
    if d.main:
        row = {"mode": "dp", "model": args.model, "world_size": d.world_size, "questions": len(items),
               "requests": sum(len(i.requests) for i in items), "prompt_tokens": tokens, "infer_s": round(seconds, 3),
               "tokens_per_s": round(tokens / seconds), "load_s": round(load_s, 1), "gpu": gpu_name()}
        (out / "timing.json").write_text(json.dumps(row, indent=1))
        print(json.dumps(row))
    parallel.finish(d)


def cmd_tp(args) -> None:
    d = parallel.setup(args.tp_size)
    model, load_s = load(args, d)
    task, items = mmlu_items(args, model)
    requests = [r for i in items for r in i.requests]
    tokens = sum(model.count_tokens(i.prompt) for i in items)
    row = {"mode": "tp", "model": args.model, "tp_size": d.tp_size, "load_s": round(load_s, 1), "gpu": gpu_name(),
           "mem_allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None}
    try:
        model.loglikelihood(requests[:4])  # warm-up
        parallel.barrier(d)
        sync()
        t0 = time.perf_counter()
        model.loglikelihood(requests)
        sync()
        row.update(score_questions=len(items), score_tokens=tokens, score_s=round(time.perf_counter() - t0, 3))
        row["score_tokens_per_s"] = round(tokens / row["score_s"])
    except Exception as exc:  # noqa: BLE001 -- a measurement that fails is recorded, the next one still runs
        row["score_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        prompts = [i.prompt for i in items[: args.decode_rows]]

        def timed(n: int) -> float:
            reqs = [GenerateRequest(f"bench/{k}/{n}", p, max_new_tokens=n) for k, p in enumerate(prompts)]
            parallel.barrier(d)
            sync()
            t0 = time.perf_counter()
            gens = model.generate(reqs)
            sync()
            assert all(g.n_tokens == n for g in gens), [g.n_tokens for g in gens]  # random weights: no EOS expected
            return time.perf_counter() - t0

        timed(2)  # warm-up (graphs, compilation)
        one, many = timed(1), timed(1 + args.decode_steps)
        row.update(decode_rows=len(prompts), decode_steps=args.decode_steps, prefill_plus_one_s=round(one, 3),
                   decode_ms_per_step=round(1000 * (many - one) / args.decode_steps, 2))
    except Exception as exc:  # noqa: BLE001
        row["decode_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if d.main:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "timing.json").write_text(json.dumps(row, indent=1))
        print(json.dumps(row))
    parallel.finish(d)


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def read_responses(folder: Path) -> dict:
    rows = {}
    for f in sorted(folder.glob("responses*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["key"]] = row
    return rows


def cmd_compare(args) -> None:
    a, b = read_responses(Path(args.a)), read_responses(Path(args.b))
    common = a.keys() & b.keys()
    diffs = [abs(a[k]["response"]["logprob"] - b[k]["response"]["logprob"]) for k in common]

    def letters(rows):
        by_item = {}
        for row in rows.values():
            item, choice = row["request"].rsplit("/", 1)
            by_item.setdefault(item, {})[choice] = row["response"]["logprob"]
        return {item: max(c, key=c.get) for item, c in by_item.items()}

    pa, pb = letters(a), letters(b)
    row = {"a": args.a, "b": args.b, "responses_a": len(a), "responses_b": len(b), "same_keys": a.keys() == b.keys(),
           "bitwise_equal": sum(1 for k in common if a[k]["response"] == b[k]["response"]),
           "max_abs_logprob_diff": max(diffs) if diffs else None,
           "questions": len(pa), "same_predictions": sum(1 for k in pa if pa[k] == pb.get(k))}
    print(json.dumps(row))
    if args.write:
        Path(args.write).write_text(json.dumps(row, indent=1))


def cmd_summary(args) -> None:
    """DIR/multi_gpu.md: the tables of whatever stages have finished."""
    out = Path(args.out)
    def load(name):
        p = out / name / "timing.json"
        return json.loads(p.read_text()) if p.exists() else None
    lines = ["# Multi-GPU measurements (benchmarks/multi_gpu.sh)", "", (out / "gpus.txt").read_text().strip(), ""]
    dp1, dp2 = load("dp1"), load("dp2")
    lines += ["## Data parallel, MMLU-shaped (16-layer XVERSE-65B widths, random bf16)", "",
              "| GPUs | questions | prompt tokens | inference s | tokens/s | speed-up | model build s |", "|---|---|---|---|---|---|---|"]
    for r in (dp1, dp2):
        if r:
            speed = f"{dp1['infer_s'] / r['infer_s']:.2f}x" if dp1 else "-"
            lines.append(f"| {r['world_size']} | {r['questions']} | {r['prompt_tokens']} | {r['infer_s']} | {r['tokens_per_s']} | {speed} | {r['load_s']} |")
    cmp = out / "dp_compare.json"
    if cmp.exists():
        c = json.loads(cmp.read_text())
        lines += ["", f"Merged 2-GPU responses vs 1 GPU: same keys {c['same_keys']}, {c['bitwise_equal']}/{c['responses_a']} bit-identical, "
                  f"max |delta logprob| {c['max_abs_logprob_diff']}, same predicted letter {c['same_predictions']}/{c['questions']}."]
    lines += ["", "## XVERSE-65B architecture (80 layers, MHA, random bf16): tensor parallel", "",
              "| TP | GPU mem allocated GiB | scoring tokens/s | decode ms/step (rows) | model build s | errors |", "|---|---|---|---|---|---|"]
    for name in ("tp1", "tp2"):
        r = load(name)
        if r:
            errs = "; ".join(r[k] for k in ("score_error", "decode_error") if k in r) or "-"
            lines.append(f"| {r['tp_size']} | {r['mem_allocated_gib']} | {r.get('score_tokens_per_s', '-')} | {r.get('decode_ms_per_step', '-')} ({r.get('decode_rows', '-')}) | {r['load_s']} | {errs} |")
        else:
            log = out / f"{name}.log"
            tail = [l for l in log.read_text().splitlines() if "error" in l.lower()][-1:] if log.exists() else []
            lines.append(f"| {name[2:]} | - | - | - | - | did not finish: {tail[0][:200] if tail else 'see ' + name + '.log'} |")
    full = out / "mmlu_full_time.txt"
    if full.exists():
        lines += ["", "## Full MMLU test end to end, 2 GPUs (torchrun -m xverse_eval run)", "", "```", full.read_text().strip(), "```"]
        res = out / "mmlu_full" / "results.json"
        if res.exists():
            r = json.loads(res.read_text())["results"].get("mmlu", {})
            lines.append(f"results.json mmlu: { {k: v for k, v in r.items() if not isinstance(v, dict)} }")
    (out / "multi_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("dp", "tp"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--data-dir", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--subjects", type=int, default=8)
        s.add_argument("--limit", type=int, default=25)
        s.add_argument("--prefix-cache", action="store_true")
        if name == "tp":
            s.add_argument("--tp-size", type=int, default=1)
            s.add_argument("--decode-rows", type=int, default=16)
            s.add_argument("--decode-steps", type=int, default=32)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--write", default=None)
    sub.add_parser("summary").add_argument("out")
    args = p.parse_args()
    {"dp": cmd_dp, "tp": cmd_tp, "compare": cmd_compare, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
