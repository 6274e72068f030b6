// The fused block-sparse CPU kernel against its composite-ATen reference
// (forward, log-sum-exp and the gradients of both), and the bigbird, lsh and
// routing mixers on the kernel against their gathered reference paths, in
// their sparse regimes: several blocks, lengths a multiple of no block,
// padding left and right, causal and bidirectional.
#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <random>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/mixers/bigbird.h"
#include "mixer_helpers.h"

using namespace longseq;
using namespace longseq_test;

namespace block_sparse_attention_test {

// max |a - b| / max |b|: the error measure of kBlockSparseTolerance.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto d = a.to(torch::kDouble) - b.to(torch::kDouble);
  return d.abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

// Finite entries of the lse (-inf = a row that sees nothing) must agree, and the -inf rows too.
double lse_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto fa = torch::isfinite(a), fb = torch::isfinite(b);
  if (!torch::equal(fa, fb)) return 1e30;
  return rel_err(a.masked_select(fa), b.masked_select(fb).to(torch::kDouble));
}

struct KernelCase {
  const char* what;
  int64_t B, H, Nq, Nk, D, bq, bk;
  bool causal, permuted, per_batch, per_head;
  double penalty;
  double holes;  // fraction of key positions set to -1 (padding)
  bool sorted_blocks = false;  // positions ascending within each block, padding last (LSH's sorted chunks)
  bool repeats = false;        // some key positions repeated (runs of one position inside a sorted block)
};

// pos [.., N] with each run of b entries sorted ascending and its -1 entries moved to the run's end.
torch::Tensor sort_within_blocks(torch::Tensor pos, int64_t b) {
  auto big = pos.masked_fill(pos < 0, std::numeric_limits<int64_t>::max());
  for (int64_t s = 0; s < pos.size(-1); s += b) {
    auto run = big.narrow(-1, s, std::min(b, pos.size(-1) - s));
    run.copy_(std::get<0>(run.sort(-1)));
  }
  return big.masked_fill(big == std::numeric_limits<int64_t>::max(), -1);
}

// A random layout: each query block sees 0..4 key blocks (with a duplicate now and then).
BlockSparseLayout random_layout(const KernelCase& c, std::mt19937& rng) {
  const int64_t NQ = (c.Nq + c.bq - 1) / c.bq, NK = (c.Nk + c.bk - 1) / c.bk;
  const int64_t gb = c.per_batch ? c.B : 1, gh = c.per_head ? c.H : 1;
  std::vector<std::vector<std::vector<std::vector<int64_t>>>> rows(
      gb, std::vector<std::vector<std::vector<int64_t>>>(gh, std::vector<std::vector<int64_t>>(NQ)));
  for (auto& g : rows)
    for (auto& h : g)
      for (int64_t j = 0; j < NQ; ++j) {
        const int64_t n = std::uniform_int_distribution<int64_t>(j == 0 ? 0 : 1, 4)(rng);
        for (int64_t i = 0; i < n; ++i) h[j].push_back(std::uniform_int_distribution<int64_t>(0, NK - 1)(rng));
        if (j % 3 == 1) h[j].push_back(std::min(j, NK - 1));  // consecutive blocks merge into one tile
      }
  return block_sparse_layout(c.bq, c.bk, rows);
}

