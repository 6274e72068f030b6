// Banded attention (Longformer's sliding and dilated windows, Beltagy et al.
// 2020, sec. 3.1) on the fused block-sparse kernel and on its reference,
// against dense attention under a mask built here from the definition
// (row i sees j with (j - i) % d == 0 and |j - i| <= d w, j <= i if causal),
// in float64; and the longformer mixer on the fused kernel against its
// gathered path, with dilation, global tokens and padding.
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/kernels/banded_attention.h"
#include "longseq/registry.h"

using namespace longseq;

namespace banded_attention_test {

torch::Tensor band_mask(int64_t T, int64_t w, int64_t d, bool causal) {
  auto rel = torch::arange(T).view({1, T}) - torch::arange(T).view({T, 1});  // j - i
  auto m = (rel.remainder(d) == 0) & (rel.abs() <= d * w);
  return causal ? m & (rel <= 0) : m;
}

// The definition's output and log-sum-exp in float64 (-inf where a row sees nothing).
std::pair<torch::Tensor, torch::Tensor> dense(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                              const torch::Tensor& allowed) {
  auto s = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(q.size(3)));
  s = s.masked_fill(~allowed, -std::numeric_limits<double>::infinity());
  auto lse = torch::logsumexp(s, -1);
  auto p = torch::exp(s - torch::where(torch::isfinite(lse), lse, torch::zeros_like(lse)).unsqueeze(-1));
  return {torch::matmul(p, v), lse};
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

struct Case {
  int64_t B, H, T, D, w, d;
  bool causal, padded;
};

void check(const Case& c, const std::string& kernel) {
  SCOPED_TRACE(testing::Message() << kernel << " T=" << c.T << " w=" << c.w << " d=" << c.d << " causal=" << c.causal
                                  << " padded=" << c.padded);
  torch::manual_seed(c.T * 13 + c.w * 5 + c.d);
  auto q = torch::randn({c.B, c.H, c.T, c.D}), k = torch::randn({c.B, c.H, c.T, c.D}),
       v = torch::randn({c.B, c.H, c.T, c.D});
  torch::Tensor pad;
  auto allowed = band_mask(c.T, c.w, c.d, c.causal).view({1, 1, c.T, c.T});
  if (c.padded) {  // row 0 padded on the right, the last row on the left, some holes
    pad = torch::rand({c.B, c.T}) < 0.1;
    pad[0].narrow(0, c.T - 5, 5).fill_(true);
    pad[c.B - 1].narrow(0, 0, 4).fill_(true);
    allowed = allowed & (~pad).view({c.B, 1, 1, c.T});
  }
  std::vector<torch::Tensor> f{q.clone().requires_grad_(true), k.clone().requires_grad_(true),
                               v.clone().requires_grad_(true)};
  std::vector<torch::Tensor> r{q.to(torch::kDouble).requires_grad_(true), k.to(torch::kDouble).requires_grad_(true),
                               v.to(torch::kDouble).requires_grad_(true)};
  auto got = banded_attention(f[0], f[1], f[2], BandSpec{c.w, c.d, c.causal}, pad, kernel);
  auto want = dense(r[0], r[1], r[2], allowed);
  EXPECT_LT(rel_err(got.out, want.first), kBlockSparseTolerance);
  auto fin = torch::isfinite(want.second);
  ASSERT_TRUE(torch::equal(torch::isfinite(got.lse), fin));
  EXPECT_LT(rel_err(got.lse.masked_select(fin), want.second.masked_select(fin)), kBlockSparseTolerance);
  // Gradients through both outputs (a later softmax joins through the lse).
  auto wo = torch::randn(got.out.sizes(), torch::kDouble), wl = torch::randn(got.lse.sizes(), torch::kDouble);
  auto loss = [&](const torch::Tensor& o, const torch::Tensor& l) {
    return (o.to(torch::kDouble) * wo).sum() + (torch::where(torch::isfinite(l), l, torch::zeros_like(l)).to(torch::kDouble) * wl).sum();
  };
  loss(got.out, got.lse).backward();
  loss(want.first, want.second).backward();
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_err(f[i].grad(), r[i].grad()), 1e-4) << "grad of input " << i;
}

const std::vector<Case> kCases = {
    {2, 2, 150, 8, 20, 1, true, false},   // several blocks of 20, T a multiple of none
    {2, 2, 150, 8, 20, 1, false, true},   // bidirectional, padding left, right and inside
    {1, 3, 200, 16, 70, 1, true, true},   // blocks of 64, band over two of them
    {2, 1, 97, 8, 5, 3, false, false},    // dilated: three residue classes, T % 3 != 0
    {2, 2, 97, 8, 5, 3, true, true},      // dilated, causal, padded
    {1, 1, 40, 4, 0, 1, false, false},    // w = 0: own key only
    {1, 2, 33, 4, 50, 2, true, false},    // the band covers each class whole
};

