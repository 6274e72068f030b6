// The invariants of DESIGN.md, run over every registered mixer: a mechanism
// is covered the moment it is registered.
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/registry.h"

using namespace longseq;

namespace {

constexpr int64_t kC = 16, kH = 4;

Mixer build(const MixerInfo& info, bool strict_causal, torch::ScalarType dtype) {
  Json spec = strict_causal ? info.strictly_causal_options : Json::object();
  spec["name"] = info.name;
  torch::manual_seed(7);
  auto m = make_mixer(parse_mixer_spec(spec, "test"), kC, kH, 0);
  m->to(dtype);
  m->eval();  // dropout off
  return m;
}

std::vector<std::string> mixer_names() {
  std::vector<std::string> names;
  for (const auto& m : mixer_registry()) names.push_back(m.name);
  return names;
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {}) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  return m->forward(x, ctx);
}

class MixerInvariants : public ::testing::TestWithParam<std::string> {
 protected:
  const MixerInfo& info() { return find_mixer(GetParam()); }
  std::vector<bool> modes() {
    std::vector<bool> out;
    if (info().supports_bidirectional) out.push_back(false);
    if (info().supports_causal) out.push_back(true);
    return out;
  }
};

TEST_P(MixerInvariants, ShapeDtypeAndFinite) {
  for (bool causal : modes()) {
    for (auto dtype : {torch::kFloat, torch::kDouble}) {
      auto m = build(info(), false, dtype);
      auto x = torch::randn({2, 13, kC}, torch::TensorOptions().dtype(dtype));
      auto y = run(m, x, causal);
      EXPECT_EQ(y.sizes(), x.sizes()) << "causal=" << causal;
      EXPECT_EQ(y.scalar_type(), dtype);
      EXPECT_EQ(y.device(), x.device());
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << "causal=" << causal;
    }
  }
}

TEST_P(MixerInvariants, CausalityFutureTokensDoNotLeak) {
  if (!info().supports_causal) GTEST_SKIP() << "bidirectional only";
  auto m = build(info(), /*strict_causal=*/true, torch::kDouble);
  auto x = torch::randn({2, 17, kC}, torch::kDouble);
  auto y = run(m, x, true);
  for (int64_t t : {0, 5, 11, 15}) {
    auto x2 = x.clone();
    x2.narrow(1, t + 1, 17 - t - 1).normal_();
    auto y2 = run(m, x2, true);
    EXPECT_TRUE(torch::allclose(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1), 1e-9, 1e-9))
        << "output at or before " << t << " changed when later tokens changed";
    // Later outputs must move (a mixer may ignore its own token, as LSH attention does when others are visible).
    EXPECT_FALSE(torch::allclose(y.narrow(1, t + 1, 17 - t - 1), y2.narrow(1, t + 1, 17 - t - 1), 1e-9, 1e-9))
        << "positions after " << t << " ignore the changed tokens: the test would not catch a leak";
  }
}

TEST_P(MixerInvariants, PaddedPositionsDoNotChangeOthers) {
  for (bool causal : modes()) {
    auto m = build(info(), causal, torch::kDouble);
    const int64_t T = 14;
    auto x = torch::randn({2, T, kC}, torch::kDouble);
    auto pad = torch::zeros({2, T}, torch::kBool);
    pad[0].narrow(0, T - 4, 4).fill_(true);  // right padding
    pad[1].narrow(0, 0, 3).fill_(true);      // left padding
    auto y = run(m, x, causal, pad);
    auto x2 = x.clone();
    x2.masked_scatter_(pad.unsqueeze(-1).expand_as(x2), torch::randn({2, T, kC}, torch::kDouble) * 5);
    auto y2 = run(m, x2, causal, pad);
    auto keep = (~pad).unsqueeze(-1).expand_as(y);
    EXPECT_TRUE(torch::allclose(y.masked_select(keep), y2.masked_select(keep), 1e-9, 1e-9))
        << "causal=" << causal;
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  }
}

TEST_P(MixerInvariants, GradientsMatchFiniteDifferences) {
  if (!info().exact_gradients) GTEST_SKIP() << "surrogate backward, tested in the mechanism's own tests";
  for (bool causal : modes()) {
    auto m = build(info(), causal, torch::kDouble);
    auto x = torch::randn({1, 5, kC}, torch::kDouble).requires_grad_(true);
    auto w = torch::randn({1, 5, kC}, torch::kDouble);
    auto f = [&]() { return (run(m, x, causal) * w).sum(); };
    EXPECT_LT(longseq_test::gradcheck_error(f, x), 1e-6) << "input gradient, causal=" << causal;
    for (auto& p : m->named_parameters()) {
      auto fp = [&]() { return (run(m, x.detach(), causal) * w).sum(); };
      EXPECT_LT(longseq_test::gradcheck_error(fp, p.value()), 1e-6) << p.key() << ", causal=" << causal;
    }
  }
}

TEST_P(MixerInvariants, StreamingInChunksEqualsWhole) {
  if (!info().streams) GTEST_SKIP() << "does not stream";
  auto m = build(info(), true, torch::kDouble);
  const int64_t T = 13;
  auto x = torch::randn({2, T, kC}, torch::kDouble);
  auto whole = run(m, x, true);
  auto state = m->initial_state(2);
  ASSERT_TRUE(state) << "declares streams but gives no state";
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t len : {4, 1, 1, 5, 2}) {
    MixContext ctx;
    ctx.causal = true;
    ctx.offset = at;
    ctx.state = state.get();
    parts.push_back(m->forward(x.narrow(1, at, len), ctx));
    at += len;
  }
  ASSERT_EQ(at, T);
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-9, 1e-9));
}

INSTANTIATE_TEST_SUITE_P(Registry, MixerInvariants, ::testing::ValuesIn(mixer_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
