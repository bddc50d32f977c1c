"""Chat models: prompts rendered through the tokenizer's chat template, with lm-eval's meanings.

    --apply-chat-template [NAME]   render every prompt as a conversation through the tokenizer's chat
                                   template (NAME: one of the tokenizer's named templates, or a .jinja file)
    --system-instruction TEXT      a system turn before everything else
    --fewshot-as-multiturn         each shot its own user/assistant turn pair (needs the template)

What changes, phase by phase (lm-evaluation-harness, lm_eval/api/task.py `fewshot_context` and
lm_eval/models/huggingface.py `apply_chat_template`):

- the task's plain prompt (its k-shot block and the question, exactly as the protocol renders it)
  becomes the content of one user turn; the template adds its headers and the generation prompt
  (`add_generation_prompt=True`), so the answer is read right after the assistant header;
- with --fewshot-as-multiturn, a multiple-choice task's shots become alternating user/assistant turns:
  each shot's zero-shot prompt as the user turn and its answer (the protocol's continuation for the
  gold choice, stripped) as the assistant turn; the text the zero-shot prompts of one item all begin
  with (a task header such as MMLU's "The following are multiple choice questions ...") goes into the
  system turn, once, as lm-eval puts a task's description there;
- log-likelihood continuations lose their leading whitespace (lm-eval sets the target delimiter to ""
  under a chat template: " A" after "Answer:" becomes "A" after the assistant header); letter scoring
  still reads exactly one answer token, and that rule is checked on the templated prompt;
- a task may name an assistant prefill (`chat_prefix`, lm-eval's `gen_prefix`): the plain prompt ends
  with it, and under the template it follows the assistant header instead of ending the user turn;
- generation also stops at the template's end-of-turn tokens (the model's EOS set is widened with
  the ids `end_of_turn_ids` finds).

Shots are chosen as the protocol chooses them (on the plain prompt, its token limit included); only
the rendering changes. With the flags off nothing here runs: reproduction prompts stay byte-identical.
The template's hash (sha256 of its source, 12 hex digits) goes into the run identity and the report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import EvalError
from .types import GenerateRequest, LoglikelihoodRequest, Sample

# the tokens chat templates end a turn with, by their text (ChatML, Llama 3, Gemma, Phi-3, Mistral, ...)
END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>", "<|end_of_text|>")


@dataclass(frozen=True)
class ChatOptions:
    """What the user asked for on the command line. `template` is None when the flags are off;
    "" asks for the tokenizer's default template, a name for one of its named templates or a
    .jinja file."""

    template: str | None = None
    system_instruction: str | None = None
    fewshot_as_multiturn: bool = False

    @property
    def enabled(self) -> bool:
        return self.template is not None

    def check(self) -> None:
        if self.fewshot_as_multiturn and not self.enabled:
            raise EvalError("--fewshot-as-multiturn needs --apply-chat-template (shots become turns of a chat)")
        if self.system_instruction is not None and not self.enabled:
            raise EvalError("--system-instruction needs --apply-chat-template (it becomes the system turn of a chat)")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class ChatTemplate:
    """A tokenizer's chat template, resolved once: `source` (the jinja text), `name`, `hash`.

    `render(messages)` -> the prompt string with the generation prompt appended, exactly as
    `tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)` renders it.
    Raises EvalError (one line) when the tokenizer has no template or NAME is not one of its templates.
    """

    def __init__(self, tokenizer, model_name: str, name: str = ""):
        self.tokenizer = tokenizer
        self.name, self.source = resolve_template(tokenizer, model_name, name)
        self.hash = hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:12]

    def render(self, messages: Sequence[Message]) -> str:
        try:
            return self.tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                                      chat_template=self.source, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises TemplateError for conversations a template refuses (e.g. no system role)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EvalError(f"chat template {self.name!r} refused the conversation ({', '.join(m.role for m in messages)}): {first}") from None

    def end_of_turn_ids(self) -> set[int]:
        """Ids of the end-of-turn tokens this template writes (its text names them), so generation
        stops where the assistant's turn ends even when the model's EOS is another token."""
        vocab = self.tokenizer.get_vocab()
        return {vocab[t] for t in END_OF_TURN_TEXTS if t in self.source and t in vocab}

    def identity(self) -> dict:
        return {"name": self.name, "hash": self.hash}


def resolve_template(tokenizer, model_name: str, name: str) -> tuple[str, str]:
    """(name, jinja source) of the template asked for: the default, a named one, or a .jinja file."""
    if name and name.endswith(".jinja"):
        path = Path(os.path.expanduser(name))
        if not path.is_file():
            raise EvalError(f"--apply-chat-template {name}: no such template file")
        return path.name, path.read_text(encoding="utf-8")
    templates = getattr(tokenizer, "chat_template", None)
    if not templates:
        raise EvalError(f"the tokenizer of {model_name} has no chat template; run without --apply-chat-template, or give one: --apply-chat-template FILE.jinja")
    if isinstance(templates, str):
        templates = {"default": templates}
    if not name:
        name = "default" if "default" in templates else next(iter(templates))
    if name not in templates:
        raise EvalError(f"--apply-chat-template {name}: the tokenizer of {model_name} has the templates {', '.join(templates)}")
    return name, templates[name]


# ----------------------------------------------------------------------------- conversations


def system_turn(options: ChatOptions, description: str) -> list[Message]:
    """lm-eval joins the system instruction and the task description with the few-shot delimiter."""
    parts = [p for p in (options.system_instruction, description) if p]
    return [Message("system", "\n\n".join(parts))] if parts else []


def single_turn(options: ChatOptions, user: str) -> list[Message]:
    return system_turn(options, "") + [Message("user", user)]


def common_header(texts: Sequence[str]) -> str:
    """The leading text every one of `texts` shares, up to and including its last newline (so a
    header never takes the first words of a question that happen to agree)."""
    shared = os.path.commonprefix(list(texts))
    cut = shared.rfind("\n")
    return shared[: cut + 1] if cut >= 0 else ""


def multiturn(task, sample: Sample, shots: Sequence[Sample], options: ChatOptions) -> list[Message] | None:
    """Shots as user/assistant turns for a multiple-choice task; None when the task's prompts cannot
    be taken apart that way (then the caller keeps one user turn)."""
    questions = [task.render(s, []) for s in (*shots, sample)]
    header = common_header(questions)
    turns: list[Message] = []
    for shot, question in zip(shots, questions):
        if not isinstance(shot.target, int) or not 0 <= shot.target < len(shot.choices):
            return None
        whole = task.render(shot, [], choice=shot.target)
        if not whole.startswith(question):
            return None
        turns += [Message("user", question[len(header):]), Message("assistant", whole[len(question):].strip())]
    return system_turn(options, header.strip()) + turns + [Message("user", questions[-1][len(header):])]


# ----------------------------------------------------------------------------- Prepared items


def split_prefix(task, prompt: str) -> tuple[str, str]:
    """(user content, assistant prefill) of a plain prompt: a task's `chat_prefix` ends it."""
    prefix = getattr(task, "chat_prefix", "") or ""
    if prefix and prompt.endswith(prefix):
        return prompt[: -len(prefix)], prefix
    return prompt, ""


