"""Datasets for fine-tuning and evaluation: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``.

All are read by torchvision's dataset classes. Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` when it is installed (``/usr/share/datasets/fashion-mnist``: the same IDX
files torchvision downloads), and is downloaded by torchvision otherwise. Grayscale images are made
3-channel and every image is resized to the model's input size.

The small datasets live in memory as one uint8 tensor, resized once with torchvision's tensor
transforms (:class:`InMemoryImages`); per sample only a crop and a flip remain, so 2 CPU cores spend
their time on the model rather than on PIL. Augmentation is a pure function of ``(seed, epoch,
index)``: the same sample gets the same crop and flip whatever the number of workers, processes or
restarts, which is what lets a killed run resume to exactly the same weights.

Example:
    >>> import torch
    >>> images = torch.arange(2 * 28 * 28, dtype=torch.uint8).reshape(2, 1, 28, 28)
    >>> ds = InMemoryImages(images, [3, 7], size=32, mean=(0.5,), std=(0.5,), augment=True, seed=0, channels=3)
    >>> x, y = ds[1]
    >>> x.shape, y
    (torch.Size([3, 32, 32]), 7)
    >>> torch.equal(ds[1][0], x)  # same (seed, epoch, index): the same crop and flip
    True
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler, Subset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

__all__ = ["DatasetSpec", "DATASETS", "build_datasets", "check_image_folder", "default_data_root", "ResumableSampler", "SeededTransform",
           "InMemoryImages", "set_epoch"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _debian_fashion_mnist() -> Path | None:
    """The Debian package's IDX files: ``$QUANTSWAP_FASHION_MNIST`` (a ``dpkg -x`` without root), else
    ``/usr/share/datasets/fashion-mnist``."""
    for folder in (os.environ.get("QUANTSWAP_FASHION_MNIST"), DEBIAN_FASHION_MNIST):
        if folder and any(Path(folder).glob("*-ubyte.gz")):
            return Path(folder)
    return None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hub_id: str | None = None  # the dataset's id on the Hugging Face Hub (model cards' ``datasets``)


DATASETS = {
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, (0.2860,), (0.3530,), "zalando-datasets/fashion_mnist"),
    "cifar10": DatasetSpec("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "uoft-cs/cifar10"),
    "cifar100": DatasetSpec("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "uoft-cs/cifar100"),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_data_root() -> Path:
    return Path(os.environ.get("QUANTSWAP_DATA", Path.home() / ".cache" / "quantswap" / "datasets"))


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class SeededTransform:
    """Applies a PIL ``transform`` with torch's RNG seeded from ``(seed, epoch, index)``, then restores it."""

    def __init__(self, transform, seed: int):
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, image, index: int):
        state = torch.random.get_rng_state()
        torch.manual_seed(_sample_seed(self.seed, self.epoch, index))
        try:
            return self.transform(image)
        finally:
            torch.random.set_rng_state(state)


