"""Where a run executes: the device, and the process group when ``torchrun`` starts several processes."""

from __future__ import annotations

import dataclasses
import os

import torch

__all__ = ["Dist", "setup", "resolve_device"]


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device`` reads it."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place in the run: its device, rank and the number of processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, downloads first and writes the run folder."""
        return self.rank == 0

    @property
    def quiet(self) -> bool | None:
        """tqdm's ``disable``: bars only on the main process (``None``: only on a terminal)."""
        return None if self.main else True

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce(self, values: list[float]) -> list[float]:
        """``values`` summed over every process (unchanged when there is one)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(totals)
        return totals.tolist()


def setup(device: str) -> Dist:
    """This process's :class:`Dist`; under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
    started too: NCCL on CUDA (one GPU per local process), gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        if dev.type == "cuda":
            local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if local_rank >= gpus:
                raise ValueError(f"torchrun started local process {local_rank}, but this machine has {gpus} CUDA "
                                 f"device(s): use --nproc_per_node {gpus} or fewer (or --device cpu for gloo)")
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dev, rank, world_size)
