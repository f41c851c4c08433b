"""quantswap.recalibrate_bn and `quantswap finetune --recalibrate-bn`."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import quantswap
from quantswap.train import FinetuneConfig


def _model():
    return quantswap.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                                            nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(128, 4)), method="xnor")


def test_statistics_are_the_average_over_the_batches_and_the_rest_is_kept():
    model = _model()
    model.eval()
    bn = model.get_submodule("1")
    bn.momentum = 0.3
    batches = [(torch.randn(4, 3, 8, 8) * (i + 1), torch.zeros(4)) for i in range(5)]
    quantswap.recalibrate_bn(model, batches, batches=3)
    # the plain average over the first 3 batches of each batch's mean and unbiased variance
    pre = [model.get_submodule("0")(x) for x, _ in batches[:3]]
    mean = torch.stack([p.mean((0, 2, 3)) for p in pre]).mean(0)
    var = torch.stack([p.var((0, 2, 3), correction=1) for p in pre]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, var, atol=1e-4, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3 and not model.training


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="batches must be a positive integer"):
        quantswap.recalibrate_bn(_model(), [], batches=0)
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        quantswap.recalibrate_bn(quantswap.binarize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)),
                                                    method="xnor"), [torch.randn(2, 4)])
    with pytest.raises(ValueError, match="recalibrate_bn must be in"):
        FinetuneConfig(recalibrate_bn=-1)


def test_finetune_recalibrates_the_swapped_model_before_training(tmp_path):
    """With --max-steps 1 and lr 1e-9, the saved BatchNorm statistics are the re-estimated ones, not the parent's."""
    common = ["-m", "quantswap", "finetune", "--model", "timm:test_resnet", "--method", "irnet", "--weights", "none",
              "--data", "fashion-mnist", "--image-size", "32", "--train-subset", "64", "--val-subset", "32",
              "--batch-size", "16", "--max-steps", "1", "--lr", "1e-9", "--no-eval-parent", "--device", "cpu"]
    runs = {}
    for batches in ("0", "3"):
        out = tmp_path / f"run{batches}"
        done = subprocess.run([sys.executable, *common, "--recalibrate-bn", batches, "--output", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs[batches] = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]
    key = next(k for k in runs["0"] if k.endswith("bn1.running_mean") and k != "bn1.running_mean")  # a block's
    assert not torch.equal(runs["0"][key], runs["3"][key])
    tracked = next(k for k in runs["3"] if k.endswith("num_batches_tracked"))
    assert int(runs["3"][tracked]) == int(runs["0"][tracked]) + 3  # 3 measured batches, then the training step


def test_recalibrating_a_packed_model_refolds_and_saves_what_it_computes(tmp_path):
    """Issue 29: the BatchNorms folded into packed convs are re-estimated too (they used to be reset while the
    convs kept the old folded values), and the saved model computes what the model in memory computes."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    bnn = quantswap.binarize(resnet18(num_classes=10), method="xnor").eval()
    packed = quantswap.freeze(bnn)
    assert quantswap.get_freeze_report(packed).folded
    batches = [torch.randn(8, 3, 32, 32) * 2 + 0.5 for _ in range(3)]
    before = packed.layer1[0].bn1.running_mean.clone()
    quantswap.recalibrate_bn(packed, batches, batches=3)
    bn = packed.layer1[0].bn1
    assert not torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 3  # measured, not reset
    assert type(bn).__name__ == "FoldedBatchNorm2d"  # folded again
    fresh = quantswap.freeze(bnn)  # the same model folded from the new statistics
    fresh.load_state_dict(packed.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(packed(x), fresh(x), atol=1e-6, rtol=1e-6)
    quantswap.save_pretrained(packed, tmp_path, base_model="torchvision:resnet18", base_model_args={"num_classes": 10})
    torch.testing.assert_close(quantswap.from_pretrained(tmp_path)(x), packed(x), atol=1e-6, rtol=1e-6)
