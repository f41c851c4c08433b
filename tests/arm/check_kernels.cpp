// The packed kernels' row functions against a direct count, on whatever CPU this is built for: every
// instruction set the CPU runs (NEON on aarch64; AVX2 and AVX-512 on x86-64) and the portable C++ one,
// over random geometries (sizes, groups, 1..5 words per position: up to 45 per window, past NEON's byte
// accumulators' flush at 31; strides, padding, dilation, 1..4
// blocks of output channels); then the offset transform of binary sets that are not +-1 (AdaBin) against
// its formula evaluated from direct counts. `make test-arm` builds it for aarch64 and runs it under
// qemu-user, which checks correctness there, not speed. Exit status 0 when every accumulator, tap count
// and output is identical.
#include <cstdio>
#include <random>

#include "../../quantswap/kernels/binary_kernels.h"

using namespace quantswap;

namespace {

// acc[(ow * NB + b) * 8 + lane] and taps[ow] of output row `oh`, counted one tap and one bit at a time.
void direct(const Geometry& g, const std::vector<uint64_t>& act, const std::vector<uint64_t>& w, int64_t block_words,
            int64_t grp, int64_t oh, int nb, std::vector<int32_t>& acc, std::vector<int32_t>& taps) {
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    int32_t n = 0;
    std::vector<int64_t> sum(nb * kLanes, 0);
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
        if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
        ++n;
        for (int b = 0; b < nb; ++b)
          for (int64_t j = 0; j < g.WG; ++j)
            for (int l = 0; l < kLanes; ++l) {
              const uint64_t x = act[((ih * g.W + iw) * g.G + grp) * g.WG + j];
              const uint64_t y = w[b * block_words + ((kh * g.KW + kw) * g.WG + j) * kLanes + l];
              for (int bit = 0; bit < 64; ++bit) sum[b * kLanes + l] += ((x ^ y) >> bit) & 1;
            }
      }
    for (int i = 0; i < nb * kLanes; ++i) acc[ow * nb * kLanes + i] = static_cast<int32_t>(sum[i]);
    taps[ow] = n;
  }
}

int64_t ones(uint64_t v) {
  int64_t n = 0;
  for (int bit = 0; bit < 64; ++bit) n += (v >> bit) & 1;
  return n;
}

// OffsetTerms' outputs for row `oh` of group `grp` (lanes o0..o0 + lanes of a layer with G groups of `og` output
// channels, whole words of channels) against y = (D * c0 + S_x * c1) + ((S_w * c2 + K * c3) + bias) from direct
// counts, both in float32 in that order.
bool offsets_agree(const Geometry& g, const std::vector<uint64_t>& act, const std::vector<uint64_t>& w, int nb,
                   int64_t og, int64_t grp, int64_t oh, const std::vector<int32_t>& acc, const std::vector<int32_t>& taps,
                   std::mt19937_64& rng) {
  const int64_t O = g.G * og, cg = g.WG * 64, o0 = grp * og, lanes = og, ntaps = g.KH * g.KW;
  const int64_t block_words = ntaps * g.WG * kLanes;
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> c(4 * O), y(lanes * g.OW, 0.0f), rest(g.OW * kMaxLanes);
  for (auto& v : c) v = uniform(rng);
  const float *alpha = c.data() + 3 * O, *bias = c.data() + 3 * O;  // any numbers do: the bias reuses alpha's
  OffsetTerms terms(g, 1, act.data(), w.data(), O, cg, c.data(), bias);
  terms.count_positions(0, terms.positions());
  terms.count_weights(0, O);
  for (int64_t row = 0; row < terms.rows(); ++row) terms.count_row(row);
  std::vector<const float*> rows(g.OW);
  const Emit e{acc.data(), taps.data(), g.OW, nb, cg, lanes, alpha + o0, bias + o0, y.data(), g.OW, 1};
  terms.emit(e, 0, grp, oh, o0, rest.data(), rows.data());
  for (int64_t ow = 0; ow < g.OW; ++ow)
    for (int64_t l = 0; l < lanes; ++l) {
      int64_t x_ones = 0, w_ones = 0;
      for (int64_t kh = 0; kh < g.KH; ++kh)
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
          if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
          for (int64_t j = 0; j < g.WG; ++j) {
            x_ones += ones(act[((ih * g.W + iw) * g.G + grp) * g.WG + j]);
            w_ones += ones(w[(grp * nb + l / kLanes) * block_words + ((kh * g.KW + kw) * g.WG + j) * kLanes + l % kLanes]);
          }
        }
      const int32_t k = static_cast<int32_t>(taps[ow] * cg);
      const float d = static_cast<float>(k - 2 * acc[ow * nb * kLanes + l]) * alpha[o0 + l];
      const float sx = static_cast<float>(k - 2 * x_ones) * c[o0 + l];
      const float sw = static_cast<float>(k - 2 * w_ones) * c[O + o0 + l] + static_cast<float>(k) * c[2 * O + o0 + l];
      if (y[l * g.OW + ow] != (d + sx) + (sw + bias[o0 + l])) return false;
    }
  return true;
}

}  // namespace

