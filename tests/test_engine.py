"""The generation engine (runner/engine.py): continuous batching over KV slots, a shared prefix
prefilled once, incremental stop strings and EOS, and the exact text of the new tokens.

The slow tests compare the engine with a plain greedy loop written here (one prompt at a time, the
model's own forward and cache, argmax) on the real SmolLM2-135M in float32 on CPU, with real GSM8K and
HumanEval prompts. The fast tests build a SentencePiece-style (Llama) tokenizer with the `tokenizers`
library and a tiny Llama whose greedy continuation is wired into its weights."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from xverse_eval.runner.engine import Decoding, common_prefix, new_text
from xverse_eval.types import Generation, GenerateRequest

# ----------------------------------------------------------------------------- a Llama-style tokenizer

PIECES = ["▁▁▁▁", "return", "▁x", "▁z", "▁def", "▁f", "▁y", "▁=", "(x", "):", "▁"]


def llama_tokenizer():
    """Unigram + byte fallback with Llama's normalizer (Prepend("▁"), Replace(" ", "▁")) and decoder
    (Replace("▁", " ") + ByteFallback + Fuse + Strip(" ", 1, 0)); BOS added by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    vocab += [(p, -1.0) for p in PIECES]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def wired_llama(tokenizer, successor: dict[str, str]):
    """A tiny LlamaForCausalLM whose greedy next token after token a is successor[a]: attention and MLP
    outputs are zero (o_proj, down_proj), embeddings are one-hot, and the LM head row of b points at
    b's predecessors. Other tokens are followed by id 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    V = len(tokenizer)
    config = LlamaConfig(vocab_size=V, hidden_size=V + (-V) % 4, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, config.hidden_size))
        model.lm_head.weight.zero_()
        for a, b in successor.items():
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(b), tokenizer.convert_tokens_to_ids(a)] = 10.0
    return model


def feed(row: Decoding, tokens: list[int], tok) -> list[bool]:
    """Step `row` through `tokens` until it finishes; the finished flag of each step taken."""
    flags = []
    for t in tokens:
        flags.append(row.step(t, {2}, tok))
        if flags[-1]:
            break
    return flags


def test_new_text_keeps_the_space_a_sentencepiece_decoder_strips():
    tok = llama_tokenizer()
    prompt = tok("def f(x):\n").input_ids
    new = tok.convert_tokens_to_ids(["▁▁▁▁", "return", "▁x"])
    # the fault (issue 11 §3): decoding the new tokens alone drops the first of the 4 spaces
    assert tok.decode(new) == "   return x"
    assert new_text(tok, prompt[-3:], new) == "    return x"
    assert new_text(tok, tok("y =").input_ids, tok.convert_tokens_to_ids(["▁z"])) == " z"
    # incremental stop detection sees the same text: a stop string made of the first space and "r"
    row = Decoding(0, GenerateRequest("k", "def f(x):\n", 10, stop=(" r",)), prompt, set(tok.all_special_ids))
    assert feed(row, new, tok) == [False, True]
    assert row.result(tok) == Generation("   ", "stop", 2)
    # a multi-byte character split over byte-fallback tokens is held back until complete
    row = Decoding(0, GenerateRequest("k", "y =", 10, stop=("é",)), tok("y =").input_ids, set(tok.all_special_ids))
    assert feed(row, tok.convert_tokens_to_ids(["<0xC3>", "<0xA9>"]), tok) == [False, True]
    assert row.text == "é" and row.result(tok) == Generation("", "stop", 2)


@pytest.mark.parametrize("engine", ["slots", "plain"])
def test_engine_stores_exactly_the_text_after_the_prompt(engine):
    """End to end with the Llama tokenizer: "    return x" keeps its 4 spaces, " z" its space."""
    from xverse_eval.runner.hf import HFModel

    tok = llama_tokenizer()
    successor = {"<0x0A>": "▁▁▁▁", "▁▁▁▁": "return", "return": "▁x", "▁x": "</s>", "▁=": "▁z", "▁z": "</s>"}
    hf = HFModel(tok, wired_llama(tok, successor), "wired", {}, "cpu", batch_size=2)
    hf.engine.use_slots = engine == "slots"
    requests = [GenerateRequest("a", "def f(x):\n", 8), GenerateRequest("b", "y =", 8), GenerateRequest("c", "def f(x):\n", 2)]
    assert hf.generate(requests) == [Generation("    return x", "eos", 3), Generation(" z", "eos", 1), Generation("    return", "length", 2)]


@pytest.mark.parametrize("engine", ["slots", "plain"])
def test_generation_progress_counts_tokens(engine, monkeypatch, capsys):
    """The generation bar counts tokens, and its total drops to what was really generated as rows end
    early: 18 announced (8 + 8 + 2 max_new_tokens), 8 taken (3 + EOS, 1 + EOS, 2)."""
    from xverse_eval.runner.hf import HFModel

    monkeypatch.setenv("XVERSE_EVAL_PROGRESS_EVERY", "0")  # the closing line only
    tok = llama_tokenizer()
    successor = {"<0x0A>": "▁▁▁▁", "▁▁▁▁": "return", "return": "▁x", "▁x": "</s>", "▁=": "▁z", "▁z": "</s>"}
    hf = HFModel(tok, wired_llama(tok, successor), "wired", {}, "cpu", batch_size=2)
    hf.engine.use_slots = engine == "slots"
    hf.generate([GenerateRequest("a", "def f(x):\n", 8), GenerateRequest("b", "y =", 8), GenerateRequest("c", "def f(x):\n", 2)])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("generate: 8/8 tok (100%)")
    assert hf.counters().generated_tokens == 3 + 1 + 2 and hf.counters().requests == 3


def test_generation_eta_is_of_the_tokens_left():
    """Mid-run: 13 of 16 requests done is not 13/16 of the work; the ETA follows the tokens left."""
    from xverse_eval.progress import LineProgress
    from xverse_eval.runner.engine import TokenMeter

    requests = [GenerateRequest(f"r{i}", "p", 512) for i in range(16)]
    meter = TokenMeter(requests, enabled=False)
    now = [0.0]
    lines = []
    meter.bar = LineProgress(meter.total, "generate", "tok", interval=0, clock=lambda: now[0], emit=lines.append)
    for r in requests[:13]:  # 13 short answers of 4 tokens (3 + EOS) in the first 13 s
        d = Decoding(0, r, [5], set())
        d.steps = 4
        meter.stepped(4)
        meter.finished(d)
    meter.stepped(3 * 100)  # the 3 long ones are 100 tokens in, 412 to go each
    now[0] = 88.0
    assert meter.total == 13 * 4 + 3 * 512
    assert meter.bar.line() == "generate: 352/1588 tok (22%), 4.0 tok/s, 1m28s elapsed, ETA 5m09s"


# ----------------------------------------------------------------------------- the real model


def test_common_prefix_leaves_every_row_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == [1, 2, 3]
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == [1, 2]
    assert common_prefix([[7, 1], [8, 1]]) == []


@torch.inference_mode()
def greedy_reference(hf, prompt: str, max_new: int) -> list[int]:
    """The plainest greedy loop: one prompt, the model's own forward and cache, argmax, until EOS."""
    ids = hf.tokens.encode(prompt)
    out = hf.model(input_ids=torch.tensor([ids]), use_cache=True)
    new = []
    while len(new) < max_new:
        token = int(out.logits[0, -1].argmax())
        if token in hf.eos_ids:
            break
        new.append(token)
        cache = getattr(out, "cache", None) or out.past_key_values
        out = hf.model(input_ids=torch.tensor([[token]]), use_cache=True, **{hf.loaded.cache_arg: cache})
    return new


