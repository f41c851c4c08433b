// quantswap's fused training kernels: the elementwise passes of the quantizers' forward and backward, and
// of the activation modules of ReActNet, ReCU and AdaBin.
//
// Each op here is one memory pass (two where a per-row reduction comes first) over float32 tensors
// that the Python caller (quantswap/functional.py) has checked to be contiguous CPU float32; everywhere
// else, and under torch.compile, the same functions run as a few PyTorch operators. The sign
// convention is quantswap's: sign(x) = +1 for x >= 0 (-0.0 included), -1 otherwise (NaN too).
//
// Results equal the PyTorch versions bit for bit, except for four: ede_grad (its exp is a polynomial
// within 2 ulp, the PyTorch version goes through sigmoid), ReCU's activation backward and AdaBin's weight
// backward (they multiply by 1/sigma and 1/alpha where PyTorch divides), and the sums, per row, per channel or
// over a tensor (accumulated in double here, in float32 pairwise there). The codecs read the same sums as the
// forward, so a frozen model still decodes to the trained one exactly.
//
// Work is split with at::parallel_for over fixed blocks, and every reduction combines its blocks in
// order, so results do not depend on the number of threads.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace quantswap {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task of an elementwise pass
constexpr int kLanes = 8;            // fixed lanes of every sum: the order never depends on ISA or threads

// The loops: plain functions compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time
// (the same IEEE operations in each, no FMA: the clones agree bit for bit).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QS_CLONES
#endif

// exp(x) for x <= 0 in plain arithmetic (Cephes' expf polynomial, within 2 ulp), so that loops over it
// vectorize without -ffast-math: round with the 1.5 * 2^23 trick, scale by 2^k through the exponent bits.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float k = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

QS_CLONES void sign_span(const float* __restrict x, float* __restrict y, int64_t n, float pos, float neg) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] >= 0.0f ? pos : neg;
}

// The per-row binary weights' common form: (u >= 0 ? scale : -scale) with u = (w - centre) * inverse. w - 0 and
// u * 1 are w and u exactly (-0.0 included), so the defaults change no bit; an offset is added only when given.
QS_CLONES void row_sign_span(const float* __restrict w, float* __restrict y, int64_t n, float centre, float inverse,
                             float scale) {
  for (int64_t i = 0; i < n; ++i) y[i] = (w[i] - centre) * inverse >= 0.0f ? scale : -scale;
}

QS_CLONES void row_sign_offset_span(const float* __restrict w, float* __restrict y, int64_t n, float centre,
                                    float inverse, float scale, float offset) {
  for (int64_t i = 0; i < n; ++i) y[i] = ((w[i] - centre) * inverse >= 0.0f ? scale : -scale) + offset;
}

QS_CLONES void ede_span(const float* __restrict g, const float* __restrict x, float* __restrict y, int64_t n,
                        float slope, float gain) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = exp_nonpositive(slope * std::fabs(x[i]));
    const float one_plus = 1.0f + z;
    y[i] = g[i] * (gain * z / (one_plus * one_plus));
  }
}

QS_CLONES void clipped_scaled_span(const float* __restrict g, const float* __restrict x, float* __restrict y, int64_t n,
                                   float bound, float factor) {
  for (int64_t i = 0; i < n; ++i) {
    const float scaled = g[i] * factor;  // every operand loaded unconditionally: the select vectorizes
    y[i] = std::fabs(x[i]) < bound ? scaled : 0.0f;
  }
}

QS_CLONES void mean_abs_sign_grad_span(const float* __restrict g, const float* __restrict w, float* __restrict y,
                                       int64_t n, float scale, float c) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = w[i], scaled = g[i] * scale;
    const float clipped = std::fabs(v) <= 1.0f ? scaled : 0.0f;
    const float sgn = v > 0.0f ? c : (v < 0.0f ? -c : 0.0f);
    y[i] = clipped + sgn;
  }
}

// The residual-expansion ternary weight of a span, each element read once: level = sum_b alpha_b [|x| >= delta_b],
// added in branch order, then given the sign of x. NB is the branch count padded to 1, 2, 4 or 8 (a padding
// branch has delta = +inf and alpha = 0: it adds +0, which leaves a level unchanged), so the loop over
// branches unrolls and the one over elements vectorizes.
template <int NB>
QS_CLONES void ternary_fill_span(const float* __restrict x, float* __restrict y, int64_t n,
                                 const float* __restrict deltas, const float* __restrict alphas) {
  float delta[NB], alpha[NB];
  for (int j = 0; j < NB; ++j) delta[j] = deltas[j], alpha[j] = alphas[j];
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i], a = std::fabs(v);
    float level = a >= delta[0] ? alpha[0] : 0.0f;
#pragma GCC unroll 8
    for (int j = 1; j < NB; ++j) level += a >= delta[j] ? alpha[j] : 0.0f;
    y[i] = v >= 0.0f ? level : -level;
  }
}

// sign(x) and the clipped estimator's mask 1[|x| <= 1], one byte per element.
QS_CLONES void sign_mask_span(const float* __restrict x, float* __restrict y, uint8_t* __restrict m, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = v >= 0.0f ? 1.0f : -1.0f;
    m[i] = std::fabs(v) <= 1.0f ? 1 : 0;
  }
}

QS_CLONES void masked_span(const float* __restrict g, const uint8_t* __restrict m, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = m[i] ? g[i] : 0.0f;
}

// A two-valued tensor as one byte per element and back: m = 1[x == hi]; y = m ? hi : lo.
QS_CLONES void level_code_span(const float* __restrict x, uint8_t* __restrict m, int64_t n, float hi) {
  for (int64_t i = 0; i < n; ++i) m[i] = x[i] == hi ? 1 : 0;
}

QS_CLONES void level_value_span(const uint8_t* __restrict m, float* __restrict y, int64_t n, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) y[i] = m[i] ? hi : lo;
}

// RSign: y = sign(x + shift).
QS_CLONES void shifted_sign_span(const float* __restrict x, float* __restrict y, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] + shift >= 0.0f ? 1.0f : -1.0f;
}

// ApproxSign's derivative at z = (x + shift) * inv: y = g * max(0, 2 - 2|z|) (RSign: inv = 1; ReCU's activation:
// shift = 0, inv = 1 / its per-sample std).
QS_CLONES void approx_at_span(const float* __restrict g, const float* __restrict x, float* __restrict y, int64_t n,
                              float shift, float inv) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(2.0f - 2.0f * std::fabs((x[i] + shift) * inv), 0.0f) * g[i];
}

// AdaBin's activation: y = (u >= 0 ? alpha : -alpha) + beta with u = (x - beta) / alpha (alpha may be negative).
QS_CLONES void adaptive_activation_span(const float* __restrict x, float* __restrict y, int64_t n, float beta, float alpha) {
  for (int64_t i = 0; i < n; ++i) y[i] = ((x[i] - beta) / alpha >= 0.0f ? alpha : -alpha) + beta;
}

QS_CLONES void adaptive_activation_grad_span(const float* __restrict g, const float* __restrict x, float* __restrict y,
                                             int64_t n, float beta, float alpha) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(2.0f - 2.0f * std::fabs((x[i] - beta) / alpha), 0.0f) * g[i];
}

