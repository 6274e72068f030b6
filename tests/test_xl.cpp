// Transformer-XL (Dai et al. 2019): the relative attention kernels against
// scores built here with explicit loops from sec. 3.3's definition, App. B's
// shift on the paper's example, the mask counts, and the `xl` mixer's
// segment memory (sec. 3.2): the sheet's limiting cases 1-7.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/kernels/relative_attention.h"
#include "longseq/models.h"
#include "longseq/registry.h"

using namespace longseq;

namespace xl_test {

// softmax(A) v with A_ij = (qu_i . k_j + qv_i . r_{M+i-j}) / sqrt(D), each score by an explicit loop, float64.
torch::Tensor naive(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& r, int64_t M, int64_t max_distance) {
  const int64_t B = qu.size(0), H = qu.size(1), T = qu.size(2), K = k.size(2), D = qu.size(3);
  auto a = qu.to(torch::kDouble), b = qv.to(torch::kDouble), kk = k.to(torch::kDouble), rr = r.to(torch::kDouble);
  auto out = torch::zeros({B, H, T, v.size(3)}, torch::kDouble);
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s;
        std::vector<int64_t> js;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t d = M + i - j;
          if (d < 0 || (max_distance >= 0 && d > max_distance)) continue;
          const double score = (a[bb][h][i].dot(kk[bb][h][j]).item<double>() +
                                b[bb][h][i].dot(rr[h][d]).item<double>()) / std::sqrt(double(D));
          s.push_back(score), js.push_back(j);
        }
        if (s.empty()) continue;
        const double mx = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& x : s) z += (x = std::exp(x - mx));
        for (size_t n = 0; n < s.size(); ++n) out[bb][h][i] += v[bb][h][js[n]].to(torch::kDouble) * (s[n] / z);
      }
  return out;
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         std::max(b.abs().max().item<double>(), 1e-30);
}

// Sheet case 3: App. B's example, T = 3, K = 5 (M = 2), including the padding zero and the next row's values.
TEST(RelShift, ReproducesThePapersExampleEntryForEntry) {
  auto x = torch::arange(15, torch::kDouble).view({3, 5});  // rows a = 0..4, b = 5..9, c = 10..14
  auto want = torch::tensor({2., 3., 4., 0., 5., 6., 7., 8., 9., 0., 10., 11., 12., 13., 14.}, torch::kDouble).view({3, 5});
  EXPECT_TRUE(torch::equal(rel_shift(x), want)) << rel_shift(x);
  auto batched = rel_shift(x.view({1, 1, 3, 5}).expand({2, 3, 3, 5}));  // leading dimensions pass through
  EXPECT_TRUE(torch::equal(batched[1][2], want));
}

struct Case {
  int64_t B, H, T, M, D, maxd;
};

// Sheet case 2 (both kernels) and fused against reference for forward and all five gradients, with memory,
// same_length windows and several tiles of 64 queries x 512 keys.
TEST(RelativeAttention, BothKernelsMatchTheNaiveScoresAndTheFusedGradientsMatchTheReference) {
  const std::vector<Case> cases = {{2, 2, 7, 0, 4, -1}, {1, 2, 9, 6, 8, -1}, {2, 1, 11, 5, 4, 3},
                                   {1, 1, 5, 9, 4, 0}};
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " M=" << c.M << " max_distance=" << c.maxd);
    torch::manual_seed(c.T + c.M);
    const int64_t K = c.M + c.T;
    auto qu = torch::randn({c.B, c.H, c.T, c.D}), qv = torch::randn({c.B, c.H, c.T, c.D});
    auto k = torch::randn({c.B, c.H, K, c.D}), v = torch::randn({c.B, c.H, K, c.D}), r = torch::randn({c.H, K + 3, c.D});
    const RelativeMask mask{c.M, c.maxd, {}};
    auto want = naive(qu, qv, k, v, r, c.M, c.maxd);
    EXPECT_LT(rel_err(relative_attention(qu, qv, k, v, r, mask, "fused"), want), 2e-5);
    auto ref = relative_attention(qu.to(torch::kDouble), qv.to(torch::kDouble), k.to(torch::kDouble),
                                  v.to(torch::kDouble), r.to(torch::kDouble), mask, "reference");
    EXPECT_LT(rel_err(ref, want), 1e-12);
  }
  const std::vector<Case> big = {{1, 2, 130, 600, 16, -1}, {2, 1, 200, 40, 8, 90}, {1, 1, 150, 0, 8, -1}};
  for (const auto& c : big) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " M=" << c.M << " max_distance=" << c.maxd);
    torch::manual_seed(c.T * 3 + c.M);
    const int64_t K = c.M + c.T;
    std::vector<torch::Tensor> f{torch::randn({c.B, c.H, c.T, c.D}), torch::randn({c.B, c.H, c.T, c.D}),
                                 torch::randn({c.B, c.H, K, c.D}), torch::randn({c.B, c.H, K, c.D}),
                                 torch::randn({c.H, K, c.D})};
    std::vector<torch::Tensor> d;
    for (auto& t : f) d.push_back(t.to(torch::kDouble).requires_grad_(true)), t.requires_grad_(true);
    const RelativeMask mask{c.M, c.maxd, {}};
    auto got = relative_attention(f[0], f[1], f[2], f[3], f[4], mask, "fused");
    auto want = relative_attention(d[0], d[1], d[2], d[3], d[4], mask, "reference");
    EXPECT_LT(rel_err(got, want), 2e-5);
    auto w = torch::randn(got.sizes(), torch::kDouble);
    (got.to(torch::kDouble) * w).sum().backward();
    (want * w).sum().backward();
    for (int i = 0; i < 5; ++i) EXPECT_LT(rel_err(f[i].grad(), d[i].grad()), 1e-4) << "gradient of input " << i;
  }
}

