// Reformer's reversible stack and chunked feed-forward (Kitaev et al. 2020,
// sec. 3): gradients equal those of the same computation with stored
// activations, dropout included; recomputation repeats random draws.
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/layers.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"

using namespace longseq;

namespace {

Trunk make_trunk(double dropout) {
  Json j = {{"d_model", 16}, {"n_heads", 4}, {"d_ff", 32}, {"dropout", dropout}, {"reversible", true},
            {"ff_chunks", 3},
            {"layers", Json::array({"full", Json{{"name", "lsh"}, {"chunk_length", 4}, {"rehash", false}},
                                    Json{{"name", "routing"}, {"clusters", 2}, {"decay", 1.0}}, "longformer"})}};
  torch::manual_seed(21);
  Trunk t(ModelConfig::from_json(j));
  t->to(torch::kDouble);
  return t;
}

std::vector<torch::Tensor> grads_of(const std::vector<torch::Tensor>& params, const torch::Tensor& x) {
  std::vector<torch::Tensor> g = {x.grad().clone()};
  for (auto& p : params) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  return g;
}

TEST(Reversible, GradientsEqualStoredActivationsWithDropout) {
  auto trunk = make_trunk(0.1);
  trunk->train();
  auto params = trunk->parameters();
  auto x = torch::randn({2, 12, 16}, torch::kDouble).requires_grad_(true);
  auto w = torch::randn({2, 12, 16}, torch::kDouble);
  MixContext ctx;
  ctx.causal = true;
  // Reversible: nothing stored but the last outputs.
  torch::manual_seed(5);
  auto y = reversible_stack(trunk->blocks(), x, ctx, nullptr, 3);
  (y * w).sum().backward();
  auto rev = grads_of(params, x);
  trunk->zero_grad();
  x.mutable_grad() = torch::Tensor();
  // The same equations through ordinary autograd, same dropout stream.
  torch::manual_seed(5);
  torch::Tensor y1 = x, y2 = x;
  for (auto& b : trunk->blocks()) {
    y1 = y1 + b->mix_branch(y2, ctx);
    y2 = y2 + b->ff_branch(y1, 3);
  }
  auto y_ref = (y1 + y2) / 2;
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-12, 1e-12));
  (y_ref * w).sum().backward();
  auto ref = grads_of(params, x);
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_TRUE(torch::allclose(rev[i], ref[i], 1e-9, 1e-9)) << "gradient " << i << " differs";
  EXPECT_GT(ref[0].abs().sum().item<double>(), 0);
}

TEST(Reversible, RecomputationRepeatsRandomDraws) {
  auto x = torch::randn({1, 16, 16}, torch::kDouble);
  for (Json spec : {Json{{"name", "lsh"}, {"chunk_length", 4}}, Json{{"name", "routing"}, {"clusters", 4}, {"decay", 0.0}}}) {
    auto m = make_mixer(parse_mixer_spec(spec, "test"), 16, 4, 0);
    m->to(torch::kDouble);
    m->train();  // LSH draws fresh rotations; routing moves its centroids
    MixContext ctx;
    ctx.causal = true;
    auto first = m->forward(x, ctx);
    torch::Tensor again;
    {
      RecomputeScope scope;
      again = m->forward(x, ctx);
    }
    EXPECT_TRUE(torch::equal(first, again)) << spec.dump();
    EXPECT_FALSE(torch::equal(first, m->forward(x, ctx))) << spec.dump() << ": training forwards should differ";
  }
}

TEST(Reversible, ChunkedFeedForwardEqualsWhole) {
  auto trunk = make_trunk(0.0);
  auto x = torch::randn({2, 13, 16}, torch::kDouble);
  auto& b = trunk->blocks()[0];
  for (int64_t c : {2, 5, 13, 40}) EXPECT_TRUE(torch::allclose(b->ff_branch(x, c), b->ff_branch(x, 1), 1e-12, 1e-12));
}

TEST(Reversible, InferencePathEqualsTrainingPath) {
  auto trunk = make_trunk(0.0);
  trunk->eval();
  auto tokens = torch::randint(0, 256, {2, 12});
  auto y_train = trunk->forward(tokens, true, {});
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::allclose(trunk->forward(tokens, true, {}), y_train, 1e-12, 1e-12));
}

TEST(Reversible, BadChunksAreRefused) {
  EXPECT_THROW(ModelConfig::from_json({{"ff_chunks", 0}}), Error);
  EXPECT_THROW(ModelConfig::from_json({{"reversible", "yes"}}), Error);
}

}  // namespace