int main() {
  std::mt19937_64 rng(0);
  auto pick = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % (hi - lo + 1)); };
  const int64_t best = best_isa();
  std::vector<int64_t> isas;
  for (int64_t isa : {kPortable, kAvx2, kAvx512, kNeon})
    if (runs(isa, best)) isas.push_back(isa);
  int cases = 0, offset_cases = 0, failures = 0;
  for (int trial = 0; trial < 300; ++trial) {
    Geometry g{pick(1, 9), pick(1, 9), pick(1, 2), pick(1, 5), pick(1, 3), pick(1, 3), 0, 0, pick(1, 2), pick(1, 2),
               pick(0, 2), pick(0, 2), pick(1, 2), pick(1, 2)};
    const int64_t span_h = g.dh * (g.KH - 1) + 1, span_w = g.dw * (g.KW - 1) + 1;
    if (g.H + 2 * g.ph < span_h || g.W + 2 * g.pw < span_w) continue;
    g.OH = (g.H + 2 * g.ph - span_h) / g.sh + 1;
    g.OW = (g.W + 2 * g.pw - span_w) / g.sw + 1;
    const int nb = static_cast<int>(pick(1, kMaxBlocks));
    const int64_t block_words = g.KH * g.KW * g.WG * kLanes, grp = pick(0, g.G - 1), oh = pick(0, g.OH - 1);
    std::vector<uint64_t> act(g.H * g.W * g.G * g.WG), all(g.G * nb * block_words);  // every group's weights
    const bool worst = trial % 8 == 0;  // every bit differs: the most any count can reach (byte accumulators)
    for (auto& v : act) v = worst ? ~0ull : rng();
    for (auto& v : all) v = worst ? 0ull : rng();
    const std::vector<uint64_t> w(all.begin() + grp * nb * block_words, all.begin() + (grp + 1) * nb * block_words);
    std::vector<int32_t> want(g.OW * nb * kLanes), want_taps(g.OW);
    direct(g, act, w, block_words, grp, oh, nb, want, want_taps);
    offset_cases += 1;
    if (!offsets_agree(g, act, all, nb, nb * kLanes - pick(0, kLanes - 1), grp, oh, want, want_taps, rng)) {
      ++failures;
      std::printf("the offset transform differs from its formula: H=%lld W=%lld G=%lld WG=%lld blocks %d\n",
                  (long long)g.H, (long long)g.W, (long long)g.G, (long long)g.WG, nb);
    }
    for (int64_t isa : isas) {
      std::vector<int32_t> got(want.size(), -1), got_taps(g.OW, -1);
      row_kernel(isa, nb)(g, act.data(), w.data(), block_words, grp, oh, got.data(), got_taps.data());
      ++cases;
      if (got != want || got_taps != want_taps) {
        ++failures;
        std::printf("isa %lld differs: H=%lld W=%lld G=%lld WG=%lld K=%lldx%lld stride %lld,%lld pad %lld,%lld "
                    "dilation %lld,%lld blocks %d\n", (long long)isa, (long long)g.H, (long long)g.W, (long long)g.G,
                    (long long)g.WG, (long long)g.KH, (long long)g.KW, (long long)g.sh, (long long)g.sw,
                    (long long)g.ph, (long long)g.pw, (long long)g.dh, (long long)g.dw, nb);
      }
    }
  }
  std::printf("%d row-kernel cases over %zu instruction sets (best: %lld) and %d offset transforms: %d differ from "
              "the direct count\n", cases, isas.size(), (long long)best, offset_cases, failures);
  return failures == 0 ? 0 : 1;
}
