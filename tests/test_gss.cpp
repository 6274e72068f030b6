// The gss block (src/blocks/gss.cpp): ../shared/mechanisms/gss.md, exact cases 1-9, against a reference written
// here from the definitions: the DSS-exp kernel with a step Delta (DSS sec. 3) set to 1, the per-token complex
// recurrence, the softmax over k of DSS-softmax, and direct O(T^2) sums for the leads.
#include <gtest/gtest.h>

#include <complex>

#include "helpers.h"
#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/models.h"

namespace gss_test {

using namespace longseq;
using cd = std::complex<double>;

constexpr int64_t kC = 16, kB = 2;

Json options(int64_t N = 6, const std::string& kernel = "exp", bool bidirectional = false, bool imag_exp = true) {
  return {{"ssm_dim", 4}, {"gate_dim", 24}, {"state_dim", N}, {"kernel", kernel},
          {"bidirectional", bidirectional}, {"lambda_imag_exp", imag_exp}};
}

Layer make(const Json& o, torch::Dtype dtype = torch::kDouble) {
  torch::manual_seed(3);
  BlockArgs a;
  a.d_model = kC, a.n_heads = 2, a.d_ff = 32;
  Json spec = o;
  spec["name"] = "gss";
  auto layer = make_layer(parse_block_spec(spec, "test"), a);
  layer->to(dtype);
  for (auto& p : layer->named_parameters())  // LayerNorms away from their identity start, so a swap would show
    if (p.key().rfind("ln", 0) == 0) {
      torch::NoGradGuard ng;
      p.value().add_(0.3 * torch::randn_like(p.value()));
    }
  return layer;
}

torch::Tensor run(const Layer& layer, const torch::Tensor& x, bool causal, MixerState* state = nullptr) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.state = state;
  return layer->forward(x, ctx);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

double rel(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1e-30, b.abs().max().item<double>());
}

// The DSS kernel K_k = Re sum_n W_n (e^{D l_n} - 1) / l_n e^{k D l_n} (DSS-exp) or Re sum_n (W_n / l_n) softmax_k(k D l_n)
// over k < T (DSS-softmax), for one channel.
std::vector<double> dss_kernel(const std::vector<cd>& W, const std::vector<cd>& lam, double Delta, int64_t L,
                               bool softmax, int64_t T) {
  std::vector<double> K(L, 0.0);
  for (size_t n = 0; n < lam.size(); ++n) {
    cd norm = 0;
    for (int64_t j = 0; j < T; ++j) norm += std::exp(double(j) * Delta * lam[n]);
    for (int64_t k = 0; k < L; ++k) {
      const cd e = std::exp(double(k) * Delta * lam[n]);
      K[k] += softmax ? std::real(W[n] / lam[n] * e / norm) : std::real(W[n] * (std::exp(Delta * lam[n]) - 1.0) / lam[n] * e);
    }
  }
  return K;
}

