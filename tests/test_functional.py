"""The quantization math against the formulas of docs/methods.md; gradients included.

References are written independently of quantswap.functional with the "detached forward +
differentiable surrogate" trick, so an error in the autograd Functions cannot hide.
Tolerances: exact equality for sign values and masks; 1e-6 absolute for float gradients.
"""

import math

import pytest
import torch

from quantswap import functional as QF

ATOL = 1e-6


def grad_of(fn, x, g=None):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if g is None else g)
    return y.detach(), x.grad


def test_sign_maps_zero_to_plus_one():
    x = torch.tensor([-2.0, -1e-8, 0.0, 1e-8, 3.0])
    assert QF.sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    assert QF.sign(x.half()).dtype == torch.float16


@pytest.mark.parametrize(
    "estimator, derivative",
    [
        ("clipped", lambda x: (x.abs() <= 1).float()),
        ("approx", lambda x: torch.where(x.abs() < 1, 2 - 2 * x.abs(), torch.zeros_like(x))),
        ("identity", lambda x: torch.ones_like(x)),
    ],
)
def test_sign_ste_gradient_closed_form(estimator, derivative):
    x = torch.linspace(-2, 2, 401)
    g = torch.randn_like(x)
    y, grad = grad_of(lambda t: QF.sign_ste(t, estimator), x, g)
    assert torch.equal(y, QF.sign(x))
    torch.testing.assert_close(grad, g * derivative(x), atol=ATOL, rtol=0)


def test_approx_sign_matches_bireal_piecewise_polynomial():
    # F(x) = -1 (x<-1); 2x + x^2 (-1<=x<0); 2x - x^2 (0<=x<1); 1 (x>=1): its derivative is the backward
    def F(x):
        return torch.where(x < -1, -torch.ones_like(x),
                           torch.where(x < 0, 2 * x + x * x, torch.where(x < 1, 2 * x - x * x, torch.ones_like(x))))

    x = torch.rand(1000) * 4 - 2
    _, expected = grad_of(F, x)
    _, grad = grad_of(lambda t: QF.sign_ste(t, "approx"), x)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k, t", [(10.0, 0.1), (3.0, 1.0 / 3), (1.0, 10.0), (2.5, 0.7)])
def test_ede_gradient_closed_form(k, t):
    x = torch.linspace(-3, 3, 601)
    g = torch.randn_like(x)
    y, grad = grad_of(lambda v: QF.sign_ede(v, k, t), x, g)
    assert torch.equal(y, QF.sign(x))
    # the closed form in float64: in float32, 1 - tanh² itself is off by up to 1.7e-6 here (t = 10)
    expected = g.double() * k * t * (1 - torch.tanh(t * x.double()) ** 2)
    torch.testing.assert_close(grad.double(), expected, atol=ATOL, rtol=1e-6)


def test_ede_schedule_is_log_linear_from_t_min_to_t_max():
    assert QF.ede_schedule(0.0) == (10.0, 0.1)
    k, t = QF.ede_schedule(0.5)
    assert t == pytest.approx(1.0) and k == pytest.approx(1.0)
    k, t = QF.ede_schedule(0.25, t_min=1e-3, t_max=10)
    assert t == pytest.approx(1e-3 * 10 ** (0.25 * 4)) and k == pytest.approx(1 / t)
    assert QF.ede_schedule(1.0) == (1.0, 10.0)


def test_scaled_sign_identity_passes_gradient_unscaled():
    w = torch.randn(64)
    g = torch.randn(64)
    y, grad = grad_of(lambda v: QF.scaled_sign_identity(v, 0.25), w, g)
    assert torch.equal(y, 0.25 * QF.sign(w))
    assert torch.equal(grad, g)


def reference_ternary(w, tau):
    delta = tau * w.abs().max()
    mask = w.abs() >= delta
    alpha = w.abs()[mask].mean()
    return torch.sign(w) * mask * alpha