// The case's masks: causal, the self penalty, and positions permuted, holed or sorted within blocks as it says.
BlockSparseMask case_mask(const KernelCase& c) {
  BlockSparseMask mask;
  mask.causal = c.causal;
  mask.self_penalty = c.penalty;
  if (c.permuted) {  // rows are a shuffle of the positions 0 .. N-1, as after sorting by cluster or bucket
    const int64_t N = std::max(c.Nq, c.Nk);
    mask.q_pos = torch::stack({torch::randperm(N, torch::kLong).narrow(0, 0, c.Nq),
                               torch::randperm(N, torch::kLong).narrow(0, 0, c.Nq)})
                     .narrow(0, 0, c.B)
                     .unsqueeze(1);                                    // [B, 1, Nq]
    mask.k_pos = torch::randperm(N, torch::kLong).narrow(0, 0, c.Nk).view({1, 1, c.Nk}).expand({c.B, c.H, c.Nk})
                     .clone();                                         // [B, H, Nk]
    if (c.penalty != 0)  // some queries meet themselves among the keys
      mask.k_pos.narrow(2, 0, std::min(c.Nq, c.Nk)).copy_(mask.q_pos.expand({c.B, c.H, c.Nq}).narrow(2, 0, std::min(c.Nq, c.Nk)));
  }
  if (c.holes > 0) {
    if (!mask.k_pos.defined()) mask.k_pos = torch::arange(c.Nk, torch::kLong).view({1, 1, c.Nk}).repeat({c.B, 1, 1});
    mask.k_pos.masked_fill_(torch::rand(mask.k_pos.sizes()) < c.holes, -1);
    if (!mask.q_pos.defined()) mask.q_pos = torch::arange(c.Nq, torch::kLong).view({1, 1, c.Nq}).repeat({c.B, 1, 1});
    mask.q_pos.masked_fill_(torch::rand(mask.q_pos.sizes()) < c.holes / 2, -1);  // empty query rows
  }
  if (c.repeats) {  // a key takes its neighbour's position now and then
    auto take = torch::rand({c.Nk - 1}) < 0.25;
    auto kp = mask.k_pos.clone();
    for (int64_t i = 1; i < c.Nk; ++i)
      if (take[i - 1].item<bool>()) kp.select(2, i).copy_(kp.select(2, i - 1));
    mask.k_pos = kp;
  }
  if (c.sorted_blocks) {
    mask.q_pos = sort_within_blocks(mask.q_pos.clone(), c.bq);
    mask.k_pos = sort_within_blocks(mask.k_pos.clone(), c.bk);
  }
  return mask;
}

void check_kernel_case(const KernelCase& c, bool break_check = false) {
  std::mt19937 rng(static_cast<unsigned>(c.Nq * 7 + c.Nk));
  torch::manual_seed(c.Nq * 31 + c.Nk);
  auto layout = random_layout(c, rng);
  const BlockSparseMask mask = case_mask(c);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  auto q = (torch::randn({c.B, c.H, c.Nq, c.D}) * 1.5).requires_grad_(true);
  auto k = (torch::randn({c.B, c.H, c.Nk, c.D}) * 1.5).requires_grad_(true);
  auto v = torch::randn({c.B, c.H, c.Nk, c.D}).requires_grad_(true);
  if (c.repeats) {  // copies of one position carry one key and one value, as LSH's rounds do (the self rule's premise)
    auto idx = mask.k_pos.clamp_min(0).expand({c.B, c.H, c.Nk}).unsqueeze(-1).expand({c.B, c.H, c.Nk, c.D});
    const int64_t N = std::max(c.Nq, c.Nk);
    k = (torch::randn({c.B, c.H, N, c.D}) * 1.5).gather(2, idx).requires_grad_(true);
    v = torch::randn({c.B, c.H, N, c.D}).gather(2, idx).requires_grad_(true);
  }
  ASSERT_TRUE(block_sparse_attention_unsupported_reasons(q, k, v, layout, mask).empty()) << c.what;
  auto r = block_sparse_attention(q, k, v, layout, mask, scale, "fused");
  auto wo = torch::randn_like(r.out), wl = torch::randn_like(r.lse);
  auto loss = [&](const BlockSparseResult& x) {
    return (x.out * wo).sum() + (x.lse.masked_fill(torch::isinf(x.lse), 0) * wl).sum();
  };
  auto g = torch::autograd::grad({loss(r)}, {q, k, v});
  auto qd = q.detach().to(torch::kDouble).requires_grad_(true), kd = k.detach().to(torch::kDouble).requires_grad_(true),
       vd = v.detach().to(torch::kDouble).requires_grad_(true);
  auto ref = block_sparse_attention_reference(qd, kd, vd, layout, mask, scale);
  auto wo_d = wo.to(torch::kDouble), wl_d = wl.to(torch::kDouble);
  auto ref_loss = (ref.out * wo_d).sum() + (ref.lse.masked_fill(torch::isinf(ref.lse), 0) * wl_d).sum();
  auto gr = torch::autograd::grad({ref_loss}, {qd, kd, vd});
  EXPECT_LT(rel_err(r.out, ref.out), kBlockSparseTolerance) << "output, " << c.what;
  EXPECT_LT(lse_err(r.lse, ref.lse), kBlockSparseTolerance) << "lse, " << c.what;
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_err(g[i], gr[i]), 10 * kBlockSparseTolerance) << names[i] << ", " << c.what;
  // The pattern is really sparse: exact attention over every key differs.
  if (!break_check && c.Nq > c.bq) {
    auto dense = block_sparse_attention_reference(
        qd, kd, vd, block_sparse_layout(c.Nq, c.Nk, {{{std::vector<int64_t>{0}}}}), BlockSparseMask{c.causal, mask.q_pos, mask.k_pos, c.penalty}, scale);
    EXPECT_GT(rel_err(ref.out, dense.out), 1e-2) << "the case is not sparse: " << c.what;
  }
}

