// ACT over depth (act.h) against the exact cases of ../shared/mechanisms/universal_transformer.md ("Exact
// limiting cases" 2-6), computed by hand from the paper's listing, not by the code's own helpers.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "longseq/act.h"
#include "longseq/common.h"

namespace act_test {

using namespace longseq;

constexpr int64_t B = 2, T = 3, C = 4;

// Outputs y_1 .. y_n of a block that ignores its input: step t returns ys[t - 1].
std::vector<torch::Tensor> draws(int64_t n) {
  torch::manual_seed(7);
  std::vector<torch::Tensor> ys;
  for (int64_t i = 0; i < n; ++i) ys.push_back(torch::randn({B, T, C}, torch::kDouble));
  return ys;
}

ActState run_constant(double p, const std::vector<torch::Tensor>& ys, ActOptions o) {
  auto H0 = torch::zeros({B, T, C}, torch::kDouble);
  return act_loop(
      H0,
      [&](const torch::Tensor&, int64_t t) {
        return std::make_pair(torch::full({B, T}, p, torch::kDouble), ys.at(static_cast<size_t>(t - 1)));
      },
      o);
}

bool near(const torch::Tensor& a, const torch::Tensor& b) { return torch::allclose(a, b, 1e-12, 1e-12); }

TEST(Act, ConstantHaltingProbabilityPointThree) {  // case 2: N = 4, R = 0.1, w = (0.3, 0.3, 0.3, 0.1)
  auto ys = draws(12);
  auto st = run_constant(0.3, ys, ActOptions{});
  EXPECT_EQ(st.steps, 4);
  EXPECT_TRUE(near(st.N, torch::full({B, T}, 4.0, torch::kDouble)));
  EXPECT_TRUE(near(st.R, torch::full({B, T}, 0.1, torch::kDouble)));
  EXPECT_TRUE(near(st.c, torch::ones({B, T}, torch::kDouble)));
  auto expect = 0.1 * ys[3] + 0.9 * (0.3 * ys[2] + 0.7 * (0.3 * ys[1] + 0.7 * 0.3 * ys[0]));
  EXPECT_TRUE(near(st.out, expect));
  EXPECT_NEAR(act_ponder_cost(st, 0.01).item<double>(), 0.01 * 4.1, 1e-12);
}

TEST(Act, InitialHaltingUnitBiasOne) {  // case 3: p = sigmoid(1), N = 2, R = 1 - sigmoid(1)
  auto ys = draws(12);
  const double p = 1.0 / (1.0 + std::exp(-1.0)), R = 1.0 - p;
  auto st = run_constant(p, ys, ActOptions{});
  EXPECT_EQ(st.steps, 2);
  EXPECT_TRUE(near(st.N, torch::full({B, T}, 2.0, torch::kDouble)));
  EXPECT_TRUE(near(st.R, torch::full({B, T}, R, torch::kDouble)));
  EXPECT_TRUE(near(st.out, R * ys[1] + (1 - R) * p * ys[0]));  // 0.2689 y2 + 0.5345 y1: weights sum to 0.8034
  EXPECT_NEAR(R + (1 - R) * p, 0.8034, 1e-4);
  ActOptions acc;
  acc.accumulated = true;
  auto sa = run_constant(p, ys, acc);
  EXPECT_TRUE(near(sa.out, p * ys[0] + R * ys[1]));  // Graves's sum: 0.7311 y1 + 0.2689 y2
}

TEST(Act, ImmediateHaltTakesTheRemainderOne) {  // case 4: p > 1 - eps at step 1 (strict)
  auto ys = draws(12);
  auto st = run_constant(0.995, ys, ActOptions{});
  EXPECT_EQ(st.steps, 1);
  EXPECT_TRUE(near(st.N, torch::ones({B, T}, torch::kDouble)));
  EXPECT_TRUE(near(st.R, torch::ones({B, T}, torch::kDouble)));
  EXPECT_TRUE(near(st.out, ys[0]));  // weight R = 1, not p
  EXPECT_NEAR(act_ponder_cost(st, 1.0).item<double>(), 2.0, 1e-12);
}

TEST(Act, NoHaltRunsToTheCapWithNoRemainder) {  // case 5: p = 0
  auto ys = draws(12);
  ActOptions o;
  o.max_steps = 7;
  auto st = run_constant(0.0, ys, o);
  EXPECT_EQ(st.steps, 7);
  EXPECT_TRUE(near(st.N, torch::full({B, T}, 7.0, torch::kDouble)));
  EXPECT_TRUE(near(st.R, torch::zeros({B, T}, torch::kDouble)));
  EXPECT_TRUE(near(st.out, torch::zeros({B, T, C}, torch::kDouble)));
}

TEST(Act, IterationsAreTheSlowestPositionAndHaltedStatesAreCarried) {  // case 6, and the carried state
  // Position 0 halts at step 1, position 1 at step 4, position 2 never: 6 iterations under a cap of 6.
  auto p = torch::tensor({0.995, 0.3, 0.0}, torch::kDouble).view({1, T}).expand({B, T}).contiguous();
  ActOptions o;
  o.max_steps = 6;
  std::vector<torch::Tensor> seen;  // the state each step received
  auto H0 = torch::randn({B, T, C}, torch::kDouble);
  auto st = act_loop(
      H0,
      [&](const torch::Tensor& H, int64_t t) {
        seen.push_back(H);
        return std::make_pair(p, 2 * H + static_cast<double>(t));  // y depends on its input: a carried state shows
      },
      o);
  EXPECT_EQ(st.steps, 6);
  EXPECT_TRUE(near(st.N.select(0, 0), torch::tensor({1.0, 4.0, 6.0}, torch::kDouble)));
  EXPECT_LE(st.N.max().item<double>(), static_cast<double>(st.steps));
  ASSERT_EQ(seen.size(), 6u);
  auto y1 = 2 * H0 + 1.0;  // position 0's state after its only step, then carried unchanged
  for (size_t t = 1; t < seen.size(); ++t)
    EXPECT_TRUE(near(seen[t].select(1, 0), y1.select(1, 0))) << "step " << t + 1;
  auto y = H0;  // position 2 runs every step: its state follows the block
  for (int64_t t = 1; t <= 5; ++t) y = 2 * y + static_cast<double>(t);
  EXPECT_TRUE(near(seen[5].select(1, 2), y.select(1, 2)));
  EXPECT_TRUE(near(st.out.select(1, 0), y1.select(1, 0)));  // halted at once: out = y1 there
}

TEST(Act, BadOptionsAndShapesAreErrors) {
  auto ys = draws(2);
  ActOptions o;
  o.max_steps = 0;
  EXPECT_THROW(run_constant(0.3, ys, o), Error);
  o.max_steps = 3, o.epsilon = 1.5;
  EXPECT_THROW(run_constant(0.3, ys, o), Error);
  auto st = act_start(B, T, C, ys[0]);
  EXPECT_THROW(act_update(st, torch::zeros({B, T + 1}, torch::kDouble), ys[0], ActOptions{}), c10::Error);
}

}  // namespace act_test