// The block from its definition (sec. 3.2) in double: the dss part by the per-token recurrence s_t = e^l s + u_t,
// y_t = Re sum C~ s_t + D u_t (exp kernel), else by direct sums over the kernel; leads by direct sums.
torch::Tensor reference(const Layer& layer, const torch::Tensor& x, bool causal, const Json& o) {
  auto P = [&](const std::string& n) { return longseq_test::param(*layer, n).detach().to(torch::kDouble); };
  auto ln = [](const torch::Tensor& z, const torch::Tensor& w, const torch::Tensor& b) {
    auto mu = z.mean(-1, true);
    auto var = (z - mu).square().mean(-1, true);
    return (z - mu) / torch::sqrt(var + 1e-5) * w + b;
  };
  auto gelu = [](const torch::Tensor& z) { return 0.5 * z * (1 + torch::erf(z / std::sqrt(2.0))); };
  auto xd = x.to(torch::kDouble);
  auto xh = ln(xd, P("ln.weight"), P("ln.bias"));
  auto v = gelu(torch::matmul(xh, P("w_v.weight").t()));
  auto u = ln(gelu(torch::matmul(xh, P("w_u.weight").t())), P("ln_u.weight"), P("ln_u.bias"));  // [B, T, H]
  const int64_t B = x.size(0), T = x.size(1), H = u.size(2), N = o["state_dim"];
  const bool imag_exp = o["lambda_imag_exp"], softmax = o["kernel"] == "softmax";
  auto lre = P("lambda_re"), lim = P("lambda_im"), cre = P("c_re"), cim = P("c_im"), d = P("d");
  std::vector<cd> lam(N);
  for (int64_t n = 0; n < N; ++n)
    lam[n] = cd(-std::exp(lre[n].item<double>()), imag_exp ? std::exp(lim[n].item<double>()) : lim[n].item<double>());
  auto y = torch::zeros({B, T, H}, torch::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    std::vector<cd> W(N), Wb(N);
    for (int64_t n = 0; n < N; ++n) W[n] = cd(cre[h][n].item<double>(), cim[h][n].item<double>());
    const auto K = dss_kernel(W, lam, 1.0, T, softmax, T);
    std::vector<double> Kb;
    if (!causal) {
      auto bre = P("c_back_re"), bim = P("c_back_im");
      for (int64_t n = 0; n < N; ++n) Wb[n] = cd(bre[h][n].item<double>(), bim[h][n].item<double>());
      Kb = dss_kernel(Wb, lam, 1.0, T, softmax, T);
    }
    for (int64_t b = 0; b < B; ++b) {
      std::vector<cd> s(N, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const double ut = u[b][t][h].item<double>();
        double yt = d[h].item<double>() * ut;
        if (!softmax) {  // the recurrence (case 1)
          for (int64_t n = 0; n < N; ++n) {
            s[n] = std::exp(lam[n]) * s[n] + ut;
            yt += std::real(W[n] * (std::exp(lam[n]) - 1.0) / lam[n] * s[n]);
          }
        } else {
          for (int64_t j = 0; j <= t; ++j) yt += K[t - j] * u[b][j][h].item<double>();
        }
        if (!causal)
          for (int64_t k = 1; t + k < T; ++k) yt += Kb[k - 1] * u[b][t + k][h].item<double>();  // leads (case 8)
        y[b][t][h] = yt;
      }
    }
  }
  auto uc = torch::matmul(y, P("w_c.weight").t());
  return xd + torch::matmul(uc * v, P("w_o.weight").t()) + P("w_o.bias");
}

TEST(Gss, FftPathEqualsTheRecurrence) {  // case 1 (and case 5: the reference is DSS-exp with Delta = 1, W = C)
  for (int64_t T : {1, 7, 33}) {
    auto o = options();
    auto layer = make(o);
    auto x = torch::randn({kB, T, kC}, torch::kDouble);
    EXPECT_LT(rel(run(layer, x, true), reference(layer, x, true, o)), 1e-10) << "T = " << T;
  }
  auto o = options(5, "exp", false, /*imag_exp=*/false);  // Im(lambda) as the parameter itself (DSS, S4D)
  auto layer = make(o);
  auto x = torch::randn({kB, 20, kC}, torch::kDouble);
  EXPECT_LT(rel(run(layer, x, true), reference(layer, x, true, o)), 1e-10);
  auto lf = make(options(), torch::kFloat);  // float: within 1e-5 relative
  auto xf = torch::randn({kB, 40, kC});
  EXPECT_LT(rel(run(lf, xf, true).to(torch::kDouble), reference(lf, xf, true, options())), 1e-5);
}

TEST(Gss, PrefixConsistent) {  // case 2
  auto layer = make(options(), torch::kFloat);
  auto x = torch::randn({kB, 50, kC});
  auto whole = run(layer, x, true);
  for (int64_t T : {1, 13, 49})
    EXPECT_LT(rel(run(layer, x.narrow(1, 0, T), true), whole.narrow(1, 0, T)), 1e-5) << T;
}

