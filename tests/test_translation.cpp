// The translation recipe's model-independent pieces (src/translate/beam_search.cpp): the sheet's values for the
// learning-rate schedule, label smoothing and the length penalty (../shared/mechanisms/transformer.md, sec. 5), and
// beam search against exhaustive search on a toy decoder whose next-token law depends on the whole prefix.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "longseq/common.h"
#include "longseq/translation.h"

namespace translation_test {

using namespace longseq;

TEST(Translation, LearningRateSchedule) {
  EXPECT_NEAR(noam_learning_rate(1, 512, 4000), 1.746928e-7, 1e-12);
  EXPECT_NEAR(noam_learning_rate(4000, 512, 4000), 6.987712e-4, 1e-9);
  EXPECT_NEAR(noam_learning_rate(100000, 512, 4000), 1.397542e-4, 1e-9);
  EXPECT_THROW(noam_learning_rate(0, 512, 4000), Error);
}

TEST(Translation, LabelSmoothing) {
  auto logits = torch::zeros({3, 4}, torch::kDouble);
  auto targets = torch::tensor({0, 2, 3}, torch::kLong);
  EXPECT_NEAR(label_smoothed_loss(logits, targets, 0.1).item<double>(), 0.9513502, 1e-7);  // 1.3862944 - constant
  auto l = torch::randn({5, 7}, torch::kDouble);
  auto t = torch::tensor({1, 0, 6, 2, 0}, torch::kLong);
  EXPECT_NEAR(label_smoothed_loss(l, t, 0.0).item<double>(),
              torch::nn::functional::cross_entropy(l, t).item<double>(), 1e-12);
  // Pad targets (id 0 here) take no part: the mean over the other three.
  EXPECT_NEAR(label_smoothed_loss(l, t, 0.0, 0).item<double>(),
              torch::nn::functional::cross_entropy(l.index_select(0, torch::tensor({0, 2, 3})),
                                                   torch::tensor({1, 6, 2}, torch::kLong)).item<double>(), 1e-12);
}

TEST(Translation, LengthPenalty) {
  EXPECT_NEAR(gnmt_length_penalty(1, 0.6), 1.0, 1e-12);
  EXPECT_NEAR(gnmt_length_penalty(2, 0.6), 1.096903, 1e-6);
  EXPECT_NEAR(gnmt_length_penalty(10, 0.6), 1.732862, 1e-6);
  EXPECT_NEAR(gnmt_length_penalty(50, 0.6), 3.778565, 1e-6);
}

// A decoder whose next-token log-probabilities depend on the whole prefix through a per-row hash state, so the
// search must keep each hypothesis's state with it (parents).
struct Toy {
  torch::Tensor table;  // [M, V] log-probabilities
  int64_t M;
  torch::Tensor state;  // [n] hashes
  Toy(int64_t V, int64_t M_, uint64_t seed) : M(M_) {
    torch::manual_seed(seed);
    table = torch::log_softmax(2.0 * torch::randn({M_, V}, torch::kDouble), -1);
    state = torch::zeros({1}, torch::kLong);
  }
  torch::Tensor step(const torch::Tensor& parents, const torch::Tensor& tokens) {
    state = (state.index_select(0, parents) * 7 + tokens + 1) % M;
    return table.index_select(0, state);
  }
  double logp(const std::vector<int64_t>& seq, int64_t bos) const {  // the same law by hand
    int64_t s = (0 * 7 + bos + 1) % M;
    double total = 0;
    for (int64_t t : seq) {
      total += table[s][t].item<double>();
      s = (s * 7 + t + 1) % M;
    }
    return total;
  }
};

TEST(Translation, WideBeamIsExhaustiveSearch) {
  const int64_t V = 3, L = 4;
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    for (double alpha : {0.0, 0.6, 2.0}) {
      BeamOptions o;
      o.beam = 32, o.alpha = alpha, o.max_len = L, o.bos = 0, o.eos = 1;
      Toy toy(V, 11, seed);
      auto got = beam_search([&](const torch::Tensor& p, const torch::Tensor& t) { return toy.step(p, t); }, o);
      // Every sequence of 1..L tokens that ends at its first EOS.
      double best = -1e300;
      std::vector<int64_t> arg;
      std::function<void(std::vector<int64_t>&)> walk = [&](std::vector<int64_t>& seq) {
        if (!seq.empty() && seq.back() == o.eos) {
          const double s = Toy(V, 11, seed).logp(seq, o.bos) / gnmt_length_penalty(seq.size(), alpha);
          if (s > best) best = s, arg = seq;
          return;
        }
        if (static_cast<int64_t>(seq.size()) == L) return;
        for (int64_t t = 0; t < V; ++t) {
          seq.push_back(t);
          walk(seq);
          seq.pop_back();
        }
      };
      std::vector<int64_t> seq;
      walk(seq);
      ASSERT_TRUE(got.finished);
      EXPECT_EQ(got.tokens, arg) << "seed " << seed << " alpha " << alpha;
      EXPECT_NEAR(got.score, best, 1e-12);
      EXPECT_NEAR(got.log_prob, Toy(V, 11, seed).logp(got.tokens, o.bos), 1e-12);
    }
  }
}

