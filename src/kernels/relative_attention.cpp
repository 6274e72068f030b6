// Transformer-XL's relative attention: the reference path (the paper's
// materialized scores and App. B's shift) and the dispatch to the fused kernel.
#include "longseq/kernels/relative_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"

namespace longseq {

torch::Tensor distance_sinusoid(int64_t n, int64_t C, int64_t clamp, const torch::TensorOptions& opts) {
  auto p = torch::arange(n, opts);
  if (clamp >= 0) p = p.clamp_max(static_cast<double>(clamp));
  auto freq = torch::exp(torch::arange(C / 2, opts) * (-2.0 * std::log(10000.0) / static_cast<double>(C)));
  auto angle = p.unsqueeze(1) * freq.unsqueeze(0);
  return torch::cat({torch::sin(angle), torch::cos(angle)}, 1);
}

torch::Tensor RelativePositionTable::get(torch::nn::Linear& proj, int64_t n, const torch::Tensor& like) {
  const bool cacheable = !torch::GradMode::is_enabled();
  const int64_t version = static_cast<int64_t>(proj->weight._version());
  if (cacheable && cache_.defined() && cache_.size(1) >= n && version_ == version &&
      cache_.scalar_type() == like.scalar_type() && cache_.device() == like.device())
    return cache_;
  const int64_t had = cache_.defined() ? cache_.size(1) : 0;
  const int64_t rows = !cacheable ? n : n <= had ? had : std::max<int64_t>(n, 2 * had);
  auto r = proj(distance_sinusoid(rows, C_, clamp_, like.options())).view({rows, H_, C_ / H_}).transpose(0, 1).contiguous();
  if (cacheable) cache_ = r, version_ = version;
  return r;
}

torch::Tensor rel_shift(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "rel_shift: x must be [..., T, K], got ", x.sizes());
  const int64_t T = x.size(-2), K = x.size(-1);
  auto lead = x.sizes().slice(0, x.dim() - 2).vec();
  auto with = [&](std::vector<int64_t> tail) {
    auto s = lead;
    s.insert(s.end(), tail.begin(), tail.end());
    return s;
  };
  // Pad one zero column in front, read the [T, K + 1] buffer as [K + 1, T], drop its first row, read as [T, K].
  auto padded = torch::cat({torch::zeros(with({T, 1}), x.options()), x}, -1).contiguous();
  return padded.view(with({K + 1, T})).narrow(-2, 1, K).reshape(with({T, K}));
}

void check_relative_attention_inputs(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& r, const RelativeMask& mask) {
  TORCH_CHECK(qu.dim() == 4 && qv.sizes() == qu.sizes() && k.dim() == 4 && v.sizes() == k.sizes() &&
                  k.size(0) == qu.size(0) && k.size(1) == qu.size(1) && k.size(3) == qu.size(3),
              "relative_attention: qu, qv must be [B, H, T, D] and k, v [B, H, K, D] alike; got ", qu.sizes(), ", ",
              qv.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const int64_t T = qu.size(2), K = k.size(2);
  TORCH_CHECK(mask.memory >= 0 && K == mask.memory + T, "relative_attention: K = ", K,
              " keys must be the memory M = ", mask.memory, " plus the T = ", T, " queries");
  TORCH_CHECK(r.dim() == 3 && r.size(0) == qu.size(1) && r.size(2) == qu.size(3) && r.size(1) >= K,
              "relative_attention: r must be [H, R, D] = [", qu.size(1), ", >= ", K, ", ", qu.size(3), "], got ",
              r.sizes());
  TORCH_CHECK(mask.max_distance >= -1, "relative_attention: max_distance must be >= 0 or -1 (none), got ",
              mask.max_distance);
  if (mask.key_padding.defined())
    TORCH_CHECK(mask.key_padding.dim() == 2 && mask.key_padding.size(0) == qu.size(0) && mask.key_padding.size(1) == K,
                "relative_attention: key_padding must be [B, K] = [", qu.size(0), ", ", K, "], got ",
                mask.key_padding.sizes());
}

torch::Tensor relative_attention_reference(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                           const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask,
                                           double dropout, bool training) {
  check_relative_attention_inputs(qu, qv, k, v, r, mask);
  const int64_t T = qu.size(2), K = k.size(2), M = mask.memory;
  const double scale = 1.0 / std::sqrt(static_cast<double>(qu.size(3)));
  auto ac = torch::matmul(qu, k.transpose(-2, -1));                    // (a) + (c): [B, H, T, K]
  auto r_desc = r.narrow(1, 0, K).flip({1});                            // column c = distance K - 1 - c
  auto bd = rel_shift(torch::matmul(qv, r_desc.transpose(-2, -1).unsqueeze(0)));  // (b) + (d), App. B
  auto scores = (ac + bd) * scale;
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(qu.device());
  auto dist = torch::arange(T, opts).unsqueeze(1) + M - torch::arange(K, opts).unsqueeze(0);  // [T, K]
  auto blocked = dist < 0;
  if (mask.max_distance >= 0) blocked = blocked | (dist > mask.max_distance);
  blocked = blocked.view({1, 1, T, K});
  if (mask.key_padding.defined())
    blocked = blocked | mask.key_padding.to(qu.device()).to(torch::kBool).view({-1, 1, 1, K});
  // The lowest finite value keeps a fully masked row finite; the row is then zeroed.
  scores = scores.masked_fill(blocked, std::numeric_limits<float>::lowest());
  auto probs = torch::softmax(scores, -1) * (~blocked).any(-1, true).to(scores.dtype());
  if (dropout > 0.0 && training) probs = torch::dropout(probs, dropout, true);
  return torch::matmul(probs, v);
}

torch::Tensor relative_attention(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask,
                                 const std::string& kernel, double dropout, bool training) {
  if (kernel != "auto" && kernel != "fused" && kernel != "reference")
    throw Error("relative_attention: kernel must be auto, fused or reference, got \"" + kernel + "\"");
  if (kernel == "reference") return relative_attention_reference(qu, qv, k, v, r, mask, dropout, training);
  auto why = relative_attention_unsupported_reasons(qu, qv, k, v, r, mask);
  if (dropout > 0.0 && training) why.push_back("attention dropout is not fused");
  if (!why.empty()) {
    if (kernel == "fused") throw Error("relative attention kernel \"fused\" cannot take this input: " + join(why, "; "));
    return relative_attention_reference(qu, qv, k, v, r, mask, dropout, training);
  }
  return relative_attention_fused(qu, qv, k, v, r, mask);
}

double relative_attention_flops(int64_t B, int64_t H, int64_t T, int64_t K, int64_t D, int64_t max_distance) {
  const int64_t M = K - T;
  double pairs = 0;  // query i sees min(M + i + 1, max_distance + 1) keys
  for (int64_t i = 0; i < T; ++i)
    pairs += static_cast<double>(max_distance >= 0 ? std::min(M + i + 1, max_distance + 1) : M + i + 1);
  return 6.0 * static_cast<double>(B * H * D) * pairs;  // content and position dot products, and P V
}

}  // namespace longseq
