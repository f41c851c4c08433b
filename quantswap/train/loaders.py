"""A run's data: the datasets of ``cfg.data`` and their loaders, sharded over the run's processes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from quantswap.data import ResumableSampler, build_datasets
from quantswap.train.config import FinetuneConfig
from quantswap.train.distributed import Dist

__all__ = ["Loaders", "build_loaders"]


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader
    sampler: ResumableSampler  # the training sampler: it resumes mid-epoch
    num_classes: int

    @property
    def train_dataset(self) -> Dataset:
        return self.train.dataset


def build_loaders(cfg: FinetuneConfig, dist: Dist) -> Loaders:
    """Training and validation loaders; their order is a pure function of the seed, so a run resumes exactly."""
    train_ds, val_ds, data_classes = build_datasets(
        cfg.data, image_size=cfg.image_size, root=cfg.data_root, seed=cfg.seed,
        train_subset=cfg.train_subset, val_subset=cfg.val_subset)
    if cfg.num_classes is not None and cfg.num_classes < data_classes:  # labels beyond the head: refused up front
        raise ValueError(f"--num-classes {cfg.num_classes}, but {cfg.data} has {data_classes} classes: pass "
                         f"--num-classes {data_classes}, or leave it out")
    sampler = ResumableSampler(len(train_ds), shuffle=True, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    val_sampler = ResumableSampler(len(val_ds), shuffle=False, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size)
    kwargs = {"num_workers": cfg.workers, "pin_memory": dist.device.type == "cuda"}
    # own generators: the loaders must not draw from the global RNG, whose state a checkpoint restores
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, generator=torch.Generator(), **kwargs)
    val = DataLoader(val_ds, batch_size=max(cfg.batch_size, 256), sampler=val_sampler, generator=torch.Generator(),
                     **kwargs)
    return Loaders(train, val, sampler, cfg.num_classes or data_classes)
