"""The CLI, for every registered method variant: ``quantswap summary`` and a one-step ``quantswap finetune``
whose packed checkpoint loads back with the variant's configuration."""

from __future__ import annotations

import torch

import quantswap
from quantswap.cli import main


def _method_flags(variant) -> list[str]:
    flags = ["--method", variant.method]
    if variant.options:
        flags += ["--method-options", *(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                        for k, v in variant.options.items())]
    return flags


def test_summary_cli_runs_every_variant(variant, capsys):
    assert main(["summary", "--model", "resnet18", "--num-classes", "10", "--input-size", "1", "3", "32", "32",
                 *_method_flags(variant)]) == 0
    out = capsys.readouterr().out
    assert "theoretical size" in out and "layer1.0.conv1" in out


def test_finetune_cli_runs_every_variant(variant, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--model", "timm:test_resnet", "--weights", "none", "--train-subset", "32",
                 "--val-subset", "32", "--batch-size", "16", "--max-steps", "1", "--image-size", "32",
                 "--device", "cpu", "--output", str(out), *_method_flags(variant)]) == 0
    assert f"{variant.method} checkpoint" in capsys.readouterr().out
    loaded = quantswap.from_pretrained(out / "model")
    config = loaded.meta["quantswap_checkpoint"].quantization
    assert config == quantswap.config_for(variant.method, **variant.options)
    assert loaded(torch.randn(2, 3, 32, 32)).shape == (2, 10)
