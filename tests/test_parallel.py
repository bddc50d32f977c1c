"""Scale-out under torchrun (xverse_eval/parallel.py) on CPU with gloo: sharding, per-rank response
files and their merge, a rank killed mid-run and resumed with another world size, several processes
and two simulated nodes giving the one-process results on the real SmolLM2, tensor parallel giving the
same predictions; memory planning and the XVERSE architecture (runner/memory.py, runner/xverse.py).

The torchrun runs are real `python -m torch.distributed.run ... -m xverse_eval run` process trees; each
rank loads its own model, so the real-model cases are few and combined (marked slow).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from xverse_eval import parallel
from xverse_eval.errors import EvalError
from xverse_eval.results import ResponseStore
from xverse_eval.runner import memory
from xverse_eval.runner.shape import Shape
from xverse_eval.runner.xverse import random_config, xverse_llama_config
from xverse_eval.types import GenerateRequest, Loglikelihood, LoglikelihoodRequest

DATA = os.environ.get("XVERSE_TEST_DATA")
needs_data = pytest.mark.skipif(not DATA or not Path(DATA, "mmlu").is_dir(), reason="needs XVERSE_TEST_DATA (make test sets it)")
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- sharding


def mc_requests(subject: str, n_items: int, shots: str, body: int = 40) -> list[LoglikelihoodRequest]:
    """Four letter requests per item sharing one context, all items of a subject sharing `shots`."""
    out = []
    for i in range(n_items):
        context = shots + f"Q{i} " + "x" * (body + 7 * i) + "\nAnswer:"
        out += [LoglikelihoodRequest(f"mmlu/{subject}/test/{i}/{k}", context, f" {c}", shared_prefix=shots) for k, c in enumerate("ABCD")]
    return out


def test_shard_covers_everything_once_keeps_groups_and_balances():
    requests = []
    for s, n in [("anatomy", 30), ("law", 90), ("virology", 20), ("astronomy", 25), ("nutrition", 35)]:
        requests += mc_requests(s, n, f"shots of {s} " * 20)
    for replicas in (1, 2, 3, 4):
        shards = [parallel.shard(requests, replicas, r) for r in range(replicas)]
        assert Counter(r.key for s in shards for r in s) == Counter(r.key for r in requests)  # each exactly once
        for s in shards:  # original order kept inside a shard, and no question split across replicas
            assert s == sorted(s, key=requests.index)
        items = {r.key.rsplit("/", 1)[0]: k for k, s in enumerate(shards) for r in s}
        assert all(items[r.key.rsplit("/", 1)[0]] == k for k, s in enumerate(shards) for r in s)
        # balanced by tokens: one replica's rows cost within 15% of the fair share
        cost = [sum(parallel.request_cost(r) for r in s if r.continuation == " A") for s in shards]
        assert max(cost) <= 1.15 * sum(cost) / replicas, (replicas, cost)
        # the same on every rank: computing it again gives the same shards
        assert shards == [parallel.shard(requests, replicas, r) for r in range(replicas)]


def test_shard_keeps_small_prefix_groups_whole_and_splits_one_huge_group():
    small = mc_requests("a", 4, "A" * 400) + mc_requests("b", 4, "B" * 400) + mc_requests("c", 4, "C" * 400) + mc_requests("d", 4, "D" * 400)
    shards = [parallel.shard(small, 2, r) for r in range(2)]
    for s in shards:  # every subject (prefix group) on one replica: its k-shot block computed once
        assert len({r.shared_prefix for r in s}) == 2
    # GSM8K-like: 100 generations all sharing one prefix: split, or one replica would do everything
    gens = [GenerateRequest(f"gsm8k/test/{i}/0", "FEWSHOT " * 50 + f"question {i}", 512, shared_prefix="FEWSHOT " * 50) for i in range(100)]
    sizes = [len(parallel.shard(gens, 4, r)) for r in range(4)]
    assert sum(sizes) == 100 and max(sizes) - min(sizes) <= 7, sizes


# ----------------------------------------------------------------------------- per-rank files


def test_store_merges_rank_files_and_cuts_only_its_own_torn_tail(tmp_path):
    model, tasks = {"model": "m"}, {"mmlu": {"version": "1", "prompt_hash": "p"}}
    reqs = [LoglikelihoodRequest(f"mmlu/x/{i}/A", f"ctx {i}", " A") for i in range(4)]
    rank0 = ResponseStore(tmp_path / "responses.rank0.jsonl", model, tasks)
    rank1 = ResponseStore(tmp_path / "responses.rank1.jsonl", model, tasks)
    rank0.append([(reqs[0], Loglikelihood(-1.0, True, 1))])
    rank1.append([(reqs[1], Loglikelihood(-2.0, False, 1))])
    (tmp_path / "responses.jsonl").write_text("")
    with open(tmp_path / "responses.rank1.jsonl", "ab") as fh:
        fh.write(b'{"key": "torn')  # rank 1 died inside a write
    # a one-process resume (another world size) sees both replicas' work, and leaves rank 1's file alone
    merged = ResponseStore(tmp_path / "responses.jsonl", model, tasks)
    assert merged.get(reqs[0]) == Loglikelihood(-1.0, True, 1) and merged.get(reqs[1]) == Loglikelihood(-2.0, False, 1)
    assert merged.get(reqs[2]) is None
    assert (tmp_path / "responses.rank1.jsonl").read_bytes().endswith(b'{"key": "torn')
    # rank 1 of a new job owns the file: it cuts the torn bytes before appending
    again = ResponseStore(tmp_path / "responses.rank1.jsonl", model, tasks)
    again.append([(reqs[3], Loglikelihood(-3.0, True, 1))])
    lines = (tmp_path / "responses.rank1.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["key"] for line in lines)


# ----------------------------------------------------------------------------- memory planning and XVERSE


def test_param_count_matches_the_module_and_the_published_sizes():
    from transformers import LlamaForCausalLM

    for kv in (64, 8):
        config = random_config(f"random:xverse-65b:kv_heads={kv}")
        with torch.device("meta"):
            module = LlamaForCausalLM(config)
        assert memory.param_count(config) == sum(p.numel() for p in module.parameters())
    # the XVERSE-65B architecture: 66.4B with MHA, 57.0B with 8 KV heads
    assert round(memory.param_count(random_config("random:xverse-65b")) / 1e9, 1) == 66.4
    assert round(memory.param_count(random_config("random:xverse-65b:kv_heads=8")) / 1e9, 1) == 57.0


def test_memory_check_names_the_tp_size_that_fits():
    config = random_config("random:xverse-65b")
    gib = memory.GIB
    # 66.4B bf16 = 123.7 GiB of weights: not on an 80 GiB GPU, yes at tp 2 (61.9 + 1.5 whole embeddings)
    with pytest.raises(EvalError, match=r"use --tp-size 2 \(torchrun --nproc-per-node 2 or a multiple of it; 8 GPUs make 4 replicas\)") as exc:
        memory.check(config, torch.bfloat16, "cuda:0", 1, name="random:xverse-65b", world_size=8, free=79 * gib)
    assert "\n" not in str(exc.value) and "123.7" in str(exc.value)
    assert memory.check(config, torch.bfloat16, "cuda:0", 2, free=79 * gib).total < 79 * gib
    # a 24 GiB GPU needs 8 ways
    with pytest.raises(EvalError, match="use --tp-size 8"):
        memory.check(config, torch.bfloat16, "cuda:0", 1, free=24 * gib)
    with pytest.raises(EvalError, match="no --tp-size up to 8 fits"):
        memory.check(config, torch.bfloat16, "cuda:0", 1, free=8 * gib)
    assert memory.check(config, torch.bfloat16, "cpu", 1).weights > 0  # CPU: estimated, never refused


def test_each_process_gets_its_gpus():
    """One GPU per process when torchrun starts one per GPU; K consecutive ones for N replicas of K
    GPUs under --device-map (4 processes on 8 GPUs: 2 each); never two processes on one GPU."""
    assert [parallel.gpus_of(r, 8, 8) for r in (0, 7)] == [(0,), (7,)]
    assert [parallel.gpus_of(r, 4, 8) for r in range(4)] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert parallel.gpus_of(0, 1, 2) == (0, 1)
    with pytest.raises(EvalError, match="torchrun started 4 processes on this node, which has 2 GPUs"):
        parallel.gpus_of(3, 4, 2)


def test_memory_plans_every_mode_and_names_the_flag_that_fits():
    """From the config alone: tensor parallel and a device map over K GPUs, with the KV room left on
    the fullest GPU; a device map that does not fit is told the --tp-size or the wider map that does."""
    config = random_config("random:xverse-65b")
    gib = memory.GIB
    split = memory.estimate(config, torch.bfloat16, 2, "device_map")
    # the last of 2 GPUs: 40 of 80 layers (61.9 GiB) and the LM head (1.5 GiB); half the KV
    assert split.weights == (40 * Shape.of(config).layer_params + 100534 * 8192 + 8192) * 2
    assert split.kv == memory.estimate(config, torch.bfloat16, 2).kv
    fits = {(e.mode, e.tp): room for e, room in memory.plan(config, torch.bfloat16, 79 * gib)}
    assert set(fits) == {("tp", 2), ("tp", 4), ("tp", 8), ("device_map", 2), ("device_map", 4), ("device_map", 8)}
    assert 9 * gib < fits[("tp", 2)] < fits[("tp", 4)]  # 2 x 80 GB leaves ~10 GiB of KV room per GPU
    with pytest.raises(EvalError, match=r"with --device-map over 2 GPUs, but cuda:0 has 40.0 GiB free: use --tp-size 4 .* "
                                        r"or --device-map auto over 4 GPUs in one process") as exc:
        memory.check(config, torch.bfloat16, "cuda:0", 2, free=40 * gib, mode="device_map")
    assert "\n" not in str(exc.value)
    # heads that no --tp-size splits (a 7-head model): only a device map is offered
    from xverse_eval.runner.xverse import ARCHITECTURES

    odd = {**ARCHITECTURES["xverse-65b"], "num_attention_heads": 56, "num_key_value_heads": 7, "head_dim": 128}  # a config.json
    with pytest.raises(EvalError, match=r"use --device-map auto over 2 GPUs \(one process; its heads do not split"):
        memory.check(odd, torch.bfloat16, "cuda:0", 1, free=79 * gib)


def test_xverse_config_maps_to_llama_fields():
    raw = {"model_type": "xverse", "architectures": ["XverseForCausalLM"], "auto_map": {"AutoConfig": "configuration_xverse.XverseConfig"},
           "hidden_size": 8192, "intermediate_size": 22016, "num_attention_heads": 64, "num_hidden_layers": 80,
           "max_position_embeddings": 16384, "rms_norm_eps": 1e-6, "vocab_size": 100534, "rope_theta": 500000,
           "tie_word_embeddings": False, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1}
    config = xverse_llama_config(raw)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.max_position_embeddings) == (8192, 80, 22016, 16384)
    assert config.num_key_value_heads == 64  # absent: MHA
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope["rope_theta"] == 500000
    assert xverse_llama_config({**raw, "num_key_value_heads": 8}).num_key_value_heads == 8
    with pytest.raises(EvalError, match="not an XVERSE config"):
        xverse_llama_config({**raw, "model_type": "llama"})


def test_random_spec_errors_are_one_line():
    for spec, message in [("random:gpt-9", "ARCH one of"), ("random:xverse-65b:layers=x", "layers must be an integer"),
                          ("random:xverse-65b:color=red", "unknown option 'color'"), ("random:xverse-65b:kv_heads=7", "do not divide")]:
        with pytest.raises(EvalError, match=message):
            random_config(spec)


# ----------------------------------------------------------------------------- torchrun runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int, cwd: Path, env: dict | None = None, nnodes: int = 1, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """`torchrun --nproc-per-node nproc -m xverse_eval ARGS`; with nnodes > 1, that many torchrun
    processes on localhost meeting at a c10d rendezvous (simulated nodes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XVERSE_EVAL_PROGRESS_EVERY": "0", "PYTHONPATH": str(ROOT), **(env or {})}
    if nnodes == 1:
        launch = [["--standalone", "--nproc-per-node", str(nproc)]]
    else:
        port = free_port()
        launch = [["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "xverse-test", "--node-rank", str(n)] for n in range(nnodes)]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *a, "-m", "xverse_eval", *args], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in launch]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def stored(run: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(run.glob("responses*.jsonl")) for line in f.read_text().splitlines() if line.strip()]


def samples(run: Path) -> dict:
    return {(row["task"], row["id"]): row for f in sorted((run / "samples").glob("*.jsonl")) for row in map(json.loads, f.read_text().splitlines())}


@needs_data
def test_rank_killed_mid_run_resumes_with_another_world_size(tmp_path):
    """Fake model (the pipeline is under test): 2 ranks, rank 1 SIGKILLs itself after storing its
    second batch; torchrun stops the job. The same command on 3 ranks finishes it: every request
    stored exactly once over all files, results equal to a one-process run."""
    args = ["run", "--model", "fake:7", "--tasks", "mmlu:anatomy:astronomy,gsm8k", "--data-dir", DATA, "--limit", "6",
            "--batch-size", "4", "--output-dir", str(tmp_path / "par")]
    killed = torchrun(args, 2, tmp_path, env={"XVERSE_EVAL_FAULT": "appended@2", "XVERSE_EVAL_FAULT_RANK": "1"})[0]
    assert killed.returncode != 0, killed.stderr[-2000:]
    before = stored(tmp_path / "par")
    rank1 = [json.loads(x) for x in (tmp_path / "par" / "responses.rank1.jsonl").read_text().splitlines()]
    assert len(rank1) == 8, "rank 1 stored two batches of 4, then died"
    assert not (tmp_path / "par" / "results.json").exists()
    done = torchrun(args, 3, tmp_path)[0]
    assert done.returncode == 0, done.stderr[-3000:]
    after = stored(tmp_path / "par")
    keys = Counter(row["key"] for row in after)
    assert max(keys.values()) == 1, "a response stored twice"
    assert len(keys) == 2 * 6 * 4 + 6, "12 MMLU questions x 4 letters + 6 GSM8K generations"
    assert {row["key"] for row in before} <= set(keys)
    assert done.stdout.count("run dir:") == 1  # one report, from rank 0
    subprocess.run([sys.executable, "-m", "xverse_eval", *args[:-1], str(tmp_path / "one")], cwd=tmp_path, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert samples(tmp_path / "par") == samples(tmp_path / "one")
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    par = json.loads((tmp_path / "par" / "results.json").read_text())
    assert par["results"] == one["results"]


def assert_same_as(reference: dict, run: Path, tol: float = 1e-4) -> None:
    """Same predictions and correctness for every item; scores equal up to float32 summation order."""
    got = samples(run)
    assert got.keys() == reference.keys()
    for key, ref in reference.items():
        row = got[key]
        assert (row["prediction"], row["correct"]) == (ref["prediction"], ref["correct"]), key
        assert row["extra"].get("generation") == ref["extra"].get("generation"), key  # greedy text, token for token
        ref_scores = ref["extra"].get("choice_scores")  # {"logprob": [one per choice], ...}
        if ref_scores:
            assert row["extra"]["choice_scores"].keys() == ref_scores.keys(), key
            for name, values in ref_scores.items():
                assert row["extra"]["choice_scores"][name] == pytest.approx(values, abs=tol), (key, name)


@pytest.mark.slow
@needs_data
def test_torchrun_3_ranks_2_nodes_and_tp_match_one_process(tmp_path, smollm2):
    """Real SmolLM2-135M, MMLU anatomy + GSM8K (3 questions, 3 generations): 3 ranks on one node, 2
    simulated nodes on localhost, and tensor parallel over 3 ranks (9 heads, 3 KV heads, MLP 1536)
    each give the one-process predictions."""
    from xverse_eval.evaluate import parse_tasks, run

    tasks = "mmlu:anatomy,gsm8k"
    ref_dir, _ = run("smollm2-135m", parse_tasks(tasks), data_dir=DATA, limit=3, output_dir=str(tmp_path / "one"), model=smollm2)
    ref_dir = Path(ref_dir)
    reference = samples(ref_dir)
    assert len(reference) == 6
    common = ["run", "--model", "smollm2-135m", "--tasks", tasks, "--data-dir", DATA, "--limit", "3", "--device", "cpu"]
    three = torchrun([*common, "--output-dir", str(tmp_path / "three")], 3, tmp_path)[0]
    assert three.returncode == 0, three.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "three").glob("responses*.jsonl")) == [f"responses.rank{r}.jsonl" for r in range(3)]
    assert_same_as(reference, tmp_path / "three")
    nodes = torchrun([*common, "--output-dir", str(tmp_path / "nodes")], 1, tmp_path, nnodes=2)
    assert all(p.returncode == 0 for p in nodes), nodes[0].stderr[-2000:] + nodes[1].stderr[-2000:]
    assert_same_as(reference, tmp_path / "nodes")
    tp = torchrun([*common, "--tp-size", "3", "--output-dir", str(tmp_path / "tp")], 3, tmp_path)[0]
    assert tp.returncode == 0, tp.stderr[-3000:]
    assert [p.name for p in (tmp_path / "tp").glob("responses*.jsonl")] == ["responses.rank0.jsonl"]  # one replica, one writer
    assert_same_as(reference, tmp_path / "tp")


@needs_data
def test_tp_size_without_torchrun_is_one_line(tmp_path, capsys):
    from xverse_eval import cli

    code = cli.main(["run", "--model", "fake:1", "--tasks", "mmlu:anatomy", "--data-dir", DATA, "--limit", "1",
                     "--tp-size", "2", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--tp-size 2 needs 2 processes: launch with torchrun --nproc-per-node 2" in err


@needs_data
def test_random_xverse_tp2_equals_tp1(tmp_path, smollm2):
    """The random XVERSE architecture (toy widths) scored in one process and split over 2 tensor-parallel
    ranks: same weights from the same seed whatever the split, so the same log-likelihoods."""
    tok = tmp_path / "tokenizer"
    smollm2.tokenizer.save_pretrained(tok)  # any real tokenizer will do: the weights are random
    common = ["run", "--model", f"random:xverse-tiny:layers=2:tokenizer={tok}", "--tasks", "mmlu:anatomy", "--data-dir", DATA,
              "--limit", "4", "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "xverse_eval", *common, "--output-dir", str(tmp_path / "tp1")], cwd=tmp_path, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    tp = torchrun([*common, "--tp-size", "2", "--output-dir", str(tmp_path / "tp2")], 2, tmp_path)[0]
    assert tp.returncode == 0, tp.stderr[-3000:]
    one = json.loads((tmp_path / "tp1" / "config.json").read_text())["identity"]["model"]
    assert one["random"]["seed"] == 0 and one["backend"] == "transformers-random"
    assert one == json.loads((tmp_path / "tp2" / "config.json").read_text())["identity"]["model"]
    assert_same_as(samples(tmp_path / "tp1"), tmp_path / "tp2")
