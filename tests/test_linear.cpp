// Linear attention (Katharopoulos et al. 2020): the chunked causal form, the
// recurrent form and the quadratic masked reference agree.
#include <gtest/gtest.h>

#include "helpers.h"
#include "mixer_helpers.h"
#include "longseq/registry.h"

using namespace longseq;
using longseq_test::input_and_parameters;
using longseq_test::to_heads;
using longseq_test::param;

namespace linear_test {

constexpr int64_t kC = 16, kH = 4;

Mixer make(Json opts) {
  opts["name"] = "linear";
  torch::manual_seed(17);
  auto m = make_mixer(parse_mixer_spec(opts, "test"), kC, kH, 0);
  m->to(torch::kDouble);
  return m;
}

// phi(Q) phi(K)^T masked (causal, padding) and row-normalized, times V.
torch::Tensor quadratic(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad) {
  const int64_t B = x.size(0), T = x.size(1);
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto fq = torch::elu(to_heads(qkv[0], kH)) + 1, fk = torch::elu(to_heads(qkv[1], kH)) + 1;
  auto a = torch::matmul(fq, fk.transpose(-1, -2));
  if (causal) a = torch::tril(a);
  a = a * (~pad).view({B, 1, 1, T}).to(a.dtype());
  auto y = torch::matmul(a, to_heads(qkv[2], kH)) / (a.sum(-1, true) + 1e-6);
  return torch::linear(y.transpose(1, 2).reshape({B, T, kC}), param(*m, "out.weight"), param(*m, "out.bias"));
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  return m->forward(x, ctx);
}

TEST(Linear, ChunkedAndBidirectionalEqualTheQuadraticForm) {
  auto x = torch::randn({2, 19, kC}, torch::kDouble).requires_grad_(true);
  auto pad = torch::zeros({2, 19}, torch::kBool);
  pad[1].narrow(0, 15, 4).fill_(true);
  for (int64_t chunk : {1, 4, 7, 64})
    for (bool causal : {false, true}) {
      auto m = make({{"chunk", chunk}});
      auto diff = longseq_test::max_output_and_grad_diff([&] { return run(m, x, causal, pad); },
                                                         [&] { return quadratic(m, x, causal, pad); },
                                                         input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-10) << "chunk=" << chunk << " causal=" << causal;
    }
}

TEST(Linear, RecurrentDecodingEqualsTheParallelForm) {
  auto m = make({{"chunk", 5}, {"bias", false}, {"eps", 0.0}});
  auto x = torch::randn({1, 23, kC}, torch::kDouble);
  auto whole = run(m, x, true, {});
  auto state = m->initial_state(1);
  for (int64_t t = 0; t < 23; ++t) {
    MixContext ctx;
    ctx.causal = true;
    ctx.state = state.get();
    EXPECT_TRUE(torch::allclose(m->forward(x.narrow(1, t, 1), ctx), whole.narrow(1, t, 1), 1e-10, 1e-10)) << t;
  }
}

}  // namespace linear_test
