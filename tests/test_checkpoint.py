"""save_pretrained -> from_pretrained on local folders: equal outputs, sizes, and every bad input."""

import json
import os

import pytest
import timm
import timm.data
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.models import googlenet, mobilenet_v2, resnet18

import quantswap
from quantswap.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, CheckpointNotFoundError

MODELS = {
    "resnet18": lambda: resnet18(num_classes=10),
    "mobilenet_v2": lambda: mobilenet_v2(num_classes=10),
    "timm:resnet18d": lambda: timm.create_model("resnet18d", num_classes=10),
    "timm:efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
}
X = torch.randn(2, 3, 32, 32)


def _trained(model):
    """A swapped model whose BatchNorm statistics have moved, in eval mode."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


def _rounded(model, dtype):
    """The frozen model with every real-valued tensor rounded to ``dtype``: what a load must equal."""
    ref = quantswap.freeze(model)
    state = {k: v.to(dtype).to(v.dtype) if v.is_floating_point() and not k.endswith(".weight_quantizer.scale") else v
             for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    return ref


@pytest.mark.variants_with("arch", in_turn=("resnet18", "mobilenet_v2", "timm:resnet18d", "timm:efficientnet_b0"))
def test_save_load_gives_identical_outputs(tmp_path, arch, variant):
    model = _trained(quantswap.swap(MODELS[arch](), variant.config()))
    size = quantswap.save_pretrained(model, tmp_path / "ckpt")
    loaded = quantswap.from_pretrained(tmp_path / "ckpt")  # W1/A1 layers packed, the others decoded
    assert not loaded.training and quantswap.frozen.is_frozen(loaded)
    assert torch.equal(loaded(X), quantswap.freeze(model)(X))
    assert torch.equal(quantswap.from_pretrained(tmp_path / "ckpt", backend="float")(X), model(X))
    header = 8 + int.from_bytes((tmp_path / "ckpt" / WEIGHTS_NAME).read_bytes()[:8], "little")
    payload = size.file_bytes - header  # the tensors, without the JSON header (large for small models)
    assert payload <= 1.01 * size.theoretical_bytes, f"{payload} bytes of tensors for {size.theoretical_bytes:.0f}"
    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert config["base_model"] == {"name": arch if ":" in arch else f"torchvision:{arch}", "args": {"num_classes": 10}}


def test_keep_latent_round_trip_can_keep_training(tmp_path, variant):
    model = _trained(quantswap.swap(resnet18(num_classes=10), variant.config()))
    quantswap.save_pretrained(model, tmp_path / "ckpt", keep_latent=True)
    loaded = quantswap.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training and not quantswap.frozen.is_frozen(loaded)
    assert torch.equal(loaded(X), model(X))
    for name in model.meta["quantswap"].quantized:
        assert torch.equal(loaded.get_submodule(name).weight, model.get_submodule(name).weight)
    loaded.train()(X).sum().backward()
    assert loaded.layer2[0].conv1.weight.grad is not None


@pytest.mark.variants_with("dtype", in_turn=("float16", "bfloat16"))
def test_half_precision_real_layers_load_as_the_rounded_model(tmp_path, variant, dtype):
    model = _trained(quantswap.swap(resnet18(num_classes=10), variant.config()))
    quantswap.save_pretrained(model, tmp_path / "ckpt", fp_dtype=dtype)
    with safe_open(str(tmp_path / "ckpt" / WEIGHTS_NAME), "pt") as f:
        assert f.get_slice("fc.weight").get_dtype() == {"float16": "F16", "bfloat16": "BF16"}[dtype]
        assert f.get_slice("layer1.0.conv1.weight_quantizer.codes").get_dtype() == "U8"
    loaded = quantswap.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded(X), _rounded(model, getattr(torch, dtype))(X))


@pytest.mark.parametrize("packing", ["bits2", "base3"])
def test_ternary_packings_round_trip(tmp_path, packing):
    model = _trained(quantswap.ternarize(resnet18(num_classes=10), expansion=4))
    size = quantswap.save_pretrained(model, tmp_path / "ckpt", ternary_packing=packing)
    assert torch.equal(quantswap.from_pretrained(tmp_path / "ckpt", backend="float")(X), model(X))
    assert size.ratio <= 1.02
    n = sum(model.get_submodule(name).weight.numel() for name in model.meta["quantswap"].quantized)
    codes_bytes = 4 * n * (2 if packing == "bits2" else 1.6) / 8
    assert size.theoretical_bytes < size.fp32_bytes and codes_bytes < size.file_bytes


def test_frozen_model_saves_like_the_swapped_one(tmp_path):
    model = _trained(quantswap.binarize(resnet18(num_classes=10), method="irnet"))
    quantswap.save_pretrained(model, tmp_path / "a")
    quantswap.save_pretrained(quantswap.freeze(model), tmp_path / "b")
    a, b = (load_file(tmp_path / name / WEIGHTS_NAME) for name in "ab")  # bytes differ: header order is a hash map's
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_googlenet_records_the_builder_arguments_the_state_dict_does_not_show(tmp_path):
    model = _trained(quantswap.binarize(googlenet(num_classes=10, aux_logits=False, transform_input=True,
                                                  init_weights=False), method="xnor"))
    quantswap.save_pretrained(model, tmp_path / "ckpt")
    args = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())["base_model"]["args"]
    assert args == {"aux_logits": False, "transform_input": True, "num_classes": 10}
    assert torch.equal(quantswap.from_pretrained(tmp_path / "ckpt", backend="float")(X), model(X))


def test_resnet18_size_goals(tmp_path):
    """Binary ResNet-18 (ImageNet head): <= 1.02x the theoretical minimum, <= 2.6 MB with float16 real layers."""
    model = quantswap.binarize(resnet18(), method="xnor")
    fp32 = quantswap.save_pretrained(model, tmp_path / "fp32")
    fp16 = quantswap.save_pretrained(model, tmp_path / "fp16", fp_dtype="float16")
    assert fp32.ratio <= 1.02 and fp16.ratio <= 1.02
    assert fp16.file_bytes <= 2.6e6 and fp32.fp32_bytes == pytest.approx(46.8e6, rel=0.01)
    assert fp32.theoretical_bytes == quantswap.summary(model).size_bytes


def test_model_card(tmp_path):
    model = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    size = quantswap.save_pretrained(model, tmp_path / "r18", metrics={"dataset": "fashion-mnist", "top1": 90.25})
    card = ModelCard.load(tmp_path / "r18" / "README.md")
    assert card.data.library_name == "quantswap" and {"irnet", "binary", "W1/A1", "resnet18"} <= set(card.data.tags)
    assert card.data.eval_results[0].metric_value == 90.25
    assert f"{size.file_bytes / 1e6:.2f} MB" in card.text and "XOR-popcount kernels" in card.text
    assert "not\nfaster" not in card.text  # W1/A1: the packed kernels serve it


def test_model_card_says_a_model_without_binary_activations_is_not_faster(tmp_path):
    model = quantswap.binarize(resnet18(num_classes=10), method="irnet", activations=False)
    quantswap.save_pretrained(model, tmp_path / "w1a32")
    card = ModelCard.load(tmp_path / "w1a32" / "README.md")
    assert "not\nfaster than the FP model" in card.text and "XOR-popcount kernels" not in card.text


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "ckpt"
    quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="irnet"), folder)
    return folder


def _copy(saved, tmp_path, edit_config=None):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in os.listdir(saved):
        (folder / name).write_bytes((saved / name).read_bytes())
    if edit_config:
        config = json.loads((folder / CONFIG_NAME).read_text())
        edit_config(config)
        (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def test_missing_folder_and_files(saved, tmp_path, monkeypatch):
    with pytest.raises(CheckpointNotFoundError, match="no such folder"):
        quantswap.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointNotFoundError, match="neither a checkpoint folder nor a Hub repo id"):
        quantswap.from_pretrained("nowhere")
    # Issue 29: a path under a folder of this machine fails at once, without asking the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr("quantswap.hub.download", lambda *a, **k: pytest.fail("asked the Hub"))
    for name in ("runs/nonexistent", "./x", "a/b/c"):
        with pytest.raises(CheckpointNotFoundError, match="no such folder"):
            quantswap.from_pretrained(name)
    folder = _copy(saved, tmp_path)
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors is missing"):
        quantswap.from_pretrained(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointNotFoundError, match="config.json is missing"):
        quantswap.from_pretrained(folder)


def test_pickled_weights_are_refused_without_unpickling(saved, tmp_path, monkeypatch):
    folder = _copy(saved, tmp_path)
    (folder / WEIGHTS_NAME).unlink()
    torch.save({"fc.weight": torch.zeros(1)}, folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("quantswap must never call torch.load on a checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(CheckpointError, match="never unpickles"):
        quantswap.from_pretrained(folder)
    os.replace(folder / "pytorch_model.bin", folder / WEIGHTS_NAME)  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match="pickle/zip file, not safetensors"):
        quantswap.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "header", "garbage"])
def test_corrupt_safetensors(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    data = (folder / WEIGHTS_NAME).read_bytes()
    data = {"truncate": data[: len(data) // 2], "header": data[:8] + b"{" * 64 + data[72:],
            "garbage": b"\x07" * 1000}[damage]
    (folder / WEIGHTS_NAME).write_bytes(data)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        quantswap.from_pretrained(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["base_model"].update(name="torchvision:resnet999"), "unknown torchvision classification model"),
        (lambda c: c["base_model"].update(name="os:system"), "unknown model source 'os'"),
        (lambda c: c["base_model"]["args"].update(checkpoint_path="/etc/passwd"), "'checkpoint_path' is not allowed"),
        (lambda c: c["quantization"].update(method="dorefa"), "dorefa"),
        (lambda c: c.update(format_version=99), "format 99.*pip install -U quantswap"),
        (lambda c: c.pop("quantization"), "lacks the 'quantization' entry"),
        (lambda c: c.update(library_name="transformers"), "not a quantswap config"),
        (lambda c: c["base_model"]["args"].update(num_classes=5), r"'fc.(weight|bias)' has shape \[10.*expects \[5"),
        (lambda c: c["quantization"].update(method="xnor", t_min=0.1), "unknown option"),
        (lambda c: c["quantization"].update(keep_downsample=False),
         r"'layer2.0.downsample.0.weight_quantizer.codes'|does not match"),
    ],
)
def test_bad_config(saved, tmp_path, edit, message):
    folder = _copy(saved, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        quantswap.from_pretrained(folder)


def test_invalid_json(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        quantswap.from_pretrained(folder)


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model = quantswap.binarize(resnet18(num_classes=10), method="irnet")

    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("quantswap.checkpoint.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        quantswap.save_pretrained(model, tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []


def test_saving_over_a_folder_replaces_only_the_checkpoint_files(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "notes.txt").write_text("mine")
    model = _trained(quantswap.binarize(resnet18(num_classes=10), method="xnor"))
    quantswap.save_pretrained(model, folder)
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["copy"]
    assert torch.equal(quantswap.from_pretrained(folder, backend="float")(X), model(X))


def test_a_float_model_saves_as_a_float_checkpoint(tmp_path):
    """Issue 29: the demo's float parent could not be evaluated or exported. A float model saves as a
    checkpoint with ``"quantization": null`` and loads back as itself."""
    model = _trained(resnet18(num_classes=10))
    size = quantswap.save_pretrained(model, tmp_path / "fp", fp_dtype="bfloat16", metrics={"top1": 91.6})
    assert size.file_bytes < 0.51 * size.fp32_bytes  # 16 bits per weight
    config = json.loads((tmp_path / "fp" / CONFIG_NAME).read_text())
    assert config["quantization"] is None and config["base_model"]["name"] == "torchvision:resnet18"
    assert "float: not quantized" in (tmp_path / "fp" / "README.md").read_text()
    loaded = quantswap.from_pretrained(tmp_path / "fp")
    assert not loaded.training and loaded.meta["quantswap_checkpoint"].quantization is None
    assert torch.equal(loaded(X), _rounded_float(model, torch.bfloat16)(X))
    quantswap.binarize(loaded, method="irnet")  # the parent of a new binary model
    with pytest.raises(ValueError, match="a float model has none"):
        quantswap.save_pretrained(model, tmp_path / "b", keep_latent=True)
    assert not (tmp_path / "b").exists()


def _rounded_float(model, dtype):
    rounded = resnet18(num_classes=10).eval()
    rounded.load_state_dict({k: v.to(dtype).to(v.dtype) if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    return rounded


def test_bad_save_arguments(tmp_path):
    model = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    with pytest.raises(ValueError, match="fp_dtype.*float32, float16, bfloat16"):
        quantswap.save_pretrained(model, tmp_path / "a", fp_dtype="int8")
    with pytest.raises(ValueError, match="ternary_packing"):
        quantswap.save_pretrained(model, tmp_path / "a", ternary_packing="base4")
    with pytest.raises(ValueError, match="keep_latent=True needs the latent weights"):
        quantswap.save_pretrained(quantswap.freeze(model), tmp_path / "a", keep_latent=True)
    custom = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 2, 3))
    with pytest.raises(ValueError, match="Pass base_model='torchvision:NAME'"):
        quantswap.save_pretrained(quantswap.binarize(custom, method="xnor"), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_a_timm_checkpoint_keeps_its_data_config_and_names_its_base_on_the_card(tmp_path):
    """Issue 11: ``timm.data.resolve_data_config(model=...)`` gives the base's preprocessing on a loaded
    model, and the card says ``base_model: timm/...`` with ``base_model_relation: quantized``."""
    base = timm.create_model("resnet18d", num_classes=10)
    model = _trained(quantswap.binarize(base, method="irnet"))
    quantswap.save_pretrained(model, tmp_path / "ckpt", metrics={"dataset": "cifar10", "top1": 80.0})
    loaded = quantswap.from_pretrained(tmp_path / "ckpt")
    expected = timm.data.resolve_data_config(model=base)
    assert timm.data.resolve_data_config(model=loaded) == expected
    assert timm.data.resolve_data_config(model=model) == expected  # the swap keeps it too
    card = ModelCard.load(tmp_path / "ckpt" / "README.md")
    assert card.data.base_model == "timm/resnet18d.ra2_in1k" and card.data.base_model_relation == "quantized"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["uoft-cs/cifar10"]
    assert card.data.eval_results[0].metric_value == 80.0 and card.data.pipeline_tag == "image-classification"


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c.update(storage={"fp_dtype": "float8"}), "storage"),
        (lambda c: c.update(storage=[1]), "storage"),
        (lambda c: c.update(size={"file_bytes": "big"}), "size"),
        (lambda c: c.update(leaf_modules=[3]), "leaf_modules"),
        (lambda c: c.update(metrics="91%"), "metrics"),
        (lambda c: c.update(pretrained_cfg=["mean"]), "pretrained_cfg"),
        (lambda c: c["quantization"].update(expansion=2), "quantization"),
    ],
)
def test_a_config_with_a_bad_field_is_refused_naming_the_field(tmp_path, edit, field):
    folder = tmp_path / "ckpt"
    quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="xnor"), folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"config.json: field '{field}'"):
        quantswap.from_pretrained(folder)


def test_checkpoint_config_round_trips_and_storage_facts_come_from_packing(tmp_path):
    from quantswap.checkpoint_config import CheckpointConfig, StorageConfig
    from quantswap.packing import SCHEMES

    folder = tmp_path / "ckpt"
    quantswap.save_pretrained(quantswap.ternarize(resnet18(num_classes=10), expansion=2), folder,
                              fp_dtype=torch.float16, ternary_packing="base3", license="mit")
    config = CheckpointConfig.read(folder)
    assert CheckpointConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text())) == config
    assert config.storage == StorageConfig("float16", "base3", False) and config.license == "mit"
    assert config.storage.bits_per_code(3) == SCHEMES["base3"].bits_per_code == 1.6
    assert (config.storage.scheme(2), config.storage.fp_bits) == ("bits1", 16)