const std::vector<KernelCase>& kernel_cases() {
  static const std::vector<KernelCase> cases = {
      {"tiny, one block each", 1, 1, 5, 5, 8, 8, 8, false, false, false, false, 0, 0},
      {"blocks of 4, T = 37, bidirectional", 2, 2, 37, 37, 16, 4, 4, false, false, false, true, 0, 0},
      {"blocks of 4, T = 37, causal", 2, 2, 37, 37, 16, 4, 4, true, false, false, true, 0, 0},
      {"blocks of 16 x 8, causal, padding holes", 2, 3, 70, 53, 32, 16, 8, true, false, true, false, 0, 0.2},
      {"permuted rows, causal by position, per batch", 2, 2, 45, 45, 16, 5, 5, true, true, true, false, 0, 0},
      {"permuted, self penalty 1e5, causal, holes", 2, 2, 45, 45, 16, 5, 5, true, true, true, true, 1e5, 0.15},
      {"permuted, self penalty, bidirectional", 2, 2, 33, 33, 8, 4, 4, false, true, false, false, 1e5, 0},
      {"wide blocks: tiles of 128 rows and 512 keys", 1, 2, 700, 1300, 64, 300, 600, false, false, false, true, 0, 0.05},
      {"wide blocks, causal, permuted", 1, 2, 400, 400, 32, 150, 130, true, true, false, false, 0, 0},
      // Key blocks on 16-row boundaries with D a multiple of 16: the panel products (AVX2), a partial last panel.
      {"panels: blocks of 16, D = 64, causal, holes", 2, 2, 100, 90, 64, 16, 16, true, false, false, true, 0, 0.1},
      {"panels: blocks of 32, permuted, self penalty", 1, 2, 96, 96, 16, 32, 32, true, true, false, false, 1e5, 0.1},
      {"panels: blocks of 48 x 32, bidirectional, D = 32", 2, 1, 150, 130, 32, 48, 32, false, false, true, false, 0, 0},
      // Positions ascending within each block (as LSH sorts its chunks): the masks' per-segment ranges, the self
      // rule found by search, each segment's padding and its keys past the last query cut from the tile.
      {"sorted within blocks, self penalty, causal, holes", 2, 2, 45, 45, 16, 5, 5, true, true, true, true, 1e5, 0.15,
       true},
      {"panels: sorted within blocks of 32, self penalty, causal", 2, 2, 96, 96, 16, 32, 32, true, true, false, false,
       1e5, 0.1, true},
      {"sorted within blocks of 4, bidirectional, rows alone with themselves", 2, 2, 40, 40, 8, 4, 4, false, true,
       false, false, 1e5, 0.7, true},
      {"panels: sorted within blocks of 64, bidirectional", 1, 2, 150, 150, 32, 64, 64, false, true, false, true, 1e5,
       0.05, true},
      {"sorted within blocks, repeated key positions, self penalty, causal", 2, 2, 60, 60, 16, 6, 6, true, true, false,
       true, 1e5, 0.1, true, true},
  };
  return cases;
}

