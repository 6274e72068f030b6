// Universal Transformer depth recurrence (model.recurrence_steps): ../shared/mechanisms/universal_transformer.md,
// exact cases 1 (S steps of one block = an S-layer stack sharing its weights, the coordinate embedding before every
// layer) and 7 (causality), plus decoding through each step's caches and the shared parameters.
#include <gtest/gtest.h>

#include <cmath>

#include "longseq/common.h"
#include "longseq/models.h"

namespace universal_test {

using namespace longseq;

constexpr int64_t kC = 16, kV = 11, kT = 9, kS = 3;

ModelConfig config(int64_t steps, const std::string& positions = "sinusoidal") {
  return ModelConfig::from_json({{"vocab_size", kV}, {"d_model", kC}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32},
                                 {"positions", positions}, {"recurrence_steps", steps}});
}

// The sinusoid of sec. 3.5 of Vaswani et al. at position p, interleaved: [2j] sin, [2j + 1] cos of p / 10000^(2j/C).
torch::Tensor signal(double p) {
  auto out = torch::zeros({kC});
  for (int64_t j = 0; 2 * j < kC; ++j) {
    const double a = p / std::pow(10000.0, 2.0 * j / kC);
    out[2 * j] = std::sin(a);
    if (2 * j + 1 < kC) out[2 * j + 1] = std::cos(a);
  }
  return out;
}

torch::Tensor param(torch::nn::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters())
    if (p.key() == name) return p.value();
  throw Error("no parameter " + name);
}

TEST(Universal, StepsOfOneBlockEqualASharedStackWithCoordinatesBeforeEachLayer) {  // case 1
  torch::manual_seed(3);
  DecoderLM lm(config(kS));
  lm->eval();
  auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
  auto got = lm->forward(tokens);
  // By hand: embeddings times sqrt(C), then S times: + P(i) + P(t), the block; the final LayerNorm; the tied output.
  torch::NoGradGuard ng;
  auto E = param(*lm, "trunk.embed.weight");
  auto x = E.index_select(0, tokens.flatten()).view({2, kT, kC}) * std::sqrt(double(kC));
  auto where = torch::stack([&] {
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < kT; ++i) rows.push_back(signal(double(i)));
    return rows;
  }());
  Trunk probe(config(0));  // a trunk of the same single block: load the recurrent model's weights into it
  for (auto& p : probe->named_parameters()) p.value().copy_(param(*lm, "trunk." + p.key()));
  MixContext ctx;
  ctx.causal = true;
  for (int64_t t = 1; t <= kS; ++t) x = probe->blocks()[0]->forward(x + where + signal(double(t)), ctx);
  auto h = torch::layer_norm(x, {kC}, param(*lm, "trunk.ln_final.weight"), param(*lm, "trunk.ln_final.bias"));
  auto expect = torch::matmul(h, E.t());
  EXPECT_TRUE(torch::allclose(got, expect, 1e-5, 1e-5)) << (got - expect).abs().max().item<double>();
  // One step of the same weights differs: the recurrence does something.
  DecoderLM once(config(1));
  for (auto& p : once->named_parameters()) p.value().copy_(param(*lm, p.key()));
  EXPECT_GT((got - once->forward(tokens)).abs().max().item<double>(), 1e-3);
}

TEST(Universal, ParametersAreThoseOfOneBlock) {
  auto count = [](torch::nn::Module& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    return n;
  };
  DecoderLM a(config(kS)), b(config(0));
  EXPECT_EQ(count(*a), count(*b));
}

TEST(Universal, CausalAndDecodesThroughEveryStepsCaches) {  // case 7, and streaming = whole
  torch::manual_seed(5);
  for (const std::string positions : {"sinusoidal", "none"}) {
    DecoderLM lm(config(kS, positions));
    lm->eval();
    torch::NoGradGuard ng;
    auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
    auto whole = lm->forward(tokens);
    auto changed = tokens.clone();
    changed.narrow(1, 6, 3).random_(kV);
    EXPECT_TRUE(torch::allclose(lm->forward(changed).narrow(1, 0, 6), whole.narrow(1, 0, 6), 1e-6, 1e-6)) << positions;
    auto state = lm->initial_state(2);
    EXPECT_EQ(state.layers.size(), static_cast<size_t>(kS));
    std::vector<torch::Tensor> parts;
    for (int64_t t0 : {0, 4, 5, 8}) {
      const int64_t n = (t0 == 0 ? 4 : t0 == 4 ? 1 : t0 == 5 ? 3 : 1);
      parts.push_back(lm->forward(tokens.narrow(1, t0, n), &state));
    }
    EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-5, 1e-5)) << positions;
  }
}

