// The ∞-former's continuous long-term memory (Martins et al. 2022, sec. 2-3):
// a sequence of L vectors becomes a signal X(t) = B^T psi(t) on [0, 1] over N
// Gaussian radial basis functions, fit by ridge regression (sec. 3.1), read by
// Gaussian densities in closed form (sec. 2, eq. 5's expectation), contracted
// into a share tau of [0, 1] when new vectors arrive (sec. 3.2), with sticky
// sampling of the old signal where attention was dense (sec. 3.3).
#pragma once
#include <torch/torch.h>

namespace longseq {

// N normalized Gaussian densities psi_n(t) = N(t; mu_n, sigma_n^2): N / 2 centres linspace(0, 1, N / 2) for each
// of the two widths (the narrow ones first). N even, >= 2.
struct RbfBasis {
  torch::Tensor mu, sigma;  // [N]
};
RbfBasis rbf_basis(int64_t N, double narrow, double wide, const torch::TensorOptions& opts);

// psi(t): t [...] -> [..., N].
torch::Tensor rbf_evaluate(const RbfBasis& basis, const torch::Tensor& t);

// G = F^T (F F^T + lambda I)^-1 for F = [psi(t_1) ... psi(t_L)] ([N, L]), so that B = G^T X ([N, C]) is the ridge
// fit of the rows of X ([L, C]) at the positions t ([L]). Solved by Cholesky. -> [L, N].
torch::Tensor ridge_fit_matrix(const RbfBasis& basis, const torch::Tensor& t, double lambda);

// The positions of a refit (sec. 3.2): `old` samples of the old signal at tau j / old (j = 1 .. old), then the
// `fresh` new vectors at tau + (1 - tau) i / fresh (i = 1 .. fresh); with old = 0 the new ones at i / fresh. -> [old + fresh].
torch::Tensor memory_positions(int64_t old, int64_t fresh, double tau, const torch::TensorOptions& opts);

// E_{N(mu, var)}[psi_n(t)] over the real line in closed form: N(mu; mu_n, sigma_n^2 + var). mu, var [...] -> [..., N].
torch::Tensor gaussian_basis_expectation(const RbfBasis& basis, const torch::Tensor& mu, const torch::Tensor& var);

// Sticky memories (sec. 3.3): the mass of the densities N(mu, var) in each of `bins` equal bins of [0, 1],
// summed over every dimension but the first. mu, var [B, ...] -> [B, bins], unnormalized.
torch::Tensor density_bin_mass(const torch::Tensor& mu, const torch::Tensor& var, int64_t bins);

// `samples` bins drawn per row from mass [B, bins] (rows of zero mass draw uniformly), each position the left edge
// of its bin, sorted: [B, samples]. Uses the global generator.
torch::Tensor sticky_positions(const torch::Tensor& mass, int64_t samples);

}  // namespace longseq
