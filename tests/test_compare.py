"""The regression gate on real run dirs of the real SmolLM2-135M (tests/real_runs.py): exit 0 on a
rerun, 1 on a run with a real injected drop, 3 for a changed prompt, 2 on bad arguments; the exact
McNemar p-value against a hand computation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from real_runs import _jsonl, real_runs

from xverse_eval import cli
from xverse_eval.compare import bootstrap_ci, compare, mcnemar_exact, sign_flip


@pytest.fixture(scope="module")
def runs(smollm2, data_dir, tmp_path_factory):
    return real_runs(smollm2, data_dir, tmp_path_factory.getbasetemp() / "real_runs")


def records(run: Path, task: str) -> dict[str, bool]:
    return {r["id"]: r["correct"] for r in _jsonl(run / "samples" / f"{task}.jsonl")}


def hand_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar: 2 * P[X <= min(b, c)] for X ~ Binomial(b + c, 1/2), at most 1."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n) if n else 1.0


@pytest.mark.slow
def test_rerun_of_the_same_config_passes(runs, capsys, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert records(runs["base"], "piqa") == records(runs["rerun"], "piqa")  # greedy scoring is deterministic
    assert cli.main(["compare", str(runs["base"]), str(runs["rerun"])]) == 0
    out = capsys.readouterr().out
    assert "**PASS**: no task regressed" in out
    assert out.count("pass (within tolerance)") == 2 and "| +0.00 |" in out
    assert summary.read_text() == "earlier step\n" + out  # appended, not replaced


@pytest.mark.slow
def test_injected_drop_fails_the_gate(runs, capsys, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    base, bad = records(runs["base"], "mmlu"), records(runs["degraded"], "mmlu")
    assert sum(base.values()) >= 6 and not any(bad.values())  # every right answer turned wrong
    assert cli.main(["compare", str(runs["base"]), str(runs["degraded"])]) == 1
    out = capsys.readouterr().out
    assert "**FAIL**: regression in mmlu, piqa" in out and "| **regression** |" in out
    assert "**FAIL**" in summary.read_text()
    # the same drop within a tolerance larger than it passes
    drop = 100 * max(sum(records(runs["base"], t).values()) / 30 for t in ("mmlu", "piqa"))
    assert cli.main(["compare", str(runs["base"]), str(runs["degraded"]), "--tolerance", f"{drop + 0.1}"]) == 0
    assert capsys.readouterr().out.count("pass (within tolerance)") == 2
    # and --tasks limits the gate to the tasks named
    assert cli.main(["compare", str(runs["base"]), str(runs["degraded"]), "--tasks", "piqa"]) == 1
    out = capsys.readouterr().out
    assert "| PIQA |" in out and "| MMLU" not in out


@pytest.mark.slow
def test_mcnemar_p_equals_the_hand_computation(runs):
    result = compare(runs["base"], runs["degraded"])
    for t in result.tasks:
        base, new = records(runs["base"], t.task), records(runs["degraded"], t.task)
        b = sum(base[i] and not new[i] for i in base)
        c = sum(new[i] and not base[i] for i in base)
        assert t.test == "McNemar" and t.discordant == (b, c) and c == 0
        assert t.p == pytest.approx(hand_mcnemar(b, c), rel=1e-12)
        assert t.p == pytest.approx(2 * 0.5 ** b, rel=1e-12)  # all discordant pairs one way: 2 / 2^b
        assert t.ci[1] < 0 and t.ci[0] <= t.delta <= t.ci[1]
    # textbook values: b=1, c=6 -> 2 * (1 + 7) / 128
    assert mcnemar_exact(1, 6) == pytest.approx(0.125, rel=1e-12)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


@pytest.mark.slow
def test_changed_prompt_is_incomparable(runs, capsys):
    assert cli.main(["compare", str(runs["base"]), str(runs["variant"]), "--tasks", "piqa"]) == 3
    err = capsys.readouterr().err
    assert "incomparable" in err and "piqa: variant ('default' -> 'lm-eval')" in err
    assert cli.main(["compare", str(runs["base"]), str(runs["variant"])]) == 3  # base's mmlu is not in the new run
    assert "mmlu: not in the new run" in capsys.readouterr().err


@pytest.mark.slow
def test_changed_item_set_is_incomparable(runs, tmp_path, capsys):
    import shutil

    other = tmp_path / "fewer"
    shutil.copytree(runs["rerun"], other)
    path = other / "samples" / "piqa.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))
    assert cli.main(["compare", str(runs["base"]), str(other), "--tasks", "piqa"]) == 3
    assert "piqa: item set differs (1 only in the baseline" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_arguments_exit_2(runs, tmp_path, capsys):
    base = str(runs["base"])
    assert cli.main(["compare", base]) == 2
    assert cli.main(["compare", base, base, "--alpha", "1.5"]) == 2
    assert cli.main(["compare", base, base, "--tolerance", "-1"]) == 2
    assert cli.main(["compare", base, str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert cli.main(["compare", base, base, "--tasks", "nosuchtask"]) == 2  # a task neither run has: a typo
    assert "nosuchtask in neither run" in capsys.readouterr().err


def test_paired_bootstrap_for_non_binary_scores():
    # pass@k-like per-item values in [0, 1]: a constant shift of 0.2 on 40 items
    diffs = [0.2] * 40
    (lo, hi), (p, _) = bootstrap_ci(diffs, [1.0] * 40), sign_flip(diffs)
    assert lo == hi == pytest.approx(0.2) and p < 0.001
    noisy = [0.25, -0.25] * 20  # mean 0: no evidence of a change
    (lo, hi), (p, _) = bootstrap_ci(noisy, [1.0] * 40), sign_flip(noisy)
    assert lo < 0 < hi and p == 1.0
    mixed = [0.5, -0.1, 0.3, 0.0] * 10  # mean 0.175 > 0, clearly
    (lo, hi), (p, _) = bootstrap_ci(mixed, [1.0] * 40), sign_flip(mixed)
    assert 0 < lo < 0.175 < hi and p < 0.01
