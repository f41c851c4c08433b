"""The Hugging Face Hub: :func:`from_pretrained`, :func:`push_to_hub` and :func:`download`.

Everything goes through the real ``huggingface_hub`` client (its cache, tokens, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``); quantswap identifies itself as the library. Only ``config.json``,
``model.safetensors`` and ``README.md`` are ever downloaded: a repo's pickle files are not.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from quantswap.card import model_card
from quantswap.checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    load_pretrained,
    read_config,
    save_pretrained,
    verify,
)
from quantswap.checkpoint_config import CheckpointConfig
from quantswap.version import __version__

__all__ = ["from_pretrained", "push_to_hub", "download", "check_repo_id", "check_revision"]

_LIBRARY = {"library_name": "quantswap", "library_version": __version__}
ONNX_NAME = "model.onnx"  # what push_to_hub(..., onnx=True) adds


_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is ``"org/name"`` as the Hub spells them (letters, digits, ``-``, ``_``, ``.``;
    no ``..``); ``ValueError`` before anything is written or sent otherwise.

    Example:
        >>> check_repo_id("my-org/resnet18-irnet")
        'my-org/resnet18-irnet'
        >>> check_repo_id("org/..")
        Traceback (most recent call last):
        ...
        ValueError: repo_id must look like 'org/name' (letters, digits, '-', '_' and '.', no '..'), got 'org/..'
    """
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) and ".." not in p and "--" not in p for p in parts):
        raise ValueError(f"repo_id must look like 'org/name' (letters, digits, '-', '_' and '.', no '..'), got {repo_id!r}")
    return repo_id


def check_revision(revision: str | None) -> str | None:
    """A branch, tag or commit name that cannot name a path outside the Hub cache: no ``..``, no leading
    ``/``, no ``\\`` and no control characters (``ValueError`` before the client is called)."""
    if revision is None:
        return None
    if (not isinstance(revision, str) or not revision or ".." in revision or revision.startswith("/")
            or "\\" in revision or any(ord(c) < 32 or ord(c) == 127 for c in revision)):
        raise ValueError(f"revision {revision!r} is not a branch, tag or commit name the Hub allows (no '..', "
                         "leading '/', backslash or control characters)")
    return revision


def _download_file(repo_id: str, filename: str, revision: str | None, **kwargs: Any) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, **kwargs, **_LIBRARY))
    except GatedRepoError:
        raise CheckpointNotFoundError(f"the Hub repo {repo_id!r} is gated: accept its terms on the Hub and pass "
                                      "token=... (or log in with `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CheckpointNotFoundError(f"no model repo {repo_id!r} on the Hub (or it is private: pass token=...); "
                                      "check the name, or pass a local folder") from None
    except RevisionNotFoundError:
        raise CheckpointNotFoundError(f"the Hub repo {repo_id!r} has no revision {revision!r}; "
                                      "use a branch, tag or commit sha it has") from None
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(
            f"{filename} of {where} is not in the local cache and the Hub cannot be reached (offline or "
            "local_files_only=True); download it once while online, or pass a local checkpoint folder"
        ) from None
    except EntryNotFoundError:
        raise CheckpointNotFoundError(f"{where} has no file {filename}: it is not a quantswap checkpoint "
                                      "(push one with quantswap.push_to_hub)") from None


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Download a checkpoint's files into the Hub cache; returns the snapshot folder.

    All files come from one commit: the one ``revision`` pointed to when ``config.json`` was fetched.
    """
    check_repo_id(repo_id)
    check_revision(revision)
    kwargs = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    config = _download_file(repo_id, CONFIG_NAME, revision, **kwargs)
    commit = config.parent.name  # <cache>/models--org--name/snapshots/<commit sha>/config.json
    if not _COMMIT.fullmatch(commit):
        raise CheckpointError(f"the Hub answered with commit {commit!r} for {repo_id!r}, which is not a commit sha")
    _download_file(repo_id, WEIGHTS_NAME, commit, **kwargs)
    try:
        _download_file(repo_id, CARD_NAME, commit, **kwargs)
    except CheckpointNotFoundError:
        pass  # the card is documentation; a checkpoint without one still loads
    return config.parent


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def from_pretrained(
    id_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    backend: str = "packed",
) -> nn.Module:
    """Load a quantswap checkpoint from a local folder or a Hub repo id, in eval mode.

    The base model is rebuilt only through torchvision's or timm's builders (named in
    ``config.json``), the swap is redone from the stored method config, and the bit-packed weights
    are unpacked and loaded strictly. The result is the frozen inference form, or the trainable
    swapped model when the checkpoint was saved with ``keep_latent=True``.

    Args:
        id_or_dir: a folder written by :func:`quantswap.save_pretrained`, or ``"org/name"`` on the Hub.
        revision: a branch, tag or commit sha (Hub only).
        cache_dir, local_files_only, token: as in ``huggingface_hub.hf_hub_download``.
        backend: ``"packed"`` (W1/A1 layers run the packed XOR-popcount kernels, weights kept as
            bits) or ``"float"`` (decoded float weights); see :func:`quantswap.freeze`.
    """
    path = Path(id_or_dir)
    name = str(id_or_dir)
    if path.is_dir():
        try:
            return load_pretrained(path, backend=backend)
        except CheckpointNotFoundError as err:
            if _looks_like_repo_id(name):  # a local folder shadows the Hub repo of the same name
                raise CheckpointNotFoundError(f"{err} ({name!r} was read as the local folder {path.resolve()}, "
                                              "which exists; to load the Hub repo, run from elsewhere or "
                                              "remove that folder)") from None
            raise
    under_file = next((p for p in path.parents if p.is_file()), None)
    if under_file is not None:
        raise CheckpointNotFoundError(f"{name!r}: {under_file} is a file, not a folder")
    if not _looks_like_repo_id(name):
        if name.startswith((".", "~", "/")) or "/" in name or "\\" in name:
            raise CheckpointNotFoundError(f"no such folder: {name!r}")
        raise CheckpointNotFoundError(f"{name!r} is neither a checkpoint folder nor a Hub repo id like 'org/name'")
    if str(path.parent) != "." and path.parent.is_dir():  # "runs/nonexistent": a folder of this machine's
        raise CheckpointNotFoundError(f"no such folder: {name!r} ({path.parent} is a folder here, so the name was read "
                                      f"as a path); for the Hub repo {name!r}, run from another folder")
    folder = download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    return load_pretrained(folder, backend=backend)


def _card_was_edited(source: Path, config: CheckpointConfig) -> bool:
    """Whether ``source``'s README.md differs from the card :func:`quantswap.save_pretrained` wrote there."""
    card = source / CARD_NAME
    return card.is_file() and card.read_text() != str(model_card(config, name=source.name))


