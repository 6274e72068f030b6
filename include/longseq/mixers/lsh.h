// Reformer's angular hash, exposed so tests can rebuild the sorted chunks.
#pragma once
#include <torch/torch.h>

namespace longseq {

// h_r(x) = argmax([x R_r ; -x R_r]) for rounds r, R_r in R^{D x nb/2} with
// i.i.d. N(0, 1) entries drawn from `gen` per head and round (Kitaev et al.
// 2020, sec. 2). q: [B, H, T, D] -> buckets [B, H, rounds, T] in [0, nb).
torch::Tensor lsh_buckets(const torch::Tensor& q, int64_t n_buckets, int64_t rounds, at::Generator gen);

// The generator of the fixed (evaluation) rotations of a layer: a function of
// (seed + layer, bucket count) only.
at::Generator lsh_eval_generator(uint64_t layer_seed, int64_t n_buckets);

}  // namespace longseq
