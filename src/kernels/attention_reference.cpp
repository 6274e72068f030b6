#include "longseq/kernels/attention_reference.h"

#include <cmath>
#include <limits>

namespace longseq {

torch::Tensor attention_reference_blocked(int64_t T, int64_t S, const AttentionMask& mask,
                                          const torch::Device& device) {
  torch::Tensor blocked;
  if (mask.causal) {
    auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
    auto qpos = torch::arange(T, opts).unsqueeze(1) + (S - T);
    auto kpos = torch::arange(S, opts).unsqueeze(0);
    blocked = (kpos > qpos).view({1, 1, T, S});
  }
  if (mask.key_padding.defined()) {
    auto pad = mask.key_padding.to(device).to(torch::kBool).view({-1, 1, 1, S});
    blocked = blocked.defined() ? (blocked | pad) : pad;
  }
  return blocked;
}

torch::Tensor attention_reference(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const AttentionMask& mask,
                                  double dropout, bool training) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "attention_reference: q, k, v must be [B, H, T, D]; got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), "attention_reference: k ", k.sizes(), " and v ",
              v.sizes(), " differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "attention_reference: q ", q.sizes(), " does not match k ", k.sizes());
  const int64_t T = q.size(2), S = k.size(2);
  TORCH_CHECK(!mask.causal || S >= T, "attention_reference: causal needs S >= T, got T=", T,
              " S=", S);
  if (mask.key_padding.defined())
    TORCH_CHECK(mask.key_padding.dim() == 2 && mask.key_padding.size(0) == q.size(0) &&
                    mask.key_padding.size(1) == S,
                "attention_reference: key_padding must be [B, S] = [", q.size(0), ", ", S,
                "], got ", mask.key_padding.sizes());
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;  // [B, H, T, S]
  auto blocked = attention_reference_blocked(T, S, mask, q.device());
  // The lowest finite value (not -inf) keeps fully-masked rows finite (no NaN);
  // such rows are then zeroed, so a query that sees no key returns zeros.
  torch::Tensor probs;
  if (blocked.defined()) {
    scores = scores.masked_fill(blocked, std::numeric_limits<float>::lowest());
    auto sees_some = (~blocked).any(-1, /*keepdim=*/true);
    probs = torch::softmax(scores, -1) * sees_some.to(scores.dtype());
  } else {
    probs = torch::softmax(scores, -1);
  }
  if (dropout > 0.0 && training) probs = torch::dropout(probs, dropout, true);
  return torch::matmul(probs, v);
}

}  // namespace longseq
