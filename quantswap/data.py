"""Datasets for fine-tuning and evaluation: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``.

All go through torchvision's dataset classes. Fashion-MNIST is read from the Debian package
``dataset-fashion-mnist`` when it is installed (``/usr/share/datasets/fashion-mnist``: the same IDX
files torchvision downloads), and downloaded by torchvision otherwise. Grayscale images are made
3-channel and every image is resized to the model's input size.

Augmentation is a pure function of ``(seed, epoch, index)`` (:class:`SeededTransform`): the same
sample gets the same crop and flip whatever the number of workers, processes or restarts, which is
what lets a killed run resume to exactly the same weights.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler, Subset
from torchvision import datasets
from torchvision import transforms as T

__all__ = ["DatasetSpec", "DATASETS", "build_datasets", "default_data_root", "ResumableSampler", "SeededTransform"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool
    native_size: int | None  # None: variable (an image folder)


DATASETS = {
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, (0.2860,) * 3, (0.3530,) * 3, True, 28),
    "cifar10": DatasetSpec("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), False, 32),
    "cifar100": DatasetSpec("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False, 32),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_data_root() -> Path:
    return Path(os.environ.get("QUANTSWAP_DATA", Path.home() / ".cache" / "quantswap" / "datasets"))


class SeededTransform:
    """Applies ``transform`` with torch's RNG seeded from ``(seed, epoch, index)``, then restores it."""

    def __init__(self, transform, seed: int):
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, image, index: int):
        state = torch.random.get_rng_state()
        torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        try:
            return self.transform(image)
        finally:
            torch.random.set_rng_state(state)


class _Indexed(Dataset):
    """A torchvision dataset whose transform also sees the sample index (for :class:`SeededTransform`)."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        if isinstance(self.transform, SeededTransform):
            return self.transform(image, index), target
        return self.transform(image), target


class ResumableSampler(Sampler[int]):
    """A shuffled (or ordered) index stream per epoch, sharded over ``world_size`` ranks like
    ``DistributedSampler``, that can start part-way through an epoch (``start`` samples per rank)."""

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.shuffle, self.seed, self.rank, self.world_size = size, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(size / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.per_rank * self.world_size - self.size]  # pad to a multiple of the ranks
        return iter(order[self.rank :: self.world_size][self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def _fashion_mnist(root: Path, train: bool, download: bool):
    raw = root / "FashionMNIST" / "raw"
    if DEBIAN_FASHION_MNIST.is_dir():
        raw.mkdir(parents=True, exist_ok=True)
        for gz in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
            target = raw / gz.stem
            if not target.exists():
                tmp = target.with_suffix(".partial")
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, target)
    try:
        return datasets.FashionMNIST(str(root), train=train, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {root} and could not be downloaded ({err}). Offline, install the Debian "
            "package: apt-get install dataset-fashion-mnist (the files go to /usr/share/datasets/fashion-mnist)"
        ) from None


def build_datasets(
    data: str, *, image_size: int | None = None, root: str | os.PathLike | None = None, seed: int = 0,
    download: bool = True, train_subset: int | None = None, val_subset: int | None = None,
) -> tuple[Dataset, Dataset, int]:
    """``(train, val, num_classes)`` for a ``--data`` value; images are 3-channel tensors of ``image_size``.

    Subsets take the first ``n`` samples of a fixed seeded permutation (every class represented).
    """
    root = Path(root) if root is not None else default_data_root()
    source, _, path = data.partition(":")
    if source == "imagefolder":
        folder = Path(path)
        if not path or not folder.is_dir():
            raise FileNotFoundError(f"imagefolder needs an existing folder with train/ and val/ inside, got {path!r}")
        missing = [split for split in ("train", "val") if not (folder / split).is_dir()]
        if missing:
            raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}/ folder; expected {folder}/train/CLASS/*.jpg "
                                    f"and {folder}/val/CLASS/*.jpg as in ImageNet")
        size = image_size or 224
        train_base, val_base = datasets.ImageFolder(folder / "train"), datasets.ImageFolder(folder / "val")
        spec = DatasetSpec("imagefolder", len(train_base.classes), IMAGENET_MEAN, IMAGENET_STD, False, None)
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(spec.mean, spec.std)])
        val_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                            T.Normalize(spec.mean, spec.std)])
    elif data in DATASETS:
        spec = DATASETS[data]
        size = image_size or 32
        if data == "fashion-mnist":
            train_base, val_base = _fashion_mnist(root, True, download), _fashion_mnist(root, False, download)
        else:
            cls = datasets.CIFAR10 if data == "cifar10" else datasets.CIFAR100
            train_base = cls(str(root), train=True, download=download)
            val_base = cls(str(root), train=False, download=download)
        common = ([T.Grayscale(3)] if spec.grayscale else []) + ([T.Resize(size)] if size != spec.native_size else [])
        pad = max(size // 8, 1)
        train_tf = T.Compose([*common, T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(spec.mean, spec.std)])
        val_tf = T.Compose([*common, T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    else:
        raise ValueError(f"unknown dataset {data!r}; use fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    train = _Indexed(train_base, SeededTransform(train_tf, seed))
    val = _Indexed(val_base, val_tf)
    return _subset(train, train_subset, seed), _subset(val, val_subset, seed), spec.num_classes


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(ds, sorted(order[:n]))


def set_epoch(ds: Dataset, epoch: int) -> None:
    """Tell a dataset's :class:`SeededTransform` which epoch it is."""
    base = ds.dataset if isinstance(ds, Subset) else ds
    if isinstance(getattr(base, "transform", None), SeededTransform):
        base.transform.epoch = epoch