TEST(BlockSparseKernel, MatchesReferenceForwardLseAndGradients) {
  for (const auto& c : kernel_cases()) check_kernel_case(c);
}

// Through row maps: logical rows read from random physical rows (repeats included, so gradients accumulate),
// outputs sent one-to-one into a longer output whose other rows stay 0 and -inf. The oracle gathers the rows
// itself, runs the reference, and reads the outputs back through the map.
void check_mapped_case(const KernelCase& c) {
  std::mt19937 rng(static_cast<unsigned>(c.Nq * 11 + c.Nk));
  torch::manual_seed(c.Nq * 37 + c.Nk);
  auto layout = random_layout(c, rng);
  const BlockSparseMask mask = case_mask(c);
  const int64_t Sq = c.Nq + 7, Sk = c.Nk + 5, So = c.Nq % 2 ? c.Nq : c.Nq + 9;  // a permutation, or rows left out
  BlockSparseRows rows;
  rows.q = torch::randint(Sq, {c.B, c.H, c.Nq}, torch::kLong);
  rows.kv = c.repeats ? mask.k_pos.clamp_min(0).expand({c.B, c.H, c.Nk}).contiguous()  // a position's copies: one row
                      : torch::randint(Sk, {c.B, c.H, c.Nk}, torch::kLong);
  std::vector<torch::Tensor> outs;
  for (int64_t i = 0; i < c.B * c.H; ++i) outs.push_back(torch::randperm(So, torch::kLong).narrow(0, 0, c.Nq));
  rows.out = torch::stack(outs).view({c.B, c.H, c.Nq});
  rows.out_rows = So;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  auto q = (torch::randn({c.B, c.H, Sq, c.D}) * 1.5).requires_grad_(true);
  auto k = (torch::randn({c.B, c.H, Sk, c.D}) * 1.5).requires_grad_(true);
  auto v = torch::randn({c.B, c.H, Sk, c.D}).requires_grad_(true);
  auto r = block_sparse_attention(q, k, v, rows, layout, mask, scale, "fused");
  ASSERT_EQ(r.out.sizes(), (torch::IntArrayRef{c.B, c.H, So, c.D})) << c.what;
  auto written = torch::zeros({c.B, c.H, So}, torch::kBool).scatter_(2, rows.out, true);
  EXPECT_TRUE(torch::equal(r.out.detach().masked_select(~written.unsqueeze(-1)),
                           torch::zeros({(~written).sum().item<int64_t>() * c.D})))
      << "rows no query writes are 0, " << c.what;
  EXPECT_TRUE(torch::isneginf(r.lse.detach().masked_select(~written)).all().item<bool>()) << c.what;
  const int64_t D = c.D;
  auto at_rows = [](const torch::Tensor& x, const torch::Tensor& idx) {
    return x.gather(2, idx.unsqueeze(-1).expand({idx.size(0), idx.size(1), idx.size(2), x.size(3)}));
  };
  auto wo = torch::randn({c.B, c.H, c.Nq, D}), wl = torch::randn({c.B, c.H, c.Nq});
  auto lse_logical = r.lse.gather(2, rows.out);
  auto loss = (at_rows(r.out, rows.out) * wo).sum() + (lse_logical.masked_fill(torch::isinf(lse_logical), 0) * wl).sum();
  auto g = torch::autograd::grad({loss}, {q, k, v});
  auto qd = q.detach().to(torch::kDouble).requires_grad_(true), kd = k.detach().to(torch::kDouble).requires_grad_(true),
       vd = v.detach().to(torch::kDouble).requires_grad_(true);
  auto ref = block_sparse_attention_reference(at_rows(qd, rows.q), at_rows(kd, rows.kv), at_rows(vd, rows.kv), layout,
                                              mask, scale);
  auto ref_loss = (ref.out * wo.to(torch::kDouble)).sum() +
                  (ref.lse.masked_fill(torch::isinf(ref.lse), 0) * wl.to(torch::kDouble)).sum();
  auto gr = torch::autograd::grad({ref_loss}, {qd, kd, vd});
  EXPECT_LT(rel_err(at_rows(r.out, rows.out), ref.out), kBlockSparseTolerance) << "output, " << c.what;
  EXPECT_LT(lse_err(lse_logical, ref.lse), kBlockSparseTolerance) << "lse, " << c.what;
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_err(g[i], gr[i]), 10 * kBlockSparseTolerance) << names[i] << ", " << c.what;
  // The mapped reference path (gather, attend, scatter) agrees with the kernel, rows left out included.
  auto rr = block_sparse_attention(q.detach(), k.detach(), v.detach(), rows, layout, mask, scale, "reference");
  EXPECT_LT(rel_err(rr.out, r.out.detach()), kBlockSparseTolerance) << "mapped reference output, " << c.what;
  EXPECT_LT(lse_err(rr.lse, r.lse.detach()), kBlockSparseTolerance) << "mapped reference lse, " << c.what;
}

