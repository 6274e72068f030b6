// Helpers for tests of one mixer: build it from options, run it, list what to
// differentiate. Header-only, so the tests of each mechanism share them.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "longseq/registry.h"

namespace longseq_test {

// The mixer `name` with `opts`, width C and H heads, seeded, in double precision, in eval mode.
inline longseq::Mixer build_mixer(const std::string& name, longseq::Json opts, int64_t C, int64_t H,
                                  uint64_t seed = 17, int64_t layer = 0) {
  opts["name"] = name;
  torch::manual_seed(seed);
  auto m = longseq::make_mixer(longseq::parse_mixer_spec(opts, "test"), C, H, layer);
  m->to(torch::kDouble);
  m->eval();
  return m;
}

inline torch::Tensor run_mixer(const longseq::Mixer& m, const torch::Tensor& x, bool causal,
                               const torch::Tensor& pad = {}, longseq::MixerState* state = nullptr) {
  longseq::MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  ctx.state = state;
  return m->forward(x, ctx);
}

// m run causally over x in consecutive chunks of `lens` with one state: [B, T, C].
inline torch::Tensor stream_in_chunks(const longseq::Mixer& m, const torch::Tensor& x, const torch::Tensor& pad,
                                      const std::vector<int64_t>& lens) {
  auto state = m->initial_state(x.size(0));
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t len : lens) {
    parts.push_back(run_mixer(m, x.narrow(1, at, len), true, pad.narrow(1, at, len), state.get()));
    at += len;
  }
  return torch::cat(parts, 1);
}

// x and every parameter of m: what output-and-gradient comparisons differentiate.
inline std::vector<torch::Tensor> input_and_parameters(const longseq::Mixer& m, const torch::Tensor& x) {
  std::vector<torch::Tensor> wrt = {x};
  for (auto& p : m->parameters()) wrt.push_back(p);
  return wrt;
}

// [B, T, H*D] -> [B, H, T, D] and back.
inline torch::Tensor to_heads(const torch::Tensor& x, int64_t H) {
  return x.view({x.size(0), x.size(1), H, x.size(2) / H}).transpose(1, 2);
}
inline torch::Tensor from_heads(const torch::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

// Right padding of the last `n` positions of batch row `row`: [B, T] bool.
inline torch::Tensor right_padding(int64_t B, int64_t T, int64_t row, int64_t n) {
  auto pad = torch::zeros({B, T}, torch::kBool);
  pad[row].narrow(0, T - n, n).fill_(true);
  return pad;
}

// The real tokens of `real` [1, n, C] give the same outputs in a batch of two whose
// first row carries them with left and right padding of different lengths as without
// padding. `mix(x, pad)`: [B, T, C], [B, T] bool -> [B, T, C].
template <typename Mix>
void expect_padding_length_invariance(Mix mix, const torch::Tensor& real, const std::string& what) {
  const int64_t n = real.size(1), C = real.size(2);
  torch::Tensor first;
  for (auto lr : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {0, 7}, {5, 0}, {3, 11}}) {
    const int64_t T = lr.first + n + lr.second;
    auto x = torch::randn({2, T, C}, real.options()) * 3;
    x[0].narrow(0, lr.first, n).copy_(real[0]);
    auto pad = torch::zeros({2, T}, torch::kBool);
    pad[0].narrow(0, 0, lr.first).fill_(true);
    pad[0].narrow(0, lr.first + n, lr.second).fill_(true);
    auto y = mix(x, pad)[0].narrow(0, lr.first, n);
    if (!first.defined()) first = y;
    EXPECT_TRUE(torch::allclose(y, first, 1e-10, 1e-12)) << what << ": left " << lr.first << " right " << lr.second;
  }
}

// The same, for a mixer run in each mode it has (the checks of the mechanism tests).
inline void expect_padding_length_invariance(const longseq::Mixer& m, const torch::Tensor& real,
                                             const std::string& what = "") {
  for (bool causal : {false, true})
    expect_padding_length_invariance(
        [&](const torch::Tensor& x, const torch::Tensor& pad) { return run_mixer(m, x, causal, pad); }, real,
        what + " causal=" + std::to_string(causal));
}

}  // namespace longseq_test
