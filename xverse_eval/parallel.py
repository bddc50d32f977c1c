"""Scale out under torchrun: data parallel replicas, tensor-parallel groups, sharded work, per-rank responses.

    torchrun --nproc-per-node 8 -m xverse_eval run --model M --tasks mmlu [--tp-size 2]
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m xverse_eval run ...

torchrun starts one process per GPU and sets RANK / WORLD_SIZE / LOCAL_RANK; `setup` joins the process
group (NCCL on CUDA, gloo on CPU) and pins each rank to cuda:LOCAL_RANK. Ranks form `world / tp`
replicas of `tp` consecutive ranks each (a tensor-parallel group stays inside a node when tp divides
the GPUs per node). Each replica takes a shard of the requests still to do (`shard`: balanced by
tokens, shared-prefix groups kept whole unless one is larger than half a replica's fair part) and the
first rank of its group appends the responses to its own file, responses.rank<R>.jsonl (R: the
replica), fsynced per batch as in a one-process run. Response keys are content hashes, so the files
of any earlier run, of any world size, count as done.

Collectives happen only at the edges of the run, never between batches: one exchange of errors
after the run dir is locked (`agree`), one after the model is loaded and the work is known, and a
barrier before rank 0 merges every responses file and scores. Tensor parallel adds the all-reduces
inside each forward pass of its group. A rank that dies loses only its batch in flight; torchrun then
stops the others, and re-running the same command (with any world size) computes only what is missing.

Only rank 0 locks the run dir (the other ranks are in the same job and write only their own files),
writes config.json, plan.jsonl and the results, and prints progress -- for the whole job, counting the
lines the other replicas append to their files (`JobProgress`).

Tensor parallel (`tensor_parallel`): Megatron-style sharding of a Llama-architecture decoder (XVERSE
loads as Llama): q/k/v and gate/up projections split by output rows, o and down projections split by
input columns followed by one all-reduce of their output; embeddings, norms and the LM head stay
whole. Each rank then runs plain tensors (its heads and its slice of the MLP), so the scoring and
generation paths run unchanged, with two all-reduces per layer.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import EvalError
from .types import GenerateRequest, Request

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the process group


@dataclass
class Dist:
    """This process's place in the job. A run without torchrun is `Dist()`: rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp_size: int = 1
    device: str | None = None  # cuda:LOCAL_RANK on GPUs; None: the run's --device
    tp_group: Any = field(default=None, repr=False)  # torch.distributed group of this rank's TP replica

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def replicas(self) -> int:
        return self.world_size // self.tp_size

    @property
    def replica(self) -> int:
        return self.rank // self.tp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def main(self) -> bool:
        """Rank 0: locks the run dir, writes config/plan/results, prints progress, scores."""
        return self.rank == 0

    @property
    def writer(self) -> bool:
        """The first rank of a TP group stores the group's responses (all ranks of a group compute the same)."""
        return self.tp_rank == 0

    def responses_file(self, run_path: Path) -> Path:
        return run_path / ("responses.jsonl" if not self.active else f"responses.rank{self.replica}.jsonl")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def timeout() -> datetime.timedelta:
    """How long a rank waits at a barrier for the slowest replica (XVERSE_EVAL_DIST_TIMEOUT, seconds;
    default a day: replicas may finish hours apart, and torchrun stops everyone if a rank dies)."""
    return datetime.timedelta(seconds=float(os.environ.get("XVERSE_EVAL_DIST_TIMEOUT", 86400)))


