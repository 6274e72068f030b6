// Performer (FAVOR+): the linear form equals the quadratic form of the same
// features; the estimate approaches softmax attention as M grows; orthogonal
// features beat i.i.d. ones; the ORF construction; the redraw schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "helpers.h"
#include "longseq/kernels/random_features.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace performer_test {

constexpr int64_t kC = 16, kH = 2, kD = kC / kH;

// phi(Q~) phi(K~)^T written out without stabilizers, masked and row-normalized, times V.
torch::Tensor quadratic(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad, bool relu) {
  const int64_t B = x.size(0), T = x.size(1);
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto W = m->named_buffers()["projection"];
  const double M = W.size(0);
  auto feat = [&](const torch::Tensor& h) {
    if (relu) return torch::relu(torch::matmul(h, W.t()) / std::sqrt(M)) + 1e-3;
    auto hs = h / std::pow(double(kD), 0.25);
    return torch::exp(torch::matmul(hs, W.t()) - 0.5 * hs.pow(2).sum(-1, true)) / std::sqrt(M);
  };
  auto a = torch::matmul(feat(to_heads(qkv[0], kH)), feat(to_heads(qkv[1], kH)).transpose(-1, -2));
  if (causal) a = torch::tril(a);
  if (pad.defined()) a = a * (~pad).view({B, 1, 1, T}).to(a.dtype());
  auto y = torch::matmul(a, to_heads(qkv[2], kH)) / a.sum(-1, true);
  return torch::linear(from_heads(y), param(*m, "out.weight"), param(*m, "out.bias"));
}

// Exact softmax attention with the mixer's own projections.
torch::Tensor softmax_attention(const Mixer& m, const torch::Tensor& x) {
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto s = torch::matmul(to_heads(qkv[0], kH), to_heads(qkv[1], kH).transpose(-1, -2)) / std::sqrt(double(kD));
  auto y = torch::matmul(torch::softmax(s, -1), to_heads(qkv[2], kH));
  return torch::linear(from_heads(y), param(*m, "out.weight"), param(*m, "out.bias"));
}

TEST(Performer, LinearFormEqualsQuadraticFormOfTheSameFeatures) {
  auto x = torch::randn({2, 21, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 21, 1, 5);
  for (const char* kernel : {"softmax", "relu"})
    for (int64_t chunk : {1, 6, 128})
      for (bool causal : {false, true}) {
        auto m = build_mixer("performer", {{"features", 24}, {"chunk", chunk}, {"kernel", kernel}}, kC, kH);
        auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, causal, pad); },
                                             [&] { return quadratic(m, x, causal, pad, kernel[0] == 'r'); },
                                             input_and_parameters(m, x));
        EXPECT_LT(diff, 1e-8) << kernel << " chunk=" << chunk << " causal=" << causal;
      }
}

// Mean relative error of the mixer's output against exact softmax attention over `draws` seeds.
double mean_error(int64_t M, bool orthogonal, int draws) {
  double total = 0;
  for (int s = 0; s < draws; ++s) {
    auto m = build_mixer("performer", {{"features", M}, {"orthogonal", orthogonal}, {"seed", s}}, kC, kH, 5);
    torch::manual_seed(99);
    auto x = torch::randn({1, 32, kC}, torch::kDouble) * 0.5;
    auto exact = softmax_attention(m, x);
    total += ((run_mixer(m, x, false) - exact).norm() / exact.norm()).item<double>();
  }
  return total / draws;
}

TEST(Performer, ErrorAgainstSoftmaxShrinksAsFeaturesGrow) {
  const double e16 = mean_error(16, true, 8), e128 = mean_error(128, true, 8), e1024 = mean_error(1024, true, 8);
  EXPECT_LT(e128, e16);
  EXPECT_LT(e1024, e128);
  EXPECT_LT(e1024, 0.02) << "M = 1024 should be within 2% of exact softmax attention at these input scales";
}

TEST(Performer, OrthogonalFeaturesHaveLowerMeanErrorThanIid) {
  const double orth = mean_error(kD, true, 40), iid = mean_error(kD, false, 40);
  EXPECT_LT(orth, iid) << "orthogonal " << orth << " vs i.i.d. " << iid;
}

