// Helpers for tests of one mixer: build it from options, run it, list what to
// differentiate. Header-only, so the tests of each mechanism share them.
#pragma once
#include <torch/torch.h>

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

}  // namespace longseq_test
