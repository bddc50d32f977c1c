"""MMLU, as hendrycks/test evaluates it (XVERSE: "the evaluation tool the MMLU authors provide").

5 shots: the first five dev rows of the subject, file order. Prompt: evaluate.py's gen_prompt +
format_example (note "about  {subject}": format_subject joins words with a leading space). The
prompt loses its last shot while it is longer than 2048 tokens. Score: next-token log-prob of the
letter tokens " A".." D" at the end of the prompt, argmax. Average: micro over all 14,042
questions; categories (STEM, humanities, social sciences, other) micro over their questions.
CSVs are read with pandas, as the reference does, so cells render identically ("None" -> nan).
Protocol page: docs/benchmarks/mmlu.md.
"""
from __future__ import annotations

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask
from xverse_eval.types import Sample

# hendrycks/test categories.py: subject -> subcategory; subcategory -> category
SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}
CATEGORIES = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "humanities": ("history", "philosophy", "law"),
    "social sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "other": ("other", "business", "health"),
}


def category(subject: str) -> str:
    """The hendrycks/test category (STEM, humanities, social sciences, other) of a subject."""
    return next(name for name, subs in CATEGORIES.items() if SUBCATEGORY[subject] in subs)


@register_task
class MMLU(MultipleChoiceTask):
    """MMLU as hendrycks/test evaluates it (module docstring)."""
    name = "mmlu"
    version = "1"
    shots = 5
    split = "test"
    fewshot_split = "dev"
    data_folder = "mmlu"
    expected_count = 14042
    max_prompt_tokens = 2048
    source = "hendrycks/test evaluate.py (format_example, gen_prompt); crop at 2048 tokens"
    hub = ("cais/mmlu", "c30699e8356da336a370243923dbaf21066bb9fe")
    SPLITS = {"test": "test", "dev": "dev", "val": "validation"}

    @classmethod
    def all_subsets(cls) -> list[str]:
        """The 57 subjects, sorted."""
        return sorted(SUBCATEGORY)

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """A subject's split from data/<split>/<subject>_<split>.csv (pandas, no header) or the hub."""
        if self.data.local:
            return self._load_local(subset, split)
        rows = self.data.load_hub(self.hub[0], subset, self.SPLITS[split], self.hub[1])
        return [self._sample(subset, split, i, r["question"], [str(c) for c in r["choices"]], "ABCD"[r["answer"]]) for i, r in enumerate(rows)]

    def _load_local(self, subset: str, split: str) -> list[Sample]:
        path = self.data.path("data", split, f"{subset}_{split}.csv")
        frame = self.data.read_csv_pandas(path, columns=6, header=None)
        samples = []
        for i in range(frame.shape[0]):
            row = frame.iloc[i]
            answer = row.iloc[5]
            if answer not in ("A", "B", "C", "D"):
                raise self._bad(path, i, f"answer {answer!r} is not one of A-D")
            # "{}".format(cell): exactly how format_example turns a cell into prompt text
            samples.append(self._sample(subset, split, i, "{}".format(row.iloc[0]), ["{}".format(row.iloc[j]) for j in range(1, 5)], answer))
        return samples

    def _sample(self, subset: str, split: str, i: int, question: str, choices: list[str], answer: str) -> Sample:
        return Sample(id=f"{subset}/{split}/{i}", index=i, subset=subset, question=question,
                      choices=tuple(choices), target="ABCD".index(answer), meta={"category": category(subset)})

    @staticmethod
    def _bad(path, i, what):
        return EvalError(f"{path}: row {i + 1}: {what}")

    def aggregate(self, records, limit=None):
        """Micro accuracy over items, per subject, per category, and the mean of the category accuracies."""
        result = super().aggregate(records, limit)
        by_category = metrics.group_by((category(r.subset), float(r.correct)) for r in records)
        groups = dict(result.groups)
        for name in CATEGORIES:
            if name in by_category:
                groups[name] = {"acc": metrics.mean(by_category[name]), "n": len(by_category[name]), "kind": "category"}
        values = dict(result.metrics)
        if by_category:
            values["acc_mean_of_categories"] = metrics.mean([metrics.mean(v) for v in by_category.values()])
        return self.result(values, groups, records, limit)