// The per-channel piecewise-linear map of RPReLU, Maxout and ChannelScale on one channel's span:
// u = x - shift_in, y = (u > 0 ? pos : neg) * u + shift_out.
QS_CLONES void piecewise_span(const float* __restrict x, float* __restrict y, int64_t n, float shift_in, float pos,
                              float neg, float shift_out) {
  for (int64_t i = 0; i < n; ++i) {
    const float u = x[i] - shift_in;
    y[i] = (u > 0.0f ? pos : neg) * u + shift_out;
  }
}

// The sums, in kLanes double lanes: acc[l] += term(i) for i = l mod kLanes, lanes added in order at the end.
#define QS_LANE_SUM(n, term)                                                   \
  double acc[kLanes] = {0.0};                                                  \
  int64_t i = 0;                                                               \
  for (; i + kLanes <= (n); i += kLanes)                                       \
    for (int l = 0; l < kLanes; ++l) {                                         \
      const int64_t j = i + l;                                                 \
      acc[l] += static_cast<double>(term);                                     \
    }                                                                          \
  for (int l = 0; i < (n); ++i, ++l) {                                         \
    const int64_t j = i;                                                       \
    acc[l] += static_cast<double>(term);                                       \
  }                                                                            \
  double total = 0.0;                                                          \
  for (int l = 0; l < kLanes; ++l) total += acc[l];                            \
  return total;

QS_CLONES double abs_sum(const float* __restrict p, int64_t n) { QS_LANE_SUM(n, std::fabs(p[j])) }

QS_CLONES double signed_sum(const float* __restrict g, const float* __restrict w, int64_t n) {
  QS_LANE_SUM(n, (w[j] >= 0.0f ? g[j] : -g[j]))
}

QS_CLONES double kept_sum(const float* __restrict p, int64_t n, float delta) {
  QS_LANE_SUM(n, (std::fabs(p[j]) >= delta ? std::fabs(p[j]) : 0.0f))
}

// A count is exact in integer lanes: the same number as summing ones in double, without the conversions.
QS_CLONES int64_t kept_count(const float* __restrict p, int64_t n, float delta) {
  int32_t acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += std::fabs(p[i + l]) >= delta ? 1 : 0;
  int64_t total = 0;
  for (; i < n; ++i) total += std::fabs(p[i]) >= delta ? 1 : 0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

QS_CLONES double plain_sum(const float* __restrict p, int64_t n) { QS_LANE_SUM(n, p[j]) }

// mean |p| over a row, summed in double: XNOR-Net's and Bi-Real's scale, one definition for every op that reads it.
inline float row_mean(const float* p, int64_t len) { return static_cast<float>(abs_sum(p, len) / static_cast<double>(len)); }

// AdaBin's activation sums: g * sign(u) and d * u with u = (x - beta) / alpha.
QS_CLONES double adaptive_activation_sign_sum(const float* __restrict g, const float* __restrict x, int64_t n, float beta,
                                              float alpha) {
  QS_LANE_SUM(n, ((x[j] - beta) / alpha >= 0.0f ? g[j] : -g[j]))
}

QS_CLONES double adaptive_activation_du_sum(const float* __restrict d, const float* __restrict x, int64_t n, float beta,
                                            float alpha) {
  QS_LANE_SUM(n, d[j] * ((x[j] - beta) / alpha))
}

QS_CLONES double centred_square_sum(const float* __restrict p, int64_t n, float mean) {
  QS_LANE_SUM(n, (p[j] - mean) * (p[j] - mean))
}

QS_CLONES double standardized_abs_sum(const float* __restrict p, int64_t n, float mean, float inv) {
  QS_LANE_SUM(n, std::fabs((p[j] - mean) * inv))
}

QS_CLONES void standardized_sign_span(const float* __restrict w, float* __restrict y, int64_t n, float mean, float inv,
                                      float scale) {
  for (int64_t i = 0; i < n; ++i) y[i] = (w[i] - mean) * inv >= 0.0f ? scale : -scale;
}

// h = scale * g * EDE'(u), u = (w - mean) * inv, written to y; returns nothing (the sums follow).
QS_CLONES void libra_h_span(const float* __restrict g, const float* __restrict w, float* __restrict y, int64_t n,
                            float mean, float inv, float scale, float slope, float gain) {
  for (int64_t i = 0; i < n; ++i) {
    const float u = (w[i] - mean) * inv;
    const float z = exp_nonpositive(slope * std::fabs(u));
    const float one_plus = 1.0f + z;
    y[i] = g[i] * (gain * z / (one_plus * one_plus)) * scale;
  }
}

QS_CLONES void libra_grad_span(const float* __restrict w, float* __restrict y, int64_t n, float mean, float inv,
                               float h_mean, float spread) {
  for (int64_t i = 0; i < n; ++i) {
    const float u = (w[i] - mean) * inv;
    y[i] = ((y[i] - h_mean) - u * spread) * inv;
  }
}

QS_CLONES void centred_sign_span(const float* __restrict w, float* __restrict y, int64_t n, float mean) {
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] - mean >= 0.0f ? 1.0f : -1.0f;
}

// AdaBin's e = g * EDE'(u), u = (w - beta) * inv, written to y.
QS_CLONES void adaptive_e_span(const float* __restrict g, const float* __restrict w, float* __restrict y, int64_t n,
                               float beta, float inv, float slope, float gain) {
  for (int64_t i = 0; i < n; ++i) {
    const float u = (w[i] - beta) * inv;
    const float z = exp_nonpositive(slope * std::fabs(u));
    const float one_plus = 1.0f + z;
    y[i] = g[i] * (gain * z / (one_plus * one_plus));
  }
}

QS_CLONES void adaptive_sign_span(const float* __restrict w, float* __restrict y, int64_t n, float beta, float alpha) {
  for (int64_t i = 0; i < n; ++i) y[i] = (w[i] - beta >= 0.0f ? alpha : -alpha) + beta;
}

QS_CLONES void adaptive_grad_span(const float* __restrict w, float* __restrict y, int64_t n, float beta, float inv,
                                  float centre, float spread) {
  for (int64_t i = 0; i < n; ++i) {
    const float u = (w[i] - beta) * inv;
    y[i] = (y[i] + centre) + u * spread;
  }
}

// Passes that write one span and return several sums at once run on GCC's vector types: 2 * kLanes floats per
// step, each half added to kLanes double lanes in turn, so lane l still adds the elements i = l mod kLanes in
// order, the same IEEE operations as a scalar loop: each sum has the bits of its own QS_LANE_SUM pass (several
// sums in one loop are past what the auto-vectorizer takes on). The tails run the same expressions on floats.
constexpr int kWide = 2 * kLanes;
typedef float wide_f __attribute__((vector_size(kWide * sizeof(float))));
typedef int32_t wide_i __attribute__((vector_size(kWide * sizeof(int32_t))));
typedef double lanes_d __attribute__((vector_size(kLanes * sizeof(double))));

