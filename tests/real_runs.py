"""Real run dirs made by the real SmolLM2-135M for the report and compare tests, made once per test
session (test_report.py and test_compare.py share them through `real_runs`).

- base:     mmlu:anatomy + piqa, --limit 30
- rerun:    the same command into another dir (must give the same records)
- degraded: a copy of base whose stored responses are degraded in one documented way: for every item
            base got right, the log-likelihood of the gold choice's request is lowered by 1000 nats,
            then `score` re-scores it (so exactly base's correct items turn wrong, nothing else moves)
- variant:  piqa:variant=lm-eval, --limit 10 (another prompt: incomparable with base's piqa)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

LIMIT = 30
_CACHE: dict[str, dict[str, Path]] = {}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def degrade(run_dir: Path) -> int:
    """Lower the gold choice's stored log-likelihood by 1000 nats for every item the run got right,
    then re-score; returns the number of items changed."""
    from xverse_eval.evaluate import score_run

    plan = {(row["task"], row["id"]): row for row in _jsonl(run_dir / "plan.jsonl")}
    gold = set()
    for samples in sorted((run_dir / "samples").glob("*.jsonl")):
        for rec in _jsonl(samples):
            if rec["correct"]:
                gold.add(plan[(rec["task"], rec["id"])]["requests"][rec["target"]]["key"])
    rows = _jsonl(run_dir / "responses.jsonl")
    for row in rows:
        if row["request"] in gold:
            row["response"]["logprob"] -= 1000.0
    (run_dir / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    score_run(str(run_dir))
    return len(gold)


def real_runs(model, data_dir: str, root: Path) -> dict[str, Path]:
    """The four run dirs above under ROOT (made on the first call of the session)."""
    if "runs" in _CACHE:
        return _CACHE["runs"]
    from xverse_eval.evaluate import parse_tasks, run

    dirs = {name: root / name for name in ("base", "rerun", "degraded", "variant")}
    for name in ("base", "rerun"):
        run("smollm2-135m", parse_tasks("mmlu:anatomy,piqa"), data_dir=data_dir, limit=LIMIT, output_dir=str(dirs[name]), model=model)
    shutil.copytree(dirs["base"], dirs["degraded"])
    (dirs["degraded"] / ".lock").unlink(missing_ok=True)
    degrade(dirs["degraded"])
    run("smollm2-135m", parse_tasks("piqa:variant=lm-eval"), data_dir=data_dir, limit=10, output_dir=str(dirs["variant"]), model=model)
    _CACHE["runs"] = dirs
    return dirs
