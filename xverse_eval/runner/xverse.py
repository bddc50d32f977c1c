"""XVERSE without remote code: its config.json as a Llama config, and random-weight models of its
architecture for tests and benchmarks.

XVERSE checkpoints (`model_type: xverse`, `XverseForCausalLM` in their remote code) are the Llama
architecture -- RMSNorm, rotary positions, SwiGLU MLP, no biases, untied LM head -- under other class
names: `xverse_llama_config` maps their config.json onto `LlamaConfig` field for field (rope theta,
max_position_embeddings = 16,384 for XVERSE-65B, MHA or GQA as `num_key_value_heads` says, absent
meaning MHA), dropping only what names the remote code.

`random:ARCH[:layers=N][:kv_heads=K][:seed=S][:tokenizer=DIR]` builds ARCH with random bf16/fp32
weights directly where it will run: on the meta device first, then each tensor-parallel rank allocates
only its shards and fills them from a per-tensor seeded generator (the full tensor is drawn, then
sliced, so every --tp-size gets the same weights from the same seed and device type). The tokenizer
comes from `tokenizer=DIR` or $XVERSE_EVAL_RANDOM_TOKENIZER (any transformers tokenizer folder; the
GPU benchmarks use SmolLM2's); its ids all fall inside the model's vocabulary.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import torch

from ..errors import EvalError
from .load import xverse_llama_config  # noqa: F401 -- the one mapping lives where loading reads it

# XVERSE-65B as described by its model card and config (hidden 8192, 80 layers, 64 heads, FFN 22016,
# vocabulary 100,534, 16K context). kv_heads defaults to 64 (MHA, 66.4B parameters, the size the
# "65B" name matches); `kv_heads=8` gives the GQA variant (57.0B). rope_theta is not used by a random
# model's results in any way that matters; 500000 is an assumption, not read from the checkpoint.
ARCHITECTURES = {
    "xverse-65b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64,
                       intermediate_size=22016, vocab_size=100534, max_position_embeddings=16384,
                       rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu"),
    # the same shape language at toy widths: CPU tests of the tensor-parallel and sharding paths
    "xverse-tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                        intermediate_size=688, vocab_size=49152, max_position_embeddings=4096,
                        rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu"),
}
OPTIONS = {"layers": "num_hidden_layers", "kv_heads": "num_key_value_heads", "heads": "num_attention_heads",
           "hidden": "hidden_size", "ffn": "intermediate_size", "context": "max_position_embeddings"}
INIT_STD = 0.02  # normal(0, 0.02), the initializer_range of XVERSE's and Llama's configs

# ----------------------------------------------------------------------------- random:ARCH specs


def parse_spec(spec: str) -> tuple[str, dict, int, str | None]:
    """`random:xverse-65b:layers=16:kv_heads=8:seed=0:tokenizer=DIR` -> (arch, config overrides, seed, tokenizer)."""
    parts = spec.split(":")
    if len(parts) < 2 or parts[1] not in ARCHITECTURES:
        raise EvalError(f"--model {spec!r}: random models are random:ARCH[:layers=N][:kv_heads=K][:seed=S][:tokenizer=DIR], ARCH one of {', '.join(ARCHITECTURES)}")
    overrides, seed, tokenizer = {}, 0, os.environ.get("XVERSE_EVAL_RANDOM_TOKENIZER")
    for part in parts[2:]:
        key, eq, value = part.partition("=")
        if not eq:
            raise EvalError(f"--model {spec!r}: {part!r} is not KEY=VALUE")
        if key == "tokenizer":
            tokenizer = value
        elif key == "seed" or key in OPTIONS:
            try:
                number = int(value)
            except ValueError:
                raise EvalError(f"--model {spec!r}: {key} must be an integer, got {value!r}") from None
            if key == "seed":
                seed = number
            else:
                overrides[OPTIONS[key]] = number
        else:
            raise EvalError(f"--model {spec!r}: unknown option {key!r} (known: {', '.join([*OPTIONS, 'seed', 'tokenizer'])})")
    return parts[1], overrides, seed, tokenizer


def random_config(spec: str):
    """The LlamaConfig of a random:ARCH spec (what memory planning reads before anything is built)."""
    from transformers import LlamaConfig

    arch, overrides, _, _ = parse_spec(spec)
    fields = {**ARCHITECTURES[arch], **overrides}
    if fields["num_attention_heads"] % fields["num_key_value_heads"]:
        raise EvalError(f"--model {spec!r}: {fields['num_key_value_heads']} KV heads do not divide {fields['num_attention_heads']} heads")
    return LlamaConfig(**fields, architectures=["LlamaForCausalLM"])


def _seed_of(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def build_random(config, dtype: torch.dtype, device: str, seed: int = 0, dist=None) -> torch.nn.Module:
    """Random weights of `config`'s Llama model on `device`, sharded for `dist`'s TP group (if any).

    The module tree is made on the meta device (no memory), sharded (runner/tp.py: tensor_parallel slices
    shapes only), then allocated on `device`: each rank holds only its shards. Each tensor is drawn
    whole from a generator seeded by (seed, tensor name) on `device`, then sliced to this rank's
    shard, so weights do not depend on --tp-size. Norm weights are ones, as trained Llama-family
    models start. Peak extra memory: one full tensor (the embedding, 1.6 GB at 65B widths in bf16)."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from .tp import shard_weight, tensor_parallel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    tp_rank, tp_size = (dist.tp_rank, dist.tp_size) if dist is not None else (0, 1)
    if tp_size > 1:
        tensor_parallel(model, dist)
    model.to_empty(device=device)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
            continue
        full_shape = _full_shape(name, tuple(param.shape), tp_size)
        generator = torch.Generator(device=device).manual_seed(_seed_of(seed, name))
        full = torch.empty(full_shape, dtype=dtype, device=device).normal_(0.0, INIT_STD, generator=generator)
        param.copy_(shard_weight(full, name, tp_rank, tp_size))
        del full
    # buffers made on meta (rotary inverse frequencies) are garbage after to_empty: compute them again
    with torch.device("cpu"):  # float32 inverse frequencies, as a normal load computes them
        model.model.rotary_emb = LlamaRotaryEmbedding(config=config).to(device)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _full_shape(name: str, local: tuple[int, ...], tp_size: int) -> tuple[int, ...]:
    from .tp import COLWISE, ROWWISE

    leaf = name.split(".")[-2]
    if tp_size > 1 and leaf in COLWISE:
        return (local[0] * tp_size, *local[1:])
    if tp_size > 1 and leaf in ROWWISE and name.endswith("weight"):
        return (local[0], local[1] * tp_size)
    return local