#pragma GCC diagnostic ignored "-Wpsabi"  // the helpers below are always inlined: no vector crosses a call
#define QS_INLINE inline __attribute__((always_inline))
QS_INLINE wide_f load_wide(const float* p) {
  wide_f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
QS_INLINE void store_wide(float* p, const wide_f& v) { std::memcpy(p, &v, sizeof(v)); }
QS_INLINE wide_f splat(float v) {  // not `wide_f{} + v`, which turns -0.0 into +0.0
  wide_f out;
  for (int l = 0; l < kWide; ++l) out[l] = v;
  return out;
}
QS_INLINE wide_f abs_wide(const wide_f& v) {  // std::fabs: the sign bit cleared
  return reinterpret_cast<wide_f>(reinterpret_cast<wide_i>(v) & 0x7fffffff);
}
QS_INLINE void accumulate(lanes_d& acc, const wide_f& v) {  // the low half, then the high half
  typedef float lanes_f __attribute__((vector_size(kLanes * sizeof(float))));
  lanes_f half[2];
  std::memcpy(half, &v, sizeof(v));
  acc += __builtin_convertvector(half[0], lanes_d);
  acc += __builtin_convertvector(half[1], lanes_d);
}
QS_INLINE void accumulate(lanes_d& acc, int64_t i, float v) { acc[i % kLanes] += static_cast<double>(v); }

// out[k] = the lanes of acc[k] added in order (QS_LANE_SUM's last step).
template <int K>
QS_INLINE void lane_totals(const lanes_d (&acc)[K], double* out) {
  for (int k = 0; k < K; ++k) {
    double total = 0.0;
    for (int l = 0; l < kLanes; ++l) total += acc[k][l];
    out[k] = total;
  }
}

// RPReLU's, Maxout's and ChannelScale's input gradient y = g * (u > 0 ? pos : neg), u = x - shift_in, and in the same
// pass the sums of g * u (u > 0), g * u (u <= 0), g and y.
QS_CLONES void piecewise_grad_sums(const float* __restrict g, const float* __restrict x, float* __restrict y, int64_t n,
                                   float shift_in, float pos, float neg, double* __restrict out) {
  const wide_f zero = {}, pos_v = splat(pos), neg_v = splat(neg);
  lanes_d acc[4] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f gv = load_wide(g + i), u = load_wide(x + i) - shift_in, gu = gv * u;
    const auto up = u > zero;
    const wide_f d = gv * (up ? pos_v : neg_v);
    store_wide(y + i, d);
    accumulate(acc[0], up ? gu : zero);
    accumulate(acc[1], up ? zero : gu);
    accumulate(acc[2], gv);
    accumulate(acc[3], d);
  }
  for (; i < n; ++i) {
    const float u = x[i] - shift_in, gi = g[i], gu = gi * u;
    const bool up = u > 0.0f;
    const float d = gi * (up ? pos : neg);
    y[i] = d;
    accumulate(acc[0], i, up ? gu : 0.0f);
    accumulate(acc[1], i, up ? 0.0f : gu);
    accumulate(acc[2], i, gi);
    accumulate(acc[3], i, d);
  }
  lane_totals(acc, out);
}

// ChannelScale's backward over a span: y = g * scale and the sum of g * x.
QS_CLONES void scale_grad_sum(const float* __restrict g, const float* __restrict x, float* __restrict y, int64_t n,
                              float scale, double* __restrict out) {
  lanes_d acc[1] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f gv = load_wide(g + i);
    store_wide(y + i, gv * scale);
    accumulate(acc[0], gv * load_wide(x + i));
  }
  for (; i < n; ++i) {
    y[i] = g[i] * scale;
    accumulate(acc[0], i, g[i] * x[i]);
  }
  lane_totals(acc, out);
}

// approx_at_span (inv = 1) and the sum of what it writes.
QS_CLONES void approx_grad_sum(const float* __restrict g, const float* __restrict x, float* __restrict y, int64_t n,
                               float shift, double* __restrict out) {
  const wide_f zero = {};
  lanes_d acc[1] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f slope = 2.0f - 2.0f * abs_wide(load_wide(x + i) + shift);
    const wide_f d = (slope < zero ? zero : slope) * load_wide(g + i);  // std::max(slope, 0), NaN kept
    store_wide(y + i, d);
    accumulate(acc[0], d);
  }
  for (; i < n; ++i) {
    const float d = std::max(2.0f - 2.0f * std::fabs(x[i] + shift), 0.0f) * g[i];
    y[i] = d;
    accumulate(acc[0], i, d);
  }
  lane_totals(acc, out);
}

// ReCU's activation backward, first pass over a sample: h = g * max(0, 2 - 2|x * inv|), written to h, and the sum
// of h * x * inv.
QS_CLONES void approx_h_sum(const float* __restrict g, const float* __restrict x, float* __restrict h, int64_t n,
                            float inv, double* __restrict out) {
  const wide_f zero = {};
  lanes_d acc[1] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f z = load_wide(x + i) * inv, slope = 2.0f - 2.0f * abs_wide(z);
    const wide_f hv = (slope < zero ? zero : slope) * load_wide(g + i);
    store_wide(h + i, hv);
    accumulate(acc[0], hv * z);
  }
  for (; i < n; ++i) {
    const float z = x[i] * inv, hi = std::max(2.0f - 2.0f * std::fabs(z), 0.0f) * g[i];
    h[i] = hi;
    accumulate(acc[0], i, hi * z);
  }
  lane_totals(acc, out);
}

// ReCU's: h = g * 1[|u| <= level], u = (w - mean) * inv, written to h, and the sums of h and h * u.
QS_CLONES void window_h_sums(const float* __restrict g, const float* __restrict w, float* __restrict h, int64_t n,
                             float mean, float inv, float level, double* __restrict out) {
  const wide_f zero = {};
  lanes_d acc[2] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f u = (load_wide(w + i) - mean) * inv, hv = abs_wide(u) <= level ? load_wide(g + i) : zero;
    store_wide(h + i, hv);
    accumulate(acc[0], hv);
    accumulate(acc[1], hv * u);
  }
  for (; i < n; ++i) {
    const float u = (w[i] - mean) * inv, hi = std::fabs(u) <= level ? g[i] : 0.0f;
    h[i] = hi;
    accumulate(acc[0], i, hi);
    accumulate(acc[1], i, hi * u);
  }
  lane_totals(acc, out);
}

// IR-Net's backward over a row, after h is written: the sums of h and h * u, u = (w - mean) * inv.
QS_CLONES void h_sums(const float* __restrict h, const float* __restrict w, int64_t n, float mean, float inv,
                      double* __restrict out) {
  lanes_d acc[2] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f hv = load_wide(h + i);
    accumulate(acc[0], hv);
    accumulate(acc[1], hv * ((load_wide(w + i) - mean) * inv));
  }
  for (; i < n; ++i) {
    accumulate(acc[0], i, h[i]);
    accumulate(acc[1], i, h[i] * ((w[i] - mean) * inv));
  }
  lane_totals(acc, out);
}

// AdaBin's backward over a row, after e is written: the sums of g, e, g * sign(w - beta) and e * u,
// u = (w - beta) * inv.
QS_CLONES void adaptive_sums(const float* __restrict g, const float* __restrict e, const float* __restrict w, int64_t n,
                             float beta, float inv, double* __restrict out) {
  const wide_f zero = {};
  lanes_d acc[4] = {};
  int64_t i = 0;
  for (; i + kWide <= n; i += kWide) {
    const wide_f gv = load_wide(g + i), ev = load_wide(e + i), d = load_wide(w + i) - beta;
    accumulate(acc[0], gv);
    accumulate(acc[1], ev);
    accumulate(acc[2], d >= zero ? gv : -gv);
    accumulate(acc[3], ev * (d * inv));
  }
  for (; i < n; ++i) {
    const float d = w[i] - beta;
    accumulate(acc[0], i, g[i]);
    accumulate(acc[1], i, e[i]);
    accumulate(acc[2], i, d >= 0.0f ? g[i] : -g[i]);
    accumulate(acc[3], i, e[i] * (d * inv));
  }
  lane_totals(acc, out);
}

