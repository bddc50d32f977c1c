"""The transformers runner: shared-prefix reuse equals the plain path, XVERSE checkpoints load as
Llama without remote code, and the package works when installed from a wheel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xverse_eval.evaluate import TaskSpec, build, make_task
from xverse_eval.runner import load_model
from xverse_eval.types import LoglikelihoodRequest

ROOT = Path(__file__).resolve().parent.parent


def test_prefix_reuse_equals_the_plain_path(smollm2, data_dir):
    task = make_task(TaskSpec("mmlu", ["anatomy", "virology"]), data_dir)
    items = build(task, task.samples(limit=3), smollm2)
    letters = [r for i in items for r in i.requests]
    # whole-sequence requests read every position, including those inside the shared prefix
    whole = [LoglikelihoodRequest(f"w{n}", r.context, r.continuation, shared_prefix=r.shared_prefix, whole_sequence=True) for n, r in enumerate(letters[:8])]
    assert all(r.shared_prefix and len(r.shared_prefix) > 1000 for r in letters)
    try:
        smollm2.prefix_cache = True
        cached = smollm2.loglikelihood(letters + whole)
    finally:
        smollm2.prefix_cache = False
    plain = smollm2.loglikelihood(letters + whole)
    for a, b in zip(cached, plain):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert (a.n_tokens, a.n_context_tokens, a.is_greedy) == (b.n_tokens, b.n_context_tokens, b.is_greedy)
        if a.context_logprob is not None:
            assert a.context_logprob == pytest.approx(b.context_logprob, rel=1e-5)


def test_xverse_checkpoint_loads_as_llama(smollm2, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256, rms_norm_eps=1e-6, vocab_size=len(smollm2.tokenizer))
    torch.manual_seed(0)
    reference = LlamaForCausalLM(LlamaConfig(**dims)).eval()
    reference.save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    # what an XVERSE checkpoint's config.json looks like: its own model_type and remote-code classes
    config = {**dims, "model_type": "xverse", "architectures": ["XverseForCausalLM"], "hidden_act": "silu",
              "auto_map": {"AutoConfig": "configuration_xverse.XverseConfig", "AutoModelForCausalLM": "modeling_xverse.XverseForCausalLM"},
              "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_model(str(tmp_path), device="cpu")
    assert type(model.model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([smollm2.tokenizer("Answer: A").input_ids])
    with torch.no_grad():
        assert torch.allclose(model.model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)


@pytest.mark.skipif(os.environ.get("XVERSE_SKIP_WHEEL") == "1", reason="XVERSE_SKIP_WHEEL=1")
def test_installed_wheel_finds_every_task_and_prompt(tmp_path):
    """`pip install .` (not only -e) must carry tasks/, prompts/ and results/ inside the package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("xverse_eval-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = ("import xverse_eval, xverse_eval.paths as p; from xverse_eval.registry import task_names; "
            "print(xverse_eval.__file__); print(p.tasks_dir()); print(','.join(task_names())); "
            "from xverse_eval.report import reported; print(len(reported()['rows']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1] == str(target / "xverse_eval" / "_tasks")
    assert set(out[2].split(",")) == {p.stem for p in (ROOT / "tasks").glob("*.py") if not p.stem.startswith("_")}
    assert out[3] == "11"


def test_greedy_decoding_equals_transformers_generate(smollm2):
    """Our decode loop (rows leave the batch when done) gives the tokens HF generate gives greedily."""
    from xverse_eval.types import GenerateRequest

    prompts = ["def fib(n):\n", "Question: What is 2 + 3?\nAnswer:", "The capital of France is"]
    requests = [GenerateRequest(f"g{i}", p, max_new_tokens=n) for i, (p, n) in enumerate(zip(prompts, (24, 7, 16)))]
    saved = smollm2.batch_size
    try:
        smollm2.batch_size = 3
        ours = smollm2.generate(requests)
    finally:
        smollm2.batch_size = saved
    tok = smollm2.tokenizer
    for req, gen in zip(requests, ours):
        ids = torch.tensor([tok(req.prompt).input_ids])
        with torch.no_grad():
            out = smollm2.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=req.max_new_tokens,
                                         do_sample=False, pad_token_id=smollm2.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        if smollm2.tokenizer.eos_token_id in new:
            new = new[: new.index(smollm2.tokenizer.eos_token_id)]
        assert gen.text == tok.decode(new, skip_special_tokens=True) and gen.n_tokens == len(new)
    stopped = smollm2.generate([GenerateRequest("s", prompts[0], max_new_tokens=48, stop=("\n",))])[0]
    assert stopped.finish_reason in ("stop", "eos") and "\n" not in stopped.text
