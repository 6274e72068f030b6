// The moe feed-forward kind (src/ffn/moe.cpp): ../shared/mechanisms/moe.md, exact cases 1-9, against references
// written here from the papers' definitions (experts as W2 relu(W1 x), the router softmax, top-k, capacity by
// position), plus the losses reaching the model's objective and the training log.
#include <gtest/gtest.h>

#include <array>
#include <fstream>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/ffn.h"
#include "longseq/models.h"
#include "longseq/train.h"

namespace moe_test {

using namespace longseq;

constexpr int64_t kC = 8, kF = 12;

std::shared_ptr<FeedForwardKindImpl> make(Json o, torch::Dtype dtype = torch::kDouble) {
  torch::manual_seed(5);
  o["name"] = "moe";
  if (!o.contains("noise")) o["noise"] = "none";
  FfnArgs a;
  a.d_model = kC, a.d_ff = kF;
  auto m = make_ffn(parse_ffn_spec(o, "test"), a);
  m->to(dtype);
  {  // weights of unit scale, so that differences show
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.normal_();
  }
  m->eval();
  return m;
}

torch::Tensor P(const std::shared_ptr<FeedForwardKindImpl>& m, const std::string& name) {
  return longseq_test::param(*m, name);
}

// Expert e of the definition: W2_e relu(W1_e x).
torch::Tensor expert(const std::shared_ptr<FeedForwardKindImpl>& m, int64_t e, const torch::Tensor& x) {
  return torch::matmul(torch::relu(torch::matmul(x, P(m, "w1")[e])), P(m, "w2")[e]);
}

double maxdiff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(Moe, OneExpertIsTheDenseFeedForward) {  // case 1
  auto m = make({{"experts", 1}, {"capacity_factor", 0.0}});
  auto x = torch::randn({2, 9, kC}, torch::kDouble);
  EXPECT_LT(maxdiff(m->forward(x), expert(m, 0, x)), 1e-12);
}

TEST(Moe, AllExpertsIsTheSoftMixture) {  // case 2: k = E, no capacity limit, raw p
  auto m = make({{"experts", 4}, {"top_k", 4}, {"capacity_factor", 0.0}, {"eval_capacity_factor", 0.0}});
  auto x = torch::randn({2, 7, kC}, torch::kDouble);
  auto p = torch::softmax(torch::matmul(x, P(m, "router")), -1);
  auto want = torch::zeros_like(x);
  for (int64_t e = 0; e < 4; ++e) want += p.select(-1, e).unsqueeze(-1) * expert(m, e, x);
  EXPECT_LT(maxdiff(m->forward(x), want), 1e-12);
}

// Switch top-1 by the definition, with capacity Cap per group of S positions filled in position order.
torch::Tensor switch_reference(const std::shared_ptr<FeedForwardKindImpl>& m, const torch::Tensor& x, int64_t E,
                               int64_t S, int64_t cap) {
  auto p = torch::softmax(torch::matmul(x, P(m, "router")), -1);
  auto out = torch::zeros_like(x);
  for (int64_t b = 0; b < x.size(0); ++b)
    for (int64_t g0 = 0; g0 < x.size(1); g0 += S) {
      std::vector<int64_t> used(E, 0);
      for (int64_t t = g0; t < std::min(x.size(1), g0 + S); ++t) {
        const int64_t e = p[b][t].argmax().item<int64_t>();
        if (used[e]++ >= cap) continue;  // dropped: 0
        out[b][t] = p[b][t][e] * expert(m, e, x[b][t]);
      }
    }
  return out;
}

TEST(Moe, SwitchCapacityDropsLaterTokensOfAGroup) {
  const int64_t E = 3, S = 6;
  auto m = make({{"experts", E}, {"group_size", S}, {"eval_capacity_factor", 1.0}, {"min_capacity", 0}});
  auto x = torch::randn({2, 15, kC}, torch::kDouble);  // groups of 6, 6, 3 per row
  const int64_t cap = 2;                                // floor(1.0 * 6 / 3)
  EXPECT_LT(maxdiff(m->forward(x), switch_reference(m, x, E, S, cap)), 1e-12);
  EXPECT_GT(m->aux_metrics().at("moe_dropped"), 0.0) << "this draw must drop some tokens for the test to mean much";
}

TEST(Moe, NoDropsMeansCausalBatchInvariantAndStreamable) {  // case 3
  auto m = make({{"experts", 4}, {"top_k", 2}, {"capacity_factor", 0.0}, {"eval_capacity_factor", 0.0}});
  auto x = torch::randn({3, 10, kC}, torch::kDouble);
  auto y = m->forward(x);
  auto x2 = x.clone();
  x2.narrow(1, 6, 4).normal_();
  EXPECT_LT(maxdiff(m->forward(x2).narrow(1, 0, 6), y.narrow(1, 0, 6)), 1e-12);  // causal
  EXPECT_LT(maxdiff(m->forward(x.narrow(0, 1, 1)), y.narrow(0, 1, 1)), 1e-12);    // batch composition
  EXPECT_LT(maxdiff(torch::cat({m->forward(x.narrow(1, 0, 3)), m->forward(x.narrow(1, 3, 7))}, 1), y), 1e-12);
  EXPECT_DOUBLE_EQ(m->aux_metrics().at("moe_dropped"), 0.0);
}

TEST(Moe, ZeroCapacityDropsEverything) {  // case 4, on both dispatch paths
  for (const std::string dispatch : {"gather", "einsum"}) {
    auto m = make({{"experts", 4}, {"eval_capacity_factor", 1e-9}, {"min_capacity", 0}, {"dispatch", dispatch}});
    auto x = torch::randn({2, 5, kC}, torch::kDouble);
    EXPECT_TRUE(torch::equal(m->forward(x), torch::zeros_like(x))) << dispatch;
    EXPECT_DOUBLE_EQ(m->aux_metrics().at("moe_dropped"), 1.0);
    m->clear_aux();
    // Decoding one token at a time: a lone token always gets a place, as the sheet's decoding procedure says.
    auto y = m->forward(x.narrow(1, 0, 1));
    EXPECT_GT(y.abs().max().item<double>(), 0.0) << dispatch;
    EXPECT_DOUBLE_EQ(m->aux_metrics().at("moe_dropped"), 0.0);
  }
}

TEST(Moe, UniformRouterLosses) {  // case 5
  const int64_t E = 5;
  auto m = make({{"experts", E}, {"aux_weight", 1.0}, {"z_loss_weight", 1.0}, {"group_size", 4}});
  {
    torch::NoGradGuard ng;
    P(m, "router").zero_();
  }
  auto x = torch::randn({2, 11, kC}, torch::kDouble);
  m->forward(x);
  auto l = m->aux_losses();
  EXPECT_NEAR(l.at("moe_balance").item<double>(), 1.0, 1e-6);  // whatever f is, P = 1/E
  EXPECT_NEAR(l.at("moe_z").item<double>(), std::log(double(E)) * std::log(double(E)), 1e-6);
  // And with a router that is not uniform, the loss is alpha E sum_e f_e P_e by its definition (one group).
  auto m2 = make({{"experts", E}, {"aux_weight", 0.5}, {"group_size", 0}});
  auto x2 = torch::randn({1, 13, kC}, torch::kDouble);
  m2->forward(x2);
  auto p = torch::softmax(torch::matmul(x2[0], P(m2, "router")), -1);
  auto f = torch::one_hot(p.argmax(-1), E).to(torch::kDouble).mean(0);
  EXPECT_NEAR(m2->aux_losses().at("moe_balance").item<double>(), 0.5 * E * (f * p.mean(0)).sum().item<double>(), 1e-6);
}

TEST(Moe, PermutingExpertsChangesNothing) {  // case 6
  auto m = make({{"experts", 4}, {"top_k", 2}, {"gate", "renormalized"}, {"eval_capacity_factor", 1.0},
                 {"min_capacity", 1}, {"group_size", 5}});
  auto x = torch::randn({2, 10, kC}, torch::kDouble);
  auto y = m->forward(x);
  auto perm = torch::tensor({2, 0, 3, 1});
  {
    torch::NoGradGuard ng;
    P(m, "router").copy_(P(m, "router").index_select(1, perm).clone());
    P(m, "w1").copy_(P(m, "w1").index_select(0, perm).clone());
    P(m, "w2").copy_(P(m, "w2").index_select(0, perm).clone());
  }
  EXPECT_LT(maxdiff(m->forward(x), y), 1e-12);
}

TEST(Moe, GatherDispatchEqualsOneHotEinsum) {  // case 7, forward and gradients, with drops
  for (int64_t k : {1, 2}) {
    Json o = {{"experts", 4}, {"top_k", k}, {"capacity_factor", 0.7}, {"min_capacity", 0}, {"group_size", 6}};
    Json oe = o;
    oe["dispatch"] = "einsum";
    auto a = make(o), b = make(oe);
    a->train(), b->train();
    auto x = torch::randn({2, 12, kC}, torch::kDouble);
    auto xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
    auto ya = a->forward(xa), yb = b->forward(xb);
    EXPECT_LT(maxdiff(ya, yb), 1e-12) << k;
    auto w = torch::randn_like(ya);
    (ya * w).sum().backward();
    (yb * w).sum().backward();
    EXPECT_LT(maxdiff(xa.grad(), xb.grad()), 1e-12);
    for (const char* n : {"router", "w1", "w2"}) EXPECT_LT(maxdiff(P(a, n).grad(), P(b, n).grad()), 1e-12) << n;
    EXPECT_GT(a->aux_metrics().at("moe_dropped"), 0.0);
  }
}

TEST(Moe, SwitchGateCarriesGradientShazeerTopOneDoesNot) {  // case 8
  auto x = torch::randn({1, 6, kC}, torch::kDouble);
  for (const std::string gate : {"raw", "softmax_topk"}) {
    auto m = make({{"experts", 3}, {"gate", gate}, {"capacity_factor", 0.0}, {"aux_weight", 0.0}, {"z_loss_weight", 0.0}});
    m->train();
    m->forward(x).square().sum().backward();
    const double g = P(m, "router").grad().defined() ? P(m, "router").grad().abs().max().item<double>() : 0.0;
    if (gate == "raw") EXPECT_GT(g, 1e-6);
    else EXPECT_EQ(g, 0.0) << "softmax over one kept logit is exactly 1";
  }
}

TEST(Moe, TopTwoRenormalizedIsTheWeightedPair) {  // case 9
  auto m = make({{"experts", 5}, {"top_k", 2}, {"gate", "renormalized"}, {"eval_capacity_factor", 0.0}});
  auto x = torch::randn({2, 8, kC}, torch::kDouble);
  auto p = torch::softmax(torch::matmul(x, P(m, "router")), -1);
  auto want = torch::zeros_like(x);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 8; ++t) {
      auto pr = p[b][t].clone();
      const int64_t e1 = pr.argmax().item<int64_t>();
      const double g1 = pr[e1].item<double>();
      pr[e1] = -1.0;
      const int64_t e2 = pr.argmax().item<int64_t>();
      const double g2 = p[b][t][e2].item<double>();
      want[b][t] = g1 / (g1 + g2) * expert(m, e1, x[b][t]) + g2 / (g1 + g2) * expert(m, e2, x[b][t]);
    }
  EXPECT_LT(maxdiff(m->forward(x), want), 1e-12);
}