def expected(hf, request: GenerateRequest, new: list[int]) -> Generation:
    """What the engine must return for the reference tokens: text = decode(prompt + new) minus
    decode(prompt), cut before the first stop string; n_tokens up to where a stop string is complete."""
    prompt = hf.tokens.encode(request.prompt)
    text = lambda toks: hf.tokenizer.decode(prompt + toks, skip_special_tokens=True)[len(hf.tokenizer.decode(prompt, skip_special_tokens=True)):]
    for m in range(1, len(new) + 1):
        t = text(new[:m])
        if any(s in t for s in request.stop):
            return Generation(t[: min(t.find(s) for s in request.stop if s in t)], "stop", m)
    reason = "length" if len(new) == request.max_new_tokens else "eos"
    return Generation(text(new), reason, len(new))


def real_requests(data_dir) -> list[GenerateRequest]:
    """2 GSM8K + 2 HumanEval prompts with their tasks' stops, a few budgets, each task's shared prefix."""
    from xverse_eval.registry import get_task_class

    out = []
    for name, budgets in (("gsm8k", (24, 40)), ("humaneval", (32, 48))):
        task = get_task_class(name)(data_dir=data_dir)
        reqs = [task.build(task.sample_at("", i)).requests[0] for i in range(2)]
        shared = os.path.commonprefix([r.prompt for r in reqs])
        out += [dataclasses.replace(r, max_new_tokens=n, shared_prefix=shared) for r, n in zip(reqs, budgets)]
    return out