QS_CLONES float abs_max(const float* __restrict p, int64_t n) {
  float m[kLanes] = {0.0f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) m[l] = std::max(m[l], std::fabs(p[i + l]));
  for (; i < n; ++i) m[0] = std::max(m[0], std::fabs(p[i]));
  return *std::max_element(m, m + kLanes);
}

void check_dense(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_pair(const at::Tensor& grad, const at::Tensor& x) {
  check_dense(x, "x");
  check_dense(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad and x must have the same shape");
}

// n - 1, the unbiased variance's divisor (1 for a one-element row).
inline double degrees_of_freedom(int64_t len) { return static_cast<double>(std::max<int64_t>(len - 1, 1)); }

// body(begin, end) over [0, n) in blocks of kGrain elements.
template <typename F>
void elementwise(int64_t n, const F& body) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { body(begin, end); });
}

// body(row) for each row of `len` elements, about kGrain elements per task.
template <typename F>
void by_rows(int64_t rows, int64_t len, const F& body) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(len, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) body(r);
  });
}

// out = scale[row] * sign(x); scale undefined: out = sign(x).
at::Tensor scaled_sign(const at::Tensor& x, const std::optional<at::Tensor>& scale) {
  check_dense(x, "x");
  at::Tensor out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t n = x.numel();
  if (!scale.has_value()) {
    elementwise(n, [&](int64_t b, int64_t e) { sign_span(src + b, dst + b, e - b, 1.0f, -1.0f); });
    return out;
  }
  check_dense(*scale, "scale");
  const int64_t rows = scale->numel(), len = rows ? n / rows : 0;
  TORCH_CHECK(rows * len == n, "scaled_sign: one scale per row of x");
  const float* s = scale->data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) { sign_span(src + r * len, dst + r * len, len, s[r], -s[r]); });
  return out;
}

// out = span(grad, x) over two tensors of one shape, in parallel blocks: span(g, x, out, n) writes n elements.
template <typename Span>
at::Tensor map_pair(const at::Tensor& grad, const at::Tensor& x, const Span& span) {
  check_pair(grad, x);
  at::Tensor out = at::empty_like(x);
  const float *g = grad.data_ptr<float>(), *src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  elementwise(x.numel(), [&](int64_t b, int64_t e) { span(g + b, src + b, dst + b, e - b); });
  return out;
}

// grad * max(0, 2 - 2|x|): ApproxSign's derivative.
at::Tensor approx_grad(const at::Tensor& grad, const at::Tensor& x) {
  return map_pair(grad, x, [](const float* g, const float* v, float* y, int64_t n) { approx_at_span(g, v, y, n, 0.0f, 1.0f); });
}

// grad * k t (1 - tanh^2(t x)) = grad * 4 k t e / (1 + e)^2 with e = exp(-2 t |x|): the Error Decay Estimator.
at::Tensor ede_grad(const at::Tensor& grad, const at::Tensor& x, double k, double t) {
  const float slope = static_cast<float>(-2.0 * t), gain = static_cast<float>(4.0 * k * t);
  return map_pair(grad, x, [&](const float* g, const float* v, float* y, int64_t n) { ede_span(g, v, y, n, slope, gain); });
}

// grad * factor * 1[|x| < bound]: the ternary straight-through estimator summed over `factor` branches.
at::Tensor clipped_scaled_grad(const at::Tensor& grad, const at::Tensor& x, double bound, double factor) {
  const float b = static_cast<float>(bound), f = static_cast<float>(factor);
  return map_pair(grad, x, [&](const float* g, const float* v, float* y, int64_t n) {
    clipped_scaled_span(g, v, y, n, b, f);
  });
}

// Per row of w [rows, ...]: mean |w|, summed in double.
at::Tensor row_mean_abs(const at::Tensor& w) {
  check_dense(w, "w");
  TORCH_CHECK(w.dim() >= 1, "row_mean_abs: a weight with rows");
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  at::Tensor out = at::empty({rows}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) { dst[r] = row_mean(src + r * len, len); });
  return out;
}

// Per row of w: scale = mean |w| (summed in double) and out = scale * sign(w), the row read from memory once
// (the second pass finds it in cache): row_mean_abs and scaled_sign's numbers in one call.
std::tuple<at::Tensor, at::Tensor> mean_abs_sign(const at::Tensor& w) {
  check_dense(w, "w");
  TORCH_CHECK(w.dim() >= 1, "mean_abs_sign: a weight with rows");
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  at::Tensor out = at::empty_like(w), scales = at::empty({rows}, w.options());
  const float* src = w.data_ptr<float>();
  float *dst = out.data_ptr<float>(), *s = scales.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) {
    s[r] = row_mean(src + r * len, len);
    sign_span(src + r * len, dst + r * len, len, s[r], -s[r]);
  });
  return {out, scales};
}

// The backward of scale[row] * sign(w) with the clipped estimator, scale = mean|w| per row:
// grad_w = scale * grad * 1[|w| <= 1] (+ sgn(w) * sum(grad * sign(w)) / len when scale_grad).
at::Tensor mean_abs_sign_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& scale, bool scale_grad) {
  check_pair(grad, w);
  check_dense(scale, "scale");
  const int64_t rows = scale.numel(), len = rows ? w.numel() / rows : 0;
  TORCH_CHECK(rows * len == w.numel(), "mean_abs_sign_backward: one scale per row of w");
  at::Tensor out = at::empty_like(w);
  const float *g = grad.data_ptr<float>(), *src = w.data_ptr<float>(), *s = scale.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) {
    const float *gr = g + r * len, *wr = src + r * len;
    const float c = scale_grad ? static_cast<float>(signed_sum(gr, wr, len) / static_cast<double>(len)) : 0.0f;
    mean_abs_sign_grad_span(gr, wr, dst + r * len, len, s[r], c);
  });
  return out;
}

// A per-row binary weight again from its forward's per-row numbers (each [rows], or absent: centre 0, inverse 1,
// scale 1, no offset): Libra-PB's (mean, 1/std, 2^k), ReCU's (mean), AdaBin's (beta, alpha as scale, beta as
// offset), XNOR-Net's and Bi-Real's (mean |w| as scale). One pass; the same expressions as those forwards.
at::Tensor row_sign_apply(const at::Tensor& w, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& centre, const std::optional<at::Tensor>& inverse,
                          const std::optional<at::Tensor>& offset) {
  check_dense(w, "w");
  TORCH_CHECK(w.dim() >= 1, "row_sign_apply: a weight with rows");
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  auto row_values = [&](const std::optional<at::Tensor>& t, const char* name) -> const float* {
    if (!t.has_value()) return nullptr;
    check_dense(*t, name);
    TORCH_CHECK(t->numel() == rows, "row_sign_apply: ", name, " must hold one value per row of w");
    return t->data_ptr<float>();
  };
  const float *s = row_values(scale, "scale"), *c = row_values(centre, "centre"), *v = row_values(inverse, "inverse"),
              *o = row_values(offset, "offset");
  at::Tensor out = at::empty_like(w);
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) {
    const float cr = c ? c[r] : 0.0f, vr = v ? v[r] : 1.0f, sr = s ? s[r] : 1.0f;
    if (o)
      row_sign_offset_span(src + r * len, dst + r * len, len, cr, vr, sr, o[r]);
    else
      row_sign_span(src + r * len, dst + r * len, len, cr, vr, sr);
  });
  return out;
}

