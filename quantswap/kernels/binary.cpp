// quantswap's packed binary kernels: W1/A1 convolution and linear layers by XOR + popcount.
//
// Both operands are {-1, +1}, stored one bit each (1 for -1, the sign bit), packed along input
// channels into 64-bit words. A dot product of K such values is K - 2 * popcount(a XOR w). A
// zero-padded tap of the convolution contributes 0 (PyTorch pads sign(x) with zeros, not with -1
// or +1), so every output position counts only its valid taps: K = valid taps * channels per group.
// The result is exact integer arithmetic; the output transform y = float(K - 2 * acc) * alpha + bias
// rounds twice, as the pure-PyTorch reference (quantswap/kernels/reference.py) does.
//
// Layouts (see quantswap/kernels/layout.py, which packs the weights):
//   weights     int64 [G, OB, KH, KW, WG, 8]: group, block of 8 output channels, tap, word, lane
//   activations int64 [N, H, W, G, WG], packed here from float32 x (any strides)
//
// The inner loop is compiled three times (AVX-512 VPOPCNTDQ, AVX2, portable C++) and picked at run
// time from the CPU's features; `set_isa` lowers the choice (for tests and benchmarks). Work is split
// with at::parallel_for, so it uses the threads torch.get_num_threads() reports.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

namespace quantswap {
namespace {

enum Isa : int64_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kLanes = 8;  // output channels per weight block

int64_t best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return kAvx2;
  return kPortable;
}

std::atomic<int64_t> g_isa{-1};

int64_t active_isa() {
  int64_t isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = best_isa();
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return isa;
}

// Sets the instruction set the kernels use (at most what the CPU has; -1: the best it has) and returns it.
int64_t set_isa(int64_t isa) {
  const int64_t best = best_isa();
  const int64_t chosen = isa < 0 ? best : std::min(isa, best);
  g_isa.store(chosen, std::memory_order_relaxed);
  return chosen;
}

int64_t isa() { return active_isa(); }

// ---------------------------------------------------------------------------------------------------
// Dot products of one activation word run against a block of 8 weight words (8 output channels).

struct Geometry {
  int64_t H, W, G, WG, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw;
};

// The valid taps of output position (oh, ow): `tap` indexes the kernel, `pos` the input position.
// (A macro, not a lambda: a lambda would not inherit the ISA's target attribute below.)
#define QUANTSWAP_FOR_EACH_TAP(g, oh, ow, tap, pos)                                     \
  for (int64_t kh = 0, ih = (oh) * (g).sh - (g).ph; kh < (g).KH; ++kh, ih += (g).dh)    \
    if (ih >= 0 && ih < (g).H)                                                          \
      for (int64_t kw = 0, iw = (ow) * (g).sw - (g).pw; kw < (g).KW; ++kw, iw += (g).dw) \
        if (iw >= 0 && iw < (g).W)                                                      \
          for (int64_t tap = kh * (g).KW + kw, pos = ih * (g).W + iw, once = 1; once; once = 0)

// Each row kernel fills acc[(ow * NB + b) * 8 + lane] with the popcount sums of output row `oh` for
// NB (1..4) consecutive blocks of 8 output channels, and taps[ow] with the valid taps at each
// position. Several blocks per pass reuse each activation word and give the CPU NB independent
// accumulator chains.

template <int NB>
void row_portable(const Geometry& g, const uint64_t* act, const uint64_t* wblk, int64_t block_words, int64_t grp,
                  int64_t oh, int32_t* acc, int32_t* taps) {
  const int64_t tap_words = g.WG * kLanes;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    int64_t sum[NB * kLanes] = {};
    int32_t n = 0;
    QUANTSWAP_FOR_EACH_TAP(g, oh, ow, tap, pos) {
      ++n;
      const uint64_t* a = act + (pos * g.G + grp) * g.WG;
      for (int b = 0; b < NB; ++b) {
        const uint64_t* w = wblk + b * block_words + tap * tap_words;
        for (int64_t j = 0; j < g.WG; ++j)
          for (int l = 0; l < kLanes; ++l) sum[b * kLanes + l] += __builtin_popcountll(a[j] ^ w[j * kLanes + l]);
      }
    }
    for (int i = 0; i < NB * kLanes; ++i) acc[ow * NB * kLanes + i] = static_cast<int32_t>(sum[i]);
    taps[ow] = n;
  }
}

// The output transform of one row: y = float(taps * cg - 2 * acc) * alpha + bias, rounded twice as in
// the reference. `y` points at out[n, o0, oh, 0]; lanes = output channels of this row that exist.
struct Emit {
  const int32_t* acc;
  const int32_t* taps;
  int64_t OW, nb, cg, lanes;
  const float* alpha;
  const float* bias;
  float* y;
  int64_t so, sx;
};

