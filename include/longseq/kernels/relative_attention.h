// Transformer-XL's relative-position attention (Dai et al. 2019, sec. 3.3,
// App. B): the queries are the last T of K = M + T keys (M rows of memory),
// and the score of query i and key j adds a term that depends on their
// distance d = M + i - j only:
//   S_ij = ((q_i + u) . k_j + (q_i + v) . r_d) / sqrt(D),   visible iff 0 <= d (<= max_distance).
// The caller passes qu = q + u and qv = q + v, and the table r of the
// distances 0, 1, ..., K - 1 (clamp_len is the caller's: clamped rows repeat).
// The fused CPU kernel (kernels/cpu/relative_attention.cpp) never builds the
// T x K scores: per tile it computes the position products for the distances
// the tile spans (at most rows + cols - 1 of them) and adds them along the
// tile's diagonals. The reference is the paper's shift trick on materialized scores.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace longseq {

struct RelativeMask {
  int64_t memory = 0;          // M: query i sits at key position M + i
  int64_t max_distance = -1;   // keys farther than this are masked (same_length); -1 = no bound
  torch::Tensor key_padding;   // [B, K] bool, true = padding (reference path only; may be undefined)
};

// App. B's shift: x [..., T, K] whose column c holds distance K - 1 - c becomes
// y[..., i, j] = x[..., i, j + T - 1 - i] for j <= K - T + i (the other entries hold
// padding zeros or the next row's values: callers mask them).
torch::Tensor rel_shift(const torch::Tensor& x);

// qu, qv: [B, H, T, D]; k, v: [B, H, K, D] with K = M + T; r: [H, R, D] with R >= K
// (row d = distance d) -> [B, H, T, D]. A query that sees no key returns zeros.
torch::Tensor relative_attention_reference(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                           const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask,
                                           double dropout = 0.0, bool training = false);

// Throws (naming the shapes) unless qu, qv, k, v, r and the mask fit together as above.
void check_relative_attention_inputs(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask);

// Why the fused kernel cannot take these inputs; empty = it can.
std::vector<std::string> relative_attention_unsupported_reasons(const torch::Tensor& qu, const torch::Tensor& qv,
                                                                const torch::Tensor& k, const torch::Tensor& v,
                                                                const torch::Tensor& r, const RelativeMask& mask);

// The fused kernel alone (an Error naming the reasons when it declines); differentiable in all five tensors.
torch::Tensor relative_attention_fused(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                       const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask);

// kernel = "auto" (fused when it supports the input), "reference" or "fused" (an Error when unsupported).
torch::Tensor relative_attention(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask,
                                 const std::string& kernel = "auto", double dropout = 0.0, bool training = false);

// Transformer-XL's sinusoid of the distances 0 .. n - 1, clamped at clamp (-1 = none): [n, C],
// R_p = [sin(p w), cos(p w)] with w_k = 10000^(-2k/C) (sec. 3.3; sin and cos halves concatenated). C even.
torch::Tensor distance_sinusoid(int64_t n, int64_t C, int64_t clamp, const torch::TensorOptions& opts);

// r = W_R R for the distances 0 .. n - 1 as [H, n, D], through `proj` ([C] -> [H * D]). Under no-grad the table
// is kept and reused while proj's weight is unchanged, growing by doubling when longer distances are asked for
// (decoding asks for one more each token).
class RelativePositionTable {
 public:
  RelativePositionTable(int64_t C, int64_t H, int64_t clamp) : C_(C), H_(H), clamp_(clamp) {}
  torch::Tensor get(torch::nn::Linear& proj, int64_t n, const torch::Tensor& like);

 private:
  int64_t C_, H_, clamp_;
  torch::Tensor cache_;
  int64_t version_ = -1;
};

// Useful FLOPs of one forward: the content and position products and P V over the visible pairs.
double relative_attention_flops(int64_t B, int64_t H, int64_t T, int64_t K, int64_t D, int64_t max_distance);

}  // namespace longseq
