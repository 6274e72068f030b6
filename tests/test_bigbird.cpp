// BigBird against full attention under a mask built here from the stored
// random table and the block definition (Zaheer et al. 2020, App. D).
#include <gtest/gtest.h>

#include <set>

#include "helpers.h"
#include "mixer_helpers.h"
#include "longseq/mixers/bigbird.h"
#include "longseq/registry.h"

using namespace longseq;
using longseq_test::input_and_parameters;
using longseq_test::to_heads;
using longseq_test::param;

namespace bigbird_test {

constexpr int64_t kC = 16, kH = 4, kD = kC / kH;

Mixer make(Json opts, int64_t layer = 0) {
  opts["name"] = "bigbird";
  torch::manual_seed(5);
  auto m = make_mixer(parse_mixer_spec(opts, "test"), kC, kH, layer);
  m->to(torch::kDouble);
  return m;
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {}) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  return m->forward(x, ctx);
}

// Dense attention with the given [1|B, H, T, T] mask and the mixer's own weights.
torch::Tensor dense(const Mixer& m, const torch::Tensor& x, const torch::Tensor& allowed) {
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto o = longseq_test::dense_masked_attention(to_heads(qkv[0], kH), to_heads(qkv[1], kH), to_heads(qkv[2], kH), allowed);
  return torch::linear(o.transpose(1, 2).reshape({x.size(0), x.size(1), kC}), param(*m, "out.weight"),
                       param(*m, "out.bias"));
}

// Per row: its L real tokens (from `first`) attend as a sequence of length L: M[b, h, first + i, first + j] =
// block(j) is in the length-L table's row for block(i) (and j <= i if causal); padding sees and is seen by nothing.
torch::Tensor mask_from_tables(const std::vector<int64_t>& first, const std::vector<int64_t>& len, int64_t T, int64_t b,
                               int64_t r, uint64_t seed, bool causal) {
  const int64_t B = static_cast<int64_t>(len.size());
  auto m = torch::zeros({B, kH, T, T}, torch::kBool);
  for (int64_t row = 0; row < B; ++row) {
    const int64_t L = len[row], f = first[row];
    auto p = bigbird_pattern(L, b, r, seed, kH, causal);
    EXPECT_FALSE(p.exact) << "L=" << L;
    for (int64_t h = 0; h < kH; ++h)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t blk : p.rows[h][i / b])
          for (int64_t j = blk * b; j < std::min(L, (blk + 1) * b); ++j)
            if (!causal || j <= i) m[row][h][f + i][f + j] = true;
  }
  return m;
}

TEST(BigBird, EqualsDenseMaskFromTheRandomTable) {
  // Each sequence uses the table of its own length, so its last global block is its own last block, not padding.
  const int64_t b = 2, r = 1, T = 17;  // 9 blocks, the last one partial
  const std::vector<int64_t> first = {0, 0, 3}, len = {17, 13, 14};  // no padding, right 4, left 3
  for (bool causal : {false, true}) {
    auto m = make({{"block", b}, {"random_blocks", r}, {"seed", 11}}, /*layer=*/1);
    auto x = torch::randn({3, T, kC}, torch::kDouble).requires_grad_(true);
    auto pad = torch::ones({3, T}, torch::kBool);
    for (int64_t row = 0; row < 3; ++row) pad[row].narrow(0, first[row], len[row]).fill_(false);
    auto allowed = mask_from_tables(first, len, T, b, r, 12, causal);  // seed + layer
    auto diff = longseq_test::max_output_and_grad_diff([&] { return run(m, x, causal, pad); },
                                                       [&] { return dense(m, x, allowed); }, input_and_parameters(m, x));
    EXPECT_LT(diff, 1e-10) << "causal=" << causal;
  }
}