TEST(Translation, EarlyStopChangesNoResult) {  // the bound log_prob / lp(max_len) is never beaten by an extension
  int differ_if_stopped_at_current_length = 0;
  for (uint64_t seed = 30; seed < 70; ++seed)
    for (double alpha : {0.6, 2.0}) {
      BeamOptions o;
      o.beam = 3, o.alpha = alpha, o.max_len = 10, o.bos = 0, o.eos = 1;
      std::vector<int64_t> results[2];
      for (bool early : {true, false}) {
        o.stop_early = early;
        Toy toy(5, 17, seed);
        results[early] = beam_search([&](const torch::Tensor& p, const torch::Tensor& t) { return toy.step(p, t); },
                                     o).tokens;
      }
      EXPECT_EQ(results[0], results[1]) << "seed " << seed << " alpha " << alpha;
      differ_if_stopped_at_current_length += results[0] != results[1];
    }
  EXPECT_EQ(differ_if_stopped_at_current_length, 0);
}

// Several sentences searched at once, each with its own Toy law: every result equals the sentence's search alone, as
// sentences end at different steps and leave the batch.
TEST(Translation, BatchedSearchEqualsEachSentenceAlone) {
  const std::vector<uint64_t> seeds = {40, 41, 42, 43};
  for (int64_t beam : {1, 3}) {
    BeamOptions o;
    o.beam = beam, o.alpha = 0.6, o.max_len = 10, o.bos = 0, o.eos = 1;
    std::vector<Toy> toys;
    for (uint64_t seed : seeds) toys.emplace_back(5, 17, seed);
    auto state = torch::zeros({4}, torch::kLong), sentence = torch::arange(4, torch::kLong);
    std::vector<int64_t> rows_per_call;
    auto got = beam_search_batch(
        [&](const torch::Tensor& p, const torch::Tensor& t) {
          state = (state.index_select(0, p) * 7 + t + 1) % 17, sentence = sentence.index_select(0, p);
          rows_per_call.push_back(p.size(0));
          auto out = torch::empty({p.size(0), 5}, torch::kDouble);
          for (int64_t i = 0; i < p.size(0); ++i)
            out[i] = toys[sentence[i].item<int64_t>()].table[state[i].item<int64_t>()];
          return out;
        },
        4, o);
    ASSERT_EQ(got.size(), 4u);
    for (size_t s = 0; s < seeds.size(); ++s) {
      Toy alone(5, 17, seeds[s]);
      auto want = beam_search([&](const torch::Tensor& p, const torch::Tensor& t) { return alone.step(p, t); }, o);
      EXPECT_EQ(got[s].tokens, want.tokens) << "beam " << beam << " sentence " << s;
      EXPECT_NEAR(got[s].score, want.score, 1e-12) << "beam " << beam << " sentence " << s;
    }
    EXPECT_LT(rows_per_call.back(), 4 * beam) << "finished sentences leave the batch";
  }
  EXPECT_THROW(beam_search_batch([](const torch::Tensor&, const torch::Tensor&) { return torch::zeros({1, 2}); }, 0,
                                 BeamOptions{}),
               Error);
}

TEST(Translation, GreedyIsBeamOneWithoutLengthPenalty) {
  for (uint64_t seed = 10; seed < 20; ++seed) {
    BeamOptions o;
    o.beam = 1, o.alpha = 0.0, o.max_len = 12, o.bos = 0, o.eos = 1;
    Toy a(6, 13, seed), b(6, 13, seed);
    auto beam = beam_search([&](const torch::Tensor& p, const torch::Tensor& t) { return a.step(p, t); }, o);
    auto greedy = greedy_search([&](const torch::Tensor& p, const torch::Tensor& t) { return b.step(p, t); }, o);
    EXPECT_EQ(beam.tokens, greedy.tokens) << seed;
    EXPECT_NEAR(beam.log_prob, greedy.log_prob, 1e-12);
  }
  BeamOptions bad;
  bad.beam = 0;
  EXPECT_THROW(beam_search([](const torch::Tensor&, const torch::Tensor&) { return torch::zeros({1, 2}); }, bad), Error);
}

}  // namespace translation_test