// Sheet case 4: with uniform scores (qu = qv = 0) and one-hot values, row i of the output is 1/n on the n keys
// it sees: M + i + 1 without same_length, exactly M with it (max distance M - 1) once the memory is full.
TEST(RelativeAttention, EachQuerySeesTheKeysTheMaskCountsFor) {
  const int64_t T = 4, M = 6, K = M + T;
  auto qu = torch::zeros({1, 1, T, K}), k = torch::randn({1, 1, K, K}), r = torch::randn({1, K, K});
  auto v = torch::eye(K).view({1, 1, K, K});
  for (const std::string kernel : {"fused", "reference"}) {
    for (int64_t maxd : {int64_t(-1), M - 1}) {
      auto y = relative_attention(qu, qu, k, v, r, RelativeMask{M, maxd, {}}, kernel)[0][0];
      for (int64_t i = 0; i < T; ++i) {
        const int64_t n = maxd < 0 ? M + i + 1 : M;
        EXPECT_EQ((y[i] > 0).sum().item<int64_t>(), n) << kernel << " row " << i << " max_distance " << maxd;
        EXPECT_NEAR(y[i].sum().item<double>(), 1.0, 1e-6);
        EXPECT_GT(y[i][M + i].item<double>(), 0.0) << "a query sees itself";
        if (M + i + 1 < K) EXPECT_EQ(y[i][M + i + 1].item<double>(), 0.0) << "nor the future";
      }
    }
  }
}

TEST(RelativeAttention, BadShapesAndOptionsAreNamed) {
  auto q = torch::randn({1, 2, 4, 8}), k = torch::randn({1, 2, 6, 8}), r = torch::randn({2, 6, 8});
  EXPECT_NO_THROW(relative_attention(q, q, k, k, r, RelativeMask{2, -1, {}}));
  EXPECT_THROW(relative_attention(q, q, k, k, r, RelativeMask{1, -1, {}}), std::exception);  // K != M + T
  EXPECT_THROW(relative_attention(q, q, k, k, r.narrow(1, 0, 5), RelativeMask{2, -1, {}}), std::exception);
  EXPECT_THROW(relative_attention(q, q, k, k, r, RelativeMask{2, -1, {}}, "fast"), Error);
  auto pad = torch::zeros({1, 6}, torch::kBool);
  EXPECT_THROW(relative_attention(q, q, k, k, r, RelativeMask{2, -1, pad}, "fused"), Error);  // padding: reference only
  EXPECT_NO_THROW(relative_attention(q, q, k, k, r, RelativeMask{2, -1, pad}, "auto"));
  EXPECT_THROW(relative_attention(q.to(torch::kDouble), q.to(torch::kDouble), k.to(torch::kDouble),
                                  k.to(torch::kDouble), r.to(torch::kDouble), RelativeMask{2, -1, {}}, "fused"),
               Error);
}