// A layer's ternary branches, padded to the branch count of a ternary span (1, 2, 4 or 8).
struct TernaryBranches {
  static constexpr int64_t kMax = 8;
  int64_t padded;
  float delta[kMax], alpha[kMax];

  TernaryBranches(int64_t nb) : padded(nb <= 1 ? 1 : nb <= 2 ? 2 : nb <= 4 ? 4 : kMax) {
    TORCH_CHECK(nb > 0 && nb <= kMax, "ternary: 1 to ", kMax, " branches, got ", nb);
    std::fill(delta, delta + kMax, INFINITY);
    std::fill(alpha, alpha + kMax, 0.0f);
  }
  void fill(const float* src, float* dst, int64_t n) const {
    switch (padded) {
      case 1: return ternary_fill_span<1>(src, dst, n, delta, alpha);
      case 2: return ternary_fill_span<2>(src, dst, n, delta, alpha);
      case 4: return ternary_fill_span<4>(src, dst, n, delta, alpha);
      default: return ternary_fill_span<kMax>(src, dst, n, delta, alpha);
    }
  }
};

// Residual-expansion ternary weight from its statistics: wq = sign(w) * sum_b alpha_b [|w| >= delta_b], one pass.
void ternary_fill(const float* src, float* dst, int64_t n, const TernaryBranches& branches) {
  elementwise(n, [&](int64_t b, int64_t e) { branches.fill(src + b, dst + b, e - b); });
}

// The weight of ternary_expand again, from the deltas and alphas it returned: one pass, no statistics.
at::Tensor ternary_apply(const at::Tensor& w, const at::Tensor& deltas, const at::Tensor& alphas) {
  check_dense(w, "w");
  check_dense(deltas, "deltas");
  check_dense(alphas, "alphas");
  TORCH_CHECK(deltas.numel() > 0 && deltas.numel() == alphas.numel(), "ternary_apply: one delta and alpha per branch");
  TernaryBranches branches(deltas.numel());
  std::copy_n(deltas.data_ptr<float>(), deltas.numel(), branches.delta);
  std::copy_n(alphas.data_ptr<float>(), alphas.numel(), branches.alpha);
  at::Tensor out = at::empty_like(w);
  ternary_fill(w.data_ptr<float>(), out.data_ptr<float>(), w.numel(), branches);
  return out;
}

// Residual-expansion ternary weight: per threshold tau_b, delta_b = tau_b * max|w| and alpha_b = mean(|w| : |w| >=
// delta_b); wq = sign(w) * sum_b alpha_b [|w| >= delta_b]. Three passes: max|w|, the branches' sums, wq.
// Returns (wq, alphas, deltas), the last two [branches].
std::tuple<at::Tensor, at::Tensor, at::Tensor> ternary_expand(const at::Tensor& w, at::ArrayRef<double> thresholds) {
  check_dense(w, "w");
  const int64_t n = w.numel(), nb = static_cast<int64_t>(thresholds.size());
  TernaryBranches branches(nb);
  const float* src = w.data_ptr<float>();
  const int64_t blocks = (n + kGrain - 1) / kGrain;
  auto block_len = [&](int64_t k) { return std::min(n, (k + 1) * kGrain) - k * kGrain; };
  std::vector<float> block_peak(blocks, 0.0f);
  at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) block_peak[k] = abs_max(src + k * kGrain, block_len(k));
  });
  const float peak = blocks ? *std::max_element(block_peak.begin(), block_peak.end()) : 0.0f;
  for (int64_t j = 0; j < nb; ++j) branches.delta[j] = static_cast<float>(thresholds[j]) * peak;
  std::vector<double> sums(blocks * nb, 0.0);  // per block and branch: the sum of the kept |w|
  std::vector<int64_t> counts(blocks * nb, 0);  // and their count
  at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k)
      for (int64_t j = 0; j < nb; ++j) {  // the block stays in cache from one branch to the next
        sums[k * nb + j] = kept_sum(src + k * kGrain, block_len(k), branches.delta[j]);
        counts[k * nb + j] = kept_count(src + k * kGrain, block_len(k), branches.delta[j]);
      }
  });
  at::Tensor deltas = at::empty({nb}, w.options()), alphas = at::empty({nb}, w.options());
  for (int64_t j = 0; j < nb; ++j) {
    double kept = 0.0;
    int64_t count = 0;
    for (int64_t k = 0; k < blocks; ++k) kept += sums[k * nb + j], count += counts[k * nb + j];
    branches.alpha[j] = static_cast<float>(kept / std::max(static_cast<double>(count), 1.0));
  }
  std::copy_n(branches.delta, nb, deltas.data_ptr<float>());
  std::copy_n(branches.alpha, nb, alphas.data_ptr<float>());
  at::Tensor out = at::empty_like(w);
  ternary_fill(src, out.data_ptr<float>(), n, branches);
  return {out, alphas, deltas};
}

// IR-Net's Libra-PB per row: mean, the unbiased std (1/std = 0 for a filter whose std <= 1e-6 |mean|),
// scale = 2^round(log2(mean |u|)) with u = (w - mean) / std, and wq = scale * sign(u).
// Returns (wq, mean, inv, scale), the last three [rows].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> libra_sign(const at::Tensor& w) {
  check_dense(w, "w");
  TORCH_CHECK(w.dim() >= 1, "libra_sign: a weight with rows");
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  const double dof = degrees_of_freedom(len);
  at::Tensor out = at::empty_like(w), means = at::empty({rows}, w.options()), invs = at::empty({rows}, w.options()),
             scales = at::empty({rows}, w.options());
  const float* src = w.data_ptr<float>();
  float *dst = out.data_ptr<float>(), *mean = means.data_ptr<float>(), *inv = invs.data_ptr<float>(),
        *scale = scales.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) {
    const float* p = src + r * len;
    const float m = static_cast<float>(plain_sum(p, len) / static_cast<double>(len));
    const float std_dev = static_cast<float>(std::sqrt(centred_square_sum(p, len, m) / dof));
    const float i = std_dev <= 1e-6f * std::fabs(m) ? 0.0f : 1.0f / std_dev;
    const float spread = static_cast<float>(standardized_abs_sum(p, len, m, i) / static_cast<double>(len));
    const float s = std::exp2(std::nearbyint(std::log2(spread)));
    mean[r] = m, inv[r] = i, scale[r] = s;
    standardized_sign_span(p, dst + r * len, len, m, i, s);
  });
  return {out, means, invs, scales};
}

// The per-row backward drivers: out = body(r, grad row, w row, out row, len) for each row of w [rows, ...].
template <typename Body>
at::Tensor rows_backward(const at::Tensor& grad, const at::Tensor& w, const Body& body) {
  check_pair(grad, w);
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  at::Tensor out = at::empty_like(w);
  const float *g = grad.data_ptr<float>(), *src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) { body(r, g + r * len, src + r * len, dst + r * len, len); });
  return out;
}

// Its backward, EDE through the standardization: h = scale * g * EDE'(u),
// grad_w = (h - mean h - u * sum(h u) / (len - 1)) * inv.
at::Tensor libra_sign_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& means,
                               const at::Tensor& invs, const at::Tensor& scales, double k, double t) {
  const float *mean = means.data_ptr<float>(), *inv = invs.data_ptr<float>(), *scale = scales.data_ptr<float>();
  const float slope = static_cast<float>(-2.0 * t), gain = static_cast<float>(4.0 * k * t);
  return rows_backward(grad, w, [&](int64_t r, const float* g, const float* p, float* h, int64_t len) {
    libra_h_span(g, p, h, len, mean[r], inv[r], scale[r], slope, gain);
    double sums[2];  // h, h * u
    h_sums(h, p, len, mean[r], inv[r], sums);
    const float h_mean = static_cast<float>(sums[0] / static_cast<double>(len));
    const float spread = static_cast<float>(sums[1] / degrees_of_freedom(len));
    libra_grad_span(p, h, len, mean[r], inv[r], h_mean, spread);
  });
}