TEST(Moe, TopTwoCapacityPlacesEveryFirstChoiceBeforeAnySecond) {  // GShard Alg. 1's order, raw p gates
  const int64_t E = 3, S = 8, cap = 3;  // floor(1.2 * 8 / 3) = 3
  auto m = make({{"experts", E}, {"top_k", 2}, {"eval_capacity_factor", 1.2}, {"min_capacity", 0}, {"group_size", S}});
  auto x = torch::randn({2, 16, kC}, torch::kDouble);
  auto p = torch::softmax(torch::matmul(x, P(m, "router")), -1);
  auto want = torch::zeros_like(x);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t g0 = 0; g0 < 16; g0 += S) {
      std::vector<int64_t> used(E, 0);
      std::vector<std::array<int64_t, 2>> choice(S);
      for (int64_t t = 0; t < S; ++t) {
        auto order = p[b][g0 + t].argsort(0, true);
        choice[t] = {order[0].item<int64_t>(), order[1].item<int64_t>()};
      }
      for (int64_t j = 0; j < 2; ++j)  // all first choices of the group, then the second ones, in position order
        for (int64_t t = 0; t < S; ++t) {
          const int64_t e = choice[t][j];
          if (used[e]++ >= cap) continue;
          want[b][g0 + t] += p[b][g0 + t][e] * expert(m, e, x[b][g0 + t]);
        }
    }
  EXPECT_LT(maxdiff(m->forward(x), want), 1e-12);
  EXPECT_GT(m->aux_metrics().at("moe_dropped"), 0.0);
}

