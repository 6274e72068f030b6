// The fused chunked causal linear-attention CPU kernel against the reference
// (the per-chunk-state composite path, in float64): output and the gradients
// in a, b, v, at lengths that are not multiples of the chunk, with M != E,
// left and right padding, FAVOR+ stabilized features and a starting state;
// the numerator-only form (Luna); streaming equals whole, in place when no
// gradient is recorded; the reasons it declines; and the mixers on it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <set>

#include "mixer_helpers.h"
#include "longseq/common.h"
#include "longseq/kernels/causal_linear_attention.h"
#include "longseq/kernels/random_features.h"

using namespace longseq;
using namespace longseq_test;

namespace causal_linear_attention_test {

// max |a - b| / max |b|: the error measure of kCausalLinearAttentionTolerance.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         std::max(b.abs().max().item<double>(), 1e-30);
}

enum class Features { Elu, Favor, Signed };

struct Case {
  int64_t B, H, T, M, E, chunk;
  Features features;
  bool padded, with_state;
  double eps;
};

std::string describe(const Case& c) {
  const char* f[] = {"elu", "favor", "signed"};
  return "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " T" + std::to_string(c.T) + " M" +
         std::to_string(c.M) + " E" + std::to_string(c.E) + " chunk" + std::to_string(c.chunk) + " " +
         f[static_cast<int>(c.features)] + (c.padded ? " padded" : "") + (c.with_state ? " state" : "") +
         " eps" + std::to_string(c.eps);
}

// [B, T] padding: row 0 right-padded by a third, row 1 left-padded by a quarter (its first
// queries see no key: output 0).
torch::Tensor two_sided_padding(int64_t B, int64_t T) {
  auto pad = torch::zeros({B, T}, torch::kBool);
  pad[0].narrow(0, T - T / 3, T / 3).fill_(true);
  if (B > 1) pad[1].narrow(0, 0, std::max<int64_t>(1, T / 4)).fill_(true);
  return pad;
}

// Features a = phi(Q), b = phi(K) (padded keys zeroed) and values v, float32.
struct Inputs {
  torch::Tensor a, b, v, pad;
};

Inputs make_inputs(const Case& c) {
  torch::manual_seed(c.T * 977 + c.M * 31 + c.E);
  Inputs in;
  in.pad = c.padded ? two_sided_padding(c.B, c.T) : torch::Tensor();
  in.v = torch::randn({c.B, c.H, c.T, c.E});
  if (c.features == Features::Favor) {  // exp(w^T x - |x|^2/2 - max): values from 1 down to underflow
    auto q = torch::randn({c.B, c.H, c.T, 16}) * 1.5, k = torch::randn({c.B, c.H, c.T, 16}) * 1.5;
    auto W = torch::randn({c.M, 16});
    auto f = favor_features(q, k, W, in.pad);
    in.a = f.q, in.b = f.k;
  } else if (c.features == Features::Elu) {
    in.a = torch::elu(torch::randn({c.B, c.H, c.T, c.M})) + 1;
    in.b = zero_padded(torch::elu(torch::randn({c.B, c.H, c.T, c.M})) + 1, in.pad);
  } else {
    in.a = torch::randn({c.B, c.H, c.T, c.M});
    in.b = zero_padded(torch::randn({c.B, c.H, c.T, c.M}), in.pad);
  }
  return in;
}

LinearAttentionState random_state(const Case& c) {
  return {torch::randn({c.B, c.H, c.M, c.E}), torch::rand({c.B, c.H, c.M}) * c.M};
}

// Runs `f` on leaf copies of a, b, v; returns {output, da, db, dv} for the upstream gradient g.
std::vector<torch::Tensor> output_and_grads(
    const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>& f,
    const Inputs& in, torch::ScalarType dtype, const torch::Tensor& g) {
  auto a = in.a.detach().to(dtype).requires_grad_(true), b = in.b.detach().to(dtype).requires_grad_(true),
       v = in.v.detach().to(dtype).requires_grad_(true);
  auto y = f(a, b, v);
  auto grads = torch::autograd::grad({y}, {a, b, v}, {g.to(dtype)});
  return {y.detach(), grads[0], grads[1], grads[2]};
}