class _Indexed(Dataset):
    """A torchvision dataset (an image folder) whose transform also sees the sample index."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    @property
    def epoch(self) -> int:
        return getattr(self.transform, "epoch", 0)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        if isinstance(self.transform, SeededTransform):
            self.transform.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        if isinstance(self.transform, SeededTransform):
            return self.transform(image, index), target
        return self.transform(image), target


class InMemoryImages(Dataset):
    """A small image dataset held as one ``(N, C, H, W)`` uint8 tensor, resized once to ``size``.

    With ``augment``, each sample gets a random crop from a zero-padded (``size // 8``) image and a
    random horizontal flip, drawn from ``(seed, epoch, index)`` (torchvision's ``RandomCrop(size,
    padding)`` + ``RandomHorizontalFlip``). Samples are normalized with ``mean``/``std`` and grayscale
    is repeated to ``channels``.
    """

    def __init__(self, images: torch.Tensor, targets, *, size: int, mean, std, augment: bool, seed: int,
                 channels: int = 3, indices: list[int] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        #: the samples kept, by their index in ``images`` (which also draws their augmentation): a subset is
        #: taken before resizing, so memory scales with the images used
        self.indices = list(range(len(images))) if indices is None else list(indices)
        images = images[self.indices] if indices is not None else images
        self.pad = max(size // 8, 1) if augment else 0
        check_memory(len(images), images.shape[1], size + 2 * self.pad)
        if images.shape[-2:] != (size, size):
            images = torch.cat([TF.resize(chunk, [size, size], antialias=True) for chunk in images.split(256)]) \
                if len(images) else images.new_empty(0, images.shape[1], size, size)
        self.images = TF.pad(images, [self.pad]) if augment else images.contiguous()
        self.targets = torch.as_tensor(targets, dtype=torch.long)[self.indices]
        self.size, self.augment, self.seed, self.channels, self.epoch = size, augment, seed, channels, 0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.augment:
            draw = random.Random(_sample_seed(self.seed, self.epoch, self.indices[index]))
            top, left = draw.randint(0, 2 * self.pad), draw.randint(0, 2 * self.pad)
            image = TF.crop(image, top, left, self.size, self.size)
            if draw.random() < 0.5:
                image = TF.horizontal_flip(image)
        image = (image.float().div_(255) - self.mean[: image.shape[0]]) / self.std[: image.shape[0]]
        if image.shape[0] != self.channels:
            image = image.expand(self.channels, -1, -1)
        return image, int(self.targets[index])


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
    debian = _debian_fashion_mnist()
    if debian is not None:
        raw.mkdir(parents=True, exist_ok=True)
        for gz in debian.glob("*-ubyte.gz"):
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
            "package: `make data`, or apt-get install dataset-fashion-mnist (the files go to "
            "/usr/share/datasets/fashion-mnist; without root, `apt-get download` it, `dpkg -x` it and point "
            "QUANTSWAP_FASHION_MNIST at the extracted usr/share/datasets/fashion-mnist)"
        ) from None


def check_image_folder(path: str) -> Path:
    """An ``imagefolder:PATH`` root: it must hold ``train/`` and ``val/`` class folders."""
    folder = Path(path)
    if not path or not folder.is_dir():
        raise FileNotFoundError(f"imagefolder:{path}: no such folder; pass imagefolder:PATH with PATH/train/CLASS/*.jpg "
                                "and PATH/val/CLASS/*.jpg inside, as in ImageNet")
    missing = [split for split in ("train", "val") if not (folder / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}/ folder; expected {folder}/train/CLASS/*.jpg "
                                f"and {folder}/val/CLASS/*.jpg as in ImageNet")
    return folder


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
        folder = check_image_folder(path)
        size = image_size or 224
        train_base, val_base = datasets.ImageFolder(folder / "train"), datasets.ImageFolder(folder / "val")
        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
        val_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), normalize])
        train, val = _Indexed(train_base, SeededTransform(train_tf, seed)), _Indexed(val_base, val_tf)
        num_classes = len(train_base.classes)
    elif data in DATASETS:
        spec = DATASETS[data]
        if data == "fashion-mnist":
            train_base, val_base = _fashion_mnist(root, True, download), _fashion_mnist(root, False, download)
        else:
            cls = datasets.CIFAR10 if data == "cifar10" else datasets.CIFAR100
            try:
                train_base = cls(str(root), train=True, download=download)
                val_base = cls(str(root), train=False, download=download)
            except (RuntimeError, OSError) as err:
                folder = root / cls.base_folder
                raise FileNotFoundError(
                    f"{data} is not in {folder} and could not be downloaded ({str(err).splitlines()[0][:120]}): it needs "
                    f"the internet once. Place the extracted {cls.base_folder} folder of {cls.url} in {root} (or set "
                    "QUANTSWAP_DATA, or --data-root, to the folder holding it)") from None

        def in_memory(base, augment: bool, n: int | None) -> InMemoryImages:
            images = torch.as_tensor(base.data)  # Fashion-MNIST (N, H, W); CIFAR (N, H, W, C)
            images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
            return InMemoryImages(images, base.targets, size=image_size or 32, mean=spec.mean, std=spec.std,
                                  augment=augment, seed=seed, indices=_subset_indices(len(images), n, seed))

        train, val = in_memory(train_base, True, train_subset), in_memory(val_base, False, val_subset)
        return train, val, spec.num_classes
    else:
        raise ValueError(f"unknown dataset {data!r}; use {', '.join(DATASETS)} or imagefolder:PATH")
    return _subset(train, train_subset, seed), _subset(val, val_subset, seed), num_classes


def _subset_indices(size: int, n: int | None, seed: int) -> list[int] | None:
    """The first ``n`` of a seeded permutation of ``range(size)``, in order (``None``: all of them)."""
    if n is None or n >= size:
        return None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:n])


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    indices = _subset_indices(len(ds), n, seed)
    return ds if indices is None else Subset(ds, indices)


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or ``None`` where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(images: int, channels: int, side: int) -> None:
    """Refuse to hold ``images`` uint8 images of ``channels × side²`` in memory (with a resize's float
    working space per 256-image chunk) where that cannot fit, naming the estimate."""
    need = images * channels * side * side + 256 * channels * side * side * 4
    available = _available_memory()
    if available is not None and need > 0.8 * available:
        raise ValueError(f"{images:,} images of {channels}x{side}x{side} px need about {need / 1e9:.1f} GB in memory "
                          f"and {available / 1e9:.1f} GB are available: lower --image-size, or use fewer images "
                          "(--train-subset, --val-subset)")


def set_epoch(ds: Dataset, epoch: int) -> None:
    """Tell a dataset built here which epoch it is (its augmentation depends on it)."""
    base = ds.dataset if isinstance(ds, Subset) else ds
    if isinstance(base, (InMemoryImages, _Indexed)):
        base.epoch = epoch