Mixer xl_mixer(Json options, int64_t C = 16, int64_t H = 2) {
  options["name"] = "xl";
  torch::manual_seed(3);
  auto m = make_mixer(parse_mixer_spec(options, "test"), C, H, 0);
  m->eval();
  return m;
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, MixerState* state) {
  MixContext ctx;
  ctx.causal = true;
  ctx.state = state;
  return m->forward(x, ctx);
}

// Sheet case 2 at the mixer: its output with a memory equals the definition computed here from its weights,
// the sinusoid R_p = [sin(p w_k), cos(p w_k)], w_k = 10000^(-2k/C), and the clamp.
TEST(XlMixer, OutputWithMemoryEqualsTheDefinitionFromItsWeights) {
  const int64_t C = 16, H = 2, D = 8, T1 = 6, T2 = 5, mem = 4, clamp = 6;
  auto m = xl_mixer({{"mem_len", mem}, {"clamp_len", clamp}});
  auto x1 = torch::randn({1, T1, C}), x2 = torch::randn({1, T2, C});
  auto st = m->initial_state(1);
  run(m, x1, st.get());
  auto got = run(m, x2, st.get());
  auto W = [&](const std::string& n) { return longseq_test::param(*m, n).to(torch::kDouble); };
  auto h = torch::cat({x1.narrow(1, T1 - mem, mem), x2}, 1).to(torch::kDouble)[0];  // memory: the last mem inputs
  const int64_t K = mem + T2;
  auto q = torch::matmul(x2.to(torch::kDouble)[0], W("q.weight").t()).view({T2, H, D});
  auto kv = torch::matmul(h, W("kv.weight").t());
  auto k = kv.narrow(1, 0, C).view({K, H, D}), v = kv.narrow(1, C, C).view({K, H, D});
  auto R = torch::zeros({K, C}, torch::kDouble);
  for (int64_t p = 0; p < K; ++p)
    for (int64_t j = 0; j < C / 2; ++j) {
      const double w = std::pow(10000.0, -2.0 * j / C), pc = double(std::min(p, clamp));
      R[p][j] = std::sin(pc * w), R[p][C / 2 + j] = std::cos(pc * w);
    }
  auto r = torch::matmul(R, W("r.weight").t()).view({K, H, D});
  auto u = W("u"), vb = W("v");
  auto y = torch::zeros({T2, H, D}, torch::kDouble);
  for (int64_t hh = 0; hh < H; ++hh)
    for (int64_t i = 0; i < T2; ++i) {
      auto s = torch::full({K}, -INFINITY, torch::kDouble);
      for (int64_t j = 0; j <= mem + i; ++j)
        s[j] = ((q[i][hh] + u[hh]).dot(k[j][hh]) + (q[i][hh] + vb[hh]).dot(r[mem + i - j][hh])) / std::sqrt(double(D));
      y[i][hh] = torch::matmul(torch::softmax(s, 0), v.select(1, hh));
    }
  auto want = torch::matmul(y.reshape({T2, C}), W("out.weight").t());
  EXPECT_LT(rel_err(got[0], want), 1e-5);
}

// Sheet case 5: the memory is the last mem_len inputs: a fresh state fed only those gives the same next segment;
// and no gradient reaches the previous segment.
TEST(XlMixer, MemoryIsTheLastInputsWithGradientsStopped) {
  const int64_t C = 16, mem = 5;
  auto m = xl_mixer({{"mem_len", mem}});
  auto x1 = torch::randn({2, 9, C}).requires_grad_(true), x2 = torch::randn({2, 4, C});
  auto st = m->initial_state(2);
  run(m, x1, st.get());
  auto y = run(m, x2, st.get());
  auto tail = m->initial_state(2);
  run(m, x1.detach().narrow(1, 9 - mem, mem), tail.get());
  EXPECT_TRUE(torch::allclose(y, run(m, x2, tail.get()), 1e-5, 1e-6));
  y.sum().backward();
  EXPECT_FALSE(x1.grad().defined() && x1.grad().abs().sum().item<double>() != 0.0)
      << "segment 2's loss reached segment 1's input";
  EXPECT_TRUE(longseq_test::param(*m, "kv.weight").grad().defined()) << "the memory's keys still train W_k";
}

