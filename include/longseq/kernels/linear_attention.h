// Kernelized ("linear") attention over feature maps, the shared core of the
// linear, performer, mgk (linear variant) and learned_kernel mixers:
//   y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),  S_i = sum_j phi(k_j) v_j^T,  z_i = sum_j phi(k_j)
// (y_i = 0 where the denominator is exactly 0, so eps = 0 is safe: nothing visible gives 0, not NaN)
// with j over all keys (bidirectional) or j <= i (causal; Katharopoulos et al.
// 2020, eq. 8-12). Feature width M and value width D may differ.
#pragma once
#include <torch/torch.h>

#include <string>

namespace longseq {

// Running sums of a causal stream: S [B, H, M, D], z [B, H, M]; undefined = empty.
struct LinearAttentionState {
  torch::Tensor S, z;
  // Keeps batch rows `index` ([n] long, checked by the caller).
  void reorder(const torch::Tensor& index) {
    if (S.defined()) S = S.index_select(0, index.to(S.device()));
    if (z.defined()) z = z.index_select(0, index.to(z.device()));
  }
};

// fq, fk: [B, H, T, M] features; v: [B, H, T, D] -> [B, H, T, D]. O(T M D).
torch::Tensor linear_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v, double eps);

// Causal prefix products P_t = sum_{j <= t} (a_t . b_j) v_j: a, b [B, H, T, M],
// v [B, H, T, E] -> [B, H, T, E]. With `state` ([B, H, M, E] sum of b_j v_j^T,
// undefined = zero) starts from it and leaves the sum after the last position
// in it (detached). Chunk by chunk without a loop over chunks (see below).
// kernel = "auto" (the fused CPU kernel of causal_linear_attention.h when it supports the input),
// "reference", or "fused" (an Error listing the reasons when it does not).
torch::Tensor causal_prefix_products(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                     int64_t chunk, torch::Tensor* state = nullptr, const std::string& kernel = "auto");
torch::Tensor causal_prefix_products_reference(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                               int64_t chunk, torch::Tensor* state = nullptr);

// Causal form. The reference goes chunk by chunk but without a loop over chunks: masked
// products inside each chunk of `chunk` positions, and the sums of earlier chunks by
// one exclusive cumulative sum over per-chunk states ([B, H, T/chunk, M, D]),
// so a handful of large ops cover any T and memory stays O(T (chunk + M D / chunk)).
// The fused kernel keeps one running state instead (O(T (M + D) + M D)).
// With `state`, starts from it and leaves the sums after the last position in it (detached).
// kernel: as for causal_prefix_products.
torch::Tensor causal_linear_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v,
                                      int64_t chunk, double eps, LinearAttentionState* state = nullptr,
                                      const std::string& kernel = "auto");
torch::Tensor causal_linear_attention_reference(const torch::Tensor& fq, const torch::Tensor& fk,
                                                const torch::Tensor& v, int64_t chunk, double eps,
                                                LinearAttentionState* state = nullptr);

// The form a mixer's call needs: streaming (state given, causal), causal, or bidirectional.
torch::Tensor kernelized_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v,
                                   bool causal, int64_t chunk, double eps, LinearAttentionState* state,
                                   const std::string& kernel = "auto");

// Multiplies features [B, H, T, M] by 0 at padded positions (a padded key adds nothing to any sum);
// key_padding [B, T] (true = padding) or undefined.
torch::Tensor zero_padded(const torch::Tensor& features, const torch::Tensor& key_padding);

}  // namespace longseq