ModelConfig act_config(int64_t cap) {
  return ModelConfig::from_json({{"vocab_size", kV}, {"d_model", kC}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32},
                                 {"recurrence_steps", cap}, {"act", true}, {"act_loss_weight", 0.5}});
}

TEST(Universal, ActWithTheInitialHaltingUnitTakesTwoStepsWithTheRemainder) {  // case 3 inside the model
  torch::manual_seed(9);
  DecoderLM lm(act_config(6));
  lm->eval();
  torch::NoGradGuard ng;
  param(*lm, "trunk.halting.weight").zero_();  // p = sigmoid(b_h) = sigmoid(1) everywhere
  auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
  auto got = lm->forward(tokens);
  const double p = 1.0 / (1.0 + std::exp(-1.0)), R = 1.0 - p;
  EXPECT_NEAR(lm->ponder().item<double>(), 2.0 + R, 1e-6);
  EXPECT_NEAR(lm->aux_loss().item<double>(), 0.5 * (2.0 + R), 1e-6);
  auto E = param(*lm, "trunk.embed.weight");
  auto x = E.index_select(0, tokens.flatten()).view({2, kT, kC}) * std::sqrt(double(kC));
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < kT; ++i) rows.push_back(signal(double(i)));
  auto where = torch::stack(rows);
  Trunk probe(config(0));
  for (auto& q : probe->named_parameters()) q.value().copy_(param(*lm, "trunk." + q.key()));
  MixContext ctx;
  ctx.causal = true;
  auto y1 = probe->blocks()[0]->forward(x + where + signal(1.0), ctx);
  auto y2 = probe->blocks()[0]->forward(y1 + where + signal(2.0), ctx);
  auto out = R * y2 + (1 - R) * (p * y1);  // the interpolating update: 0.2689 y2 + 0.5345 y1
  auto h = torch::layer_norm(out, {kC}, param(*lm, "trunk.ln_final.weight"), param(*lm, "trunk.ln_final.bias"));
  auto expect = torch::matmul(h, E.t());
  EXPECT_TRUE(torch::allclose(got, expect, 1e-5, 1e-5)) << (got - expect).abs().max().item<double>();
}

TEST(Universal, ActIsCausalAndDecodesAsTheWholeSequence) {  // case 7 with halting, and every step's caches
  torch::manual_seed(11);
  DecoderLM lm(act_config(5));
  lm->eval();
  torch::NoGradGuard ng;
  param(*lm, "trunk.halting.weight").normal_(0.0, 0.5);  // halting that varies by position
  auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
  auto whole = lm->forward(tokens);
  auto changed = tokens.clone();
  changed.narrow(1, 5, 4).random_(kV);
  EXPECT_TRUE(torch::allclose(lm->forward(changed).narrow(1, 0, 5), whole.narrow(1, 0, 5), 1e-6, 1e-6));
  auto state = lm->initial_state(2);
  std::vector<torch::Tensor> parts;
  for (int64_t t = 0; t < kT; ++t) parts.push_back(lm->forward(tokens.narrow(1, t, 1), &state));
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-5, 1e-5))
      << (torch::cat(parts, 1) - whole).abs().max().item<double>();
}

TEST(Universal, ConfigsItCannotServeAreErrors) {
  EXPECT_THROW(ModelConfig::from_json({{"act", true}}), Error);  // ACT needs a recurrence to halt in
  EXPECT_THROW(ModelConfig::from_json({{"recurrence_steps", 2}, {"reversible", true}}), Error);
  EXPECT_THROW(ModelConfig::from_json({{"recurrence_steps", 2}, {"positions", "learned"}}), Error);
  EXPECT_THROW(ModelConfig::from_json({{"recurrence_steps", -1}}), Error);
}

}  // namespace universal_test
