"""A tiny Llama checkpoint folder made in a second: random weights (save_pretrained) and a small
byte-level BPE tokenizer trained on MMLU anatomy text, whose post-processor adds BOS as Llama's does
(`<s> $A`), or, with `eos=True`, also appends EOS (`<s> $A </s>`, as `add_eos_token=True` tokenizers
do). Used by tests/test_loading.py and tests/test_tokens.py."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False)


def train_tokenizer(data_dir: str, vocab_size: int = 1500):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    texts = []
    for path in sorted(glob.glob(os.path.join(data_dir, "mmlu", "data", "*", "anatomy_*.csv"))):
        texts.append(Path(path).read_text(encoding="utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    letters = "\n".join(f"Answer: {x}" for x in "ABCD" for _ in range(20))  # " A".." D" as one token each
    tok.train_from_iterator(texts + [letters], trainer=trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def save_weights(folder: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, **DIMS))
    model.save_pretrained(folder)


def append_eos(folder: Path) -> None:
    """Rewrite the folder's tokenizer.json so its post-processor appends EOS after every text."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
    }
    path.write_text(json.dumps(data))


def make_checkpoint(folder: Path, data_dir: str, seed: int = 0, eos: bool = False, tokenizer=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or train_tokenizer(data_dir)
    tokenizer.save_pretrained(folder)
    if eos:
        append_eos(folder)
    save_weights(folder, len(tokenizer), seed)
    return folder