TEST(BlockSparseKernel, RowMapsMatchGatheredReference) {
  for (const auto& c : kernel_cases()) check_mapped_case(c);
}

TEST(BlockSparseKernel, RowMapsRejectBadMaps) {
  auto layout = block_sparse_layout(2, 2, {{{{0}, {0, 1}}}});
  auto f = torch::randn({1, 1, 4, 8});
  BlockSparseRows rows{torch::arange(4, torch::kLong).view({1, 1, 4}), torch::arange(4, torch::kLong).view({1, 1, 4}),
                       torch::tensor({0, 1, 1, 2}, torch::kLong).view({1, 1, 4}), 4};
  auto message = [&] {
    try {
      block_sparse_attention(f, f, f, rows, layout, {}, 1.0);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message().find("output row of its own"), std::string::npos);  // two rows to one output row
  rows.out = torch::arange(4, torch::kLong).view({1, 1, 4});
  rows.kv = torch::tensor({0, 1, 2, 4}, torch::kLong).view({1, 1, 4});
  EXPECT_NE(message().find("rows.kv must lie in [0, 4)"), std::string::npos);  // a key row past k's rows
  rows.kv = torch::arange(4, torch::kLong).view({1, 1, 4});
  EXPECT_EQ(message(), "");
  // No query rows: outputs of their shape, 0 and -inf.
  auto empty_layout = block_sparse_layout(2, 2, {{std::vector<std::vector<int64_t>>{}}});
  BlockSparseRows none{torch::zeros({1, 1, 0}, torch::kLong), rows.kv, torch::zeros({1, 1, 0}, torch::kLong), 3};
  auto r = block_sparse_attention(f, f, f, none, empty_layout, {}, 1.0);
  EXPECT_EQ(r.out.sizes(), (torch::IntArrayRef{1, 1, 3, 8}));
  EXPECT_TRUE(torch::equal(r.out, torch::zeros({1, 1, 3, 8})));
  EXPECT_TRUE(torch::isneginf(r.lse).all().item<bool>());
}

TEST(BlockSparseKernel, DeclinesWithReasonsAndDispatchFallsBack) {
  auto layout = block_sparse_layout(2, 2, {{{{0}, {0, 1}}}});
  auto qd = torch::randn({1, 1, 4, 8}, torch::kDouble);
  auto why = block_sparse_attention_unsupported_reasons(qd, qd, qd, layout, {});
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("float32"), std::string::npos);
  EXPECT_THROW(block_sparse_attention(qd, qd, qd, layout, {}, 1.0, "fused"), Error);
  auto ref = block_sparse_attention_reference(qd, qd, qd, layout, {}, 1.0);
  EXPECT_TRUE(torch::allclose(block_sparse_attention(qd, qd, qd, layout, {}, 1.0).out, ref.out));
  auto f = torch::randn({1, 1, 4, 8});
  EXPECT_TRUE(block_sparse_attention_unsupported_reasons(f, f, f, layout, {}).empty());
  ::setenv("LONGSEQ_ATTENTION", "reference", 1);
  EXPECT_FALSE(block_sparse_attention_unsupported_reasons(f, f, f, layout, {}).empty());
  ::unsetenv("LONGSEQ_ATTENTION");
  EXPECT_THROW(block_sparse_attention(f, f, f, layout, {}, 1.0, "sideways"), Error);
}