void check_ratio_case(const Case& c) {
  const auto in = make_inputs(c);
  const auto state = random_state(c);
  auto g = torch::randn({c.B, c.H, c.T, c.E});
  LinearAttentionState fused_state, ref_state;
  auto fused = output_and_grads(
      [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
        if (c.with_state) fused_state = {state.S.clone(), state.z.clone()};
        return causal_linear_attention(a, b, v, c.chunk, c.eps, c.with_state ? &fused_state : nullptr, "fused");
      },
      in, torch::kFloat, g);
  auto ref = output_and_grads(
      [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
        if (c.with_state) ref_state = {state.S.to(torch::kDouble), state.z.to(torch::kDouble)};
        return causal_linear_attention_reference(a, b, v, c.chunk, c.eps, c.with_state ? &ref_state : nullptr);
      },
      in, torch::kDouble, g);
  LinearAttentionState ref32_state;
  auto ref32 = output_and_grads(  // the reference's own float32 error, for the message
      [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
        if (c.with_state) ref32_state = {state.S.clone(), state.z.clone()};
        return causal_linear_attention_reference(a, b, v, c.chunk, c.eps, c.with_state ? &ref32_state : nullptr);
      },
      in, torch::kFloat, g);
  const std::string what = describe(c);
  EXPECT_LT(rel_err(fused[0], ref[0]), kCausalLinearAttentionTolerance)
      << "output, " << what << "; float32 reference: " << rel_err(ref32[0], ref[0]);
  const char* names[] = {"da", "db", "dv"};
  for (int i = 1; i < 4; ++i)
    EXPECT_LT(rel_err(fused[i], ref[i]), 10 * kCausalLinearAttentionTolerance)
        << names[i - 1] << ", " << what << "; float32 reference: " << rel_err(ref32[i], ref[i]);
  if (c.with_state) {
    EXPECT_LT(rel_err(fused_state.S, ref_state.S), kCausalLinearAttentionTolerance) << "state S, " << what;
    EXPECT_LT(rel_err(fused_state.z, ref_state.z), kCausalLinearAttentionTolerance) << "state z, " << what;
  }
  if (c.padded && c.B > 1 && !c.with_state)  // left padding: queries before the first real key return exactly 0
    EXPECT_TRUE(torch::equal(fused[0][1].narrow(1, 0, std::max<int64_t>(1, c.T / 4)),
                             torch::zeros({c.H, std::max<int64_t>(1, c.T / 4), c.E})))
        << what;
}

TEST(CausalLinearAttention, FusedMatchesReferenceForwardAndGradients) {
  const std::vector<Case> cases = {
      {1, 1, 1, 4, 3, 64, Features::Elu, false, true, 1e-6},
      {1, 2, 5, 8, 8, 2, Features::Elu, false, true, 1e-6},
      {2, 2, 37, 16, 8, 8, Features::Elu, true, false, 1e-6},
      {2, 3, 37, 8, 16, 5, Features::Elu, true, true, 0.0},
      {2, 2, 100, 32, 16, 16, Features::Favor, true, false, 0.0},
      {2, 1, 131, 24, 12, 64, Features::Favor, true, true, 0.0},
      {1, 2, 70, 20, 8, 64, Features::Favor, false, false, 1e-6},
      {2, 2, 257, 64, 64, 64, Features::Elu, true, false, 1e-6},
      {2, 2, 45, 12, 10, 7, Features::Signed, true, false, 0.0},
      {2, 2, 100, 48, 32, 22, Features::Favor, true, true, 1e-6},  // micro-kernel widths, chunks of no multiple of 6
  };
  for (const auto& c : cases) check_ratio_case(c);
}

TEST(CausalLinearAttention, NumeratorFormMatchesReference) {
  for (const Case& c : std::vector<Case>{{2, 2, 41, 16, 5, 6, Features::Signed, true, false, 0},
                                         {1, 3, 130, 8, 24, 64, Features::Signed, false, true, 0},
                                         {2, 1, 3, 4, 4, 8, Features::Signed, false, true, 0}}) {
    const auto in = make_inputs(c);
    const auto S = torch::randn({c.B, c.H, c.M, c.E});
    auto g = torch::randn({c.B, c.H, c.T, c.E});
    torch::Tensor fs, rs;
    auto fused = output_and_grads(
        [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
          if (c.with_state) fs = S.clone();
          return causal_prefix_products(a, b, v, c.chunk, c.with_state ? &fs : nullptr, "fused");
        },
        in, torch::kFloat, g);
    auto ref = output_and_grads(
        [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
          if (c.with_state) rs = S.to(torch::kDouble);
          return causal_prefix_products_reference(a, b, v, c.chunk, c.with_state ? &rs : nullptr);
        },
        in, torch::kDouble, g);
    for (int i = 0; i < 4; ++i)
      EXPECT_LT(rel_err(fused[i], ref[i]), (i ? 10 : 1) * kCausalLinearAttentionTolerance) << i << ", " << describe(c);
    if (c.with_state) EXPECT_LT(rel_err(fs, rs), kCausalLinearAttentionTolerance) << describe(c);
  }
}

