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
using longseq_test::right_padding;

namespace routing_test {

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

// Cluster count and size for n real tokens, from the option definitions.
std::pair<int64_t, int64_t> clusters_and_size(const Json& o, int64_t n) {
  const int64_t fixed = o.value("clusters", 0), w = o.value("cluster_size", 512), cap_len = o.value("max_len", 65536);
  const int64_t cap = fixed > 0 ? fixed : (cap_len + w - 1) / w;
  if (fixed > 0) return {fixed, (n + fixed - 1) / fixed};
  const int64_t need = (n + w - 1) / w;
  if (need > cap) return {cap, (n + cap - 1) / cap};
  return {std::max<int64_t>(need, 1), std::min(w, n)};
}

// Every head routes. Per row and head: cluster c < k holds the w real tokens with the largest LN(q) . mu_c (and,
// without shared QK, the w real keys with the largest LN(k) . mu_c); its queries attend to its keys (logits
// without 1/sqrt(D), causal by position); a token's output is the mean over the clusters that took it.
torch::Tensor reference(const Mixer& m, const Json& o, const torch::Tensor& x, bool causal, const torch::Tensor& pad) {
  const int64_t B = x.size(0), T = x.size(1);
  const bool shared = o.value("shared_qk", true);
  auto proj = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias"));
  auto qn = torch::layer_norm(to_heads(proj.narrow(-1, 0, kC), kH), {kD});
  auto kn = shared ? qn : torch::layer_norm(to_heads(proj.narrow(-1, kC, kC), kH), {kD});
  auto v = to_heads(proj.narrow(-1, proj.size(-1) - kC, kC), kH);
  auto means = buffer(*m, "means");  // [H, K, D]
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    auto real = pad.defined() ? ~pad[b] : torch::ones({T}, torch::kBool);
    const auto kw = clusters_and_size(o, real.sum().item<int64_t>());
    const int64_t K = kw.first, w = kw.second;
    auto sum = torch::zeros({kH, T, kD}, v.options()), n = torch::zeros({kH, T, 1}, v.options());
    auto pick = [&](const torch::Tensor& xn, int64_t c) {  // [H, T] bool: the w real tokens nearest mu_c
      auto aff = torch::matmul(xn[b].detach(), means.select(1, c).unsqueeze(-1)).squeeze(-1);  // [H, T]
      aff = aff.masked_fill(~real, -1e300);
      return torch::zeros({kH, T}, torch::kBool).scatter(1, std::get<1>(aff.topk(w, -1)), true);
    };
    for (int64_t c = 0; c < K && w > 0; ++c) {
      auto qm = pick(qn, c), km = shared ? qm : pick(kn, c);
      auto both = qm.unsqueeze(-1) & km.unsqueeze(-2);
      if (causal) both = both & torch::tril(torch::ones({T, T}, torch::kBool));
      auto o_c = longseq_test::dense_masked_attention((qn[b] * std::sqrt(double(kD))).unsqueeze(0),
                                                      kn[b].unsqueeze(0), v[b].unsqueeze(0), both.unsqueeze(0))[0];
      sum = sum + o_c * qm.unsqueeze(-1).to(v.dtype());
      n = n + qm.unsqueeze(-1).to(v.dtype());
    }
    rows.push_back(sum / n.clamp_min(1));
  }
  auto y = torch::stack(rows);
  return torch::linear(y.transpose(1, 2).reshape({B, T, kC}), param(*m, "out.weight"), param(*m, "out.bias"));
}

