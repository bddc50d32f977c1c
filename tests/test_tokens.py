"""Special tokens that a tokenizer adds on its own never reach the scored or generated sequence
(issue 11 §2): BOS once where the model expects it, no trailing EOS, no second BOS after a chat
template's own, and a continuation holding a special token refused with one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from _tiny_llama import make_checkpoint, train_tokenizer
from xverse_eval.errors import EvalError
from xverse_eval.evaluate import TaskSpec, build, make_task
from xverse_eval.runner import load_model
from xverse_eval.runner.tokens import Tokens
from xverse_eval.types import GenerateRequest


@pytest.fixture(scope="module")
def checkpoints(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny Llama checkpoint twice: its tokenizer as trained (post-processor `<s> $A`), and
    with a tokenizer.json whose post-processor appends EOS (`<s> $A </s>`)."""
    root = tmp_path_factory.mktemp("tokens")
    tokenizer = train_tokenizer(data_dir)
    return (make_checkpoint(root / "plain", data_dir, tokenizer=tokenizer),
            make_checkpoint(root / "eos", data_dir, eos=True, tokenizer=tokenizer))


def test_bos_once_and_no_trailing_eos(checkpoints):
    from transformers import AutoTokenizer

    plain, eos = (AutoTokenizer.from_pretrained(p) for p in checkpoints)
    text = "Answer: A"
    own = plain(text, add_special_tokens=False).input_ids
    # what the tokenizers do on their own: BOS first, and the modified one also appends EOS
    assert plain(text).input_ids == [0, *own] and eos(text).input_ids == [0, *own, 1]
    for tok in (plain, eos):
        tokens = Tokens(tok)
        assert tokens.prefix == [0]
        assert tokens.encode(text) == [0, *own]
        assert tokens.count(text) == len(own) + 1
        # a text that starts with the BOS token's text (a chat template renders one) gets no second
        assert tokens.encode("<s>" + text) == [0, *own]
        context, continuation = tokens.encode_pair("Answer:", " A")
        assert context == [0, *own[:-1]] and continuation == own[-1:]


def test_no_bos_for_a_tokenizer_that_adds_none(data_dir):
    """GPT-2-style byte-level BPE (SmolLM2, Qwen) adds no BOS: the encoding stays the text's own."""
    from tokenizers import processors

    tok = train_tokenizer(data_dir)
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokens = Tokens(tok)
    assert tokens.prefix == []
    assert tokens.encode("Answer: A") == tok("Answer: A", add_special_tokens=False).input_ids == tok("Answer: A").input_ids


def test_special_token_in_a_continuation_is_refused(checkpoints):
    from transformers import AutoTokenizer

    tokens = Tokens(AutoTokenizer.from_pretrained(checkpoints[0]))
    with pytest.raises(EvalError) as err:
        tokens.encode_pair("Answer:", " A</s>", key="mmlu/anatomy/0/A")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("request mmlu/anatomy/0/A: the continuation ' A</s>' holds the special token '</s>'")
    with pytest.raises(EvalError, match="holds the special token '<s>'"):
        tokens.encode_pair("Answer:", "<s> A", key="k")


def test_appended_eos_changes_no_score_and_no_prompt(checkpoints, data_dir):
    """The issue's case: the same checkpoint with an EOS-appending tokenizer.json. Letter scoring
    (MMLU anatomy, 3 items, 12 requests) and greedy generation give exactly what the unmodified
    tokenizer gives; before the fix every letter scored log P(EOS | prompt + " A")."""
    plain, eos = (load_model(str(p), device="cpu", dtype="float32") for p in checkpoints)
    task = make_task(TaskSpec("mmlu", ["anatomy"]), data_dir)
    samples = task.samples(limit=3)
    items = {m: build(task, samples, m) for m in (plain, eos)}  # runs the one-token letter check too
    requests = [r for item in items[plain] for r in item.requests]
    assert requests == [r for item in items[eos] for r in item.requests]
    a, b = plain.loglikelihood(requests), eos.loglikelihood(requests)
    assert [x.logprob for x in a] == [x.logprob for x in b]
    assert [(x.n_tokens, x.is_greedy) for x in a] == [(x.n_tokens, x.is_greedy) for x in b] and all(x.n_tokens == 1 for x in a)
    # the generation prompt: the same ids, none of them EOS; the same greedy text
    prompt = items[plain][0].prompt
    assert plain.tokens.encode(prompt) == eos.tokens.encode(prompt) and 1 not in eos.tokens.encode(prompt)
    assert eos.tokenizer(prompt).input_ids[-1] == 1  # what the tokenizer alone would have fed the model
    request = GenerateRequest("g/0", prompt, max_new_tokens=8, stop=())
    assert plain.generate([request]) == eos.generate([request])