@pytest.mark.parametrize("thresholds", [(0.05,), (0.05, 0.10), (0.05, 0.10, 0.15, 0.20), (0.3, 0.6)])
def test_ternary_expand_forward_and_gradient(thresholds):
    w = torch.randn(16, 8, 3, 3) * 0.7  # some |w| >= 1, so the STE mask is exercised
    g = torch.randn_like(w)
    y, grad = grad_of(lambda v: QF.ternary_expand(v, thresholds), w, g)
    expected = sum(reference_ternary(w, tau) for tau in thresholds)
    torch.testing.assert_close(y, expected, atol=ATOL, rtol=1e-6)
    torch.testing.assert_close(grad, len(thresholds) * g * (w.abs() < 1).float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("thresholds", [(0.05,), (0.05, 0.10, 0.15), (0.05, 0.10, 0.15, 0.20),
                                        (0.05, 0.10, 0.15, 0.20, 0.25)])
def test_ternary_apply_gives_the_forward_weight_bit_for_bit_from_its_statistics(thresholds):
    """The backward's one-pass recompute: the same numbers as the forward, weights on a threshold included,
    with as many branches as the kernel unrolls (1, 4) and with some it pads (3 to 4, 5 to 8)."""
    w = torch.randn(64, 32, 3, 3)
    w.view(-1)[:4] = torch.tensor([1.0, -0.5, 0.05, -0.1]) * w.abs().max()  # |w| exactly at delta = 0.05, 0.1 max|w|
    out, statistics = QF.ternary_expand_with_statistics(w, thresholds)
    if not QF._native(w):
        assert statistics is None  # the PyTorch path returns none: the layer quantizes again
        return
    deltas, alphas = statistics
    assert torch.equal(deltas, torch.tensor(thresholds) * w.abs().max())  # in float32, as the forward
    assert torch.equal(QF.ternary_apply(w, statistics), out)
    assert torch.equal(QF.ternary_apply(w * 0.5, statistics), sum(  # other weights: the given deltas and alphas
        torch.where(w.abs() * 0.5 >= d, a, 0.0) for d, a in zip(deltas, alphas, strict=True)) * QF.sign(w))


def test_row_sign_apply_gives_each_per_row_forward_bit_for_bit():
    """The backward's recompute of XNOR-Net's, Bi-Real's, IR-Net's, ReCU's and AdaBin's weights from their
    forward's per-row numbers: the same bits, with a constant filter (IR-Net: 1/std = 0), a zero filter
    (scale 0, so -0.0 for negative weights) and -0.0 weights among the rows."""
    from quantswap.methods.adabin import AdaBinWeight
    from quantswap.methods.bireal import BiRealWeight
    from quantswap.methods.irnet import IRNetWeight
    from quantswap.methods.recu import ReCUWeight
    from quantswap.methods.xnor import XnorWeight

    w = torch.randn(16, 8, 3, 3)
    w[1] = 0.25  # a constant filter
    w[2] = 0.0
    w[3, :, 0, 0] = -0.0
    for quantizer in (XnorWeight(), BiRealWeight(), IRNetWeight(), ReCUWeight(), AdaBinWeight()):
        out, statistics = quantizer.quantize(w)
        # the native kernels return the numbers; the PyTorch path none (requantize runs the forward again)
        assert isinstance(statistics, QF.RowSign) == QF._native(w), type(quantizer).__name__
        again = quantizer.requantize(w, statistics)
        assert torch.equal(again.view(torch.int32), out.view(torch.int32)), type(quantizer).__name__  # -0.0 too
        assert torch.equal(out, quantizer(w))


def test_ternary_levels_codes_and_scale():
    w = torch.tensor([-1.0, -0.5, -0.04, 0.0, 0.05, 0.2, 1.0])
    codes, alpha = QF.ternary_levels(w, 0.05)  # delta = 0.05
    assert codes.tolist() == [-1, -1, 0, 0, 1, 1, 1]
    assert alpha.item() == pytest.approx((1.0 + 0.5 + 0.05 + 0.2 + 1.0) / 5)
    assert math.isclose(QF.ternary_levels(torch.zeros(5), 0.1)[1].item(), 0.0)


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match="clipped"):
        QF.sign_ste(torch.zeros(1), "sigmoid")


# -- the fused native kernels (quantswap/kernels/training.cpp) against the PyTorch formulas -----------

NATIVE = __import__("quantswap.kernels", fromlist=["load"]).load().backend == "native"