TEST(Gss, StreamingInChunksEqualsTheWholePass) {  // case 3
  for (auto dtype : {torch::kDouble, torch::kFloat}) {
    auto layer = make(options(), dtype);
    auto x = torch::randn({kB, 31, kC}, dtype);
    auto whole = run(layer, x, true);
    auto st = layer->initial_state(kB);
    ASSERT_TRUE(st);
    std::vector<torch::Tensor> parts;
    int64_t at = 0;
    for (int64_t n : {1, 7, 1, 12, 10}) {
      parts.push_back(run(layer, x.narrow(1, at, n), true, st.get()));
      at += n;
    }
    EXPECT_LT(rel(torch::cat(parts, 1), whole), dtype == torch::kDouble ? 1e-11 : 1e-5);
    EXPECT_EQ(st->tensors().at("s_re").sizes(), (std::vector<int64_t>{kB, 4, 6}));
  }
}

TEST(Gss, DecodingStepsWithoutGradientsEqualTheWholePassAndSeeWeightUpdates) {  // the cached single-token path
  auto layer = make(options());
  auto x = torch::randn({kB, 12, kC}, torch::kDouble);
  torch::NoGradGuard ng;
  for (int round = 0; round < 2; ++round) {
    auto whole = run(layer, x, true);
    auto st = layer->initial_state(kB);
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < 12; ++t) steps.push_back(run(layer, x.narrow(1, t, 1), true, st.get()));
    EXPECT_LT(rel(torch::cat(steps, 1), whole), 1e-11) << "round " << round;
    // An in-place update, as an optimizer step makes: the next round must use the new weights.
    longseq_test::param(*layer, "c_im").add_(0.5);
    longseq_test::param(*layer, "lambda_re").sub_(0.1);
  }
}

TEST(Gss, OneStateIsAScalarEma) {  // case 4: N = 1, Im(lambda) = 0 unexponentiated, D = 0
  auto o = options(1, "exp", false, false);
  auto layer = make(o);
  {
    torch::NoGradGuard ng;
    longseq_test::param(*layer, "lambda_im").zero_();
    longseq_test::param(*layer, "d").zero_();
  }
  auto x = torch::randn({1, 25, kC}, torch::kDouble);
  // y_t = e^l y_{t-1} + Re(C~) u_t with l = -exp(lambda_re), C~ = C (e^l - 1) / l: the block's output from it.
  auto P = [&](const std::string& n) { return longseq_test::param(*layer, n).detach(); };
  const double l = -std::exp(P("lambda_re")[0].item<double>());
  auto xh = torch::layer_norm(x, {kC}, P("ln.weight"), P("ln.bias"));
  auto u = torch::layer_norm(torch::gelu(torch::matmul(xh, P("w_u.weight").t())), {4}, P("ln_u.weight"), P("ln_u.bias"));
  auto y = torch::zeros_like(u);
  auto prev = torch::zeros({1, 4}, torch::kDouble);
  auto ctil = P("c_re").squeeze(1) * (std::exp(l) - 1.0) / l;
  for (int64_t t = 0; t < 25; ++t) {
    prev = std::exp(l) * prev + ctil * u.select(1, t);
    y.select(1, t).copy_(prev);
  }
  auto want = x + torch::matmul(torch::matmul(y, P("w_c.weight").t()) * torch::gelu(torch::matmul(xh, P("w_v.weight").t())),
                                P("w_o.weight").t()) + P("w_o.bias");
  EXPECT_LT(rel(run(layer, x, true), want), 1e-10);
}

