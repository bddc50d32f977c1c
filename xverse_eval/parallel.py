"""Scale out under torchrun: data parallel replicas, tensor-parallel groups, sharded work, per-rank responses.

    torchrun --nproc-per-node 8 -m xverse_eval run --model M --tasks mmlu [--tp-size 2]
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m xverse_eval run ...

torchrun starts one process per GPU and sets RANK / WORLD_SIZE / LOCAL_RANK; `setup` joins the process
group (NCCL on CUDA, gloo on CPU) and pins each rank to cuda:LOCAL_RANK (with fewer processes than GPUs,
to the first of its K = GPUs / processes consecutive GPUs, `Dist.gpus`, which a --device-map replica
spreads over). Ranks form `world / tp`
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

This module is the job only and imports nothing of runner/: the process's place in the job is
plain data (dist.py: Dist), and tensor parallel -- sharded loading and the model's split over a TP
group -- is the runner's (runner/tp.py).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .dist import Dist
from .errors import EvalError
from .types import GenerateRequest, Request

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the process group


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def timeout() -> datetime.timedelta:
    """How long a rank waits at a barrier for the slowest replica (XVERSE_EVAL_DIST_TIMEOUT, seconds;
    default a day: replicas may finish hours apart, and torchrun stops everyone if a rank dies)."""
    return datetime.timedelta(seconds=float(os.environ.get("XVERSE_EVAL_DIST_TIMEOUT", 86400)))


def gpus_of(local_rank: int, local_world: int, visible: int) -> tuple[int, ...]:
    """The GPUs of one process of a node: one each when torchrun starts a process per GPU; with fewer
    processes than GPUs (N replicas of K GPUs for --device-map), K = visible // local_world
    consecutive GPUs each. Raises EvalError when there are fewer GPUs than processes."""
    if visible < local_world:
        raise EvalError(f"torchrun started {local_world} processes on this node, which has {visible} GPUs: use at most {visible}")
    k = visible // local_world
    return tuple(range(local_rank * k, (local_rank + 1) * k))


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
    gpus: tuple[int, ...] = ()
    if cuda:
        gpus = gpus_of(local, int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count())
        torch.cuda.set_device(gpus[0])
        device = f"cuda:{gpus[0]}"
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
    return Dist(rank, world, local, tp_size, device, tp_group, gpus)


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
    """Wait for every rank of the job (nothing without torchrun)."""
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def finish(d: Dist) -> None:
    """Leave the process group at the end of the run (nothing without torchrun)."""
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


# ----------------------------------------------------------------------------- the end of inference


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
