// ∞-former (Martins et al. 2022): the continuous memory's algebra against
// definitions written here (Gaussian densities, a direct linear solve,
// quadrature), and the `infinity_former` mixer's long-term memory: the
// sheet's limiting cases 1-7.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/kernels/continuous_memory.h"
#include "longseq/models.h"
#include "longseq/registry.h"
#include "mixer_helpers.h"

using namespace longseq;

namespace infinity_former_test {

using longseq_test::param;

constexpr double kPi = 3.14159265358979323846;
const auto kF64 = torch::TensorOptions().dtype(torch::kDouble);

double gauss(double x, double m, double s2) { return std::exp(-(x - m) * (x - m) / (2 * s2)) / std::sqrt(2 * kPi * s2); }

// psi_n(t) by the definition: N/2 centres linspace(0, 1) for each width, narrow first.
torch::Tensor psi(const std::vector<double>& t, int64_t N, double narrow, double wide) {
  auto out = torch::zeros({int64_t(t.size()), N}, kF64);
  for (size_t i = 0; i < t.size(); ++i)
    for (int64_t n = 0; n < N; ++n) {
      const int64_t c = n % (N / 2);
      const double mu = N / 2 == 1 ? 0.5 : double(c) / double(N / 2 - 1), s = n < N / 2 ? narrow : wide;
      out[int64_t(i)][n] = gauss(t[i], mu, s * s);
    }
  return out;
}

double rel(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-300);
}

// Sheet case 1: B = G^T X is the solution of (F F^T + lambda I) B = F X; with lambda -> 0 and X in the span of
// the basis the fit recovers the coefficients and reproduces the signal at the points.
TEST(ContinuousMemory, RidgeFitSolvesTheNormalEquationsAndRecoversASignalInTheSpan) {
  const int64_t N = 6, L = 20, C = 3;
  std::vector<double> t;
  for (int64_t i = 1; i <= L; ++i) t.push_back(double(i) / L);
  auto basis = rbf_basis(N, 0.1, 0.3, kF64);
  auto tt = torch::tensor(t, kF64);
  EXPECT_LT(rel(rbf_evaluate(basis, tt), psi(t, N, 0.1, 0.3)), 1e-14);
  auto F = psi(t, N, 0.1, 0.3).t();  // [N, L]
  auto X = torch::randn({L, C}, kF64);
  auto direct = torch::linalg_solve(torch::matmul(F, F.t()) + 0.7 * torch::eye(N, kF64), torch::matmul(F, X), true);
  EXPECT_LT(rel(torch::matmul(ridge_fit_matrix(basis, tt, 0.7).t(), X), direct), 1e-10);
  auto Bstar = torch::randn({N, C}, kF64);
  auto Xs = torch::matmul(F.t(), Bstar);
  auto B = torch::matmul(ridge_fit_matrix(basis, tt, 1e-11).t(), Xs);
  EXPECT_LT(rel(B, Bstar), 1e-4);
  EXPECT_LT(rel(torch::matmul(rbf_evaluate(basis, tt), B), Xs), 1e-8);
}

// Sheet case 2: the closed form E[psi_n] = N(mu; mu_n, sigma_n^2 + sigma^2) equals quadrature over the real line;
// case 3: as sigma^2 -> 0 it becomes the point evaluation psi(mu).
TEST(ContinuousMemory, ClosedFormExpectationEqualsQuadratureAndPointEvaluationInTheLimit) {
  const int64_t N = 8;
  auto basis = rbf_basis(N, 0.01, 0.05, kF64);
  for (auto [mu, var] : std::vector<std::pair<double, double>>{{0.3, 0.02}, {0.91, 0.0004}, {-0.2, 0.1}}) {
    auto closed = gaussian_basis_expectation(basis, torch::tensor({mu}, kF64), torch::tensor({var}, kF64))[0];
    for (int64_t n = 0; n < N; ++n) {
      const double mn = basis.mu[n].item<double>(), sn = basis.sigma[n].item<double>();
      const double lo = -4.0, hi = 5.0;  // Simpson's rule, step far below the narrowest width
      const int64_t steps = 400000;
      const double h = (hi - lo) / steps;
      double sum = 0;
      for (int64_t i = 0; i <= steps; ++i) {
        const double x = lo + i * h, w = (i == 0 || i == steps) ? 1 : (i % 2 ? 4 : 2);
        sum += w * gauss(x, mu, var) * gauss(x, mn, sn * sn);
      }
      const double quad = sum * h / 3;
      EXPECT_LE(std::abs(closed[n].item<double>() - quad), 1e-8 * quad + 1e-250)
          << "mu=" << mu << " var=" << var << " n=" << n;
    }
  }
  auto mu = torch::tensor({0.37, 0.5}, kF64);
  auto limit = gaussian_basis_expectation(basis, mu, torch::full({2}, 1e-14, kF64));
  EXPECT_LT(rel(limit, rbf_evaluate(basis, mu)), 1e-6);
}