// Token by token and in uneven pieces, one state: the outputs and the final state of the whole.
TEST(CausalLinearAttention, StreamingEqualsWholeAndUpdatesTheStateInPlace) {
  const Case c{2, 2, 40, 12, 6, 8, Features::Favor, true, false, 0.0};
  const auto in = make_inputs(c);
  torch::NoGradGuard ng;
  LinearAttentionState whole_state;
  auto whole = causal_linear_attention(in.a, in.b, in.v, c.chunk, c.eps, &whole_state, "fused");
  auto ref = causal_linear_attention_reference(in.a.to(torch::kDouble), in.b.to(torch::kDouble),
                                               in.v.to(torch::kDouble), c.chunk, c.eps);
  EXPECT_LT(rel_err(whole, ref), kCausalLinearAttentionTolerance);
  LinearAttentionState st;
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  const float* storage = nullptr;
  for (int64_t len : {1, 1, 9, 1, 3, 17, 1, 1, 6}) {
    parts.push_back(causal_linear_attention(in.a.narrow(2, at, len), in.b.narrow(2, at, len),
                                            in.v.narrow(2, at, len), c.chunk, c.eps, &st, "fused"));
    if (storage) EXPECT_EQ(st.S.data_ptr<float>(), storage) << "the state moved at position " << at;
    storage = st.S.data_ptr<float>();
    at += len;
  }
  ASSERT_EQ(at, c.T);
  EXPECT_LT(rel_err(torch::cat(parts, 2), ref), kCausalLinearAttentionTolerance);
  EXPECT_LT(rel_err(st.S, whole_state.S), kCausalLinearAttentionTolerance);
  EXPECT_LT(rel_err(st.z, whole_state.z), kCausalLinearAttentionTolerance);
}

// With gradients recorded, a stream's state is not overwritten: the backward reads the starting sums.
TEST(CausalLinearAttention, StreamingWithGradientsKeepsTheStartingState) {
  const Case c{1, 2, 20, 8, 4, 3, Features::Elu, false, true, 1e-6};
  const auto in = make_inputs(c);
  const auto start = random_state(c);
  LinearAttentionState st{start.S.clone(), start.z.clone()};
  auto before = st.S.clone();
  auto a = in.a.clone().requires_grad_(true);
  auto y = causal_linear_attention(a, in.b, in.v, c.chunk, c.eps, &st, "fused");
  EXPECT_FALSE(torch::equal(st.S, before));
  y.sum().backward();  // would fail (version counter) or be wrong if the start had been advanced in place
  auto ad = in.a.to(torch::kDouble).requires_grad_(true);
  LinearAttentionState rs{start.S.to(torch::kDouble), start.z.to(torch::kDouble)};
  causal_linear_attention_reference(ad, in.b.to(torch::kDouble), in.v.to(torch::kDouble), c.chunk, c.eps, &rs)
      .sum()
      .backward();
  EXPECT_LT(rel_err(a.grad(), ad.grad()), 10 * kCausalLinearAttentionTolerance);
}

