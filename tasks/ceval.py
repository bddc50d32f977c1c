"""C-Eval, as hkust-nlp/ceval's answer-only evaluator builds it (XVERSE: "the same as MMLU").

Prompt: code/evaluator_series/evaluators/llama.py (generate_few_shot_prompt + format_example):
"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\\n\\n", then the first 5 dev rows of the
subject (file order) as "{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n", then the item
ending in "答案：" (full-width colon, no space). {subject} is the subject's Chinese name from
subject_mapping.json, the documented intent ("把 {subject} 改成具体的科目名称"; OpenCompass and lm-eval
do the same); variant `subject_key` passes the snake_case key as the official scripts literally do.
Score: next-token log-prob of the letter token as the tokenizer produces it after "答案：" (no space),
argmax over A-D. Average: unweighted mean over subjects; each category (STEM, Social Science,
Humanities, Other) the mean of its subjects; "hard" the mean of the 8 C-Eval Hard subjects.
Split: test labels were hidden until 2025 and the local files have none, so `default` evaluates val
(1,346) and says so; variant `test` needs labelled test files (the hub's ceval/ceval-exam has them).
The official code has no length rule; as MMLU (hendrycks) the prompt loses its last shot while it is
longer than 2048 tokens (XVERSE-65B has a 16K context, so nothing would be dropped there).
CSVs are read with pandas as the official eval.py does (CRLF kept inside quoted cells).
Protocol page: docs/benchmarks/ceval.md.
"""
from __future__ import annotations

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask, Variant, safe_mean
from xverse_eval.types import Sample

# hkust-nlp/ceval subject_mapping.json: key -> (English name, Chinese name, category)
SUBJECTS = {
    "computer_network": ("Computer Network", "计算机网络", "STEM"),
    "operating_system": ("Operating System", "操作系统", "STEM"),
    "computer_architecture": ("Computer Architecture", "计算机组成", "STEM"),
    "college_programming": ("College Programming", "大学编程", "STEM"),
    "college_physics": ("College Physics", "大学物理", "STEM"),
    "college_chemistry": ("College Chemistry", "大学化学", "STEM"),
    "advanced_mathematics": ("Advanced Mathematics", "高等数学", "STEM"),
    "probability_and_statistics": ("Probability and Statistics", "概率统计", "STEM"),
    "discrete_mathematics": ("Discrete Mathematics", "离散数学", "STEM"),
    "electrical_engineer": ("Electrical Engineer", "注册电气工程师", "STEM"),
    "metrology_engineer": ("Metrology Engineer", "注册计量师", "STEM"),
    "high_school_mathematics": ("High School Mathematics", "高中数学", "STEM"),
    "high_school_physics": ("High School Physics", "高中物理", "STEM"),
    "high_school_chemistry": ("High School Chemistry", "高中化学", "STEM"),
    "high_school_biology": ("High School Biology", "高中生物", "STEM"),
    "middle_school_mathematics": ("Middle School Mathematics", "初中数学", "STEM"),
    "middle_school_biology": ("Middle School Biology", "初中生物", "STEM"),
    "middle_school_physics": ("Middle School Physics", "初中物理", "STEM"),
    "middle_school_chemistry": ("Middle School Chemistry", "初中化学", "STEM"),
    "veterinary_medicine": ("Veterinary Medicine", "兽医学", "STEM"),
    "college_economics": ("College Economics", "大学经济学", "Social Science"),
    "business_administration": ("Business Administration", "工商管理", "Social Science"),
    "marxism": ("Marxism", "马克思主义基本原理", "Social Science"),
    "mao_zedong_thought": ("Mao Zedong Thought", "毛泽东思想和中国特色社会主义理论体系概论", "Social Science"),
    "education_science": ("Education Science", "教育学", "Social Science"),
    "teacher_qualification": ("Teacher Qualification", "教师资格", "Social Science"),
    "high_school_politics": ("High School Politics", "高中政治", "Social Science"),
    "high_school_geography": ("High School Geography", "高中地理", "Social Science"),
    "middle_school_politics": ("Middle School Politics", "初中政治", "Social Science"),
    "middle_school_geography": ("Middle School Geography", "初中地理", "Social Science"),
    "modern_chinese_history": ("Modern Chinese History", "近代史纲要", "Humanities"),
    "ideological_and_moral_cultivation": ("Ideological and Moral Cultivation", "思想道德修养与法律基础", "Humanities"),
    "logic": ("Logic", "逻辑学", "Humanities"),
    "law": ("Law", "法学", "Humanities"),
    "chinese_language_and_literature": ("Chinese Language and Literature", "中国语言文学", "Humanities"),
    "art_studies": ("Art Studies", "艺术学", "Humanities"),
    "professional_tour_guide": ("Professional Tour Guide", "导游资格", "Humanities"),
    "legal_professional": ("Legal Professional", "法律职业资格", "Humanities"),
    "high_school_chinese": ("High School Chinese", "高中语文", "Humanities"),
    "high_school_history": ("High School History", "高中历史", "Humanities"),
    "middle_school_history": ("Middle School History", "初中历史", "Humanities"),
    "civil_servant": ("Civil Servant", "公务员", "Other"),
    "sports_science": ("Sports Science", "体育学", "Other"),
    "plant_protection": ("Plant Protection", "植物保护", "Other"),
    "basic_medicine": ("Basic Medicine", "基础医学", "Other"),
    "clinical_medicine": ("Clinical Medicine", "临床医学", "Other"),
    "urban_and_rural_planner": ("Urban and Rural Planner", "注册城乡规划师", "Other"),
    "accountant": ("Accountant", "注册会计师", "Other"),
    "fire_engineer": ("Fire Engineer", "注册消防工程师", "Other"),
    "environmental_impact_assessment_engineer": ("Environmental Impact Assessment Engineer", "环境影响评价工程师", "Other"),
    "tax_accountant": ("Tax Accountant", "税务师", "Other"),
    "physician": ("Physician", "医师资格", "Other"),
}
CATEGORIES = ("STEM", "Social Science", "Humanities", "Other")
HARD = ("advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
        "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics")
