// Luna: pack and unpack equal softmax cross-attention; the packed sequence is
// carried to the next layer; l = 1 gives one vector; the causal prefix form
// equals its quadratic definition.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace luna_test {

constexpr int64_t kC = 16, kH = 2, kD = kC / kH;

torch::Tensor lin(const Mixer& m, const std::string& name, const torch::Tensor& x) {
  return torch::linear(x, param(*m, name + ".weight"), param(*m, name + ".bias"));
}

// softmax(q k^T / sqrt(D)) v per head, keys masked by `pad` [B, S] when defined.
torch::Tensor cross(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& pad) {
  auto s = torch::matmul(to_heads(q, kH), to_heads(k, kH).transpose(-1, -2)) / std::sqrt(double(kD));
  if (pad.defined()) s = s.masked_fill(pad.view({pad.size(0), 1, 1, pad.size(1)}), -INFINITY);
  return from_heads(torch::matmul(torch::softmax(s, -1), to_heads(v, kH)));
}

TEST(Luna, PackAndUnpackAreSoftmaxCrossAttentionAndPackedIsCarried) {
  auto m = build_mixer("luna", {{"length", 5}}, kC, kH);
  auto x = torch::randn({2, 12, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 12, 1, 4);
  auto P = param(*m, "packed").unsqueeze(0).expand({2, 5, kC});
  auto reference = [&] {
    auto yp = cross(lin(m, "pack_q", P), lin(m, "pack_k", x), lin(m, "pack_k", x), pad);
    auto k = lin(m, "k", yp);
    return lin(m, "out", cross(lin(m, "q", x), k, k, {}));
  };
  auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, false, pad); }, reference,
                                       input_and_parameters(m, x));
  EXPECT_LT(diff, 1e-10);
  MixContext ctx;
  ctx.padding_mask = pad;
  m->forward(x, ctx);
  ASSERT_EQ(ctx.carry.count("luna.packed"), 1u);
  auto yp = cross(lin(m, "pack_q", P), lin(m, "pack_k", x), lin(m, "pack_k", x), pad);
  auto expected = torch::layer_norm(P + yp, {kC}, param(*m, "packed_norm.weight"), param(*m, "packed_norm.bias"));
  EXPECT_TRUE(torch::allclose(ctx.carry["luna.packed"], expected, 1e-10, 1e-10));
  // The next layer packs with the carried sequence, not its own.
  auto second = build_mixer("luna", {{"length", 5}}, kC, kH, 23, 1);
  auto with_carry = second->forward(x, ctx);
  auto own = run_mixer(second, x, false, pad);  // a fresh context: its own P
  EXPECT_FALSE(torch::allclose(with_carry, own, 1e-6, 1e-6));
  MixContext off;
  off.padding_mask = pad;
  off.carry = ctx.carry;
  off.carry_allowed = false;  // as in a reversible stack
  EXPECT_TRUE(torch::allclose(second->forward(x, off), own, 1e-12, 1e-12));
}

TEST(Luna, OneSlotGivesTheSameVectorEverywhere) {
  auto m = build_mixer("luna", {{"length", 1}}, kC, kH);
  auto y = run_mixer(m, torch::randn({1, 9, kC}, torch::kDouble), false);
  EXPECT_TRUE(torch::allclose(y, y.narrow(1, 0, 1).expand_as(y), 1e-12, 1e-12));
}

// For each t: packed keys and values of the prefix, written out, then a softmax over the slots.
torch::Tensor causal_reference(const Mixer& m, const torch::Tensor& x, const torch::Tensor& pad, bool softplus) {
  const int64_t B = x.size(0), T = x.size(1);
  auto p = to_heads(lin(m, "pack_q", param(*m, "packed")).unsqueeze(0), kH) / std::sqrt(double(kD));
  auto s = torch::matmul(to_heads(lin(m, "pack_k", x), kH), p.transpose(-1, -2));  // [B, H, T, l]
  auto w = softplus ? torch::log2(1 + torch::pow(2.0, s)) : torch::elu(s) + 1;
  auto k = to_heads(lin(m, "k", x), kH), q = to_heads(lin(m, "q", x), kH) / std::sqrt(double(kD));
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < T; ++t) {
    auto real = (~pad.narrow(1, 0, t + 1)).to(x.dtype()).view({B, 1, t + 1, 1});
    auto n = real.sum(2, true).clamp_min(1.0);                                                   // [B, 1, 1, 1]
    auto wt = w.narrow(2, 0, t + 1) * real;                                                      // [B, H, t+1, l]
    auto kbar = torch::matmul(wt.transpose(-1, -2), k.narrow(2, 0, t + 1)) / n;                  // [B, H, l, D]
    auto vbar = kbar;                                                                            // tied
    auto alpha = torch::softmax(torch::matmul(q.narrow(2, t, 1), kbar.transpose(-1, -2)), -1);  // [B, H, 1, l]
    rows.push_back(torch::matmul(alpha, vbar));
  }
  return lin(m, "out", from_heads(torch::cat(rows, 2)));
}

TEST(Luna, CausalPrefixFormEqualsItsQuadraticDefinition) {
  auto x = torch::randn({2, 15, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 15, 1, 4);
  pad[0].narrow(0, 0, 2).fill_(true);  // and left padding: t counts real tokens
  for (const char* act : {"softplus", "elu"})
    for (int64_t chunk : {1, 4, 64}) {
      auto m = build_mixer("luna", {{"length", 3}, {"chunk", chunk}, {"activation", act}}, kC, kH);
      auto diff = max_output_and_grad_diff([&] { return run_mixer(m, x, true, pad); },
                                           [&] { return causal_reference(m, x, pad, act[0] == 's'); },
                                           input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-10) << act << " chunk=" << chunk;
    }
}

TEST(Luna, UntiedProjectionsAreUsed) {
  auto m = build_mixer("luna", {{"tied", false}}, kC, kH);
  EXPECT_NO_THROW(param(*m, "pack_v.weight"));
  EXPECT_NO_THROW(param(*m, "v.weight"));
  auto x = torch::randn({1, 6, kC}, torch::kDouble);
  for (bool causal : {false, true}) {
    auto y = run_mixer(m, x, causal);
    torch::NoGradGuard ng;
    param(*m, "v.weight").add_(0.1);
    EXPECT_FALSE(torch::allclose(y, run_mixer(m, x, causal))) << "causal=" << causal;
  }
}

}  // namespace luna_test
