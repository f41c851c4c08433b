// quantswap's packed binary kernels: W1/A1 convolution and linear layers by XOR + popcount.
//
// Both operands are {-1, +1}, stored one bit each (1 for -1, the sign bit), packed along input
// channels into 64-bit words. A dot product of K such values is K - 2 * popcount(a XOR w). A
// zero-padded tap of the convolution contributes 0 (PyTorch pads sign(x) with zeros, not with -1
// or +1), so every output position counts only its valid taps: K = valid taps * channels per group.
// The result is exact integer arithmetic; the output transform y = float(K - 2 * acc) * alpha + bias
// rounds twice, as the pure-PyTorch reference (quantswap/kernels/reference.py) does. With an `offset`
// (binary sets that are not +-1, AdaBin: quantswap/kernels/affine.py) it adds the terms of two more exact
// sums, S_x (the input's signs over the window) and S_w (the weights'), and of K, in the reference's order.
//
// Layouts (see quantswap/kernels/layout.py, which packs the weights):
//   weights     int64 [G, OB, KH, KW, WG, 8]: group, block of 8 output channels, tap, word, lane
//   activations int64 [N, H, W, G, WG], packed here from float32 x (any strides)
//
// The inner loop (binary_kernels.h, free of torch) is compiled for AVX-512 VPOPCNTDQ, AVX2 and portable
// C++ on x86-64, NEON and portable C++ on aarch64, and picked at run time from the CPU's features;
// `set_isa` lowers the choice (for tests and benchmarks). This file adds the PyTorch ops: packing sign(x),
// the checks, and the work split with at::parallel_for over the threads torch.get_num_threads() reports.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "binary_kernels.h"

namespace quantswap {
namespace {

// x float32 [N, C, H, W] with any strides -> words [N, H, W, G, WG].
at::Tensor pack_signs(const at::Tensor& x, int64_t groups) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t cg = C / groups, WG = (cg + 63) / 64;
  auto out = at::zeros({N, H, W, groups, WG}, x.options().dtype(at::kLong));
  const float* src = x.data_ptr<float>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const int64_t words = groups * WG;
#if QUANTSWAP_X86
  const bool vector = active_isa() == kAvx512;
#else
  const bool vector = false;
#endif
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      const float* xr = src + n * sn + h * sh;
      uint64_t* d = dst + row * W * words;
      if (vector && (sc == 1 || sw == 1)) {
#if QUANTSWAP_X86
        pack_row_avx512(xr, sc, sw, C, W, cg, WG, d);
#endif
      } else if (sc == 1) {  // channels_last: each position's channels are contiguous
        for (int64_t w = 0; w < W; ++w) {
          const float* px = xr + w * sw;
          for (int64_t grp = 0; grp < groups; ++grp)
            for (int64_t j = 0; j < WG; ++j) {
              uint64_t word = 0;
              const int64_t c0 = grp * cg + j * 64, c1 = std::min(c0 + 64, (grp + 1) * cg);
              for (int64_t c = c0; c < c1; ++c) word |= negative_bit(px[c], c - c0);
              d[w * words + grp * WG + j] = word;
            }
        }
      } else {  // one channel plane row at a time, setting one bit in every position's word
        for (int64_t c = 0; c < C; ++c) {
          const int64_t grp = c / cg, k = c % cg;
          const float* pc = xr + c * sc;
          uint64_t* dw = d + grp * WG + k / 64;
          const int64_t bit = k % 64;
          for (int64_t w = 0; w < W; ++w) dw[w * words] |= negative_bit(pc[w * sw], bit);
        }
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------

void check_operands(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                    const std::optional<at::Tensor>& bias, int64_t out_channels) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && alpha.device().is_cpu(),
              "quantswap packed kernels run on the CPU; move the model with .cpu(), or freeze(model, backend='float')");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "packed binary layers take float32 input, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == at::kLong && weight.dim() == 6 && weight.size(5) == kLanes && weight.is_contiguous(),
              "weight must be the int64 [G, OB, KH, KW, WG, 8] layout of quantswap.kernels.pack_weight");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == out_channels &&
                  alpha.is_contiguous(),
              "alpha must be a contiguous float32 vector of ", out_channels, " per-output-channel scales");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == out_channels &&
                    bias->is_contiguous(),
                "bias must be a contiguous float32 vector of ", out_channels, " values");
}

