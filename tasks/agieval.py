"""AGIEval, single-answer multiple-choice subsets, English and Chinese, few-shot letter scoring.

Subsets (16, 4,951 items in the v1 files): official english_qa_datasets lsat-ar, lsat-lr, lsat-rc,
logiqa-en, sat-math, sat-en, sat-en-without-passage, aqua-rat, gaokao-english, and chinese_qa_datasets
logiqa-zh, gaokao-chinese, gaokao-geography, gaokao-history, gaokao-biology, gaokao-chemistry,
gaokao-mathqa. Excluded: multi-answer jec-qa-kd, jec-qa-ca, gaokao-physics; cloze math, gaokao-mathcloze.
Prompt: the official few-shot, non-CoT prompt (src/dataset_loader.py combine_prompt + concat_prompt +
convert_few_shot, end_of_example "\\n"): "Here are the answers for the problems in the exam.\\n" /
"以下是考试中各个问题的答案。\\n", then per demo "Problem {i}.   {passage} {question}\\nChoose from the
following options:    {options joined by ' '}\\nThe answer is therefore {label}\\n\\n" (ZH: "问题 {i}.   ...
\\n从以下选项中选择:    ...\\n答案是 {label}\\n\\n"), then the item, ending (for letter scoring) in
"The answer is therefore" / "答案是"; the letter continuation is " A" as in the demos.
Demos: data/few_shot_prompts.csv (context rows; sat-en-without-passage uses sat-en's demos without
their passages). The file has 5 demos for some subsets and only 3 for others (lsat-*, logiqa-*,
sat-en*, gaokao-chinese, gaokao-english): all of them are used and the count is recorded. As
concat_prompt, demos are added while the demo block stays under 2048 tokens; the reference counts
with tiktoken cl100k, we count with the model's tokenizer (special tokens included).
Score: next-token log-prob of the letter token, argmax over A-D (A-E for lsat-* and aqua-rat). The 7
gaokao-mathqa items with multi-letter labels ("AD", ...) cannot be matched by one letter and count as
wrong, as in the official exact-match scorer; they stay in the counts.
Data: default the v1 files (the state before the 2024 v1_1 revision, closest to what XVERSE ran in
2023; v1 gaokao-biology 210, gaokao-chemistry 207); variant `v1_1` the 2024 files (230 and 204).
Own shots: the official demos include test items (found by content: passage, question, options); the
reference keeps them in those items' prompts, so do we, and the result's notes list the items.
Protocol page: docs/benchmarks/agieval.md.
Average: official = unweighted mean over subsets (`acc`); also micro over items and the EN/ZH means.
"""
from __future__ import annotations

import ast
import io
from typing import Any

from xverse_eval import metrics
from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import Fits, MultipleChoiceTask, Shots, Variant, always_fits, safe_mean
from xverse_eval.types import Record, Response, Sample

ENGLISH = ("lsat-ar", "lsat-lr", "lsat-rc", "logiqa-en", "sat-math", "sat-en", "sat-en-without-passage", "aqua-rat", "gaokao-english")
CHINESE = ("logiqa-zh", "gaokao-chinese", "gaokao-geography", "gaokao-history", "gaokao-biology", "gaokao-chemistry", "gaokao-mathqa")
COUNTS = {"v1": 4951, "v1_1": 4951 - 210 - 207 + 230 + 204}
MAX_DEMO_TOKENS = 2048


