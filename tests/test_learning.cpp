// Invariant 7: every registered mixer, and every block kind that runs no mixer (gss, mega), learns a small
// synthetic task (copy) above a stated accuracy in a bounded number of steps. Labelled slow.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "longseq/blocks.h"
#include "longseq/registry.h"
#include "longseq/train.h"

using namespace longseq;

namespace learning_test {

class MixerLearns : public ::testing::TestWithParam<std::string> {};

// Steps of the copy task. The state-based mechanisms learn it, but more slowly than softmax attention: Katharopoulos
// et al. 2020 (Fig. 2, the copy task) show linear attention converging to softmax's loss more slowly, and the
// feature-map attentions (performer, learned_kernel) and Luna's fixed-size packed memory behave the same here. With
// the width and the bar unchanged, measured (2026-12-07, seed 1): at 400 steps linear 0.28, performer 0.55,
// learned_kernel 0.50, luna 0.22; at 1600 linear, performer and learned_kernel pass (> 0.9), luna 0.50; at 4000 luna
// passes. lsh (shared QK: a token cannot attend to itself, so the copy's induction circuit is harder to form; the
// Reformer's duplication task, Kitaev et al. 2020 sec. 5, is trained far longer): 0.24 at 400, passes at 1600.
// So the schedule was what was wrong, not the bar: these keep it with the steps they need.
int64_t copy_steps(const std::string& name) {
  static const std::map<std::string, int64_t> slower = {
      {"linear", 1600}, {"performer", 1600}, {"learned_kernel", 1600}, {"luna", 4000}, {"lsh", 1600}};
  auto it = slower.find(name);
  return it == slower.end() ? 400 : it->second;
}

// Sequences [x_1..x_n, SEP, x_1..x_n]: the second half is predictable only by
// attending n + 1 tokens back.
TEST_P(MixerLearns, CopyTask) {
  // A block kind is named block_<kind>; a mixer's own name may start so too (block_recurrent).
  const auto& mixers = mixer_registry();
  const bool block = GetParam().rfind("block_", 0) == 0 &&
                     std::none_of(mixers.begin(), mixers.end(), [](const MixerInfo& m) { return m.name == GetParam(); });
  const std::string name = block ? GetParam().substr(6) : GetParam();
  if (block ? !find_block(name).supports_causal : !find_mixer(name).supports_causal)
    GTEST_SKIP() << "no causal mode for the decoder";
  const int64_t n = 12, V = 16, B = 32, steps = copy_steps(name);
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
