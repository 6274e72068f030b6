// Learned-kernel attention: with the noise fixed, the linear path equals the
// quadratic form of the same features (gradients reaching the spectral
// parameters); with many draws the kernel matches its closed form.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace {

constexpr int64_t kC = 8, kH = 2, kD = kC / kH;

// Features from the definitions in the mixer's header comment, no stabilizers (so both sides run with eps = 0).
torch::Tensor features(const Mixer& m, const torch::Tensor& h, bool rks) {
  auto eps = m->named_buffers()["noise"];
  auto mu = param(*m, "mean").unsqueeze(1);
  auto xs = h / std::pow(double(kD), 0.25);
  if (!rks) {
    auto omega = mu + torch::exp(0.5 * param(*m, "log_var")).unsqueeze(1) * eps;
    return torch::exp(torch::matmul(xs, omega.transpose(-1, -2)) - xs.pow(2).sum(-1, true)) /
           std::sqrt(double(eps.size(0)));
  }
  auto base = torch::matmul(eps, param(*m, "factor"));
  auto a = torch::matmul(xs, (base + mu).transpose(-1, -2)), b = torch::matmul(xs, (base - mu).transpose(-1, -2));
  auto trig = torch::cat({a.cos(), a.sin(), b.cos(), b.sin()}, -1) / std::sqrt(double(eps.size(0)));
  return torch::cat({trig, torch::ones({h.size(0), h.size(1), h.size(2), 1}, h.options())}, -1);
}

torch::Tensor quadratic(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad, bool rks) {
  const int64_t B = x.size(0), T = x.size(1);
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto a = torch::matmul(features(m, to_heads(qkv[0], kH), rks), features(m, to_heads(qkv[1], kH), rks).transpose(-1, -2));
  if (causal) a = torch::tril(a);
  a = a * (~pad).view({B, 1, 1, T}).to(a.dtype());
  auto y = torch::matmul(a, to_heads(qkv[2], kH)) / a.sum(-1, true);
  return torch::linear(from_heads(y), param(*m, "out.weight"), param(*m, "out.bias"));
}

TEST(LearnedKernel, LinearPathEqualsTheQuadraticFormAndTrainsTheSpectrum) {
  auto x = torch::randn({2, 10, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 10, 0, 3);
  for (const char* kernel : {"gmm_prf", "gmm_rks"})
    for (bool causal : {false, true}) {
      const bool rks = std::string(kernel) == "gmm_rks";
      auto m = build_mixer("learned_kernel", {{"kernel", kernel}, {"features", 12}, {"chunk", 3}, {"eps", 0.0}}, kC, kH);
      {
        torch::NoGradGuard ng;  // away from the RBF init, so every parameter matters
        param(*m, "mean").normal_(0, 0.3);
        param(*m, rks ? "factor" : "log_var").add_(torch::randn_like(param(*m, rks ? "factor" : "log_var")) * 0.2);
      }
      auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, causal, pad); },
                                           [&] { return quadratic(m, x, causal, pad, rks); }, input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-9) << kernel << " causal=" << causal;
      auto y = run_mixer(m, x, causal, pad);
      auto g = torch::autograd::grad({y.pow(2).sum()}, {param(*m, "mean")});
      EXPECT_GT(g[0].abs().sum().item<double>(), 0) << "no gradient reaches the spectral mean";
    }
}

// Two tokens, bidirectional: y_0 = (K00 v0 + K01 v1) / (K00 + K01) per head, then the output
// projection. K(m, h, a, b) is head h's closed-form kernel of the scaled q~, k~.
using Kernel = std::function<double(const Mixer&, int64_t, const torch::Tensor&, const torch::Tensor&)>;

double first_row_error(const char* kernel, const Kernel& K) {
  auto m = build_mixer("learned_kernel", {{"kernel", kernel}, {"features", 400000}, {"eps", 0.0}}, kC, kH);
  {
    torch::NoGradGuard ng;
    param(*m, "mean").normal_(0, 0.5);
  }
  auto x = torch::randn({1, 2, kC}, torch::kDouble) * 0.7;
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  const double s = std::pow(double(kD), -0.25);
  auto q = to_heads(qkv[0], kH)[0] * s, k = to_heads(qkv[1], kH)[0] * s, v = to_heads(qkv[2], kH)[0];
  std::vector<torch::Tensor> heads;
  for (int64_t h = 0; h < kH; ++h) {
    const double k00 = K(m, h, q[h][0], k[h][0]), k01 = K(m, h, q[h][0], k[h][1]);
    heads.push_back((k00 * v[h][0] + k01 * v[h][1]) / (k00 + k01));
  }
  auto expected = torch::linear(torch::cat(heads), param(*m, "out.weight"), param(*m, "out.bias"));
  auto got = run_mixer(m, x, false)[0][0];
  return ((got - expected).norm() / expected.norm()).item<double>();
}

TEST(LearnedKernel, ManyDrawsMatchTheClosedFormKernels) {
  const double prf = first_row_error("gmm_prf", [](const Mixer& m, int64_t h, const torch::Tensor& a,
                                                   const torch::Tensor& b) {
    auto u = a + b;  // log_var = 0: u^T diag(e^s) u = |u|^2
    return torch::exp((param(*m, "mean")[h] * u).sum() + 0.5 * u.pow(2).sum() - a.pow(2).sum() - b.pow(2).sum())
        .item<double>();
  });
  EXPECT_LT(prf, 0.02);
  const double rks = first_row_error("gmm_rks", [](const Mixer& m, int64_t h, const torch::Tensor& a,
                                                   const torch::Tensor& b) {
    auto d = a - b;  // L = I
    return (2 * torch::exp(-0.5 * d.pow(2).sum()) * torch::cos((param(*m, "mean")[h] * d).sum()) + 1).item<double>();
  });
  EXPECT_LT(rks, 0.02);
}

}  // namespace
