"""GAOKAO-Bench, single-answer multiple choice only, 5-shot letter scoring (XVERSE: "the same as MMLU").

Items: the 7 files whose type in Bench/Obj_Prompt.json is `single_choice` (1,418 items); multi-answer
(Physics), multi-question and five-out-of-seven files are excluded, as XVERSE's footnote says. The
options are inside the question text (with its number and points), so nothing is appended to it.
XVERSE disclosed neither prompt nor exemplars and the benchmark has no dev split. Default (the
C-Eval answer-only shape, which XVERSE's "the same as MMLU" points to for a Chinese exam): header "以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n" ({科目} as
Obj_Prompt.json names the subject: 数学, 历史, ...), shots "{question}\\n答案：{X}\\n\\n" (the question
verbatim, its trailing newline kept), the item ending in "答案：" (no space).
Shots: default = the first 5 items of the same file (file order), which are then not scored (1,383
scored; --index is still the position in the published file, 0-4 are exemplars); variant `loo` =
the first 5 items of the same file other than the item itself, all 1,418 scored.
Score: next-token log-prob of the letter token after "答案：", argmax over A-D. The prompt loses its
last shot while it is longer than 2048 tokens (hendrycks rule; XVERSE-65B has 16K).
Average: headline `acc_weighted` = OpenCompass GaokaoBench summary (per-file accuracy weighted by
the file's total points); also micro over items, macro over files, and the official point rate
(points of correctly answered items / points of scored items). Protocol page: docs/benchmarks/gaokao.md.
"""
from __future__ import annotations

from typing import Any

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask, Variant, safe_mean
from xverse_eval.types import Record, Sample

# the single_choice files of Bench/Obj_Prompt.json -> subject as its prefix_prompt names it
FILES = {
    "2010-2022_Math_II_MCQs": "数学",
    "2010-2022_Math_I_MCQs": "数学",
    "2010-2022_History_MCQs": "历史",
    "2010-2022_Biology_MCQs": "生物",
    "2010-2022_Political_Science_MCQs": "政治",
    "2010-2022_Chemistry_MCQs": "化学",
    "2010-2013_English_MCQs": "英语",
}
# OpenCompass configs/summarizers/groups/GaokaoBench.py weights (total points per file)
WEIGHTS = {
    "2010-2022_Math_II_MCQs": 1090, "2010-2022_Math_I_MCQs": 1070, "2010-2022_History_MCQs": 1148,
    "2010-2022_Biology_MCQs": 900, "2010-2022_Political_Science_MCQs": 1280, "2010-2022_Chemistry_MCQs": 744,
    "2010-2013_English_MCQs": 105,
}
HELD_OUT = 5