// Sheet case 7: autograd of the closed form matches finite differences in mu and sigma^2.
TEST(ContinuousMemory, ClosedFormGradientsMatchFiniteDifferences) {
  auto basis = rbf_basis(8, 0.1, 0.2, kF64);
  auto mu = torch::tensor({0.2, 0.55, 0.8}, kF64).requires_grad_(true);
  auto var = torch::tensor({0.02, 0.01, 0.05}, kF64).requires_grad_(true);
  auto w = torch::randn({3, 8}, kF64);
  auto f = [&] { return (gaussian_basis_expectation(basis, mu, var) * w).sum(); };
  EXPECT_LT(longseq_test::gradcheck_error(f, mu), 1e-6);
  EXPECT_LT(longseq_test::gradcheck_error(f, var), 1e-6);
}

// Sheet case 5: the refit's positions: old samples at tau j / M, new vectors at tau + (1 - tau) i / L.
TEST(ContinuousMemory, ContractionPositionsAreTheGridsOfTheUnboundedMemory) {
  auto p = memory_positions(4, 2, 0.75, kF64);
  auto want = torch::tensor({0.75 * 0.25, 0.75 * 0.5, 0.75 * 0.75, 0.75, 0.75 + 0.25 * 0.5, 1.0}, kF64);
  EXPECT_LT((p - want).abs().max().item<double>(), 1e-15);
  EXPECT_LT((memory_positions(0, 4, 0.75, kF64) - torch::tensor({0.25, 0.5, 0.75, 1.0}, kF64)).abs().max().item<double>(),
            1e-15);
}

// Sheet case 6: bin probabilities are non-negative and sum to 1; densities confined to one bin put every sample there.
TEST(ContinuousMemory, StickyBinsAreADistributionAndConcentratedDensitiesSampleTheirBin) {
  auto mu = torch::rand({2, 3, 5}, kF64), var = torch::rand({2, 3, 5}, kF64) * 0.05 + 1e-4;
  auto mass = density_bin_mass(mu, var, 16);
  ASSERT_EQ(mass.sizes(), (std::vector<int64_t>{2, 16}));
  auto p = mass / mass.sum(1, true);
  EXPECT_GE(p.min().item<double>(), 0.0);
  EXPECT_LT((p.sum(1) - 1).abs().max().item<double>(), 1e-12);
  auto tight = density_bin_mass(torch::full({1, 4}, 0.33, kF64), torch::full({1, 4}, 1e-8, kF64), 10);
  auto pos = sticky_positions(tight, 50);
  EXPECT_LT((pos - 0.3).abs().max().item<double>(), 1e-12) << "the left edge of bin [0.3, 0.4)";
}

Mixer inf_mixer(Json options, int64_t C = 8, int64_t H = 2) {
  auto m = longseq_test::build_mixer("infinity_former", std::move(options), C, H, 9);
  torch::NoGradGuard g;
  param(*m, "ltm_out.weight").normal_(0.0, 0.5);  // a visible long-term contribution
  return m;
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, MixerState* st = nullptr) {
  return longseq_test::run_mixer(m, x, true, {}, st);
}

