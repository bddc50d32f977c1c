"""Loading a checkpoint larger than one GPU (issue 18), on one H200: load time and peak host memory of
the old and new loading paths, and the 80-layer XVERSE-65B refused on an 80 GB GPU with the right advice.

    python3 benchmarks/sharded_load.py all --dir /tmp/xverse16 --out $OUT        # ~4-6 min on one H200

`save`: a random XVERSE-65B-width checkpoint (hidden 8192, 64 heads, FFN 22016, vocabulary 100,534;
--layers 16 by default: 14.6B parameters, 29 GB in bf16) written as XVERSE's config.json plus
safetensors shards of --shard-gb GB on the local disk, tensor by tensor (the host holds one shard).

`load PATH_NAME`, one fresh process each, page cache of the shards dropped before (posix_fadvise
DONTNEED: the checkpoint is read from disk, as a 130 GB one would be). Paths:
  old        from_pretrained on the CPU, then .to("cuda") (what runner/load.py did before issue 18);
  hf-direct  from_pretrained(device_map="cuda:0") (runner/load.py's one-process path now);
  sharded    runner/tp.py load_sharded, TP 1: one tensor at a time, positioned reads, straight to the GPU;
  rank0-of-2 load_sharded as rank 0 of a TP-2 group would (its half of every projection): what one of
             the two 80 GB GPUs of XVERSE's card reads and holds.
Each prints seconds, peak host RSS (VmHWM), bytes read (/proc/self/io read_bytes and rchar), GPU
memory allocated, and a logits checksum of a fixed 32-token input (old, hf-direct and sharded must agree).

`refuse`: with torch.cuda.set_per_process_memory_fraction capping this process at 80 GB (an A800 /
H100 80 GB), runner/load.py's plan_memory on a folder holding the 80-layer config.json: refused in one
line naming `--tp-size 2` (and the device map), before any weight is read.

Writes $OUT/sharded_load.json and sharded_load.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

XVERSE = dict(hidden_size=8192, num_attention_heads=64, num_key_value_heads=64, intermediate_size=22016, vocab_size=100534,
              max_position_embeddings=16384, rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
              bos_token_id=2, eos_token_id=3, pad_token_id=1)
PATHS = ("old", "hf-direct", "sharded", "rank0-of-2")


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def io() -> dict:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


# ----------------------------------------------------------------------------- save


def save(folder: Path, layers: int, shard_gb: float) -> None:
    """Random bf16 weights (normal(0, 0.02), norms ones), drawn on the GPU, written shard by shard."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(num_hidden_layers=layers, **XVERSE)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in LlamaForCausalLM(config).named_parameters()}
    generator = torch.Generator("cuda").manual_seed(0)
    shard, size, files, weight_map = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(shape, dtype=torch.bfloat16, device="cuda").normal_(0, 0.02, generator=generator).cpu()
        if size + t.numel() * 2 > shard_gb * 1e9:
            flush()
        shard[name] = t
        size += t.numel() * 2
    flush()
    total = sum((folder / f).stat().st_size for f in files)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({**XVERSE, "num_hidden_layers": layers, "model_type": "xverse",
                                                    "architectures": ["XverseForCausalLM"], "torch_dtype": "bfloat16"}))
    print(f"saved {layers} layers, {len(files)} shards, {total / 1e9:.1f} GB in {folder}", flush=True)


