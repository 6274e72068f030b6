// Invariant 7: every registered mixer, and every block kind that runs no mixer (gss, mega), learns a small
// synthetic task (copy) above a stated accuracy in a bounded number of steps. Labelled slow.
#include <gtest/gtest.h>

#include "longseq/blocks.h"
#include "longseq/registry.h"
#include "longseq/train.h"

using namespace longseq;

namespace learning_test {

class MixerLearns : public ::testing::TestWithParam<std::string> {};

// Sequences [x_1..x_n, SEP, x_1..x_n]: the second half is predictable only by
// attending n + 1 tokens back.
TEST_P(MixerLearns, CopyTask) {
  const bool block = GetParam().rfind("block_", 0) == 0;  // a block kind, named block_<kind>
  const std::string name = block ? GetParam().substr(6) : GetParam();
  if (block ? !find_block(name).supports_causal : !find_mixer(name).supports_causal)
    GTEST_SKIP() << "no causal mode for the decoder";
  const int64_t n = 12, V = 16, B = 32, steps = 400;
  torch::manual_seed(1);
  Json m = {{"vocab_size", V + 1}, {"d_model", 64}, {"n_heads", 4}, {"n_layers", 2}};
  m[block ? "block" : "mixer"] = name;
  DecoderLM model(ModelConfig::from_json(m));
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& p : model->named_parameters()) params.push_back({p.key(), p.value()});
  AdamW opt(params, 0.9, 0.98, 1e-9, 0.0);
  auto make = [&]() {
    auto x = torch::randint(0, V, {B, n}, torch::kLong);
    return torch::cat({x, torch::full({B, 1}, V, torch::kLong), x}, 1);
  };
  for (int64_t s = 1; s <= steps; ++s) {
    auto seq = make();
    auto logits = model->forward(seq.narrow(1, 0, 2 * n));
    auto loss = torch::nn::functional::cross_entropy(logits.narrow(1, n, n).reshape({-1, V + 1}),
                                                     seq.narrow(1, n + 1, n).reshape({-1}));
    opt.zero_grad();
    loss.backward();
    opt.step(learning_rate(s, steps, 20, 3e-3, 0.1));
  }
  torch::NoGradGuard ng;
  model->eval();
  auto seq = make();
  auto pred = model->forward(seq.narrow(1, 0, 2 * n)).narrow(1, n, n).argmax(-1);
  double acc = pred.eq(seq.narrow(1, n + 1, n)).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(acc, 0.9) << GetParam() << " copy accuracy " << acc;
}

std::vector<std::string> names() {
  std::vector<std::string> out;
  for (const auto& m : mixer_registry()) out.push_back(m.name);
  for (const auto& b : block_registry())
    if (!b.uses_mixer) out.push_back("block_" + b.name);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Registry, MixerLearns, ::testing::ValuesIn(names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace learning_test
