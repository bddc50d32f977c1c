"""Report, leaderboard, plot and the lm-eval layout of results.json, on real run dirs of the real
SmolLM2-135M (tests/real_runs.py).

Golden files: tests/golden/report/*.md. After a deliberate change (a template, the table layout),
regenerate them with `UPDATE_GOLDEN=1 make test` (or the same variable on pytest) and review the diff.
The git sha and package version of the run lines are replaced by placeholders before comparing."""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
from real_runs import real_runs

from xverse_eval import cli
from xverse_eval.errors import EvalError
from xverse_eval.report import load_results, render
from xverse_eval.report import leaderboard as lb
from xverse_eval.report.runs import reported

GOLDEN = Path(__file__).parent / "golden" / "report"


@pytest.fixture(scope="module")
def runs(smollm2, data_dir, tmp_path_factory):
    return real_runs(smollm2, data_dir, tmp_path_factory.getbasetemp() / "real_runs")


def normalised(text: str) -> str:
    return re.sub(r"xverse-eval \S+, git \S+", "xverse-eval VERSION, git SHA", text)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(normalised(text), encoding="utf-8")
    assert normalised(text) == path.read_text(encoding="utf-8"), f"{path} differs (UPDATE_GOLDEN=1 regenerates it)"


# ----------------------------------------------------------------------------- results.json


@pytest.mark.slow
def test_results_json_renders_with_lm_eval_and_type_checks(runs):
    pytest.importorskip("lm_eval", reason="lm-eval is a test dependency (make test installs it)")
    from lm_eval.result_schema import EvalResults
    from lm_eval.utils import make_table
    from pydantic import TypeAdapter, ValidationError

    data = json.loads((runs["base"] / "results.json").read_text())
    TypeAdapter(EvalResults).validate_python(data, strict=True)
    ours = data["xverse_eval"]
    acc = ours["results"]["piqa"]["metrics"]["acc"]
    assert data["results"]["piqa"]["acc,none"] == acc and data["results"]["piqa"]["sample_len"] == 30
    assert data["group_subtasks"] == {"mmlu": ["mmlu_anatomy"], "piqa": []}
    assert data["n-samples"]["piqa"] == {"original": 1838, "effective": 30}
    assert data["n-samples"]["mmlu"] == {"original": 135, "effective": 30}  # anatomy test has 135 questions
    assert data["versions"]["piqa"] == ours["results"]["piqa"]["version"] and data["n-shot"]["mmlu"] == 5
    table = make_table(data)
    assert re.search(rf"\|piqa\s*\|\s*{re.escape(str(ours['results']['piqa']['version']))}\|none\s*\|\s*0\|acc\s*\|↑\s*\|\s*{acc:.4f}\|±", table)
    assert " - anatomy" in table and "acc" in make_table(data, "groups")
    bad = copy.deepcopy(data)
    bad["results"]["piqa"]["acc,none"] = "0.5"  # a string where lm-eval expects a number: the check must catch it
    with pytest.raises(ValidationError):
        TypeAdapter(EvalResults).validate_python(bad, strict=True)


@pytest.mark.slow
def test_readers_take_our_block(runs):
    run = load_results(runs["base"])
    assert run["schema_version"] == "xverse-eval/2" and run["status"] == "partial" and set(run["results"]) == {"mmlu", "piqa"}


def test_old_and_foreign_results_files(tmp_path):
    old = {"schema_version": "xverse-eval/1", "status": "complete", "results": {}, "config": {"model": {"name": "m"}}}
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert load_results(tmp_path)["schema_version"] == "xverse-eval/1"  # runs made before the lm-eval layout still load
    (tmp_path / "results.json").write_text(json.dumps({"results": {"piqa": {"acc,none": 0.5}}}))  # lm-eval's own file
    with pytest.raises(EvalError, match="not an xverse-eval results file"):
        load_results(tmp_path)


# ----------------------------------------------------------------------------- report


@pytest.mark.slow
def test_report_golden_one_run(runs):
    text = render([load_results(runs["base"])])
    check_golden("one_run.md", text)
    assert "| English QA | MMLU (anatomy) | 5-shot |" in text  # one subject is not "MMLU"
    assert "(1) " not in text and "†" not in text and "‡" not in text  # no row carries those footnotes
    assert "shared/" not in text and "results/reported_scores.json" in text
    row = next(line for line in text.splitlines() if line.startswith("| Reasoning | PIQA |"))
    assert row.split(" | ")[6] == "-"  # no Δ for a --limit run


@pytest.mark.slow
def test_report_golden_two_runs_of_one_model(runs):
    text = render([load_results(runs["base"]), load_results(runs["variant"])])
    check_golden("two_runs.md", text)
    header = text.splitlines()[2]
    assert "smollm2-135m [base] (ours) | 95% CI | n | Δ vs XVERSE-65B | smollm2-135m [variant] (ours) | 95% CI | n |" in header
    assert "† PIQA (smollm2-135m [variant]): variant `lm-eval`" in text
    assert "‡ PIQA: smollm2-135m [variant] differs from the first run in variant, limit; not the same measurement." in text
    assert "| 49.0–94.3 | 10 | - |" in text  # the second run's own interval (Wilson, 8/10) and n