at::Tensor bconv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                   const std::optional<at::Tensor>& bias, int64_t in_channels, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& offset) {
  const int64_t out_channels = alpha.numel();
  check_operands(x, weight, alpha, bias, out_channels);
  if (offset.has_value())
    TORCH_CHECK(offset->scalar_type() == at::kFloat && offset->dim() == 2 && offset->size(0) == 3 &&
                    offset->size(1) == out_channels && offset->is_contiguous(),
                "offset must be a contiguous float32 [3, ", out_channels, "] (the coefficients of S_x, S_w and K)");
  TORCH_CHECK(x.dim() == 4 && x.size(1) == in_channels, "expected input [N, ", in_channels, ", H, W], got ",
              x.sizes());
  const int64_t G = weight.size(0), OB = weight.size(1), KH = weight.size(2), KW = weight.size(3),
                WG = weight.size(4);
  TORCH_CHECK(in_channels % G == 0 && out_channels % G == 0, "channels must divide into ", G, " groups");
  const int64_t cg = in_channels / G, og = out_channels / G;
  TORCH_CHECK(WG == (cg + 63) / 64 && OB == (og + kLanes - 1) / kLanes, "weight layout does not fit ", in_channels,
              " -> ", out_channels, " channels in ", G, " groups");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "stride, padding, dilation: 2 ints each");
  Geometry g{x.size(2), x.size(3), G, WG, KH, KW, 0, 0, stride[0], stride[1], padding[0], padding[1],
             dilation[0], dilation[1]};
  TORCH_CHECK(g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 && g.ph >= 0 && g.pw >= 0, "invalid stride/padding/dilation");
  // As F.conv2d: a dilated kernel larger than the padded input is an error (C++ division truncates toward
  // zero, so without this check such an input would give one output row instead of none).
  const int64_t span_h = g.dh * (KH - 1) + 1, span_w = g.dw * (KW - 1) + 1;
  TORCH_CHECK(g.H + 2 * g.ph >= span_h && g.W + 2 * g.pw >= span_w, "Calculated padded input size per channel: (",
              g.H + 2 * g.ph, " x ", g.W + 2 * g.pw, "). Kernel size: (", span_h, " x ", span_w,
              "). Kernel size can't be greater than actual input size");
  g.OH = (g.H + 2 * g.ph - span_h) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - span_w) / g.sw + 1;
  const int64_t N = x.size(0);

  const at::Tensor packed = pack_signs(x, G);
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  at::Tensor out = at::empty({N, out_channels, g.OH, g.OW},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  const uint64_t* act = reinterpret_cast<const uint64_t*>(packed.data_ptr<int64_t>());
  const uint64_t* wts = reinterpret_cast<const uint64_t*>(weight.data_ptr<int64_t>());
  const float* a = alpha.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  const int64_t so = out.stride(1), sy = out.stride(2), sx = out.stride(3), sn = out.stride(0);
  const int64_t block_words = KH * KW * WG * kLanes;
  const int64_t isa = active_isa();
  const int64_t OBB = (OB + kMaxBlocks - 1) / kMaxBlocks;  // groups of up to kMaxBlocks blocks
  std::optional<OffsetTerms> terms;  // AdaBin's binary sets: the S_x, S_w and K terms
  if (offset.has_value()) {
    terms.emplace(g, N, act, wts, out_channels, cg, offset->data_ptr<float>(), b);
    at::parallel_for(0, terms->positions(), 1024, [&](int64_t begin, int64_t end) { terms->count_positions(begin, end); });
    at::parallel_for(0, out_channels, 16, [&](int64_t begin, int64_t end) { terms->count_weights(begin, end); });
    at::parallel_for(0, terms->rows(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) terms->count_row(row);
    });
  }

  // One task: an output row of up to 4 blocks of 8 output channels, in one group of one image.
  at::parallel_for(0, N * G * OBB * g.OH, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(g.OW * kMaxBlocks * kLanes);
    std::vector<int32_t> taps(g.OW);
    std::vector<float> rest(terms ? g.OW * kMaxLanes : 0);
    std::vector<const float*> rows(terms ? g.OW : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t oh = task % g.OH, obb = (task / g.OH) % OBB, grp = (task / (g.OH * OBB)) % G,
                    n = task / (g.OH * OBB * G);
      const int64_t ob0 = obb * kMaxBlocks, nb = std::min<int64_t>(kMaxBlocks, OB - ob0);
      const int64_t o0 = grp * og + ob0 * kLanes;
      const Emit e{acc.data(), taps.data(), g.OW, nb, cg, std::min<int64_t>(nb * kLanes, og - ob0 * kLanes), a + o0,
                   b != nullptr ? b + o0 : nullptr, y + n * sn + o0 * so + oh * sy, so, sx};
      prefetch_for_writing(e);
      row_kernel(isa, nb)(g, act + n * g.H * g.W * G * WG, wts + (grp * OB + ob0) * block_words, block_words, grp,
                          oh, acc.data(), taps.data());
      if (terms) {
        terms->emit(e, n, grp, oh, o0, rest.data(), rows.data());
      } else {
        emit_row(isa, e);
      }
    }
  });
  return out;
}

at::Tensor blinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& offset) {
  TORCH_CHECK(x.dim() == 2, "blinear takes a 2-D input [N, in_features], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 6 && weight.size(0) == 1 && weight.size(2) == 1 && weight.size(3) == 1,
              "blinear's weight is the layout of a 1x1, one-group convolution");
  if (x.size(0) == 0) return at::zeros({0, alpha.size(0)}, x.options());  // as F.linear: (0, out)
  // The batch as the width of a 1 x N image (each sample's features are its channels, contiguous):
  // the convolution's row kernel then reuses every weight vector for two samples at a time.
  const at::Tensor image = x.contiguous().t().unsqueeze(0).unsqueeze(2);  // [1, C, 1, N]
  const at::Tensor y = bconv2d(image, weight, alpha, bias, x.size(1), {1, 1}, {0, 0}, {1, 1}, offset);
  return y.select(2, 0).select(0, 0).t().contiguous();  // [N, O]
}

}  // namespace

TORCH_LIBRARY_IMPL(quantswap, CPU, m) {
  m.impl("bconv2d", &bconv2d);
  m.impl("blinear", &blinear);
}

TORCH_LIBRARY_FRAGMENT(quantswap_native, m) {
  m.def("set_isa(int isa) -> int", &set_isa);
  m.def("isa() -> int", &isa);
}

}  // namespace quantswap
