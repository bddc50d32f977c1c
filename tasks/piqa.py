"""PIQA as XVERSE ran it: OpenCompass piqa_ppl_1cf9f0, November 2023 (commit 6e315201).

Validation split (valid.jsonl + valid-labels.lst, 1,838; test labels are hidden), 0-shot. The
config is a plain-string template, used verbatim: for each solution it scores
"The following makes sense: \\nQ: {goal}\\nA: {sol}\\n" (space after the colon, trailing newline) by
its mean token log-likelihood over the whole string (BOS in the denominator); highest mean wins.
Variants:
  lm-eval       lm-eval piqa: "Question: {goal}\\nAnswer:" + " {sol}", sum of the continuation's
                log-likelihood (acc); acc_norm (divided by len(sol) in characters) reported too.
  lm-eval-norm  the same requests, acc_norm as the headline metric.
  0cfff2        OpenCompass piqa_ppl_0cfff2 (base_medium_llama collection): "{goal} {sol}" after
                piqaDataset_V3's case fixes, whole-sequence PPL.
Average: accuracy, micro over items. Protocol page: docs/benchmarks/piqa.md.
"""
from __future__ import annotations

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask, Variant
from xverse_eval.types import Sample


def v3_case(goal: str, sol1: str, sol2: str) -> tuple[str, str, str]:
    """piqaDataset_V3 preprocessing: goal capitalised; sols capitalised after a goal ending in ? or .,
    else lower-cased (first character only)."""
    goal = goal[:1].upper() + goal[1:]
    fix = str.upper if goal.endswith("?") or goal.endswith(".") else str.lower
    return goal, fix(sol1[:1]) + sol1[1:], fix(sol2[:1]) + sol2[1:]


@register_task
class PIQA(MultipleChoiceTask):
    """PIQA, OpenCompass 2023 prompt and whole-sequence PPL; lm-eval's as variants (module docstring)."""
    name = "piqa"
    version = "1"
    shots = 0
    split = "validation"
    data_folder = "piqa"
    expected_count = 1838
    formulation = "whole_sequence_ppl"
    metric = "acc"
    variants = {
        "default": Variant("OpenCompass piqa_ppl_1cf9f0 (2023-11): 'The following makes sense: \\nQ: {goal}\\nA: {sol}\\n', whole-sequence PPL"),
        "lm-eval": Variant("lm-eval piqa: 'Question: {goal}\\nAnswer:' + ' {sol}', continuation log-likelihood (acc; acc_norm also reported)",
                           formulation="continuation", fields={"prompt": "lm-eval"}),
        "lm-eval-norm": Variant("lm-eval piqa, acc_norm (log-likelihood / characters of the solution) as the headline metric",
                                formulation="continuation", metric="acc_norm", fields={"prompt": "lm-eval"}),
        "0cfff2": Variant("OpenCompass piqa_ppl_0cfff2: '{goal} {sol}' with piqaDataset_V3 case fixes, whole-sequence PPL",
                          fields={"prompt": "0cfff2"}),
    }
    source = "OpenCompass 6e315201 configs/datasets/piqa/piqa_ppl_1cf9f0.py, opencompass/datasets/piqa.py"
    hub = ("ybisk/piqa", "refs/convert/parquet")

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The validation split: valid.jsonl with valid-labels.lst, or the hub."""
        if split != "validation":
            raise EvalError(f"piqa: only the validation split has labels (asked for {split!r})")
        if self.data.local:
            path = self.data.path("valid.jsonl")
            rows = self.data.read_jsonl(path)
            label_path = self.data.path("valid-labels.lst")
            labels = [line.strip() for line in self.data.read_text(label_path).splitlines() if line.strip()]
            if len(labels) != len(rows):
                raise EvalError(f"{label_path}: {len(labels)} labels for {len(rows)} items in {path.name}")
        else:
            path = f"hub {self.hub[0]}"
            rows = self.data.load_hub(self.hub[0], None, "validation", self.hub[1])
            labels = [str(r.get("label")) for r in rows]
        samples = []
        for i, (row, label) in enumerate(zip(rows, labels)):
            if not all(isinstance(row.get(k), str) for k in ("goal", "sol1", "sol2")):
                raise EvalError(f"{path}: item {i + 1}: needs string fields goal, sol1, sol2")
            if label not in ("0", "1"):
                raise EvalError(f"{path}: item {i + 1}: label {label!r} is not 0 or 1")
            samples.append(Sample(id=f"validation/{i}", index=i, subset="", question=row["goal"], choices=(row["sol1"], row["sol2"]),
                                  target=int(label), meta={"v3": v3_case(row["goal"], row["sol1"], row["sol2"])}))
        return samples

    def aggregate(self, records, limit=None):
        """acc (and acc_norm where scored), micro over items, each with its stderr."""
        values = {}
        for key in ("acc", "acc_norm"):
            vals = [r.scores[key] for r in records if key in r.scores]
            if vals:
                values[key] = metrics.mean(vals)
                values[f"{key}_stderr"] = metrics.stderr(vals)
        return self.result(values, {}, records, limit, metric=self.metric)