def drop_cache(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- load, one path per process


def load(folder: Path, path: str) -> dict:
    from transformers import LlamaForCausalLM

    from xverse_eval.dist import Dist
    from xverse_eval.runner.load import config_before_loading
    from xverse_eval.runner.tp import load_sharded

    config = config_before_loading(str(folder))
    torch.zeros(1, device="cuda")  # the CUDA context outside the timing
    drop_cache(folder)
    rss, before, t = status("VmRSS"), io(), time.perf_counter()
    if path == "old":
        model = LlamaForCausalLM.from_pretrained(folder, config=config, dtype=torch.bfloat16).to("cuda")
    elif path == "hf-direct":
        model = LlamaForCausalLM.from_pretrained(folder, config=config, dtype=torch.bfloat16, device_map="cuda:0")
    elif path == "sharded":
        model, _ = load_sharded(folder, config, torch.bfloat16, "cuda:0", Dist(device="cuda:0"))
    else:  # rank 0 of a TP-2 group: its slices only (no process group: the forward is not run)
        model, _ = load_sharded(folder, config, torch.bfloat16, "cuda:0", Dist(rank=0, world_size=2, tp_size=2, device="cuda:0"))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    after = io()
    out = {"path": path, "seconds": round(seconds, 1), "peak_host_gb": round((status("VmHWM") - rss) / 1e9, 2),
           "read_bytes_gb": round((after["read_bytes"] - before["read_bytes"]) / 1e9, 2),
           "rchar_gb": round((after["rchar"] - before["rchar"]) / 1e9, 2),
           "gpu_allocated_gb": round(torch.cuda.memory_allocated() / 1e9, 2)}
    if path != "rank0-of-2":
        with torch.no_grad():
            logits = model(torch.arange(100, 132, device="cuda")[None]).logits.float()
        out["logits_checksum"] = [round(float(logits.sum()), 3), round(float(logits[0, -1, :4].sum()), 5)]
    return out


# ----------------------------------------------------------------------------- refuse


def refuse(folder: Path) -> dict:
    from xverse_eval.errors import EvalError
    from xverse_eval.runner.load import Source, plan_memory

    eighty = folder.parent / (folder.name + "-80-layers-config")
    eighty.mkdir(exist_ok=True)
    config = {**json.loads((folder / "config.json").read_text()), "num_hidden_layers": 80}
    (eighty / "config.json").write_text(json.dumps(config))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(80e9 / total)
    try:
        plan_memory(Source(str(eighty), local=True), torch.bfloat16, "cuda:0", {})
        return {"refused": False, "message": "not refused"}
    except EvalError as exc:
        return {"refused": True, "message": str(exc)}


# ----------------------------------------------------------------------------- all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("all", "save", "load", "refuse"))
    ap.add_argument("path", nargs="?", choices=PATHS)
    ap.add_argument("--dir", default="/tmp/xverse16")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    folder = Path(args.dir)
    if args.what == "save":
        return save(folder, args.layers, args.shard_gb)
    if args.what == "load":
        return print(json.dumps(load(folder, args.path)), flush=True)
    if args.what == "refuse":
        return print(json.dumps(refuse(folder)), flush=True)
    if not (folder / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        save(folder, args.layers, args.shard_gb)
        print(f"save took {time.perf_counter() - t:.0f} s", flush=True)
    results = []
    for path in ("sharded", "rank0-of-2", "hf-direct", "old"):
        done = subprocess.run([sys.executable, __file__, "load", path, "--dir", str(folder)], capture_output=True, text=True)
        line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None
        results.append(json.loads(line) if line else {"path": path, "error": done.stderr.strip()[-800:]})
        print(json.dumps(results[-1]), flush=True)
    done = subprocess.run([sys.executable, __file__, "refuse", "--dir", str(folder)], capture_output=True, text=True)
    refusal = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-800:]}
    print(json.dumps(refusal), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sharded_load.json").write_text(json.dumps({"loads": results, "refusal": refusal, "layers": args.layers,
                                                       "torch": torch.__version__}, indent=1))
    rows = ["| path | s | peak host GB | read from disk GB | read() GB | GPU GB | logits checksum |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['path']} | {r.get('seconds', '-')} | {r.get('peak_host_gb', '-')} | {r.get('read_bytes_gb', '-')} | "
                    f"{r.get('rchar_gb', '-')} | {r.get('gpu_allocated_gb', '-')} | {r.get('logits_checksum', r.get('error', '-'))} |")
    (out / "sharded_load.md").write_text("\n".join(rows) + f"\n\n80 layers at 80 GB: {refusal.get('message', refusal)}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
