// The ∞-former's continuous memory: basis, ridge fit, closed-form Gaussian
// reads and sticky sampling (Martins et al. 2022, sec. 2-3).
#include "longseq/kernels/continuous_memory.h"

#include <cmath>

#include "longseq/common.h"

namespace longseq {

namespace {
constexpr double kPi = 3.14159265358979323846;

// N(x; m, s2) elementwise.
torch::Tensor normal_density(const torch::Tensor& x, const torch::Tensor& m, const torch::Tensor& s2) {
  return torch::exp(-(x - m).square() / (2 * s2)) / torch::sqrt(2 * kPi * s2);
}
}  // namespace

RbfBasis rbf_basis(int64_t N, double narrow, double wide, const torch::TensorOptions& opts) {
  if (N < 2 || N % 2 != 0) throw Error("continuous memory: the number of basis functions must be even and >= 2, got " +
                                       std::to_string(N));
  auto centres = N / 2 == 1 ? torch::full({1}, 0.5, opts) : torch::linspace(0.0, 1.0, N / 2, opts);
  RbfBasis b;
  b.mu = torch::cat({centres, centres});
  b.sigma = torch::cat({torch::full({N / 2}, narrow, opts), torch::full({N / 2}, wide, opts)});
  return b;
}

torch::Tensor rbf_evaluate(const RbfBasis& basis, const torch::Tensor& t) {
  return normal_density(t.unsqueeze(-1), basis.mu, basis.sigma.square());
}

torch::Tensor ridge_fit_matrix(const RbfBasis& basis, const torch::Tensor& t, double lambda) {
  auto F = rbf_evaluate(basis, t).t();  // [N, L]
  auto A = torch::matmul(F, F.t()) + lambda * torch::eye(F.size(0), F.options());
  auto L = torch::linalg_cholesky(A);
  return torch::cholesky_solve(F, L).t();  // (A^-1 F)^T = F^T A^-1, A symmetric
}

torch::Tensor memory_positions(int64_t old, int64_t fresh, double tau, const torch::TensorOptions& opts) {
  auto i = torch::arange(1, fresh + 1, opts) / static_cast<double>(fresh);
  if (old == 0) return i;
  auto j = torch::arange(1, old + 1, opts) / static_cast<double>(old);
  return torch::cat({tau * j, tau + (1.0 - tau) * i});
}

torch::Tensor gaussian_basis_expectation(const RbfBasis& basis, const torch::Tensor& mu, const torch::Tensor& var) {
  return normal_density(mu.unsqueeze(-1), basis.mu, basis.sigma.square() + var.unsqueeze(-1));
}

torch::Tensor density_bin_mass(const torch::Tensor& mu, const torch::Tensor& var, int64_t bins) {
  auto edges = torch::linspace(0.0, 1.0, bins + 1, mu.options());
  auto sd = torch::sqrt(var).unsqueeze(-1);
  auto cdf = 0.5 * (1 + torch::erf((edges - mu.unsqueeze(-1)) / (sd * std::sqrt(2.0))));  // [..., bins + 1]
  auto mass = (cdf.narrow(-1, 1, bins) - cdf.narrow(-1, 0, bins)).clamp_min(0.0);
  return mass.reshape({mu.size(0), -1, bins}).sum(1);
}

torch::Tensor sticky_positions(const torch::Tensor& mass, int64_t samples) {
  const int64_t bins = mass.size(1);
  auto total = mass.sum(1, true);
  auto p = torch::where(total > 0, mass / total.clamp_min(1e-300), torch::full_like(mass, 1.0 / bins));
  auto drawn = torch::multinomial(p.to(torch::kDouble), samples, /*replacement=*/true);
  return std::get<0>(torch::sort(drawn.to(mass.scalar_type()) / static_cast<double>(bins), 1));
}

}  // namespace longseq