TEST(Gss, SoftmaxKernelIsTheExpKernelWithRescaledC) {  // case 6, and the softmax form against its own definition
  const int64_t T = 17;
  auto os = options(6, "softmax"), oe = options(6, "exp");
  auto soft = make(os), ex = make(oe);
  auto x = torch::randn({kB, T, kC}, torch::kDouble);
  EXPECT_LT(rel(run(soft, x, true), reference(soft, x, true, os)), 1e-10);
  {  // C / (e^{T lambda} - 1) in the exp block
    torch::NoGradGuard ng;
    auto lre = longseq_test::param(*ex, "lambda_re"), lim = longseq_test::param(*ex, "lambda_im");
    auto cre = longseq_test::param(*ex, "c_re"), cim = longseq_test::param(*ex, "c_im");
    for (int64_t n = 0; n < 6; ++n) {
      const cd lam(-std::exp(lre[n].item<double>()), std::exp(lim[n].item<double>()));
      const cd f = 1.0 / (std::exp(double(T) * lam) - 1.0);
      for (int64_t h = 0; h < 4; ++h) {
        const cd c = cd(cre[h][n].item<double>(), cim[h][n].item<double>()) * f;
        cre[h][n] = c.real(), cim[h][n] = c.imag();
      }
    }
  }
  EXPECT_LT(rel(run(soft, x, true), run(ex, x, true)), 1e-10);
  EXPECT_FALSE(soft->initial_state(1)) << "the softmax kernel depends on T: no streaming";
  EXPECT_GT(rel(run(soft, x.narrow(1, 0, 9), true), run(soft, x, true).narrow(1, 0, 9)), 1e-6)
      << "and it is not prefix-consistent";
}

TEST(Gss, ZeroCAndZeroOutput) {  // case 7
  auto layer = make(options());
  auto x = torch::randn({kB, 12, kC}, torch::kDouble);
  {
    torch::NoGradGuard ng;
    longseq_test::param(*layer, "c_re").zero_();
    longseq_test::param(*layer, "c_im").zero_();
  }
  auto P = [&](const std::string& n) { return longseq_test::param(*layer, n).detach(); };
  auto xh = torch::layer_norm(x, {kC}, P("ln.weight"), P("ln.bias"));
  auto u = torch::layer_norm(torch::gelu(torch::matmul(xh, P("w_u.weight").t())), {4}, P("ln_u.weight"), P("ln_u.bias"));
  auto want = x + torch::matmul(torch::matmul(P("d") * u, P("w_c.weight").t()) *
                                    torch::gelu(torch::matmul(xh, P("w_v.weight").t())), P("w_o.weight").t()) + P("w_o.bias");
  EXPECT_LT(rel(run(layer, x, true), want), 1e-12);
  {
    torch::NoGradGuard ng;
    longseq_test::param(*layer, "w_o.weight").zero_();
    longseq_test::param(*layer, "w_o.bias").zero_();
  }
  EXPECT_TRUE(torch::equal(run(layer, x, true), x));
}

TEST(Gss, BidirectionalEqualsDirectSums) {  // case 8
  auto o = options(5, "exp", true);
  auto layer = make(o);
  for (int64_t T : {1, 2, 19}) {
    auto x = torch::randn({kB, T, kC}, torch::kDouble);
    EXPECT_LT(rel(run(layer, x, false), reference(layer, x, false, o)), 1e-10) << T;
  }
  auto plain = make(options());
  auto x = torch::randn({1, 4, kC}, torch::kDouble);
  EXPECT_NE(error_of([&] { run(plain, x, false); }).find("bidirectional = true"), std::string::npos);
  auto st = layer->initial_state(1);
  EXPECT_NE(error_of([&] { run(layer, x, false, st.get()); }).find("cannot stream"), std::string::npos);
}

TEST(Gss, Causal) {  // case 9, on the FFT path, with slowly decaying modes (|e^lambda| ~ 0.99) whose taps span T
  auto layer = make(options(6, "exp", true));
  {
    torch::NoGradGuard ng;
    longseq_test::param(*layer, "lambda_re").fill_(std::log(0.01));
  }
  auto x = torch::randn({kB, 40, kC}, torch::kDouble);
  auto y = run(layer, x, true);
  for (int64_t t : {0, 17, 38}) {
    auto x2 = x.clone();
    x2.narrow(1, t + 1, 40 - t - 1).normal_();  // not a constant shift: the LayerNorm would remove it
    auto y2 = run(layer, x2, true);
    EXPECT_LT((y2.narrow(1, 0, t + 1) - y.narrow(1, 0, t + 1)).abs().max().item<double>(), 1e-12) << t;
    auto z = run(layer, x2, false);  // the leads' kernel does read the future: the perturbation is seen
    EXPECT_GT((z.narrow(1, 0, t + 1) - run(layer, x, false).narrow(1, 0, t + 1)).abs().max().item<double>(), 1e-3);
  }
}

