// Routing Transformer attention rebuilt here from its definition (Roy et al.
// 2021, sec. 4, with balanced clusters): clusters from the stored centroids,
// attention inside each, outputs averaged over the clusters that took a token.
#include <gtest/gtest.h>

#include "helpers.h"
#include "mixer_helpers.h"
#include "longseq/common.h"
#include "longseq/registry.h"

using namespace longseq;
using longseq_test::input_and_parameters;
using longseq_test::to_heads;
using longseq_test::param;

namespace {

constexpr int64_t kC = 16, kH = 4, kD = kC / kH;

Mixer make(Json opts) {
  opts["name"] = "routing";
  torch::manual_seed(13);
  auto m = make_mixer(parse_mixer_spec(opts, "test"), kC, kH, 0);
  m->to(torch::kDouble);
  m->eval();
  return m;
}

torch::Tensor buffer(const torch::nn::Module& m, const std::string& name) { return *m.named_buffers().find(name); }

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {}) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  return m->forward(x, ctx);
}

// Every head routes; K clusters of w = T / K tokens.
torch::Tensor reference(const Mixer& m, const torch::Tensor& x, bool causal, int64_t K) {
  const int64_t B = x.size(0), T = x.size(1), w = (T + K - 1) / K;
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto qn = torch::layer_norm(to_heads(qkv[0], kH), {kD}), v = to_heads(qkv[2], kH);
  auto means = buffer(*m, "means");  // [H, K, D]
  auto sum = torch::zeros_like(v), n = torch::zeros({B, kH, T, 1}, v.options());
  for (int64_t c = 0; c < K; ++c) {
    auto aff = torch::matmul(qn.detach(), means.select(1, c).unsqueeze(-1)).squeeze(-1);  // [B, H, T]
    auto members = torch::zeros({B, kH, T}, torch::kBool).scatter(2, std::get<1>(aff.topk(w, -1)), true);
    auto both = members.unsqueeze(-1) & members.unsqueeze(-2);
    if (causal) both = both & torch::tril(torch::ones({T, T}, torch::kBool));
    auto o = longseq_test::dense_masked_attention(qn * std::sqrt(double(kD)), qn, v, both);
    sum = sum + o * members.unsqueeze(-1).to(v.dtype());
    n = n + members.unsqueeze(-1).to(v.dtype());
  }
  auto y = sum / n.clamp_min(1);
  return torch::linear(y.transpose(1, 2).reshape({B, T, kC}), param(*m, "out.weight"), param(*m, "out.bias"));
}

TEST(Routing, BalancedClustersEqualTheDefinition) {
  for (bool causal : {false, true})
    for (int64_t K : {1, 3, 5}) {  // 5 does not divide 12: clusters overlap, some tokens are left out
      auto m = make({{"clusters", K}, {"routing_heads", kH}});
      auto x = torch::randn({2, 12, kC}, torch::kDouble).requires_grad_(true);
      auto diff = longseq_test::max_output_and_grad_diff([&] { return run(m, x, causal); },
                                                         [&] { return reference(m, x, causal, K); }, input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-10) << "causal=" << causal << " K=" << K;
    }
}

TEST(Routing, LocalHeadsAreBlockLocalAttention) {
  const int64_t T = 11, b = 3;
  auto m = make({{"routing_heads", 0}, {"local_window", b}});
  auto x = torch::randn({1, T, kC}, torch::kDouble);
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto blk = torch::arange(T).div(b, "floor");
  auto rel = blk.view({1, T}) - blk.view({T, 1});
  for (bool causal : {false, true}) {
    auto allowed = causal ? ((rel == 0) | (rel == -1)) & torch::tril(torch::ones({T, T}, torch::kBool))
                          : rel.abs() <= 1;
    auto o = longseq_test::dense_masked_attention(to_heads(qkv[0], kH), to_heads(qkv[1], kH), to_heads(qkv[2], kH), allowed.view({1, 1, T, T}));
    auto expect = torch::linear(o.transpose(1, 2).reshape({1, T, kC}), param(*m, "out.weight"), param(*m, "out.bias"));
    EXPECT_TRUE(torch::allclose(run(m, x, causal), expect, 1e-10, 1e-10)) << "causal=" << causal;
  }
}

TEST(Routing, CentroidsMoveByMovingAverageOnlyInTraining) {
  auto x = torch::randn({2, 16, kC}, torch::kDouble);
  auto frozen = make({{"clusters", 4}, {"decay", 1.0}});
  auto before = buffer(*frozen, "means").clone();
  frozen->train();
  run(frozen, x, true);
  EXPECT_TRUE(torch::equal(buffer(*frozen, "means"), before)) << "decay 1 must leave the centroids";
  auto m = make({{"clusters", 4}, {"decay", 0.0}, {"routing_heads", 2}, {"bias", false}});
  auto start = buffer(*m, "means").clone();
  run(m, x, true);  // eval: no update
  EXPECT_TRUE(torch::equal(buffer(*m, "means"), start));
  m->train();
  run(m, x, true);
  // decay 0: each centroid becomes the mean of the normalized queries nearest to it (one Lloyd step).
  auto q = to_heads(torch::linear(x, param(*m, "qkv.weight")).chunk(3, -1)[0], kH).narrow(1, 0, 2);
  auto qn = torch::layer_norm(q, {kD});
  auto nearest = torch::einsum("bhtd,hkd->bhkt", {qn, start}).argmax(2);
  auto now = buffer(*m, "means");
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t c = 0; c < 4; ++c) {
      auto sel = nearest.select(1, h) == c;
      if (!sel.any().item<bool>()) continue;
      auto mean = qn.select(1, h).index({sel}).mean(0);
      EXPECT_TRUE(torch::allclose(now[h][c], mean, 1e-4, 1e-4)) << "head " << h << " centroid " << c;
    }
  for (auto& p : m->named_parameters()) EXPECT_EQ(p.key().find("means"), std::string::npos) << "centroids are trainable";
}

}  // namespace
