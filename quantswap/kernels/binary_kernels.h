// The torch-free core of quantswap's packed binary kernels (see binary.cpp, which adds the PyTorch ops):
// instruction-set dispatch, the row kernels (XOR + popcount of one output row against blocks of 8 output
// channels) and the output transform. x86-64 gets AVX2 and AVX-512 VPOPCNTDQ kernels, aarch64 a NEON one
// (vcntq_u8), every CPU the portable C++ one; `tests/arm/check_kernels.cpp` runs this file alone, built for
// aarch64 and run under qemu-user (`make test-arm`).
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define QUANTSWAP_X86 1
#include <immintrin.h>
#elif defined(__aarch64__)
#define QUANTSWAP_NEON 1
#include <arm_neon.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

namespace quantswap {
namespace {

enum Isa : int64_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };
constexpr int kLanes = 8;  // output channels per weight block
constexpr int kMaxBlocks = 4;  // blocks of 8 output channels per pass: 4 zmm accumulators
constexpr int kMaxLanes = kMaxBlocks * kLanes;

int64_t best_isa() {
#if QUANTSWAP_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return kAvx2;
  return kPortable;
#elif QUANTSWAP_NEON
  return kNeon;  // every aarch64 CPU has Advanced SIMD
#else
  return kPortable;
#endif
}

// Whether this CPU runs kernels of `isa`: the x86 levels include each other; NEON stands alone.
bool runs(int64_t isa, int64_t best) {
  if (isa == kPortable) return true;
  if (isa == kNeon || best == kNeon) return isa == best;
  return isa <= best;
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

// Sets the instruction set the kernels use (at most what the CPU has, else the best below it or portable;
// -1: the best it has) and returns it.
int64_t set_isa(int64_t isa) {
  const int64_t best = best_isa();
  const int64_t chosen = isa < 0 || (isa > best && best != kNeon) ? best : runs(isa, best) ? isa : kPortable;
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

#if QUANTSWAP_X86
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
#endif  // QUANTSWAP_X86

#if QUANTSWAP_NEON
// NEON: vcntq_u8 counts the bits of 16 bytes. Each weight block's 8 lanes are 4 vectors of 2 x 64 bits; one
// activation word is broadcast against them. The counts add up per byte (at most 8 per word, so 31 words fit
// in a byte) and are widened to the 64-bit lane sums every 31 words: 4 instructions per 128 products instead
// of 7 (XOR, count, add and the load; the three pairwise widening adds only at a flush).
constexpr int kNeonFlush = 31;

inline void flush_neon(uint8x16_t* bytes, uint64x2_t* sums, int n) {
  for (int i = 0; i < n; ++i) {
    sums[i] = vaddq_u64(sums[i], vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(bytes[i]))));
    bytes[i] = vdupq_n_u8(0);
  }
}

template <int NB>
void row_neon(const Geometry& g, const uint64_t* act, const uint64_t* wblk, int64_t block_words, int64_t grp,
              int64_t oh, int32_t* acc, int32_t* taps) {
  const int64_t tap_words = g.WG * kLanes;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    uint64x2_t s[4 * NB];
    uint8x16_t bytes[4 * NB];
    for (int i = 0; i < 4 * NB; ++i) {
      s[i] = vdupq_n_u64(0);
      bytes[i] = vdupq_n_u8(0);
    }
    int32_t n = 0, pending = 0;
    QUANTSWAP_FOR_EACH_TAP(g, oh, ow, tap, pos) {
      ++n;
      const uint64_t* a = act + (pos * g.G + grp) * g.WG;
      const uint64_t* w = wblk + tap * tap_words;
      for (int64_t j = 0; j < g.WG; ++j) {
        const uint64x2_t x = vdupq_n_u64(a[j]);
        for (int b = 0; b < NB; ++b) {
          const uint64_t* wj = w + b * block_words + j * kLanes;
          for (int q = 0; q < 4; ++q)
            bytes[4 * b + q] = vaddq_u8(bytes[4 * b + q], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x, vld1q_u64(wj + 2 * q)))));
        }
        if (++pending == kNeonFlush) {
          flush_neon(bytes, s, 4 * NB);
          pending = 0;
        }
      }
    }
    flush_neon(bytes, s, 4 * NB);
    for (int b = 0; b < NB; ++b)
      for (int q = 0; q < 4; ++q) {
        acc[(ow * NB + b) * kLanes + 2 * q] = static_cast<int32_t>(vgetq_lane_u64(s[4 * b + q], 0));
        acc[(ow * NB + b) * kLanes + 2 * q + 1] = static_cast<int32_t>(vgetq_lane_u64(s[4 * b + q], 1));
      }
    taps[ow] = n;
  }
}
#endif

