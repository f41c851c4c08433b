"""Issue 15: the packed XOR-popcount ops against the pure-PyTorch reference (their oracle) and the
float-decoded layers, on every instruction set this CPU has; packed models end to end.

Tolerances: native and reference are bit-equal (the same integer dot products, the same two float
roundings). Against a float-decoded layer (which sums ``alpha * ±1`` in float) the difference is the
rounding of that sum: within ``1e-5`` absolute for unit-scale inputs and these fan-ins.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet18

import quantswap
from quantswap import kernels
from quantswap.functional import sign
from quantswap.kernels import affine, reference
from quantswap.nn.packed import PackedConv2d, PackedLinear, packs

NATIVE = kernels.load().backend == "native"
ISAS = [isa for isa in kernels.ISAS if NATIVE and kernels.set_isa(isa) == isa] or [None]
kernels.set_isa(None) if NATIVE else None
#: Every method of quantswap's own whose W1/A1 layers the packed kernels serve.
W1A1 = [v.name for v in quantswap.list_variants() if packs(v.config()) and type(v.config()).__module__.startswith("quantswap.")]


@pytest.fixture(params=ISAS, ids=lambda isa: isa or "reference")
def isa(request):
    if request.param is not None:
        kernels.set_isa(request.param)
    yield request.param
    if NATIVE:
        kernels.set_isa(None)


def _codes(*shape: int) -> torch.Tensor:
    return (torch.randint(0, 2, shape, dtype=torch.int8) * 2 - 1).contiguous()


def _conv_cases(n: int = 40):
    """Random convolutions covering every value the issue lists at least once."""
    rng = random.Random(15)
    values = dict(kernel=[1, 3, 5, 7], stride=[1, 2], padding=[0, 1, 2], dilation=[1, 2], groups=[1, 2, 4],
                  channels_per_group=[3, 16, 64, 70, 130], batch=[1, 3], channels_last=[False, True])
    cases = [{k: v[i % len(v)] for k, v in values.items()} for i in range(5)]
    cases += [{k: rng.choice(v) for k, v in values.items()} for _ in range(n - len(cases))]
    return cases


@pytest.mark.parametrize("case", _conv_cases(), ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}g{groups}"
                         "c{channels_per_group}n{batch}{}".format("cl" if c["channels_last"] else "", **c))
def test_bconv2d_equals_the_reference_and_the_float_conv(case, isa):
    g, k, d = case["groups"], case["kernel"], case["dilation"]
    cin, cout = g * case["channels_per_group"], g * 12
    codes, alpha, bias = _codes(cout, cin // g, k, k), torch.rand(cout) + 0.5, torch.randn(cout)
    size = (k - 1) * d + 5
    x = torch.randn(case["batch"], cin, size, size + 3)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, float("nan")])  # sign: 0 and -0 are +1, NaN is -1 as in float
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (case["stride"],) * 2, (case["padding"],) * 2, (d, d)
    y = kernels.bconv2d(x, kernels.pack_weight(codes, g), alpha, bias, in_channels=cin, stride=args[0],
                        padding=args[1], dilation=args[2])
    oracle = reference.bconv2d(x, kernels.pack_weight(codes, g), alpha, bias, cin, *map(list, args))
    assert torch.equal(y, oracle)
    decoded = F.conv2d(sign(x), codes.float() * alpha.view(-1, 1, 1, 1), bias, *args, groups=g)
    torch.testing.assert_close(y, decoded, rtol=0, atol=1e-5 * cin * k * k / 64)
    assert y.is_contiguous(memory_format=torch.channels_last) == case["channels_last"]
    _check_offset_terms(x, codes, g, args, isa)


def _check_offset_terms(x, codes, groups, args, isa):
    """A binary set that is not ±1 (AdaBin): input ``a·s + b``, weight ``α·s_w + β`` per channel, zero padding."""
    alpha, beta, a, b = torch.rand(len(codes)) + 0.5, torch.randn(len(codes)), torch.tensor(-0.8), torch.tensor(0.3)
    c0, offset = affine.coefficients(alpha, beta, a, b)
    packed, cin = kernels.pack_weight(codes, groups), x.shape[1]
    for bias in (None, torch.randn(len(codes))):
        y = kernels.bconv2d(x, packed, c0, bias, in_channels=cin, stride=args[0], padding=args[1], dilation=args[2],
                            offset=offset)
        assert torch.equal(y, reference.bconv2d(x, packed, c0, bias, cin, *map(list, args), offset)), isa
        weight = codes.double() * alpha.double().view(-1, 1, 1, 1) + beta.double().view(-1, 1, 1, 1)
        exact = F.conv2d(a * sign(x).double() + b, weight, None if bias is None else bias.double(), *args, groups=groups)
        torch.testing.assert_close(y.double(), exact, rtol=0, atol=1e-6 * float(exact.abs().max()))  # a few roundings


@pytest.mark.parametrize("shape", [(1, 512, 1000), (3, 70, 9), (8, 2304, 512), (2, 4096, 4096)])
def test_blinear_equals_the_reference_and_the_float_linear(shape, isa):
    n, cin, cout = shape
    codes, alpha, bias = _codes(cout, cin), torch.rand(cout), torch.randn(cout)
    x = torch.randn(n, cin)
    y = kernels.blinear(x, kernels.pack_weight(codes), alpha, bias)
    assert torch.equal(y, reference.blinear(x, kernels.pack_weight(codes), alpha, bias))
    torch.testing.assert_close(y, F.linear(sign(x), codes.float() * alpha[:, None], bias), rtol=0, atol=1e-5 * cin / 64)
    beta, a, b = torch.randn(cout), torch.tensor(1.3), torch.tensor(-0.4)  # AdaBin's sets
    c0, offset = affine.coefficients(alpha, beta, a, b)
    y = kernels.blinear(x, kernels.pack_weight(codes), c0, bias, offset)
    assert torch.equal(y, reference.blinear(x, kernels.pack_weight(codes), c0, bias, offset))
    exact = F.linear(a * sign(x).double() + b, codes.double() * alpha[:, None].double() + beta[:, None].double(),
                     bias.double())
    torch.testing.assert_close(y.double(), exact, rtol=0, atol=1e-6 * float(exact.abs().max()))


def test_pack_weight_round_trips_and_rejects_bad_shapes():
    codes = _codes(20, 3, 5, 5)
    assert torch.equal(kernels.unpack_weight(kernels.pack_weight(codes, 4), 20, 3), codes)
    assert kernels.pack_weight(codes, 4).numel() * 8 <= codes.numel() / 8 * 64  # bits, padded to 64 x 8 lanes
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        kernels.pack_weight(codes, 3)


@pytest.mark.skipif(not NATIVE, reason="the native kernels could not be built here")
def test_native_ops_reject_bad_input_with_the_fix():
    w, alpha = kernels.pack_weight(_codes(8, 16, 3, 3)), torch.ones(8)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.quantswap.bconv2d(torch.randn(1, 16, 5, 5).double(), w, alpha, None, 16, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match=r"expected input \[N, 16, H, W\]"):
        torch.ops.quantswap.bconv2d(torch.randn(1, 8, 5, 5), w, alpha, None, 16, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="Kernel size can.t be greater than actual input size"):
        torch.ops.quantswap.bconv2d(torch.randn(1, 16, 2, 2), w, alpha, None, 16, [1, 1], [0, 0], [1, 1])


def _trained(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine moved off their initial values (no activation sits at 0), and
    ReActNet's sign thresholds too."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.running_mean, m.weight, m.bias):
                t.data.uniform_(-1, 1)
            m.running_var.data.uniform_(0.5, 2)
        elif hasattr(m, "binary_set"):  # AdaBin's input set β ∓ α
            m.alpha.data.uniform_(0.5, 1.5)
            m.beta.data.uniform_(-0.3, 0.3)
        elif hasattr(m, "sign_input"):
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _with_reference_ops(model: nn.Module) -> nn.Module:
    """The same packed model with each packed layer calling the reference directly: the oracle."""
    for m in model.modules():
        w = getattr(m, "weight_quantizer", None)
        q = getattr(m, "input_quantizer", None)
        shifted = (lambda x, q=q: q.sign_input(x)) if hasattr(q, "sign_input") else (lambda x: x)  # RSign: x + b
        if isinstance(m, PackedConv2d):  # with any BatchNorm folded into its output transform
            def forward(x, m=m, w=w, s=shifted):
                alpha, bias, offset = m.output_transform()
                return reference.bconv2d(s(x), w.words, alpha, bias, m.in_channels, list(m.stride), list(m.padding),
                                         list(m.dilation), offset)
            m.forward = forward
        elif isinstance(m, PackedLinear):
            m.forward = lambda x, m=m, w=w, s=shifted: reference.blinear(s(x), w.words, *m.output_transform())
    return model


@pytest.mark.parametrize("arch", ["resnet18", "timm:resnet18d"])
@pytest.mark.parametrize("method", W1A1)
def test_packed_model_equals_its_oracle_and_the_float_backend(method, arch):
    import timm

    base = resnet18(num_classes=10) if arch == "resnet18" else timm.create_model("resnet18d", num_classes=10)
    bnn = _trained(quantswap.binarize(base, method=method))
    packed, decoded = quantswap.freeze(bnn), quantswap.freeze(bnn, backend="float")
    report = quantswap.get_freeze_report(packed)
    assert len(report.packed) == len(bnn.meta["quantswap"].quantized) - len(report.decoded) >= 16
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        y, y_float = packed(x), decoded(x)
        assert torch.equal(y, _with_reference_ops(quantswap.freeze(bnn))(x))
    torch.testing.assert_close(y, y_float, rtol=1e-3, atol=1e-3)  # a sign may flip where a value rounds across 0
    assert torch.equal(y.argmax(1), y_float.argmax(1))


def test_freeze_report_names_every_layer_kept_decoded_and_why():
    bnn = quantswap.binarize(resnet18(num_classes=10), method="xnor", skip_first=False, skip_last=False).eval()
    report = quantswap.get_freeze_report(quantswap.freeze(bnn))
    assert not report.decoded and {"conv1", "layer2.0.downsample.0", "fc"} <= set(report.packed)
    assert str(report).startswith("freeze(backend='packed'): 21 layers packed, 0 decoded")
    bwn = quantswap.get_freeze_report(quantswap.freeze(quantswap.binarize(resnet18(), method="xnor", activations=False)))
    assert not bwn.packed and set(bwn.decoded.values()) == {"its activations are real (W1/A32)"}
    ternary = quantswap.get_freeze_report(quantswap.freeze(quantswap.ternarize(resnet18(), expansion=2)))
    assert not ternary.packed and all("not binary" in why for why in ternary.decoded.values())


def test_packed_weights_stay_packed_in_memory_and_switch_backends(tmp_path):
    bnn = _trained(quantswap.binarize(resnet18(num_classes=10), method="bireal"))
    size = quantswap.save_pretrained(bnn, tmp_path / "ckpt")
    loaded = quantswap.from_pretrained(tmp_path / "ckpt")
    resident = sum(t.numel() * t.element_size() for t in [*loaded.parameters(), *loaded.buffers()])
    assert resident <= 1.1 * size.file_bytes, f"{resident} bytes held for a {size.file_bytes}-byte checkpoint"
    assert quantswap.get_freeze_report(loaded).channels_last  # the packed ops' layout, for the float convs too
    assert loaded.conv1.weight.is_contiguous(memory_format=torch.channels_last) and not loaded.conv1.weight.is_contiguous()
    x = torch.randn(2, 3, 32, 32)
    assert loaded(x).is_contiguous()  # an NCHW input is served as it is; the logits are plain
    decoded = quantswap.freeze(loaded, backend="float")  # and back, to the swapped model's layout
    assert not quantswap.get_freeze_report(decoded).packed and isinstance(decoded.layer1[0].conv1.weight, torch.Tensor)
    assert decoded.conv1.weight.is_contiguous() and not quantswap.get_freeze_report(decoded).channels_last
    torch.testing.assert_close(decoded(x), bnn(x), rtol=1e-3, atol=1e-3)
    assert torch.equal(quantswap.freeze(decoded)(x), loaded(x))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        quantswap.freeze(bnn, backend="fast")


def test_batchnorm_after_a_packed_conv_is_folded_and_refolded_on_load():
    bnn = _trained(quantswap.binarize(resnet18(num_classes=10), method="bireal"))
    packed, decoded = quantswap.freeze(bnn), quantswap.freeze(bnn, backend="float")
    report = quantswap.get_freeze_report(packed)
    assert report.folded == {f"{name[:-5]}bn{name[-1]}": name for name in report.packed if "conv" in name}
    assert "16 BatchNorms folded" in str(report) and type(packed.bn1) is nn.BatchNorm2d  # the real conv's stays
    assert quantswap.get_freeze_report(quantswap.freeze(packed)).folded == report.folded  # frozen again: as it was
    conv, bn = packed.layer1[0].conv1, packed.layer1[0].bn1
    # the closed form: alpha' = alpha * gamma / sqrt(var + eps), bias' = beta - mean * gamma / sqrt(var + eps)
    g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    alpha, bias, offset = conv.output_transform()
    assert offset is None  # bireal: ±1 inputs, weights centred on 0
    torch.testing.assert_close(alpha, conv.weight_quantizer.alpha * g, rtol=1e-6, atol=0)
    torch.testing.assert_close(bias, bn.bias - bn.running_mean * g, rtol=1e-6, atol=1e-7)
    assert packed.state_dict().keys() == decoded.state_dict().keys()  # the BatchNorm keeps its state dict
    x = torch.randn(2, 3, 32, 32)
    copy = quantswap.freeze(bnn)
    other = _trained(quantswap.binarize(resnet18(num_classes=10), method="bireal"))
    copy.load_state_dict(quantswap.freeze(other).state_dict())  # refolds: the copy now computes `other`
    with torch.no_grad():
        torch.testing.assert_close(copy(x), quantswap.freeze(other, backend="float")(x), rtol=1e-3, atol=1e-3)
        assert torch.equal(packed(x), quantswap.freeze(bnn)(x))  # the original was not touched
        unfolded = quantswap.freeze(packed, backend="float")
        assert type(unfolded.layer1[0].bn1) is nn.BatchNorm2d and not hasattr(unfolded.layer1[0].conv1, "folded_bn")
        assert torch.equal(unfolded(x), decoded(x))


def test_packed_layer_state_dict_round_trips():
    bnn = _trained(quantswap.binarize(resnet18(num_classes=10), method="irnet"))
    source = quantswap.freeze(bnn)
    target = quantswap.freeze(_trained(quantswap.binarize(resnet18(num_classes=10), method="irnet")))
    assert list(source.state_dict()) == list(quantswap.freeze(bnn, backend="float").state_dict())
    x = torch.randn(2, 3, 32, 32)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target(x), source(x))
    state = source.state_dict()
    del state["layer1.0.conv1.weight_quantizer.codes"]
    with pytest.raises(RuntimeError, match="Missing key.*layer1.0.conv1.weight_quantizer.codes"):
        target.load_state_dict(state)


def test_packed_model_compiles_and_exports_through_the_fake_kernels():
    packed = quantswap.freeze(_trained(quantswap.binarize(resnet18(num_classes=10), method="xnor")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = packed(x)
        compiled = torch.compile(packed, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x), expected)
        exported = torch.export.export(packed, (x,))
        assert torch.equal(exported.module()(x), expected)
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "quantswap.bconv2d.default" in ops


def test_reference_backend_is_used_and_said_when_the_native_one_is_off(monkeypatch):
    from quantswap.kernels import native

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("QUANTSWAP_KERNELS", "reference")
    with pytest.warns(RuntimeWarning, match="QUANTSWAP_KERNELS=reference"):
        info = kernels.load()
    assert info.backend == "reference" and "QUANTSWAP_KERNELS" in str(info)
    with pytest.raises(RuntimeError, match="not loaded"):
        kernels.set_isa("portable")


def test_an_input_smaller_than_a_strided_kernel_raises_as_f_conv2d_and_an_empty_batch_passes():
    """Issue 28 (found by a break-it run): a 2x2 input to a 3x3 stride-2 packed conv returned [N, O, 1, 1]
    (C++ division truncates toward zero) where F.conv2d raises and the op's fake kernel said [N, O, 0, 0]; a
    batch of 0 through a packed Linear failed."""
    model = quantswap.freeze(quantswap.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, stride=2),
                                                              nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2)),
                                                method="xnor").eval())
    conv, linear = model.get_submodule("1"), model.get_submodule("3")
    small = torch.randn(1, 8, 2, 2)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        torch.nn.functional.conv2d(small, torch.randn(8, 8, 3, 3), stride=2)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        conv(small)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
            conv(torch.empty(1, 8, 2, 2))
    assert conv(torch.randn(1, 8, 3, 3)).shape == (1, 8, 1, 1) and conv(torch.randn(0, 8, 5, 5)).shape == (0, 8, 2, 2)
    assert linear(torch.randn(0, 8)).shape == (0, 4)


def test_the_kernels_build_folder_is_keyed_by_sources_torch_and_compiler(monkeypatch):
    """Issue 28: a build folder of a fixed name made two installs on one machine rebuild each other's kernels."""
    from quantswap.kernels import native

    name = native.library_name()
    assert name.startswith("quantswap_kernels_") and name == native.library_name()
    monkeypatch.setattr(native, "_compiler", lambda: "g++ (Debian 99.0) 99.0")
    assert native.library_name() != name
    if kernels.load().backend == "native":
        assert name in kernels.info().library  # the library loaded is the one of this install's key


