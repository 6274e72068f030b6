// Figures that mean what they say: evaluation that covers the split (or a
// sliding window) as stated, weight decay on weight matrices only, and the
// bench's median and per-child peak memory.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "longseq/bench.h"
#include "longseq/common.h"
#include "longseq/train.h"

using namespace longseq;

namespace figures_test {

DecoderLM tiny_lm(const Json& mixer = "full") {
  torch::manual_seed(5);
  Json m = {{"vocab_size", 256}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}, {"mixer", mixer}};
  return DecoderLM(ModelConfig::from_json(m));
}

// Brute force from the definition: each target t is predicted, in a forward
// of its own, from tokens[a, t) where a is the start of the first window (0,
// s, 2s, ..., the last moved back to end at the split's end) that reaches t.
double brute_force_nats(DecoderLMImpl& model, const torch::Tensor& tokens, int64_t T, int64_t s) {
  torch::NoGradGuard ng;
  model.eval();
  const int64_t N = tokens.size(0), last = N - 1 - T;
  std::vector<int64_t> starts;
  for (int64_t a = 0; a < last; a += s) starts.push_back(a);
  starts.push_back(last);
  auto x = tokens.to(torch::kLong);
  double nats = 0;
  for (int64_t t = 1; t < N; ++t) {
    int64_t a = -1;
    for (int64_t st : starts)
      if (st + T >= t) {
        a = st;
        break;
      }
    EXPECT_GE(t - a, std::min(t, T - s + 1));
    auto logits = model.forward(x.narrow(0, a, t - a).unsqueeze(0));  // [1, t - a, V]
    nats -= torch::log_softmax(logits[0][t - a - 1], -1)[x[t].item<int64_t>()].item<double>();
  }
  return nats;
}

TEST(Evaluate, WholeSplitAndSlidingWindowMatchBruteForce) {
  auto model = tiny_lm();
  TokenSplit split;
  split.tokens = torch::randint(0, 256, {53}, torch::kInt32);
  split.bytes = split.text_bytes = 53;
  const int64_t T = 8;
  for (int64_t s : {0, 8, 5, 3, 1})
    for (int64_t B : {1, 3}) {
      auto r = evaluate_lm(*model, split, B, T, 0, s);
      EXPECT_EQ(r.tokens, 52) << "stride " << s;
      EXPECT_TRUE(r.whole());
      EXPECT_EQ(r.stride, s > 0 ? s : T);
      const double want = brute_force_nats(*model, split.tokens, T, s > 0 ? s : T);
      EXPECT_NEAR(r.loss * r.tokens, want, 1e-4 * want) << "stride " << s << " batch " << B;
      EXPECT_NEAR(r.bpb, want / 52 / std::log(2.0), 1e-4);  // one byte per token
      EXPECT_NE(r.method().find("whole split"), std::string::npos) << r.method();
      if (s > 0 && s < T) EXPECT_NE(r.method().find("at least " + std::to_string(T - s + 1)), std::string::npos);
    }
  auto prefix = evaluate_lm(*model, split, 2, T, 1, 0);  // one batch of two windows
  EXPECT_EQ(prefix.tokens, 16);
  EXPECT_FALSE(prefix.whole());
  EXPECT_NE(prefix.method().find("prefix"), std::string::npos) << prefix.method();
}

