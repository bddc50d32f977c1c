"""The run identity (xverse_eval/identity.py): response keys hold the compute version of the code
that produced them and the libraries' versions (issue 20, item 7), so after an upgrade that can
change responses, the same command recomputes instead of reporting the old release's numbers, and
says in one line what changed. Real run dirs of the deterministic fake model, real processes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from xverse_eval import cli, identity
from xverse_eval.identity import Identity, compute_identity, major_minor, response_key
from xverse_eval.types import LoglikelihoodRequest

DATA = os.environ.get("XVERSE_TEST_DATA")
needs_data = pytest.mark.skipif(not DATA or not Path(DATA, "mmlu").is_dir(), reason="needs the benchmark data: set XVERSE_TEST_DATA")

MODEL = {"model": "m", "path": "/m", "revision": "abc", "dtype": "float32", "backend": "transformers"}
TASKS = {"mmlu": {"version": "1", "prompt_hash": "p1", "data_revision": "d"}}
REQ = LoglikelihoodRequest("mmlu/x/0/0", "ctx", " A")


def test_compute_identity_names_backend_version_and_library_versions():
    import torch
    import transformers

    got = compute_identity(MODEL)
    assert got == {"backend": "transformers", "version": identity.COMPUTE_VERSIONS["transformers"],
                   "torch": ".".join(torch.__version__.split(".")[:2]), "transformers": ".".join(transformers.__version__.split(".")[:2])}
    assert compute_identity({"backend": "fake"}) == {"backend": "fake", "version": identity.COMPUTE_VERSIONS["fake"]}
    assert major_minor("no-such-package-here") is None


def test_response_key_changes_with_compute_version_and_library():
    base = Identity(MODEL, TASKS, None).response_key(REQ)
    bumped = Identity(MODEL, TASKS, None, compute={**compute_identity(MODEL), "version": 99}).response_key(REQ)
    other_torch = Identity(MODEL, TASKS, None, compute={**compute_identity(MODEL), "torch": "1.0"}).response_key(REQ)
    assert len({base, bumped, other_torch}) == 3
    assert response_key(MODEL, TASKS, REQ) != base  # a store opened without compute keys the old way


def test_run_dir_name_does_not_hold_the_compute_version():
    """An upgrade finds the run dir of the same command again (and says what changed there)."""
    a = Identity(MODEL, TASKS, 5).run_dir(None, "m")
    b = Identity(MODEL, TASKS, 5, compute={"backend": "transformers", "version": 99}).run_dir(None, "m")
    assert a == b and a.parent == Path("results/runs/m")
    assert Identity(MODEL, TASKS, 6).run_dir(None, "m") != a


def run_args(out: Path) -> list[str]:
    return ["run", "--model", "fake:3", "--tasks", "mmlu:anatomy", "--data-dir", DATA, "--limit", "4", "--output-dir", str(out)]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@needs_data
def test_changed_compute_version_recomputes_instead_of_reporting_old_numbers(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert cli.main(run_args(out)) == 0
    fresh = json.loads((out / "results.json").read_text())["xverse_eval"]["results"]["mmlu"]["metrics"]
    capsys.readouterr()
    # what an older release "computed": every stored answer now says choice A (index 0) is best
    stored = lines(out / "responses.jsonl")
    for row in stored:
        row["response"]["logprob"] = 0.0 if row["request"].endswith("/0") else -50.0
    (out / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stored))
    # same code: the stored responses are reused (re-scored, no model), so the numbers are the old ones
    trace = tmp_path / "trace-same.txt"
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(trace))
    assert cli.main(run_args(out)) == 0
    old = json.loads((out / "results.json").read_text())["xverse_eval"]["results"]["mmlu"]["metrics"]
    assert not trace.exists() and old != fresh
    capsys.readouterr()
    # a new compute version: the same command computes every response again and reports new numbers
    monkeypatch.setitem(identity.COMPUTE_VERSIONS, "fake", identity.COMPUTE_VERSIONS["fake"] + 1)
    trace = tmp_path / "trace-bumped.txt"
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(trace))
    assert cli.main(run_args(out)) == 0
    err = capsys.readouterr().err
    changed = [line for line in err.splitlines() if "compute changed" in line]
    assert len(changed) == 1, err
    assert f"version ({identity.COMPUTE_VERSIONS['fake'] - 1} -> {identity.COMPUTE_VERSIONS['fake']})" in changed[0]
    assert len(trace.read_text().split()) == len(stored)  # every request computed again
    again = json.loads((out / "results.json").read_text())["xverse_eval"]
    assert again["results"]["mmlu"]["metrics"] == fresh
    assert again["config"]["identity"]["compute"]["version"] == identity.COMPUTE_VERSIONS["fake"]
    assert len(lines(out / "responses.jsonl")) == 2 * len(stored)  # the old lines are kept, only ignored
    assert cli.main(["score", str(out)]) == 0  # `score` keys by the stored compute identity: the new lines
    assert json.loads((out / "results.json").read_text())["xverse_eval"]["results"]["mmlu"]["metrics"] == fresh


@needs_data
def test_run_dir_written_before_compute_versions_is_recomputed(tmp_path, monkeypatch, capsys):
    """A run dir of a release without compute versions (no identity.compute): its responses are of
    unknown code, so they are computed again, and the line says so."""
    from xverse_eval.evaluate import request_from_dict

    out = tmp_path / "run"
    assert cli.main(run_args(out)) == 0
    config = json.loads((out / "config.json").read_text())
    ident = Identity.from_dict(config["identity"])
    del config["identity"]["compute"]
    (out / "config.json").write_text(json.dumps(config))
    # the keys such a release wrote: the same, without the compute identity
    old_key = {ident.response_key(req): response_key(ident.model, ident.tasks, req)
               for row in lines(out / "plan.jsonl") for req in map(request_from_dict, row["requests"])}
    stored = lines(out / "responses.jsonl")
    (out / "responses.jsonl").write_text("".join(json.dumps({**r, "key": old_key[r["key"]]}) + "\n" for r in stored))
    capsys.readouterr()
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("XVERSE_EVAL_FAKE_TRACE", str(trace))
    assert cli.main(run_args(out)) == 0
    err = capsys.readouterr().err
    assert 'compute changed: backend (null -> "fake")' in err
    assert len(trace.read_text().split()) == len(stored)