// ---------------------------------------------------------------------------------------------------
// Binary sets that are not +-1 (AdaBin, see quantswap/kernels/affine.py): besides D = K - 2 * acc, the output
// needs per position S_x = K - 2 * (the activations' one bits over the valid taps) and per lane S_w = K - 2 *
// (the weights' one bits over the same taps): y = (D * c0 + S_x * c1) + R, R = (S_w * c2 + K * c3) + bias.
// R is the same at every position whose window lies inside the input (computed once per call).

#if QUANTSWAP_X86  // a copy per instruction set, picked at load time (baseline x86-64 has no popcount instruction)
#define QUANTSWAP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define QUANTSWAP_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define QUANTSWAP_CLONES
#define QUANTSWAP_POPCNT_CLONES
#endif

// ones[i] = the one bits of words [i * per, (i + 1) * per): a position's words of one group.
QUANTSWAP_POPCNT_CLONES void count_ones(const uint64_t* __restrict words, int64_t n, int64_t per,
                                        int32_t* __restrict ones) {
  for (int64_t i = 0; i < n; ++i) {
    int32_t sum = 0;
    for (int64_t j = 0; j < per; ++j) sum += static_cast<int32_t>(__builtin_popcountll(words[i * per + j]));
    ones[i] = sum;
  }
}

// One output channel's weight one bits per tap: `lane` points at its first word in its block [tap, WG, 8].
QUANTSWAP_POPCNT_CLONES void lane_tap_ones(const uint64_t* __restrict lane, int64_t ntaps, int64_t WG,
                                           int32_t* __restrict ones) {
  for (int64_t tap = 0; tap < ntaps; ++tap) {
    int32_t sum = 0;
    for (int64_t j = 0; j < WG; ++j) sum += static_cast<int32_t>(__builtin_popcountll(lane[(tap * WG + j) * kLanes]));
    ones[tap] = sum;
  }
}

// What an offset transform needs besides the popcount sums, for one call: each input position's one bits, each
// output channel's weight one bits per tap and R of a window inside the input, and S_x's activation one bits at
// every output position. The caller fills them, in parallel: count_positions, count_weights, then count_row.
class OffsetTerms {
 public:
  // c: the coefficients [3, O]; bias: [O] or nullptr; act: the packed input [N, H, W, G, WG].
  OffsetTerms(const Geometry& g, int64_t N, const uint64_t* act, const uint64_t* wts, int64_t out_channels,
              int64_t cg, const float* c, const float* bias)
      : g_(g), O_(out_channels), cg_(cg), ntaps_(g.KH * g.KW), act_(act), wts_(wts), c_(c), bias_(bias),
        position_ones_(N * g.H * g.W * g.G), wones_(out_channels * ntaps_), interior_(out_channels),
        xones_(N * g.G * g.OH * g.OW) {}

  int64_t positions() const { return static_cast<int64_t>(position_ones_.size()); }
  int64_t rows() const { return static_cast<int64_t>(xones_.size()) / std::max<int64_t>(g_.OW, 1); }

  // Input positions (x groups) [begin, end).
  void count_positions(int64_t begin, int64_t end) {
    count_ones(act_ + begin * g_.WG, end - begin, g_.WG, position_ones_.data() + begin);
  }

  // Output channels [begin, end): weights [G, OB, tap, WG, 8].
  void count_weights(int64_t begin, int64_t end) {
    const int64_t og = O_ / g_.G, OB = (og + kLanes - 1) / kLanes;
    for (int64_t o = begin; o < end; ++o) {
      const int64_t grp = o / og, ob = (o % og) / kLanes, lane = (o % og) % kLanes;
      int32_t* ones = wones_.data() + o * ntaps_;
      lane_tap_ones(wts_ + (grp * OB + ob) * ntaps_ * g_.WG * kLanes + lane, ntaps_, g_.WG, ones);
      int32_t total = 0;
      for (int64_t tap = 0; tap < ntaps_; ++tap) total += ones[tap];
      interior_[o] = rest(o, static_cast<int32_t>(ntaps_ * cg_), total);
    }
  }

  // S_x's one bits at the positions of output row `row` = (n * G + grp) * OH + oh (one task of a parallel loop).
  void count_row(int64_t row) {
    const int64_t oh = row % g_.OH, grp = (row / g_.OH) % g_.G, n = row / (g_.OH * g_.G);
    const int32_t* ones = position_ones_.data() + n * g_.H * g_.W * g_.G + grp;
    for (int64_t ow = 0; ow < g_.OW; ++ow) {
      int32_t sum = 0;
      QUANTSWAP_FOR_EACH_TAP(g_, oh, ow, tap, pos) sum += ones[pos * g_.G];
      xones_[row * g_.OW + ow] = sum;
    }
  }
  // The output transform of one row task (see Emit) for output channels from o0; rest: kMaxLanes * OW floats.
  void emit(const Emit& e, int64_t n, int64_t grp, int64_t oh, int64_t o0, float* rest, const float** rows) const {
    const int64_t ih0 = oh * g_.sh - g_.ph;
    const bool rows_inside = ih0 >= 0 && ih0 + (g_.KH - 1) * g_.dh < g_.H;
    for (int64_t ow = 0; ow < g_.OW; ++ow) {
      const int64_t iw0 = ow * g_.sw - g_.pw;
      rows[ow] = interior_.data() + o0;
      if (!(rows_inside && iw0 >= 0 && iw0 + (g_.KW - 1) * g_.dw < g_.W)) rows[ow] = border(e.lanes, oh, ow, o0, rest);
    }
    emit_offsets(e, c_ + o0, xones_.data() + ((n * g_.G + grp) * g_.OH + oh) * g_.OW, rows);
  }