def test_python_m_quantswap_kernels_builds_once_and_says_which_kernels_run():
    """Issue 28: ``make install`` builds the kernels (``python -m quantswap.kernels``) instead of a first
    use doing it silently; the command says which kernels run, and exits 1 when only the reference can."""
    import subprocess
    import sys

    from quantswap.kernels import native

    done = subprocess.run([sys.executable, "-m", "quantswap.kernels"], capture_output=True, text=True, timeout=600)
    report = kernels.load()
    assert done.returncode == (0 if report.backend == "native" else 1)
    assert done.stdout.startswith(f"{report.backend} (") and (report.library or "reference") in done.stdout
    assert native.built() == (report.backend == "native")


def _build_and_run(compiler: list[str], runner: list[str], tmp_path) -> str:
    import subprocess
    from pathlib import Path

    source = Path(__file__).parent / "arm" / "check_kernels.cpp"
    binary = tmp_path / f"check-{Path(compiler[0]).name}"
    subprocess.run([*compiler, "-O2", "-std=c++17", "-ffp-contract=off", str(source), "-o", str(binary)], check=True,
                   capture_output=True, timeout=300)  # no FMA contraction, as the extension is built
    done = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    return done.stdout


def test_every_row_kernel_equals_a_direct_count_here_and_on_aarch64(tmp_path):
    """Issue 28: the row kernels of every instruction set (AVX2, AVX-512 here; NEON on aarch64, built with
    Debian's cross compiler and run under qemu-user where they are installed: ``make test-arm``) against a
    bit-by-bit count, over random geometries; the offset transform of AdaBin's binary sets against its formula."""
    import shutil

    if shutil.which("c++") is None:  # no compiler: the ops must say they run the reference, and nothing to build
        assert kernels.load().backend == "reference"
        return
    out = _build_and_run(["c++"], [], tmp_path)
    assert ": 0 differ from the direct count" in out
    if shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64"):
        arm = _build_and_run(["aarch64-linux-gnu-g++", "-static"], ["qemu-aarch64"], tmp_path)
        assert "over 2 instruction sets (best: 3) and" in arm and ": 0 differ" in arm  # portable and NEON
