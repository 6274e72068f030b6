// Kernelized attention: bidirectional eq. 6 and the chunked causal prefix sums
// of Katharopoulos et al. 2020 (eq. 8-12), vectorized over chunks.
#include "longseq/kernels/linear_attention.h"

namespace longseq {

torch::Tensor linear_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v, double eps) {
  auto S = torch::matmul(fk.transpose(-1, -2), v);  // [B, H, M, D]
  auto z = fk.sum(2);                                // [B, H, M]
  return torch::matmul(fq, S) / (torch::matmul(fq, z.unsqueeze(-1)) + eps);
}

torch::Tensor causal_linear_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v,
                                      int64_t chunk, double eps, LinearAttentionState* state) {
  TORCH_CHECK(fq.dim() == 4 && fk.sizes() == fq.sizes() && v.dim() == 4 && v.size(2) == fq.size(2),
              "causal_linear_attention: fq, fk [B, H, T, M] and v [B, H, T, D] expected, got ", fq.sizes(), ", ",
              fk.sizes(), ", ", v.sizes());
  TORCH_CHECK(chunk > 0, "causal_linear_attention: chunk must be positive");
  const int64_t B = fq.size(0), H = fq.size(1), T = fq.size(2), D = v.size(3);
  if (T == 0) return v.clone();
  const int64_t c = std::min(chunk, std::max<int64_t>(T, 1)), N = (T + c - 1) / c, pad = N * c - T;
  auto grouped = [&](const torch::Tensor& x) {  // [B, H, T, E] -> [B, H, N, c, E], zero rows after T
    auto p = pad ? torch::constant_pad_nd(x, {0, 0, 0, pad}) : x;
    return p.view({B, H, N, c, x.size(3)});
  };
  auto q = grouped(fq), k = grouped(fk), vv = grouped(v);
  auto a = torch::matmul(q, k.transpose(-1, -2)).tril();  // [B, H, N, c, c], j <= i inside the chunk
  auto num = torch::matmul(a, vv);
  auto den = a.sum(-1);
  auto kv = torch::matmul(k.transpose(-1, -2), vv);  // [B, H, N, M, D]: each chunk's phi(K)^T V
  auto ks = k.sum(3);                                 // [B, H, N, M]
  auto S = torch::cumsum(kv, 2) - kv;                 // sums of the chunks before each chunk
  auto z = torch::cumsum(ks, 2) - ks;
  if (state && state->S.defined()) {
    S = S + state->S.unsqueeze(2);
    z = z + state->z.unsqueeze(2);
  }
  num = num + torch::matmul(q, S);
  den = den + torch::matmul(q, z.unsqueeze(-1)).squeeze(-1);
  auto y = (num / (den.unsqueeze(-1) + eps)).view({B, H, N * c, D});
  if (state) {
    torch::NoGradGuard ng;
    state->S = (S.select(2, N - 1) + kv.select(2, N - 1)).detach();
    state->z = (z.select(2, N - 1) + ks.select(2, N - 1)).detach();
  }
  return pad ? y.narrow(2, 0, T) : y;
}

}  // namespace longseq