@register_task
class AGIEval(MultipleChoiceTask):
    """AGIEval's single-answer subsets with the official few-shot prompt (module docstring)."""
    name = "agieval"
    version = "1"
    shots = 5
    split = "test"
    fewshot_split = "few_shot_prompts.csv"
    data_folder = "agieval"
    expected_count = COUNTS["v1"]
    max_prompt_tokens = MAX_DEMO_TOKENS
    average = "macro"
    variants = {
        "default": Variant("official few-shot prompt and demos (3-5 per subset), v1 data files (pre-release state)", fields={"data": "v1"}),
        "v1_1": Variant("as default on the v1_1 data files (2024)", expected_count=COUNTS["v1_1"], fields={"data": "v1_1"}),
    }
    source = "ruixiangcui/AGIEval src/dataset_loader.py (few-shot, no CoT), data/few_shot_prompts.csv; macro over subsets"
    hub = None

    @property
    def data_version(self) -> str:
        """The data folder of the variant: v1 or v1_1."""
        return self.setting("data")

    @classmethod
    def all_subsets(cls) -> list[str]:
        """The 16 subsets: English first, then Chinese, as the official lists."""
        return list(ENGLISH + CHINESE)

    @staticmethod
    def language(subset: str) -> str:
        """"en" for the English subsets, "zh" for the Chinese ones."""
        return "en" if subset in ENGLISH else "zh"

    # ------------------------------------------------------------------ load

    def _sample(self, row: dict, subset: str, i: int, where: str, skip_passage: bool = False, prefix: str = "") -> Sample:
        for key in ("question", "options", "label"):
            if key not in row:
                raise EvalError(f"{where}: missing {key!r}")
        options = row["options"] if row["options"] is not None else []
        if not isinstance(options, list):
            raise EvalError(f"{where}: options must be a list")
        label = row["label"]
        # demos only render their label; some (gaokao-geography) pack all options into one string
        letters = "ABCDE" if prefix else "ABCDE"[: len(options)]
        if isinstance(label, str) and len(label) == 1 and label in letters:
            target = letters.index(label)
        elif isinstance(label, str) and label and all(ch in letters + " " for ch in label):
            target = -1  # multi-letter label (gaokao-mathqa): one letter never matches
        else:
            raise EvalError(f"{where}: label {label!r} is not a letter among {letters}")
        passage = row.get("passage") if row.get("passage") is not None and not skip_passage else ""
        return Sample(id=f"{subset}/{prefix}{i}", index=i, subset=subset, question=str(row["question"]),
                      choices=tuple(str(o) for o in options), target=target,
                      meta={"passage": passage, "options": " ".join(str(o) for o in options), "label": "{}".format(label),
                            "language": self.language(subset)})

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """A subset's items from data/<version>/<subset>.jsonl (no hub copy)."""
        if not self.data.local:
            raise EvalError(f"{self.name}: no hub copy; pass --data-dir with AGIEval's data/{self.data_version}/*.jsonl")
        path = self.data.path(self.data_version, f"{subset}.jsonl")
        samples = [self._sample(row, subset, i, f"{path}:{i + 1}") for i, row in enumerate(self.data.read_jsonl(path))]
        for s in samples:
            if len(s.choices) not in (4, 5):
                raise EvalError(f"{path}:{s.index + 1}: {len(s.choices)} options, expected 4 or 5")
        return samples

    def fewshot(self, sample: Sample) -> list[Sample]:
        """The subset's demos from few_shot_prompts.csv (all of them, up to `shots`), in file order;
        a demo that is also this test item stays, as the reference keeps it (see shot_is_item)."""
        demos = self.__dict__.setdefault("_demos", {})
        if sample.subset not in demos:
            import pandas as pd

            path = self.data.path("few_shot_prompts.csv")
            column = "sat-en" if sample.subset == "sat-en-without-passage" else sample.subset
            # combine_prompt: the context rows 1,3,5,7,9 under the header row; empty cells skipped
            frame = pd.read_csv(io.StringIO(self.data.read_text(path)), header=0, skiprows=lambda x: x not in (0, 1, 3, 5, 7, 9), keep_default_na=False)
            if column not in frame.columns:
                raise EvalError(f"{path}: no column {column!r}")
            out = []
            for i, cell in enumerate(c for c in frame[column] if c):
                try:
                    row = ast.literal_eval(cell)
                except (ValueError, SyntaxError):
                    raise EvalError(f"{path}: {column} demo {i + 1} is not a Python literal") from None
                out.append(self._sample(row, sample.subset, i, f"{path}: {column} demo {i + 1}", skip_passage=sample.subset == "sat-en-without-passage", prefix="demo"))
            demos[sample.subset] = out
        return demos[sample.subset][: self.shots]

    # ------------------------------------------------------------------ build

    def render_vars(self, sample: Sample) -> dict[str, Any]:
        """The prompt's language, and `demos_only` (True renders the demo block alone)."""
        return {"lang": self.language(sample.subset), "demos_only": False}

    def shot_is_item(self, sample: Sample, shot: Sample) -> bool:
        """A demo is the item itself when question, passage and label agree (ids differ: the demos
        come from another file, and their options may differ in LaTeX markup: gaokao-chemistry
        test item 38 of v1, 178 of v1_1, is its first demo with "KI" written "$\\mathrm{KI}$")."""
        return (shot.question, shot.meta["passage"], shot.meta["label"]) == (sample.question, sample.meta["passage"], sample.meta["label"])

    def length_texts(self, sample: Sample) -> list[str]:
        """The demo blocks with 1..n demos (per subset: counted once for all its items)."""
        demos = self.fewshot(sample)
        return [self.render(sample, demos[:k], demos_only=True) for k in range(1, len(demos) + 1)]

    def choose_shots(self, sample: Sample, fits: Fits = always_fits) -> Shots:
        """concat_prompt: demos are added while the demo block stays under the limit (tokens)."""
        demos = self.fewshot(sample)
        count = getattr(fits, "count", None)
        if count is None:
            return Shots(demos)
        n, limit = 0, fits.limit  # type: ignore[attr-defined]
        for k in range(1, len(demos) + 1):
            if count(self.render(sample, demos[:k], demos_only=True)) < limit:
                n = k
            else:
                break
        notes = [f"{len(demos) - n} of {len(demos)} demos dropped: the demo block reached {limit} tokens"] if n < len(demos) else []
        return Shots(demos[:n], notes)

    def score(self, item, responses: list[Response]) -> Record:
        """As multiple choice, with the published label kept (multi-letter labels count as wrong)."""
        record = super().score(item, responses)
        record.extra["label"] = item.sample.meta["label"]
        return record

    # ------------------------------------------------------------------ aggregate

    def aggregate(self, records: list[Record], limit: int | None = None):
        """acc = the unweighted mean over subsets (official AGIEval); also micro over items and the
        English / Chinese means of their subsets."""
        per_subset = self.by_subset(records)
        groups: dict[str, dict[str, Any]] = {}
        for subset, values in per_subset.items():
            shots = sorted({r.extra.get("shots") for r in records if r.subset == subset})
            groups[subset] = {"acc": metrics.mean(values), "n": len(values), "language": self.language(subset), "shots": shots}
        nan = float("nan")
        values = [float(r.correct) for r in records]
        by_lang = {lang: {s: v for s, v in per_subset.items() if self.language(s) == lang} for lang in ("en", "zh")}
        result = {"acc": self.headline(records),
                  "acc_micro": safe_mean(values),
                  "acc_stderr": metrics.stderr(values) if values else nan,
                  "acc_en": metrics.macro(by_lang["en"]) if by_lang["en"] else nan,
                  "acc_zh": metrics.macro(by_lang["zh"]) if by_lang["zh"] else nan}
        multi = sum(1 for r in records if r.target == -1)
        notes = [f"acc = unweighted mean over {len(groups)} subsets (official AGIEval average); acc_micro = over items",
                 f"data: {self.data_version} files; demos from few_shot_prompts.csv: "
                 + ", ".join(f"{s} {'/'.join(map(str, g['shots']))}" for s, g in groups.items()),
                 "demo block limit counted with the model's tokenizer (the reference counts cl100k tokens)"]
        if multi:
            notes.append(f"{multi} items with multi-letter labels counted as wrong (single-letter scoring)")
        return self.result(result, groups, records, limit, notes=notes)
