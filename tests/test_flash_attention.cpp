// The fused FlashAttention-2 CPU kernel against the reference: output and all
// three gradients, on odd lengths, lengths under one block, padded batches,
// causal and not, and more keys than queries (a KV cache).
#include <gtest/gtest.h>

#include <cstdlib>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/growing_cache.h"
#include "longseq/registry.h"

using namespace longseq;

namespace flash_attention_test {

// max |a - b| / max |b|: the error measure of kFlashAttentionTolerance.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

struct Case {
  int64_t B, H, T, S, D;
  bool causal;
  bool padded;
};

void check_case(const Case& c) {
  torch::manual_seed(c.T * 131 + c.S);
  auto q = torch::randn({c.B, c.H, c.T, c.D}).requires_grad_(true);
  auto k = torch::randn({c.B, c.H, c.S, c.D}).requires_grad_(true);
  auto v = torch::randn({c.B, c.H, c.S, c.D}).requires_grad_(true);
  AttentionMask mask{c.causal, {}};
  if (c.padded) {
    mask.key_padding = torch::zeros({c.B, c.S}, torch::kBool);
    mask.key_padding[0].narrow(0, c.S - c.S / 3, c.S / 3).fill_(true);              // right padding
    if (c.B > 1) mask.key_padding[1].narrow(0, 0, std::max<int64_t>(1, c.S / 4)).fill_(true);  // left padding
  }
  ASSERT_TRUE(flash_attention_unsupported_reasons(q, k, v, mask).empty());
  auto dout = torch::randn({c.B, c.H, c.T, c.D});
  auto out = flash_attention(q, k, v, mask);
  auto grads = torch::autograd::grad({out}, {q, k, v}, {dout});

  auto qd = q.detach().to(torch::kDouble).requires_grad_(true), kd = k.detach().to(torch::kDouble).requires_grad_(true),
       vd = v.detach().to(torch::kDouble).requires_grad_(true);
  auto ref = attention_reference(qd, kd, vd, mask);
  auto ref_grads = torch::autograd::grad({ref}, {qd, kd, vd}, {dout.to(torch::kDouble)});
  const std::string what = "B" + std::to_string(c.B) + " T" + std::to_string(c.T) + " S" + std::to_string(c.S) +
                           " D" + std::to_string(c.D) + (c.causal ? " causal" : "") + (c.padded ? " padded" : "");
  EXPECT_LT(rel_err(out, ref), kFlashAttentionTolerance) << "output, " << what;
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i)
    EXPECT_LT(rel_err(grads[i], ref_grads[i]), 5 * kFlashAttentionTolerance) << names[i] << ", " << what;
}

TEST(FlashAttention, MatchesReferenceForwardAndGradients) {
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 8, false, false},    {1, 2, 5, 5, 16, true, false},     {2, 2, 37, 37, 16, false, true},
      {2, 2, 37, 37, 16, true, true},   {1, 3, 300, 300, 64, true, false}, {2, 1, 129, 129, 32, false, true},
      {2, 2, 70, 300, 32, true, true},  {1, 2, 3, 520, 64, true, false},   {1, 1, 513, 513, 64, false, false},
      {2, 2, 260, 260, 64, true, true},
  };
  for (const auto& c : cases) check_case(c);
}

TEST(FlashAttention, FullyMaskedRowsGiveZerosLikeReference) {
  auto q = torch::randn({1, 1, 4, 8}), k = torch::randn({1, 1, 4, 8});
  AttentionMask mask{true, torch::tensor({{true, true, false, false}})};  // queries 0, 1 see only padding
  auto out = flash_attention(q, k, k, mask);
  EXPECT_TRUE(torch::equal(out.narrow(2, 0, 2), torch::zeros({1, 1, 2, 8})));
  EXPECT_LT(rel_err(out, attention_reference(q.to(torch::kDouble), k.to(torch::kDouble), k.to(torch::kDouble), mask)),
            kFlashAttentionTolerance);
}

TEST(FlashAttention, DeclinesWithReasonsAndDispatchFallsBack) {
  auto q = torch::randn({1, 1, 4, 8}, torch::kDouble);
  auto why = flash_attention_unsupported_reasons(q, q, q, {});
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("float32"), std::string::npos);
  EXPECT_THROW(flash_attention(q, q, q, {}), Error);
  EXPECT_THROW(exact_attention(q, q, q, {}, "fused"), Error);
  EXPECT_TRUE(torch::allclose(exact_attention(q, q, q, {}, "auto"), attention_reference(q, q, q, {})));
  auto f = torch::randn({1, 1, 4, 8});
  ::setenv("LONGSEQ_ATTENTION", "reference", 1);
  EXPECT_FALSE(flash_attention_unsupported_reasons(f, f, f, {}).empty());
  ::unsetenv("LONGSEQ_ATTENTION");
  EXPECT_TRUE(flash_attention_unsupported_reasons(f, f, f, {}).empty());
  EXPECT_TRUE(flash_attention_unsupported_reasons(f, f, f, {true, {}}).empty());  // causal, S == T
  auto longer_q = torch::randn({1, 1, 6, 8});
  EXPECT_FALSE(flash_attention_unsupported_reasons(longer_q, f, f, {true, {}}).empty());  // causal, S < T
}

TEST(FlashAttention, FullMixerFusedStreamsAndMatchesReferenceKernel) {
  auto spec = [](const char* kernel) { return parse_mixer_spec(Json{{"name", "full"}, {"kernel", kernel}}, "t"); };
  torch::manual_seed(5);
  auto fused = make_mixer(spec("fused"), 32, 4, 0);
  torch::manual_seed(5);
  auto reference = make_mixer(spec("reference"), 32, 4, 0);
  auto x = torch::randn({2, 45, 32});
  MixContext ctx;
  ctx.causal = true;
  auto whole = fused->forward(x, ctx);
  EXPECT_TRUE(torch::allclose(whole, reference->forward(x, ctx), 1e-4, 1e-5));
  auto state = fused->initial_state(2);
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t len : {17, 1, 20, 7}) {
    MixContext c;
    c.causal = true;
    c.state = state.get();
    c.offset = at;
    parts.push_back(fused->forward(x.narrow(1, at, len), c));
    at += len;
  }
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-4, 1e-5));
}

// A sliding cache holds exactly the newest rows after appends, drops and the moves a full buffer forces.
TEST(GrowingCache, SlidingKeepsTheNewestRowsInOrder) {
  torch::NoGradGuard ng;
  auto rows = torch::arange(0, 2 * 3 * 500 * 4, torch::kFloat).view({2, 3, 500, 4});
  GrowingCache cache;
  int64_t seen = 0;
  for (int64_t n : {5, 1, 1, 30, 1, 70, 1, 1, 200, 1, 1, 180}) {
    auto view = cache.append(rows.narrow(2, seen, n));
    seen += n;
    ASSERT_TRUE(torch::equal(view, rows.narrow(2, 0, seen).narrow(2, seen - cache.length(), cache.length())));
    cache.keep_last(40);
    const int64_t kept = std::min<int64_t>(40, seen);
    ASSERT_EQ(cache.length(), kept);
    ASSERT_TRUE(torch::equal(cache.view(), rows.narrow(2, seen - kept, kept)));
    EXPECT_EQ(cache.view().stride(2), 4);  // rows stay contiguous for the kernels
  }
  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  EXPECT_FALSE(cache.view().defined());
}

}  // namespace flash_attention_test