@register_task
class GaokaoBench(MultipleChoiceTask):
    """GAOKAO-Bench single-choice files, 5-shot letter scoring, point-weighted (module docstring)."""
    name = "gaokao"
    version = "1"
    shots = 5
    split = "test"
    fewshot_split = "test[:5] (held out)"
    data_folder = "gaokao-bench"
    expected_count = 1418 - HELD_OUT * len(FILES)
    max_prompt_tokens = 2048
    metric = "acc_weighted"
    average = "weighted"
    variants = {
        "default": Variant("first 5 items of each file are the shots and are not scored (1,383 scored)", fields={"held_out": HELD_OUT}),
        "loo": Variant("shots = first 5 other items of the same file (leave-one-out); all 1,418 scored",
                       expected_count=1418, fields={"held_out": 0}),
    }
    source = "OpenLMLab/GAOKAO-Bench 6dbb24f Data/Objective_Questions (7 single_choice files); prompt: docs/benchmarks/gaokao.md (XVERSE undisclosed)"
    hub = None

    @classmethod
    def all_subsets(cls) -> list[str]:
        """The 7 single_choice files, in Obj_Prompt.json's order."""
        return list(FILES)

    def _all_items(self, subset: str) -> list[Sample]:
        cache = self.__dict__.setdefault("_files", {})
        if subset in cache:
            return cache[subset]
        if not self.data.local:
            raise EvalError(f"{self.name}: no hub copy; pass --data-dir with OpenLMLab/GAOKAO-Bench's Data/Objective_Questions")
        path = self.data.path("Data", "Objective_Questions", f"{subset}.json")
        data = self.data.read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("example"), list):
            raise EvalError(f"{path}: expected an object with an 'example' list")
        items = []
        for i, ex in enumerate(data["example"]):
            if not isinstance(ex, dict) or "question" not in ex or "answer" not in ex:
                raise EvalError(f"{path}: example {i}: needs 'question' and 'answer'")
            answer = ex["answer"]
            if not (isinstance(answer, list) and len(answer) == 1 and answer[0] in ("A", "B", "C", "D")):
                raise EvalError(f"{path}: example {i}: answer {answer!r} is not a single letter A-D")
            score = ex.get("score", 1)
            if not isinstance(score, (int, float)):
                raise EvalError(f"{path}: example {i}: score {score!r} is not a number")
            items.append(Sample(id=f"{subset}/{i}", index=i, subset=subset, question=str(ex["question"]), choices=("A", "B", "C", "D"),
                                target="ABCD".index(answer[0]), meta={"score": score, "year": ex.get("year"), "subject": FILES[subset]}))
        if len(items) <= HELD_OUT:
            raise EvalError(f"{path}: {len(items)} items; at least {HELD_OUT + 1} needed")
        cache[subset] = items
        return items

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The scored items of a file: all but the first `held_out` (the shots of the default)."""
        return self._all_items(subset)[self.setting("held_out"):]

    def sample_at(self, subset: str, index: int) -> Sample:
        """An item by its position in the file; EvalError for an exemplar of the default (not scored)."""
        items = self._all_items(subset)
        if not 0 <= index < len(items):
            raise EvalError(f"{self.name}:{subset}: --index {index} is out of range (0..{len(items) - 1})")
        if index < self.setting("held_out"):
            raise EvalError(f"{self.name}:{subset}: item {index} is a few-shot exemplar in this variant and is not scored (scored: {HELD_OUT}..{len(items) - 1})")
        return items[index]

    def fewshot_pool(self, subset: str) -> list[Sample]:
        """Every item of the file, in order: the first 5 are the shots (never the item itself)."""
        return self._all_items(subset)

    def render_vars(self, sample: Sample) -> dict[str, Any]:
        """{科目}: the subject as Obj_Prompt.json names the file's."""
        return {"subject": FILES[sample.subset]}

    def subset_weight(self, subset: str) -> float:
        """The file's total points (OpenCompass's GaokaoBench summary weights)."""
        return float(WEIGHTS[subset])

    def aggregate(self, records: list[Record], limit: int | None = None):
        """acc_weighted (headline): per-file accuracy weighted by the file's points; also acc (micro),
        acc_macro (over files) and points_rate (points scored / points, official GAOKAO-Bench)."""
        per_file = self.by_subset(records)
        points: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for name, values in per_file.items():
            pts = [self._all_items(name)[r.index].meta["score"] for r in records if r.subset == name]
            hits = [r.correct for r in records if r.subset == name]
            points[name] = (sum(p for p, hit in zip(pts, hits) if hit), sum(pts))
            groups[name] = {"acc": metrics.mean(values), "n": len(values), "points": points[name][1], "weight": WEIGHTS[name]}
        values = [float(r.correct) for r in records]
        nan = float("nan")
        result = {
            "acc_weighted": self.headline(records),
            "acc": safe_mean(values),
            "acc_stderr": metrics.stderr(values) if values else nan,
            "acc_macro": metrics.macro(per_file) if per_file else nan,
            "points_rate": sum(p[0] for p in points.values()) / sum(p[1] for p in points.values()) if points else nan,
        }
        notes = ["acc_weighted = per-file accuracy weighted by the file's total points (OpenCompass GaokaoBench summary); "
                 "acc = micro over items; acc_macro = mean over files; points_rate = points scored / points (official GAOKAO-Bench)",
                 "shots: first 5 items of each file, not scored" if self.setting("held_out") else "shots: first 5 other items of the same file (leave-one-out)",
                 "prompt and exemplar source undisclosed by XVERSE: the C-Eval answer-only shape (docs/benchmarks/gaokao.md)"]
        return self.result(result, groups, records, limit, notes=notes)
