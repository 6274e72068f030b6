// Reformer LSH attention rebuilt here from its definition (Kitaev et al. 2020,
// sec. 2, App. A): the same hashes, then sorting, chunks, look-back, the self
// penalty, causal masking and the round combination, written as dense
// per-round attention with key multiplicities on each sequence alone.
#include <gtest/gtest.h>

#include <algorithm>

#include "helpers.h"
#include "mixer_helpers.h"
#include "longseq/common.h"
#include "longseq/mixers/lsh.h"
#include "longseq/registry.h"

using namespace longseq;
using longseq_test::input_and_parameters;
using longseq_test::to_heads;
using longseq_test::param;

namespace lsh_test {

constexpr int64_t kC = 16, kH = 4, kD = kC / kH;

Mixer make(Json opts) {
  opts["name"] = "lsh";
  torch::manual_seed(9);
  auto m = make_mixer(parse_mixer_spec(opts, "test"), kC, kH, 0);
  m->to(torch::kDouble);
  m->eval();
  return m;
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {}) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  return m->forward(x, ctx);
}

// The definition on each sequence alone (its real tokens; padding takes no part): per round r, the real
// positions sorted by (h_r(i), i) and cut into chunks of m (the last may be short); chunk c sees chunks c and
// c - 1, where chunk -1 is the last chunk of round r - 1 (circularly, sec. 2 and the official code). Logits
// s_ij = q_i . k_j (unit keys, no 1/sqrt(D)) minus the penalties of App. A, eq. 16: -inf outside the chunk
// window, after i when causal, and 1e5 for j = i, counted before the log-sum-exp; a key in both chunks counts
// twice. o^r = softmax(s) v, z^r = logsumexp(s), o = sum_r softmax_r(z^r) o^r (eq. 14). n_b = 0: 2L/m rounded
// up to whole chunks, L the sequence's length (sec. 2: m = 2L/n_b). Padded rows are set to zero.
torch::Tensor reference(const Mixer& mx, const torch::Tensor& x, const torch::Tensor& pad, bool causal, int64_t R,
                        int64_t n_buckets, int64_t m) {
  const int64_t B = x.size(0), T = x.size(1);
  auto qv = torch::linear(x, param(*mx, "qv.weight"), param(*mx, "qv.bias")).chunk(2, -1);
  auto q = to_heads(qv[0], kH), v = to_heads(qv[1], kH);
  auto k = q / q.norm(2, -1, true);
  auto pd = pad.accessor<bool, 2>();
  auto count = torch::zeros({B, kH, R, T, T}, torch::kDouble);  // multiplicity of key j in query i's window
  auto cnt = count.accessor<double, 5>();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> real;
    for (int64_t t = 0; t < T; ++t)
      if (!pd[b][t]) real.push_back(t);
    const int64_t L = static_cast<int64_t>(real.size()), N = (L + m - 1) / m;
    if (L == 0) continue;
    const int64_t nb = n_buckets > 0 ? n_buckets : 2 * N;
    auto bk = lsh_buckets(q[b].unsqueeze(0), nb, R, lsh_eval_generator(0, nb));  // [1, H, R, T]
    auto bka = bk.accessor<int64_t, 4>();
    for (int64_t h = 0; h < kH; ++h) {
      std::vector<std::vector<int64_t>> sorted(R, real);
      for (int64_t r = 0; r < R; ++r)
        std::stable_sort(sorted[r].begin(), sorted[r].end(),
                         [&](int64_t a, int64_t c) { return bka[0][h][r][a] < bka[0][h][r][c]; });
      auto chunk = [&](int64_t r, int64_t c) {
        if (c < 0) r = (r + R - 1) % R, c = N - 1;
        return std::vector<int64_t>(sorted[r].begin() + c * m, sorted[r].begin() + std::min(L, (c + 1) * m));
      };
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < L; ++s) {
          const int64_t i = sorted[r][s], c = s / m;
          std::vector<int64_t> keys = chunk(r, c - 1), own = chunk(r, c);
          keys.insert(keys.end(), own.begin(), own.end());
          for (int64_t j : keys)
            if (!causal || j <= i) cnt[b][h][r][i][j] += 1;
        }
    }
  }
  auto self = torch::eye(T, torch::kDouble) * 1e5;
  auto s = torch::matmul(q, k.transpose(-1, -2)).unsqueeze(2) + torch::log(count) - self;  // [B, H, R, T, T]
  s = torch::where(count.sum(-1, true) > 0, s, torch::zeros_like(s));  // padded queries: any finite row
  auto safe = [](const torch::Tensor& t) { return torch::where(torch::isinf(t), torch::zeros_like(t), t); };
  auto z = torch::logsumexp(s, -1);                                                   // [B, H, R, T]
  auto o = torch::matmul(torch::exp(s - safe(z).unsqueeze(-1)), v.unsqueeze(2));      // [B, H, R, T, D]
  auto w = torch::exp(z - safe(torch::logsumexp(z, 2, true))).unsqueeze(-1);         // eq. 14
  auto y = (o * w).sum(2).transpose(1, 2).reshape({B, T, kC});
  auto out = torch::linear(y, param(*mx, "out.weight"), param(*mx, "out.bias"));
  return out * (~pad).unsqueeze(-1).to(out.dtype());
}