// ReCU per row: mean, d = sqrt(var + 1e-5) / (2 sqrt 2) (unbiased variance), u = (w - mean) / d, and
// wq = sign(u) = sign(w - mean). Returns (wq, mean, 1/d, sum |u|) with the last three [rows]; the caller
// turns the layer's mean |u| into the clamp level.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recu_sign(const at::Tensor& w) {
  check_dense(w, "w");
  TORCH_CHECK(w.dim() >= 1, "recu_sign: a weight with rows");
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  const double dof = degrees_of_freedom(len);
  at::Tensor out = at::empty_like(w), means = at::empty({rows}, w.options()), invs = at::empty({rows}, w.options()),
             abs_sums = at::empty({rows}, w.options().dtype(at::kDouble));
  const float* src = w.data_ptr<float>();
  float *dst = out.data_ptr<float>(), *mean = means.data_ptr<float>(), *inv = invs.data_ptr<float>();
  double* abs_sum = abs_sums.data_ptr<double>();
  by_rows(rows, len, [&](int64_t r) {
    const float* p = src + r * len;
    const float m = static_cast<float>(plain_sum(p, len) / static_cast<double>(len));
    const double variance = centred_square_sum(p, len, m) / dof;
    const float i = static_cast<float>(2.0 * std::sqrt(2.0) / std::sqrt(variance + 1e-5));
    mean[r] = m, inv[r] = i;
    abs_sum[r] = standardized_abs_sum(p, len, m, i);
    centred_sign_span(p, dst + r * len, len, m);
  });
  return {out, means, invs, abs_sums};
}

// Its backward, identity through the sign and the clamp's window through the standardization:
// h = g * 1[|u| <= level], grad_w = (h - mean h - u * sum(h u) / (8 (len - 1))) / d.
at::Tensor recu_sign_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& means,
                              const at::Tensor& invs, double level) {
  const float *mean = means.data_ptr<float>(), *inv = invs.data_ptr<float>();
  const float q = static_cast<float>(level);
  return rows_backward(grad, w, [&](int64_t r, const float* g, const float* p, float* h, int64_t len) {
    double sums[2];
    window_h_sums(g, p, h, len, mean[r], inv[r], q, sums);
    const float h_mean = static_cast<float>(sums[0] / static_cast<double>(len));
    const float spread = static_cast<float>(sums[1] / (8.0 * degrees_of_freedom(len)));
    libra_grad_span(p, h, len, mean[r], inv[r], h_mean, spread);
  });
}

// AdaBin per row: beta = mean, alpha = the population std (at least 1e-8), wq = alpha * sign(w - beta) + beta.
// Returns (wq, beta, alpha), the last two [rows].
std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_sign(const at::Tensor& w) {
  check_dense(w, "w");
  TORCH_CHECK(w.dim() >= 1, "adaptive_sign: a weight with rows");
  const int64_t rows = w.size(0), len = rows ? w.numel() / rows : 0;
  at::Tensor out = at::empty_like(w), betas = at::empty({rows}, w.options()), alphas = at::empty({rows}, w.options());
  const float* src = w.data_ptr<float>();
  float *dst = out.data_ptr<float>(), *beta = betas.data_ptr<float>(), *alpha = alphas.data_ptr<float>();
  by_rows(rows, len, [&](int64_t r) {
    const float* p = src + r * len;
    const float b = static_cast<float>(plain_sum(p, len) / static_cast<double>(len));
    const float a = std::max(static_cast<float>(std::sqrt(centred_square_sum(p, len, b) / static_cast<double>(len))), 1e-8f);
    beta[r] = b, alpha[r] = a;
    adaptive_sign_span(p, dst + r * len, len, b, a);
  });
  return {out, betas, alphas};
}

// Its backward, EDE through u = (w - beta) / alpha and through alpha and beta: with e = g * EDE'(u) and means
// over the row, grad_w = e + (mean g - mean e) + u * (mean(g sign u) - mean(e u)) [the last term 0 where alpha
// is clamped].
at::Tensor adaptive_sign_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& betas,
                                  const at::Tensor& alphas, double k, double t) {
  const float *beta = betas.data_ptr<float>(), *alpha = alphas.data_ptr<float>();
  const float slope = static_cast<float>(-2.0 * t), gain = static_cast<float>(4.0 * k * t);
  return rows_backward(grad, w, [&](int64_t r, const float* g, const float* p, float* e, int64_t len) {
    const double n = static_cast<double>(len);
    const float inv = 1.0f / alpha[r];
    adaptive_e_span(g, p, e, len, beta[r], inv, slope, gain);
    double sums[4];  // g, e, g * sign(w - beta), e * u
    adaptive_sums(g, e, p, len, beta[r], inv, sums);
    const float centre = static_cast<float>((sums[0] - sums[1]) / n);
    const float spread = alpha[r] > 1e-8f ? static_cast<float>((sums[2] - sums[3]) / n) : 0.0f;
    adaptive_grad_span(p, e, len, beta[r], inv, centre, spread);
  });
}

// The clipped straight-through sign: (sign(x), 1[|x| <= 1] as uint8), in one pass; the backward keeps the byte mask.
std::tuple<at::Tensor, at::Tensor> sign_with_mask(const at::Tensor& x) {
  check_dense(x, "x");
  at::Tensor out = at::empty_like(x), mask = at::empty_like(x, x.options().dtype(at::kByte));
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  uint8_t* m = mask.data_ptr<uint8_t>();
  elementwise(x.numel(), [&](int64_t b, int64_t e) { sign_mask_span(src + b, dst + b, m + b, e - b); });
  return {out, mask};
}

// Its backward: grad where the mask is set, else 0.
at::Tensor masked_grad(const at::Tensor& grad, const at::Tensor& mask) {
  check_dense(grad, "grad");
  TORCH_CHECK(mask.is_contiguous() && mask.scalar_type() == at::kByte && mask.sizes() == grad.sizes(),
              "masked_grad: a contiguous uint8 mask of grad's shape");
  at::Tensor out = at::empty_like(grad);
  const float* g = grad.data_ptr<float>();
  const uint8_t* m = mask.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  elementwise(grad.numel(), [&](int64_t b, int64_t e) { masked_span(g + b, m + b, dst + b, e - b); });
  return out;
}

// A tensor that holds two values, lo and hi (AdaBin's binary activations), as a uint8 code 1[x == hi] per element.
at::Tensor level_codes(const at::Tensor& x, double hi) {
  check_dense(x, "x");
  at::Tensor codes = at::empty_like(x, x.options().dtype(at::kByte));
  const float* src = x.data_ptr<float>();
  uint8_t* m = codes.data_ptr<uint8_t>();
  const float h = static_cast<float>(hi);
  elementwise(x.numel(), [&](int64_t b, int64_t e) { level_code_span(src + b, m + b, e - b, h); });
  return codes;
}

