// Transformer-MGK: the fused augmented-head computation equals the mixture of
// Gaussian keys written in log space (full squared distances), causal and
// not, with padding and gradients; K = 1 is softmax with a key-norm bias; the
// linear variant equals its quadratic form and streams.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace mgk_test {

constexpr int64_t kC = 16, kH = 2, kD = kC / kH;

struct Projected {
  torch::Tensor q, k, v;  // [B, H, T, D], [B, H, T, K, D], [B, H, T, D]
};

Projected project(const Mixer& m, const torch::Tensor& x, int64_t K) {
  const int64_t B = x.size(0), T = x.size(1);
  auto lin = [&](const std::string& n) { return torch::linear(x, param(*m, n + ".weight"), param(*m, n + ".bias")); };
  return {to_heads(lin("q"), kH), lin("k").view({B, T, K, kH, kD}).permute({0, 3, 1, 2, 4}), to_heads(lin("v"), kH)};
}

// The priors, learned (a parameter) or fixed (a buffer).
torch::Tensor prior(const Mixer& m) {
  auto params = m->named_parameters();
  auto* p = params.find("prior");
  return p ? *p : m->named_buffers()["prior"];
}

torch::Tensor finish(const Mixer& m, const torch::Tensor& y) {
  return torch::linear(from_heads(y), param(*m, "out.weight"), param(*m, "out.bias"));
}

// log s_ij = logsumexp_r(log pi_r - |q_i - k_jr|^2 / (2 sigma^2)); a = softmax_j over allowed j.
torch::Tensor mixture_reference(const Mixer& m, const torch::Tensor& x, int64_t K, double var, bool causal,
                                const torch::Tensor& pad) {
  const int64_t B = x.size(0), T = x.size(1);
  auto p = project(m, x, K);
  auto diff = p.q.unsqueeze(3).unsqueeze(4) - p.k.unsqueeze(2);  // [B, H, T, T, K, D]
  auto logpi = torch::log(prior(m).clamp(1e-6, 1.0)).view({1, kH, 1, 1, K});
  auto logs = torch::logsumexp(logpi - diff.pow(2).sum(-1) / (2 * var), -1);  // [B, H, T, T]
  if (causal) logs = logs.masked_fill(torch::ones({T, T}, torch::kBool).triu(1), -INFINITY);
  if (pad.defined()) logs = logs.masked_fill(pad.view({B, 1, 1, T}), -INFINITY);
  return finish(m, torch::matmul(torch::softmax(logs, -1), p.v));
}

TEST(Mgk, FusedFormEqualsTheGaussianMixtureInLogSpace) {
  auto x = torch::randn({2, 11, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 11, 1, 3);
  for (int64_t K : {1, 2, 3})
    for (bool causal : {false, true}) {
      auto m = build_mixer("mgk", {{"keys", K}, {"variance", 2.5}}, kC, kH);
      {
        torch::NoGradGuard ng;
        param(*m, "prior").uniform_(0.1, 0.9);
      }
      auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, causal, pad); },
                                           [&] { return mixture_reference(m, x, K, 2.5, causal, pad); },
                                           input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-9) << "K=" << K << " causal=" << causal;
    }
}

TEST(Mgk, OneKeyIsSoftmaxWithAKeyNormBias) {
  auto m = build_mixer("mgk", {{"keys", 1}}, kC, kH);  // sigma^2 = sqrt(D), pi = 1
  auto x = torch::randn({1, 9, kC}, torch::kDouble);
  auto p = project(m, x, 1);
  auto k = p.k.squeeze(3);
  const double var = std::sqrt(double(kD));
  auto s = (torch::matmul(p.q, k.transpose(-1, -2)) - 0.5 * k.pow(2).sum(-1).unsqueeze(-2)) / var;
  EXPECT_TRUE(torch::allclose(run_mixer(m, x, false), finish(m, torch::matmul(torch::softmax(s, -1), p.v)), 1e-10,
                              1e-10));
}

TEST(Mgk, LinearVariantEqualsItsQuadraticFormAndStreams) {
  auto x = torch::randn({2, 12, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 12, 0, 2);
  for (bool causal : {false, true}) {
    auto m = build_mixer("mgk", {{"linear", true}, {"chunk", 5}}, kC, kH);
    {
      torch::NoGradGuard ng;
      param(*m, "prior").uniform_(0.1, 0.9);
    }
    auto reference = [&] {
      const int64_t B = x.size(0), T = x.size(1);
      auto p = project(m, x, 2);
      auto pi = param(*m, "prior").clamp(1e-6, 1.0);
      auto fq = torch::elu(p.q) + 1;
      torch::Tensor a;
      for (int64_t r = 0; r < 2; ++r) {
        auto ar = pi.select(1, r).view({1, kH, 1, 1}) *
                  torch::matmul(fq, (torch::elu(p.k.select(3, r)) + 1).transpose(-1, -2));
        a = a.defined() ? a + ar : ar;
      }
      if (causal) a = torch::tril(a);
      a = a * (~pad).view({B, 1, 1, T}).to(a.dtype());
      return finish(m, torch::matmul(a, p.v) / (a.sum(-1, true) + 1e-6));
    };
    auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, causal, pad); }, reference,
                                         input_and_parameters(m, x));
    EXPECT_LT(diff, 1e-10) << "causal=" << causal;
  }
  auto m = build_mixer("mgk", {{"linear", true}}, kC, kH);
  auto xs = x.detach();
  auto whole = run_mixer(m, xs, true);
  auto state = m->initial_state(2);
  std::vector<torch::Tensor> parts;
  for (int64_t t0 = 0; t0 < 12; t0 += 5) parts.push_back(run_mixer(m, xs.narrow(1, t0, std::min<int64_t>(5, 12 - t0)), true, {}, state.get()));
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-10, 1e-10));
}

TEST(Mgk, FixedPriorsAreNotParameters) {
  auto m = build_mixer("mgk", {{"learn_prior", false}}, kC, kH);
  EXPECT_EQ(m->named_parameters().find("prior"), nullptr);
  ASSERT_NE(m->named_buffers().find("prior"), nullptr);
  EXPECT_TRUE(torch::allclose(m->named_buffers()["prior"], torch::full({kH, 2}, 0.5, torch::kDouble)));
  auto x = torch::randn({1, 7, kC}, torch::kDouble);
  EXPECT_TRUE(torch::allclose(run_mixer(m, x, true), mixture_reference(m, x, 2, std::sqrt(double(kD)), true, {}), 1e-10,
                              1e-10));
}

}  // namespace mgk_test