def _own_files(source: Path) -> None:
    """Refuse a checkpoint file that resolves outside its folder (a link to a key, a password file)."""
    root = source.resolve()
    for name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
        target = (source / name).resolve()
        if (source / name).exists() and not target.is_relative_to(root):
            raise CheckpointError(f"{source / name} is a link to {target}, outside the checkpoint folder: quantswap "
                                  "uploads only the folder's own files; copy the file in if it belongs there")


def _stage_folder(source: Path, folder: Path, regenerate_card: bool) -> bool:
    """Copy a checkpoint folder's files for upload, its README.md too when its user edited it
    (returns whether it did). The folder is verified as a quantswap checkpoint first."""
    if not source.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint folder at {source}")
    _own_files(source)
    config = verify(source)
    folder.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(source / name, folder / name)
    if regenerate_card or not _card_was_edited(source, config):
        return False
    shutil.copy2(source / CARD_NAME, folder / CARD_NAME)
    return True


def _export_onnx(folder: Path) -> tuple[int, int, int]:
    """Add ``model.onnx`` to a staged checkpoint folder; returns the input size it was traced with."""
    from quantswap.export import export_onnx

    return export_onnx(load_pretrained(folder, backend="float"), folder / ONNX_NAME).input_size


def push_to_hub(
    model_or_dir: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    regenerate_card: bool = False,
    onnx: bool = False,
    **save_kwargs: Any,
):
    """Upload a checkpoint to the Hub in one commit, creating the repo (and branch) when missing.

    Args:
        model_or_dir: a swapped model (saved first with ``save_kwargs``, e.g. ``fp_dtype="float16"``)
            or a folder written by :func:`quantswap.save_pretrained`.
        repo_id: ``"org/name"``.
        revision: the branch to commit to (default: the repo's main branch).
        regenerate_card: replace a folder's ``README.md`` that its user edited with a fresh card. By
            default an edited card is uploaded as it is, and an untouched one is rendered again with
            ``repo_id`` in its usage snippet.
        onnx: also upload ``model.onnx``, the checkpoint exported by :func:`quantswap.export_onnx` (at
            its training image size, else 224; needs ``pip install 'quantswap[onnx]'``); the card
            says how to run it.

    Returns:
        huggingface_hub's ``CommitInfo`` (``.commit_url``, ``.oid``).
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    check_revision(revision)
    api = HfApi(token=token, **_LIBRARY)
    with tempfile.TemporaryDirectory(prefix="quantswap-push-") as tmp:
        folder = Path(tmp) / "checkpoint"  # a fixed name: nothing of repo_id becomes a path
        if isinstance(model_or_dir, nn.Module):
            save_pretrained(model_or_dir, folder, **save_kwargs)
            kept_card = False
        else:
            if save_kwargs:
                raise TypeError(f"save options {sorted(save_kwargs)} apply when pushing a model, not a folder")
            kept_card = _stage_folder(Path(model_or_dir), folder, regenerate_card)
        onnx_size = _export_onnx(folder) if onnx else None
        if not kept_card:  # the card names the repo
            model_card(read_config(folder), repo_id=repo_id, onnx_input_size=onnx_size).save(folder / CARD_NAME)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {repo_id.split('/')[1]} with quantswap {__version__}",
        )
