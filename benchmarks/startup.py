"""Start-up of `xverse-eval run` as a user runs it (issue 17): the time from the command's start to
the first request reaching the model, the dry run's timings and compute floor, and (with --full) the
whole run end to end against that floor.

Each measurement is a real `python -m xverse_eval run` child process, timed from its start:

- dry run: `run ... --dry-run` (tokenizer only, no weights): wall seconds, and the table it prints
  (requests, distinct tokens, tokens after prefix sharing, the compute floor on the device);
- first request: `run ... --verbosity INFO`; the pipeline logs "first request reaches the model N s
  after the command started" (xverse_eval/evaluate.py); the child is stopped there unless --full;
- --full: the same run to the end (results.json), its wall time, and wall / floor.

    # CPU, here: the dry-run targets (full MMLU <= 60 s, --tasks xverse <= 3 min)
    .venv/bin/python benchmarks/startup.py --model smollm2-135m --tasks mmlu --device cpu --dry-only --data-dir ../shared/data

    # H200 (issue 17): 10 scoring/generation tasks at 16 layers, first request <= 30 s
    python benchmarks/startup.py --data-dir .devdata --tokenizer DIR \\
        --model random:xverse-65b:layers=16:kv_heads=8 --tasks ceval,cmmlu,gaokao,mmlu,gaokao_english,agieval,race,csqa,piqa,gsm8k
    # H200: full MMLU at 80 layers end to end, <= 1.1 x the dry run's floor
    python benchmarks/startup.py --data-dir .devdata --tokenizer DIR --model random:xverse-65b:kv_heads=8 --tasks mmlu --full

Results are printed and written to $OUT/startup.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST = re.compile(r"first request reaches the model ([0-9.]+) s after the command started")
DRY_TOTAL = re.compile(r"^total\s+(.*)$", re.M)
TEN_TASKS = "ceval,cmmlu,gaokao,mmlu,gaokao_english,agieval,race,csqa,piqa,gsm8k"


def base_args(opts, out_dir: Path) -> list[str]:
    model = opts.model
    if opts.tokenizer and model.startswith("random:") and ":tokenizer=" not in model:
        model += f":tokenizer={opts.tokenizer}"
    args = [sys.executable, "-m", "xverse_eval", "run", "--model", model, "--tasks", opts.tasks,
            "--data-dir", opts.data_dir, "--output-dir", str(out_dir)]
    if opts.device:
        args += ["--device", opts.device]
    if opts.limit:
        args += ["--limit", opts.limit]
    return args


def dry_run(opts, work: Path) -> dict:
    """Wall seconds of the dry run and its total row (requests, distinct, after sharing, generated, TFLOP, floor)."""
    start = time.monotonic()
    proc = subprocess.run([*base_args(opts, work / "dry"), "--dry-run"], capture_output=True, text=True, env=env(opts))
    wall = time.monotonic() - start
    if proc.returncode:
        raise SystemExit(f"dry run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    match = DRY_TOTAL.search(proc.stdout)
    cells = match.group(1).split() if match else []
    floor = cells[5] if len(cells) > 5 else None
    return {"wall_s": round(wall, 1), "table": proc.stdout, "total": cells, "floor": floor, "floor_s": seconds(floor)}


def seconds(text: str | None) -> float | None:
    """`12.3s`, `5m07s`, `1h02m` -> seconds."""
    if not text or text == "-":
        return None
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([0-9.]+)s)?", text)
    if not m:
        return None
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def env(opts) -> dict:
    out = {**os.environ, "XVERSE_EVAL_PROGRESS_EVERY": str(opts.progress_every)}
    return out


def real_run(opts, work: Path) -> dict:
    """Seconds to the first request (the pipeline's own line) and, with --full, to the end."""
    start = time.monotonic()
    proc = subprocess.Popen([*base_args(opts, work / "real"), "--verbosity", "INFO"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env(opts))
    first, seen_at, tail = None, None, []
    try:
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-40:]
            print(f"[{time.monotonic() - start:7.1f}s] {line.rstrip()}", file=sys.stderr)
            m = FIRST.search(line)
            if m and first is None:
                first, seen_at = float(m.group(1)), time.monotonic() - start
                if not opts.full:
                    break
        if not opts.full:
            proc.terminate()
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - start
    out = {"first_request_s": first, "first_request_seen_s": round(seen_at, 1) if seen_at else None}
    if opts.full:
        out.update(wall_s=round(wall, 1), rc=rc, summary=[t for t in tail if t.startswith("summary:")])
        if rc:
            out["stderr_tail"] = tail
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:xverse-65b:layers=16:kv_heads=8")
    p.add_argument("--tasks", default=TEN_TASKS)
    p.add_argument("--data-dir", required=True, help="the benchmarks in their published layout (on the device: .devdata)")
    p.add_argument("--tokenizer", default=os.environ.get("XVERSE_EVAL_RANDOM_TOKENIZER"), help="tokenizer folder for random: specs")
    p.add_argument("--device", default=None)
    p.add_argument("--limit", default=None)
    p.add_argument("--dry-only", action="store_true", help="only the dry run (no weights)")
    p.add_argument("--no-dry", action="store_true", help="skip the dry run")
    p.add_argument("--full", action="store_true", help="run to the end (else stop at the first request)")
    p.add_argument("--progress-every", type=float, default=10.0)
    p.add_argument("--out", default=os.environ.get("OUT") or ".")
    opts = p.parse_args()
    result: dict = {"model": opts.model, "tasks": opts.tasks, "device": opts.device}
    with tempfile.TemporaryDirectory(prefix="startup-", dir=".") as tmp:
        work = Path(tmp)
        if not opts.no_dry:
            result["dry_run"] = dry_run(opts, work)
            print(result["dry_run"]["table"])
            print(f"dry run: {result['dry_run']['wall_s']} s wall (command start to exit)")
        if not opts.dry_only:
            result["run"] = real_run(opts, work)
            print(f"first request reached the model {result['run']['first_request_s']} s after the command started")
            floor = result.get("dry_run", {}).get("floor_s")
            if opts.full and floor:
                result["run"]["wall_over_floor"] = round(result["run"]["wall_s"] / floor, 2)
                print(f"end to end {result['run']['wall_s']} s = {result['run']['wall_over_floor']} x the compute floor ({floor} s)")
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    Path(opts.out, "startup.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
