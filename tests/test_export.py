"""ONNX export (quantswap.export_onnx, quantswap export, push --onnx) and torch.export of frozen models.

Every exported file is run in onnxruntime's CPU provider and compared with the frozen PyTorch model
(<= 1e-4 of the output's magnitude) on a batch other than the one it was traced with; its quantized
weights are read back from the file and compared with the frozen model's codes and scales.
"""

import importlib.util
import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from huggingface_hub import HfApi
from onnx import numpy_helper
from real_data import imagenet_photos, mobilenet_v2_imagenet_state_dict
from torch import fx, nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2, resnet18

import quantswap
from quantswap.cli import main
from quantswap.nn.layers import QuantLayer

RTOL = 1e-4  # onnxruntime vs PyTorch, relative to the output's largest magnitude
#: One variant of each kind of quantized layer (W1/A1 integer-exact, RSign, an offset, W1/A32, ternary branches)
#: and the registry's test-only ones; the other variants take the same paths and run with ``make test-sweep``.
KINDS = ("xnor", "react", "adabin", "irnet-w1a32", "ternary-t2", "throwaway", "throwaway-a1")


@torch.no_grad()
def _trained(model: nn.Module, size: int = 32) -> nn.Module:
    """BatchNorm as after training: affine moved off its initial values, statistics measured on a batch.
    (With initial statistics a random binary net is chaotic, so float rounding decides its output, and
    binary activations sit at exactly 0, where two runtimes may pick different signs.)"""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the plain average over the batches seen
            if m.affine:
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    model.train()(torch.randn(16, 3, size, size))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # a channel that is constant on the batch (sign of a ReLU) is
            m.running_var.clamp_(min=0.1)  # not divided by sqrt(eps), which would amplify float rounding
    return model.eval()


def _swapped(variant, base: nn.Module) -> nn.Module:
    return _trained(quantswap.swap(base, quantswap.config_for(variant.method, **variant.options)))


def _run(path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"pixel_values": x.numpy()})[0])


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= RTOL * want.abs().max()