TEST(BandedAttention, FusedEqualsTheDefinition) {
  for (const auto& c : kCases) check(c, "fused");
}

TEST(BandedAttention, ReferenceEqualsTheDefinition) {
  for (const auto& c : kCases) check(c, "reference");
}

TEST(BandedAttention, WideBandIsExactAttention) {
  torch::manual_seed(7);
  auto q = torch::randn({1, 2, 70, 8}), k = torch::randn({1, 2, 70, 8}), v = torch::randn({1, 2, 70, 8});
  for (bool causal : {false, true}) {
    auto got = banded_attention(q, k, v, BandSpec{70, 1, causal}, {}, "fused").out;
    auto ref = torch::ones({70, 70}, torch::kBool);
    if (causal) ref = torch::tril(ref);
    auto want = dense(q.to(torch::kDouble), k.to(torch::kDouble), v.to(torch::kDouble), ref).first;
    EXPECT_LT(rel_err(got, want), kBlockSparseTolerance) << "causal=" << causal;
  }
}

TEST(BandedAttention, FlopsCountThePairsOfTheBand) {
  for (const auto& c : kCases) {
    const double pairs = band_mask(c.T, c.w, c.d, c.causal).sum().item<double>();
    EXPECT_DOUBLE_EQ(banded_attention_flops(c.B, c.H, c.T, c.D, BandSpec{c.w, c.d, c.causal}),
                     4.0 * c.B * c.H * c.D * pairs);
  }
}

TEST(BandedAttention, BadInputsAreRefused) {
  auto q = torch::randn({1, 1, 10, 4});
  EXPECT_THROW(banded_attention(q, q, q, BandSpec{-1, 1, false}, {}), std::exception);
  EXPECT_THROW(banded_attention(q, q, q, BandSpec{2, 0, false}, {}), std::exception);
  EXPECT_THROW(banded_attention(q, torch::randn({1, 1, 9, 4}), q, BandSpec{2, 1, false}, {}), std::exception);
  EXPECT_THROW(banded_attention(q, q, q, BandSpec{2, 1, false}, torch::zeros({1, 9}, torch::kBool)), std::exception);
  EXPECT_THROW(banded_attention(q, q, q, BandSpec{2, 1, false}, {}, "fast"), Error);
}

// The mixer on the fused kernel and on its gathered reference: same function, same gradients.
TEST(BandedAttention, LongformerFusedEqualsGathered) {
  for (bool causal : {false, true}) {
    Json base = {{"name", "longformer"}, {"window", {6}}, {"dilation", {2}}, {"dilated_heads", 1},
                 {"global_positions", {3}}};
    auto make = [&](const char* kernel) {
      Json o = base;
      o["kernel"] = kernel;
      torch::manual_seed(11);
      return make_mixer(parse_mixer_spec(o, "test"), 16, 4, 0);
    };
    auto fused = make("fused"), gathered = make("reference");
    auto x = torch::randn({2, 61, 16}).requires_grad_(true);
    auto pad = torch::zeros({2, 61}, torch::kBool);
    pad[1].narrow(0, 0, 7).fill_(true);  // left padding
    auto glob = torch::zeros({2, 61}, torch::kBool);
    glob[0][40] = true;
    auto run = [&](const Mixer& m) {
      MixContext ctx;
      ctx.causal = causal;
      ctx.padding_mask = pad;
      ctx.global_mask = glob;
      return m->forward(x, ctx);
    };
    auto wrt = [&](const Mixer& m) {
      std::vector<torch::Tensor> t{x};
      for (auto& p : m->parameters()) t.push_back(p);
      return t;
    };
    auto a = run(fused), b = run(gathered);
    auto real = (~pad).view({2, 61, 1});
    EXPECT_LT(rel_err(a * real, (b * real).to(torch::kDouble)), 1e-5) << "causal=" << causal;
    auto w = torch::randn(a.sizes()) * real;
    auto ga = torch::autograd::grad({(a * w).sum()}, wrt(fused));
    auto gb = torch::autograd::grad({(b * w).sum()}, wrt(gathered));
    for (size_t i = 0; i < ga.size(); ++i)
      EXPECT_LT(rel_err(ga[i], gb[i].to(torch::kDouble)), 1e-4) << "causal=" << causal << " gradient " << i;
  }
}

}  // namespace banded_attention_test