// A config may ask for the whole split and for a stride; a stride beyond the window is refused.
TEST(Evaluate, ConfigKeys) {
  Json j = {{"train", {{"eval_batches", 0}, {"eval_stride", 128}, {"seq_len", 512}}}};
  auto c = RunConfig::from_json(j);
  EXPECT_EQ(c.train["eval_batches"].get<int64_t>(), 0);
  EXPECT_EQ(c.train["eval_stride"].get<int64_t>(), 128);
  j["train"]["eval_stride"] = 513;
  try {
    RunConfig::from_json(j);
    FAIL() << "a stride beyond seq_len was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("eval_stride = 513"), std::string::npos) << e.what();
  }
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Weight decay pulls the weight matrices of projections and embeddings toward
// zero and nothing else: not biases or norms, and not the mixers' own learned
// quantities (kernel_rpe's bias, learned_kernel's mean, log-variance and the
// factor that starts at the identity, mgk's priors, luna's packed sequence).
TEST(WeightDecay, OnlyProjectionAndEmbeddingWeightsDecay) {
  Json layers = Json::array({"kernel_rpe", {{"name", "learned_kernel"}, {"kernel", "gmm_rks"}},
                             {{"name", "learned_kernel"}, {"kernel", "gmm_prf"}}, {{"name", "mgk"}, {"learn_prior", true}},
                             "luna", "full"});
  torch::manual_seed(3);
  Json m = {{"vocab_size", 64}, {"d_model", 16}, {"n_heads", 2}, {"d_ff", 32}, {"layers", layers},
            {"positions", "learned"}, {"max_len", 32}, {"tie_embeddings", false}};
  DecoderLM model(ModelConfig::from_json(m));
  const auto decayed = decayed_parameters(*model);
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& p : model->named_parameters()) params.push_back({p.key(), p.value()});

  // The step: zero gradients, so a parameter moves only by decay.
  const double lr = 0.1, wd = 0.5;
  std::vector<torch::Tensor> before;
  for (auto& p : params) {
    before.push_back(p.second.detach().clone());
    p.second.mutable_grad() = torch::zeros_like(p.second);
  }
  AdamW opt(params, 0.9, 0.999, 1e-8, wd, decayed);
  opt.step(lr);

  std::set<std::string> must_not = {"rpe", "mean", "factor", "log_var", "prior", "packed"}, seen;
  int linear_weights = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i].first;
    const std::string leaf = name.substr(name.find_last_of('.') + 1);
    const bool moved = !torch::equal(params[i].second, before[i]);
    // Linear and Embedding weights: every projection (qkv, out, q, k, v, pack_*), the feed-forward, the
    // token and position embeddings, the output head. Biases and LayerNorm parameters end in bias/weight
    // of a norm ("ln_", "_norm").
    const bool norm = name.find("ln_") != std::string::npos || name.find("norm") != std::string::npos;
    const bool matrix_weight = leaf == "weight" && !norm;
    if (must_not.count(leaf)) seen.insert(leaf);
    if (matrix_weight) {
      ++linear_weights;
      EXPECT_TRUE(decayed.count(name)) << name;
      EXPECT_TRUE(torch::allclose(params[i].second, before[i] * (1 - lr * wd))) << name << " was not decayed";
    } else {
      EXPECT_FALSE(decayed.count(name)) << name;
      EXPECT_FALSE(moved) << name << " was decayed";
    }
  }
  EXPECT_EQ(seen, must_not);  // the model holds every parameter the rule is about
  EXPECT_GT(linear_weights, 20);
  EXPECT_TRUE(decayed.count("trunk.embed.weight"));
  EXPECT_TRUE(decayed.count("trunk.pos.weight"));
  EXPECT_TRUE(decayed.count("head.weight"));
}

// A module says which of its own parameters decay.
struct ChoosyImpl : torch::nn::Module, WeightDecayChoice {
  ChoosyImpl() {
    register_parameter("scale", torch::ones({4}));
    register_parameter("table", torch::ones({4, 4}));
    register_module("proj", torch::nn::Linear(4, 4));
  }
  bool decays(const std::string& name) const override { return name == "scale"; }
};
TORCH_MODULE(Choosy);

TEST(WeightDecay, AModuleCanChooseItsOwnParameters) {
  Choosy m;
  EXPECT_EQ(decayed_parameters(*m), (std::set<std::string>{"scale", "proj.weight"}));
  EXPECT_THROW(AdamW({{"a", torch::ones({2})}}, 0.9, 0.999, 1e-8, 0.1, {"b"}), Error);  // a name it does not hold
}

TEST(Bench, MedianOfAnEvenCountIsTheMeanOfTheMiddleTwo) {
  EXPECT_DOUBLE_EQ(median({4.0, 1.0, 3.0, 2.0}), 2.5);
  EXPECT_DOUBLE_EQ(median({1.0, 10.0}), 5.5);
  EXPECT_DOUBLE_EQ(median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_DOUBLE_EQ(median({7.0}), 7.0);
  EXPECT_DOUBLE_EQ(median({}), 0.0);
}

// A bench child reports its own peak: not one its process reached before the
// configuration began (a posix_spawn child's ru_maxrss starts at the parent's peak).
TEST(Bench, PeakMemoryIsTheConfigurationsOwn) {
  const size_t big = size_t{512} << 20;
  {
    std::vector<char> block(big);
    std::memset(block.data(), 1, big);  // resident now; freed (unmapped) at the end of the scope
    EXPECT_GT(block[big / 2], 0);
  }
  const double inflated = peak_memory_mib();
  ASSERT_GT(inflated, 512.0);
  Json spec = {{"B", 1}, {"H", 1}, {"D", 8}, {"T", 16}, {"causal", true}, {"pass", "fwd"}, {"repeats", 2},
               {"core", true}, {"kernel", "reference"}, {"mixer", "full"}};
  Json res = Json::parse(bench_one(spec));
  ASSERT_TRUE(res.value("ok", false)) << res.dump();
  ASSERT_TRUE(res.contains("peak_mib")) << res.dump();
  const double peak = res["peak_mib"];
  EXPECT_LT(peak, inflated - 400.0) << "the configuration's peak carries the earlier one";
  EXPECT_GT(peak, 0.0);
  EXPECT_EQ(res["times"].size(), 2u);
  EXPECT_DOUBLE_EQ(res["median_s"].get<double>(), median(res["times"].get<std::vector<double>>()));
}

}  // namespace figures_test
