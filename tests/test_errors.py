"""Bad input gets an error that names the problem and the fix."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import quantswap


def test_not_a_module():
    with pytest.raises(TypeError, match="expected a torch.nn.Module.*build the model first"):
        quantswap.binarize("resnet18", method="irnet")


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=f"unknown method 'dorefa'.*{', '.join(quantswap.list_methods())}"):
        quantswap.binarize(resnet18(), method="dorefa")


def test_ternary_through_binarize_points_to_ternarize():
    with pytest.raises(ValueError, match="quantswap.ternarize"):
        quantswap.binarize(resnet18(), method="ternary")


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.gate, self.conv2, self.conv3 = nn.Conv2d(3, 4, 3), DataDependent(), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv3(self.conv2(self.gate(self.conv1(x))))


def test_untraceable_model_names_where_and_suggests_leaf_modules():
    with pytest.raises(quantswap.UntraceableModelError, match=r"in module 'gate' \(DataDependent\).*leaf_modules=\[DataDependent\]"):
        quantswap.binarize(Untraceable(), method="xnor")
    fixed = quantswap.binarize(Untraceable(), method="xnor", leaf_modules=["gate"])
    assert fixed(torch.randn(1, 3, 8, 8)).shape == (1, 2, 4, 4)


def test_no_eligible_layer():
    with pytest.raises(ValueError, match="no Conv2d or Linear layer"):
        quantswap.binarize(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), method="xnor")


def test_everything_excluded():
    with pytest.raises(ValueError, match="no layer left to quantize.*matched by exclude.*skip_first=False"):
        quantswap.binarize(resnet18(), method="xnor", exclude=["*"])
    with pytest.raises(ValueError, match="no layer left to quantize"):
        quantswap.binarize(nn.Sequential(nn.Linear(4, 4)), method="xnor")  # only layer is first and last


def test_already_swapped():
    bnn = quantswap.binarize(resnet18(), method="xnor")
    with pytest.raises(ValueError, match="already swapped.*original float model"):
        quantswap.ternarize(bnn)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"expansion": 0}, "expansion must be an integer from 1 to 8"),
        ({"expansion": 5}, "no default thresholds"),
        ({"expansion": 2, "thresholds": (0.1,)}, "one per branch"),
        ({"expansion": 2, "thresholds": (0.2, 0.1)}, "strictly increasing"),
        ({"expansion": 1, "thresholds": (1.5,)}, r"in \(0, 1\)"),
        ({"expansion": 1, "activations": True}, "quantizes weights only"),
    ],
)
def test_invalid_ternary_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantswap.ternarize(resnet18(), **kwargs)


def test_unknown_option_lists_the_method_options():
    with pytest.raises(TypeError, match="unknown option.*'t_mid'.*t_max"):
        quantswap.binarize(resnet18(), method="irnet", t_mid=3)


def test_bad_progress_and_schedule():
    bnn = quantswap.binarize(resnet18(), method="irnet")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        quantswap.set_progress(bnn, 1.5)
    with pytest.raises(ValueError, match="0 < t_min < t_max"):
        quantswap.IRNetConfig(t_min=10, t_max=1)


def test_bad_patterns_and_leaves():
    with pytest.raises(TypeError, match="fnmatch patterns"):
        quantswap.binarize(resnet18(), method="xnor", exclude=[3])
    with pytest.raises(TypeError, match="leaf_modules"):
        quantswap.binarize(resnet18(), method="xnor", leaf_modules=[3])


def test_config_from_dict_refuses_unknown_and_newer():
    with pytest.raises(ValueError, match="newer than this quantswap"):
        quantswap.config_from_dict({"method": "xnor", "version": 99})
    with pytest.raises(TypeError, match="unknown option"):  # the one check of config_for (issue 11)
        quantswap.config_from_dict({"method": "xnor", "bogus": 1})


def test_one_unknown_option_check_serves_the_api_the_cli_recipes_and_checkpoints(tmp_path, capsys):
    """Issue 11: config_for holds the only check; every entry point gives its message."""
    from quantswap.cli import main
    from quantswap.train import FinetuneConfig

    message = "unknown option(s) ['t_mn'] for method 'irnet' (did you mean 't_min'?)"
    for attempt in (lambda: quantswap.config_for("irnet", t_mn=1), lambda: quantswap.binarize(resnet18(), t_mn=1),
                    lambda: quantswap.config_from_dict({"method": "irnet", "t_mn": 1}),
                    lambda: FinetuneConfig(method="irnet", method_options={"t_mn": 1})):
        with pytest.raises(TypeError) as err:
            attempt()
        assert message in str(err.value)
    assert main(["finetune", "--method", "irnet", "--method-options", "t_mn=1", "--output", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["finetune", "--method", "irnet", "--expansion", "2", "--output", str(tmp_path / "r")]) == 2
    assert "unknown option(s) ['expansion'] for method 'irnet'" in capsys.readouterr().err


def test_binarize_refuses_a_method_that_is_not_binary():
    with pytest.raises(ValueError, match="method 'ternary' is not binary: use quantswap.ternarize"):
        quantswap.binarize(resnet18(), method="ternary")