COUNTS = {"val": 1346, "test": 12342}


@register_task
class CEval(MultipleChoiceTask):
    """C-Eval answer-only, 5-shot letter scoring, macro over subjects (module docstring)."""
    name = "ceval"
    version = "1"
    shots = 5
    split = "val"
    fewshot_split = "dev"
    data_folder = "ceval"
    expected_count = COUNTS["val"]
    max_prompt_tokens = 2048
    metric = "acc"
    average = "macro"
    variants = {
        "default": Variant("official answer-only prompt, Chinese subject name, val split (test labels not in the published files)"),
        "test": Variant("as default on the test split (12,342); needs labelled test files, e.g. the hub's ceval/ceval-exam",
                        split="test", expected_count=COUNTS["test"]),
        "subject_key": Variant("as default with the snake_case subject key in the header, as the official scripts pass it",
                               fields={"subject": "key"}),
    }
    source = "hkust-nlp/ceval cba65ae code/evaluator_series/evaluators/llama.py (answer-only); macro over subjects"
    hub = ("ceval/ceval-exam", "main")  # no revision could be pinned offline: main

    @classmethod
    def all_subsets(cls) -> list[str]:
        """The 52 subjects, sorted."""
        return sorted(SUBJECTS)

    def subject_name(self, subset: str) -> str:
        """The {subject} of the header: the Chinese name, or the snake_case key (variant subject_key)."""
        return subset if self.setting("subject") == "key" else SUBJECTS[subset][1]

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """A subject's split from <split>/<subject>_<split>.csv (pandas, as eval.py) or the hub."""
        if self.data.local:
            path = self.data.path(split, f"{subset}_{split}.csv")
            # dev: id,question,A-D,answer,explanation; val: ...,answer; test as published: no answer column
            columns = 8 if split == "dev" else 7 if split == "val" or self._has_answers(path) else 6
            frame = self.data.read_csv_pandas(path, columns=columns, header=0)
            rows = [frame.iloc[i] for i in range(frame.shape[0])]
            where = str(path)
        else:
            rows = self.data.load_hub(self.hub[0], subset, split, self.hub[1])
            where = f"{self.hub[0]}/{subset}/{split}"
        self._check_answers(rows, split, where)
        samples = []
        for i, row in enumerate(rows):
            answer = row["answer"]
            # "{}".format(cell): exactly how format_example puts a cell into the prompt
            samples.append(Sample(id=f"{subset}/{split}/{i}", index=i, subset=subset, question="{}".format(row["question"]),
                                  choices=tuple("{}".format(row[c]) for c in "ABCD"), target="ABCD".index(answer),
                                  meta={"category": SUBJECTS[subset][2]}))
        return samples

    @staticmethod
    def _check_answers(rows, split: str, where: str) -> None:
        """Every row has an answer A-D. A test file with no labels at all is the published test split
        (hidden labels); an empty cell in a labelled file is a damaged file, named by row and id."""
        def empty(value) -> bool:
            return value is None or value != value or (isinstance(value, str) and not value.strip())

        answers = [row["answer"] if "answer" in row else None for row in rows]
        if split == "test" and all(empty(a) for a in answers):
            raise EvalError(f"{where}: no answer labels (C-Eval test labels are not in the published files; evaluate val, or load labelled test files)")
        for i, (row, answer) in enumerate(zip(rows, answers)):
            item = f"{where}: row {i + 1}" + (f" (id {row['id']})" if "id" in row else "")
            if empty(answer):
                shown = "NaN" if answer is not None and answer != answer else repr(answer)
                raise EvalError(f"{item}: empty answer cell ({shown}); expected one of A-D")
            if answer not in ("A", "B", "C", "D"):
                raise EvalError(f"{item}: answer {answer!r} is not one of A-D")

    @staticmethod
    def _has_answers(path) -> bool:
        with path.open("rb") as fh:
            return "answer" in fh.readline().decode("utf-8", "replace").strip().split(",")

    def aggregate(self, records, limit=None):
        """acc = the unweighted mean over subjects (official C-Eval); categories and "hard" the mean
        of their subjects; acc_micro over items."""
        per_subject = self.by_subset(records)
        groups = {s: {"acc": metrics.mean(v), "n": len(v), "category": SUBJECTS[s][2]} for s, v in sorted(per_subject.items())}
        for name in (*CATEGORIES, "hard"):
            members = {s: v for s, v in per_subject.items() if (s in HARD if name == "hard" else SUBJECTS[s][2] == name)}
            if members:
                groups[name] = {"acc": metrics.macro(members), "subjects": len(members), "kind": "category"}
        values = [float(r.correct) for r in records]
        result_metrics = {"acc": self.headline(records), "acc_micro": safe_mean(values),
                          "acc_stderr": metrics.stderr(values) if values else float("nan")}
        if "hard" in groups:
            result_metrics["acc_hard"] = groups["hard"]["acc"]
        notes = [f"acc = unweighted mean over {len(per_subject)} subjects (official C-Eval average); acc_micro = over items",
                 f"split: {self.split}" + (" (test labels are not in the published files; XVERSE's 68.6 is most likely a test-set score)" if self.split == "val" else ""),
                 "header subject: " + ("snake_case key (official scripts)" if self.setting("subject") == "key" else "Chinese name (subject_mapping.json)")]
        return self.result(result_metrics, groups, records, limit, notes=notes)
