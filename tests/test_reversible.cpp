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
#include "longseq/safetensors.h"

using namespace longseq;

namespace reversible_test {

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
  auto y_ref = longseq_test::reversible_by_autograd(trunk->blocks(), x, ctx, 3);
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-12, 1e-12));
  (y_ref * w).sum().backward();
  auto ref = grads_of(params, x);
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_TRUE(torch::allclose(rev[i], ref[i], 1e-9, 1e-9)) << "gradient " << i << " differs";
  EXPECT_GT(ref[0].abs().sum().item<double>(), 0);
}

// Mixers whose training forwards draw (or move centroids), in a regime where they do at d_model 16.
std::vector<Json> drawing_mixers(bool causal) {
  std::vector<Json> specs = {Json{{"name", "lsh"}, {"chunk_length", 4}},
                             Json{{"name", "routing"}, {"clusters", 2}, {"decay", 0.5}},
                             Json{{"name", "performer"}, {"features", 8}, {"redraw", 1}},
                             Json{{"name", "learned_kernel"}, {"features", 8}, {"redraw", 1}}};
  if (!causal) specs.push_back(Json{{"name", "yoso"}, {"hash_bits", 4}, {"hashes", 4}});  // bidirectional only
  return specs;
}

Trunk make_drawing_trunk(bool causal) {
  auto layers = Json::array();
  for (auto& spec : drawing_mixers(true)) layers.push_back(spec);  // a decoder LM's trunk: yoso has no causal form
  Json j = {{"d_model", 16}, {"n_heads", 4}, {"d_ff", 32}, {"dropout", 0.1}, {"reversible", true},
            {"ff_chunks", 2}, {"layers", layers}};
  torch::manual_seed(33);
  Trunk t(ModelConfig::from_json(j));
  t->to(torch::kDouble);
  t->train();
  return t;
}

torch::Tensor plain_stack(Trunk& trunk, const torch::Tensor& x, MixContext& ctx) {
  return longseq_test::reversible_by_autograd(trunk->blocks(), x, ctx, 2);
}

