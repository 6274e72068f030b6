// Kernelized attention: bidirectional eq. 6 and the chunked causal prefix sums
// of Katharopoulos et al. 2020 (eq. 8-12), vectorized over chunks.
#include "longseq/kernels/linear_attention.h"

#include "longseq/common.h"
#include "longseq/kernels/causal_linear_attention.h"

namespace longseq {

namespace {

// num / (den + eps), 0 where that sum is exactly 0 (no key visible, or every weight underflowed), so
// eps = 0 is allowed: then a constant factor on all key features cancels exactly (the FAVOR+ stabilizers).
torch::Tensor guarded_ratio(const torch::Tensor& num, const torch::Tensor& den, double eps) {
  auto d = eps != 0 ? den + eps : den;
  auto nz = d != 0;
  return num / torch::where(nz, d, torch::ones_like(d)) * nz.to(num.dtype());
}

}  // namespace

torch::Tensor linear_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v, double eps) {
  auto S = torch::matmul(fk.transpose(-1, -2), v);  // [B, H, M, D]
  auto z = fk.sum(2);                                // [B, H, M]
  return guarded_ratio(torch::matmul(fq, S), torch::matmul(fq, z.unsqueeze(-1)), eps);
}

torch::Tensor causal_prefix_products_reference(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                               int64_t chunk, torch::Tensor* state) {
  TORCH_CHECK(a.dim() == 4 && b.sizes() == a.sizes() && v.dim() == 4 && v.size(2) == a.size(2),
              "causal_prefix_products: a, b [B, H, T, M] and v [B, H, T, E] expected, got ", a.sizes(), ", ",
              b.sizes(), ", ", v.sizes());
  TORCH_CHECK(chunk > 0, "causal_prefix_products: chunk must be positive");
  const int64_t B = a.size(0), H = a.size(1), T = a.size(2), E = v.size(3);
  if (T == 0) return v.clone();
  const int64_t c = std::min(chunk, T), N = (T + c - 1) / c, pad = N * c - T;
  auto grouped = [&](const torch::Tensor& x) {  // [B, H, T, F] -> [B, H, N, c, F], zero rows after T
    auto p = pad ? torch::constant_pad_nd(x, {0, 0, 0, pad}) : x;
    return p.reshape({B, H, N, c, x.size(3)});
  };
  auto q = grouped(a), k = grouped(b), vv = grouped(v);
  auto inside = torch::matmul(torch::matmul(q, k.transpose(-1, -2)).tril(), vv);  // j <= i inside the chunk
  auto kv = torch::matmul(k.transpose(-1, -2), vv);  // [B, H, N, M, E]: each chunk's sum of b_j v_j^T
  // Sums of the chunks before each chunk: a shifted cumsum, not cumsum - kv, which cancels catastrophically
  // when a later chunk's keys dominate (e.g. a key far above the earlier ones under the FAVOR+ stabilizer).
  auto before = N > 1 ? torch::constant_pad_nd(torch::cumsum(kv.narrow(2, 0, N - 1), 2), {0, 0, 0, 0, 1, 0})
                      : torch::zeros_like(kv);
  if (state && state->defined()) before = before + state->unsqueeze(2);
  auto y = (inside + torch::matmul(q, before)).view({B, H, N * c, E});
  if (state) {
    torch::NoGradGuard ng;
    *state = (before.select(2, N - 1) + kv.select(2, N - 1)).detach();
  }
  return pad ? y.narrow(2, 0, T) : y;
}

torch::Tensor causal_linear_attention_reference(const torch::Tensor& fq, const torch::Tensor& fk,
                                                const torch::Tensor& v, int64_t chunk, double eps,
                                                LinearAttentionState* state) {
  const int64_t D = v.size(3);
  auto ones = torch::ones({v.size(0), v.size(1), v.size(2), 1}, v.options());
  torch::Tensor sums;  // [S | z]: the denominator is the prefix product of a ones column
  if (state && state->S.defined()) sums = torch::cat({state->S, state->z.unsqueeze(-1)}, -1);
  auto nd = causal_prefix_products_reference(fq, fk, torch::cat({v, ones}, -1), chunk, state ? &sums : nullptr);
  if (state) state->S = sums.narrow(-1, 0, D), state->z = sums.select(-1, D);
  return guarded_ratio(nd.narrow(-1, 0, D), nd.narrow(-1, D, 1), eps);
}

namespace {

// True when the fused kernel takes the call; throws when `kernel` demands it and it cannot.
bool use_fused(const std::string& kernel, const std::vector<std::string>& why) {
  TORCH_CHECK(kernel == "auto" || kernel == "reference" || kernel == "fused",
              "causal linear attention: kernel must be auto, reference or fused, got \"", kernel, "\"");
  if (kernel == "reference") return false;
  if (kernel == "fused" && !why.empty())
    throw Error("kernel \"fused\" cannot take this input: " + join(why, "; "));
  return why.empty();
}

}  // namespace

torch::Tensor causal_prefix_products(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                     int64_t chunk, torch::Tensor* state, const std::string& kernel) {
  LinearAttentionState s;
  if (state) s.S = *state;
  if (kernel != "reference" &&
      use_fused(kernel, causal_linear_attention_unsupported_reasons(a, b, v, state ? &s : nullptr)))
    return causal_prefix_products_fused(a, b, v, chunk, state);
  return causal_prefix_products_reference(a, b, v, chunk, state);
}

torch::Tensor causal_linear_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v,
                                      int64_t chunk, double eps, LinearAttentionState* state,
                                      const std::string& kernel) {
  if (kernel != "reference" && use_fused(kernel, causal_linear_attention_unsupported_reasons(fq, fk, v, state)))
    return causal_linear_attention_fused(fq, fk, v, chunk, eps, state);
  return causal_linear_attention_reference(fq, fk, v, chunk, eps, state);
}

torch::Tensor kernelized_attention(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v,
                                   bool causal, int64_t chunk, double eps, LinearAttentionState* state,
                                   const std::string& kernel) {
  TORCH_CHECK(!state || causal, "kernelized attention: streaming needs causal mode");
  if (causal) return causal_linear_attention(fq, fk, v, chunk, eps, state, kernel);
  return linear_attention(fq, fk, v, eps);
}

torch::Tensor zero_padded(const torch::Tensor& features, const torch::Tensor& key_padding) {
  if (!key_padding.defined()) return features;
  auto keep = (~key_padding.to(torch::kBool)).to(features.dtype());
  return features * keep.view({features.size(0), 1, features.size(2), 1});
}

}  // namespace longseq