TEST(BigBird, TableFollowsTheDefinition) {
  const int64_t nb = 12, b = 4, r = 3;
  auto p = bigbird_pattern(nb * b, b, r, 0, kH, false);
  for (int64_t h = 0; h < kH; ++h) {
    EXPECT_EQ(p.rows[h][0].size(), static_cast<size_t>(nb));  // global rows are dense
    EXPECT_EQ(p.rows[h][nb - 1].size(), static_cast<size_t>(nb));
    for (int64_t j = 1; j < nb - 1; ++j) {
      std::set<int64_t> row(p.rows[h][j].begin(), p.rows[h][j].end());
      EXPECT_EQ(row.size(), p.rows[h][j].size()) << "duplicate block in row " << j;
      for (int64_t must : {int64_t{0}, j - 1, j, j + 1, nb - 1}) EXPECT_TRUE(row.count(must)) << j << " " << must;
      const size_t fixed = (j == 1 || j == nb - 2) ? 4 : 5;
      EXPECT_EQ(row.size(), fixed + r) << "row " << j;
    }
  }
  // Same seed, same table; another seed (layer), another table; heads differ.
  EXPECT_EQ(bigbird_pattern(nb * b, b, r, 0, kH, false).rows, p.rows);
  EXPECT_NE(bigbird_pattern(nb * b, b, r, 1, kH, false).rows, p.rows);
  EXPECT_NE(p.rows[0], p.rows[1]);
  // Causal: a prefix keeps its pattern (decoding sees the rows training saw), random blocks from [1, j-2].
  auto c1 = bigbird_pattern(10 * b, b, r, 0, kH, true), c2 = bigbird_pattern(20 * b, b, r, 0, kH, true);
  for (int64_t h = 0; h < kH; ++h)
    for (int64_t j = 0; j < 10; ++j) {
      EXPECT_EQ(c1.rows[h][j], c2.rows[h][j]);
      for (int64_t blk : c1.rows[h][j]) EXPECT_LE(blk, j);
      EXPECT_EQ(c1.rows[h][j].size(), static_cast<size_t>(std::min<int64_t>(j + 1, 3 + std::min<int64_t>(r, j - 2))))
          << "row " << j;
    }
}

TEST(BigBird, TooShortIsExactAndSaysSoOnce) {
  auto m = make({{"block", 2}, {"random_blocks", 3}});
  auto x = torch::randn({2, 9, kC}, torch::kDouble);  // 5 blocks < 3 + 5
  for (bool causal : {false, true}) {
    auto all = torch::ones({1, 1, 9, 9}, torch::kBool);
    if (causal) all = torch::tril(all);
    testing::internal::CaptureStderr();
    auto y = run(m, x, causal);
    run(m, x, causal);
    auto log = testing::internal::GetCapturedStderr();
    EXPECT_TRUE(torch::allclose(y, dense(m, x, all), 1e-10, 1e-10)) << "causal=" << causal;
    if (!causal) {
      EXPECT_NE(log.find("exact attention"), std::string::npos) << log;
      EXPECT_EQ(log.find("exact attention"), log.rfind("exact attention")) << "said more than once: " << log;
    }
  }
}

TEST(BigBird, NoRandomBlocksIsBandPlusGlobal) {
  const int64_t b = 3, T = 20;  // 7 blocks
  auto m = make({{"block", b}, {"random_blocks", 0}, {"bias", false}});
  EXPECT_EQ(m->named_parameters().find("qkv.bias"), nullptr);
  auto x = torch::randn({1, T, kC}, torch::kDouble);
  auto bi = torch::arange(T).div(b, "floor");
  auto bj = bi.view({1, T}), bq = bi.view({T, 1});
  const int64_t last = (T - 1) / b;
  auto allowed = ((bj - bq).abs() <= 1) | (bj == 0) | (bj == last) | (bq == 0) | (bq == last);
  auto qkv = torch::linear(x, param(*m, "qkv.weight")).chunk(3, -1);
  auto o = longseq_test::dense_masked_attention(to_heads(qkv[0], kH), to_heads(qkv[1], kH), to_heads(qkv[2], kH), allowed.view({1, 1, T, T}));
  auto expect = torch::linear(o.transpose(1, 2).reshape({1, T, kC}), param(*m, "out.weight"));
  EXPECT_TRUE(torch::allclose(run(m, x, false), expect, 1e-10, 1e-10));
}

}  // namespace bigbird_test