def setup(tp_size: int = 1, device: str | None = None) -> Dist:
    """Join the torchrun job, if this process is part of one; otherwise a one-process `Dist`.

    Raises EvalError for a --tp-size that does not divide the world size, or --tp-size > 1 without
    torchrun."""
    if tp_size < 1:
        raise EvalError(f"--tp-size must be a positive number, got {tp_size}")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        if tp_size > 1:
            raise EvalError(f"--tp-size {tp_size} needs {tp_size} processes: launch with torchrun --nproc-per-node {tp_size} -m xverse_eval run ...")
        return Dist(device=device)
    import torch.distributed as dist

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if world % tp_size:
        raise EvalError(f"--tp-size {tp_size} does not divide the {world} processes torchrun started")
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout(),
                                **({"device_id": torch.device(device)} if cuda else {}))
    tp_group = None
    if tp_size > 1:
        groups = [dist.new_group(list(range(r, r + tp_size))) for r in range(0, world, tp_size)]  # every rank creates every group
        tp_group = groups[rank // tp_size]
    if rank != 0:
        # one line of warnings per job, not one per rank
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    return Dist(rank, world, local, tp_size, device, tp_group)


def agree(d: Dist, error: BaseException | None) -> None:
    """A collective check point: if any rank failed before it (an EvalError: a locked run dir, a bad
    config, not enough memory), every rank raises that error, instead of the others waiting forever
    for a rank that has gone. Re-raises the local error unchanged."""
    if not d.active:
        if error:
            raise error
        return
    import torch.distributed as dist

    messages: list = [None] * d.world_size
    dist.all_gather_object(messages, None if error is None else str(error))
    if error is not None:
        raise error
    first = next((m for m in messages if m), None)
    if first:
        mirrored = EvalError(first)
        mirrored.mirrored = True  # the rank it happened on prints it; the others exit quietly
        raise mirrored


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def finish(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- sharding


def request_cost(req: Request) -> float:
    """Work of one request in tokens, estimated from characters (about 4 per token for the
    benchmarks' languages mixed; only the ratios between requests matter): the text a forward pass
    reads, plus the new tokens of a generation, each of which costs a decode step."""
    if isinstance(req, GenerateRequest):
        return len(req.prompt) / 4 + req.max_new_tokens
    return len(req.context + req.continuation) / 4


def _item_of(req: Request) -> str:
    """Requests of one item (the choices of a question) share their forward pass: never split them."""
    return req.key.rsplit("/", 1)[0]


def shard(requests: Sequence[Request], replicas: int, replica: int, cost: Callable[[Request], float] = request_cost) -> list[Request]:
    """The requests replica `replica` of `replicas` computes, in their original order.

    Requests are grouped (same shared prefix, else same item), a group's cost is the tokens of its
    distinct forward passes; a group larger than half of one replica's fair share is cut into
    item-aligned chunks of about a quarter of it (each chunk computes the shared prefix once more, a
    small price against an idle replica: GSM8K's 1,319 questions share one 4-shot prefix). Chunks go,
    largest first, to the least loaded replica (LPT). Deterministic: every rank computes every shard the same way from the same
    list, so the shards are disjoint and cover all requests."""
    if replicas == 1:
        return list(requests)
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault((type(req).__name__, req.shared_prefix or _item_of(req)), []).append(i)
    seen_rows: set = set()

    def group_cost(members: list[int]) -> float:
        total = 0.0
        for i in members:
            r = requests[i]
            row = (_item_of(r), getattr(r, "context", None) or getattr(r, "prompt", ""))
            if isinstance(r, GenerateRequest) or row not in seen_rows:  # choices of one question share a row
                seen_rows.add(row)
                total += cost(r)
        return total

    costs = {k: group_cost(m) for k, m in groups.items()}
    fair = sum(costs.values()) / replicas
    cap, piece = max(fair / 2, 1.0), max(fair / 4, 1.0)
    chunks: list[tuple[float, int, list[int]]] = []
    for k, members in groups.items():
        if costs[k] <= cap:
            chunks.append((costs[k], members[0], members))
            continue
        current: list[int] = []
        current_cost, last_item = 0.0, None
        for i in members:
            item = _item_of(requests[i])
            if current and item != last_item and current_cost >= piece:
                chunks.append((current_cost, current[0], current))
                current, current_cost = [], 0.0
            current.append(i)
            current_cost += costs[k] / len(members)
            last_item = item
        chunks.append((current_cost, current[0], current))
    load = [0.0] * replicas
    mine: list[int] = []
    for c, _, members in sorted(chunks, key=lambda c: (-c[0], c[1])):
        target = min(range(replicas), key=lambda r: (load[r], r))
        load[target] += c
        if target == replica:
            mine.extend(members)
    return [requests[i] for i in sorted(mine)]


# ----------------------------------------------------------------------------- progress of the whole job


class JobProgress:
    """Rank 0's view of the job: its own stored responses plus the responses the other replicas have
    appended to their files that were not stored when the run began (`done`: the keys stored then).
    Other files are read incrementally, by byte offset, whole lines only."""

    def __init__(self, run_path: Path, own: Path, total: int, done: set | frozenset = frozenset(), enabled: bool = True):
        from .progress import progress

        self.run_path, self.own, self.total, self.done = run_path, own, total, done
        self.offsets: dict[Path, int] = {}
        self.counted = 0
        self.bar = progress(total, "requests (all ranks)", "req", enabled=enabled and total > 0)

    def _others(self) -> list[Path]:
        return [p for p in sorted(self.run_path.glob("responses*.jsonl")) if p != self.own]

    def _poll(self) -> int:
        new = 0
        for path in self._others():
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # count whole lines only
            for line in data[:end].splitlines():
                try:
                    new += json.loads(line)["key"] not in self.done
                except (ValueError, KeyError, TypeError):
                    continue  # progress only: a bad line is the reader's business, not ours
            self.offsets[path] = start + end
        return new

    def own_done(self, n: int) -> None:
        self._add(n + self._poll())

    def _add(self, n: int) -> None:
        n = min(n, self.total - self.counted)
        if n > 0:
            self.counted += n
            self.bar.update(n)


# ----------------------------------------------------------------------------- tensor parallel

COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output rows split: each rank its heads / MLP slice
ROWWISE = ("o_proj", "down_proj")  # input columns split, output all-reduced


def tp_check(config, tp_size: int) -> None:
    """Refuse a --tp-size that does not split the heads and the MLP evenly (one line, before loading)."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    inter = config.intermediate_size
    if heads % tp_size or kv % tp_size or inter % tp_size:
        raise EvalError(f"--tp-size {tp_size} must divide the attention heads ({heads}), KV heads ({kv}) and MLP width ({inter}) of the model")


def shard_weight(full: torch.Tensor, name: str, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's slice of a weight or bias named `name` (the full tensor, any device)."""
    leaf = name.split(".")[-2] if name.endswith(("weight", "bias")) else name
    if leaf in COLWISE:
        return full.chunk(tp_size, dim=0)[tp_rank]
    if leaf in ROWWISE and name.endswith("weight"):
        return full.chunk(tp_size, dim=1)[tp_rank]
    return full


class _AllReduce:
    """Forward hook of a row-parallel projection: sum the partial outputs of the TP group."""

    def __init__(self, group):
        self.group = group

    def __call__(self, module, inputs, output):
        import torch.distributed as dist

        dist.all_reduce(output, group=self.group)
        return output


def tensor_parallel(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """Shard a Llama-architecture model (weights already materialised) across `d`'s TP group, in place.

    After it, each rank's attention sees `heads / tp` heads (the modules reshape with -1 heads, so they
    run unchanged) and the row-parallel projections all-reduce their outputs. A row-parallel bias is
    added once, after the sum (it stays whole on rank 0 of the group and is zeroed on the others)."""
    if d.tp_size == 1:
        return model
    tp_check(model.config, d.tp_size)
    hook = _AllReduce(d.tp_group)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in COLWISE + ROWWISE or not isinstance(module, torch.nn.Linear):
            continue
        with torch.no_grad():
            module.weight = torch.nn.Parameter(shard_weight(module.weight.data, f"{name}.weight", d.tp_rank, d.tp_size).contiguous(), requires_grad=False)
            if module.bias is not None:
                bias = shard_weight(module.bias.data, f"{name}.bias", d.tp_rank, d.tp_size).contiguous()
                if leaf in ROWWISE and d.tp_rank:
                    bias = torch.zeros_like(bias)
                module.bias = torch.nn.Parameter(bias, requires_grad=False)
        module.in_features, module.out_features = module.weight.shape[1], module.weight.shape[0]
        if leaf in ROWWISE:
            module.register_forward_hook(hook)
    agree_on_free_memory(d)
    return model


def _config_before_loading(spec: str):
    """The model's config without its weights, where that is cheap (a local folder); else None."""
    from .runner.load import resolve

    source = resolve(spec)
    if not source.local or source.gguf_file:
        return None  # a GGUF holds its config in the weights file; a hub id needs the network
    from .runner.xverse import read_config, xverse_llama_config

    raw = read_config(source.path)
    if raw.get("model_type") == "xverse":
        return xverse_llama_config(raw)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path)


def plan_and_load(cls, spec: str, d: Dist, device: str | None = None, dtype: str = "auto", **kwargs):
    """Load a checkpoint on this rank's device and shard it over the rank's TP group.

    Memory is planned first from config.json where there is one (runner/memory.py). The whole
    checkpoint is loaded before it is sharded, so a rank briefly holds all of it: fine for models
    that fit one GPU; a checkpoint larger than one GPU wants transformers' own sharded loading
    (tp_plan="auto"), not wired here yet."""
    from .runner import memory
    from .runner.load import pick_dtype

    device = d.device or device
    config = _config_before_loading(spec)
    if config is not None:
        if d.tp_size > 1:
            tp_check(config, d.tp_size)
        memory.check(config, pick_dtype(dtype, device or "cpu"), device or "cpu", d.tp_size, name=spec, world_size=d.world_size)
    model = cls.load(spec, device=device, dtype=dtype, **kwargs)
    if d.tp_size > 1:
        tensor_parallel(model.model, d)
    return model


def wait_all(d: Dist, job: JobProgress | None, interval: float = 1.0) -> None:
    """The barrier at the end of inference. Rank 0 enters it without blocking and keeps counting the
    other replicas' stored lines until every rank has arrived, so its progress covers the whole job."""
    if not d.active:
        return
    import torch.distributed as dist

    work = dist.barrier(async_op=True)
    while job is not None and not work.is_completed():
        job.own_done(0)
        time.sleep(interval)
    work.wait()
    if job is not None:
        job.own_done(0)
        job.bar.close()


def agree_on_free_memory(d: Dist) -> None:
    """Under tensor parallel, every rank of a group must cut the same batches (each forward pass holds
    collectives), but the runner sizes batches from the free memory of its own GPU, which differs by a
    few MB between ranks (NCCL buffers, the CUDA context). From here on torch.cuda.mem_get_info
    answers, on every rank of the group, the group's minimum free memory: a tiny all-reduce per
    query, which happens at the same points on every rank (a batch plan, an out-of-memory retry)."""
    if d.tp_size == 1 or not str(d.device).startswith("cuda") or getattr(torch.cuda.mem_get_info, "_xverse_agreed", False):
        return
    import torch.distributed as dist

    measure = torch.cuda.mem_get_info

    def agreed(device=None):
        free, total = measure(device)
        value = torch.tensor([free], dtype=torch.int64, device=d.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=d.tp_group)
        return int(value.item()), total

    agreed._xverse_agreed = True
    torch.cuda.mem_get_info = agreed