TEST(CausalLinearAttention, DeclinesWithReasonsAndDispatchFallsBack) {
  auto d = torch::rand({1, 1, 4, 3}, torch::kDouble);
  auto why = causal_linear_attention_unsupported_reasons(d, d, d, nullptr);
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("float32"), std::string::npos);
  EXPECT_THROW(causal_linear_attention_fused(d, d, d, 2, 0.0), Error);
  EXPECT_THROW(causal_linear_attention(d, d, d, 2, 0.0, nullptr, "fused"), Error);
  EXPECT_TRUE(torch::allclose(causal_linear_attention(d, d, d, 2, 0.0),
                              causal_linear_attention_reference(d, d, d, 2, 0.0)));
  auto f = torch::rand({1, 1, 4, 3});
  EXPECT_TRUE(causal_linear_attention_unsupported_reasons(f, f, f, nullptr).empty());
  why = causal_linear_attention_unsupported_reasons(f, torch::rand({1, 1, 5, 3}), f, nullptr);
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("shapes disagree"), std::string::npos);
  EXPECT_FALSE(causal_linear_attention_unsupported_reasons(f.view({4, 3}), f, f, nullptr).empty());
  LinearAttentionState wrong{torch::zeros({1, 1, 3, 2}), torch::zeros({1, 1, 3})};
  why = causal_linear_attention_unsupported_reasons(f, f, f, &wrong);
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("state S"), std::string::npos);
  LinearAttentionState doubles{torch::zeros({1, 1, 3, 3}, torch::kDouble), torch::zeros({1, 1, 3}, torch::kDouble)};
  EXPECT_NE(causal_linear_attention_unsupported_reasons(f, f, f, &doubles)[0].find("float32"), std::string::npos);
  EXPECT_THROW(causal_linear_attention(f, f, f, 2, 0.0, nullptr, "fast"), std::exception);
  ::setenv("LONGSEQ_ATTENTION", "reference", 1);
  why = causal_linear_attention_unsupported_reasons(f, f, f, nullptr);
  ::unsetenv("LONGSEQ_ATTENTION");
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("LONGSEQ_ATTENTION"), std::string::npos);
}

// True when the autograd graph behind y holds a node whose name contains `name`.
bool graph_has(const torch::Tensor& y, const std::string& name) {
  std::vector<torch::autograd::Node*> todo = {y.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    auto* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    if (n->name().find(name) != std::string::npos) return true;
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return false;
}

// Each mixer on the kernel, in float32 in its sparse regime with padding: the fused path (seen in the
// autograd graph) gives the reference path's output and gradients (LONGSEQ_ATTENTION=reference).
TEST(CausalLinearAttention, MixersRunOnTheKernelAndMatchTheirReferencePath) {
  const std::vector<std::pair<std::string, Json>> mixers = {
      {"linear", {{"chunk", 3}}},
      {"performer", {{"features", 8}, {"chunk", 3}}},
      {"performer", {{"features", 12}, {"chunk", 5}, {"kernel", "relu"}}},
      {"learned_kernel", {{"features", 8}, {"chunk", 3}}},
      {"learned_kernel", {{"features", 8}, {"chunk", 4}, {"kernel", "gmm_rks"}}},
      {"mgk", {{"linear", true}, {"keys", 3}, {"chunk", 4}}},
      {"luna", {{"length", 3}, {"chunk", 4}}},
  };
  for (const auto& [name, opts] : mixers) {
    const std::string what = name + " " + opts.dump();
    auto m = build_mixer(name, opts, 16, 2);
    m->to(torch::kFloat);
    auto x = (torch::randn({2, 19, 16}) * 0.7).requires_grad_(true);
    auto pad = two_sided_padding(2, 19);
    auto y = run_mixer(m, x, true, pad);
    EXPECT_TRUE(graph_has(y, "CausalLinearAttention")) << what;
    auto wrt = input_and_parameters(m, x);
    auto w = torch::randn_like(y);
    auto grads = torch::autograd::grad({(y * w).sum()}, wrt, {}, {}, false, true);  // luna: packed_norm is bidirectional
    ::setenv("LONGSEQ_ATTENTION", "reference", 1);
    auto yr = run_mixer(m, x, true, pad);
    ::unsetenv("LONGSEQ_ATTENTION");
    EXPECT_FALSE(graph_has(yr, "CausalLinearAttention")) << what;
    auto ref_grads = torch::autograd::grad({(yr * w).sum()}, wrt, {}, {}, false, true);
    EXPECT_LT(rel_err(y, yr), 1e-4) << what;
    for (size_t i = 0; i < wrt.size(); ++i) {
      ASSERT_EQ(grads[i].defined(), ref_grads[i].defined()) << what << " grad " << i;
      if (grads[i].defined()) EXPECT_LT(rel_err(grads[i], ref_grads[i]), 1e-3) << what << " grad " << i;
    }
  }
}

}  // namespace