// Back from the codes: hi where set, else lo.
at::Tensor level_values(const at::Tensor& codes, double lo, double hi) {
  TORCH_CHECK(codes.is_contiguous() && codes.scalar_type() == at::kByte, "level_values: contiguous uint8 codes");
  at::Tensor out = at::empty_like(codes, codes.options().dtype(at::kFloat));
  const uint8_t* m = codes.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  const float l = static_cast<float>(lo), h = static_cast<float>(hi);
  elementwise(codes.numel(), [&](int64_t b, int64_t e) { level_value_span(m + b, dst + b, e - b, l, h); });
  return out;
}

// x [N, C, *] as N * C blocks of `len` elements; channel c's blocks are n * C + c.
struct Channels {
  int64_t batch, channels, len;
  Channels(const at::Tensor& x, const char* op) {
    check_dense(x, "x");
    TORCH_CHECK(x.dim() >= 2, op, ": x must be [N, C, ...]");
    batch = x.size(0), channels = x.size(1), len = batch * channels != 0 ? x.numel() / (batch * channels) : 0;
  }
  const float* param(const at::Tensor& t) const {
    check_dense(t, "a channel parameter");
    TORCH_CHECK(t.numel() == channels, "one parameter per channel");
    return t.data_ptr<float>();
  }
  // body(c, block) for every block of x, about kGrain elements per task.
  template <typename F>
  void blocks(const F& body) const {
    by_rows(batch * channels, len, [&](int64_t k) { body(k % channels, k * len); });
  }
  // A backward with K gradients per channel: body(c, g, x, out, sums) writes grad_x over one block and its K sums.
  // The blocks run in memory order (a pass by channel would stride through memory, which is slow when x is not in
  // cache); then each channel adds its blocks' sums in order of n, so the sums do not depend on the number of
  // threads. Returns (grad_x, sums [K, C], or [C] for K = 1).
  template <int K, typename F>
  std::tuple<at::Tensor, at::Tensor> grad_and_sums(const at::Tensor& grad, const at::Tensor& x, const F& body) const {
    at::Tensor out = at::empty_like(x), partial = at::empty({batch * channels, K}, x.options().dtype(at::kDouble));
    at::Tensor sums = K == 1 ? at::empty({channels}, x.options()) : at::empty({K, channels}, x.options());
    const float *g = grad.data_ptr<float>(), *src = x.data_ptr<float>();
    float *dst = out.data_ptr<float>(), *sum = sums.data_ptr<float>();
    double* part = partial.data_ptr<double>();
    by_rows(batch * channels, len, [&](int64_t block) {
      const int64_t at = block * len;
      body(block % channels, g + at, src + at, dst + at, part + block * K);
    });
    at::parallel_for(0, channels, 16, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c)
        for (int k = 0; k < K; ++k) {
          double total = 0.0;
          for (int64_t n = 0; n < batch; ++n) total += part[(n * channels + c) * K + k];
          sum[k * channels + c] = static_cast<float>(total);
        }
    });
    return {out, sums};
  }
};

// The per-channel piecewise-linear map, one parameter per channel (dimension 1 of x):
// y = (u > 0 ? pos : neg) * u + shift_out with u = x - shift_in. RPReLU is pos = 1, neg = its slope;
// Maxout shift_in = shift_out = 0; ChannelScale pos = neg = its scale.
// The same map over a channels_last x [N, C, H, W] (each position's C channels contiguous): inference of packed models.
QS_CLONES void piecewise_positions(const float* __restrict x, float* __restrict y, int64_t positions, int64_t C,
                                   const float* in, const float* a, const float* b, const float* o) {
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t c = 0; c < C; ++c) {
      const float u = x[p * C + c] - in[c];
      y[p * C + c] = (u > 0.0f ? a[c] : b[c]) * u + o[c];
    }
}

at::Tensor channel_piecewise_channels_last(const at::Tensor& x, const at::Tensor& shift_in, const at::Tensor& pos,
                                          const at::Tensor& neg, const at::Tensor& shift_out) {
  const int64_t C = x.size(1), positions = C != 0 ? x.numel() / C : 0;
  for (const at::Tensor* t : {&shift_in, &pos, &neg, &shift_out}) {
    check_dense(*t, "a channel parameter");
    TORCH_CHECK(t->numel() == C, "one parameter per channel");
  }
  at::Tensor out = at::empty_like(x);  // channels_last too
  const float *src = x.data_ptr<float>(), *in = shift_in.data_ptr<float>(), *a = pos.data_ptr<float>(),
              *b = neg.data_ptr<float>(), *o = shift_out.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  by_rows(positions, C, [&](int64_t p) { piecewise_positions(src + p * C, dst + p * C, 1, C, in, a, b, o); });
  return out;
}

