// The Scaling Transformer's sparse feed-forward (src/ffn/sparse_ff.cpp) and sparse loss layer (model.output_modules):
// ../shared/mechanisms/scaling_transformer.md, exact cases 1-4, 9 and 10, against a reference written here from
// sec. 3.1's definition (one unit per block chosen by the controller's argmax).
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/ffn.h"
#include "longseq/layers.h"
#include "longseq/models.h"

namespace sparse_ff_test {

using namespace longseq;

constexpr int64_t kC = 8, kF = 24;

FeedForwardKind make(Json o, torch::Dtype dtype = torch::kDouble) {
  torch::manual_seed(4);
  o["name"] = "sparse_ff";
  FfnArgs a;
  a.d_model = kC, a.d_ff = kF;
  auto f = make_ffn(parse_ffn_spec(o, "test"), a);
  f->to(dtype);
  {
    torch::NoGradGuard ng;
    for (auto& p : f->parameters()) p.normal_();  // controller bias and b2 away from zero too
  }
  return f;
}

torch::Tensor P(const FeedForwardKind& f, const char* n) { return longseq_test::param(*f, n); }

// Sec. 3.1: per token, block i keeps unit i N + argmax_j (x C1 C2 + c_b)_{i N + j}; y = sum over kept units.
torch::Tensor reference(const FeedForwardKind& f, const torch::Tensor& x, int64_t N) {
  auto P = [&](const char* n) { return longseq_test::param(*f, n).detach().to(torch::kDouble); };
  auto xs = x.reshape({-1, kC}).to(torch::kDouble);
  auto l = torch::matmul(torch::matmul(xs, P("controller1")), P("controller2")) + P("controller_bias");
  auto y = P("b2").repeat({xs.size(0), 1});
  for (int64_t n = 0; n < xs.size(0); ++n)
    for (int64_t i = 0; i < kF / N; ++i) {
      int64_t best = i * N;
      for (int64_t j = i * N; j < (i + 1) * N; ++j)
        if (l[n][j].item<double>() > l[n][best].item<double>()) best = j;
      const double h = std::max(0.0, (xs[n] * P("w1").select(1, best)).sum().item<double>());
      y[n] += h * P("w2")[best];
    }
  return y.view(x.sizes());
}

double maxdiff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(SparseFF, EvalPathsEqualTheDefinitionAndEachOther) {  // case 1
  for (auto dtype : {torch::kDouble, torch::kFloat}) {
    auto masked = make({{"block", 6}, {"inference", "masked"}}, dtype);
    auto gathered = make({{"block", 6}, {"inference", "gathered"}}, dtype);
    masked->eval(), gathered->eval();
    auto x = torch::randn({2, 9, kC}, dtype);
    const double tol = dtype == torch::kDouble ? 1e-12 : 1e-4;
    auto want = reference(masked, x, 6).to(dtype);
    EXPECT_LT(maxdiff(masked->forward(x), want), tol);
    EXPECT_LT(maxdiff(gathered->forward(x), want), tol);
  }
}

TEST(SparseFF, BlockOfOneIsTheDenseFeedForwardInEveryMode) {  // case 2
  auto f = make({{"block", 1}, {"quant_prob", 0.5}});
  auto x = torch::randn({2, 5, kC}, torch::kDouble);
  auto dense = torch::matmul(torch::relu(torch::matmul(x, P(f, "w1"))), P(f, "w2")) + P(f, "b2");
  f->train();
  for (int i = 0; i < 4; ++i) EXPECT_LT(maxdiff(f->forward(x), dense), 1e-12);  // hard and soft draws alike
  f->eval();
  EXPECT_LT(maxdiff(f->forward(x), dense), 1e-12);
}

TEST(SparseFF, HardMaskWithoutNoiseIsTheEvalChoiceAndTrainsTheController) {  // cases 3 and 4
  auto f = make({{"block", 4}, {"quant_prob", 1.0}, {"temperature", 0.0}});
  auto x = torch::randn({3, 4, kC}, torch::kDouble);
  f->eval();
  auto evaluated = f->forward(x);
  f->train();
  auto y = f->forward(x);
  EXPECT_LT(maxdiff(y, evaluated), 1e-12) << "straight-through: one-hot + p - sg(p) is exactly one-hot";
  (y * torch::randn_like(y)).sum().backward();
  for (const char* n : {"controller1", "controller2", "controller_bias"})
    EXPECT_GT(P(f, n).grad().abs().max().item<double>(), 0.0) << n << " gets its gradient through p";
  // With the noise on, training draws differ from the eval choice somewhere.
  auto noisy = make({{"block", 4}, {"quant_prob", 1.0}, {"temperature", 5.0}});
  noisy->eval();
  auto e = noisy->forward(x);
  noisy->train();
  EXPECT_GT(maxdiff(noisy->forward(x), e), 1e-6);
}

TEST(SparseFF, SoftMaskIsTheSoftmaxWeighting) {  // quant_prob = 0: every call uses p itself
  auto f = make({{"block", 3}, {"quant_prob", 0.0}});
  f->train();
  auto x = torch::randn({2, 3, kC}, torch::kDouble);
  auto l = (torch::matmul(torch::matmul(x, P(f, "controller1")), P(f, "controller2")) + P(f, "controller_bias"));
  auto p = torch::softmax(l.unflatten(-1, {kF / 3, 3}), -1).flatten(-2);
  auto want = torch::matmul(torch::relu(torch::matmul(x, P(f, "w1"))) * p, P(f, "w2")) + P(f, "b2");
  EXPECT_LT(maxdiff(f->forward(x), want), 1e-12);
}

TEST(SparseFF, ReversibleStackReplaysTheDraws) {  // case 10: gradients through the recomputation equal autograd's
  Json j = {{"vocab_size", 11}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32}, {"reversible", true},
            {"ff", {{"name", "sparse_ff"}, {"block", 4}, {"quant_prob", 0.5}, {"temperature", 1.0}}}};
  torch::manual_seed(8);
  Trunk trunk(ModelConfig::from_json(j));
  trunk->to(torch::kDouble);
  trunk->train();
  auto x = torch::randn({2, 7, 16}, torch::kDouble).requires_grad_(true);
  auto w = torch::randn_like(x);
  MixContext ctx;
  ctx.causal = true;
  torch::manual_seed(5);
  auto y = reversible_stack(trunk->blocks(), x, ctx, nullptr, 1);
  (y * w).sum().backward();
  auto rev_x = x.grad().clone();
  auto rev_c = longseq_test::param(*trunk, "block0.ff.controller2").grad().clone();
  trunk->zero_grad();
  x.mutable_grad() = torch::Tensor();
  torch::manual_seed(5);
  auto ref = longseq_test::reversible_by_autograd(trunk->blocks(), x, ctx, 1);
  EXPECT_LT(maxdiff(y, ref), 1e-12);
  (ref * w).sum().backward();
  EXPECT_LT(maxdiff(rev_x, x.grad()), 1e-9);
  EXPECT_LT(maxdiff(rev_c, longseq_test::param(*trunk, "block0.ff.controller2").grad()), 1e-9);
}