TEST(BlockSparseKernel, BadLayoutsAreErrorsNamingTheProblem) {
  auto f = torch::randn({1, 1, 4, 8});
  auto out_of_range = block_sparse_layout(2, 2, {{{{0}, {0, 2}}}});  // only key blocks 0, 1 exist
  try {
    block_sparse_attention(f, f, f, out_of_range, {}, 1.0);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("layout.blocks"), std::string::npos) << e.what();
  }
  auto wrong_rows = block_sparse_layout(2, 2, {{{{0}, {0}, {1}}}});  // three query blocks for two
  EXPECT_THROW(block_sparse_attention(f, f, f, wrong_rows, {}, 1.0), std::exception);
}

TEST(BlockSparseKernel, FlopsCountTheListedPairs) {
  // Two query blocks of 4 over keys of 6 rows (blocks of 4: the second has 2 rows).
  auto layout = block_sparse_layout(4, 4, {{{{0, 1}, {1}}}});
  EXPECT_DOUBLE_EQ(block_sparse_flops(layout, 1, 1, 8, 6, 2, false), 4.0 * 2 * (4 * 6 + 4 * 2));
  // Causal: a key block at the query block's own offset counts rows * (cols + 1) / 2.
  EXPECT_DOUBLE_EQ(block_sparse_flops(layout, 1, 1, 8, 6, 2, true), 4.0 * 2 * (4 * 5 / 2.0 + 4 * 2 + 4 * 3 / 2.0));
}

// --- The mixers on the kernel against their gathered reference paths -------------------------------------------

constexpr int64_t kC = 32, kH = 4;

struct MixerCase {
  std::string name;
  Json options;  // the sparse regime at T of 30-50
};

std::vector<MixerCase> mixer_cases() {
  return {
      {"bigbird", {{"block", 4}, {"random_blocks", 2}}},                   // 10-12 blocks, the last partial
      {"lsh", {{"chunk_length", 4}, {"n_hashes", 2}}},                     // ~10 chunks per round, ~20 buckets
      {"lsh", {{"chunk_length", 6}, {"n_hashes", 3}, {"n_buckets", 4}}},   // buckets larger than chunks
      {"routing", {{"cluster_size", 6}, {"local_window", 4}}},             // 6-8 clusters of 6
      {"routing", {{"clusters", 3}, {"shared_qk", false}}},               // own keys, bidirectional only
  };
}

// The mixer `name` in float32 with kernel = `kernel` (same weights for every kernel: seeded).
Mixer float_mixer(const MixerCase& c, const std::string& kernel) {
  Json o = c.options;
  o["kernel"] = kernel;
  auto m = build_mixer(c.name, o, kC, kH, 23, /*layer=*/1);
  m->to(torch::kFloat);
  return m;
}

