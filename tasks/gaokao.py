"""GAOKAO-Bench, single-answer multiple choice only, 5-shot letter scoring (XVERSE: "the same as MMLU").

Items: the 7 files whose type in Bench/Obj_Prompt.json is `single_choice` (1,418 items); multi-answer
(Physics), multi-question and five-out-of-seven files are excluded, as XVERSE's footnote says. The
options are inside the question text (with its number and points), so nothing is appended to it.
XVERSE disclosed neither prompt nor exemplars and the benchmark has no dev split. Default, as
protocols.md suggests: header "以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n" ({科目} as
Obj_Prompt.json names the subject: 数学, 历史, ...), shots "{question}\\n答案：{X}\\n\\n" (the question
verbatim, its trailing newline kept), the item ending in "答案：" (no space).
Shots: default = the first 5 items of the same file (file order), which are then not scored (1,383
scored; --index is still the position in the published file, 0-4 are exemplars); variant `loo` =
the first 5 items of the same file other than the item itself, all 1,418 scored.
Score: next-token log-prob of the letter token after "答案：", argmax over A-D. The prompt loses its
last shot while it is longer than 2048 tokens (hendrycks rule; XVERSE-65B has 16K).
Average: headline `acc_weighted` = OpenCompass GaokaoBench summary (per-file accuracy weighted by
the file's total points); also micro over items, macro over files, and the official point rate
(points of correctly answered items / points of scored items).
"""
from __future__ import annotations

from typing import Any

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask
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
    name = "gaokao"
    version = "1"
    shots = 5
    split = "test"
    fewshot_split = "test[:5] (held out)"
    data_folder = "gaokao-bench"
    expected_count = 1418 - HELD_OUT * len(FILES)
    max_prompt_tokens = 2048
    metric = "acc_weighted"
    variants = {
        "default": "first 5 items of each file are the shots and are not scored (1,383 scored)",
        "loo": "shots = first 5 other items of the same file (leave-one-out); all 1,418 scored",
    }
    source = "OpenLMLab/GAOKAO-Bench 6dbb24f Data/Objective_Questions (7 single_choice files); prompt per protocols.md 3 (XVERSE undisclosed)"
    hub = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.variant == "loo":
            self.expected_count = 1418

    @classmethod
    def all_subsets(cls) -> list[str]:
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
        items = self._all_items(subset)
        return items if self.variant == "loo" else items[HELD_OUT:]

    def sample_at(self, subset: str, index: int) -> Sample:
        items = self._all_items(subset)
        if not 0 <= index < len(items):
            raise EvalError(f"{self.name}:{subset}: --index {index} is out of range (0..{len(items) - 1})")
        if self.variant != "loo" and index < HELD_OUT:
            raise EvalError(f"{self.name}:{subset}: item {index} is a few-shot exemplar in this variant and is not scored (scored: {HELD_OUT}..{len(items) - 1})")
        return items[index]

    def fewshot(self, sample: Sample) -> list[Sample]:
        items = self._all_items(sample.subset)
        if self.variant == "loo":
            return [s for s in items if s.index != sample.index][: self.shots]
        return items[: self.shots]

    def aggregate(self, records: list[Record], limit: int | None = None):
        per_file = metrics.group_by((r.subset, float(r.correct)) for r in records)
        points: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for name in FILES:
            if name not in per_file:
                continue
            recs = [r for r in records if r.subset == name]
            pts = [self._all_items(name)[r.index].meta["score"] for r in recs]
            points[name] = (sum(p for p, r in zip(pts, recs) if r.correct), sum(pts))
            groups[name] = {"acc": metrics.mean(per_file[name]), "n": len(per_file[name]), "points": points[name][1], "weight": WEIGHTS[name]}
        values = [float(r.correct) for r in records]
        nan = float("nan")
        w = sum(WEIGHTS[f] for f in groups)
        result = {
            "acc_weighted": sum(WEIGHTS[f] * g["acc"] for f, g in groups.items()) / w if w else nan,
            "acc": metrics.mean(values) if values else nan,
            "acc_stderr": metrics.stderr(values) if values else nan,
            "acc_macro": metrics.mean([g["acc"] for g in groups.values()]) if groups else nan,
            "points_rate": sum(p[0] for p in points.values()) / sum(p[1] for p in points.values()) if points else nan,
        }
        notes = ["acc_weighted = per-file accuracy weighted by the file's total points (OpenCompass GaokaoBench summary); "
                 "acc = micro over items; acc_macro = mean over files; points_rate = points scored / points (official GAOKAO-Bench)",
                 "shots: first 5 items of each file, not scored" if self.variant != "loo" else "shots: first 5 other items of the same file (leave-one-out)",
                 "prompt and exemplar source undisclosed by XVERSE: protocols.md 3 default"]
        return self.result(result, groups, records, limit, notes=notes)
