"""GSM8K as XVERSE ran it: OpenCompass gsm8k_gen_1d7fe4, November 2023 (commit 6e315201).

Prompt: the config's four fixed chain-of-thought exemplars (typos and double spaces kept), its role
items joined with "\\n" the way OpenCompass renders a base model's prompt, then
"Question: {question}\\nLet's think step by step\\nAnswer:" (no trailing newline). The whole prompt
is in prompts/gsm8k.jinja. Greedy decoding, at most 512 new tokens, new tokens only.

Answer extraction (variants; the default is what OpenCompass did in November 2023):
  default     gsm8k_postprocess of 2023-07..2023-12-24: the text before the first "\\n\\n", split on
              single spaces, the last word containing a digit, its digit characters only
              ("-5" -> "5", "3.75" -> "375", "$18." -> "18"); compared with the target as strings.
  oc-2023-12  the 2023-12-25 version: digits and "." kept, then strip(".") ("3.75" -> "3.75").
  oc-2024-02  the 2024-02-06 version: the text before "Question:", the last match of
              -?\\d+\\.\\d+|-?\\d+ ("NULL" if none); Gsm8kEvaluator's numeric equality. The regex
              knows no thousands separator, so "$8,000" yields "000" (numerically 0) and a correct
              "8,000" answer is scored wrong: faithful to that reference, kept on purpose.
  lm-eval-strict / lm-eval-flexible
              lm-eval gsm8k's two filters (regex "#### (\\-?[0-9\\.\\,]+)" first match; last match of
              "(-?[$0-9.,]{2,})|(-?[0-9]+)"), on the text before lm-eval's stop strings, normalised
              with its exact_match regexes_to_ignore (",", "$", ".*#### ", trailing ".").
Target: the text after "#### " with commas removed (gsm8k_dataset_postprocess).

Early stop. OpenCompass generated all 512 tokens. Stopping earlier is allowed only where the cut
cannot change the extraction: each variant's extractor first cuts its input at the variant's stop
strings ("\\n\\n" for the two digit-word extractors, "Question:" for 2024-02, lm-eval's `until`
for the lm-eval ones), so extract(full) == extract(full cut at the first stop string). Greedy decoding
makes the text before the stop identical with and without stopping. tests/test_tasks_oc.py checks the
identity on captured real generations and on random strings.
Protocol page: docs/benchmarks/gsm8k.md.
"""
from __future__ import annotations

import re

from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
import dataclasses

from xverse_eval.task import Fits, GenerationTask, Prepared, Variant, always_fits
from xverse_eval.types import Sample

LM_EVAL_UNTIL = ("Question:", "</s>", "<|im_end|>")


def cut(text: str, stops) -> str:
    """The text before the first occurrence of any of `stops` (what a stop at them leaves)."""
    idx = min((text.find(s) for s in stops if s in text), default=-1)
    return text if idx < 0 else text[:idx]


def _last_digit_word(text: str) -> str:
    for word in reversed(text.split(" ")):
        if any(ch.isdigit() for ch in word):
            return word
    return ""


def postprocess_2023(text: str) -> str:
    """OpenCompass gsm8k_postprocess, 2023-07 .. 2023-12-24 (in force at 6e315201)."""
    word = _last_digit_word(text.split("\n\n")[0])
    return "".join(ch for ch in word if ch.isdigit())


def postprocess_2023_12(text: str) -> str:
    """OpenCompass gsm8k_postprocess from 2023-12-25: "." kept, then stripped at both ends."""
    word = _last_digit_word(text.split("\n\n")[0])
    return "".join(ch for ch in word if ch.isdigit() or ch == ".").strip(".")


def postprocess_2024_02(text: str) -> str:
    """OpenCompass gsm8k_postprocess from 2024-02-06. Faithfully to it, a number written with
    thousands separators is split there: "The total is $8,000." -> "000"."""
    numbers = re.findall(r"\-?\d+\.\d+|\-?\d+", text.split("Question:")[0])
    return numbers[-1] if numbers else "NULL"


def _lm_eval_regex(text: str, pattern: str, group_select: int) -> str:
    """lm-eval RegexFilter + take_first."""
    found = re.findall(pattern, text)
    if not found:
        return "[invalid]"
    match = found[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m][0]
    return match.strip()


def _lm_eval_normalise(text: str) -> str:
    """lm-eval gsm8k exact_match: regexes_to_ignore, in order, then ignore_case."""
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text.lower()


def lm_eval_strict(text: str) -> str:
    """lm-eval gsm8k strict-match: the first "#### N", normalised."""
    return _lm_eval_normalise(_lm_eval_regex(cut(text, LM_EVAL_UNTIL), r"#### (\-?[0-9\.\,]+)", 0))