def _int2_terms(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each quantized weight's (codes, scale) read back from the file, by codes name: an INT2 initializer
    decoded by ``Cast``, then a ``Mul`` by its scale; an integer-exact layer's codes go to the ``Conv`` or
    ``MatMul`` as ±1 (and, AdaBin's, to a ``ReduceSum``), and its scale is the constant behind the run-time
    ``Expand`` of the ``Mul`` after it."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers, producer = {}, {}
    for node in model.graph.node:
        producer.update({name: node for name in node.output})
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def constant_behind(name: str) -> np.ndarray:
        while name not in inits:
            name = producer[name].input[0]  # through Expand / Reshape
        return inits[name]

    terms = {}
    for node in model.graph.node:
        codes = next((t for t in model.graph.initializer if t.name == node.input[0]), None) if node.input else None
        if node.op_type != "Cast" or codes is None or codes.data_type != onnx.TensorProto.INT2:
            continue
        users = readers[node.output[0]]  # AdaBin's codes are also summed over channels (S_w)
        user = next(u for u in users if u.op_type in ("Mul", "Conv", "MatMul", "Gemm"))
        if user.op_type == "Mul":  # codes x scale
            scale = inits[next(name for name in user.input if name in inits)]
        else:  # scale x (x * codes)
            (mul,) = [n for n in readers[user.output[0]] if n.op_type == "Mul"]
            scale = constant_behind(next(name for name in mul.input if name != user.output[0]))
        terms[codes.name] = (numpy_helper.to_array(codes).astype(np.int8),
                             scale.reshape(-1) if scale.size > 1 else scale.reshape(()))
    return terms


def _assert_weights_are_the_codes(path, frozen: nn.Module) -> None:
    """The file's INT2 tensors are the frozen layers' codes, its scales their scales, term by term."""
    terms = _int2_terms(path)
    layers = {n: m for n, m in frozen.named_modules() if isinstance(m, QuantLayer)}
    assert len(terms) == sum(m.codec.branches for m in layers.values())
    for name, layer in layers.items():
        wq = layer.weight_quantizer
        for b, (codes, scale) in enumerate(layer.codec.dequantize_terms(wq.codes, wq.scale)):
            got_codes, got_scale = terms[f"{name}.weight_quantizer.codes{b}"]
            assert np.array_equal(got_codes, codes.numpy()) and np.array_equal(got_scale, scale.numpy())


@pytest.mark.variants_sample(*KINDS)
@pytest.mark.filterwarnings("error:onnxruntime's output differs")  # export_onnx's own check passes too
def test_every_variant_on_resnet18_runs_in_onnxruntime_as_in_pytorch(variant, tmp_path):
    model = _swapped(variant, resnet18(num_classes=10))
    done = quantswap.export_onnx(model, tmp_path / "m.onnx", input_size=32)
    assert done.path == tmp_path / "m.onnx" and done.file_bytes == os.path.getsize(done.path)
    x = torch.randn(3, 3, 32, 32)  # traced with batch 2: the batch axis is dynamic
    for backend in ("float", "packed"):
        _assert_close(_run(done.path, x), quantswap.freeze(model, backend=backend)(x))
    frozen = quantswap.freeze(model, backend="float")
    _assert_weights_are_the_codes(done.path, frozen)
    ops = {node.op_type for node in onnx.load(str(done.path)).graph.node}
    assert "Sign" not in ops
    assert ({"GreaterOrEqual", "Where"} <= ops) == any(m.input_quantizer is not None for m in frozen.modules()
                                                        if isinstance(m, QuantLayer))


@pytest.mark.parametrize(("arch", "variant_name"), [
    ("mobilenet_v2", "bireal"), ("timm:resnet18d", "ternary-t4"),
])  # a binary and a ternary variant; every variant on both: behind the sweep marker (make test-sweep)
def test_mobilenet_v2_and_a_timm_model_run_in_onnxruntime_as_in_pytorch(arch, variant_name, tmp_path):
    _mobilenet_and_timm(arch, variant_name, tmp_path)


@pytest.mark.sweep
@pytest.mark.parametrize("arch", ["mobilenet_v2", "timm:resnet18d"])
def test_every_variant_on_mobilenet_v2_and_timm(arch, variant, tmp_path):
    _mobilenet_and_timm(arch, variant.name, tmp_path)


def _mobilenet_and_timm(arch: str, variant_name: str, tmp_path) -> None:
    from quantswap.models import build_model

    variant = next(v for v in quantswap.list_variants() if v.name == variant_name)
    model = _swapped(variant, build_model(arch, num_classes=10))
    done = quantswap.export_onnx(model, tmp_path / "m.onnx", input_size=(3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    _assert_close(_run(done.path, x), quantswap.freeze(model)(x))
    _assert_weights_are_the_codes(done.path, quantswap.freeze(model, backend="float"))


def test_real_mobilenet_v2_ternarized_keeps_its_top1_on_real_photos_in_onnxruntime(tmp_path):
    """Issue 16: MobileNetV2 ternarized (t=2) from its real ImageNet weights; onnxruntime and PyTorch agree
    on the 20 labelled ImageNet photos (same top-1, outputs within 1e-4)."""
    from PIL import Image

    fp = mobilenet_v2()
    fp.load_state_dict(mobilenet_v2_imagenet_state_dict())
    frozen = quantswap.freeze(quantswap.ternarize(fp.eval(), expansion=2))
    done = quantswap.export_onnx(frozen, tmp_path / "mbv2.onnx")  # default: 224 px, 3 channels
    assert done.input_size == (3, 224, 224)
    preprocess = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _ in imagenet_photos()])
    got, want = _run(done.path, x), frozen(x)
    _assert_close(got, want)
    assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.filterwarnings("error:onnxruntime's output differs")  # float16: compared with the model rounded alike
def test_file_sizes_against_the_packed_checkpoints(tmp_path):
    """A binary ResNet-18's file is at most 2.1x its packed safetensors (INT2 spends two bits on one),
    a ternary one at most 1.05x its bits2 checkpoint; float16 real weights shrink the file."""
    for model, limit in ((quantswap.binarize(resnet18(), method="xnor"), 2.1),
                         (quantswap.ternarize(resnet18(), expansion=2), 1.05)):
        checkpoint = quantswap.save_pretrained(model, tmp_path / f"ckpt-{limit}")
        done = quantswap.export_onnx(model, tmp_path / "m.onnx", input_size=32, check=False)
        assert done.file_bytes <= limit * checkpoint.file_bytes, (done.file_bytes, checkpoint.file_bytes)
    half = quantswap.export_onnx(_trained(model), tmp_path / "half.onnx", input_size=32, fp_dtype="float16")
    assert half.file_bytes < done.file_bytes - 0.9e6  # the 1000-class head (2 MB in float32) in half
    types = {t.name: t.data_type for t in onnx.load(str(half.path)).graph.initializer}
    assert types["fc.weight"] == onnx.TensorProto.FLOAT16 and types["layer1.0.bn1.weight"] == onnx.TensorProto.FLOAT16
    assert types["layer1.0.conv1.weight_quantizer.codes0_scale"] == onnx.TensorProto.FLOAT  # scales stay float32


@pytest.mark.variants_with("backend", in_turn=("packed", "float"))
def test_torch_export_of_frozen_models_runs_and_equals_the_module(variant, backend):
    """Issue 16, part 2: torch.export of a frozen model, packed (the kernels' fake ops) or float."""
    model = _swapped(variant, resnet18(num_classes=10))
    x = torch.randn(3, 3, 32, 32)
    frozen = quantswap.freeze(model, backend=backend)
    program = torch.export.export(frozen, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert torch.equal(program.module()(x), frozen(x))


# -- where it lives for users -----------------------------------------------------------------------


def test_cli_export_of_a_checkpoint_folder(tmp_path, capsys):
    model = _trained(quantswap.binarize(resnet18(num_classes=10), method="bireal"))
    quantswap.save_pretrained(model, tmp_path / "ckpt", metrics={"image_size": 32},
                              pretrained_cfg={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3})
    assert main(["export", "--model", str(tmp_path / "ckpt"), "--output", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "m.onnx" in out and "weights as INT2 in 16 tensors" in out and "onnxruntime = PyTorch" in out
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}  # how to feed it
    assert metadata == {"input_size": "3,32,32", "mean": "0.5,0.5,0.5", "std": "0.25,0.25,0.25"}
    x = torch.randn(2, 3, 32, 32)  # the checkpoint's image size was used
    _assert_close(_run(tmp_path / "m.onnx", x), quantswap.freeze(model)(x))
    assert main(["export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "n.onnx")]) == 2
    assert main(["export", "--model", str(tmp_path / "ckpt"), "--output", str(tmp_path / "n.onnx"),
                 "--input-size", "3", "4", "4"]) == 2
    assert "sides from 8 to 2048 px" in capsys.readouterr().err and not (tmp_path / "n.onnx").exists()


def test_push_with_onnx_uploads_model_onnx_and_says_how_to_run_it(minihub, tmp_path):
    model = _trained(quantswap.ternarize(resnet18(num_classes=10), expansion=2))
    quantswap.save_pretrained(model, tmp_path / "ckpt", metrics={"image_size": 32})
    assert main(["push", str(tmp_path / "ckpt"), "testorg/r18-onnx", "--onnx"]) == 0
    api = HfApi()
    assert {"config.json", "model.safetensors", "README.md", "model.onnx"} <= set(api.list_repo_files("testorg/r18-onnx"))
    card = open(api.hf_hub_download("testorg/r18-onnx", "README.md")).read()
    assert 'hf_hub_download("testorg/r18-onnx", "model.onnx")' in card and "np.random.rand(1, 3, 32, 32)" in card
    x = torch.randn(2, 3, 32, 32)
    _assert_close(_run(api.hf_hub_download("testorg/r18-onnx", "model.onnx"), x), quantswap.freeze(model)(x))


# -- bad input -------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    with pytest.raises(ValueError, match="no quantized layer: use torch.onnx.export"):
        quantswap.export_onnx(resnet18(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"name the file \*\.onnx"):
        quantswap.export_onnx(bnn, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="is not a folder; create it first"):
        quantswap.export_onnx(bnn, tmp_path / "no" / "m.onnx")
    with pytest.raises(ValueError, match="fp_dtype must be one of"):
        quantswap.export_onnx(bnn, tmp_path / "m.onnx", fp_dtype="int8")
    for size in (0, 32.0, (3.0, 32, 32), (100, 32, 32), (1, 32, 32), (2, 3, 32, 32, 1)):
        with pytest.raises(ValueError, match=r"input_size .*(whole numbers|out of range|first convolution takes 3)"):
            quantswap.export_onnx(bnn, tmp_path / "m.onnx", input_size=size)
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(ValueError, match="is a folder; name the file to write"):
        quantswap.export_onnx(bnn, tmp_path / "folder.onnx")
    (tmp_path / "folder.onnx").rmdir()
    assert os.listdir(tmp_path) == []


def test_a_missing_extra_is_named(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    with pytest.raises(ImportError, match=r"needs onnxscript.*pip install 'quantswap\[onnx\]'"):
        quantswap.export_onnx(bnn, tmp_path / "m.onnx")
    assert main(["export", "--model", "testorg/whatever", "--output", str(tmp_path / "m.onnx")]) == 2
    assert os.listdir(tmp_path) == []


class _ReadsItsWeight(nn.Module):
    """A model whose graph reads a conv's weight outside the conv (as torchvision's Swin does)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv2(self.conv(self.stem(x)) * self.conv.weight.mean())
        return self.head(x.mean((2, 3)))


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if bool(x.sum() > 0) else -x


def test_what_onnx_cannot_express_is_named_and_nothing_is_written(tmp_path):
    model = quantswap.binarize(_ReadsItsWeight(), method="xnor")
    with pytest.raises(ValueError, match=r"(?s)conv: its weight is also read outside.*exclude=\['conv'\]"):
        quantswap.export_onnx(model, tmp_path / "m.onnx", input_size=16)
    quantswap.register_leaf_module(_DataDependent)
    branchy = quantswap.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), _DataDependent(),
                                               nn.Flatten(), nn.Linear(8 * 12 * 12, 4)), method="xnor")
    (tmp_path / "keep.onnx").write_bytes(b"an earlier export")
    with pytest.raises(quantswap.OnnxExportError, match="the ONNX exporter could not express this model"):
        quantswap.export_onnx(branchy, tmp_path / "keep.onnx", input_size=16)
    assert os.listdir(tmp_path) == ["keep.onnx"] and (tmp_path / "keep.onnx").read_bytes() == b"an earlier export"
    assert isinstance(model, fx.GraphModule)  # the caller's model is not changed by an export
