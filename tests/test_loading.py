"""Loading: the model identity is a fingerprint of what determines outputs, not a path (issue 11 §1);
a finished run resumes without loading the model (issue 14); --model-args reach from_pretrained
(issue 13); a GGUF file is converted once and then loads from its cache (issue 8)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from _tiny_llama import make_checkpoint, save_weights, train_tokenizer
from xverse_eval import cli
from xverse_eval.errors import EvalError
from xverse_eval.runner import load_model, model_identity
from xverse_eval.runner.fingerprint import HashIndex, normalize_model_args, parse_model_args
from xverse_eval.runner.load import Source, gguf_cache_dir, store_converted


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return train_tokenizer(data_dir)


@pytest.fixture
def checkpoint(tmp_path, data_dir, tokenizer) -> Path:
    return make_checkpoint(tmp_path / "tiny-llama", data_dir, tokenizer=tokenizer)


SESSION_CACHE = os.environ.get("XVERSE_EVAL_CACHE")  # where the session's SmolLM2 fixture keeps its conversion


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own hash index (the GGUF test sets its own cache root back to the shared one)."""
    monkeypatch.setenv("XVERSE_EVAL_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- --model-args


def test_parse_model_args():
    assert parse_model_args("attn_implementation=eager,trust_remote_code=true,max_position_embeddings=512,rope_scaling={\"a\": [1, 2]},"
                            "revision=main,subfolder=\"3\",ratio=0.5") == {
        "attn_implementation": "eager", "trust_remote_code": True, "max_position_embeddings": 512, "rope_scaling": {"a": [1, 2]},
        "revision": "main", "subfolder": "3", "ratio": 0.5}
    assert parse_model_args("") == {}
    with pytest.raises(EvalError, match="expected key=value"):
        parse_model_args("eager")
    assert normalize_model_args({"trust_remote_code": True, "revision": "v1", "x": 1}) == ({"x": 1}, True, "v1")
    with pytest.raises(EvalError, match="use --dtype"):
        normalize_model_args({"torch_dtype": "bfloat16"})


def test_model_args_reach_the_loader_and_the_identity(checkpoint):
    default = load_model(str(checkpoint), device="cpu")
    assert default.model.config._attn_implementation == "sdpa" and default.max_length == 4096
    model = load_model(str(checkpoint), device="cpu", model_args=parse_model_args("attn_implementation=eager,max_position_embeddings=512"))
    assert model.model.config._attn_implementation == "eager"
    assert model.max_length == 512  # a config override, visible where the runner reads the context
    assert model.fingerprint["model_args"] == {"attn_implementation": "eager", "max_position_embeddings": 512}
    assert model.fingerprint["trust_remote_code"] is False and default.fingerprint["model_args"] == {}
    assert model.fingerprint == model_identity(str(checkpoint), device="cpu", model_args={"attn_implementation": "eager", "max_position_embeddings": 512})


def test_model_args_from_the_command_line_are_recorded(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--model", str(checkpoint), "--tasks", "mmlu:anatomy", "--limit", "1", "--data-dir", data_dir, "--output-dir", str(out),
            "--model-args", "attn_implementation=eager", "--trust-remote-code"]
    assert cli.main(args) == 0, capsys.readouterr().err
    manifest = json.loads((out / "config.json").read_text())
    assert manifest["model"]["model_args"] == {"attn_implementation": "eager"} and manifest["model"]["trust_remote_code"] is True
    assert manifest["identity"]["model"]["model_args"] == {"attn_implementation": "eager"} and manifest["identity"]["model"]["trust_remote_code"] is True
    assert cli.main(["run", "--model", "x", "--tasks", "mmlu", "--model-args", "eager"]) == 2
    assert "--model-args 'eager': expected key=value" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_content_not_path(checkpoint, tmp_path, tokenizer, monkeypatch):
    first = model_identity(str(checkpoint), device="cpu")
    assert set(first["files"]) == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert first["dtype"] == "float32" and model_identity(str(checkpoint), device="cpu", dtype="bfloat16")["dtype"] == "bfloat16"
    # a copy elsewhere holds the same content
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in checkpoint.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert model_identity(str(copy), device="cpu")["files"] == first["files"]
    # weights overwritten with others of the same size, the old mtime put back: still a new identity
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    save_weights(checkpoint, len(tokenizer), seed=1)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    second = model_identity(str(checkpoint), device="cpu")
    assert second["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    assert {k: v for k, v in second["files"].items() if k != "model.safetensors"} == {k: v for k, v in first["files"].items() if k != "model.safetensors"}
    # a chat template or generation config is part of it too
    (checkpoint / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    assert model_identity(str(checkpoint), device="cpu")["files"]["generation_config.json"] != second["files"]["generation_config.json"]
    # the hash index: a second look reads no file again (its entries are keyed by size, mtime, ctime, inode)
    index = json.loads((tmp_path / "cache" / "file-hashes.json").read_text())
    assert index[str(weights.resolve())][4] == second["files"]["model.safetensors"]
    from xverse_eval.runner import fingerprint

    read = []
    real = fingerprint._sha256
    monkeypatch.setattr(fingerprint, "_sha256", lambda path: read.append(path.name) or real(path))
    assert HashIndex().hashes([weights]) == {weights: second["files"]["model.safetensors"]} and read == []
    weights.touch()
    assert HashIndex().hashes([weights]) == {weights: second["files"]["model.safetensors"]} and read == ["model.safetensors"]


def run_args(model: Path, data_dir: str, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--tasks", "mmlu:anatomy", "--limit", "3", "--data-dir", data_dir, *extra]


def logprobs(run: Path) -> list[float]:
    return [r["logprob"] for line in (run / "responses.jsonl").read_text().splitlines() for r in [json.loads(line)["response"]]]


def run_dir_of(stdout: str) -> Path:
    return Path(stdout.strip().splitlines()[-1].removeprefix("run dir: "))


def test_overwritten_weights_are_never_reused_and_a_finished_run_loads_no_model(checkpoint, data_dir, tokenizer, tmp_path, monkeypatch, capsys):
    """The issue's case: run, overwrite the folder's weights, run the same command again."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(run_args(checkpoint, data_dir)) == 0
    first = run_dir_of(capsys.readouterr().out)
    before = logprobs(first)
    results = json.loads((first / "results.json").read_text())["results"]
    assert len(before) == 12

    # the same command again, nothing left to compute: the model is not loaded
    from xverse_eval.runner.hf import HFModel

    def refuse(*a, **k):
        raise AssertionError("the model was loaded for a run with nothing to compute")

    monkeypatch.setattr(HFModel, "load", refuse)
    started = time.monotonic()
    assert cli.main(run_args(checkpoint, data_dir)) == 0
    again = time.monotonic() - started
    assert run_dir_of(capsys.readouterr().out) == first
    assert json.loads((first / "results.json").read_text())["results"] == results and logprobs(first) == before
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XVERSE_EVAL_CACHE", str(tmp_path / "cache"))
    print(f"no-op resume: {again:.2f} s")

    save_weights(checkpoint, len(tokenizer), seed=1)  # same size, other numbers
    assert cli.main(run_args(checkpoint, data_dir)) == 0
    second = run_dir_of(capsys.readouterr().out)
    assert second != first
    after = logprobs(second)
    assert len(after) == 12 and all(abs(a - b) > 1e-6 for a, b in zip(before, after))

    # the old run dir named explicitly: refused in one line naming the changed file, nothing written
    stored = (first / "responses.jsonl").read_bytes()
    assert cli.main(run_args(checkpoint, data_dir, "--output-dir", str(first))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs in: model.files.model.safetensors" in err
    assert (first / "responses.jsonl").read_bytes() == stored


def test_hub_revision_resolves_to_a_commit_offline(tmp_path, monkeypatch):
    """Offline, a hub id's revision is read from the local hub cache's refs (the commit the loader
    will use); a commit sha stays itself; an unknown ref stays as given."""
    from huggingface_hub import constants

    from xverse_eval.runner.fingerprint import hub_commit

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    refs = tmp_path / "hub" / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    sha = "0123456789abcdef0123456789abcdef01234567"
    (refs / "main").write_text(sha)
    assert hub_commit("org/name", None) == hub_commit("org/name", "main") == sha
    assert hub_commit("org/name", "v2") == "v2" and hub_commit("org/other", None) is None
    assert hub_commit("org/name", "f" * 40) == "f" * 40
    identity = model_identity("org/name", device="cpu")
    assert identity["revision"] == sha and identity["files"] is None


# ----------------------------------------------------------------------------- the GGUF cache


def test_converted_cache_is_written_whole_or_not_at_all(checkpoint, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model, tokenizer = LlamaForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    source = Source(str(tmp_path), "m.gguf", local=True)
    folder = tmp_path / "cache" / "gguf" / ("0" * 64) / "float32"

    class Broken:  # the process dies (here: fails) after the weights are written, before the tokenizer
        def save_pretrained(self, path):
            raise OSError(28, "No space left on device")

    store_converted(Broken(), model, folder, source)
    assert not folder.exists() and not list(folder.parent.glob(".tmp-*"))
    stale = folder.parent / ".tmp-float32-999999999"  # left by a killed process (no such pid)
    stale.mkdir()
    store_converted(tokenizer, model, folder, source)
    assert not stale.exists() and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@pytest.mark.slow
def test_gguf_second_load_is_fast_and_identical(smollm2, monkeypatch):
    """The session's model came from the GGUF file (converted then, or already cached); loading it
    again reads the converted copy: no GGUF parsing, the same logits, in seconds."""
    if SESSION_CACHE is None:  # the cache the session fixture filled
        monkeypatch.delenv("XVERSE_EVAL_CACHE")
    else:
        monkeypatch.setenv("XVERSE_EVAL_CACHE", SESSION_CACHE)
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: calls.append(k.get("gguf_file")) or real(cls, *a, **k)))
    started = time.monotonic()
    again = load_model("smollm2-135m", device="cpu", dtype="float32")
    seconds = time.monotonic() - started
    assert calls == [None] and gguf_cache_dir(again.fingerprint["files"][again.fingerprint["gguf_file"]], torch.float32).is_dir()
    assert again.fingerprint == smollm2.fingerprint
    ids = torch.tensor([smollm2.tokens.encode("The capital of France is Paris. Answer: A")])
    with torch.no_grad():
        assert torch.equal(again.model(input_ids=ids).logits, smollm2.model(input_ids=ids).logits)
    print(f"second GGUF load: {seconds:.1f} s")
    # the tokenizer alone (show-prompt --apply-chat-template) comes from the converted copy too
    from xverse_eval.runner.load import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("smollm2-135m"))
    assert calls == [None] and tokenizer.chat_template == smollm2.tokenizer.chat_template
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert tokenizer(text).input_ids == smollm2.tokenizer(text).input_ids
    assert seconds < 20  # ~2 s on an idle 2-core machine; the bound leaves room for a loaded CI box


# ----------------------------------------------------------------------------- device maps, messages


def mmlu_requests(data_dir: str):
    """Real MMLU anatomy items: a 2-shot prefix shared by 3 questions x 4 letters, and 2 generations."""
    from test_sharded import requests

    return requests(data_dir)


def test_a_model_split_over_two_devices_equals_one_device(checkpoint, data_dir, tmp_path):
    """A device map over two devices -- layer 0 on the CPU, layer 1 offloaded to disk, which
    accelerate's hooks bring in for each pass, as they move blocks between GPUs -- gives the one-device
    log-likelihoods, greedy flags and generations (the scorer falls back to whole rows, the engine to
    no CUDA graphs: runner/load.py spans_devices)."""
    from xverse_eval.runner.load import spans_devices

    scored, gens = mmlu_requests(data_dir)
    one = load_model(str(checkpoint), device="cpu", dtype="float32")
    place = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
             "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split = load_model(str(checkpoint), device="cpu", dtype="float32", model_args={"device_map": place, "offload_folder": str(tmp_path / "off")})
    assert spans_devices(split.model) and not spans_devices(one.model)
    # layer 1 really lives on disk (read from the checkpoint's safetensors for each pass), layer 0 in memory
    assert split.model.model.layers[1].self_attn.q_proj.weight.is_meta and not split.model.model.layers[0].self_attn.q_proj.weight.is_meta
    for model in (one, split):
        model.report_progress = False
    a, b = one.loglikelihood(scored), split.loglikelihood(scored)
    assert [r.logprob for r in b] == pytest.approx([r.logprob for r in a], abs=1e-5)
    assert [r.is_greedy for r in b] == [r.is_greedy for r in a]
    assert [g.text for g in split.generate(gens)] == [g.text for g in one.generate(gens)]


def test_device_map_flag_is_the_model_arg(checkpoint, data_dir):
    from xverse_eval.cli import parser, translate_model

    args = parser().parse_args(["run", "--model", str(checkpoint), "--tasks", "mmlu", "--device-map", "auto"])
    translate_model(args)
    assert args.model_args == {"device_map": "auto"}
    args = parser().parse_args(["run", "--model", "hf", "--model_args", f"pretrained={checkpoint},parallelize=True", "--tasks", "mmlu"])
    translate_model(args)
    assert args.model_args == {"device_map": "auto"}  # lm-eval's spelling
    args = parser().parse_args(["run", "--model", str(checkpoint), "--tasks", "mmlu", "--device-map", "auto",
                                      "--model-args", "device_map=sequential"])
    with pytest.raises(EvalError, match="--device-map auto and --model-args device_map=sequential: give it once"):
        translate_model(args)


def test_a_folder_without_a_tokenizer_is_one_whole_line(checkpoint, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in checkpoint.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(EvalError) as exc:
        load_model(str(bare), device="cpu")
    message = str(exc.value)
    assert "\n" not in message and f"model folder {bare} has no tokenizer (none of tokenizer.json" in message
    assert message.rstrip().endswith("(tokenizer.save_pretrained)")


def test_an_offline_hub_id_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t = time.perf_counter()
    with pytest.raises(EvalError) as exc:
        load_model("someorg/not-cached-model", device="cpu")
    assert time.perf_counter() - t < 15  # transformers' retries took 51 s (issue 21)
    assert "\n" not in str(exc.value) and "someorg/not-cached-model" in str(exc.value)