TEST(Lsh, EqualsTheDefinitionWithChunksRoundsAndPadding) {
  struct Case {
    int64_t T, nb, left0, right1;  // left padding of row 0, right padding of row 1
  };
  const int64_t m = 4;
  for (const Case& c : {Case{16, 4, 0, 3}, Case{14, 4, 5, 0}, Case{18, 0, 3, 6}})
    for (bool causal : {false, true})
      for (int64_t R : {1, 3}) {
        auto mx = make({{"n_hashes", R}, {"chunk_length", m}, {"n_buckets", c.nb}});
        auto x = torch::randn({2, c.T, kC}, torch::kDouble).requires_grad_(true);
        auto pad = torch::zeros({2, c.T}, torch::kBool);
        pad[0].narrow(0, 0, c.left0).fill_(true);
        pad[1].narrow(0, c.T - c.right1, c.right1).fill_(true);
        auto real = (~pad).unsqueeze(-1).to(torch::kDouble);
        auto diff = longseq_test::max_output_and_grad_diff([&] { return run(mx, x, causal, pad) * real; },
                                                           [&] { return reference(mx, x, pad, causal, R, c.nb, m); },
                                                           input_and_parameters(mx, x));
        EXPECT_LT(diff, 1e-9) << "T=" << c.T << " n_buckets=" << c.nb << " causal=" << causal << " R=" << R;
      }
}

TEST(Lsh, OneChunkIsFullSharedQkAttentionWithTheSelfRule) {
  const int64_t T = 11;
  auto mx = make({{"n_hashes", 2}, {"chunk_length", 64}});
  auto x = torch::randn({1, T, kC}, torch::kDouble);
  auto qv = torch::linear(x, param(*mx, "qv.weight"), param(*mx, "qv.bias")).chunk(2, -1);
  auto q = to_heads(qv[0], kH), v = to_heads(qv[1], kH);
  auto k = q / q.norm(2, -1, true);
  for (bool causal : {false, true}) {
    auto allowed = torch::ones({T, T}, torch::kBool);
    if (causal) allowed = torch::tril(allowed);
    allowed = allowed & ~torch::eye(T, torch::kBool);
    allowed.select(0, 0).select(0, 0).fill_(causal);  // the first token sees only itself when causal
    auto o = longseq_test::dense_masked_attention(q * std::sqrt(double(kD)), k, v, allowed.view({1, 1, T, T}));
    auto expect = torch::linear(o.transpose(1, 2).reshape({1, T, kC}), param(*mx, "out.weight"), param(*mx, "out.bias"));
    EXPECT_TRUE(torch::allclose(run(mx, x, causal), expect, 1e-10, 1e-10)) << "causal=" << causal;
  }
}

TEST(Lsh, HashIsAngularAndSeeded) {
  auto q = torch::randn({1, kH, 32, kD}, torch::kDouble);
  auto a = lsh_buckets(q, 8, 2, lsh_eval_generator(3, 8));
  EXPECT_TRUE(torch::equal(a, lsh_buckets(q * 7.5, 8, 2, lsh_eval_generator(3, 8))));  // direction only
  EXPECT_TRUE(torch::equal(a, lsh_buckets(q, 8, 2, lsh_eval_generator(3, 8))));
  EXPECT_FALSE(torch::equal(a, lsh_buckets(q, 8, 2, lsh_eval_generator(4, 8))));
  EXPECT_LT(a.max().item<int64_t>(), 8);
  EXPECT_GT(std::get<0>(at::_unique(a)).numel(), 4);  // the buckets are used, not one
}

TEST(Lsh, HashIsTheArgmaxOfTheConcatenatedProjections) {
  // The definition, whole (sec. 2): rotations drawn as lsh_buckets documents them, h = argmax([xR; -xR]); rows past
  // the hash's internal chunk of 2048, and ties broken toward the first index (equal rows of q).
  const int64_t T = 2100, nb = 6, R = 2;
  auto q = torch::randn({1, kH, T, kD});
  q.narrow(2, 5, 3).copy_(q.narrow(2, 0, 3));
  auto gen = lsh_eval_generator(11, nb);
  auto got = lsh_buckets(q, nb, R, gen);
  auto rot = at::normal(0.0, 1.0, {kH, R, kD, nb / 2}, lsh_eval_generator(11, nb));
  auto proj = torch::einsum("bhtd,hrdn->bhrtn", {q, rot});
  EXPECT_TRUE(torch::equal(got, torch::cat({proj, -proj}, -1).argmax(-1)));
}

TEST(Lsh, TrainingRehashesEvaluationDoesNot) {
  auto mx = make({{"chunk_length", 4}, {"n_buckets", 4}});
  auto x = torch::randn({1, 16, kC}, torch::kDouble);
  EXPECT_TRUE(torch::equal(run(mx, x, false), run(mx, x, false)));
  mx->train();
  EXPECT_FALSE(torch::allclose(run(mx, x, false), run(mx, x, false)));
  auto fixed = make({{"chunk_length", 4}, {"n_buckets", 4}, {"rehash", false}, {"seed", 2}, {"bias", false}});
  fixed->train();
  EXPECT_TRUE(torch::equal(run(fixed, x, false), run(fixed, x, false)));
  EXPECT_THROW(make({{"n_buckets", 3}}), Error);
}

TEST(Lsh, DecodingGivesTheLastRowOfEachPrefix) {
  auto mx = make({{"chunk_length", 4}, {"n_buckets", 4}, {"n_hashes", 2}});
  auto x = torch::randn({1, 14, kC}, torch::kDouble);
  auto state = mx->initial_state(1);
  for (int64_t t = 0; t < 14; ++t) {
    MixContext ctx;
    ctx.causal = true;
    ctx.state = state.get();
    auto step = mx->forward(x.narrow(1, t, 1), ctx);
    auto whole = run(mx, x.narrow(1, 0, t + 1), true).narrow(1, t, 1);
    EXPECT_TRUE(torch::allclose(step, whole, 1e-10, 1e-10)) << "position " << t;
  }
}

}  // namespace lsh_test