std::vector<torch::Tensor> param_grads(Trunk& trunk) {
  std::vector<torch::Tensor> g;
  for (auto& p : trunk->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  return g;
}

// Two training forwards, then their backwards in reverse order: each backward must recompute its own forward
// (its rotations, centroids, features, dropout masks), not the latest one.
TEST(Reversible, TwoForwardsThenTwoBackwardsEqualStoredActivations) {
  for (bool causal : {true, false}) {
    auto rev = make_drawing_trunk(causal), ref = make_drawing_trunk(causal);
    MixContext ctx;
    ctx.causal = causal;
    auto xa = torch::randn({2, 12, 16}, torch::kDouble), xb = torch::randn({2, 12, 16}, torch::kDouble);
    auto wa = torch::randn({2, 12, 16}, torch::kDouble), wb = torch::randn({2, 12, 16}, torch::kDouble);
    auto ra = xa.clone().requires_grad_(true), rb = xb.clone().requires_grad_(true);
    torch::manual_seed(5);
    auto ya = reversible_stack(rev->blocks(), ra, ctx, nullptr, 2);
    auto yb = reversible_stack(rev->blocks(), rb, ctx, nullptr, 2);
    (yb * wb).sum().backward();
    (ya * wa).sum().backward();
    auto sa = xa.clone().requires_grad_(true), sb = xb.clone().requires_grad_(true);
    torch::manual_seed(5);
    auto za = plain_stack(ref, sa, ctx);
    auto zb = plain_stack(ref, sb, ctx);
    EXPECT_TRUE(torch::allclose(ya, za, 1e-12, 1e-12)) << "causal " << causal;
    EXPECT_TRUE(torch::allclose(yb, zb, 1e-12, 1e-12)) << "causal " << causal;
    ((za * wa).sum() + (zb * wb).sum()).backward();
    EXPECT_TRUE(torch::allclose(ra.grad(), sa.grad(), 1e-9, 1e-9)) << "causal " << causal << ": dx of the first";
    EXPECT_TRUE(torch::allclose(rb.grad(), sb.grad(), 1e-9, 1e-9)) << "causal " << causal << ": dx of the second";
    auto g_rev = param_grads(rev), g_ref = param_grads(ref);
    auto names = rev->named_parameters().keys();
    for (size_t i = 0; i < g_ref.size(); ++i)
      EXPECT_TRUE(torch::allclose(g_rev[i], g_ref[i], 1e-9, 1e-9)) << "causal " << causal << ": " << names[i];
  }
}

// retain_graph: the graph's record survives its first backward, and a second one adds the same gradients.
TEST(Reversible, RetainedGraphBackwardsTwice) {
  auto rev = make_drawing_trunk(true), ref = make_drawing_trunk(true);
  MixContext ctx;
  ctx.causal = true;
  auto x = torch::randn({2, 12, 16}, torch::kDouble), w = torch::randn({2, 12, 16}, torch::kDouble);
  auto rx = x.clone().requires_grad_(true), sx = x.clone().requires_grad_(true);
  torch::manual_seed(6);
  auto loss = (reversible_stack(rev->blocks(), rx, ctx, nullptr, 2) * w).sum();
  loss.backward({}, /*retain_graph=*/true);
  loss.backward();
  torch::manual_seed(6);
  (plain_stack(ref, sx, ctx) * w).sum().backward();
  EXPECT_TRUE(torch::allclose(rx.grad(), 2 * sx.grad(), 1e-9, 1e-9));
  auto g_rev = param_grads(rev), g_ref = param_grads(ref);
  for (size_t i = 0; i < g_ref.size(); ++i) EXPECT_TRUE(torch::allclose(g_rev[i], 2 * g_ref[i], 1e-9, 1e-9)) << i;
}

// A training forward whose graph is dropped without a backward frees what it kept (the record holds the
// context, so the padding mask's reference count shows a leaked record).
TEST(Reversible, ForwardWithoutBackwardFreesItsRecord) {
  auto trunk = make_drawing_trunk(true);
  MixContext ctx;
  ctx.causal = true;
  ctx.padding_mask = torch::zeros({2, 12}, torch::kBool);
  const auto refs = ctx.padding_mask.use_count();
  const auto records = live_forward_records();
  for (int i = 0; i < 3; ++i) {
    auto x = torch::randn({2, 12, 16}, torch::kDouble).requires_grad_(true);
    auto y = reversible_stack(trunk->blocks(), x, ctx, nullptr, 2);
    EXPECT_GT(live_forward_records(), records);
  }
  EXPECT_EQ(ctx.padding_mask.use_count(), refs);
  EXPECT_EQ(live_forward_records(), records);
}

Mixer make_double_mixer(const Json& spec) {
  torch::manual_seed(8);  // routing's centroids start from the global generator
  auto m = make_mixer(parse_mixer_spec(spec, "test"), 16, 4, 0);
  m->to(torch::kDouble);
  m->train();  // fresh draws (or centroid moves) at every forward
  return m;
}

// Two recorded forwards replayed in either order; the replays change nothing the next forward sees.
TEST(Reversible, RecomputationRepeatsItsOwnForwardsDraws) {
  auto x = torch::randn({1, 16, 16}, torch::kDouble);
  for (bool causal : {true, false}) {
    for (const Json& spec : drawing_mixers(causal)) {
      auto m = make_double_mixer(spec), twin = make_double_mixer(spec);
      MixContext ctx;
      ctx.causal = causal;
      ForwardRecord rec[2];
      torch::Tensor out[2];
      for (int i = 0; i < 2; ++i) {
        RecordScope scope(&rec[i], false);
        EXPECT_FALSE(in_recompute());
        out[i] = m->forward(x, ctx);
      }
      EXPECT_FALSE(torch::equal(out[0], out[1])) << spec.dump() << ": training forwards should differ";
      for (int i : {1, 0}) {
        RecordScope scope(&rec[i], true);
        EXPECT_TRUE(in_recompute());
        EXPECT_TRUE(torch::equal(m->forward(x, ctx), out[i])) << spec.dump() << ", forward " << i;
      }
      EXPECT_FALSE(in_recompute());
      for (int i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(twin->forward(x, ctx), out[i])) << spec.dump();
      EXPECT_TRUE(torch::equal(m->forward(x, ctx), twin->forward(x, ctx))) << spec.dump() << ": third forward";
    }
  }
}

TEST(Reversible, RecomputationWithoutItsRecordIsRefused) {
  auto m = make_double_mixer(drawing_mixers(true)[0]);
  MixContext ctx;
  ctx.causal = true;
  ForwardRecord empty;
  RecordScope scope(&empty, true);
  EXPECT_THROW(m->forward(torch::randn({1, 16, 16}, torch::kDouble), ctx), Error);
}

// Everything that decides a future draw is saved with the module: after a save and load, a fresh module's
// next training forwards equal those of the one that kept running.
TEST(MixerDrawState, SavedWithTheModule) {
  auto x = torch::randn({1, 16, 16});
  for (bool causal : {true, false}) {
    for (Json spec : drawing_mixers(causal)) {
      if (spec.contains("redraw")) spec["redraw"] = 2;  // a schedule the restored module must keep
      auto a = make_mixer(parse_mixer_spec(spec, "test"), 16, 4, 0);
      a->train();
      MixContext ctx;
      ctx.causal = causal;
      for (int i = 0; i < 3; ++i) a->forward(x, ctx);
      auto bytes = safetensors_serialize(module_tensors(*a));
      torch::manual_seed(99);  // the restored module must not depend on the global generator
      auto b = make_mixer(parse_mixer_spec(spec, "test"), 16, 4, 0);
      b->train();
      load_module_tensors(*b, safetensors_parse(bytes, "test"), "test");
      for (int i = 0; i < 3; ++i) {
        auto ya = a->forward(x, ctx), yb = b->forward(x, ctx);
        EXPECT_TRUE(torch::equal(ya, yb)) << spec.dump() << " causal " << causal << ", forward " << 4 + i;
      }
    }
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

}  // namespace reversible_test
