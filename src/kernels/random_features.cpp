// Random-feature maps: Choromanski et al. 2021 ("Rethinking Attention with
// Performers"), sec. 2 (orthogonal random features) and Lemma 1 (positive features).
#include "longseq/kernels/random_features.h"

#include <cmath>

namespace longseq {

torch::Tensor gaussian_projection(int64_t M, int64_t D, bool orthogonal, bool fixed_norms, at::Generator gen) {
  TORCH_CHECK(M > 0 && D > 0, "gaussian_projection: M and D must be positive");
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  if (!orthogonal) return at::normal(0.0, 1.0, {M, D}, gen).to(torch::kFloat);
  std::vector<torch::Tensor> blocks;
  for (int64_t done = 0; done < M; done += D) {
    auto g = at::normal(0.0, 1.0, {D, D}, gen).to(torch::kDouble);
    auto qr = torch::linalg_qr(g);
    auto q = std::get<0>(qr) * torch::sign(torch::diagonal(std::get<1>(qr))).unsqueeze(0);  // Haar-uniform
    blocks.push_back(q.t().narrow(0, 0, std::min(D, M - done)));  // rows are orthonormal
  }
  auto rows = torch::cat(blocks, 0);
  auto norms = fixed_norms ? torch::full({M, 1}, std::sqrt(double(D)), opts)
                           : at::normal(0.0, 1.0, {M, D}, gen).to(torch::kDouble).norm(2, 1, true);  // chi(D)
  return (rows * norms).to(torch::kFloat);
}

torch::Tensor favor_exponents(const torch::Tensor& x, const torch::Tensor& W, double norm_weight) {
  const double s = std::pow(double(x.size(-1)), -0.25);
  auto xs = x * s;
  return torch::matmul(xs, W.to(x.dtype()).transpose(-1, -2)) - norm_weight * xs.pow(2).sum(-1, true);
}

torch::Tensor grow_key_max(LinearAttentionState& sums, torch::Tensor& key_max, const torch::Tensor& c) {
  if (!key_max.defined()) return key_max = c;
  auto grown = torch::maximum(key_max, c);
  if (sums.S.defined()) {  // -inf = no real key yet (the sums are 0): no rescaling, and no -inf - -inf
    auto f = torch::where(grown == key_max, torch::ones_like(grown), torch::exp(key_max - grown));
    sums.S = sums.S * f.view({f.size(0), f.size(1), 1, 1});
    sums.z = sums.z * f.unsqueeze(-1);
  }
  return key_max = grown;
}

torch::Tensor favor_query_features(const torch::Tensor& e) {
  auto c = std::get<0>(e.detach().max(-1, true));
  return torch::exp(e - c) / std::sqrt(double(e.size(-1)));
}

torch::Tensor favor_key_features(const torch::Tensor& e, const torch::Tensor& c) {
  return torch::exp(e - c.detach().view({e.size(0), e.size(1), 1, 1})) / std::sqrt(double(e.size(-1)));
}

torch::Tensor favor_key_max(const torch::Tensor& e, const torch::Tensor& key_padding) {
  torch::NoGradGuard ng;
  auto m = std::get<0>(e.max(-1));  // [B, H, T]
  if (key_padding.defined())
    m = m.masked_fill(key_padding.to(torch::kBool).unsqueeze(1), -std::numeric_limits<double>::infinity());
  return std::get<0>(m.max(-1));  // -inf where every key is padding
}

FeaturePair favor_features(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& W,
                           const torch::Tensor& key_padding, double norm_weight, LinearAttentionState* sums,
                           torch::Tensor* key_max) {
  auto ek = favor_exponents(k, W, norm_weight);
  auto c = favor_key_max(ek, key_padding);
  if (key_max) c = grow_key_max(*sums, *key_max, c);
  c = c.masked_fill(torch::isinf(c), 0.0);  // no real key (yet): these features are all zeroed, any constant will do
  return {favor_query_features(favor_exponents(q, W, norm_weight)),
          zero_padded(favor_key_features(ek, c), key_padding)};
}

}  // namespace longseq
