"""CMMLU, as haonan-li/CMMLU's official code builds it; OpenCompass's cmmlu_ppl_8b9c76 as a variant.

default (src/mp_utils.py format_example + gen_prompt, src/hf_causal_model.py): header
"以下是关于{中文科目名}的单项选择题，请直接给出正确答案的选项。\\n\\n", the first 5 dev rows as
"题目：{Question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：{Answer}\\n\\n", the item ending in "答案是：".
Length rule (max_length 2048, token counts with the model's tokenizer, special tokens included, each
piece counted on its own as the reference does): if header + item alone exceed 2048 the prompt is the
item only (no header, no shots); otherwise, while the shots' total is >= 2048 - len(header + item),
every shot tied for the longest is dropped. XVERSE-65B has a 16K context (nothing would be dropped).
Score: next-token log-prob of the letter token after "答案是：" (no space; the reference reads
convert_tokens_to_ids("A"), the raw vocabulary entry), argmax over A-D.
Average: unweighted mean over the 67 subjects; each category the mean of its subjects (categories.py).

opencompass (configs/datasets/cmmlu/cmmlu_ppl_8b9c76.py at 6e315201): every shot and the item repeat
the header, "题目：...\\nA. ...\\nD. ...", BOT "答案是: {X}" (ASCII colon, space), all turns joined by
"\\n" (base model, no meta template; the shots joined the same way); shots = dev ids
0-4; score = mean log-prob over the whole sequence (PPL), lowest loss wins; the last shot is dropped
while the prompt is over 2048 tokens. Cells are read with the csv module, as OpenCompass's CMMLUDataset.
Protocol page: docs/benchmarks/cmmlu.md.
"""
from __future__ import annotations

import csv
import io
from typing import Any

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import Fits, MultipleChoiceTask, Shots, Variant, always_fits, safe_mean
from xverse_eval.types import Record, Sample

# haonan-li/CMMLU src/categories.py: name_en2zh and subcategories
NAME_ZH = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试", "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化", "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史",
    "chinese_literature": "中国文学", "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学", "college_engineering_hydrology": "大学工程水文学",
    "college_law": "大学法律", "college_mathematics": "大学数学", "college_medical_statistics": "大学医学统计",
    "college_medicine": "大学医学", "computer_security": "计算机安全", "conceptual_physics": "概念物理学",
    "construction_project_management": "建设工程管理", "economics": "经济学", "education": "教育学",
    "electrical_engineering": "电气工程", "elementary_chinese": "小学语文", "elementary_commonsense": "小学常识",
    "elementary_information_and_technology": "小学信息技术", "elementary_mathematics": "初等数学", "ethnology": "民族学",
    "food_science": "食品科学", "genetics": "遗传学", "global_facts": "全球事实", "high_school_biology": "高中生物",
    "high_school_chemistry": "高中化学", "computer_science": "计算机科学", "high_school_geography": "高中地理",
    "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学", "high_school_politics": "高中政治",
    "human_sexuality": "人类性行为", "international_law": "国际法学", "journalism": "新闻学", "jurisprudence": "法理学",
    "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学", "machine_learning": "机器学习", "management": "管理学",
    "marketing": "市场营销", "marxist_theory": "马克思主义理论", "modern_chinese": "现代汉语", "nutrition": "营养学",
    "philosophy": "哲学", "professional_accounting": "专业会计", "professional_law": "专业法学",
    "professional_medicine": "专业医学", "professional_psychology": "专业心理学", "public_relations": "公共关系",
    "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学", "traditional_chinese_medicine": "中医中药",
    "virology": "病毒学", "world_history": "世界历史", "world_religions": "世界宗教",
}
SUBCATEGORIES = {
    "agronomy": ["other"], "anatomy": ["biology"], "ancient_chinese": ["linguistics", "china specific"], "arts": ["arts"],
    "astronomy": ["physics"], "business_ethics": ["business"], "chinese_civil_service_exam": ["politics", "china specific"],
    "chinese_driving_rule": ["other", "china specific"], "chinese_food_culture": ["culture", "china specific"],
    "chinese_foreign_policy": ["politics", "china specific"], "chinese_history": ["history", "china specific"],
    "chinese_literature": ["literature", "china specific"], "chinese_teacher_qualification": ["education", "china specific"],
    "college_actuarial_science": ["math"], "college_education": ["education"], "college_engineering_hydrology": ["engineering"],
    "college_law": ["law"], "college_mathematics": ["math"], "college_medical_statistics": ["statistics"],
    "clinical_knowledge": ["other"], "college_medicine": ["other"], "computer_security": ["other"],
    "conceptual_physics": ["physics"], "construction_project_management": ["other", "china specific"],
    "economics": ["economics"], "education": ["education"], "elementary_chinese": ["linguistics", "china specific"],
    "elementary_commonsense": ["other", "china specific"], "elementary_information_and_technology": ["other"],
    "electrical_engineering": ["engineering"], "elementary_mathematics": ["math"], "ethnology": ["culture", "china specific"],
    "food_science": ["other"], "genetics": ["biology"], "global_facts": ["global"], "high_school_biology": ["biology"],
    "high_school_chemistry": ["chemistry"], "computer_science": ["computer science"], "high_school_geography": ["geography"],
    "high_school_mathematics": ["math"], "high_school_physics": ["physics"], "high_school_politics": ["politics", "china specific"],
    "human_sexuality": ["other"], "international_law": ["law"], "journalism": ["sociology"], "jurisprudence": ["law"],
    "legal_and_moral_basis": ["other"], "logical": ["philosophy"], "machine_learning": ["computer science"],
    "management": ["business"], "marketing": ["business"], "marxist_theory": ["philosophy"],
    "modern_chinese": ["linguistics", "china specific"], "nutrition": ["other"], "philosophy": ["philosophy"],
    "professional_accounting": ["business"], "professional_law": ["law"], "professional_medicine": ["other"],
    "professional_psychology": ["psychology"], "public_relations": ["politics"], "security_study": ["politics"],
    "sociology": ["culture"], "sports_science": ["other"], "traditional_chinese_medicine": ["other", "china specific"],
    "virology": ["biology"], "world_history": ["history"], "world_religions": ["global"],
}
CATEGORIES = {
    "STEM": ["physics", "chemistry", "biology", "computer science", "math", "engineering", "statistics"],
    "Humanities": ["history", "philosophy", "law", "arts", "literature", "global"],
    "Social Science": ["linguistics", "business", "politics", "culture", "economics", "geography", "psychology", "education", "sociology"],
    "Other": ["other"],
    "China specific": ["china specific"],
}