 private:
  // R = (S_w * c2 + K * c3) + bias for output channel o over K valid taps x channels with `weight_ones` one bits.
  float rest(int64_t o, int32_t k, int32_t weight_ones) const {
    const float r = static_cast<float>(k - 2 * weight_ones) * c_[O_ + o] + static_cast<float>(k) * c_[2 * O_ + o];
    return bias_ != nullptr ? r + bias_[o] : r;
  }

  const float* border(int64_t lanes, int64_t oh, int64_t ow, int64_t o0, float* rest_row) const {
    int32_t ones[kMaxLanes] = {}, taps = 0;
    QUANTSWAP_FOR_EACH_TAP(g_, oh, ow, tap, pos) {
      ++taps;
      for (int64_t l = 0; l < lanes; ++l) ones[l] += wones_[(o0 + l) * ntaps_ + tap];
    }
    float* r = rest_row + ow * kMaxLanes;
    for (int64_t l = 0; l < lanes; ++l) r[l] = rest(o0 + l, static_cast<int32_t>(taps * cg_), ones[l]);
    return r;
  }

  // y = (D * c0 + S_x * c1) + R at every position of the row.
  static QUANTSWAP_CLONES void emit_offsets(const Emit& e, const float* c1, const int32_t* xones,
                                            const float* const* rows) {
    for (int64_t ow = 0; ow < e.OW; ++ow) {
      const int32_t k = static_cast<int32_t>(e.taps[ow] * e.cg);
      const float sx = static_cast<float>(k - 2 * xones[ow]);
      const int32_t* __restrict acc = e.acc + ow * e.nb * kLanes;
      const float* __restrict r = rows[ow];
      float* __restrict y = e.y + ow * e.sx;
      if (e.so == 1) {  // channels_last: the lanes are contiguous
        for (int64_t l = 0; l < e.lanes; ++l) y[l] = (static_cast<float>(k - 2 * acc[l]) * e.alpha[l] + sx * c1[l]) + r[l];
      } else {
        for (int64_t l = 0; l < e.lanes; ++l)
          y[l * e.so] = (static_cast<float>(k - 2 * acc[l]) * e.alpha[l] + sx * c1[l]) + r[l];
      }
    }
  }

  Geometry g_;
  int64_t O_, cg_, ntaps_;
  const uint64_t* act_;
  const uint64_t* wts_;
  const float* c_;
  const float* bias_;
  std::vector<int32_t> position_ones_, wones_;
  std::vector<float> interior_;
  std::vector<int32_t> xones_;
};

#undef QUANTSWAP_FOR_EACH_TAP


using RowFn = void (*)(const Geometry&, const uint64_t*, const uint64_t*, int64_t, int64_t, int64_t, int32_t*,
                       int32_t*);
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
#if QUANTSWAP_X86
template <int NB> struct Avx2 { static constexpr RowFn run = row_avx2<NB>; };
template <int NB> struct Avx512 { static constexpr RowFn run = row_avx512<NB>; };
#elif QUANTSWAP_NEON
template <int NB> struct Neon { static constexpr RowFn run = row_neon<NB>; };
#endif

RowFn row_kernel(int64_t isa, int64_t nb) {
  switch (isa) {
#if QUANTSWAP_X86
    case kAvx512: return pick<Avx512>(nb);
    case kAvx2: return pick<Avx2>(nb);
#elif QUANTSWAP_NEON
    case kNeon: return pick<Neon>(nb);
#endif
    default: return pick<Portable>(nb);
  }
}

// The output transform of a row with the widest kernel this CPU has (the x86 ones need AVX2).
void emit_row(int64_t isa, const Emit& e) {
#if QUANTSWAP_X86
  if (isa == kAvx2 || isa == kAvx512) return emit_avx2(e);
#endif
  (void)isa;
  emit_portable(e);
}

// ---------------------------------------------------------------------------------------------------
// Packing sign(x): bit c % 64 of word c / 64 is 1 where x < 0 (or NaN, as quantswap's float sign).

inline uint64_t negative_bit(float v, int64_t bit) { return static_cast<uint64_t>(!(v >= 0.f)) << bit; }


}  // namespace
}  // namespace quantswap
