// Random-feature maps for kernelized attention: the Gaussian projections and
// positive features of FAVOR+ (Choromanski et al. 2021, sec. 2 and Lemma 1),
// shared by the performer and kernel_rpe mixers.
#pragma once
#include <torch/torch.h>

#include "longseq/kernels/linear_attention.h"

namespace longseq {

// W: [M, D] float, rows ~ N(0, I_D). Orthogonal: rows exactly orthogonal
// inside each block of D (QR of a Gaussian block; the last block truncated),
// each row rescaled to the norm of an independent N(0, I_D) draw (chi(D)), or
// to sqrt(D) when fixed_norms ("regularized" ORF).
torch::Tensor gaussian_projection(int64_t M, int64_t D, bool orthogonal, bool fixed_norms, at::Generator gen);

// FAVOR+ exponents w^T x~ - |x~|^2 / 2 with x~ = x D^(-1/4), so that
// E[phi(q)^T phi(k)] = exp(q^T k / sqrt(D)). x: [B, H, T, D], W: [M, D] or
// [H, M, D] (one draw per head) -> [B, H, T, M]. norm_weight replaces the 1/2
// (learned-kernel PRF uses 1: an RBF-type kernel).
torch::Tensor favor_exponents(const torch::Tensor& x, const torch::Tensor& W, double norm_weight = 0.5);

// Query features exp(e - c_row) / sqrt(M), c_row = the row's max (detached):
// a per-query constant, which cancels between numerator and denominator.
torch::Tensor favor_query_features(const torch::Tensor& e);

// Key features exp(e - c) / sqrt(M) with c [B, H] (detached) one constant for
// all keys of a sequence and head, so it cancels too; e: [B, H, T, M].
torch::Tensor favor_key_features(const torch::Tensor& e, const torch::Tensor& c);

// The max of e over the features and the real keys: [B, H], -inf where every key is padding.
// key_padding [B, T] (true = padding) or undefined.
torch::Tensor favor_key_max(const torch::Tensor& e, const torch::Tensor& key_padding);

// Streaming with key stabilizers: the running max `key_max` [B, H] grows to
// include `c`; sums made under the old max are scaled down to the new one.
// A chunk without real keys (c = -inf) leaves it as it was. Returns the max to use for this chunk's keys.
torch::Tensor grow_key_max(LinearAttentionState& sums, torch::Tensor& key_max, const torch::Tensor& c);

// FAVOR+ features of queries and keys, stabilized, padded keys zeroed: q, k
// [B, H, T, D] -> {phi(q), phi(k)} [B, H, T, M]. With `key_max` (a stream's
// running stabilizer) the key stabilizer grows into it and `sums` are rescaled.
struct FeaturePair {
  torch::Tensor q, k;
};
FeaturePair favor_features(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& W,
                           const torch::Tensor& key_padding, double norm_weight = 0.5,
                           LinearAttentionState* sums = nullptr, torch::Tensor* key_max = nullptr);

}  // namespace longseq
