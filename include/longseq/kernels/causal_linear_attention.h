// Fused chunked causal linear attention for the CPU (Katharopoulos et al.
// 2020, eq. 8-12 and the gradient of sec. 3.3.1): per (batch, head), chunk by
// chunk, a masked product inside the chunk plus one running state [M, E] for
// the chunks before it; the backward runs the state forward again (dL/da) and
// a reverse state (dL/db, dL/dv). Memory O(T (M + E)) plus one state per
// (batch, head), never the [T / chunk, M, E] per-chunk states of the reference
// (linear_attention.h), which stays the oracle and the fallback.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "longseq/kernels/linear_attention.h"

namespace longseq {

// Why the fused kernel cannot take these inputs; empty = it can. a, b: [B, H, T, M],
// v: [B, H, T, E]; state: the running sums a stream carries (S [B, H, M, E], z [B, H, M]) or null.
std::vector<std::string> causal_linear_attention_unsupported_reasons(const torch::Tensor& a, const torch::Tensor& b,
                                                                     const torch::Tensor& v,
                                                                     const LinearAttentionState* state);

// y_t = a_t^T S_t / (a_t^T z_t + eps), S_t = sum_{j <= t} b_j v_j^T, z_t = sum_{j <= t} b_j, 0 where
// a_t^T z_t + eps is exactly 0 (as the reference). a, b [B, H, T, M], v [B, H, T, E] float32 CPU ->
// [B, H, T, E]; differentiable in a, b, v. With `state`, starts from it and leaves the sums after the
// last position in it (in place when no gradient is recorded, so a decoding step allocates no state).
torch::Tensor causal_linear_attention_fused(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                            int64_t chunk, double eps, LinearAttentionState* state = nullptr);

// The numerator alone, P_t = sum_{j <= t} (a_t . b_j) v_j (Luna's two causal products);
// state: S [B, H, M, E] or null (undefined = zero).
torch::Tensor causal_prefix_products_fused(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                           int64_t chunk, torch::Tensor* state = nullptr);

// The kernel's tolerance against a float64 reference: max |error| / max |reference|, forward;
// gradients within 10x that.
constexpr double kCausalLinearAttentionTolerance = 2e-5;

}  // namespace longseq
