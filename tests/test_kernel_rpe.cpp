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

namespace kernel_rpe_test {

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

// direct() with offsets clipped at R (the reference above is fixed at kR).
torch::Tensor direct_clipped(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad, int64_t R) {
  const int64_t B = x.size(0), T = x.size(1);
  auto f = features(m, x);
  auto r = torch::arange(T).unsqueeze(0) - torch::arange(T).unsqueeze(1);  // r = j - i
  auto C = torch::exp(param(*m, "rpe").index_select(1, r.clamp(-R, R).reshape(-1) + R)).view({1, kH, T, T});
  if (causal) C = C * (r <= 0).to(C.dtype());
  auto a = C * torch::matmul(f.fq, f.fk.transpose(-1, -2));
  if (pad.defined()) a = a * (~pad).view({B, 1, 1, T}).to(a.dtype());
  auto y = torch::matmul(a, f.v) / a.sum(-1, true);
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

// Biases of the kinds trained heads learn, over offsets -(R)..R: a previous-token head (b_-1 high, the rest
// low: causal row 0 sees only weights e^{b_0 - max b}), a distance decay, and a spread of random values.
torch::Tensor realistic_bias(int kind, int64_t R) {
  auto r = torch::arange(-R, R + 1, torch::kDouble).unsqueeze(0).expand({kH, 2 * R + 1});
  if (kind == 0) {
    auto b = torch::randn({kH, 2 * R + 1}, torch::kDouble) - 6;
    b.select(1, R - 1).fill_(6);  // b_{-1}: attend to the previous token
    return b;
  }
  if (kind == 1) return -0.4 * r.abs() + torch::randn({kH, 2 * R + 1}, torch::kDouble) * 0.5;
  return torch::randn({kH, 2 * R + 1}, torch::kDouble) * 3;
}

Mixer make_wide(int64_t R, const std::string& fft) {
  return build_mixer("kernel_rpe", {{"max_distance", R}, {"features", 16}, {"fft_precision", fft}}, kC, kH);
}

// Float32 inputs against the float64 direct computation of the same formula: FFT round-off is relative to
// the largest entries, so a row whose visible weights are all small is only right with the wide FFT.
TEST(KernelRpe, Float32MatchesAFloat64ReferenceWithRealisticBiases) {
  const int64_t R = 40, T = 150;
  for (int kind : {0, 1, 2})
    for (bool causal : {false, true}) {
      auto m64 = make_wide(R, "float64");
      auto bias = realistic_bias(kind, R);
      {
        torch::NoGradGuard ng;
        param(*m64, "rpe").copy_(bias);
      }
      auto x = torch::randn({2, T, kC}, torch::kDouble);
      auto pad = right_padding(2, T, 1, 20);
      auto expect = direct_clipped(m64, x, causal, pad, R);
      auto m32 = make_wide(R, "float64");
      m32->to(torch::kFloat);
      {
        torch::NoGradGuard ng;
        param(*m32, "rpe").copy_(bias);
      }
      auto y = run_mixer(m32, x.to(torch::kFloat), causal, pad).to(torch::kDouble);
      auto keep = (~pad).unsqueeze(-1).expand_as(y);
      const double err = (y - expect).masked_select(keep).abs().max().item<double>();
      EXPECT_LT(err, 2e-5 * expect.abs().max().item<double>()) << "bias kind " << kind << " causal=" << causal;
    }
}

// A bias range far beyond float32's FFT resolution: with the input-precision FFT the denominators of the
// rows that only see low weights sit below the round-off; the guard keeps them positive, so every head
// output stays a bounded, finite blend of values instead of a flipped or exploding one.
TEST(KernelRpe, GuardedDenominatorNeverFlipsSign) {
  const int64_t R = 40, T = 150;
  auto m = make_wide(R, "input");
  m->to(torch::kFloat);
  {
    torch::NoGradGuard ng;
    auto b = torch::full({kH, 2 * R + 1}, -30.0);
    b.select(1, R - 1).fill_(0);  // only the previous token matters; row 0 sees e^-30 alone
    param(*m, "rpe").copy_(b);
    param(*m, "out.weight").copy_(torch::eye(kC));
    param(*m, "out.bias").zero_();
  }
  // Row 0's true denominator (~1e-13) sits far below the float32 FFT's noise: without the floor its
  // output is a ratio of two noises, beyond 10 |v| in some of these 32 x kH rows.
  auto x = torch::randn({32, T, kC});
  auto v = to_heads(torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1)[2], kH);
  auto y = to_heads(run_mixer(m, x, true), kH);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  EXPECT_LT(y.abs().max().item<double>(), 10 * v.abs().max().item<double>());
}

// The real tokens' outputs do not depend on how much padding the batch carries, left or right.
TEST(KernelRpe, RealOutputsDoNotDependOnPaddingLength) {
  auto m = make();
  {
    torch::NoGradGuard ng;
    param(*m, "rpe").normal_(0, 1.5);
  }
  const int64_t n = 9;
  auto real = torch::randn({1, n, kC}, torch::kDouble);
  longseq_test::expect_padding_length_invariance(m, real);
}

}  // namespace kernel_rpe_test
