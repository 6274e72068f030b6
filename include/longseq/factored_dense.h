// The Scaling Transformer's multiplicative dense layer (Jaszczur et al. 2021, "Sparse is Enough in Scaling
// Transformers", sec. 3.2, Fig. 4a; trax FactoredDense): x [.., C] -> y [.., S * M] with
//   y[s * M + m] = sum_c x_c D[s, c] E[c, m] + b[s * M + m],
// D [S, C] normal with standard deviation 0.5 (trax), E [C, M] Glorot. Modules are contiguous (module s fills
// features s M .. s M + M - 1), so with S = H module s feeds head s. Parameters C S + C M + S M instead of C S M;
// work per token C S products for x D_s, then S C M = C (S M) multiply-adds for the products with E.
#pragma once
#include <torch/torch.h>

namespace longseq {

class FactoredDenseImpl : public torch::nn::Module {
 public:
  FactoredDenseImpl(int64_t in, int64_t modules, int64_t module_width, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);  // [.., C] -> [.., S * M]
  int64_t modules() const { return S_; }
  int64_t module_width() const { return M_; }

 private:
  int64_t S_, M_;
  torch::Tensor d_, e_, b_;
};
TORCH_MODULE(FactoredDense);

}  // namespace longseq
