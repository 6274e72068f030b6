// YOSO's hashing, exposed for tests: m rounds of tau random-hyperplane bits.
#pragma once
#include <torch/torch.h>

namespace longseq {

// x: [B, H, T, D]; R: [H, m, D, tau] -> codes [B, H, m, T] int64 in [0, 2^tau):
// sum_b 2^b [x^T R_b > 0]. The same R hashes queries and keys.
torch::Tensor yoso_hash_codes(const torch::Tensor& x, const torch::Tensor& R);

// Bernoulli-sampling attention sum (1/m) sum_r sum_j [f_r(q_i) = f_r(k_j)] v_j with YOSO's
// surrogate backward (dB/dx ~ tau/2 B, estimated from the same collisions).
// qn, kn: unit rows [B, H, T|S, D]; v [B, H, S, D]; codes_q [B, H, m, T]; codes_k [B, H, m, S]
// (padded keys must carry code -1: they join no bucket) -> [B, H, T, D].
torch::Tensor yoso_sampled_attention(const torch::Tensor& qn, const torch::Tensor& kn, const torch::Tensor& v,
                                     const torch::Tensor& codes_q, const torch::Tensor& codes_k, int64_t tau);

}  // namespace longseq