// Asks for the cache lines emit will write, so they arrive while the row's popcounts run.
void prefetch_for_writing(const Emit& e) {
  constexpr int64_t kLine = 64 / sizeof(float);
  if (e.so == 1) {  // channels_last: each position's channels are contiguous
    for (int64_t ow = 0; ow < e.OW; ++ow)
      for (int64_t l = 0; l < e.lanes; l += kLine) __builtin_prefetch(e.y + ow * e.sx + l, 1, 3);
  } else if (e.sx == 1) {  // NCHW: each channel's row is contiguous
    for (int64_t l = 0; l < e.lanes; ++l)
      for (int64_t ow = 0; ow < e.OW; ow += kLine) __builtin_prefetch(e.y + l * e.so + ow, 1, 3);
  }
}

void emit_portable(const Emit& e) {
  for (int64_t l = 0; l < e.lanes; ++l)
    for (int64_t ow = 0; ow < e.OW; ++ow) {
      const float v = static_cast<float>(e.taps[ow] * e.cg - 2 * e.acc[ow * e.nb * kLanes + l]) * e.alpha[l];
      e.y[l * e.so + ow * e.sx] = e.bias != nullptr ? v + e.bias[l] : v;
    }
}

#pragma GCC push_options
#pragma GCC target("avx2,popcnt")

// Popcount of 4 x 64 bits by nibble lookup (Mula, Kurz, Lemire), summed per 64-bit lane.
inline __m256i popcount_avx2(__m256i v) {
  const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                          2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(lookup, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(lookup, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

// Masked stores are slow on some CPUs (AMD's vmaskmovps): only the ragged edge takes one.
inline void store(float* y, __m256 v, bool full, __m256i mask) {
  if (full) {
    _mm256_storeu_ps(y, v);
  } else {
    _mm256_maskstore_ps(y, mask, v);
  }
}

// emit_portable where the output is channels_last: acc's blocks of 8 channels are already in the
// output's order, position after position.
template <bool kBias>
void emit_blocks_avx2(const Emit& e) {
  const int64_t full = e.lanes / kLanes, nl = e.lanes % kLanes;
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nl)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int64_t ow = 0; ow < e.OW; ++ow) {
    const __m256i k = _mm256_set1_epi32(static_cast<int>(e.taps[ow] * e.cg));
    const int32_t* acc = e.acc + ow * e.nb * kLanes;
    float* y = e.y + ow * e.sx;
    for (int64_t b = 0; b <= full && b < e.nb; ++b) {
      if (b == full && nl == 0) break;
      const __m256i dot = _mm256_sub_epi32(k, _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + b * kLanes)), 1));
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_loadu_ps(e.alpha + b * kLanes));
      if (b < full) {
        if (kBias) v = _mm256_add_ps(v, _mm256_loadu_ps(e.bias + b * kLanes));
        _mm256_storeu_ps(y + b * kLanes, v);
      } else {  // the ragged last block: alpha and bias have only nl values left
        v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_maskload_ps(e.alpha + b * kLanes, tail));
        if (kBias) v = _mm256_add_ps(v, _mm256_maskload_ps(e.bias + b * kLanes, tail));
        _mm256_maskstore_ps(y + b * kLanes, tail, v);
      }
    }
  }
}

void emit_channels_last_avx2(const Emit& e) { e.bias != nullptr ? emit_blocks_avx2<true>(e) : emit_blocks_avx2<false>(e); }

