"""RACE-M as XVERSE ran it: OpenCompass race_ppl_a138cd, November 2023 (commit 6e315201).

Middle-school test set, 1,436 questions, 0-shot. For each letter X in A-D OpenCompass scores the
whole string HUMAN + "\\n" + BOT, where HUMAN = "Read the article, and answer the question by
replying A, B, C or D.\\n\\nArticle:\\n{article}\\n\\nQ: {question}\\n\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}"
and BOT = "A: {X}", by its mean token log-likelihood over the whole sequence (BOS counted in the
denominator); the highest mean (lowest perplexity) wins, the first on ties. Variant "5831a0": the
leaderboard prompt "Article:\\n{article}\\nQuestion:\\n{question}\\nA. ..\\nD. {D}" + "\\nAnswer: {X}".

Data: RACE's per-passage .txt files (RACE/test/middle/{n}.txt, each a JSON object with article,
questions, options, answers), passages in numeric file order (1, 2, ..., 10), questions in file order.
Item id: "middle{n}.txt#q{k}", k the 0-based question number inside the passage.
Average: accuracy, micro over the questions. Protocol page: docs/benchmarks/race.md.
"""
from __future__ import annotations

from xverse_eval.errors import EvalError
from xverse_eval.registry import register_task
from xverse_eval.task import MultipleChoiceTask, Variant
from xverse_eval.types import Sample

SPLIT_DIRS = {"test": "test", "validation": "dev"}


@register_task
class RaceMiddle(MultipleChoiceTask):
    """RACE-M, OpenCompass 2023 prompt, whole-sequence PPL (module docstring)."""
    name = "race"
    version = "1"
    shots = 0
    split = "test"
    data_folder = "race"
    expected_count = 1436
    formulation = "whole_sequence_ppl"
    metric = "acc"
    average = "micro"
    variants = {
        "default": Variant("OpenCompass race_ppl_a138cd (2023-11): 'Read the article, ...' prompt, 'A: X', whole-sequence PPL"),
        "5831a0": Variant("OpenCompass race_ppl_5831a0 (leaderboard/llama collections): 'Article:/Question:' prompt, 'Answer: X', whole-sequence PPL",
                          fields={"prompt": "5831a0"}),
    }
    source = "OpenCompass 6e315201 configs/datasets/race/race_ppl_a138cd.py (alt. race_ppl_5831a0.py); RaceDataset"
    hub = ("ehovy/race", "2fec9fd81f1dc971569a9b729c43f2f0e6436637")

    def load_split(self, subset: str, split: str) -> list[Sample]:
        """The middle-school questions of a split, passages in numeric file order, or the hub's rows."""
        if split not in SPLIT_DIRS:
            raise EvalError(f"race: unknown split {split!r}")
        if not self.data.local:
            return self._load_hub(split)
        folder = self.data.path("RACE", SPLIT_DIRS[split], "middle")
        files = [p for p in folder.iterdir() if p.suffix == ".txt"]
        bad = [p.name for p in files if not p.stem.isdigit()]
        if bad:
            raise EvalError(f"{folder}: unexpected file {bad[0]} (expected <number>.txt passage files)")
        samples: list[Sample] = []
        for path in sorted(files, key=lambda p: int(p.stem)):
            doc = self.data.read_json(path)
            if not isinstance(doc, dict) or any(k not in doc for k in ("article", "questions", "options", "answers")):
                raise EvalError(f"{path}: expected a JSON object with article, questions, options, answers")
            questions, options, answers = doc["questions"], doc["options"], doc["answers"]
            if not len(questions) == len(options) == len(answers):
                raise EvalError(f"{path}: {len(questions)} questions, {len(options)} option lists, {len(answers)} answers")
            for k, (question, opts, answer) in enumerate(zip(questions, options, answers)):
                samples.append(self._sample(f"middle{path.stem}.txt#q{k}", len(samples), doc["article"], question, opts, answer, f"{path} question {k}"))
        return samples

    def _load_hub(self, split: str) -> list[Sample]:
        rows = self.data.load_hub(self.hub[0], "middle", split, self.hub[1])
        samples, seen = [], {}
        for i, row in enumerate(rows):
            k = seen[row["example_id"]] = seen.get(row["example_id"], -1) + 1
            samples.append(self._sample(f"{row['example_id']}#q{k}", i, row["article"], row["question"], row["options"], row["answer"], f"{self.hub[0]} row {i}"))
        return samples

    def _sample(self, id_: str, index: int, article: str, question: str, options, answer: str, where: str) -> Sample:
        if not isinstance(options, list) or len(options) != 4 or not all(isinstance(o, str) for o in options):
            raise EvalError(f"{where}: expected 4 option strings, got {options!r}"[:300])
        if answer not in ("A", "B", "C", "D"):
            raise EvalError(f"{where}: answer {answer!r} is not one of A-D")
        return Sample(id=id_, index=index, subset="", question=question, choices=tuple(options),
                      target="ABCD".index(answer), meta={"article": article})
