// Head reshaping shared by the multi-head mixers.
#pragma once
#include <torch/torch.h>

namespace longseq {

// x: [B, T, H*D] -> [B, H, T, D]
inline torch::Tensor split_heads(const torch::Tensor& x, int64_t H) {
  return x.view({x.size(0), x.size(1), H, x.size(2) / H}).transpose(1, 2);
}

// x: [B, H, T, D] -> [B, T, H*D]
inline torch::Tensor merge_heads(const torch::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

// A Linear without bias, [in] -> [out].
inline torch::nn::Linear bias_free_linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// Appends `next` ([B, T]) to a cached padding mask ([B, S]); either may be
// undefined (= no padding). Returns undefined when neither has padding.
torch::Tensor append_padding(const torch::Tensor& cached, int64_t cached_len,
                             const torch::Tensor& next, int64_t B, int64_t T);

}  // namespace longseq