TEST(SparseFF, DecodingUsesTheGatheredPathAndMatchesTheWholePass) {
  auto cfg = ModelConfig::from_json({{"vocab_size", 12}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2},
                                     {"d_ff", 32}, {"ff", {{"name", "sparse_ff"}, {"block", 8}}}});
  auto lm = make_language_model(cfg);
  lm->eval();
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 12, {1, 80});  // 80 tokens: the masked path in the whole pass
  auto whole = lm->forward(tokens);
  auto st = lm->initial_state(1);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 80; ++t) steps.push_back(lm->forward(tokens.narrow(1, t, 1), &st));  // the gathered path
  EXPECT_LT(maxdiff(torch::cat(steps, 1), whole), 1e-4);
}

TEST(SparseLoss, OneModuleIsADenseLayerWithDiagonalTimesE) {  // case 9
  auto cfg = ModelConfig::from_json({{"vocab_size", 12}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 1},
                                     {"output_modules", 1}});
  torch::manual_seed(1);
  DecoderLM lm(cfg);
  lm->to(torch::kDouble);
  auto tokens = torch::randint(0, 12, {2, 6});
  auto logits = lm->forward(tokens);
  // The trunk's output by hooking nothing: logits = h diag(D_0) E + b, so recover h from a second model with a
  // dense head of weight (diag(D_0) E)^T: both read the same trunk.
  auto d = longseq_test::param(*lm, "sparse_head.d").detach(), e = longseq_test::param(*lm, "sparse_head.e").detach();
  auto b = longseq_test::param(*lm, "sparse_head.b").detach();
  auto w = torch::diag(d[0]).matmul(e);  // [C, V]
  auto cfg2 = cfg;
  cfg2.output_modules = 0, cfg2.tie_embeddings = false;
  DecoderLM dense(cfg2);
  dense->to(torch::kDouble);
  {
    torch::NoGradGuard ng;
    for (auto& p : dense->named_parameters())
      if (p.key().rfind("trunk.", 0) == 0) p.value().copy_(longseq_test::param(*lm, p.key()));
    longseq_test::param(*dense, "head.weight").copy_(w.t());
  }
  EXPECT_LT(maxdiff(logits, dense->forward(tokens) + b), 1e-10);
  // Four modules: each gives vocab / 4 logits.
  auto four = ModelConfig::from_json({{"vocab_size", 12}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 1},
                                      {"output_modules", 4}});
  EXPECT_EQ(make_language_model(four)->forward(tokens).sizes(), (std::vector<int64_t>{2, 6, 12}));
}

TEST(SparseFF, ErrorsNameTheOption) {
  auto err = [](const Json& j) {
    try {
      make_language_model(ModelConfig::from_json(j));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(err({{"vocab_size", 12}, {"d_model", 16}, {"n_heads", 2}, {"d_ff", 30}, {"ff", "sparse_ff"}}).find("block"),
            std::string::npos);
  FfnArgs a;
  a.d_model = kC, a.d_ff = 30;
  EXPECT_THROW(make_ffn(parse_ffn_spec(Json{{"name", "sparse_ff"}, {"block", 7}}, "t"), a), Error);
  EXPECT_NE(err({{"vocab_size", 12}, {"d_model", 16}, {"n_heads", 2}, {"output_modules", 5}}).find("must divide"),
            std::string::npos);
}

}  // namespace sparse_ff_test