def categories_of(subject: str) -> list[str]:
    """mp_utils.category2subject, inverted: a subject counts in every category one of its tags names."""
    return [name for name, tags in CATEGORIES.items() if any(t in tags for t in SUBCATEGORIES[subject])]


@register_task
class CMMLU(MultipleChoiceTask):
    """CMMLU, official prompt and length rule; OpenCompass's as a variant (module docstring)."""
    name = "cmmlu"
    version = "1"
    shots = 5
    split = "test"
    fewshot_split = "dev"
    data_folder = "cmmlu"
    expected_count = 11582
    max_prompt_tokens = 2048
    average = "macro"
    variants = {
        "default": Variant("official haonan-li/CMMLU prompt (题目：, 答案是：), next-token letter logits, longest shots dropped over 2048 tokens"),
        # header per shot and the csv module's cells; the last shot dropped over the limit (hendrycks rule)
        "opencompass": Variant("OpenCompass cmmlu_ppl_8b9c76 (2023-11): header per shot, '答案是: X', whole-sequence PPL",
                               formulation="whole_sequence_ppl", fields={"opencompass": True}),
    }
    source = "haonan-li/CMMLU d6e7b71 src/mp_utils.py + src/hf_causal_model.py; variant opencompass 6e315201 cmmlu_ppl_8b9c76"
    hub = ("haonan-li/cmmlu", "main")  # no revision could be pinned offline: main

    @classmethod
    def all_subsets(cls) -> list[str]:
        """The 67 subjects, sorted."""
        return sorted(NAME_ZH)

    # ------------------------------------------------------------------ load

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """A subject's split from data/<split>/<subject>.csv (pandas; variant opencompass: the csv module) or the hub."""
        if not self.data.local:
            rows = self.data.load_hub(self.hub[0], subset, split, self.hub[1])
            table = [[r["Question"], r["A"], r["B"], r["C"], r["D"], r["Answer"]] for r in rows]
            where = f"{self.hub[0]}/{subset}/{split}"
        else:
            path = self.data.path("data", split, f"{subset}.csv")
            where = str(path)
            if self.setting("opencompass"):
                # CMMLUDataset: csv.reader, header skipped, 7 fields per row, cells as written
                # (open() in text mode: universal newlines, so \r\n and \r read as \n)
                reader = csv.reader(io.StringIO(self.data.read_text(path).replace("\r\n", "\n").replace("\r", "\n")))
                next(reader, None)
                table = []
                for i, row in enumerate(reader):
                    if len(row) != 7:
                        raise EvalError(f"{path}: row {i + 1}: {len(row)} fields, expected 7")
                    table.append(row[1:])
            else:
                # mp_utils.run_eval: pd.read_csv(header=0, index_col=0); "{}".format(cell) as format_example
                frame = self.data.read_csv_pandas(path, columns=6, header=0, index_col=0)
                table = [["{}".format(frame.iloc[i, j]) for j in range(6)] for i in range(frame.shape[0])]
        samples = []
        for i, (question, a, b, c, d, answer) in enumerate(table):
            if answer not in ("A", "B", "C", "D"):
                raise EvalError(f"{where}: row {i + 1}: answer {answer!r} is not one of A-D")
            samples.append(Sample(id=f"{subset}/{split}/{i}", index=i, subset=subset, question=question,
                                  choices=(a, b, c, d), target="ABCD".index(answer), meta={"categories": categories_of(subset)}))
        return samples

    # ------------------------------------------------------------------ build

    def render_vars(self, sample: Sample) -> dict[str, Any]:
        """The subject's Chinese name, and `header` (the official prompt drops it when the item alone is too long)."""
        return {"subject_zh": NAME_ZH[sample.subset], "header": True}

    def _pieces(self, sample: Sample, shots: list[Sample]) -> tuple[str, str, list[str]]:
        """(header, item, one text per shot): the pieces gen_prompt counts, each on its own."""
        end = self.render(sample, [], header=False)  # prompt_end: the item alone
        head = self.render(sample, [])[: -len(end)]
        return head, end, [self.render(sample, [s], header=False)[: -len(end)] for s in shots]

    def length_texts(self, sample: Sample) -> list[str]:
        """Header, item and each shot's piece: what the official rule counts (shots and header: once per subject)."""
        if self.setting("opencompass"):
            return super().length_texts(sample)
        head, end, pieces = self._pieces(sample, self.fewshot(sample))
        return [head, end, *pieces]

    def choose_shots(self, sample: Sample, fits: Fits = always_fits) -> Shots:
        """mp_utils.gen_prompt's rule, on token counts of each piece: the item alone (no header, no
        shots) when header + item exceed the limit; else, while the shots' total is >= limit -
        (header + item), every shot tied for the longest goes. Variant opencompass: the last shot
        goes while the whole prompt is too long."""
        count = getattr(fits, "count", None)
        if self.setting("opencompass") or count is None:
            return super().choose_shots(sample, fits)
        shots = self.fewshot(sample)
        head, end, texts = self._pieces(sample, shots)
        limit = fits.limit  # type: ignore[attr-defined]
        start_end = count(head) + count(end)
        if start_end > limit:
            return Shots([], [f"header + item are {start_end} tokens > {limit}: the item alone (no header, no shots)"], {"header": False})
        pieces = [(s, count(t)) for s, t in zip(shots, texts)]
        while pieces and sum(n for _, n in pieces) >= limit - start_end:
            longest = max(n for _, n in pieces)
            pieces = [(s, n) for s, n in pieces if n != longest]
        return Shots([s for s, _ in pieces])

    # ------------------------------------------------------------------ aggregate

    def aggregate(self, records: list[Record], limit: int | None = None):
        """acc = the unweighted mean over subjects (mp_utils.get_results); each category the mean of
        its subjects; acc_micro over items."""
        per_subject = self.by_subset(records)
        groups: dict[str, dict[str, Any]] = {}
        for subject, values in sorted(per_subject.items()):
            groups[subject] = {"acc": metrics.mean(values), "n": len(values), "categories": categories_of(subject)}
        for name in CATEGORIES:
            members = {s: v for s, v in sorted(per_subject.items()) if name in categories_of(s)}
            if members:
                groups[name] = {"acc": metrics.macro(members), "subjects": len(members), "kind": "category"}
        values = [float(r.correct) for r in records]
        result = {"acc": self.headline(records), "acc_micro": safe_mean(values),
                  "acc_stderr": metrics.stderr(values) if values else float("nan")}
        notes = [f"acc = unweighted mean over {len(per_subject)} subjects (mp_utils.get_results); categories = mean of their subjects; acc_micro = over items"]
        dropped = [r for r in records if any("the item alone" in n for n in r.extra.get("notes", ()))]
        if dropped:
            notes.append(f"{len(dropped)} items over the length limit were scored on the item alone (no header, no shots)")
        notes.append("variant opencompass: whole-sequence PPL, header per shot, turns joined by \\n" if self.setting("opencompass")
                     else f"max prompt length {self.max_prompt_tokens} tokens (reference default; XVERSE-65B has 16K)")
        return self.result(result, groups, records, limit, notes=notes)
