#include <gtest/gtest.h>

#include "longseq/common.h"
#include "longseq/generate.h"

using namespace longseq;

namespace {

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

TEST(Generate, RejectsEmptyPromptAndLearnedOverflow) {
  auto model = random_model("learned");
  SampleOptions s;
  EXPECT_THROW(generate(*model, {}, 3, s), Error);
  EXPECT_THROW(generate(*model, std::vector<int64_t>(60, 1), 10, s), Error);  // past max_len 64
}

}  // namespace