// emit_portable, 8 positions x 8 channels at a time: rows of 8 channels, transposed 8 x 8 into
// rows of 8 positions where the output is NCHW.
void emit_avx2(const Emit& e) {
  if (e.so == 1) return emit_channels_last_avx2(e);
  if (e.sx != 1) return emit_portable(e);
  for (int64_t b = 0; b * kLanes < e.lanes; ++b) {
    const int64_t nl = std::min<int64_t>(kLanes, e.lanes - b * kLanes);
    const __m256i lane_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nl)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 alpha = _mm256_maskload_ps(e.alpha + b * kLanes, lane_mask);
    const __m256 bias = e.bias != nullptr ? _mm256_maskload_ps(e.bias + b * kLanes, lane_mask) : _mm256_setzero_ps();
    for (int64_t ow = 0; ow < e.OW; ow += 8) {
      const int64_t nw = std::min<int64_t>(8, e.OW - ow);
      __m256 r[8];
      for (int64_t i = 0; i < 8; ++i) {
        if (i >= nw) { r[i] = _mm256_setzero_ps(); continue; }
        const __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.acc + ((ow + i) * e.nb + b) * kLanes));
        const __m256i dot = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(e.taps[ow + i] * e.cg)), _mm256_slli_epi32(acc, 1));
        r[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), alpha);
        if (e.bias != nullptr) r[i] = _mm256_add_ps(r[i], bias);
      }
      float* y = e.y + b * kLanes * e.so + ow * e.sx;
      if (e.so == 1) {  // channels_last: a row of channels is contiguous
        for (int64_t i = 0; i < nw; ++i) store(y + i * e.sx, r[i], nl == kLanes, lane_mask);
        continue;
      }
      __m256 t[8], u[8];
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      const __m256i pos_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nw)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      for (int64_t l = 0; l < nl; ++l) {
        const __m256 column = _mm256_permute2f128_ps(u[l % 4], u[l % 4 + 4], l < 4 ? 0x20 : 0x31);
        store(y + l * e.so, column, nw == 8, pos_mask);
      }
    }
  }
}

template <int NB>
void row_avx2(const Geometry& g, const uint64_t* act, const uint64_t* wblk, int64_t block_words, int64_t grp,
              int64_t oh, int32_t* acc, int32_t* taps) {
  const int64_t tap_words = g.WG * kLanes;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    __m256i s[2 * NB];
    for (int i = 0; i < 2 * NB; ++i) s[i] = _mm256_setzero_si256();
    int32_t n = 0;
    QUANTSWAP_FOR_EACH_TAP(g, oh, ow, tap, pos) {
      ++n;
      const uint64_t* a = act + (pos * g.G + grp) * g.WG;
      const uint64_t* w = wblk + tap * tap_words;
      for (int64_t j = 0; j < g.WG; ++j) {
        const __m256i x = _mm256_set1_epi64x(static_cast<long long>(a[j]));
        for (int b = 0; b < NB; ++b) {
          const __m256i* wj = reinterpret_cast<const __m256i*>(w + b * block_words + j * kLanes);
          s[2 * b] = _mm256_add_epi64(s[2 * b], popcount_avx2(_mm256_xor_si256(x, _mm256_loadu_si256(wj))));
          s[2 * b + 1] = _mm256_add_epi64(s[2 * b + 1], popcount_avx2(_mm256_xor_si256(x, _mm256_loadu_si256(wj + 1))));
        }
      }
    }
    const __m256i low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int b = 0; b < NB; ++b) {  // int64 lanes -> int32: the low halves of both vectors
      const __m256i lo = _mm256_permutevar8x32_epi32(s[2 * b], low_dwords);
      const __m256i hi = _mm256_permutevar8x32_epi32(s[2 * b + 1], low_dwords);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + (ow * NB + b) * kLanes), _mm256_permute2x128_si256(lo, hi, 0x20));
    }
    taps[ow] = n;
  }
}

#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vpopcntdq")

template <int NB>
inline void border_avx512(const Geometry& g, const uint64_t* act, const uint64_t* wblk, int64_t block_words,
                          int64_t grp, int64_t oh, int64_t ow, int32_t* acc, int32_t* taps) {
  const int64_t tap_words = g.WG * kLanes;
  __m512i s[NB];
  for (int b = 0; b < NB; ++b) s[b] = _mm512_setzero_si512();
  int32_t n = 0;
  QUANTSWAP_FOR_EACH_TAP(g, oh, ow, tap, pos) {
    ++n;
    const uint64_t* a = act + (pos * g.G + grp) * g.WG;
    const uint64_t* w = wblk + tap * tap_words;
    for (int64_t j = 0; j < g.WG; ++j) {
      const __m512i x = _mm512_set1_epi64(static_cast<long long>(a[j]));
      for (int b = 0; b < NB; ++b)
        s[b] = _mm512_add_epi64(
            s[b], _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_loadu_si512(w + b * block_words + j * kLanes))));
    }
  }
  for (int b = 0; b < NB; ++b)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + (ow * NB + b) * kLanes), _mm512_cvtepi64_epi32(s[b]));
  taps[ow] = n;
}

