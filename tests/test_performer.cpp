// Performer (FAVOR+): the linear form equals the quadratic form of the same
// features; the estimate approaches softmax attention as M grows; orthogonal
// features beat i.i.d. ones; the ORF construction; the redraw schedule.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "longseq/kernels/random_features.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace {

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
  auto y = torch::matmul(a, to_heads(qkv[2], kH)) / (a.sum(-1, true) + 1e-12);
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

TEST(Performer, PositiveFeaturesKeepDenominatorsPositiveAtLargeNorms) {
  auto m = build_mixer("performer", {{"features", 32}}, kC, kH);
  auto x = torch::randn({1, 40, kC}, torch::kDouble) * 30;  // exponents far beyond exp's range without stabilizers
  for (bool causal : {false, true}) EXPECT_TRUE(torch::isfinite(run_mixer(m, x, causal)).all().item<bool>());
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

}  // namespace
