// Attention cores for the bench (see the header).
#include "longseq/mixers/cores.h"

#include <cmath>

#include "longseq/kernels/linear_attention.h"

namespace longseq {

CoreRun kernelized_core(const CoreQuery& c, int64_t M, int64_t chunk, double eps) {
  CoreRun r;
  // Positive features as the feature maps give them (elu + 1, FAVOR+, learned PRF), bounded away from 0.
  r.inputs = {torch::rand({c.B, c.H, c.T, M}) + 0.05, torch::rand({c.B, c.H, c.T, M}) + 0.05,
              torch::randn({c.B, c.H, c.T, c.D})};
  const auto in = r.inputs;
  r.run = [in, c, chunk, eps] {
    return kernelized_attention(in[0], in[1], in[2], c.causal, chunk, eps, nullptr, c.kernel);
  };
  // Causal: the chunk products' lower triangles, (chunk + 1) / 2 keys per query on average (the kernel skips the rest).
  const double per_position = 4.0 * M * c.D + (c.causal ? (std::min<int64_t>(chunk, c.T) + 1.0) * (M + c.D) : 0.0);
  r.flops = per_position * c.B * c.H * c.T;
  return r;
}

CoreRun block_sparse_core(const CoreQuery& c, int64_t Nq, int64_t Nk, const BlockSparseLayout& layout,
                          const BlockSparseMask& mask, double flop_share) {
  CoreRun r;
  r.inputs = {torch::randn({c.B, c.H, Nq, c.D}), torch::randn({c.B, c.H, Nk, c.D}), torch::randn({c.B, c.H, Nk, c.D})};
  const auto in = r.inputs;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  r.run = [in, layout, mask, scale, kernel = c.kernel] {
    return block_sparse_attention(in[0], in[1], in[2], layout, mask, scale, kernel).out;
  };
  const bool ordered = !mask.q_pos.defined() && !mask.k_pos.defined();
  r.flops = flop_share * block_sparse_flops(layout, c.B, c.H, Nq, Nk, c.D, mask.causal && ordered);
  return r;
}

}  // namespace longseq