def load_random(spec: str, device: str | None = None, dtype: str = "auto", batch_size="auto", revision=None,
                prefix_cache: bool = True, dist=None, **_ignored):
    """An HFModel for a `random:` spec (see the module docstring). Raises EvalError for a bad spec,
    a missing tokenizer, or weights that do not fit in memory (runner/memory.py)."""
    from transformers import AutoTokenizer

    from . import memory
    from .hf import HFModel
    from .load import default_device, pick_dtype

    arch, overrides, seed, tokenizer_dir = parse_spec(spec)
    config = random_config(spec)
    if not tokenizer_dir:
        raise EvalError(f"--model {spec!r} needs a tokenizer: add :tokenizer=DIR or set XVERSE_EVAL_RANDOM_TOKENIZER")
    if not Path(tokenizer_dir).is_dir():
        raise EvalError(f"--model {spec!r}: tokenizer folder does not exist: {tokenizer_dir}")
    device = (dist.device if dist is not None and dist.device else None) or device or default_device()
    torch_dtype = pick_dtype(dtype, device)
    tp_size = dist.tp_size if dist is not None else 1
    if tp_size > 1:
        from .tp import tp_check

        tp_check(config, tp_size)
    memory.check(config, torch_dtype, device, tp_size, name=spec, world_size=dist.world_size if dist is not None else 1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tokenizer) > config.vocab_size:
        raise EvalError(f"--model {spec!r}: the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of {config.vocab_size}")
    model = build_random(config, torch_dtype, device, seed, dist)
    fingerprint = {
        "model": spec,
        "path": None,
        "random": {"architecture": arch, "seed": seed, "overrides": overrides,
                   "init": f"normal(0, {INIT_STD}) per tensor, torch.Generator({torch.device(device).type}) seeded by (seed, name)",
                   "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                               "num_key_value_heads", "intermediate_size", "vocab_size",
                                                               "max_position_embeddings")}},
        "tokenizer": str(Path(tokenizer_dir).resolve().name),
        "revision": None,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "backend": "transformers-random",
    }
    return HFModel(tokenizer, model, spec, fingerprint, device, batch_size, None, prefix_cache)


def read_config(path: str | Path) -> dict:
    return json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