// Sheet case 6: with W_R = 0 and v = 0 the position term vanishes: permuting the memory rows leaves the
// next segment unchanged; with positions it does not.
TEST(XlMixer, WithoutThePositionTermTheMemoryOrderDoesNotMatter) {
  const int64_t C = 16;
  auto x1 = torch::randn({1, 6, C}), x2 = torch::randn({1, 3, C});
  auto perm = torch::tensor({3, 0, 5, 1, 4, 2}, torch::kLong);
  for (bool positions : {false, true}) {
    auto m = xl_mixer({{"mem_len", 6}});
    if (!positions) {
      torch::NoGradGuard ng;
      longseq_test::param(*m, "r.weight").zero_();
      longseq_test::param(*m, "v").zero_();
    }
    auto a = m->initial_state(1), b = m->initial_state(1);
    run(m, x1, a.get());
    run(m, x1.index_select(1, perm), b.get());
    const double diff = (run(m, x2, a.get()) - run(m, x2, b.get())).abs().max().item<double>();
    if (positions) EXPECT_GT(diff, 1e-4);
    else EXPECT_LT(diff, 1e-5);
  }
}

Json xl_model(int64_t mem_len, bool same_length = false) {
  return {{"vocab_size", 64}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32}, {"positions", "none"},
          {"mixer", {{"name", "xl"}, {"mem_len", mem_len}, {"same_length", same_length}}}};
}

// Sheet cases 1 and 7: segments through the memory, and decoding one token at a time (through the reused keys,
// values and position table), give the logits of one causal pass when the memory covers the history; with
// same_length they give the pass's band; a memory shorter than the history gives something else.
TEST(XlModel, SegmentsAndTokenByTokenDecodingEqualOneCausalPass) {
  torch::manual_seed(11);
  auto tokens = torch::randint(0, 64, {2, 30}, torch::kLong);
  for (auto [mem, same] : std::vector<std::pair<int64_t, bool>>{{64, false}, {7, true}}) {
    SCOPED_TRACE(testing::Message() << "mem_len=" << mem << " same_length=" << same);
    torch::manual_seed(2);
    DecoderLM model(ModelConfig::from_json(xl_model(mem, same)));
    model->eval();
    torch::NoGradGuard ng;
    auto whole = model->forward(tokens);
    auto st = model->initial_state(2);
    std::vector<torch::Tensor> parts;
    for (int64_t at : {0, 10, 20}) parts.push_back(model->forward(tokens.narrow(1, at, 10), &st));
    EXPECT_LT((torch::cat(parts, 1) - whole).abs().max().item<double>(), 1e-4);
    auto dec = model->initial_state(2);
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < 30; ++t) steps.push_back(model->forward(tokens.narrow(1, t, 1), &dec));
    EXPECT_LT((torch::cat(steps, 1) - whole).abs().max().item<double>(), 1e-4);
  }
  torch::manual_seed(2);
  DecoderLM model(ModelConfig::from_json(xl_model(4)));
  model->eval();
  torch::NoGradGuard ng;
  auto st = model->initial_state(2);
  model->forward(tokens.narrow(1, 0, 20), &st);
  auto truncated = model->forward(tokens.narrow(1, 20, 10), &st);
  EXPECT_GT((truncated - model->forward(tokens).narrow(1, 20, 10)).abs().max().item<double>(), 1e-3);
  // Decoding past mem_len slides the cached keys and values; with gradients on, every step recomputes them from
  // the stored inputs instead: the two agree token by token.
  auto cached = model->initial_state(2);
  std::vector<torch::Tensor> fast, slow;
  for (int64_t t = 0; t < 30; ++t) fast.push_back(model->forward(tokens.narrow(1, t, 1), &cached));
  {
    torch::AutoGradMode on(true);
    auto recomputed = model->initial_state(2);
    for (int64_t t = 0; t < 30; ++t) slow.push_back(model->forward(tokens.narrow(1, t, 1), &recomputed).detach());
  }
  EXPECT_LT((torch::cat(fast, 1) - torch::cat(slow, 1)).abs().max().item<double>(), 1e-4);
}

TEST(XlMixer, BadOptionsAreNamed) {
  EXPECT_THROW(xl_mixer({{"mem_len", 0}, {"same_length", true}}), Error);
  EXPECT_THROW(xl_mixer({{"mem_len", -1}}), Error);
  EXPECT_THROW(xl_mixer({{"memory", 4}}), Error);
  EXPECT_THROW(xl_mixer({}, 15, 3), Error);  // odd d_model: no sin/cos halves
}

}  // namespace xl_test