TEST(Gss, GradientsMatchFiniteDifferences) {
  auto layer = make(options(3, "exp", true));
  auto x = torch::randn({1, 9, kC}, torch::kDouble);
  auto w = torch::randn({1, 9, kC}, torch::kDouble);
  for (const char* name : {"lambda_re", "lambda_im", "c_im", "c_back_re", "d"}) {
    for (bool causal : {true, false}) {
      auto f = [&] { return (run(layer, x, causal) * w).sum(); };
      EXPECT_LT(longseq_test::gradcheck_error(f, longseq_test::param(*layer, name)), 1e-6) << name << causal;
    }
  }
}

TEST(Gss, PaddingDoesNotReachRealTokens) {
  auto layer = make(options(4, "exp", true));
  auto x = torch::randn({1, 10, kC}, torch::kDouble);
  auto pad = torch::zeros({1, 10}, torch::kBool);
  pad.narrow(1, 7, 3).fill_(true);
  MixContext ctx;
  ctx.padding_mask = pad;
  auto y = layer->forward(x, ctx);
  auto x2 = x.clone();
  x2.narrow(1, 7, 3).normal_();
  auto y2 = layer->forward(x2, ctx);
  EXPECT_LT((y - y2).narrow(1, 0, 7).abs().max().item<double>(), 1e-12);
}

TEST(Gss, StacksWithAttentionInADecoder) {  // GSS-Hybrid's layout: gss layers and a standard block in one model
  auto cfg = ModelConfig::from_json({{"vocab_size", 13}, {"d_model", kC}, {"n_heads", 2}, {"d_ff", 32},
                                     {"positions", "none"},
                                     {"layers", Json::array({Json{{"block", "gss"}, {"state_dim", 8}}, "full",
                                                             Json{{"block", "gss"}, {"ssm_dim", 2}}})}});
  ASSERT_EQ(cfg.blocks.size(), 3u);
  EXPECT_EQ(cfg.blocks[0].name, "gss");
  EXPECT_EQ(cfg.blocks[1].name, "standard");
  EXPECT_EQ(cfg.layers[1].name, "full");
  EXPECT_TRUE(cfg.layers[0].name.empty());
  auto lm = make_language_model(cfg);
  auto tokens = torch::randint(0, 13, {2, 21});
  auto whole = lm->forward(tokens);
  auto st = lm->initial_state(2);
  auto a = lm->forward(tokens.narrow(1, 0, 8), &st), b = lm->forward(tokens.narrow(1, 8, 13), &st);
  EXPECT_LT(rel(torch::cat({a, b}, 1), whole), 1e-4);
  whole.square().mean().backward();
  for (const auto& p : lm->named_parameters())
    ASSERT_TRUE(p.value().grad().defined() && torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
}

TEST(Gss, ConfigErrorsNameTheOption) {
  auto base = [] {
    return Json{{"vocab_size", 13}, {"d_model", kC}, {"n_heads", 2}, {"d_ff", 32}};
  };
  auto j = base();
  j["block"] = {{"name", "gss"}, {"state_dim", 0}};
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j); }).find("state_dim"), std::string::npos);
  j = base();
  j["layers"] = Json::array({Json{{"block", "gss"}, {"name", "full"}}});
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j); }).find("runs no mixer"), std::string::npos);
  j = base();
  j["block"] = "mamba";
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j); }).find("registered block kinds: standard"), std::string::npos);
  j = base();
  j["block"] = "gss";
  j["reversible"] = true;
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j); }).find("cannot join model.reversible"), std::string::npos);
  j = base();
  j["block"] = "gss";
  j["type"] = "perceiver_ar";
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j); }).find("standard blocks"), std::string::npos);
}

}  // namespace gss_test
