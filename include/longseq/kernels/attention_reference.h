// Exact softmax attention, the reference oracle of every attention kernel
// (Vaswani et al. 2017, eq. 1). Composite ATen ops: any device, autograd for free.
#pragma once
#include <torch/torch.h>

namespace longseq {

struct AttentionMask {
  bool causal = false;          // query t sees keys s <= t + (S - T): queries are the last T keys
  torch::Tensor key_padding;    // [B, S] bool, true = key is padding (may be undefined)
};

// q: [B, H, T, D], k: [B, H, S, D], v: [B, H, S, D] -> [B, H, T, D].
// A query row whose keys are all masked returns zeros, never NaN.
torch::Tensor attention_reference(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const AttentionMask& mask,
                                  double dropout = 0.0, bool training = false);

// The boolean mask the reference applies, true = blocked: [B or 1, 1, T, S].
torch::Tensor attention_reference_blocked(int64_t T, int64_t S, const AttentionMask& mask,
                                          const torch::Device& device);

}  // namespace longseq
