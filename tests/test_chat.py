"""--apply-chat-template, --system-instruction, --fewshot-as-multiturn on the real SmolLM2-Instruct
tokenizer (a ChatML template), and the HumanEval "instruct" variant's code extraction."""
from __future__ import annotations

import copy
import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from xverse_eval.chat import ChatOptions, ChatTemplate, apply, common_header
from xverse_eval.cli import main
from xverse_eval.errors import EvalError
from xverse_eval.evaluate import TaskSpec, build, chat_template, make_task
from xverse_eval.registry import get_task_class

GOLDEN = Path(__file__).parent / "golden" / "mmlu"
# SmolLM2-Instruct's template writes this system turn when the conversation has none
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def chat_items(model, data_dir, spec: str, options: ChatOptions, limit: int = 2):
    name, *subsets = spec.split(":")
    task = make_task(TaskSpec(name, subsets), data_dir)
    return task, build(task, task.samples(limit), model, chat_template(model, options))


@pytest.mark.slow
def test_templated_prompt_is_a_hand_rendering_of_chatml(smollm2, data_dir):
    # the protocol's plain prompt (a golden file) becomes the one user turn; the letter follows the
    # assistant header with no space (lm-eval's empty target delimiter under a template)
    plain = (GOLDEN / "anatomy_3.txt").read_text(encoding="utf-8")
    task = make_task(TaskSpec("mmlu", ["anatomy"]), data_dir)
    template = ChatTemplate(smollm2.tokenizer, smollm2.name)
    item = apply(task, task.build(task.sample_at("anatomy", 3)), template, ChatOptions(""))
    expected = SMOL_SYSTEM + "<|im_start|>user\n" + plain + "<|im_end|>\n<|im_start|>assistant\n"
    assert item.prompt == expected
    assert [r.context for r in item.requests] == [expected] * 4
    assert [r.continuation for r in item.requests] == ["A", "B", "C", "D"]
    # show-prompt prints the same bytes
    code, out, _ = cli("show-prompt", "mmlu:anatomy", "--index", "3", "--data-dir", data_dir, "--model", "smollm2-135m", "--apply-chat-template")
    assert code == 0 and out == expected
    # a system instruction replaces the template's default system turn
    item = apply(task, task.build(task.sample_at("anatomy", 3)), template, ChatOptions("", "Answer with a letter."))
    assert item.prompt == "<|im_start|>system\nAnswer with a letter.<|im_end|>\n<|im_start|>user\n" + plain + "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_fewshot_as_multiturn_is_a_hand_rendering(smollm2, data_dir):
    task, items = chat_items(smollm2, data_dir, "mmlu:anatomy", ChatOptions("", None, True), limit=1)
    prompt = items[0].prompt
    # the header every shot shares goes into the system turn, once; each shot is a user turn and its
    # gold letter an assistant turn; the question is the last user turn
    first_shot = ("<|im_start|>user\nWhat is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n"
                  "B. The first and second pharyngeal arches\nC. The second pharyngeal arch\nD. The second and third pharyngeal arches\n"
                  "Answer:<|im_end|>\n<|im_start|>assistant\nD<|im_end|>\n")
    assert prompt.startswith("<|im_start|>system\nThe following are multiple choice questions (with answers) about  anatomy.<|im_end|>\n" + first_shot)
    assert prompt.count("<|im_start|>user\n") == 6 and prompt.count("<|im_start|>assistant\n") == 6
    assert prompt.endswith("\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert "The following are" not in prompt.split("<|im_end|>", 1)[1]  # the header is not repeated per turn


@pytest.mark.slow
def test_letter_scoring_checks_one_token_on_the_templated_prompt(smollm2, data_dir, tmp_path):
    task, items = chat_items(smollm2, data_dir, "mmlu:anatomy", ChatOptions(""))
    for item in items:  # the check passed; the answer token is the one the tokenizer makes after the header
        for req in item.requests:
            assert smollm2.count_tokens(req.context + req.continuation) - smollm2.count_tokens(req.context) == 1
    # a template whose generation prompt ends in a letter glues " A" -> "BA": the plain prompt passes,
    # the templated one is refused before any model work
    glued = tmp_path / "glued.jinja"
    glued.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\nB{% endif %}")
    with pytest.raises(EvalError, match=r"mmlu: request mmlu/.*: the answer 'A' is 0 tokens after the prompt .* letter scoring needs exactly one"):
        chat_items(smollm2, data_dir, "mmlu:anatomy", ChatOptions(str(glued)))


@pytest.mark.slow
def test_template_identity_and_end_of_turn(smollm2):
    template = ChatTemplate(smollm2.tokenizer, smollm2.name)
    import hashlib

    assert template.hash == hashlib.sha256(smollm2.tokenizer.chat_template.encode()).hexdigest()[:12]
    assert template.end_of_turn_ids() == {smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    bare = copy.copy(smollm2.tokenizer)
    bare.chat_template = None
    with pytest.raises(EvalError, match=r"^the tokenizer of m has no chat template; run without --apply-chat-template"):
        ChatTemplate(bare, "m")
    with pytest.raises(EvalError, match=r"--apply-chat-template tool_use: the tokenizer of m has the templates default"):
        ChatTemplate(smollm2.tokenizer, "m", "tool_use")


def test_flags_off_or_misused(tmp_path):
    assert ChatOptions().enabled is False  # default: nothing in chat.py runs
    code, _, err = cli("run", "--model", "fake:1", "--tasks", "humaneval", "--fewshot-as-multiturn", "--output-dir", str(tmp_path / "a"))
    assert code == 2 and err.strip().endswith("--fewshot-as-multiturn needs --apply-chat-template (shots become turns of a chat)")
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("run", "--model", "fake:1", "--tasks", "humaneval", "--limit", "1", "--apply-chat-template", "--output-dir", str(tmp_path / "b"))
    assert code == 2 and "model fake:1 has no tokenizer with a chat template" in err and len(err.strip().splitlines()) == 1


def test_common_header_stops_at_a_line_end():
    assert common_header(["About x.\n\nWhich one?", "About x.\n\nWhich two?"]) == "About x.\n\n"
    assert common_header(["Which one?", "Which two?"]) == ""


def humaneval_module():
    get_task_class("humaneval")
    return sys.modules[get_task_class("humaneval").__module__]


def test_instruct_variant_prompt_and_prefill():
    task = make_task(TaskSpec("humaneval", variant="instruct"), None)
    item = task.build(task.samples(1)[0])
    problem = task.samples(1)[0].question
    assert item.prompt == ("Please provide a self-contained Python script that solves the following problem in a markdown code block:\n"
                           "```\n" + problem.strip() + "\n```\n"
                           "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:\n```python\n")
    assert item.requests[0].stop == ("\n```\n",)
    assert task.prompt_hash != make_task(TaskSpec("humaneval"), None).prompt_hash


def test_instruct_code_keeps_definitions_only():
    m = humaneval_module()
    answer = ("from typing import List\n\n\n@cache\ndef f(x: List[int]) -> int:\n    return len(x)\n\n\nprint(f([1]))\nassert f([]) == 0\n"
              "if __name__ == '__main__':\n    f([2])\n```\n\nThis function counts.")
    assert m.instruct_code(answer) == "from typing import List\n@cache\ndef f(x: List[int]) -> int:\n    return len(x)"
    # an answer that writes prose first and opens its own fence
    assert m.instruct_code("Sure:\n```python\nimport math\nN = 2\ndef g():\n    return math.pi * N\n```\n") == "import math\nN = 2\ndef g():\n    return math.pi * N"
    # cut to the longest prefix that parses (a generation stopped mid-statement)
    assert m.instruct_code("def h():\n    return 1\n\ndef k():\n    return (1,\n") == "def h():\n    return 1"
    assert m.instruct_code("no code here") == ""