at::Tensor channel_piecewise(const at::Tensor& x, const at::Tensor& shift_in, const at::Tensor& pos,
                             const at::Tensor& neg, const at::Tensor& shift_out) {
  if (x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kFloat && !x.is_contiguous() &&
      x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return channel_piecewise_channels_last(x, shift_in, pos, neg, shift_out);
  const Channels ch(x, "channel_piecewise");
  const float *in = ch.param(shift_in), *a = ch.param(pos), *b = ch.param(neg), *o = ch.param(shift_out);
  at::Tensor out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  ch.blocks([&](int64_t c, int64_t at) { piecewise_span(src + at, dst + at, ch.len, in[c], a[c], b[c], o[c]); });
  return out;
}

// Its backward: (grad_x, sums [4, C]) with, per channel, the sums over N and the trailing dimensions of
// g * u where u > 0, g * u where u <= 0, g, and grad_x: the gradients of pos, neg, shift_out and -shift_in.
std::tuple<at::Tensor, at::Tensor> channel_piecewise_backward(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& shift_in, const at::Tensor& pos,
                                                              const at::Tensor& neg) {
  check_pair(grad, x);
  const Channels ch(x, "channel_piecewise_backward");
  const float *in = ch.param(shift_in), *a = ch.param(pos), *b = ch.param(neg);
  return ch.grad_and_sums<4>(grad, x, [&](int64_t c, const float* g, const float* src, float* dst, double* sums) {
    piecewise_grad_sums(g, src, dst, ch.len, in[c], a[c], b[c], sums);
  });
}

// ChannelScale's backward from its output y = x * scale: (grad_x = g * scale, sums [C] = the sum of g * y per channel).
// The caller divides the sums by the scale: the scale's gradient.
std::tuple<at::Tensor, at::Tensor> channel_scale_backward(const at::Tensor& grad, const at::Tensor& y,
                                                          const at::Tensor& scale) {
  check_pair(grad, y);
  const Channels ch(y, "channel_scale_backward");
  const float* s = ch.param(scale);
  return ch.grad_and_sums<1>(grad, y, [&](int64_t c, const float* g, const float* src, float* dst, double* sums) {
    scale_grad_sum(g, src, dst, ch.len, s[c], sums);
  });
}

// ReActNet's RSign: y = sign(x + shift[c]) per channel (dimension 1).
at::Tensor channel_shift_sign(const at::Tensor& x, const at::Tensor& shift) {
  const Channels ch(x, "channel_shift_sign");
  const float* b = ch.param(shift);
  at::Tensor out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  ch.blocks([&](int64_t c, int64_t at) { shifted_sign_span(src + at, dst + at, ch.len, b[c]); });
  return out;
}

// Its backward, ApproxSign at x + shift: (grad_x, grad_shift [C]) = (g * max(0, 2 - 2|x + shift|), its sum per channel).
std::tuple<at::Tensor, at::Tensor> channel_shift_sign_backward(const at::Tensor& grad, const at::Tensor& x,
                                                               const at::Tensor& shift) {
  check_pair(grad, x);
  const Channels ch(x, "channel_shift_sign_backward");
  const float* b = ch.param(shift);
  return ch.grad_and_sums<1>(grad, x, [&](int64_t c, const float* g, const float* src, float* dst, double* sums) {
    approx_grad_sum(g, src, dst, ch.len, b[c], sums);
  });
}

// ReCU's activation backward per sample (row of x [N, ...]): ApproxSign at z = x / sigma with sigma = sqrt(var + 1e-5)
// (unbiased variance), differentiated through sigma: h = g * max(0, 2 - 2|z|),
// grad_x = (h - (x - mean) / sigma * sum(h z) / (len - 1)) / sigma.
at::Tensor normalized_approx_backward(const at::Tensor& grad, const at::Tensor& x) {
  return rows_backward(grad, x, [&](int64_t, const float* g, const float* p, float* h, int64_t len) {
    const double dof = degrees_of_freedom(len);
    const float mean = static_cast<float>(plain_sum(p, len) / static_cast<double>(len));
    const float inv = static_cast<float>(1.0 / std::sqrt(centred_square_sum(p, len, mean) / dof + 1e-5));
    double dot_sum;
    approx_h_sum(g, p, h, len, inv, &dot_sum);
    const float dot = static_cast<float>(dot_sum / dof);
    libra_grad_span(p, h, len, mean, inv, 0.0f, dot);
  });
}

// AdaBin's activation over all of x with learnable scalars: y = (u >= 0 ? alpha : -alpha) + beta, u = (x - beta) / alpha.
at::Tensor adaptive_activation(const at::Tensor& x, double beta, double alpha) {
  check_dense(x, "x");
  at::Tensor out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float b = static_cast<float>(beta), a = static_cast<float>(alpha);
  elementwise(x.numel(), [&](int64_t s, int64_t e) { adaptive_activation_span(src + s, dst + s, e - s, b, a); });
  return out;
}

// Its backward, ApproxSign at u: (grad_x, sums [4]) with d = g * max(0, 2 - 2|u|) and the sums of g * sign(u), d * u,
// g and d (blocks of kGrain elements summed in order, so the sums do not depend on the number of threads).
std::tuple<at::Tensor, at::Tensor> adaptive_activation_backward(const at::Tensor& grad, const at::Tensor& x, double beta,
                                                                double alpha) {
  check_pair(grad, x);
  const int64_t n = x.numel(), blocks = (n + kGrain - 1) / kGrain;
  at::Tensor out = at::empty_like(x);
  const float *g = grad.data_ptr<float>(), *src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float b = static_cast<float>(beta), a = static_cast<float>(alpha);
  std::vector<double> partial(blocks * 4, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t at = k * kGrain, len = std::min(n, at + kGrain) - at;
      adaptive_activation_grad_span(g + at, src + at, dst + at, len, b, a);
      partial[k * 4] = adaptive_activation_sign_sum(g + at, src + at, len, b, a);
      partial[k * 4 + 1] = adaptive_activation_du_sum(dst + at, src + at, len, b, a);
      partial[k * 4 + 2] = plain_sum(g + at, len);
      partial[k * 4 + 3] = plain_sum(dst + at, len);
    }
  });
  at::Tensor sums = at::empty({4}, x.options());
  float* sum = sums.data_ptr<float>();
  for (int j = 0; j < 4; ++j) {
    double total = 0.0;
    for (int64_t k = 0; k < blocks; ++k) total += partial[k * 4 + j];
    sum[j] = static_cast<float>(total);
  }
  return {out, sums};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(quantswap_native, m) {
  m.def("adaptive_sign(Tensor w) -> (Tensor, Tensor, Tensor)", &adaptive_sign);
  m.def("adaptive_sign_backward(Tensor grad, Tensor w, Tensor beta, Tensor alpha, float k, float t) -> Tensor",
        &adaptive_sign_backward);
  m.def("recu_sign(Tensor w) -> (Tensor, Tensor, Tensor, Tensor)", &recu_sign);
  m.def("recu_sign_backward(Tensor grad, Tensor w, Tensor mean, Tensor inv, float level) -> Tensor", &recu_sign_backward);
  m.def("libra_sign(Tensor w) -> (Tensor, Tensor, Tensor, Tensor)", &libra_sign);
  m.def("libra_sign_backward(Tensor grad, Tensor w, Tensor mean, Tensor inv, Tensor scale, float k, float t) -> Tensor",
        &libra_sign_backward);
  m.def("scaled_sign(Tensor x, Tensor? scale) -> Tensor", &scaled_sign);
  m.def("approx_grad(Tensor grad, Tensor x) -> Tensor", &approx_grad);
  m.def("ede_grad(Tensor grad, Tensor x, float k, float t) -> Tensor", &ede_grad);
  m.def("clipped_scaled_grad(Tensor grad, Tensor x, float bound, float factor) -> Tensor", &clipped_scaled_grad);
  m.def("row_mean_abs(Tensor w) -> Tensor", &row_mean_abs);
  m.def("mean_abs_sign(Tensor w) -> (Tensor, Tensor)", &mean_abs_sign);
  m.def("mean_abs_sign_backward(Tensor grad, Tensor w, Tensor scale, bool scale_grad) -> Tensor", &mean_abs_sign_backward);
  m.def("ternary_expand(Tensor w, float[] thresholds) -> (Tensor, Tensor, Tensor)", &ternary_expand);
  m.def("ternary_apply(Tensor w, Tensor deltas, Tensor alphas) -> Tensor", &ternary_apply);
  m.def("row_sign_apply(Tensor w, Tensor? scale, Tensor? centre, Tensor? inverse, Tensor? offset) -> Tensor",
        &row_sign_apply);
  m.def("channel_piecewise(Tensor x, Tensor shift_in, Tensor pos, Tensor neg, Tensor shift_out) -> Tensor",
        &channel_piecewise);
  m.def("channel_piecewise_backward(Tensor grad, Tensor x, Tensor shift_in, Tensor pos, Tensor neg) -> (Tensor, Tensor)",
        &channel_piecewise_backward);
  m.def("channel_scale_backward(Tensor grad, Tensor y, Tensor scale) -> (Tensor, Tensor)", &channel_scale_backward);
  m.def("sign_with_mask(Tensor x) -> (Tensor, Tensor)", &sign_with_mask);
  m.def("masked_grad(Tensor grad, Tensor mask) -> Tensor", &masked_grad);
  m.def("level_codes(Tensor x, float hi) -> Tensor", &level_codes);
  m.def("level_values(Tensor codes, float lo, float hi) -> Tensor", &level_values);
  m.def("channel_shift_sign(Tensor x, Tensor shift) -> Tensor", &channel_shift_sign);
  m.def("channel_shift_sign_backward(Tensor grad, Tensor x, Tensor shift) -> (Tensor, Tensor)",
        &channel_shift_sign_backward);
  m.def("normalized_approx_backward(Tensor grad, Tensor x) -> Tensor", &normalized_approx_backward);
  m.def("adaptive_activation(Tensor x, float beta, float alpha) -> Tensor", &adaptive_activation);
  m.def("adaptive_activation_backward(Tensor grad, Tensor x, float beta, float alpha) -> (Tensor, Tensor)",
        &adaptive_activation_backward);
}

}  // namespace quantswap
