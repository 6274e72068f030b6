#include "longseq/factored_dense.h"

#include <cmath>

namespace longseq {

FactoredDenseImpl::FactoredDenseImpl(int64_t in, int64_t modules, int64_t module_width, bool bias)
    : S_(modules), M_(module_width) {
  d_ = register_parameter("d", torch::randn({S_, in}) * 0.5);  // trax: standard deviation 0.5
  const double limit = std::sqrt(6.0 / static_cast<double>(in + M_));    // Glorot uniform
  e_ = register_parameter("e", torch::empty({in, M_}).uniform_(-limit, limit));
  if (bias) b_ = register_parameter("b", torch::zeros({S_ * M_}));
}

torch::Tensor FactoredDenseImpl::forward(const torch::Tensor& x) {
  // (x * D_s) E for every module s at once: [.., S, C] @ [C, M] -> [.., S, M]; the [.., S, C] product is C S a token.
  auto y = torch::matmul(x.unsqueeze(-2) * d_, e_).flatten(-2);
  return b_.defined() ? y + b_ : y;
}

}  // namespace longseq