def lm_eval_flexible(text: str) -> str:
    """lm-eval gsm8k flexible-extract: the last number, normalised."""
    return _lm_eval_normalise(_lm_eval_regex(cut(text, LM_EVAL_UNTIL), r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1))


def numeric_equal(pred: str, target: str) -> bool:
    """Gsm8kEvaluator.is_equal (2024): string equality or |float(pred) - int(target)| < 1e-6."""
    try:
        return pred == target or abs(float(pred) - int(target)) < 1e-6
    except (ValueError, OverflowError):
        return False



# variant -> (extractor, stop strings that cannot change it, numeric comparison)
EXTRACTORS = {
    "default": (postprocess_2023, ("\n\n",), False),
    "oc-2023-12": (postprocess_2023_12, ("\n\n",), False),
    "oc-2024-02": (postprocess_2024_02, ("Question:",), True),
    "lm-eval-strict": (lm_eval_strict, LM_EVAL_UNTIL, False),
    "lm-eval-flexible": (lm_eval_flexible, LM_EVAL_UNTIL, False),
}


def extraction(name: str, doc: str) -> Variant:
    """The Variant of an answer extraction: generation stops at the strings that cannot change what
    its extractor finds; the extractor and the numeric comparison are its fields."""
    extract, stop, numeric = EXTRACTORS[name]
    return Variant(doc, stop=stop, fields={"extract": extract, "numeric": numeric})


@register_task
class GSM8K(GenerationTask):
    """GSM8K, OpenCompass 2023 prompt and post-processing; other extractions as variants (module docstring)."""
    name = "gsm8k"
    version = "1"
    shots = 4  # the four fixed exemplars written out in prompts/gsm8k.jinja
    split = "test"
    data_folder = "gsm8k"
    expected_count = 1319
    max_new_tokens = 512
    variants = {
        "default": extraction("default", "OpenCompass gsm8k_gen_1d7fe4 (2023-11): 4 fixed CoT shots, greedy 512 tokens, 2023 gsm8k_postprocess (digits only)"),
        "oc-2023-12": extraction("oc-2023-12", "same prompt; the 2023-12-25 gsm8k_postprocess (decimal point kept)"),
        "oc-2024-02": extraction("oc-2024-02", "same prompt; the 2024-02-06 gsm8k_postprocess (last signed number before 'Question:') with numeric equality; as that reference, splits numbers at thousands separators ('$8,000' -> '000')"),
        "lm-eval-strict": extraction("lm-eval-strict", "same prompt; lm-eval gsm8k strict-match ('#### N')"),
        "lm-eval-flexible": extraction("lm-eval-flexible", "same prompt; lm-eval gsm8k flexible-extract (last number)"),
    }
    source = "OpenCompass 6e315201 configs/datasets/gsm8k/gsm8k_gen_1d7fe4.py, opencompass/datasets/gsm8k.py"
    hub = ("openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866")

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The split's items from <split>.jsonl or the hub; the target is the number after '#### '."""
        if self.data.local:
            path = self.data.path(f"{split}.jsonl")
            rows = self.data.read_jsonl(path)
        else:
            path = f"hub {self.hub[0]}"
            rows = self.data.load_hub(self.hub[0], "main", split, self.hub[1])
        samples = []
        for i, row in enumerate(rows):
            question, answer = row.get("question"), row.get("answer")
            if not isinstance(question, str) or not isinstance(answer, str):
                raise EvalError(f"{path}: item {i + 1}: needs string fields 'question' and 'answer'")
            if "#### " not in answer:
                raise EvalError(f"{path}: item {i + 1}: the answer has no '#### ' final answer")
            target = answer.split("#### ")[1].replace(",", "")  # gsm8k_dataset_postprocess
            samples.append(Sample(id=f"{split}/{i}", index=i, subset="", question=question, target=target,
                                  meta={"answer": answer}))
        return samples

    def fewshot(self, sample: Sample) -> list[Sample]:
        """None: the four exemplars are fixed text in the template."""
        return []

    def build(self, sample: Sample, fits: Fits = always_fits) -> Prepared:
        """The generation request; the prompt holds the template's 4 fixed shots."""
        return dataclasses.replace(super().build(sample, fits), shots=self.shots)

    def extract(self, text: str) -> str:
        """The variant's answer extraction."""
        return self.setting("extract")(text)

    def is_correct(self, pred: str, target: str) -> bool:
        """String equality, or Gsm8kEvaluator's numeric equality (oc-2024-02)."""
        return numeric_equal(pred, target) if self.setting("numeric") else pred == target
