"""A small Chinese-heavy byte-level BPE tokenizer, trained in a second from C-Eval and CMMLU text, to
check letter tokens on a vocabulary unlike SmolLM2's (CJK merges, no space-prefixed letter bias)."""
from __future__ import annotations

import glob
import os


def build_zh_tokenizer(data_dir: str, vocab_size: int = 4000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for pattern in ("ceval/dev/*.csv", "ceval/val/*.csv", "cmmlu/data/dev/*.csv"):
        for path in sorted(glob.glob(os.path.join(data_dir, pattern))):
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # real vocabularies (Qwen's, XVERSE's) hold the space-prefixed capital letters too
    letters = "\n".join(f"Answer: {x}\n答案是 {x}\n答案：{x}" for x in "ABCDE" for _ in range(20))
    tok.train_from_iterator(texts + [letters], trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
