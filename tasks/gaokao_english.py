"""GAOKAO-English: English exam multiple choice, 5-shot letter scoring (XVERSE: "the same as MMLU").

Data: AGIEval's `gaokao-english.jsonl` (306 reading-comprehension items, 4 options each), the copy
published with a prompt-ready format. XVERSE-7B/13B's READMEs name ExpressAI/AI-Gaokao as the source;
its papers are not published in a fetchable form here, so variant `ai_gaokao` reads that layout when a
data dir holds it (`ai-gaokao/<paper>/processed_{listening,cloze_choice,reading_mc}.jsonl`).
Prompt (undisclosed by XVERSE; MMLU's shape, which its "the same as MMLU" points to): header "The following are
multiple choice questions (with answers) about English exam.\\n\\n", each item "{passage}\\n{question}\\n
A. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer: {X}\\n\\n" (option text without its "(A)" prefix, trimmed), the
item ending in "Answer:"; the letter continuation is " A" (with the space, as MMLU).
Shots (no dev split): default = the first 5 items of the file, which are then not scored (301 scored;
--index stays the position in the file); variant `agieval_demos` = the 3 gaokao-english demos of
AGIEval's few_shot_prompts.csv (needs the agieval folder beside this one), all 306 scored.
The prompt loses its last shot while it is longer than 2048 tokens (hendrycks; XVERSE-65B had 16K):
passages are long, so fewer shots often fit, and the number used is recorded per item.
Average: accuracy, micro over items. Protocol page: docs/benchmarks/gaokao_english.md.
"""
from __future__ import annotations

import ast
import io
import re

from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask, Variant
from xverse_eval.types import Sample

HELD_OUT = 5
OPTION = re.compile(r"^\s*(?:\(([A-E])\)|([A-E])\s*[.．、:：])\s*")
AI_GAOKAO_TYPES = ("listening", "cloze_choice", "reading_mc")


def option_text(option: str, letter: str, where: str) -> str:
    """'(B)tell him a white lie' / '     A. tell him ...   ' -> the text; the letter must be in order."""
    m = OPTION.match(option)
    if not m or (m.group(1) or m.group(2)) != letter:
        raise EvalError(f"{where}: option {option!r} does not start with ({letter})")
    return option[m.end():].strip()