def _both(fn, *args, monkeypatch):
    """``fn(*args)`` with the native kernels, then with the PyTorch path (``QF._native`` off)."""
    native = fn(*args)
    with monkeypatch.context() as m:
        m.setattr(QF, "_native", lambda *tensors: False)
        reference = fn(*args)
    return native, reference


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
def test_native_elementwise_kernels_equal_the_pytorch_formulas(monkeypatch):
    x = torch.cat([torch.randn(5000) * 2, torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, -2.0])])
    g = torch.randn_like(x)
    for fn in (QF.fast_sign, lambda v: QF.fast_sign(v, 0.25), lambda v: QF.approx_grad(g, v)):
        native, reference = _both(fn, x, monkeypatch=monkeypatch)
        assert torch.equal(native, reference)  # the same operations: bit for bit
    assert torch.equal(QF.fast_sign(x), QF.sign(x))  # -0.0 -> +1 as everywhere in quantswap
    for k, t in [(10.0, 0.1), (1.0, 10.0), (2.5, 0.7)]:
        native, reference = _both(lambda v, k=k, t=t: QF.ede_grad(g, v, k, t), x, monkeypatch=monkeypatch)
        exact = g.double() * k * t * (1 - torch.tanh(t * x.double()) ** 2)
        torch.testing.assert_close(native.double(), exact, rtol=1e-6, atol=1e-6)  # the polynomial exp: 2 ulp
        torch.testing.assert_close(reference.double(), exact, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
@pytest.mark.parametrize("quantize", [
    lambda w: QF.mean_abs_sign(w, scale_grad=True),
    lambda w: QF.mean_abs_sign(w, scale_grad=False),
    lambda w: QF.ternary_expand(w, (0.05, 0.1, 0.15)),
    lambda w: __import__("quantswap.methods.irnet", fromlist=["IRNetWeight"]).IRNetWeight()(w),
    lambda w: __import__("quantswap.methods.recu", fromlist=["ReCUWeight"]).ReCUWeight()(w),
    lambda w: __import__("quantswap.methods.adabin", fromlist=["AdaBinWeight"]).AdaBinWeight(0.1, 10.0)(w),
], ids=["xnor", "bireal", "ternary", "irnet", "recu", "adabin"])
def test_native_weight_quantizers_equal_the_pytorch_formulas(quantize, monkeypatch):
    """Forward and gradient of the fused weight kernels against the PyTorch path: the sums run in double
    lanes there and in float32 here, so scales agree to float32 rounding and signs exactly."""
    w = torch.randn(16, 8, 3, 3) * 0.7
    w[3] = 0.25  # a constant filter
    g = torch.randn_like(w)

    def forward_backward(v):
        v = v.clone().requires_grad_(True)
        out = quantize(v)
        out.backward(g)
        return out.detach(), v.grad

    (out, grad), (ref_out, ref_grad) = _both(forward_backward, w, monkeypatch=monkeypatch)
    assert torch.equal(out.sign(), ref_out.sign())
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
def test_native_mean_abs_sign_is_the_codecs_scale_times_the_sign():
    """The fused forward (one read of each row) gives the numbers a codec decodes: ``mean|W|`` per row
    from :func:`per_channel_mean_abs` times :func:`fast_sign`, bit for bit."""
    w = torch.randn(32, 16, 3, 3)
    with torch.no_grad():
        assert torch.equal(QF.mean_abs_sign(w), QF.fast_sign(w, QF.per_channel_mean_abs(w)))


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
def test_channel_scale_keeps_its_output_for_the_batchnorm_after_it():
    """ReCU's scale saves ``y = x·s`` (which the BatchNorm after it saves too), not ``x``, and recovers
    ``∂L/∂s = Σ g·y / s``; a zero scale falls back to saving ``x`` (``y / 0`` would lose it)."""
    from quantswap.nn.blocks import ChannelScale

    torch.manual_seed(0)
    x, g = torch.randn(4, 3, 5, 5, requires_grad=True), torch.randn(4, 3, 5, 5)
    for scale in (torch.tensor([0.5, -1.5, 2.0]), torch.tensor([0.5, 0.0, 2.0])):
        module = ChannelScale(scale)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            y = module(x)
        y.backward(g)
        assert (y.data_ptr() in {t.data_ptr() for t in saved}) == bool(scale.ne(0).all())
        want = (g.double() * x.detach().double()).sum((0, 2, 3))
        torch.testing.assert_close(module.scale.grad.double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.grad, g * scale.view(1, -1, 1, 1))
        x.grad = None


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
@pytest.mark.parametrize("block", ["rprelu", "maxout", "scale"])
def test_native_channel_blocks_equal_their_formulas(block, monkeypatch):
    """RPReLU, Maxout and ChannelScale (one native kernel each way) against their defining formulas in
    float64: outputs and the gradients of the input and of every per-channel parameter."""
    from quantswap.nn.blocks import ChannelScale, Maxout, RPReLU

    torch.manual_seed(0)
    module = {"rprelu": lambda: RPReLU(6), "maxout": lambda: Maxout(6),
              "scale": lambda: ChannelScale(torch.rand(6) + 0.5)}[block]()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(4, 6, 5, 7) * 2
    x[0, 0, 0, :3] = 0.0  # ties at u = 0 take the negative side's slope
    g = torch.randn_like(x)
    shape = (1, -1, 1, 1)

    def formula(v, params):  # float64, from the definitions in quantswap/nn/blocks.py
        if block == "rprelu":
            u = v - params["shift_in"].view(shape)
            return torch.where(u > 0, u, params["slope"].view(shape) * u) + params["shift_out"].view(shape)
        if block == "maxout":
            return torch.where(v > 0, params["positive"].view(shape) * v, params["negative"].view(shape) * v)
        return v * params["scale"].view(shape)

    def forward_backward(v):
        v = v.clone().requires_grad_(True)
        module.zero_grad()
        out = module(v)
        out.backward(g)
        return out.detach(), v.grad, {n: p.grad.clone() for n, p in module.named_parameters()}

    native, pytorch = _both(forward_backward, x, monkeypatch=monkeypatch)
    params = {n: p.detach().double().requires_grad_(True) for n, p in module.named_parameters()}
    v = x.double().requires_grad_(True)
    want = formula(v, params)
    want.backward(g.double())
    for out, grad, grads in (native, pytorch):
        torch.testing.assert_close(out.double(), want.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad.double(), v.grad, rtol=1e-6, atol=1e-6)
        for name, p in params.items():
            torch.testing.assert_close(grads[name].double(), p.grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(native[0], pytorch[0]) and torch.equal(native[1], pytorch[1])  # elementwise: bit for bit


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
@pytest.mark.parametrize("shape", [(3, 5, 2, 2), (2, 3, 7, 7), (64, 40, 8, 8), (2, 3, 0, 4)])
def test_native_channel_backwards_do_not_depend_on_the_thread_count(shape):
    """The per-channel backwards (RPReLU, Maxout, ChannelScale, RSign) split their blocks among threads in
    memory order and add each channel's block sums in order of n: one thread and two give the same bits,
    for blocks shorter than a vector, with a tail, many blocks per thread, and none at all. Each sum is also
    its float64 value to float32 rounding."""
    ops = QF._kernels()
    torch.manual_seed(0)
    x, g = torch.randn(shape), torch.randn(shape)
    p = [torch.randn(shape[1]) for _ in range(3)]
    calls = {
        "piecewise": lambda: ops.channel_piecewise_backward(g, x, p[0], p[1], p[2]),
        "scale": lambda: ops.channel_scale_backward(g, x, p[1]),
        "shift_sign": lambda: ops.channel_shift_sign_backward(g, x, p[0]),
    }
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {name: call() for name, call in calls.items()}
        torch.set_num_threads(2)
        two = {name: call() for name, call in calls.items()}
    finally:
        torch.set_num_threads(threads)
    for name in calls:
        assert all(torch.equal(a, b) for a, b in zip(one[name], two[name], strict=True)), name
    u, gd, dims = (x - p[0].view(1, -1, 1, 1)).double(), g.double(), (0, 2, 3)
    grad_x, sums = one["piecewise"]
    want = torch.stack([(gd * u * (u > 0)).sum(dims), (gd * u * (u <= 0)).sum(dims), gd.sum(dims),
                        grad_x.double().sum(dims)])
    torch.testing.assert_close(sums.double(), want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(one["scale"][1].double(), (gd * x.double()).sum(dims), rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
@pytest.mark.parametrize("activation", ["react", "recu", "adabin"])
def test_native_activation_quantizers_equal_the_pytorch_path(activation, monkeypatch):
    """RSign, ReCU's normalized ApproxSign and AdaBin's adaptive sign: one fused kernel each way against
    their PyTorch autograd path (the methods' tests check that path against the closed forms). Signs
    and the input gradient's elementwise part agree exactly, sums to float32 rounding."""
    from quantswap.methods.adabin import AdaBinSign
    from quantswap.methods.react import RSign
    from quantswap.methods.recu import ReCUSign

    torch.manual_seed(0)
    module = {"react": lambda: RSign(6), "recu": ReCUSign, "adabin": AdaBinSign}[activation]()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x, g = torch.randn(4, 6, 5, 7), torch.randn(4, 6, 5, 7)

    def forward_backward(v):
        v = v.clone().requires_grad_(True)
        module.zero_grad()
        out = module(v)
        out.backward(g)
        return out.detach(), v.grad, [p.grad.clone() for p in module.parameters()]

    (out, grad, grads), (ref_out, ref_grad, ref_grads) = _both(forward_backward, x, monkeypatch=monkeypatch)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    for p, q in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not NATIVE, reason="no C++ compiler: the PyTorch path is the only one")
@pytest.mark.parametrize("estimator", ["clipped", "approx", "identity"])
def test_native_sign_ste_equals_the_pytorch_path_and_keeps_a_byte_mask(estimator, monkeypatch):
    x = torch.cat([torch.randn(5000) * 2, torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, -2.0])])
    g = torch.randn_like(x)
    saved = []

    def forward_backward(v):
        v = v.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
            out = QF.sign_ste(v, estimator)
        out.backward(g)
        return out.detach(), v.grad

    (out, grad), (ref_out, ref_grad) = _both(forward_backward, x, monkeypatch=monkeypatch)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    if estimator == "clipped":
        assert saved[0] == torch.uint8  # the native path keeps 1[|x| <= 1], not x
        assert torch.equal(grad, g * (x.abs() <= 1))