@pytest.mark.slow
def test_delta_only_for_full_runs(runs):
    run = load_results(runs["base"])
    full = copy.deepcopy(run)
    full["results"]["piqa"]["limit"] = None
    full["config"]["identity"]["tasks"]["piqa"]["subsets"] = "all"
    score = full["results"]["piqa"]["metrics"]["acc"]
    row = next(line for line in render([full]).splitlines() if line.startswith("| Reasoning | PIQA |"))
    assert row.split(" | ")[6] == f"{100 * score - 80.4:+.1f}"


def test_single_answer_footnote_only_with_its_rows():
    base = {"schema_version": "xverse-eval/2", "status": "complete", "config": {"model": {"name": "m"}, "identity": {"tasks": {}}},
            "results": {"gaokao": {"task": "gaokao", "version": "1", "metric": "acc", "metrics": {"acc": 0.5, "acc_stderr": 0.01},
                                   "groups": {}, "n": 1383, "shots": 5, "variant": "default", "prompt_hash": "h", "data_revision": "r",
                                   "split": "test", "limit": None, "notes": []}}}
    text = render([base])
    assert f"(1) {reported()['footnote_1']}" in text and "| Gaokao-Bench (1) | 5-shot | 50.0 | 47.4–52.6 | 1383 | -23.9 |" in text


# ----------------------------------------------------------------------------- leaderboard


@pytest.mark.slow
def test_leaderboard_golden_and_formats(runs, capsys):
    dirs = [str(runs["base"]), str(runs["degraded"]), str(runs["variant"])]
    assert cli.main(["leaderboard", *dirs]) == 0
    text = capsys.readouterr().out
    check_golden("leaderboard.md", text.rstrip("\n") + "\n")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    # PIQA mixes two variants (flagged, not averaged) and the variant run has no MMLU: nothing to average
    assert rows[0] == "| Model | Kind | MMLU (anatomy) | PIQA | Average |"
    assert len(rows) == 1 + 3 + 6 and sum("| reported |" in r for r in rows) == 6  # header, 3 runs, 6 reported
    assert "| smollm2-135m [variant] | ours | - | 80.0*†‡ | - |" in text and "PIQA; not averaged" in text
    # two runs of one configuration: the average names what it averages, and --sort orders by it
    same = [load_results(d) for d in dirs[:2]]
    board = json.loads(lb.render(same, "json", sort="average"))
    assert board["average_title"] == "Average (MMLU (anatomy), PIQA)"
    averages = [r["average"] for r in board["rows"]]
    assert board["rows"][0]["model"] == "GPT-4" and averages[0] == pytest.approx((86.4 + 89.2) / 2, abs=0.01)
    assert averages == sorted(averages, reverse=True) and board["rows"][-1]["model"] == "smollm2-135m [degraded]"
    base = board["rows"][[r["model"] for r in board["rows"]].index("smollm2-135m [base]")]
    assert base["average"] == pytest.approx((base["scores"]["mmlu"] + base["scores"]["piqa"]) / 2, abs=0.01)
    csv_text = lb.render(same, "csv", sort="PIQA")
    assert csv_text.splitlines()[0] == ("Model,Kind,MMLU (anatomy),PIQA,\"Average (MMLU (anatomy), PIQA)\",MMLU (anatomy) marks,PIQA marks,"
                                        "MMLU (anatomy) 95% CI low,MMLU (anatomy) 95% CI high,PIQA 95% CI low,PIQA 95% CI high")
    assert csv_text.splitlines()[1].startswith("GPT-4,reported,86.4,89.2,")
    assert cli.main(["leaderboard", *dirs, "--sort", "nope"]) == 2
    assert "no such column" in capsys.readouterr().err


def test_xverse_suite_is_the_card_order():
    from xverse_eval.evaluate import parse_tasks

    names = [s.name for s in parse_tasks("xverse")]
    assert names == [r["task"] for r in reported()["rows"]] and len(names) == 11
    assert [s.name for s in parse_tasks("xverse,mmlu:variant=x")][3] == "mmlu"  # no duplicate; the option applies


# ----------------------------------------------------------------------------- plot


@pytest.mark.slow
def test_plot_png_opens_with_labelled_bars(runs, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from xverse_eval.report.plot import draw

    run_dicts = [load_results(runs["base"]), load_results(runs["variant"])]
    fig = draw(run_dicts)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    piqa = run_dicts[0]["results"]["piqa"]["metrics"]["acc"]
    mmlu = run_dicts[0]["results"]["mmlu"]["metrics"]["acc"]
    # ours and reported bars carry their values, with the leaderboard's marks (PIQA mixes two variants: ‡)
    assert {f"{100 * mmlu:.1f}*", f"{100 * piqa:.1f}*‡", "80.4", "86.4"} <= texts
    ticks = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    assert {"MMLU (anatomy)", "PIQA"} <= ticks
    assert {ax.get_title() for ax in fig.axes} == {"English QA", "Reasoning"}
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert "smollm2-135m [base] (ours)" in legend and "XVERSE-65B (reported)" in legend
    out = tmp_path / "plot.png"
    assert cli.main(["report", str(runs["base"]), str(runs["variant"]), "--plot", str(out)]) == 0
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.05