TEST(Performer, OrthogonalBlocksAndRowNorms) {
  auto gen = at::detail::createCPUGenerator(3);
  auto W = gaussian_projection(20, 8, true, false, gen).to(torch::kDouble);  // blocks of 8, 8, 4 rows
  for (int64_t b0 : {0, 8, 16}) {
    auto blk = W.narrow(0, b0, std::min<int64_t>(8, 20 - b0));
    auto gram = torch::matmul(blk, blk.t());
    EXPECT_TRUE(torch::allclose(gram, torch::diag(torch::diagonal(gram)), 1e-4, 1e-4)) << "block at " << b0;
  }
  auto fixed = gaussian_projection(20, 8, true, true, gen).to(torch::kDouble);
  EXPECT_TRUE(torch::allclose(fixed.norm(2, 1), torch::full({20}, std::sqrt(8.0), torch::kDouble), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(W.norm(2, 1), torch::full({20}, std::sqrt(8.0), torch::kDouble), 1e-2, 1e-2))
      << "chi(D) norms should vary";
}

// Projections set to the identity (no bias): per head q = k = v = x, so the test controls every exponent.
Mixer identity_performer(Json opts, torch::ScalarType dtype) {
  opts["bias"] = false;
  auto m = build_mixer("performer", opts, kC, kH);
  torch::NoGradGuard ng;
  auto eye = torch::eye(kC, torch::kDouble);
  param(*m, "qkv.weight").copy_(torch::cat({eye, eye, eye}, 0));
  param(*m, "out.weight").copy_(eye);
  m->to(dtype);
  return m;
}

// Rows of x [B, T, C] whose head slices have norm r * D^(1/4), so |x~| = r and every FAVOR+ exponent is
// w^T x~ - r^2/2 (a common -r^2/2 that only a stabilizer removes).
torch::Tensor rows_of_norm(int64_t B, int64_t T, double r) {
  auto x = torch::randn({B, T, kH, kD}, torch::kDouble);
  return (x / x.norm(2, -1, true) * r * std::pow(double(kD), 0.25)).reshape({B, T, kC});
}

// The same estimator with no rescaling at all, in float64 log space: log A_ij = logsumexp_l(eq_il + ek_jl),
// masked (causal, padding), y = softmax_j(log A) V. Exact at any scale.
torch::Tensor log_space_reference(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad) {
  const int64_t B = x.size(0), T = x.size(1);
  auto W = m->named_buffers()["projection"].to(torch::kDouble);
  auto h = to_heads(x.to(torch::kDouble), kH) / std::pow(double(kD), 0.25);  // identity projections: q = k = v = x
  auto e = torch::matmul(h, W.t()) - 0.5 * h.pow(2).sum(-1, true);            // [B, H, T, M]
  auto logA = torch::logsumexp(e.unsqueeze(3) + e.unsqueeze(2), -1);          // [B, H, T, T]
  auto allowed = torch::ones({B, 1, T, T}, torch::kBool);
  if (causal) allowed = allowed & torch::tril(torch::ones({T, T}, torch::kBool));
  if (pad.defined()) allowed = allowed & (~pad).view({B, 1, 1, T});
  auto p = torch::softmax(logA.masked_fill(~allowed, -std::numeric_limits<double>::infinity()), -1);
  return from_heads(torch::matmul(p, to_heads(x.to(torch::kDouble), kH)));
}

// Where exp(exponent) over- or underflows, only the stabilizers keep the output: without them every feature
// product is 0 (or inf) and the output 0 (or NaN), far from the exact log-space value.
TEST(Performer, StabilizersKeepTheEstimateExactWhereExpUnderflows) {
  struct Case {
    torch::ScalarType dtype;
    double r, tol;  // exponents about -r^2/2: below exp's range in the dtype
  };
  for (auto c : {Case{torch::kFloat, 14, 1e-4}, Case{torch::kDouble, 40, 1e-9}})
    for (bool causal : {false, true}) {
      auto m = identity_performer({{"features", 16}, {"chunk", 4}}, c.dtype);
      auto x = rows_of_norm(2, 11, c.r);
      auto pad = right_padding(2, 11, 1, 3);
      auto y = run_mixer(m, x.to(c.dtype), causal, pad).to(torch::kDouble);
      auto expect = log_space_reference(m, x, causal, pad);
      auto keep = (~pad).unsqueeze(-1).expand_as(y);
      const double err = (y - expect).masked_select(keep).abs().max().item<double>();
      EXPECT_LT(err, c.tol * expect.abs().max().item<double>()) << "r=" << c.r << " causal=" << causal;
    }
}

// A later key whose exponents sit far above the earlier ones must not move earlier causal outputs (a
// denominator guard that does not cancel with the key stabilizer would), and streaming must agree.
TEST(Performer, ALaterKeyFarAboveLeavesEarlierCausalOutputsAndStreamingAlone) {
  // chunk 2: the large key shares a chunk with an earlier query, whose sum of the earlier chunks must not be
  // taken as (all chunks) - (its own chunk), which cancels.
  auto m = identity_performer({{"features", 16}, {"chunk", 2}}, torch::kDouble);
  const int64_t T = 10;
  auto x = rows_of_norm(1, T, 12);                   // exponents about -72
  x.narrow(1, T - 1, 1).copy_(rows_of_norm(1, 1, 0.5));  // the last key's about 0: 40 or more above
  auto whole = run_mixer(m, x, true);
  auto prefix = run_mixer(m, x.narrow(1, 0, T - 1), true);
  EXPECT_TRUE(torch::allclose(whole.narrow(1, 0, T - 1), prefix, 1e-9, 1e-12))
      << "max diff " << (whole.narrow(1, 0, T - 1) - prefix).abs().max().item<double>();
  auto expect = log_space_reference(m, x, true, {});
  EXPECT_TRUE(torch::allclose(whole, expect, 1e-8, 1e-10));
  auto state = m->initial_state(1);
  std::vector<torch::Tensor> parts;
  for (int64_t at : {0, 4, 9}) {
    const int64_t len = at == 0 ? 4 : at == 4 ? 5 : 1;
    parts.push_back(run_mixer(m, x.narrow(1, at, len), true, {}, state.get()));
  }
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-9, 1e-12));
}

