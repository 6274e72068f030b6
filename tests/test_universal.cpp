// Universal Transformer depth recurrence (model.recurrence_steps): ../shared/mechanisms/universal_transformer.md,
// exact cases 1 (S steps of one block = an S-layer stack sharing its weights, the coordinate embedding before every
// layer) and 7 (causality), plus decoding through each step's caches and the shared parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <cctype>
#include <map>
#include <set>

#include "longseq/common.h"
#include "longseq/data.h"
#include "longseq/models.h"
#include "longseq/train.h"

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

TEST(Universal, TheEncoderClassifierPondersAndItsCostHasGradients) {  // ACT in the classifier's loss
  torch::manual_seed(12);
  auto cfg = ModelConfig::from_json({{"type", "encoder_classifier"}, {"vocab_size", kV}, {"d_model", kC},
                                     {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}, {"recurrence_steps", 4},
                                     {"act", true}, {"num_classes", 3}});
  EncoderClassifier clf(cfg);
  auto logits = clf->forward(torch::randint(kV, {2, kT}, torch::kLong));
  ASSERT_TRUE(clf->aux_loss().defined());
  const double ponder = clf->ponder().item<double>();
  EXPECT_GE(ponder, 1.0);
  EXPECT_LE(ponder, 4.0 + 1e-6);
  auto loss = torch::nn::functional::cross_entropy(logits, torch::tensor({0, 2}, torch::kLong)) + clf->aux_loss();
  loss.backward();
  EXPECT_GT(param(*clf, "trunk.halting.weight").grad().abs().sum().item<double>(), 0.0);
}

// The value of an expression of the depth task, by recursive descent over its text (mod 10 at every operation).
int evaluate(const std::string& e, size_t& i) {
  if (e[i] != '(') return e[i++] - '0';
  ++i;
  const int a = evaluate(e, i);
  const char op = e[i++];
  const int b = evaluate(e, i);
  ++i;  // ')'
  return op == '+' ? (a + b) % 10 : (a - b + 10) % 10;
}

TEST(ExpressionsCorpus, AnswersAreTheValuesAndDepthsAreTheNestings) {
  const std::string text = expressions_text(20000, 5, 3);
  EXPECT_EQ(text, expressions_text(20000, 5, 3));
  EXPECT_NE(text, expressions_text(20000, 5, 4));
  std::vector<int64_t> ids(text.begin(), text.end());
  auto depths = expression_depths(torch::tensor(ids, torch::kLong));
  std::set<int64_t> seen;
  size_t start = 0, lines = 0;
  for (size_t nl = text.find('\n'); nl != std::string::npos; start = nl + 1, nl = text.find('\n', start), ++lines) {
    const std::string line = text.substr(start, nl - start);
    const size_t eq = line.find('=');
    ASSERT_NE(eq, std::string::npos) << line;
    size_t i = 0;
    EXPECT_EQ(evaluate(line, i), line[eq + 1] - '0') << line;
    EXPECT_EQ(i, eq) << line;
    int64_t open = 0, deepest = 0;
    for (char c : line.substr(0, eq)) deepest = std::max(deepest, open += c == '(' ? 1 : c == ')' ? -1 : 0);
    EXPECT_EQ(depths[static_cast<int64_t>(start + eq + 1)].item<int64_t>(), start == 0 ? 0 : deepest) << line;
    seen.insert(deepest);
  }
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(depths.gt(0).sum().item<int64_t>(), static_cast<int64_t>(lines) - 1);  // one label per whole line
}

