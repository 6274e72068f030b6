#include <gtest/gtest.h>

#include <limits>

#include "longseq/common.h"
#include "longseq/generate.h"

using namespace longseq;

namespace generate_test {

DecoderLM random_model(const std::string& positions) {
  torch::manual_seed(11);
  Json m = {{"d_model", 32}, {"n_heads", 4}, {"n_layers", 3}, {"positions", positions}, {"max_len", 64}};
  DecoderLM model(ModelConfig::from_json(m));
  model->eval();
  return model;
}

TEST(Generate, CachedDecodingEqualsRecomputation) {
  for (auto positions : {"sinusoidal", "learned"}) {
    auto model = random_model(positions);
    std::vector<int64_t> prompt = {72, 101, 108, 108, 111};
    SampleOptions cached;
    cached.temperature = 0;
    SampleOptions full = cached;
    full.use_cache = false;
    std::vector<torch::Tensor> la, lb;
    auto a = generate(*model, prompt, 20, cached, &la);
    auto b = generate(*model, prompt, 20, full, &lb);
    EXPECT_EQ(a, b) << positions;
    ASSERT_EQ(la.size(), lb.size());
    for (size_t i = 0; i < la.size(); ++i) EXPECT_TRUE(torch::allclose(la[i], lb[i], 1e-4, 1e-5)) << "step " << i;
  }
}

TEST(Generate, SamplingIsSeededAndTruncationWorks) {
  auto model = random_model("sinusoidal");
  std::vector<int64_t> prompt = {1, 2, 3};
  SampleOptions s;
  s.temperature = 1.0;
  s.seed = 5;
  auto a = generate(*model, prompt, 15, s), b = generate(*model, prompt, 15, s);
  EXPECT_EQ(a, b);
  SampleOptions greedy;
  greedy.temperature = 0;
  auto g = generate(*model, prompt, 15, greedy);
  SampleOptions k1 = s;
  k1.top_k = 1;
  EXPECT_EQ(generate(*model, prompt, 15, k1), g);
  SampleOptions p0 = s;
  p0.top_p = 1e-9;
  EXPECT_EQ(generate(*model, prompt, 15, p0), g);
}

TEST(Generate, SampleTokenFollowsTopKAndTopP) {
  auto logits = torch::log(torch::tensor({0.5, 0.3, 0.15, 0.05}, torch::kDouble));
  std::mt19937_64 rng(1);
  SampleOptions s;
  s.top_k = 2;
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 4000; ++i) counts[sample_token(logits, s, rng)]++;
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_NEAR(counts[0] / 4000.0, 0.5 / 0.8, 0.03);
  SampleOptions p;
  p.top_p = 0.9;  // keeps 0.5 + 0.3 + 0.15
  counts.assign(4, 0);
  for (int i = 0; i < 4000; ++i) counts[sample_token(logits, p, rng)]++;
  EXPECT_EQ(counts[3], 0);
  EXPECT_GT(counts[2], 0);
}

TEST(Generate, RejectsEmptyPromptAndLongerThanLearnedPositions) {
  auto model = random_model("learned");
  SampleOptions s;
  EXPECT_THROW(generate(*model, {}, 3, s), Error);
  try {
    generate(*model, std::vector<int64_t>(65, 1), 1, s);  // the prompt alone is past max_len 64
    FAIL() << "a prompt longer than the learned positions was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.max_len = 64"), std::string::npos) << e.what();
  }
}

TEST(Generate, StopsWhereLearnedPositionsEnd) {
  // Once a sample past max_len failed after the work was done (after a whole training run).
  auto model = random_model("learned");
  SampleOptions greedy;
  greedy.temperature = 0;
  for (bool cache : {true, false}) {
    greedy.use_cache = cache;
    // Positions 0..63 exist: a 60-token prompt feeds positions 0..59, the drawn tokens 60..63,
    // and the logits at position 63 give a fifth token.
    const std::vector<int64_t> prompt(60, 7);
    auto out = generate(*model, prompt, 10, greedy);
    EXPECT_EQ(out.size(), 5u) << "cache " << cache;
    EXPECT_EQ(generate(*model, prompt, 3, greedy).size(), 3u);
    // The tokens drawn are those of a generation that asked for no more than fits.
    EXPECT_EQ(out, generate(*model, prompt, 5, greedy));
    EXPECT_EQ(generate(*model, std::vector<int64_t>(64, 7), 4, greedy).size(), 1u);
  }
  // Sinusoidal positions have no end.
  EXPECT_EQ(generate(*random_model("sinusoidal"), std::vector<int64_t>(60, 7), 10, greedy).size(), 10u);
}

TEST(Generate, RefusesNonFiniteSamplingOptions) {
  auto model = random_model("sinusoidal");
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (double t : {nan, inf, -1.0}) {
    SampleOptions s;
    s.temperature = t;
    EXPECT_THROW(generate(*model, {1, 2}, 2, s), Error) << t;
  }
  for (double p : {nan, -0.1, 1.5}) {
    SampleOptions s;
    s.top_p = p;
    EXPECT_THROW(generate(*model, {1, 2}, 2, s), Error) << p;
  }
  SampleOptions k;
  k.top_k = -1;
  EXPECT_THROW(generate(*model, {1, 2}, 2, k), Error);
}

}  // namespace generate_test