def apply(task, item, template: ChatTemplate, options: ChatOptions):
    """The Prepared `item` (built by the protocol) rendered as a conversation: a new Prepared whose
    prompt and requests carry the templated text. Loglikelihood continuations lose their leading
    whitespace (lm-eval's empty target delimiter under a template)."""
    user, prefill = split_prefix(task, item.prompt)
    messages = None
    if options.fewshot_as_multiturn and item.shots and hasattr(task, "drop_shot") and any(isinstance(r, LoglikelihoodRequest) for r in item.requests):
        messages = multiturn(task, item.sample, used_shots(task, item), options)
    if messages is None:
        messages = single_turn(options, user)
    prompt = template.render(messages) + prefill
    requests: list[Any] = []
    for req in item.requests:
        if isinstance(req, LoglikelihoodRequest):
            requests.append(dataclasses.replace(req, context=prompt, continuation=req.continuation.lstrip(), shared_prefix=""))
        elif isinstance(req, GenerateRequest):
            requests.append(dataclasses.replace(req, prompt=prompt, shared_prefix=""))
        else:
            requests.append(req)
    return dataclasses.replace(item, prompt=prompt, requests=requests)


def used_shots(task, item) -> list[Sample]:
    """The shots the protocol kept for this item: its few-shot list, dropped the task's own way
    (last, or longest) down to the number the build kept."""
    shots = task.fewshot(item.sample)
    if len(getattr(item, "shot_ids", ())) == item.shots:  # the build names them (CMMLU drops the longest, not the last)
        by_id = {s.id: s for s in shots}
        return [by_id[i] for i in item.shot_ids]
    while len(shots) > item.shots:
        shots = task.drop_shot(shots)
    return list(shots)


def load_tokenizer(spec: str):
    """The tokenizer of `spec` (hub id, folder, .gguf file or alias) without loading weights, for
    `show-prompt --apply-chat-template`. Raises EvalError for a model that cannot be found."""
    from transformers import AutoTokenizer

    from .runner.load import resolve

    source = resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(source.path, **({"gguf_file": source.gguf_file} if source.gguf_file else {}))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"cannot load the tokenizer of {spec}: {first}") from None