TEST(Routing, ClustersEqualTheDefinition) {
  auto x = torch::randn({2, 12, kC}, torch::kDouble).requires_grad_(true);
  auto pad = torch::zeros({2, 12}, torch::kBool);
  pad[1].narrow(0, 0, 2).fill_(true);   // left padding
  pad[1].narrow(0, 10, 1).fill_(true);  // and right: 9 real tokens
  std::vector<Json> modes = {
      {{"clusters", 1}}, {{"clusters", 3}}, {{"clusters", 5}},  // fixed k; 5 does not divide 12: overlaps, drops
      {{"cluster_size", 3}}, {{"cluster_size", 5}},             // the paper's form: k = ceil(n / w)
      {{"cluster_size", 3}, {"max_len", 6}},                    // two centroids only: beyond 6 tokens they grow
  };
  for (bool causal : {false, true})
    for (const auto& mode : modes) {
      Json o = mode;
      o["routing_heads"] = kH;
      auto m = make(o);
      auto diff = longseq_test::max_output_and_grad_diff([&] { return run(m, x, causal, pad); },
                                                         [&] { return reference(m, o, x, causal, pad); },
                                                         input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-10) << "causal=" << causal << " " << mode.dump();
    }
}

TEST(Routing, OwnKeysInBidirectionalModeEqualTheDefinition) {
  auto x = torch::randn({2, 11, kC}, torch::kDouble).requires_grad_(true);
  auto pad = right_padding(2, 11, 0, 3);
  for (Json mode : {Json{{"cluster_size", 3}}, Json{{"clusters", 2}}}) {
    Json o = mode;
    o["routing_heads"] = kH;
    o["shared_qk"] = false;
    auto m = make(o);
    EXPECT_EQ(param(*m, "qkv.weight").size(0), 3 * kC) << "routing heads without shared QK need keys";
    auto diff = longseq_test::max_output_and_grad_diff([&] { return run(m, x, false, pad); },
                                                       [&] { return reference(m, o, x, false, pad); },
                                                       input_and_parameters(m, x));
    EXPECT_LT(diff, 1e-10) << mode.dump();
    EXPECT_THROW(run(m, x, true), std::exception) << "causal routing must share QK";
  }
}

TEST(Routing, KeysAreProjectedOnlyForHeadsThatUseThem) {
  for (int64_t r : {0, 1, 3, 4}) {
    auto m = make({{"routing_heads", r}});
    EXPECT_EQ(param(*m, "qkv.weight").size(0), 2 * kC + (kH - r) * kD) << "routing heads " << r;
  }
}

// Real tokens' outputs do not depend on how much padding the batch carries, left or right.
TEST(Routing, RealOutputsDoNotDependOnPaddingLength) {
  const int64_t n = 10;
  auto real = torch::randn({1, n, kC}, torch::kDouble);
  for (Json o : {Json{{"cluster_size", 3}, {"local_window", 4}}, Json{{"clusters", 3}, {"local_window", 4}}})
    for (bool causal : {false, true}) {
      auto m = make(o);
      longseq_test::expect_padding_length_invariance(
          [&](const torch::Tensor& x, const torch::Tensor& pad) { return run(m, x, causal, pad); }, real,
          o.dump() + " causal=" + std::to_string(causal));
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
  auto q = to_heads(torch::linear(x, param(*m, "qkv.weight")).narrow(-1, 0, kC), kH).narrow(1, 0, 2);
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

// Centroids sized for longer inputs than the batch's: only the k = ceil(n / w) in use move.
TEST(Routing, OnlyTheClustersInUseMove) {
  auto m = make({{"cluster_size", 4}, {"max_len", 64}, {"decay", 0.0}});
  auto start = buffer(*m, "means").clone();
  ASSERT_EQ(start.size(1), 16);
  m->train();
  auto x = torch::randn({2, 8, kC}, torch::kDouble);
  auto pad = right_padding(2, 8, 1, 3);
  run(m, x, true, pad);  // rows of 8 and 5 real tokens: 2 clusters
  auto now = buffer(*m, "means");
  EXPECT_TRUE(torch::equal(now.narrow(1, 2, 14), start.narrow(1, 2, 14)));
  EXPECT_FALSE(torch::equal(now.narrow(1, 0, 2), start.narrow(1, 0, 2)));
}

}  // namespace routing_test
