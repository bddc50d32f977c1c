"""The statistics behind report, leaderboard and compare, on real run dirs of the real SmolLM2-135M:

- the gate tests the headline it reports: a macro average (C-Eval) that drops 35 points while the
  pooled McNemar says p = 1, and a point-weighted Gaokao-Bench whose exact sign-flip p is 2^6/2^11;
- tiny n (1..3 items): "inconclusive (too few items to reach alpha)", never a regression at p = 1/(B+1);
- Wilson intervals against a hand computation and scipy; a weighted headline's effective n;
- one notion of comparable: a chat-templated run is refused by compare and flagged by report and
  leaderboard alike; runs of one model merge into one leaderboard row;
- CSV exports: numbers in numeric columns, markers in their own.

Runs are forced into known patterns the way tests/real_runs.py degrades one: the stored
log-likelihood of an item's gold choice is moved by 1000 nats (down: the item turns wrong; up: it
turns right), then `score` re-scores the run dir. Nothing else changes."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
from real_runs import _jsonl

from xverse_eval import cli, comparable
from xverse_eval.compare import compare, mcnemar_exact, paired_ci_binary, sign_flip, smallest_p
from xverse_eval.metrics import effective_n, wilson
from xverse_eval.report import load_results, render
from xverse_eval.report import leaderboard as lb
from xverse_eval.report.runs import effective_n as result_effective_n

GEO, DOCTOR = "middle_school_geography", "physician"  # C-Eval val: 12 and 49 items (short questions: a fast run)
ENGLISH, MATH = "2010-2013_English_MCQs", "2010-2022_Math_II_MCQs"  # Gaokao: 105 and 1090 points


# ----------------------------------------------------------------------------- helpers


def make_run(model, data_dir: str, root: Path, name: str, tasks: str, limit, **kwargs) -> Path:
    """A real run dir ROOT/NAME of the real model (made once per test session)."""
    from xverse_eval.evaluate import parse_tasks, run

    path = root / name
    if not (path / "results.json").exists():
        run("smollm2-135m", parse_tasks(tasks), data_dir=data_dir, limit=limit, output_dir=str(path), model=model, **kwargs)
    return path


def force(src: Path, dst: Path, right=(), wrong=()) -> Path:
    """A copy of run dir SRC at DST where the items with ids in RIGHT are right and those in WRONG
    wrong (their gold choice's stored log-likelihood moved by +-1000 nats), re-scored."""
    from xverse_eval.evaluate import score_run

    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    plan = {(row["task"], row["id"]): row for row in _jsonl(dst / "plan.jsonl")}
    shift = {}
    for samples in sorted((dst / "samples").glob("*.jsonl")):
        for rec in _jsonl(samples):
            gold = plan[(rec["task"], rec["id"])]["requests"][rec["target"]]["key"]
            if rec["id"] in right and not rec["correct"]:
                shift[gold] = 1000.0
            elif rec["id"] in wrong and rec["correct"]:
                shift[gold] = -1000.0
    rows = _jsonl(dst / "responses.jsonl")
    for row in rows:
        row["response"]["logprob"] += shift.get(row["request"], 0.0)
    (dst / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    score_run(str(dst))
    return dst


def records(run: Path, task: str) -> list[dict]:
    return _jsonl(run / "samples" / f"{task}.jsonl")


def ids_of(run: Path, task: str, subset: str | None = None) -> list[str]:
    return [r["id"] for r in records(run, task) if subset is None or r["subset"] == subset]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "stats_runs"


# ----------------------------------------------------------------------------- intervals (no model)


def hand_wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927): (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), p = k/n."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_wilson_against_hand_computation_and_scipy():
    from scipy.stats import binomtest

    lo, hi = wilson(0 / 16, 16)
    assert lo == 0.0 and hi == pytest.approx(0.19360, abs=1e-5)  # 0/16: "0.0–19.4", not "0.0–0.0"
    lo, hi = wilson(3 / 5, 5)
    assert (lo, hi) == pytest.approx((0.23072, 0.88238), abs=1e-5)  # 3/5: "23.1–88.2", not "12.0–100.0"
    for k, n in [(0, 1), (1, 1), (1, 2), (2, 3), (0, 16), (3, 5), (10, 30), (700, 1383)]:
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k / n, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert wilson(k / n, n) == pytest.approx(hand_wilson(k, n), abs=1e-12)


def test_effective_n_of_weighted_means():
    assert effective_n([1.0] * 30) == pytest.approx(30)
    # macro over subsets of 12 and 40 items: weights 1/12 and 1/40; (sum w)^2 / sum w^2 = 4 / (1/12 + 1/40)
    assert effective_n([1 / 12] * 12 + [1 / 40] * 40) == pytest.approx(4 / (1 / 12 + 1 / 40))
    assert effective_n([1 / 12] * 12 + [1 / 40] * 40) < 52


def test_sign_flip_exact_small_n_and_its_floor():
    for m in (1, 2, 3, 6):
        p, method = sign_flip([-0.5] * m)
        assert method == "sign-flip (exact)" and p == pytest.approx(2 / 2 ** m) == pytest.approx(smallest_p(m))
    assert smallest_p(5) > 0.05 >= smallest_p(6)  # alpha = 0.05 needs at least 6 changed items
    assert sign_flip([0.0, 0.0]) == (1.0, "sign-flip (exact)")
    # equal weights, 0/1 scores: the sign-flip test is McNemar's (b = 7 down, c = 2 up)
    assert sign_flip([-1.0] * 7 + [1.0] * 2)[0] == pytest.approx(mcnemar_exact(7, 2), rel=1e-12)


def test_paired_interval_never_collapses():
    lo, hi = paired_ci_binary([1.0], [0.0], [1.0])  # one item, right -> wrong
    assert lo == -1.0 and 0 < hi < 0.2  # Newcombe: D = -1, upper sqrt(2) * u(0/1) - 1 = 0.122
    assert hi == pytest.approx(math.sqrt(2) * wilson(0, 1)[1] - 1, abs=1e-12)
    lo, hi = paired_ci_binary([1.0] * 10 + [0.0] * 20, [1.0] * 10 + [0.0] * 20, [1.0] * 30)  # no change
    assert lo < 0 < hi and lo == pytest.approx(-hi)


# ----------------------------------------------------------------------------- the gate on real runs


@pytest.mark.slow
def test_macro_headline_drop_fails_where_pooled_mcnemar_says_p_1(smollm2, data_dir, root, capsys):
    # C-Eval is a mean over subjects: 12 geography items weigh as much as 40 physician items
    real = make_run(smollm2, data_dir, root, "ceval", f"ceval:{GEO}:{DOCTOR}", 40)
    geo, doctor = ids_of(real, "ceval", GEO), ids_of(real, "ceval", DOCTOR)
    assert len(geo) == 12 and len(doctor) == 40
    base = force(real, root / "ceval_base", right=geo, wrong=doctor[:12])
    new = force(real, root / "ceval_new", wrong=geo, right=doctor[:12])  # 12 down in geography, 12 up in physician
    result = compare(base, new)
    (t,) = result.tasks
    assert t.discordant == (12, 12) and mcnemar_exact(12, 12) == 1.0  # the pooled test: no change at all
    old, cand = load_results(base)["results"]["ceval"], load_results(new)["results"]["ceval"]
    assert t.baseline == pytest.approx(old["metrics"]["acc"]) and t.new == pytest.approx(cand["metrics"]["acc"])
    assert t.delta == pytest.approx((-1 + 12 / 40) / 2)  # the headline drops 35 points
    assert t.test.startswith("sign-flip") and t.p < 0.05 and t.ci[1] < 0 and t.ci[0] <= t.delta <= t.ci[1]
    assert t.verdict == "regression" and result.exit_code == 1
    # the reverse change is a significant improvement, never a regression
    assert cli.main(["compare", str(new), str(base)]) == 0
    assert "| improvement |" in capsys.readouterr().out


@pytest.mark.slow
def test_point_weighted_gaokao_exact_p(smollm2, data_dir, root):
    real = make_run(smollm2, data_dir, root, "gaokao", f"gaokao:{ENGLISH}:{MATH}", 6)
    english, math_ii = ids_of(real, "gaokao", ENGLISH), ids_of(real, "gaokao", MATH)
    assert len(english) == len(math_ii) == 6
    base = force(real, root / "gaokao_base", right=math_ii, wrong=english)
    new = force(real, root / "gaokao_new", right=english, wrong=math_ii)
    assert load_results(new)["results"]["gaokao"]["metrics"]["acc"] == load_results(base)["results"]["gaokao"]["metrics"]["acc"] == 0.5
    (t,) = compare(base, new).tasks
    assert t.discordant == (6, 6) and t.delta == pytest.approx((105 - 1090) / (105 + 1090))  # micro 0, weighted -82.4 points
    # exact: only the 2^6 patterns with every math item down (and their mirror) reach |S|: p = 2 * 2^6 / 2^12
    assert t.test == "sign-flip (exact)" and t.p == pytest.approx(2 ** -5, rel=1e-9)
    assert t.verdict == "regression"
    # the report's interval of a weighted headline uses the effective n of its item weights
    run = load_results(base)
    w = [r["weight"] for r in records(base, "gaokao")]
    assert result_effective_n(run, "gaokao") == pytest.approx(effective_n(w)) and effective_n(w) < 12
    score = run["results"]["gaokao"]["metrics"]["acc_weighted"]
    lo, hi = wilson(score, effective_n(w))
    assert f"| {100 * lo:.1f}–{100 * hi:.1f} | 12 |" in render([run])


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_n_is_inconclusive_not_a_regression(smollm2, data_dir, root, capsys, n):
    real = make_run(smollm2, data_dir, root, f"piqa{n}", "piqa", n)
    every = ids_of(real, "piqa")
    base, new = force(real, root / f"piqa{n}_base", right=every), force(real, root / f"piqa{n}_new", wrong=every)
    (t,) = compare(base, new).tasks
    assert t.delta == -1.0 and t.p == pytest.approx(2 / 2 ** n) and t.min_p > 0.05  # all n items down: p = 2/2^n
    assert t.verdict == "inconclusive (too few items to reach alpha=0.05)"
    assert t.ci[0] == -1.0 and t.ci[1] > -1.0  # the interval does not collapse to a point
    assert cli.main(["compare", str(base), str(new)]) == 0  # does not fail the job ...
    out = capsys.readouterr().out
    assert "inconclusive (too few items to reach alpha=0.05): piqa" in out  # ... and says why
    assert f"{n} changed item(s) cannot give p below" in out
    if n == 3:  # alpha 0.5 is reachable with 3 items (p = 0.25): then it is a regression
        assert cli.main(["compare", str(base), str(new), "--alpha", "0.5"]) == 1
        capsys.readouterr()


# ----------------------------------------------------------------------------- comparable, exports


@pytest.fixture(scope="module")
def small(smollm2, data_dir, root) -> dict[str, Path]:
    """piqa (3 items) plain, with another variant, and through the chat template; mmlu:anatomy (2)."""
    from xverse_eval.chat import ChatOptions

    return {"plain": make_run(smollm2, data_dir, root, "piqa3", "piqa", 3),
            "variant": make_run(smollm2, data_dir, root, "piqa3_variant", "piqa:variant=lm-eval", 3),
            "chat": make_run(smollm2, data_dir, root, "piqa3_chat", "piqa", 3, chat_options=ChatOptions("")),
            "mmlu": make_run(smollm2, data_dir, root, "anatomy2", "mmlu:anatomy", 2)}


@pytest.mark.slow
def test_chat_template_run_is_incomparable_everywhere(small, capsys):
    plain, chat = load_results(small["plain"]), load_results(small["chat"])
    assert comparable.differences(plain, chat, "piqa") == [("chat template", False, True)]
    assert cli.main(["compare", str(small["plain"]), str(small["chat"])]) == 3  # compare refuses
    assert "piqa: chat template (False -> True)" in capsys.readouterr().err
    report = render([plain, chat])  # report: the chat column differs from the first (‡) and is not the card's protocol (†)
    assert "‡ PIQA: smollm2-135m [piqa3_chat] differs from the first run in chat template" in report
    assert "† PIQA (smollm2-135m [piqa3_chat]): chat template; the reported numbers used the default protocol." in report
    board = lb.build([plain, chat])  # leaderboard: flagged and left out of the average
    assert board["average_of"] == [] and "‡ runs differ in chat template: PIQA; not averaged." in board["notes"]
    assert [r["marks"]["piqa"] for r in board["rows"][:2]] == ["*‡", "*†‡"]


@pytest.mark.slow
def test_runs_of_one_model_merge_into_one_leaderboard_row(small):
    piqa, mmlu, chat = (load_results(small[k]) for k in ("plain", "mmlu", "chat"))
    board = lb.build([piqa, mmlu, chat])
    ours = [r for r in board["rows"] if r["kind"] == "run"]
    # the plain piqa and mmlu runs share no task: one row; the chat run is another protocol: its own row
    assert len(ours) == 2 and ours[0]["scores"]["piqa"] is not None and ours[0]["scores"]["mmlu"] is not None
    assert ours[0]["runs"] == [str(small["plain"]), str(small["mmlu"])] and ours[1]["scores"]["mmlu"] is None
    assert ours[0]["model"] == "smollm2-135m [piqa3+anatomy2]" and ours[1]["model"] == "smollm2-135m [piqa3_chat]"


@pytest.mark.slow
def test_csv_exports_keep_numbers_and_markers_apart(small):
    runs = [load_results(small["plain"]), load_results(small["variant"])]
    table = list(csv.DictReader(io.StringIO(render(runs, "csv"))))
    (piqa,) = table
    first, second = "smollm2-135m [piqa3]", "smollm2-135m [piqa3_variant]"
    acc = runs[1]["results"]["piqa"]["metrics"]["acc"]
    assert float(piqa[f"{second} (ours)"]) == pytest.approx(100 * acc, abs=0.005) and piqa[f"{second} marks"] == "*†‡"
    assert piqa[f"{first} marks"] == "*" and int(piqa[f"{first} n"]) == 3 and piqa["Shots"] == "0"
    lo, hi = wilson(acc, 3)
    assert (float(piqa[f"{second} 95% CI low"]), float(piqa[f"{second} 95% CI high"])) == pytest.approx((100 * lo, 100 * hi), abs=0.005)
    assert piqa[f"{first} Δ vs XVERSE-65B"] == "" and float(piqa["XVERSE-65B"]) == 80.4  # no Δ for a --limit run
    rows = list(csv.DictReader(io.StringIO(lb.render(runs, "csv"))))
    ours = {r["Model"]: r for r in rows if r["Kind"] == "ours"}
    assert float(ours[second]["PIQA"]) == pytest.approx(100 * acc, abs=0.005) and ours[second]["PIQA marks"] == "*†‡"
    assert float(ours[second]["PIQA 95% CI low"]) == pytest.approx(100 * lo, abs=0.005)
    for row in rows:  # every numeric column parses as a number or is empty
        for key in ("PIQA", "PIQA 95% CI low", "PIQA 95% CI high"):
            assert row[key] == "" or float(row[key]) >= 0
