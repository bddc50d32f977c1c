"""The shape of a decoder-only model, read once from its config: `Shape.of(config)`.

Every size the project plans with -- parameters, weight bytes, KV-cache bytes per token, forward FLOPs
per token, whether a tensor-parallel degree splits the model evenly -- is arithmetic on these eight
numbers, so it lives here and nowhere else (memory planning, batch planning, the engine's KV pool, the
tensor-parallel check, the benchmarks' MFU).

Parameter layout (Llama; XVERSE is Llama under other names, runner/xverse.py): per layer q and o
(hidden x heads*head_dim), k and v (hidden x kv_heads*head_dim), gate, up, down (hidden x ffn), two
RMSNorm weights (hidden); plus the embedding (vocab x hidden), the final norm (hidden) and the LM head
(vocab x hidden) unless tied. No biases. Checked against the parameter count of a real module in
tests/test_architecture.py, and against XVERSE-65B: 66.4B parameters with MHA (its config), 57.0B with
GQA-8 (the `kv_heads=8` random variant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import EvalError

# config.json names of each field, first match wins (Llama/XVERSE/Qwen/Mistral; GPT-2 style as fallback)
_FIELDS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim"),
    "vocab": ("vocab_size",),
    "context": ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"),
}


def _read(config: Any, names: tuple[str, ...]):
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class Shape:
    """Widths of a decoder-only transformer. Counts are plain ints; bytes take the dtype's size in bytes
    (2 for bf16/fp16, 4 for fp32) so that this module needs no torch."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool = False  # LM head shares the embedding matrix
    context: int = 2048  # max_position_embeddings (2048 where the config names none)

    # -- construction

    @classmethod
    def of(cls, config: Any) -> "Shape":
        """The shape of a transformers config (a multimodal one through its text config) or of a
        config.json dict (XVERSE's included: the same field names). An absent `num_key_value_heads`
        means MHA, an absent `head_dim` hidden / heads, an absent FFN width 4 x hidden (GPT-2).
        Raises EvalError naming the missing field when the layers, widths or vocabulary are absent."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        values = {field: _read(config, names) for field, names in _FIELDS.items()}
        for field in ("layers", "hidden", "heads", "vocab"):
            if values[field] is None:
                raise EvalError(f"model config has no {_FIELDS[field][0]}: cannot plan memory or tensor parallel for it")
        heads = values["heads"]
        tied = config.get("tie_word_embeddings", False) if isinstance(config, Mapping) else getattr(config, "tie_word_embeddings", False)
        return cls(layers=values["layers"], hidden=values["hidden"], heads=heads, kv_heads=values["kv_heads"] or heads,
                   head_dim=values["head_dim"] or values["hidden"] // heads, ffn=values["ffn"] or 4 * values["hidden"],
                   vocab=values["vocab"], tied=bool(tied), context=values["context"] or 2048)

    # -- widths

    @property
    def q_width(self) -> int:
        """heads x head_dim: the width of the queries (and of the attention output)."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """kv_heads x head_dim: the width of one of K or V of one token in one layer."""
        return self.kv_heads * self.head_dim

    # -- parameters

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention, MLP, two norms."""
        h = self.hidden
        return 2 * h * self.q_width + 2 * h * self.kv_width + 3 * h * self.ffn + 2 * h

    @property
    def embedding_params(self) -> int:
        """The input embedding, plus the LM head when it is its own matrix."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """All parameters: layers, embedding (+ untied LM head), final norm."""
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    def flops_per_token(self, context_len: int) -> int:
        """FLOPs of a forward pass for one token that attends to `context_len` keys (itself and the
        positions before it: a token at position p of a causal sequence attends to p + 1).

        2 x the parameters that multiply (all but the input embedding: a lookup, not a matmul; the LM
        head counts, tied or not) + the attention term 4 x layers x context_len x heads x head_dim (QK^T
        and AV, a multiply-add each): the forward third of PaLM's 6N + 12 L H Q T training count
        (Chowdhery et al. 2022, "PaLM", Appendix B), which refines Kaplan et al. 2020 (Table 1,
        C_forward = 2N + 2 n_layer n_ctx d_attn, counting QK^T only). Norms, rotary and softmax are
        ignored (under 0.1 % at these widths). For a whole causal sequence of L tokens, pass the mean,
        (L + 1) / 2, and multiply by L."""
        matmul_params = self.params - self.vocab * self.hidden - self.hidden * (2 * self.layers + 1)
        if self.tied:
            matmul_params += self.vocab * self.hidden  # the tied head still multiplies
        return 2 * matmul_params + 4 * self.layers * context_len * self.q_width

    # -- bytes

    def weight_bytes(self, dtype_bytes: int) -> int:
        """Bytes of all weights at `dtype_bytes` per parameter."""
        return self.params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V of one token over all layers (the KV cache's cost per token)."""
        return 2 * self.layers * self.kv_width * dtype_bytes

    # -- tensor parallel

    def tp_ok(self, tp: int) -> bool:
        """Whether `tp` ranks split the heads, the KV heads and the MLP width evenly."""
        return tp >= 1 and self.heads % tp == 0 and self.kv_heads % tp == 0 and self.ffn % tp == 0

    def check_tp(self, tp: int) -> None:
        """Refuse (EvalError, one line) a --tp-size that does not split the model evenly."""
        if not self.tp_ok(tp):
            raise EvalError(f"--tp-size {tp} must divide the attention heads ({self.heads}), KV heads ({self.kv_heads}) "
                            f"and MLP width ({self.ffn}) of the model")

    def sharded_params(self) -> int:
        """Parameters tensor parallel splits (the layers' projections); the rest -- embedding, LM head,
        norms -- stays whole on every rank."""
        return self.layers * (self.layer_params - 2 * self.hidden)
