// Kernelized attention with RPE: the FFT path equals the direct O(T^2)
// computation of the same formula (random b, T not a power of two, causal and
// not, padding, gradients including b); b = 0 is plain kernelized attention;
// shifting b changes nothing; a bias that keeps only r = 0 returns v_i.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "longseq/kernels/linear_attention.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace {

constexpr int64_t kC = 16, kH = 2, kD = kC / kH, kR = 4;  // kR: max_distance

Mixer make(Json opts = Json::object()) {
  opts["max_distance"] = kR;
  opts["features"] = 6;
  return build_mixer("kernel_rpe", opts, kC, kH);
}

struct Features {
  torch::Tensor fq, fk, v;  // [B, H, T, M], [B, H, T, M], [B, H, T, D]
};

// Features written from their definition: unit q, k; exp(w^T x~ - |x~|^2/2) / sqrt(M), no stabilizers.
Features features(const Mixer& m, const torch::Tensor& x) {
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto W = m->named_buffers()["projection"];
  auto phi = [&](const torch::Tensor& h) {
    auto hs = h / h.norm(2, -1, true) / std::pow(double(kD), 0.25);
    return torch::exp(torch::matmul(hs, W.t()) - 0.5 * hs.pow(2).sum(-1, true)) / std::sqrt(double(W.size(0)));
  };
  return {phi(to_heads(qkv[0], kH)), phi(to_heads(qkv[1], kH)), to_heads(qkv[2], kH)};
}

torch::Tensor direct(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad) {
  const int64_t B = x.size(0), T = x.size(1);
  auto f = features(m, x);
  auto r = torch::arange(T).unsqueeze(0) - torch::arange(T).unsqueeze(1);  // r = j - i
  auto C = torch::exp(param(*m, "rpe").index_select(1, r.clamp(-kR, kR).reshape(-1) + kR)).view({1, kH, T, T});
  if (causal) C = C * (r <= 0).to(C.dtype());
  auto a = C * torch::matmul(f.fq, f.fk.transpose(-1, -2));
  if (pad.defined()) a = a * (~pad).view({B, 1, 1, T}).to(a.dtype());
  auto y = torch::matmul(a, f.v) / (a.sum(-1, true) + 1e-12);
  return torch::linear(from_heads(y), param(*m, "out.weight"), param(*m, "out.bias"));
}

TEST(KernelRpe, FftPathEqualsTheDirectQuadraticComputation) {
  auto x = torch::randn({2, 13, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 13, 1, 3);
  for (bool causal : {false, true}) {
    auto m = make();
    {
      torch::NoGradGuard ng;
      param(*m, "rpe").normal_(0, 1.5);  // asymmetric: a flipped circulant would show
    }
    auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, causal, pad); },
                                         [&] { return direct(m, x, causal, pad); }, input_and_parameters(m, x));
    EXPECT_LT(diff, 1e-7) << "causal=" << causal;  // FFT round-off, summed into the bias gradients
  }
}

TEST(KernelRpe, ZeroBiasIsPlainKernelizedAttention) {
  auto m = make();
  auto x = torch::randn({1, 11, kC}, torch::kDouble);
  auto f = features(m, x);
  for (bool causal : {false, true}) {
    auto y = causal ? causal_linear_attention(f.fq, f.fk, f.v, 4, 1e-12) : linear_attention(f.fq, f.fk, f.v, 1e-12);
    auto expected = torch::linear(from_heads(y), param(*m, "out.weight"), param(*m, "out.bias"));
    EXPECT_TRUE(torch::allclose(run_mixer(m, x, causal), expected, 1e-10, 1e-10)) << "causal=" << causal;
  }
}

TEST(KernelRpe, ShiftingTheBiasChangesNothingAndAnOnlyDiagonalBiasReturnsValues) {
  auto m = make();
  auto x = torch::randn({1, 9, kC}, torch::kDouble);
  torch::NoGradGuard ng;
  param(*m, "rpe").normal_();
  auto y = run_mixer(m, x, false);
  param(*m, "rpe").add_(3.7);
  EXPECT_TRUE(torch::allclose(run_mixer(m, x, false), y, 1e-10, 1e-10));
  param(*m, "rpe").fill_(-200);
  param(*m, "rpe").select(1, kR).fill_(0);  // only r = 0 survives
  auto v = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1)[2];
  auto expected = torch::linear(v, param(*m, "out.weight"), param(*m, "out.bias"));
  for (bool causal : {false, true}) EXPECT_TRUE(torch::allclose(run_mixer(m, x, causal), expected, 1e-8, 1e-8));
}

TEST(KernelRpe, LongerThanTheClippingDistanceAndOddLengths) {
  auto m = make();
  {
    torch::NoGradGuard ng;
    param(*m, "rpe").normal_();
  }
  for (int64_t T : {1, 2, 5, 31}) {
    auto x = torch::randn({1, T, kC}, torch::kDouble);
    for (bool causal : {false, true})
      EXPECT_TRUE(torch::allclose(run_mixer(m, x, causal), direct(m, x, causal, {}), 1e-9, 1e-9))
          << "T=" << T << " causal=" << causal;
  }
}

}  // namespace