def test_prompts_are_grouped_by_the_prefix_they_share_on_token_ids(smollm2, data_dir):
    """The engine's groups are the scorer's prefix tree over the prompts: GSM8K's two prompts share
    the 4-shot block (prefilled once), HumanEval's share a header too short to pay; runner.work
    counts what the engine then prefills."""
    from xverse_eval.runner import work
    from xverse_eval.runner.engine import prefix_groups

    requests = real_requests(data_dir)
    prompts = [smollm2.tokens.encode(r.prompt) for r in requests]
    groups = prefix_groups(prompts)
    block = smollm2.tokens.encode(requests[0].shared_prefix)
    assert [members for _, members in groups] == [[0, 1], [2, 3]]
    assert groups[0][0] == common_prefix(prompts[:2]) and len(groups[0][0]) >= len(block) - 1 and groups[1][0] == []
    assert prefix_groups(prompts, shared=False) == [([], [0, 1, 2, 3])]
    w = work(requests, smollm2.tokens)
    assert (w.distinct_tokens, w.computed_tokens) == (sum(map(len, prompts)), sum(map(len, prompts)) - len(groups[0][0]))
    assert w.generated_tokens == sum(r.max_new_tokens for r in requests)


@pytest.fixture(scope="module")
def reference(smollm2, data_dir):
    requests = real_requests(data_dir)
    return requests, [greedy_reference(smollm2, r.prompt, r.max_new_tokens) for r in requests]


def run_engine(hf, requests, slots=None, plain=False):
    engine = hf.engine
    saved = engine.slots, engine.use_slots
    try:
        engine.slots, engine.use_slots = slots, engine.use_slots and not plain
        stored = []
        out = hf.generate(requests, on_done=stored.extend)
        assert sorted(r.key for r, _ in stored) == sorted(r.key for r in requests)  # every result stored once
        return out
    finally:
        engine.slots, engine.use_slots = saved


@pytest.mark.slow
def test_engine_equals_a_plain_greedy_loop_on_real_prompts(smollm2, reference):
    """GSM8K and HumanEval prompts, 4 requests in 3 slots (a slot is refilled), the shared 4-shot block
    and header prefilled once: the texts, finish reasons and token counts of the reference loop."""
    assert smollm2.engine.use_slots  # SmolLM2 is a Llama: the slot engine runs
    requests, news = reference
    want = [expected(smollm2, r, new) for r, new in zip(requests, news)]
    assert run_engine(smollm2, requests, slots=3) == want
    assert any(w.finish_reason == "length" for w in want)  # stops: see the next test
    # slot-count invariance: one slot at a time (decode width 1); the static-batch loop (short prompts)
    assert run_engine(smollm2, requests, slots=1) == want
    assert run_engine(smollm2, requests[2:], plain=True) == want[2:]


@pytest.mark.slow
def test_stop_strings_across_token_boundaries_and_eos(smollm2, reference):
    """A stop string made of the last characters of one token and the first of the next; and an EOS
    token in the middle of a generation while another row goes on (a token the model really emits
    there is made a stop token for the test, through stop_at_tokens)."""
    requests, news = reference
    tok = smollm2.tokenizer
    req, new = requests[0], news[0]
    # a boundary between two tokens of at least 2 characters each, inside the reference text
    texts = [tok.decode([t]) for t in new]
    k = next(k for k in range(4, len(new) - 1) if len(texts[k].strip()) >= 2 and len(texts[k + 1].strip()) >= 2)
    whole = expected(smollm2, dataclasses.replace(req, stop=()), new).text
    cut = len(expected(smollm2, dataclasses.replace(req, stop=()), new[: k + 1]).text)
    stop = whole[cut - 2 : cut + 2]
    spanning = dataclasses.replace(req, key="span", stop=(stop,))
    # EOS: the first token of HumanEval/0's reference that first occurs at index >= 3
    code = news[2]
    eos = next(t for j, t in enumerate(code) if j >= 3 and code.index(t) == j)
    until_eos = lambda toks: toks[: toks.index(eos)] if eos in toks else toks
    want = [expected(smollm2, spanning, until_eos(new)), expected(smollm2, requests[2], until_eos(code))]
    assert want[0].finish_reason == "stop" and want[0].n_tokens <= k + 2
    assert want[1].finish_reason == "eos" and want[1].n_tokens == code.index(eos)
    saved = smollm2.stop_ids
    smollm2.stop_at_tokens({eos})  # the contract's way in: a chat template's end-of-turn ids come the same way
    try:
        assert run_engine(smollm2, [spanning, requests[2]], slots=2) == want
    finally:
        smollm2.stop_ids = saved