TEST(Moe, PaddingTakesNoCapacity) {
  auto m = make({{"experts", 2}, {"eval_capacity_factor", 1.0}, {"min_capacity", 0}, {"group_size", 0}});
  auto x = torch::randn({1, 8, kC}, torch::kDouble);
  auto pad = torch::zeros({1, 8}, torch::kBool);
  pad.narrow(1, 0, 4).fill_(true);  // left padding: the real tokens must route as if alone
  auto y = m->forward(x, pad);
  EXPECT_TRUE(torch::equal(y.narrow(1, 0, 4), torch::zeros({1, 4, kC}, torch::kDouble)));
  // Cap = floor(1.0 * 8 / 2) = 4 counts the group's nominal size; the 4 real tokens alone fit without the pads.
  auto alone = make({{"experts", 2}, {"eval_capacity_factor", 0.0}});
  EXPECT_LT(maxdiff(y.narrow(1, 4, 4), alone->forward(x.narrow(1, 4, 4))), 1e-12);
}

TEST(Moe, LossesReachTheObjectiveAndTheLog) {
  Json layers = Json::array({Json{{"name", "full"}, {"ff", {{"name", "moe"}, {"experts", 4}}}}, "full"});
  auto cfg = ModelConfig::from_json({{"vocab_size", 11}, {"d_model", 16}, {"n_heads", 2}, {"d_ff", 24},
                                     {"layers", layers}});
  EXPECT_EQ(cfg.ffns[0].name, "moe");
  EXPECT_EQ(cfg.ffns[1].name, "dense");
  auto lm = make_language_model(cfg);
  lm->train();
  lm->forward(torch::randint(0, 11, {2, 12}));
  ASSERT_TRUE(lm->aux_loss().defined());
  auto m = lm->aux_metrics();
  ASSERT_TRUE(m.count("moe_balance") && m.count("moe_z") && m.count("moe_dropped") && m.count("moe_load_max"));
  EXPECT_NEAR(lm->aux_loss().item<double>(), m.at("moe_balance") + m.at("moe_z"), 1e-6);
  // A training run logs them per step in metrics.jsonl.
  const auto dir = longseq_test::scratch_dir("moe_log");
  auto opts = longseq_test::quiet(dir);
  RunConfig rc = RunConfig::from_json(
      {{"model", {{"vocab_size", 256}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32},
                  {"ff", {{"name", "moe"}, {"experts", 4}, {"top_k", 2}}}}},
       {"data", {{"corpus", "recall"}, {"recall_bytes", 20000}, {"recall_gap", 24}}},
       {"train", {{"steps", 3}, {"batch_size", 2}, {"seq_len", 32}, {"log_every", 1}, {"eval_every", 0},
                  {"checkpoint_every", 3}, {"warmup", 0}}}});
  train_run(&rc, opts);
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  int logged = 0;
  while (std::getline(in, line)) {
    auto j = Json::parse(line);
    if (!j.contains("loss")) continue;
    ++logged;
    EXPECT_TRUE(j.contains("moe_balance") && j.contains("moe_dropped") && j.contains("moe_load_max")) << line;
    EXPECT_GE(j["moe_balance"].get<double>(), 0.0);
  }
  EXPECT_EQ(logged, 3);
}