// P output positions whose taps all lie inside the input: no bounds checks. The (tap, word) pairs
// are one flat list (the weights are laid out in that order, 8 words per pair), each weight vector
// loaded once for all P positions.
template <int NB, int P>
inline void interior_avx512(const uint64_t* a0, int64_t step, const int64_t* offset, int64_t pairs,
                            const uint64_t* wblk, int64_t block_words, int32_t* acc) {
  __m512i s[P][NB];
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < NB; ++b) s[p][b] = _mm512_setzero_si512();
  for (int64_t e = 0; e < pairs; ++e) {
    __m512i x[P];
    for (int p = 0; p < P; ++p) x[p] = _mm512_set1_epi64(static_cast<long long>(a0[p * step + offset[e]]));
    for (int b = 0; b < NB; ++b) {
      const __m512i wv = _mm512_loadu_si512(wblk + b * block_words + e * kLanes);
      for (int p = 0; p < P; ++p) s[p][b] = _mm512_add_epi64(s[p][b], _mm512_popcnt_epi64(_mm512_xor_si512(x[p], wv)));
    }
  }
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < NB; ++b)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + (p * NB + b) * kLanes), _mm512_cvtepi64_epi32(s[p][b]));
}

template <int NB>
void row_avx512(const Geometry& g, const uint64_t* act, const uint64_t* wblk, int64_t block_words, int64_t grp,
                int64_t oh, int32_t* acc, int32_t* taps) {
  constexpr int64_t kMaxPairs = 1024;
  const int64_t ih0 = oh * g.sh - g.ph;
  const bool rows_inside = ih0 >= 0 && ih0 + (g.KH - 1) * g.dh < g.H;
  const int64_t lo = std::min(g.OW, (g.pw + g.sw - 1) / g.sw);
  const int64_t last = g.W - 1 - (g.KW - 1) * g.dw + g.pw;  // ow * sw may reach this (C++ division truncates)
  const int64_t hi = rows_inside && last >= 0 ? std::max(lo, std::min(g.OW, last / g.sw + 1)) : lo;
  const int64_t pos_words = g.G * g.WG, ntaps = g.KH * g.KW, pairs = ntaps * g.WG;
  int64_t offset[kMaxPairs];  // word offset of each (tap, word) from the position's first tap
  const bool fast = pairs <= kMaxPairs;
  for (int64_t kh = 0; fast && kh < g.KH; ++kh)
    for (int64_t kw = 0; kw < g.KW; ++kw)
      for (int64_t j = 0; j < g.WG; ++j)
        offset[(kh * g.KW + kw) * g.WG + j] = (kh * g.dh * g.W + kw * g.dw) * pos_words + j;
  int64_t ow = 0;
  for (; ow < lo; ++ow) border_avx512<NB>(g, act, wblk, block_words, grp, oh, ow, acc, taps);
  const int64_t step = g.sw * pos_words;
  auto first = [&](int64_t o) { return act + (ih0 * g.W + o * g.sw - g.pw) * pos_words + grp * g.WG; };
  for (; fast && ow + 4 <= hi; ow += 4)
    interior_avx512<NB, 4>(first(ow), step, offset, pairs, wblk, block_words, acc + ow * NB * kLanes);
  for (; fast && ow < hi; ++ow) interior_avx512<NB, 1>(first(ow), step, offset, pairs, wblk, block_words, acc + ow * NB * kLanes);
  for (int64_t o = lo; fast && o < ow; ++o) taps[o] = static_cast<int32_t>(ntaps);
  for (; ow < g.OW; ++ow) border_avx512<NB>(g, act, wblk, block_words, grp, oh, ow, acc, taps);
}

// Sign bits of one input row (see pack_signs) with AVX-512 compares: 16 floats give 16 bits at once.
// Channels contiguous (channels_last): 4 compares per word. Positions contiguous (NCHW): one compare
// per channel sets that channel's bit in the words of 16 positions.
void pack_row_avx512(const float* xr, int64_t sc, int64_t sw, int64_t C, int64_t W, int64_t cg, int64_t WG,
                     uint64_t* d) {
  const __m512 zero = _mm512_setzero_ps();
  const int64_t G = C / cg, words = G * WG;
  for (int64_t grp = 0; grp < G; ++grp)
    for (int64_t j = 0; j < WG; ++j) {
      const int64_t c0 = grp * cg + j * 64, width = std::min<int64_t>(64, cg - j * 64);
      if (sc == 1) {
        for (int64_t w = 0; w < W; ++w) {
          const float* px = xr + w * sw + c0;
          uint64_t word = 0;
          for (int64_t k = 0; k < width; k += 16) {
            const __mmask16 valid = width - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (width - k)) - 1);
            const __mmask16 neg = _mm512_mask_cmp_ps_mask(valid, _mm512_maskz_loadu_ps(valid, px + k), zero, _CMP_NGE_UQ);
            word |= static_cast<uint64_t>(neg) << k;
          }
          d[w * words + grp * WG + j] = word;
        }
      } else {  // sw == 1
        alignas(64) uint64_t tmp[16];
        for (int64_t w = 0; w < W; w += 16) {
          const __mmask16 valid = W - w >= 16 ? 0xffff : static_cast<__mmask16>((1u << (W - w)) - 1);
          __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
          for (int64_t k = 0; k < width; ++k) {
            const __m512 v = _mm512_maskz_loadu_ps(valid, xr + (c0 + k) * sc + w);
            const __mmask16 neg = _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_NGE_UQ);
            const __m512i bit = _mm512_set1_epi64(static_cast<long long>(1ull << k));
            lo = _mm512_mask_or_epi64(lo, static_cast<__mmask8>(neg), lo, bit);
            hi = _mm512_mask_or_epi64(hi, static_cast<__mmask8>(neg >> 8), hi, bit);
          }
          _mm512_store_si512(tmp, lo);
          _mm512_store_si512(tmp + 8, hi);
          for (int64_t i = 0; i < 16 && w + i < W; ++i) d[(w + i) * words + grp * WG + j] = tmp[i];
        }
      }
    }
}