// Output and gradients (input and every parameter) of sum(y * w) over the real rows.
std::vector<torch::Tensor> output_and_grads(const Mixer& m, const torch::Tensor& x0, bool causal,
                                            const torch::Tensor& pad, const torch::Tensor& w) {
  auto x = x0.clone().requires_grad_(true);
  auto y = run_mixer(m, x, causal, pad) * (~pad).unsqueeze(-1).to(x.dtype());
  auto wrt = input_and_parameters(m, x);
  auto g = torch::autograd::grad({(y * w).sum()}, wrt, {}, false, false, /*allow_unused=*/true);
  std::vector<torch::Tensor> out = {y.detach()};
  for (size_t i = 0; i < g.size(); ++i) out.push_back(g[i].defined() ? g[i] : torch::zeros_like(wrt[i]));
  return out;
}

// Padding of different lengths on both sides: row 0 none, row 1 right, row 2 left.
torch::Tensor mixed_padding(int64_t T) {
  auto pad = torch::zeros({3, T}, torch::kBool);
  pad[1].narrow(0, T - 7, 7).fill_(true);
  pad[2].narrow(0, 0, 5).fill_(true);
  return pad;
}

TEST(BlockSparseMixers, FusedMatchesGatheredReferenceForwardAndGradients) {
  for (const auto& c : mixer_cases())
    for (bool causal : {false, true}) {
      if (causal && c.options.contains("shared_qk")) continue;
      for (int64_t T : {37, 50}) {
        const std::string what = c.name + " " + c.options.dump() + " T=" + std::to_string(T) +
                                 (causal ? " causal" : " bidirectional");
        torch::manual_seed(T);
        auto x = torch::randn({3, T, kC});
        auto w = torch::randn({3, T, kC});
        auto pad = mixed_padding(T);
        auto fused = output_and_grads(float_mixer(c, "fused"), x, causal, pad, w);
        auto ref = output_and_grads(float_mixer(c, "reference"), x, causal, pad, w);
        ASSERT_EQ(fused.size(), ref.size());
        EXPECT_LT(rel_err(fused[0], ref[0]), 1e-5) << "output, " << what;
        for (size_t i = 1; i < fused.size(); ++i)
          EXPECT_LT(rel_err(fused[i], ref[i]), 1e-4) << "gradient " << i << ", " << what;
      }
    }
}

TEST(BlockSparseMixers, FusedIsUsedOnFloat32AndDeclinedOtherwise) {
  for (const auto& c : mixer_cases()) {
    auto x = torch::randn({1, 37, kC});
    EXPECT_NO_THROW(run_mixer(float_mixer(c, "fused"), x, false)) << c.name;
    Json o = c.options;
    o["kernel"] = "fused";
    auto d = build_mixer(c.name, o, kC, kH);  // double: the kernel declines, "fused" says why
    try {
      run_mixer(d, x.to(torch::kDouble), false);
      ADD_FAILURE() << c.name << ": no error for kernel fused in double precision";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("float32"), std::string::npos) << e.what();
    }
    ::setenv("LONGSEQ_ATTENTION", "reference", 1);  // auto then takes the reference path, equal to kernel=reference
    auto forced = run_mixer(float_mixer(c, "auto"), x, false);
    ::unsetenv("LONGSEQ_ATTENTION");
    EXPECT_TRUE(torch::equal(forced, run_mixer(float_mixer(c, "reference"), x, false))) << c.name;
  }
}

TEST(BlockSparseMixers, BigBirdStreamEqualsWhole) {
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    auto m = build_mixer("bigbird", {{"block", 4}, {"random_blocks", 2}}, kC, kH, 3);
    m->to(dtype);
    const int64_t T = 45;
    auto x = torch::randn({3, T, kC}, dtype);
    auto pad = mixed_padding(T);
    auto whole = run_mixer(m, x, true, pad);
    auto parts = stream_in_chunks(m, x, pad, {9, 1, 1, 13, 4, 17});
    auto real = (~pad).unsqueeze(-1).expand_as(whole);
    const double tol = dtype == torch::kFloat ? 1e-5 : 1e-12;
    EXPECT_LT(rel_err(parts.masked_select(real), whole.masked_select(real)), tol) << "dtype " << dtype;
  }
}

}  // namespace