TEST(Moe, ConfigErrorsNameTheProblem) {
  auto err = [](const Json& model) {
    try {
      ModelConfig::from_json(model);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  auto with = [](Json extra) {
    Json j = {{"vocab_size", 11}, {"d_model", 16}, {"n_heads", 2}};
    j.update(extra);
    return j;
  };
  EXPECT_NE(err(with({{"ff", "sparse"}})).find("registered feed-forward kinds: dense"), std::string::npos);
  EXPECT_NE(err(with({{"ff", {{"name", "moe"}, {"experts", 0}}}})).find("experts"), std::string::npos);
  EXPECT_NE(err(with({{"ff", "moe"}, {"reversible", true}})).find("cannot join model.reversible"), std::string::npos);
  EXPECT_NE(err(with({{"ff", "moe"}, {"block", "gss"}})).find("applies to no layer"), std::string::npos);
  EXPECT_NE(err(with({{"ff", "moe"}, {"ff_chunks", 2}})).find("cannot run over model.ff_chunks"), std::string::npos);
  // GSS-Hybrid with sparse experts: model.ff reaches the standard blocks only.
  auto hybrid = ModelConfig::from_json(with({{"ff", "moe"}, {"layers", Json::array({Json{{"block", "gss"}}, "full"})}}));
  EXPECT_EQ(hybrid.ffns[0].name, "dense");
  EXPECT_EQ(hybrid.ffns[1].name, "moe");
  FfnArgs a;
  a.d_model = kC, a.d_ff = kF;
  EXPECT_THROW(make_ffn(parse_ffn_spec(Json{{"name", "moe"}, {"experts", 2}, {"top_k", 3}}, "t"), a), Error);
}

}  // namespace moe_test
