"""This process's place in a torchrun job, as plain data: `Dist`.

Made by `parallel.setup` (the job: process group, TP groups); read by the pipeline (which shard, which
responses file, who writes and reports) and by the runner (which GPU, which tensor-parallel group:
runner/tp.py). It imports nothing of the project, so every module may import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. A run without torchrun is `Dist()`: rank 0 of 1.

    Ranks form `replicas` = world_size / tp_size replicas of `tp_size` consecutive ranks each;
    `tp_group` is the torch.distributed group of this rank's replica (None without tensor parallel)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp_size: int = 1
    device: str | None = None  # cuda:LOCAL_RANK on GPUs; None: the run's --device
    tp_group: Any = field(default=None, repr=False, compare=False)
    gpus: tuple[int, ...] = ()  # the CUDA devices this process may use: (LOCAL_RANK,), or K of them for a device map

    @property
    def active(self) -> bool:
        """Whether this process is one of several (a torchrun job of more than one rank)."""
        return self.world_size > 1

    @property
    def replicas(self) -> int:
        """How many model replicas the job holds (each a TP group of tp_size ranks)."""
        return self.world_size // self.tp_size

    @property
    def replica(self) -> int:
        """Which replica this rank belongs to (0 .. replicas - 1): which shard of the work it computes."""
        return self.rank // self.tp_size

    @property
    def tp_rank(self) -> int:
        """This rank's place in its TP group: which slice of each sharded weight it holds."""
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
        """responses.jsonl in a one-process run; responses.rank<replica>.jsonl under torchrun."""
        return run_path / ("responses.jsonl" if not self.active else f"responses.rank{self.replica}.jsonl")