// The pointer-chasing task: every question resolves, by following its line's statements, to its answer in exactly
// the lookups chain_depths reports; the other chain ends in another digit (no shortcut); every depth occurs.
TEST(ChainsCorpus, AnswersFollowTheStatementsAndDepthsCountTheLookups) {
  const std::string text = chains_text(20000, 4, 3);
  EXPECT_EQ(text, chains_text(20000, 4, 3));
  EXPECT_NE(text, chains_text(20000, 4, 4));
  std::vector<int64_t> ids(text.begin(), text.end());
  auto depths = chain_depths(torch::tensor(ids, torch::kLong));
  std::set<int64_t> seen;
  size_t start = 0, lines = 0;
  for (size_t nl = text.find('\n'); nl != std::string::npos; start = nl + 1, nl = text.find('\n', start), ++lines) {
    const std::string line = text.substr(start, nl - start);
    const size_t q = line.find('?');
    ASSERT_NE(q, std::string::npos) << line;
    ASSERT_EQ(line.size(), q + 4) << line;
    std::map<char, char> bound;
    std::vector<char> digits;
    for (size_t j = 0; j < q; j += 4) {
      ASSERT_EQ(line.substr(j + 1, 1), "=") << line;
      ASSERT_EQ(line[j + 3], ';') << line;
      EXPECT_EQ(bound.count(line[j]), 0u) << "a variable bound twice: " << line;
      bound[line[j]] = line[j + 2];
      if (std::isdigit(static_cast<unsigned char>(line[j + 2]))) digits.push_back(line[j + 2]);
    }
    ASSERT_EQ(digits.size(), 2u) << line;
    EXPECT_NE(digits[0], digits[1]) << line;
    char at = line[q + 1];
    int64_t hops = 0;
    while (!std::isdigit(static_cast<unsigned char>(at))) at = bound.at(at), ++hops;
    EXPECT_EQ(at, line[q + 3]) << line;
    EXPECT_EQ(bound.size(), static_cast<size_t>(2 * hops)) << "two chains of the asked one's length: " << line;
    EXPECT_EQ(depths[static_cast<int64_t>(start + q + 3)].item<int64_t>(), start == 0 ? 0 : hops) << line;
    seen.insert(hops);
  }
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(depths.gt(0).sum().item<int64_t>(), static_cast<int64_t>(lines) - 1);  // one label per whole line
  // A line whose answer is not what its statements give is not scored.
  const std::string bad = "\nk=b;q=x;b=7;x=4;?k=7\nk=b;q=x;b=7;x=4;?k=4\n";
  auto d = chain_depths(torch::tensor(std::vector<int64_t>(bad.begin(), bad.end()), torch::kLong));
  EXPECT_EQ(d[20].item<int64_t>(), 2);
  EXPECT_EQ(d.sum().item<int64_t>(), 2);
  EXPECT_THROW(chains_text(100, 13, 1), Error);
}

TEST(ExpressionsCorpus, EvaluationReportsEachDepthWithItsPonderTime) {
  torch::manual_seed(13);
  DecoderLM lm(act_config(4));
  const std::string text = expressions_text(3000, 3, 1);
  TokenSplit split;
  const auto bytes = torch::tensor(std::vector<int64_t>(text.begin(), text.end()), torch::kLong);
  split.tokens = bytes.remainder(kV).to(torch::kInt);  // the model's vocabulary is small: byte values folded into it
  split.bytes = split.text_bytes = static_cast<int64_t>(text.size());
  auto labels = expression_depths(bytes);
  auto r = evaluate_lm(*lm, split, 2, 64, 0, 0, {}, labels);
  ASSERT_EQ(r.groups.size(), 3u);
  int64_t answers = 0;
  for (const auto& g : r.groups) {
    answers += g.targets;
    EXPECT_GE(g.ponder, 1.0);
    EXPECT_LE(g.ponder, 4.0 + 1e-6);
    EXPECT_GE(g.accuracy, 0.0);
    EXPECT_GT(g.loss, 0.0);
  }
  // The whole split is scored: every label of a target (positions 1 .. N - 1) is counted once.
  ASSERT_TRUE(r.whole());
  EXPECT_EQ(answers, labels.narrow(0, 1, labels.size(0) - 1).gt(0).sum().item<int64_t>());
}

}  // namespace universal_test