#pragma GCC pop_options
#undef QUANTSWAP_FOR_EACH_TAP


using RowFn = void (*)(const Geometry&, const uint64_t*, const uint64_t*, int64_t, int64_t, int64_t, int32_t*,
                       int32_t*);
constexpr int kMaxBlocks = 4;  // blocks of 8 output channels per pass: 4 zmm accumulators

template <template <int> class Kernel>
RowFn pick(int64_t nb) {
  switch (nb) {
    case 4: return Kernel<4>::run;
    case 3: return Kernel<3>::run;
    case 2: return Kernel<2>::run;
    default: return Kernel<1>::run;
  }
}
template <int NB> struct Portable { static constexpr RowFn run = row_portable<NB>; };
template <int NB> struct Avx2 { static constexpr RowFn run = row_avx2<NB>; };
template <int NB> struct Avx512 { static constexpr RowFn run = row_avx512<NB>; };

RowFn row_kernel(int64_t isa, int64_t nb) {
  switch (isa) {
    case kAvx512: return pick<Avx512>(nb);
    case kAvx2: return pick<Avx2>(nb);
    default: return pick<Portable>(nb);
  }
}

// ---------------------------------------------------------------------------------------------------
// Packing sign(x): bit c % 64 of word c / 64 is 1 where x < 0 (or NaN, as quantswap's float sign).

inline uint64_t negative_bit(float v, int64_t bit) { return static_cast<uint64_t>(!(v >= 0.f)) << bit; }

// x float32 [N, C, H, W] with any strides -> words [N, H, W, G, WG].
at::Tensor pack_signs(const at::Tensor& x, int64_t groups) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t cg = C / groups, WG = (cg + 63) / 64;
  auto out = at::zeros({N, H, W, groups, WG}, x.options().dtype(at::kLong));
  const float* src = x.data_ptr<float>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const int64_t words = groups * WG;
  const bool vector = active_isa() == kAvx512;
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      const float* xr = src + n * sn + h * sh;
      uint64_t* d = dst + row * W * words;
      if (vector && (sc == 1 || sw == 1)) {
        pack_row_avx512(xr, sc, sw, C, W, cg, WG, d);
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
                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  const int64_t out_channels = alpha.numel();
  check_operands(x, weight, alpha, bias, out_channels);
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

  // One task: an output row of up to 4 blocks of 8 output channels, in one group of one image.
  at::parallel_for(0, N * G * OBB * g.OH, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(g.OW * kMaxBlocks * kLanes);
    std::vector<int32_t> taps(g.OW);
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
      isa == kPortable ? emit_portable(e) : emit_avx2(e);
    }
  });
  return out;
}

at::Tensor blinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                   const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "blinear takes a 2-D input [N, in_features], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 6 && weight.size(0) == 1 && weight.size(2) == 1 && weight.size(3) == 1,
              "blinear's weight is the layout of a 1x1, one-group convolution");
  if (x.size(0) == 0) return at::zeros({0, alpha.size(0)}, x.options());  // as F.linear: (0, out)
  // The batch as the width of a 1 x N image (each sample's features are its channels, contiguous):
  // the convolution's row kernel then reuses every weight vector for two samples at a time.
  const at::Tensor image = x.contiguous().t().unsqueeze(0).unsqueeze(2);  // [1, C, 1, N]
  const at::Tensor y = bconv2d(image, weight, alpha, bias, x.size(1), {1, 1}, {0, 0}, {1, 1});
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