// Streaming a batch whose chunks hold padding, one of them only padding: the real outputs equal the whole
// call's. Keys with very negative exponents show a running stabilizer that a padding-only chunk resets.
TEST(Performer, StreamingWithPaddingOnlyChunksEqualsWhole) {
  for (const char* kernel : {"softmax", "relu"}) {
    auto m = identity_performer({{"features", 16}, {"chunk", 2}, {"kernel", kernel}}, torch::kDouble);
    const int64_t T = 12;
    auto x = rows_of_norm(2, T, 35);  // exponents about -600: exp(e - 0) underflows in float64
    auto pad = torch::zeros({2, T}, torch::kBool);
    pad[0].narrow(0, 0, 5).fill_(true);   // left padding: the first chunk holds only padding
    pad[1].narrow(0, 4, 3).fill_(true);   // padding in the middle: the second chunk holds only padding
    pad[1].narrow(0, 10, 2).fill_(true);  // and right padding
    auto whole = run_mixer(m, x, true, pad);
    auto streamed = longseq_test::stream_in_chunks(m, x, pad, {4, 3, 1, 2, 2});
    auto keep = (~pad).unsqueeze(-1).expand_as(whole);
    EXPECT_TRUE(torch::allclose(streamed.masked_select(keep), whole.masked_select(keep), 1e-9, 1e-12))
        << kernel << ": max diff " << (streamed - whole).masked_select(keep).abs().max().item<double>();
    EXPECT_TRUE(torch::isfinite(streamed).all().item<bool>()) << kernel;
    EXPECT_GT(whole.masked_select(keep).abs().min().item<double>(), 0) << kernel << ": real outputs vanished";
  }
}

// The real tokens' outputs do not depend on how much padding the batch carries, left or right.
TEST(Performer, RealOutputsDoNotDependOnPaddingLength) {
  auto m = build_mixer("performer", {{"features", 8}, {"chunk", 3}}, kC, kH);
  const int64_t n = 9;
  auto real = torch::randn({1, n, kC}, torch::kDouble);
  longseq_test::expect_padding_length_invariance(m, real);
}

TEST(Performer, RedrawsOnItsTrainingScheduleOnly) {
  auto m = build_mixer("performer", {{"features", 8}, {"redraw", 3}}, kC, kH);
  auto W0 = m->named_buffers()["projection"].clone();
  auto x = torch::randn({1, 4, kC}, torch::kDouble);
  for (int i = 0; i < 5; ++i) run_mixer(m, x, false);  // eval: never
  EXPECT_TRUE(torch::equal(m->named_buffers()["projection"], W0));
  m->train();
  run_mixer(m, x, false);
  run_mixer(m, x, false);
  EXPECT_TRUE(torch::equal(m->named_buffers()["projection"], W0)) << "redrew before the third training forward";
  run_mixer(m, x, false);
  auto W1 = m->named_buffers()["projection"].clone();
  EXPECT_FALSE(torch::equal(W1, W0)) << "no redraw at the third training forward";
  auto again = build_mixer("performer", {{"features", 8}, {"redraw", 3}}, kC, kH);
  again->train();
  for (int i = 0; i < 3; ++i) run_mixer(again, x, false);
  EXPECT_TRUE(torch::equal(again->named_buffers()["projection"], W1)) << "draws must be reproducible";
  auto never = build_mixer("performer", {{"features", 8}, {"redraw", 0}}, kC, kH);
  never->train();
  auto N0 = never->named_buffers()["projection"].clone();
  for (int i = 0; i < 4; ++i) run_mixer(never, x, false);
  EXPECT_TRUE(torch::equal(never->named_buffers()["projection"], N0));
}

}  // namespace performer_test