// The long-term read from the state's coefficients by the definition (sec. 3.1, eq. 5): K = B W_K, V = B W_V,
// s = K q / sqrt(D), mu = sigmoid(w_mu . s), sigma^2 = softplus(w_sigma . s), r_n = N(mu; mu_n, sigma_n^2 + sigma^2).
torch::Tensor long_term_by_definition(const Mixer& m, const torch::Tensor& coeff, const torch::Tensor& x, int64_t H,
                                      int64_t N) {
  const int64_t T = x.size(1), C = x.size(2), D = C / H;
  auto q = torch::matmul(x[0], param(*m, "q.weight").t()).view({T, H, D});
  auto kv = torch::matmul(coeff[0], param(*m, "ltm_kv.weight").t());
  auto K = kv.narrow(1, 0, C).view({N, H, D}), V = kv.narrow(1, C, C).view({N, H, D});
  auto z = torch::zeros({T, H, D}, kF64);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < T; ++i) {
      auto s = torch::matmul(K.select(1, h), q[i][h]) / std::sqrt(double(D));
      const double mu = 1 / (1 + std::exp(-s.dot(param(*m, "w_mu")).item<double>()));
      const double var = std::max(std::log1p(std::exp(s.dot(param(*m, "w_sigma")).item<double>())), 1e-6);
      auto r = torch::zeros({N}, kF64);
      for (int64_t n = 0; n < N; ++n) {
        const double mn = double(n % (N / 2)) / double(N / 2 - 1), sn = n < N / 2 ? 0.01 : 0.05;
        r[n] = gauss(mu, mn, sn * sn + var);
      }
      z[i][h] = torch::matmul(r, V.select(1, h));
    }
  return torch::matmul(z.reshape({T, C}), param(*m, "ltm_out.weight").t());
}

// The first refit is the ridge fit of the masked inputs of segment 0 at i / L; the long-term part of the next
// outputs is eq. 5 read from it; it reaches tokens the short-term attention cannot.
TEST(InfinityFormer, TheMemoryIsTheFitOfTheLeavingInputsAndIsReadByGaussianDensities) {
  const int64_t L = 4, N = 6, C = 8, H = 2;
  auto m = inf_mixer({{"segment", L}, {"basis", N}, {"samples", 5}});
  auto x = torch::randn({1, 3 * L, C}, kF64);
  auto st = m->initial_state(1);
  run(m, x.narrow(1, 0, 2 * L + 1), st.get());  // segment 2 started: segment 0 left the short-term memory
  auto coeff = st->tensors().at("coeff");
  auto X = x[0].narrow(0, 0, L);
  auto gate = torch::sigmoid(torch::conv1d(X.t().unsqueeze(0), param(*m, "mask.weight"), param(*m, "mask.bias"), 1, 1));
  auto Xm = X * gate[0].t();
  std::vector<double> t;
  for (int64_t i = 1; i <= L; ++i) t.push_back(double(i) / L);
  auto F = psi(t, N, 0.01, 0.05).t();
  auto want = torch::linalg_solve(torch::matmul(F, F.t()) + torch::eye(N, kF64), torch::matmul(F, Xm), true);
  EXPECT_LT(rel(coeff[0], want), 1e-8);
  ASSERT_EQ(coeff.sizes(), (std::vector<int64_t>{1, N, C}));

  auto rest = x.narrow(1, 2 * L + 1, L - 1);
  auto before = m->initial_state(1);
  run(m, x.narrow(1, 0, 2 * L + 1), before.get());
  auto y = run(m, rest, before.get());
  auto want_ltm = long_term_by_definition(m, coeff, rest, H, N);
  {
    torch::NoGradGuard g;
    param(*m, "ltm_out.weight").mul_(0);
  }
  auto base = run(m, rest, st.get());
  EXPECT_LT(rel(y[0] - base[0], want_ltm), 1e-8);
}

// Sheet case 4: with W_O = 0 the layer is Transformer-XL over the segment and the previous one: the `xl` mixer
// with mem_len = L fed segment by segment, same weights.
TEST(InfinityFormer, WithoutTheLongTermOutputItIsTransformerXlOverTwoSegments) {
  const int64_t L = 4;
  auto m = inf_mixer({{"segment", L}, {"basis", 6}, {"samples", 5}});
  auto xl = longseq_test::build_mixer("xl", {{"mem_len", L}}, 8, 2, 3);
  {
    torch::NoGradGuard g;
    param(*m, "ltm_out.weight").zero_();
    for (const char* n : {"q.weight", "kv.weight", "r.weight", "out.weight", "u", "v"}) param(*xl, n).copy_(param(*m, n));
  }
  auto x = torch::randn({2, 4 * L, 8}, kF64);
  auto sx = xl->initial_state(2);
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < 4; ++s) parts.push_back(run(xl, x.narrow(1, s * L, L), sx.get()));
  EXPECT_LT(rel(run(m, x), torch::cat(parts, 1)), 1e-10);
}