@register_task
class GaokaoEnglish(MultipleChoiceTask):
    """GAOKAO-English, MMLU-style 5-shot letter scoring (module docstring)."""
    name = "gaokao_english"
    version = "1"
    shots = 5
    split = "test"
    fewshot_split = "test[:5] (held out)"
    data_folder = "gaokao-english"
    expected_count = 306 - HELD_OUT
    max_prompt_tokens = 2048
    variants = {
        "default": Variant("AGIEval gaokao-english; first 5 items are the shots and are not scored (301 scored)",
                           fields={"data": "agieval", "held_out": HELD_OUT}),
        "agieval_demos": Variant("AGIEval gaokao-english; shots = the 3 demos of AGIEval's few_shot_prompts.csv; all 306 scored",
                                 shots=3, expected_count=306, fields={"data": "agieval", "held_out": 0, "demos": True}),
        "ai_gaokao": Variant("ExpressAI/AI-Gaokao papers (listening, cloze, reading MC) from <data>/gaokao-english/ai-gaokao; first 5 held out",
                             expected_count=None, fields={"data": "ai_gaokao", "held_out": HELD_OUT}),
    }
    source = "AGIEval data/v1 gaokao-english.jsonl (ExpressAI/AI-Gaokao layout as variant); prompt: docs/benchmarks/gaokao_english.md (XVERSE undisclosed)"
    hub = None

    # ------------------------------------------------------------------ load

    def _all_items(self) -> list[Sample]:
        if "_items" in self.__dict__:
            return self.__dict__["_items"]
        if not self.data.local:
            raise EvalError(f"{self.name}: no hub copy; pass --data-dir with AGIEval's gaokao-english.jsonl")
        items = self._load_ai_gaokao() if self.setting("data") == "ai_gaokao" else self._load_agieval()
        if len(items) <= HELD_OUT:
            raise EvalError(f"{self.name}: {len(items)} items; at least {HELD_OUT + 1} needed")
        self.__dict__["_items"] = items
        return items

    def _load_agieval(self) -> list[Sample]:
        path = self.data.path("gaokao-english.jsonl")
        return [self._agieval_sample(row, i, f"{path}:{i + 1}") for i, row in enumerate(self.data.read_jsonl(path))]

    def _agieval_sample(self, row: dict, i: int, where: str, prefix: str = "") -> Sample:
        for key in ("question", "options", "label"):
            if key not in row:
                raise EvalError(f"{where}: missing {key!r}")
        options = row["options"]
        if not isinstance(options, list) or len(options) != 4:
            raise EvalError(f"{where}: expected 4 options, got {options!r:.80}")
        if row["label"] not in ("A", "B", "C", "D"):
            raise EvalError(f"{where}: label {row['label']!r} is not one of A-D")
        return Sample(id=f"{prefix}{i}", index=i, subset="", question=str(row["question"]),
                      choices=tuple(option_text(o, "ABCD"[j], where) for j, o in enumerate(options)),
                      target="ABCD".index(row["label"]), meta={"passage": row.get("passage") or ""})

    def _load_ai_gaokao(self) -> list[Sample]:
        base = self.data.path("ai-gaokao")
        items = []
        for paper in sorted(p for p in base.iterdir() if p.is_dir()):
            for kind in AI_GAOKAO_TYPES:
                path = paper / f"processed_{kind}.jsonl"
                if not path.exists():
                    continue
                for n, row in enumerate(self.data.read_jsonl(path)):
                    where = f"{path}:{n + 1}"
                    options = row.get("options")
                    if not isinstance(options, list) or not 2 <= len(options) <= 4 or row.get("answer") not in options:
                        raise EvalError(f"{where}: needs 'options' (2-4) and an 'answer' that is one of them")
                    question = row.get("question") or ""
                    if kind == "cloze_choice":
                        question = f"Which option best fills {row.get('question_mark', '')}?"
                    items.append(Sample(id=f"{paper.name}/{kind}/{n}", index=len(items), subset="", question=question,
                                        choices=tuple(str(o) for o in options), target=options.index(row["answer"]),
                                        meta={"passage": row.get("context") or "", "type": kind, "paper": paper.name}))
        if not items:
            raise EvalError(f"{base}: no processed_{{{','.join(AI_GAOKAO_TYPES)}}}.jsonl files in its paper folders")
        return items

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The scored items: all but the first `held_out` (the shots, unless the demos are)."""
        return self._all_items()[self.setting("held_out"):]

    def sample_at(self, subset: str, index: int) -> Sample:
        """An item by its position in the file; EvalError for a held-out exemplar."""
        items = self._all_items()
        if not 0 <= index < len(items):
            raise EvalError(f"{self.name}: --index {index} is out of range (0..{len(items) - 1})")
        if index < self.setting("held_out"):
            raise EvalError(f"{self.name}: item {index} is a few-shot exemplar in this variant and is not scored (scored: {HELD_OUT}..{len(items) - 1})")
        return items[index]

    def fewshot_pool(self, subset: str) -> list[Sample]:
        """The file's items (the first 5 are the shots), or AGIEval's 3 demos (variant agieval_demos)."""
        if not self.setting("demos"):
            return self._all_items()
        if "_demos" not in self.__dict__:
            import pandas as pd

            path = self.data.root / "agieval" / "few_shot_prompts.csv" if self.data.root else None
            if path is None or not path.is_file():
                raise EvalError(f"{self.name}: variant agieval_demos needs agieval/few_shot_prompts.csv in the data dir")
            frame = pd.read_csv(io.StringIO(self.data.read_text(path)), header=0, skiprows=lambda x: x not in (0, 1, 3, 5, 7, 9), keep_default_na=False)
            cells = [c for c in frame["gaokao-english"] if c]
            self.__dict__["_demos"] = [self._agieval_sample(ast.literal_eval(c), i, f"{path}: gaokao-english demo {i + 1}", "demo/") for i, c in enumerate(cells)]
        return self.__dict__["_demos"]

    def aggregate(self, records, limit=None):
        """Micro accuracy over items, with notes on the data and the shots."""
        result = super().aggregate(records, limit)
        notes = ["data: " + ("ExpressAI/AI-Gaokao papers" if self.setting("data") == "ai_gaokao" else "AGIEval gaokao-english.jsonl (XVERSE-7B/13B name ExpressAI/AI-Gaokao)"),
                 "shots: " + ("the 3 AGIEval demos" if self.setting("demos") else "first 5 items of the file, not scored"),
                 "prompt undisclosed by XVERSE: MMLU-style (docs/benchmarks/gaokao_english.md)"]
        return self.result(result.metrics, result.groups, records, limit, notes=notes)
