// Learned-kernel attention: with the noise fixed, the linear path equals the
// quadratic form of the same features (gradients reaching the spectral
// parameters); with many draws the kernel matches its closed form.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace learned_kernel_test {

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
// projection. K(m, h, a, b) is head h's closed-form kernel of the scaled q~, k~. `perturb` moves the
// spectral parameters away from the RBF init (s != 0, L != I) before the run.
using Kernel = std::function<double(const Mixer&, int64_t, const torch::Tensor&, const torch::Tensor&)>;

double first_row_error(const char* kernel, const Kernel& K, bool perturb) {
  auto m = build_mixer("learned_kernel", {{"kernel", kernel}, {"features", 400000}, {"eps", 0.0}}, kC, kH);
  {
    torch::NoGradGuard ng;
    param(*m, "mean").normal_(0, 0.5);
    if (perturb && std::string(kernel) == "gmm_prf") param(*m, "log_var").normal_(0, 0.6);
    if (perturb && std::string(kernel) == "gmm_rks") param(*m, "factor").add_(torch::randn({kH, kD, kD}, torch::kDouble) * 0.4);
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

// GMM-PRF: omega ~ N(mu, diag(e^s)), so E[exp(omega^T u)] = exp(mu^T u + u^T diag(e^s) u / 2), u = a + b.
double prf_kernel(const Mixer& m, int64_t h, const torch::Tensor& a, const torch::Tensor& b) {
  auto u = a + b;
  auto var = torch::exp(param(*m, "log_var")[h]);
  return torch::exp((param(*m, "mean")[h] * u).sum() + 0.5 * (var * u.pow(2)).sum() - a.pow(2).sum() - b.pow(2).sum())
      .item<double>();
}

// GMM-RKS: omega = L^T eps +- mu, so omega^T d ~ N(+-mu^T d, |L d|^2): E[cos] = exp(-|L d|^2 / 2) cos(mu^T d),
// twice (the +- pair) plus the smoothing feature's 1.
double rks_kernel(const Mixer& m, int64_t h, const torch::Tensor& a, const torch::Tensor& b) {
  auto d = a - b;
  auto Ld = torch::matmul(param(*m, "factor")[h], d);
  return (2 * torch::exp(-0.5 * Ld.pow(2).sum()) * torch::cos((param(*m, "mean")[h] * d).sum()) + 1).item<double>();
}

TEST(LearnedKernel, ManyDrawsMatchTheClosedFormKernelsAtTheRbfInit) {
  EXPECT_LT(first_row_error("gmm_prf", prf_kernel, false), 0.02);
  EXPECT_LT(first_row_error("gmm_rks", rks_kernel, false), 0.02);
}

// Away from s = 0, L = I the closed forms still hold: the re-parameterization draws from the distribution
// the parameters name (a wrong variance scale, L for L^T, or a shared head would show here).
TEST(LearnedKernel, ManyDrawsMatchTheClosedFormKernelsAtOtherParameters) {
  for (int seed : {1, 2}) {
    torch::manual_seed(seed);
    const double prf = first_row_error("gmm_prf", prf_kernel, true);
    EXPECT_LT(prf, 0.03) << "seed " << seed;
    torch::manual_seed(seed);
    const double rks = first_row_error("gmm_rks", rks_kernel, true);
    EXPECT_LT(rks, 0.03) << "seed " << seed;
  }
}

// Identity projections (no bias): per head q = k = v = x, so the test sets every exponent.
Mixer identity_mixer(Json opts) {
  opts["bias"] = false;
  auto m = build_mixer("learned_kernel", opts, kC, kH);
  torch::NoGradGuard ng;
  auto eye = torch::eye(kC, torch::kDouble);
  param(*m, "qkv.weight").copy_(torch::cat({eye, eye, eye}, 0));
  param(*m, "out.weight").copy_(eye);
  return m;
}

// Rows whose head slices have |x~| = r: every GMM-PRF exponent is omega^T x~ - r^2.
torch::Tensor rows_of_norm(int64_t B, int64_t T, double r) {
  auto x = torch::randn({B, T, kH, kD}, torch::kDouble);
  return (x / x.norm(2, -1, true) * r * std::pow(double(kD), 0.25)).reshape({B, T, kC});
}

// Streaming with chunks that hold padding, one only padding, equals the whole call; keys with very negative
// exponents show a running stabilizer that a padding-only chunk resets. A later key far above the earlier
// ones leaves the earlier causal outputs alone.
TEST(LearnedKernel, StreamingWithPaddingOnlyChunksAndALaterLargeKeyEqualsWhole) {
  for (const char* kernel : {"gmm_prf", "gmm_rks"}) {
    auto m = identity_mixer({{"kernel", kernel}, {"features", 16}, {"chunk", 2}});
    const int64_t T = 12;
    auto x = rows_of_norm(2, T, 20);  // gmm_prf exponents about -400
    auto pad = torch::zeros({2, T}, torch::kBool);
    pad[0].narrow(0, 0, 5).fill_(true);
    pad[1].narrow(0, 4, 3).fill_(true);
    auto whole = run_mixer(m, x, true, pad);
    auto streamed = longseq_test::stream_in_chunks(m, x, pad, {4, 3, 1, 2, 2});
    auto keep = (~pad).unsqueeze(-1).expand_as(whole);
    EXPECT_TRUE(torch::allclose(streamed.masked_select(keep), whole.masked_select(keep), 1e-9, 1e-12))
        << kernel << ": max diff " << (streamed - whole).masked_select(keep).abs().max().item<double>();
    EXPECT_GT(whole.masked_select(keep).abs().min().item<double>(), 0) << kernel << ": real outputs vanished";

    auto y = rows_of_norm(1, T, 7);                     // exponents about -49
    y.narrow(1, T - 1, 1).copy_(rows_of_norm(1, 1, 0.3));  // the last key's about 0
    auto full = run_mixer(m, y, true), prefix = run_mixer(m, y.narrow(1, 0, T - 1), true);
    EXPECT_TRUE(torch::allclose(full.narrow(1, 0, T - 1), prefix, 1e-9, 1e-12))
        << kernel << ": max diff " << (full.narrow(1, 0, T - 1) - prefix).abs().max().item<double>();
  }
}

// The real tokens' outputs do not depend on how much padding the batch carries, left or right.
TEST(LearnedKernel, RealOutputsDoNotDependOnPaddingLength) {
  const int64_t n = 9;
  auto real = torch::randn({1, n, kC}, torch::kDouble);
  for (const char* kernel : {"gmm_prf", "gmm_rks"}) {
    auto m = build_mixer("learned_kernel", {{"kernel", kernel}, {"features", 8}, {"chunk", 3}}, kC, kH);
    longseq_test::expect_padding_length_invariance(m, real, kernel);
  }
}

}  // namespace learned_kernel_test