// What the memory is for: a change in segment 0 reaches segment 3, beyond the short-term window, only through the
// long-term memory; the memory stays [B, N, C] however long the stream; and no gradient crosses it (sheet case 5).
TEST(InfinityFormer, EarlyTokensReachLateOnesOnlyThroughTheFixedSizeMemoryWithGradientsStopped) {
  const int64_t L = 4, N = 6;
  auto x = torch::randn({1, 4 * L, 8}, kF64), x2 = x.clone();
  x2.narrow(1, 0, L).normal_();
  for (bool with_ltm : {true, false}) {
    auto m = inf_mixer({{"segment", L}, {"basis", N}, {"samples", 5}});
    if (!with_ltm) {
      torch::NoGradGuard g;
      param(*m, "ltm_out.weight").zero_();
    }
    const double d = (run(m, x) - run(m, x2)).narrow(1, 3 * L, L).abs().max().item<double>();
    if (with_ltm) EXPECT_GT(d, 1e-6);
    else EXPECT_EQ(d, 0.0);
  }
  auto m = inf_mixer({{"segment", L}, {"basis", N}, {"samples", 5}, {"sticky", true}, {"bins", 8}});
  auto st = m->initial_state(1);
  auto x1 = torch::randn({1, L, 8}, kF64).requires_grad_(true);
  run(m, x1, st.get());
  torch::Tensor y;
  for (int64_t s = 1; s < 12; ++s) {
    y = run(m, torch::randn({1, L, 8}, kF64), st.get());
    if (s >= 2) {
      EXPECT_EQ(st->tensors().at("coeff").sizes(), (std::vector<int64_t>{1, N, 8}));
    }
  }
  EXPECT_FALSE(st->tensors().at("coeff").requires_grad());
  y.sum().backward();
  EXPECT_FALSE(x1.grad().defined() && x1.grad().abs().sum().item<double>() != 0.0);
  EXPECT_TRUE(param(*m, "ltm_kv.weight").grad().defined());
  EXPECT_TRUE(param(*m, "mask.weight").grad().defined()) << "the mask trains through the current refit";
}

// Streaming: segments and token-by-token decoding of a decoder equal one causal pass (float32, fused kernel)
// computed with gradients on, where no keys or values are kept between pieces.
TEST(InfinityFormerModel, SegmentsAndTokenByTokenDecodingEqualOnePass) {
  Json cfg = {{"vocab_size", 64}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32}, {"positions", "none"},
              {"mixer", {{"name", "infinity_former"}, {"segment", 5}, {"basis", 8}, {"samples", 6}}}};
  torch::manual_seed(2);
  DecoderLM model(ModelConfig::from_json(cfg));
  model->eval();
  auto tokens = torch::randint(0, 64, {2, 27}, torch::kLong);
  auto whole = model->forward(tokens).detach();  // with gradients on: nothing kept, the reference recomputes all
  torch::NoGradGuard ng;  // the cached keys and values of the memory and of the long-term signal in use
  auto st = model->initial_state(2);
  std::vector<torch::Tensor> parts;
  for (auto [at, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 7}, {7, 12}, {19, 8}})
    parts.push_back(model->forward(tokens.narrow(1, at, n), &st));
  EXPECT_LT((torch::cat(parts, 1) - whole).abs().max().item<double>(), 1e-4);
  auto dec = model->initial_state(2);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 27; ++t) steps.push_back(model->forward(tokens.narrow(1, t, 1), &dec));
  EXPECT_LT((torch::cat(steps, 1) - whole).abs().max().item<double>(), 1e-4);
}

TEST(InfinityFormer, BadOptionsAreNamed) {
  auto what = [](Json o) {
    try {
      inf_mixer(std::move(o));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(what({{"basis", 7}}).find("basis"), std::string::npos);
  EXPECT_NE(what({{"tau", 1.0}}).find("tau"), std::string::npos);
  EXPECT_NE(what({{"segment", 0}}).find("segment"), std::string::npos);
  EXPECT_THROW(longseq_test::run_mixer(inf_mixer({}), torch::randn({1, 3, 8}, kF64), false), std::exception);
}

}  // namespace infinity_former_test
