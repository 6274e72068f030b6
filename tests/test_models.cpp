#include <gtest/gtest.h>

#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/attention_reference.h"
#include "longseq/models.h"
#include "longseq/runtime.h"
#include "longseq/registry.h"

using namespace longseq;

namespace models_test {

// softmax(q k^T / sqrt(D)) v written as loops: the oracle of the oracle.
torch::Tensor naive_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal,
                              const torch::Tensor& pad) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), D = q.size(3);
  auto out = torch::zeros_like(q);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> w(S, 0.0);
        double mx = -1e300;
        std::vector<bool> ok(S);
        for (int64_t s = 0; s < S; ++s) {
          ok[s] = !(causal && s > t + S - T) && !(pad.defined() && pad[b][s].item<bool>());
          if (!ok[s]) continue;
          w[s] = (q[b][h][t] * k[b][h][s]).sum().item<double>() / std::sqrt(double(D));
          mx = std::max(mx, w[s]);
        }
        double z = 0;
        for (int64_t s = 0; s < S; ++s) z += ok[s] ? (w[s] = std::exp(w[s] - mx)) : (w[s] = 0);
        for (int64_t s = 0; s < S; ++s)
          if (ok[s]) out[b][h][t] += v[b][h][s] * (w[s] / z);
      }
  return out;
}

TEST(AttentionReference, MatchesLoopsCausalPaddedAndOffset) {
  auto opt = torch::TensorOptions().dtype(torch::kDouble);
  auto q = torch::randn({2, 2, 5, 4}, opt), k = torch::randn({2, 2, 7, 4}, opt), v = torch::randn({2, 2, 7, 4}, opt);
  auto pad = torch::zeros({2, 7}, torch::kBool);
  pad[1][0] = true;
  pad[0][6] = true;
  for (bool causal : {false, true}) {
    AttentionMask m{causal, pad};
    EXPECT_TRUE(torch::allclose(attention_reference(q, k, v, m), naive_attention(q, k, v, causal, pad), 1e-10, 1e-10))
        << "causal=" << causal;
  }
}

TEST(AttentionReference, FullyMaskedRowsStayFiniteAndShapesAreChecked) {
  auto q = torch::randn({1, 1, 3, 4}), k = torch::randn({1, 1, 3, 4});
  auto pad = torch::ones({1, 3}, torch::kBool);
  EXPECT_TRUE(torch::isfinite(attention_reference(q, k, k, {false, pad})).all().item<bool>());
  EXPECT_THROW(attention_reference(q, k, torch::randn({1, 1, 2, 4}), {}), c10::Error);
  EXPECT_THROW(attention_reference(q, k, k, {false, torch::zeros({1, 5}, torch::kBool)}), c10::Error);
}

ModelConfig small(Json extra = Json::object()) {
  Json m = {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}};
  m.update(extra);
  return ModelConfig::from_json(m);
}

TEST(EncoderClassifier, PaddingDoesNotChangeLogitsAndPoolingWorks) {
  for (auto pooling : {"mean", "first"}) {
    torch::manual_seed(3);
    EncoderClassifier model(small({{"type", "encoder_classifier"}, {"num_classes", 3}, {"pooling", pooling}}));
    model->eval();
    auto tokens = torch::randint(0, 256, {2, 9}, torch::kLong);
    auto pad = torch::zeros({2, 9}, torch::kBool);
    pad[0].narrow(0, 6, 3).fill_(true);
    auto y = model->forward(tokens, pad);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3}));
    auto tokens2 = tokens.clone();
    tokens2[0].narrow(0, 6, 3).fill_(7);
    EXPECT_TRUE(torch::allclose(model->forward(tokens2, pad), y, 1e-5, 1e-6)) << pooling;
    auto unpadded = model->forward(tokens.narrow(1, 0, 6).narrow(0, 0, 1));
    EXPECT_TRUE(torch::allclose(unpadded[0], y[0], 1e-4, 1e-5)) << pooling;
  }
}

TEST(DecoderLM, LogitsShapeTiedWeightsAndPerLayerMixers) {
  auto cfg = small({{"layers", Json::array({"full", Json{{"name", "full"}, {"bias", false}}})}});
  DecoderLM model(cfg);
  auto y = model->forward(torch::randint(0, 256, {3, 10}, torch::kLong));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 10, 256}));
  int64_t bias_count = 0;
  for (const auto& p : model->named_parameters())
    if (p.key().find("block1.mixer") != std::string::npos && p.key().find("bias") != std::string::npos) ++bias_count;
  EXPECT_EQ(bias_count, 0);
  auto untied = small({{"tie_embeddings", false}});
  EXPECT_GT(DecoderLM(untied)->parameters().size(), model->parameters().size());
}

TEST(Positions, SinusoidalMatchesFormula) {
  auto table = sinusoidal_positions(torch::tensor({0, 3}, torch::kLong), 6);
  for (int64_t i = 0; i < 3; ++i) {
    double freq = std::pow(10000.0, -2.0 * i / 6);
    EXPECT_NEAR(table[1][2 * i].item<double>(), std::sin(3 * freq), 1e-6);
    EXPECT_NEAR(table[1][2 * i + 1].item<double>(), std::cos(3 * freq), 1e-6);
  }
}

TEST(Runtime, ThreadsDefaultToCoresAndOverride) {
  EXPECT_EQ(configure_threads(1), 1);
  EXPECT_EQ(torch::get_num_threads(), 1);
  EXPECT_GE(configure_threads(0), 1);
  configure_threads(2);
}

TEST(Runtime, BlasCheckMeasuresThroughput) {
  auto r = check_blas();
  EXPECT_GT(r.gflops, 0);
  EXPECT_EQ(r.slow, !r.message.empty());
}


// Every registered mixer builds into the models it has a form for, trains (finite loss and
// gradients through the whole trunk) and, in the encoder, ignores what padding holds.
TEST(Models, EveryMixerRunsInTheModelsItHasAFormFor) {
  for (const auto& info : mixer_registry()) {
    if (info.supports_bidirectional) {
      torch::manual_seed(5);
      EncoderClassifier model(small({{"type", "encoder_classifier"}, {"num_classes", 3}, {"mixer", info.name}}));
      model->eval();
      auto tokens = torch::randint(0, 256, {2, 12}, torch::kLong);
      auto pad = torch::zeros({2, 12}, torch::kBool);
      pad[1].narrow(0, 8, 4).fill_(true);
      auto y = model->forward(tokens, pad);
      auto tokens2 = tokens.clone();
      tokens2[1].narrow(0, 8, 4).fill_(9);
      EXPECT_TRUE(torch::allclose(model->forward(tokens2, pad), y, 1e-5, 1e-5)) << info.name;
      y.pow(2).sum().backward();
      int64_t with_grad = 0;
      for (const auto& p : model->parameters()) with_grad += p.grad().defined() && p.grad().abs().sum().item<double>() > 0;
      EXPECT_GT(with_grad, 4) << info.name;
    } else {
      EXPECT_THROW(small({{"type", "encoder_classifier"}, {"mixer", info.name}}), Error) << info.name;
    }
    if (info.supports_causal) {
      torch::manual_seed(5);
      DecoderLM model(small({{"mixer", info.name}}));
      auto logits = model->forward(torch::randint(0, 256, {2, 10}, torch::kLong));
      ASSERT_TRUE(torch::isfinite(logits).all().item<bool>()) << info.name;
      logits.logsumexp(-1).mean().backward();
    } else {
      try {
        small({{"mixer", info.name}});
        ADD_FAILURE() << info.name << " accepted in the causal decoder";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("causal"), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace models_test
