// Mega (Ma et al. 2023, arXiv 2209.10655): the mechanism sheet's exact limiting cases 1-10, each against a reference
// written here from the paper's definitions in double precision (the EMA as a per-token recurrence or a direct sum,
// attention by explicit loops over keys), never through the block's own helpers; plus the layer against a whole
// reference, registration, a mixed config, gradients and option errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "helpers.h"
#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/models.h"

using namespace longseq;
using longseq_test::param;

namespace mega_test {

constexpr int64_t kC = 8, kFF = 12;

Layer make(Json opts, torch::Dtype dtype = torch::kDouble, uint64_t seed = 3) {
  opts["name"] = "mega";
  if (!opts.contains("ndim")) opts["ndim"] = 3;
  if (!opts.contains("z_dim")) opts["z_dim"] = 4;
  if (!opts.contains("v_dim")) opts["v_dim"] = 6;
  torch::manual_seed(seed);
  BlockArgs a;
  a.d_model = kC, a.n_heads = 2, a.d_ff = kFF;
  auto layer = make_layer(parse_block_spec(opts, "test"), a);
  // Parameters of order one, so every term matters (the code's init makes q and k nearly zero).
  torch::NoGradGuard guard;
  for (auto& p : layer->named_parameters()) {
    p.value().normal_(0.0, p.key().rfind("ema_", 0) == 0 ? 1.0 : 0.5);
    if (p.key().find("norm") != std::string::npos) p.value().add_(1.0);
  }
  layer->to(dtype);
  layer->eval();
  return layer;
}

torch::Tensor run(const Layer& l, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {},
                  MixerState* state = nullptr) {
  MixContext ctx;
  ctx.causal = causal, ctx.padding_mask = pad, ctx.state = state;
  return l->forward(x, ctx);
}

torch::Tensor stream(const Layer& l, const torch::Tensor& x, const torch::Tensor& pad, const std::vector<int64_t>& lens) {
  auto st = l->initial_state(x.size(0));
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t len : lens) {
    parts.push_back(run(l, x.narrow(1, at, len), true, pad.defined() ? pad.narrow(1, at, len) : pad, st.get()));
    at += len;
  }
  return torch::cat(parts, 1);
}

torch::Tensor P(const Layer& l, const std::string& name) { return param(*l, name).to(torch::kDouble); }
torch::Tensor silu_ref(const torch::Tensor& x) { return x / (1.0 + torch::exp(-x)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
torch::Tensor linear(const Layer& l, const std::string& name, const torch::Tensor& x) {
  return torch::matmul(x, P(l, name + ".weight").t()) + P(l, name + ".bias");
}
double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// The three norms from their definitions over the last dim (eps 1e-5).
torch::Tensor norm_ref(const Layer& l, const std::string& kind, const std::string& prefix, const torch::Tensor& x) {
  if (kind == "layernorm") {
    auto mu = x.mean(-1, true), var = (x - mu).square().mean(-1, true);
    return (x - mu) / torch::sqrt(var + 1e-5) * P(l, prefix + ".weight") + P(l, prefix + ".bias");
  }
  auto r = x / torch::sqrt(x.square().mean(-1, true) + 1e-5);
  return r * P(l, prefix + (kind == "rmsnorm" ? ".weight" : ".scale"));
}

// EMA coefficients of channel row j, expansion n (sec. 3.1): alpha, q = 1 - alpha delta, eta alpha beta.
struct Coef {
  double alpha, q, w_in, eta;
};
Coef coef(const Layer& l, int64_t j, int64_t n) {
  auto a = P(l, "ema_alpha"), d = P(l, "ema_delta"), b = P(l, "ema_beta"), g = P(l, "ema_gamma");
  const double N = static_cast<double>(a.size(1));
  const double alpha = sigmoid(a[j][n].item<double>()), delta = sigmoid(d[j][n].item<double>());
  return {alpha, 1.0 - alpha * delta, alpha * b[j][n].item<double>(), g[j][n].item<double>() * std::sqrt(1.0 / N)};
}

// Causal EMA as the per-token recurrence h_t = alpha beta u_t + q h_{t-1}, y_t = sum_n eta h_t: u [B, T, C].
torch::Tensor ema_recurrence(const Layer& l, const torch::Tensor& u) {
  const int64_t B = u.size(0), T = u.size(1), N = param(*l, "ema_alpha").size(1);
  auto y = torch::zeros_like(u);
  auto ua = u.accessor<double, 3>();
  auto ya = y.accessor<double, 3>();
  for (int64_t j = 0; j < kC; ++j)
    for (int64_t n = 0; n < N; ++n) {
      const Coef c = coef(l, j, n);
      for (int64_t b = 0; b < B; ++b) {
        double h = 0;
        for (int64_t t = 0; t < T; ++t) {
          h = c.w_in * ua[b][t][j] + c.q * h;
          ya[b][t][j] += c.eta * h;
        }
      }
    }
  return y;
}

// EMA as the direct sum over lags k < L of K^f_k u_{t-k} and, when bidirectional, over leads 1 <= k < L of
// K^b_k u_{t+k}, K_k = sum_n eta alpha beta q^k (row j for K^f, row C + j for K^b). O(T^2).
torch::Tensor ema_direct(const Layer& l, const torch::Tensor& u, bool bidirectional, int64_t L) {
  const int64_t B = u.size(0), T = u.size(1), N = param(*l, "ema_alpha").size(1);
  auto kernel = [&](int64_t row, int64_t k) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n) {
      const Coef c = coef(l, row, n);
      s += c.eta * c.w_in * std::pow(c.q, static_cast<double>(k));
    }
    return s;
  };
  auto y = torch::zeros_like(u);
  auto ua = u.accessor<double, 3>();
  auto ya = y.accessor<double, 3>();
  for (int64_t j = 0; j < kC; ++j)
    for (int64_t k = 0; k < L; ++k) {
      const double kf = kernel(j, k), kb = bidirectional && k >= 1 ? kernel(kC + j, k) : 0.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) {
          if (t - k >= 0) ya[b][t][j] += kf * ua[b][t - k][j];
          if (t + k < T) ya[b][t][j] += kb * ua[b][t + k][j];
        }
    }
  return y;
}

// b_rel[i, j] from the definitions: simple w[M - 1 + j - i]; rotary <R_i a, R_j b>, half-split RoPE, base 10000.
double bias_ref(const Layer& l, const Json& o, int64_t i, int64_t j) {
  if (o.value("rel_pos", std::string("rotary")) == "simple") {
    const int64_t M = o.value("chunk", int64_t(-1)) > 0 ? o["chunk"].get<int64_t>() : o.value("max_positions", int64_t(2048));
    return P(l, "rel_pos")[M - 1 + j - i].item<double>();
  }
  auto a = P(l, "rel_a"), b = P(l, "rel_b");
  const int64_t half = a.size(0) / 2;
  double s = 0;
  for (int64_t m = 0; m < half; ++m) {
    const double w = std::pow(10000.0, -static_cast<double>(m) / static_cast<double>(half));
    const double ci = std::cos(i * w), si = std::sin(i * w), cj = std::cos(j * w), sj = std::sin(j * w);
    const double a1 = a[m].item<double>(), a2 = a[m + half].item<double>();
    const double b1 = b[m].item<double>(), b2 = b[m + half].item<double>();
    s += (a1 * ci - a2 * si) * (b1 * cj - b2 * sj) + (a2 * ci + a1 * si) * (b2 * cj + b1 * sj);
  }
  return s;
}

double attn_fn(const std::string& f, double s) {
  if (f == "relu2") return s > 0 ? s * s : 0.0;
  return 0.5 * (1.0 + std::erf((s - std::sqrt(0.5)) / (std::sqrt(0.25 / M_PI) * std::sqrt(2.0))));  // laplace
}

// Chunked attention by loops: q, k [B, T, D], v [B, T, V] -> [B, T, V]; pad [B, T] bool or undefined.
torch::Tensor attention_ref(const Layer& l, const Json& o, const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v, const torch::Tensor& pad, bool causal) {
  const int64_t B = q.size(0), T = q.size(1), D = q.size(2), V = v.size(2);
  const int64_t chunk = o.value("chunk", int64_t(-1));
  const std::string f = o.value("attention", std::string("softmax"));
  auto out = torch::zeros({B, T, V}, torch::kDouble);
  auto is_pad = [&](int64_t b, int64_t j) { return pad.defined() && pad[b][j].item<bool>(); };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      const int64_t cs = chunk > 0 ? i / chunk * chunk : 0, ce = chunk > 0 ? std::min(cs + chunk, T) : T;
      std::vector<int64_t> keys;
      for (int64_t j = cs; j < ce; ++j)
        if ((!causal || j <= i) && !is_pad(b, j)) keys.push_back(j);
      if (keys.empty()) continue;  // a pad query with nothing to see: not compared
      std::vector<double> w;
      for (int64_t j : keys) {
        const double dot = torch::dot(q[b][i], k[b][j]).item<double>();
        const double tau = f == "softmax" ? std::sqrt(static_cast<double>(D)) : static_cast<double>(keys.size());
        w.push_back(dot / tau + bias_ref(l, o, i - cs, j - cs));
      }
      if (f == "softmax") {
        const double mx = *std::max_element(w.begin(), w.end());
        double z = 0;
        for (auto& x : w) z += (x = std::exp(x - mx));
        for (auto& x : w) x /= z;
      } else {
        for (auto& x : w) x = attn_fn(f, x);
      }
      for (size_t m = 0; m < keys.size(); ++m) out[b][i] += w[m] * v[b][keys[m]];
    }
  return out;
}

using AttentionFn = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;

// The whole block from eq. 8-16 and the normalised feed-forward, in double: x [B, T, C] -> [B, T, C]. `ema` maps the
// (padding-zeroed) normalised input to the EMA output; `attention` maps q, k, v to O.
torch::Tensor block_ref(const Layer& l, const Json& o, const torch::Tensor& x, const torch::Tensor& pad,
                        const std::function<torch::Tensor(const torch::Tensor&)>& ema, const AttentionFn& attention) {
  const bool prenorm = o.value("prenorm", true);
  const std::string norm = o.value("norm", std::string("layernorm"));
  const int64_t D = o["z_dim"], V = o["v_dim"];
  auto xn = prenorm ? norm_ref(l, norm, "norm_mix", x) : x;
  auto v = silu_ref(linear(l, "v_proj", xn));
  auto u = pad.defined() ? xn * (~pad).unsqueeze(-1).to(torch::kDouble) : xn;
  auto mx = silu_ref(ema(u) + u * P(l, "ema_omega"));
  auto base = linear(l, "mx_proj", mx);
  auto phi = torch::sigmoid(base.narrow(2, 0, kC));
  auto zr = silu_ref(base.narrow(2, kC, D + V));
  auto z = zr.narrow(2, 0, D), r = zr.narrow(2, D, V);
  auto hx = base.narrow(2, kC + D + V, kC);
  auto scale = P(l, "qk_scale"), offset = P(l, "qk_offset");
  auto q = z * scale[0] + offset[0], k = z * scale[1] + offset[1];
  auto h = silu_ref(hx + linear(l, "h_proj", attention(q, k, v) * r));
  auto y = phi * h + (1.0 - phi) * x;
  if (!prenorm) y = norm_ref(l, norm, "norm_mix", y);
  auto f = linear(l, "fc2", silu_ref(linear(l, "fc1", prenorm ? norm_ref(l, norm, "norm_ff", y) : y)));
  return prenorm ? y + f : norm_ref(l, norm, "norm_ff", y + f);
}

// The reference with the sheet's EMA (recurrence when causal and untruncated, else the direct sum) and loop attention.
torch::Tensor full_ref(const Layer& l, const Json& o, const torch::Tensor& x, const torch::Tensor& pad, bool causal) {
  const int64_t trunc = o.value("truncation", int64_t(0)), T = x.size(1);
  auto ema = [&](const torch::Tensor& u) {
    if (causal && trunc == 0) return ema_recurrence(l, u);
    return ema_direct(l, u, !causal, trunc > 0 ? std::min(trunc, T) : T);
  };
  auto attention = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    return attention_ref(l, o, q, k, v, pad, causal);
  };
  return block_ref(l, o, x, pad, ema, attention);
}

// Rows of the output at non-pad positions only: [B, T, C] -> [n, C].
torch::Tensor real(const torch::Tensor& y, const torch::Tensor& pad) {
  return pad.defined() ? y.index({~pad}) : y.reshape({-1, y.size(2)});
}

// Sets the block so its output is SiLU(SiLU(EMA(LN x))): phi = 1 (b_phi = 40), W_h = I, U_h = 0, omega = 0, and a
// zero feed-forward output: the EMA core is then visible through the public forward.
void expose_ema(const Layer& l, const Json& o) {
  torch::NoGradGuard guard;
  const int64_t D = o["z_dim"], V = o["v_dim"];
  auto w = param(*l, "mx_proj.weight"), b = param(*l, "mx_proj.bias");
  w.zero_(), b.zero_();
  b.narrow(0, 0, kC).fill_(40.0);
  w.narrow(0, kC + D + V, kC).copy_(torch::eye(kC, w.options()));
  for (const char* n : {"h_proj.weight", "h_proj.bias", "fc2.weight", "fc2.bias", "ema_omega"}) param(*l, n).zero_();
  param(*l, "norm_mix.weight").fill_(1.0), param(*l, "norm_mix.bias").zero_();
}
torch::Tensor exposed(const torch::Tensor& core) { return silu_ref(silu_ref(core)); }
torch::Tensor ln(const torch::Tensor& x) {
  auto mu = x.mean(-1, true);
  return (x - mu) / torch::sqrt((x - mu).square().mean(-1, true) + 1e-5);
}

Json defaults(Json o) {
  const Json small = {{"ndim", 3}, {"z_dim", 4}, {"v_dim", 6}};
  for (auto& it : small.items())
    if (!o.contains(it.key())) o[it.key()] = it.value();
  return o;
}

// Case 1: the FFT path equals the per-token recurrence for any T (fp32 to ~1e-5 relative, double to 1e-12); with
// truncation L < T it equals the direct sum cut at lag L.
TEST(Mega, FftPathEqualsTheRecurrence) {
  for (auto dtype : {torch::kFloat, torch::kDouble})
    for (int64_t T : {1, 9, 40})
      for (int64_t trunc : {0, 6}) {
        const Json o = defaults({{"truncation", trunc}});
        auto l = make(o, dtype);
        expose_ema(l, o);
        auto x = torch::randn({2, T, kC}, torch::kDouble);
        auto got = run(l, x.to(dtype), true).to(torch::kDouble);
        auto want = exposed(trunc == 0 ? ema_recurrence(l, ln(x)) : ema_direct(l, ln(x), false, std::min(trunc, T)));
        const double rel = max_diff(got, want) / want.abs().max().item<double>();
        EXPECT_LT(rel, dtype == torch::kFloat ? 1e-5 : 1e-12) << "T=" << T << " trunc=" << trunc << " " << dtype;
      }
}

// Case 2: streaming in chunks of any sizes (EMA state + the chunk's K, V cache) equals one whole pass, for every
// attention function and bias, full attention and c = 4 (T a multiple of c and not), with padding.
TEST(Mega, StreamingInChunksEqualsTheWholePass) {
  for (int64_t chunk : {-1, 4})
    for (std::string f : {"softmax", "laplace", "relu2"})
      for (std::string rel : {"rotary", "simple"})
        for (int64_t T : {16, 15}) {
          auto l = make({{"chunk", chunk}, {"attention", f}, {"rel_pos", rel}, {"max_positions", 32}});
          auto x = torch::randn({2, T, kC}, torch::kDouble);
          auto pad = torch::zeros({2, T}, torch::kBool);
          pad[1][5] = true, pad[1][T - 1] = true;
          auto whole = run(l, x, true, pad);
          std::vector<std::vector<int64_t>> splits = {{3, 1, 4, 2, T - 10}, {T}};
          if (f == "softmax") splits.push_back(std::vector<int64_t>(T, 1));  // token by token: once per bias kind
          for (const auto& lens : splits)
            EXPECT_LT(max_diff(stream(l, x, pad, lens), whole), 1e-10)
                << "chunk=" << chunk << " f=" << f << " rel=" << rel << " T=" << T << " parts=" << lens.size();
        }
}

// Case 3: N = 1, beta = 1, gamma = sqrt(N), delta -> 1 (d = 40 gives sigmoid(d) = 1 in double): the EMA is the plain
// damped EMA y_t = alpha x_t + (1 - alpha) y_{t-1}.
TEST(Mega, OneDimensionalUndampedEmaIsTheClassicEma) {
  const Json o = defaults({{"ndim", 1}});
  auto l = make(o);
  expose_ema(l, o);
  {
    torch::NoGradGuard guard;
    param(*l, "ema_beta").fill_(1.0), param(*l, "ema_gamma").fill_(1.0), param(*l, "ema_delta").fill_(40.0);
  }
  auto x = torch::randn({2, 25, kC}, torch::kDouble);
  auto u = ln(x);
  auto y = torch::zeros_like(u);
  for (int64_t j = 0; j < kC; ++j) {
    const double alpha = sigmoid(param(*l, "ema_alpha")[j][0].item<double>());
    for (int64_t t = 0; t < 25; ++t) {
      auto prev = t > 0 ? y.select(1, t - 1).select(1, j) : torch::zeros({2}, torch::kDouble);
      y.select(1, t).select(1, j).copy_(alpha * u.select(1, t).select(1, j) + (1 - alpha) * prev);
    }
  }
  EXPECT_LT(max_diff(run(l, x, true), exposed(y)), 1e-12);
}

// Case 4: the bidirectional EMA equals the direct O(T^2) sum with K^f on lags >= 0 and K^b on leads >= 1; with
// truncation L both stop at L - 1.
TEST(Mega, BidirectionalEmaEqualsTheDirectSum) {
  for (int64_t trunc : {0, 5}) {
    const Json o = defaults({{"bidirectional", true}, {"truncation", trunc}});
    auto l = make(o);
    expose_ema(l, o);
    auto x = torch::randn({2, 14, kC}, torch::kDouble);
    auto want = exposed(ema_direct(l, ln(x), true, trunc > 0 ? trunc : 14));
    EXPECT_LT(max_diff(run(l, x, false), want), 1e-12) << "trunc=" << trunc;
  }
}

// The whole block equals the reference for every attention function, bias, direction, chunking (T = 13 with c = 5:
// internal padding), norm and norm placement, with padding; also in float32 against the double reference.
TEST(Mega, BlockEqualsTheReference) {
  auto x = torch::randn({2, 13, kC}, torch::kDouble);
  auto pad = torch::zeros({2, 13}, torch::kBool);
  pad[0][0] = true, pad[1][11] = true, pad[1][12] = true;
  std::vector<Json> configs;
  for (int64_t chunk : {-1, 5})
    for (std::string f : {"softmax", "laplace", "relu2"})
      for (std::string rel : {"rotary", "simple"})
        configs.push_back({{"chunk", chunk}, {"attention", f}, {"rel_pos", rel}, {"max_positions", 16},
                           {"bidirectional", true}});
  configs.push_back({{"norm", "scalenorm"}, {"prenorm", false}, {"bidirectional", true}, {"truncation", 4}});
  configs.push_back({{"norm", "rmsnorm"}, {"chunk", 4}, {"attention", "laplace"}, {"truncation", 6}});
  for (const auto& c : configs)
    for (bool causal : {true, false}) {
      const Json o = defaults(c);
      if (!causal && !o.value("bidirectional", false)) continue;
      auto l = make(o);
      EXPECT_LT(max_diff(real(run(l, x, causal, pad), pad), real(full_ref(l, o, x, pad, causal), pad)), 1e-10)
          << o.dump() << " causal=" << causal;
    }
  const Json o = defaults({{"chunk", 4}, {"attention", "relu2"}});
  auto lf = make(o, torch::kFloat);
  auto got = run(lf, x.to(torch::kFloat), true);
  EXPECT_LT(max_diff(got, full_ref(lf, o, x, {}, true)), 1e-4);
}

// Copies every parameter of `from` into `to`; the simple table (2M - 1 entries) by its central 2M' - 1.
void copy_params(const Layer& from, const Layer& to) {
  torch::NoGradGuard guard;
  auto src = from->named_parameters();
  for (auto& p : to->named_parameters()) {
    auto s = src[p.key()];
    if (p.key() == "rel_pos") s = s.narrow(0, (s.size(0) - p.value().size(0)) / 2, p.value().size(0));
    p.value().copy_(s);
  }
}

// Case 5: chunk c = T equals full attention (c = -1) for every attention function, both biases and directions.
TEST(Mega, ChunkOfTheWholeLengthEqualsFullAttention) {
  auto x = torch::randn({2, 12, kC}, torch::kDouble);
  auto pad = torch::zeros({2, 12}, torch::kBool);
  pad[1][10] = pad[1][11] = true;
  for (std::string f : {"softmax", "laplace", "relu2"})
    for (std::string rel : {"rotary", "simple"})
      for (bool causal : {true, false}) {
        auto full = make({{"attention", f}, {"rel_pos", rel}, {"max_positions", 20}, {"bidirectional", true}});
        auto chunked = make({{"attention", f}, {"rel_pos", rel}, {"chunk", 12}, {"bidirectional", true}}, torch::kDouble, 9);
        copy_params(full, chunked);
        EXPECT_LT(max_diff(real(run(full, x, causal, pad), pad), real(run(chunked, x, causal, pad), pad)), 1e-12)
            << f << " " << rel << " causal=" << causal;
      }
}

// Case 6: with c = 1, O_t = f(q_t.k_t / tau + b_rel[0, 0]) v_t (tau = sqrt(D) for softmax, whose O_t is v_t exactly;
// 1 visible key for laplace and relu2).
TEST(Mega, ChunkOfOneAttendsToItselfOnly) {
  auto x = torch::randn({2, 9, kC}, torch::kDouble);
  for (std::string f : {"softmax", "laplace", "relu2"})
    for (std::string rel : {"rotary", "simple"})
      for (bool causal : {true, false}) {
        const Json o = defaults({{"attention", f}, {"rel_pos", rel}, {"chunk", 1}, {"bidirectional", true}});
        auto l = make(o);
        auto self = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
          if (f == "softmax") return v;
          auto s = (q * k).sum(-1, true) + bias_ref(l, o, 0, 0);
          return (f == "relu2" ? torch::relu(s).square() : 0.5 * (1.0 + torch::erf((s - std::sqrt(0.5)) /
                                                                                     std::sqrt(0.5 / M_PI)))) * v;
        };
        auto ema = [&](const torch::Tensor& u) { return ema_direct(l, u, !causal, 9); };
        EXPECT_LT(max_diff(run(l, x, causal), block_ref(l, o, x, {}, ema, self)), 1e-10)
            << f << " " << rel << " causal=" << causal;
      }
}

// Case 7: with phi forced to 0 (b_phi = -1e4) and a zero feed-forward output the block returns X_in exactly.
TEST(Mega, ClosedUpdateGateReturnsTheInputExactly) {
  for (bool causal : {true, false}) {
    auto l = make({{"chunk", 4}, {"bidirectional", true}});
    {
      torch::NoGradGuard guard;
      param(*l, "mx_proj.bias").narrow(0, 0, kC).fill_(-1e4);
      param(*l, "fc2.weight").zero_(), param(*l, "fc2.bias").zero_();
    }
    auto x = torch::randn({2, 11, kC}, torch::kDouble);
    auto pad = torch::zeros({2, 11}, torch::kBool);
    pad[1][10] = true;
    EXPECT_TRUE(torch::equal(run(l, x, causal, pad), x)) << "causal=" << causal;
  }
}

// Case 8: b_rel is Toeplitz (b[i+s, j+s] = b[i, j]) for both kinds: the reference's definition checked directly, and
// through the block: s leading pad tokens (zeroed before the EMA, masked as keys) leave the real tokens' outputs
// unchanged only if the bias depends on j - i alone (s a multiple of c when chunked keeps the chunks aligned).
TEST(Mega, RelativeBiasIsToeplitz) {
  for (std::string rel : {"rotary", "simple"}) {
    const Json o = defaults({{"rel_pos", rel}, {"max_positions", 24}});
    auto l = make(o);
    for (int64_t s : {1, 5})
      EXPECT_NEAR(bias_ref(l, o, 2 + s, 7 + s), bias_ref(l, o, 2, 7), 1e-12) << rel;
    for (std::string f : {"softmax", "laplace", "relu2"})
      for (int64_t chunk : {-1, 4})
        for (bool causal : {true, false}) {
          auto m = make({{"rel_pos", rel}, {"attention", f}, {"chunk", chunk}, {"max_positions", 24},
                         {"bidirectional", true}});
          const int64_t s = chunk > 0 ? 4 : 3;
          auto x = torch::randn({1, 8, kC}, torch::kDouble);
          auto shifted = torch::cat({torch::randn({1, s, kC}, torch::kDouble), x}, 1);
          auto pad = torch::zeros({1, s + 8}, torch::kBool);
          pad.narrow(1, 0, s).fill_(true);
          EXPECT_LT(max_diff(run(m, shifted, causal, pad).narrow(1, s, 8), run(m, x, causal)), 1e-10)
              << rel << " " << f << " chunk=" << chunk << " causal=" << causal;
        }
  }
}

// Case 9: causal EMA + causal mask: changing x_{>t} changes no output at positions <= t; the bidirectional form does.
TEST(Mega, DecoderIsCausal) {
  for (int64_t chunk : {-1, 4})
    for (std::string f : {"softmax", "laplace", "relu2"}) {
      auto l = make({{"chunk", chunk}, {"attention", f}, {"bidirectional", true}, {"truncation", chunk > 0 ? 5 : 0}});
      auto x = torch::randn({2, 14, kC}, torch::kDouble);
      auto x2 = x.clone();
      x2.narrow(1, 7, 7).normal_();
      EXPECT_LT(max_diff(run(l, x, true).narrow(1, 0, 7), run(l, x2, true).narrow(1, 0, 7)), 1e-12) << chunk << f;
      EXPECT_GT(max_diff(run(l, x, false).narrow(1, 0, 7), run(l, x2, false).narrow(1, 0, 7)), 1e-6) << chunk << f;
    }
}

// Case 10: the values of padded tokens do not affect the other tokens' outputs (leading, inner and trailing pads).
TEST(Mega, PaddedValuesDoNotLeak) {
  auto pad = torch::zeros({2, 13}, torch::kBool);
  pad[0][0] = pad[0][6] = true;
  pad[1][10] = pad[1][11] = pad[1][12] = true;
  for (int64_t chunk : {-1, 5})
    for (std::string f : {"softmax", "laplace", "relu2"})
      for (bool causal : {true, false}) {
        auto l = make({{"chunk", chunk}, {"attention", f}, {"bidirectional", true}, {"truncation", chunk > 0 ? 6 : 0}});
        auto x = torch::randn({2, 13, kC}, torch::kDouble);
        auto x2 = torch::where(pad.unsqueeze(-1), 100 * torch::randn_like(x), x);
        EXPECT_LT(max_diff(real(run(l, x, causal, pad), pad), real(run(l, x2, causal, pad), pad)), 1e-12)
            << chunk << f << causal;
      }
}

TEST(Mega, IsRegisteredAsAStreamingBlockWithoutMixer) {
  const auto& info = find_block("mega");
  EXPECT_FALSE(info.uses_mixer);
  EXPECT_TRUE(info.streams && info.supports_causal && info.supports_bidirectional);
  EXPECT_FALSE(info.not_reversible.empty());
  ASSERT_TRUE(info.flops);
  const Json o = validate_options(Json::object(), info.schema, "test");
  EXPECT_EQ(o["ndim"], 16);
  EXPECT_EQ(o["chunk"], -1);
  // Full causal attention at T = 8, C = 16 (D = 4, V = 32, F = 64): projections + half of T^2 (D + V).
  const double proj = 2.0 * 8 * (16 * (32 + 4 + 32) + 2 * 16 * 32 + 2 * 16 * 64), attn = 2.0 * 8 * 8 * 36 / 2;
  EXPECT_DOUBLE_EQ(info.flops(1, 8, 16, true, o), proj + attn);
}

// Mega and standard layers stack in one decoder built from JSON; it trains (finite gradients) and decodes in chunks
// as one whole pass.
TEST(Mega, StacksWithStandardLayersInADecoder) {
  Json m = {{"vocab_size", 40}, {"d_model", 16}, {"n_heads", 2}, {"d_ff", 32},
            {"layers", Json::array({Json{{"block", "mega"}, {"chunk", 8}}, "full", Json{{"block", "mega"}}})}};
  auto cfg = ModelConfig::from_json(m);
  ASSERT_EQ(cfg.blocks.size(), 3u);
  EXPECT_EQ(cfg.blocks[0].name, "mega");
  EXPECT_EQ(cfg.blocks[0].options["chunk"], 8);
  EXPECT_EQ(cfg.blocks[1].name, "standard");
  torch::manual_seed(1);
  DecoderLM model(cfg);
  model->eval();
  auto tokens = torch::randint(0, 40, {2, 20}, torch::kLong);
  auto logits = model->forward(tokens);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 20, 40}));
  auto state = model->initial_state(2);
  std::vector<torch::Tensor> parts;
  for (auto [at, len] : std::vector<std::pair<int64_t, int64_t>>{{0, 7}, {7, 1}, {8, 12}})
    parts.push_back(model->forward(tokens.narrow(1, at, len), &state));
  EXPECT_LT(max_diff(torch::cat(parts, 1), logits), 1e-4);
  model->train();
  torch::nn::functional::cross_entropy(model->forward(tokens).reshape({-1, 40}), tokens.reshape({-1})).backward();
  for (auto& p : model->named_parameters())
    if (p.key().find("block0.") != std::string::npos || p.key().find("block2.") != std::string::npos) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    }
}

// Backward: finite gradients everywhere in float; the input gradient matches finite differences in double.
TEST(Mega, BackwardIsFiniteAndMatchesFiniteDifferences) {
  auto l = make({{"chunk", 3}, {"attention", "laplace"}, {"bidirectional", true}}, torch::kFloat);
  auto x = torch::randn({2, 10, kC}).requires_grad_(true);
  for (bool causal : {true, false}) {
    l->zero_grad();
    run(l, x, causal).square().sum().backward();
    for (auto& p : l->named_parameters())
        EXPECT_TRUE(p.value().grad().defined() && torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }
  auto ld = make({{"chunk", 3}, {"attention", "softmax"}, {"truncation", 4}});
  auto xd = torch::randn({1, 6, kC}, torch::kDouble).requires_grad_(true);
  auto w = torch::randn({1, 6, kC}, torch::kDouble);
  EXPECT_LT(longseq_test::gradcheck_error([&] { return (run(ld, xd, true) * w).sum(); }, xd), 1e-6);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Mega, BadOptionsAndShapesAreNamedErrors) {
  auto has = [](const std::string& msg, const std::string& word) { return msg.find(word) != std::string::npos; };
  EXPECT_PRED2(has, error_of([] { make({{"attention", "gelu"}}); }), "attention");
  EXPECT_PRED2(has, error_of([] { make({{"chunk", 0}}); }), "chunk");
  EXPECT_PRED2(has, error_of([] { make({{"chunk", -2}}); }), "chunk");
  EXPECT_PRED2(has, error_of([] { make({{"z_dim", 3}}); }), "z_dim");
  EXPECT_PRED2(has, error_of([] { make({{"zdim", 4}}); }), "zdim");
  EXPECT_PRED2(has, error_of([] { make({{"norm", "batchnorm"}}); }), "norm");
  auto simple = make({{"rel_pos", "simple"}, {"max_positions", 8}});
  auto x = torch::randn({1, 10, kC}, torch::kDouble);
  EXPECT_PRED2(has, error_of([&] { run(simple, x, true); }), "max_positions");
  auto st = simple->initial_state(1);
  EXPECT_PRED2(has, error_of([&] { run(simple, x, true, {}, st.get()); }), "max_positions");
  auto l = make({});
  EXPECT_PRED2(has, error_of([&] { run(l, x, false); }), "bidirectional");
  auto b = make({{"bidirectional", true}});
  auto sb = b->initial_state(1);
  EXPECT_PRED2(has, error_of([&] { run(b, x, false, {}, sb.get()); }), "cannot stream");
  EXPECT_PRED2(has, error_of([&] { run(l, torch::randn({1, 4, kC + 1}, torch::kDouble), true); }), "[B, T, 8]");
  EXPECT_PRED2(has, error_of([&] { run(l, x, true, torch::zeros({1, 9}, torch::kBool)); }), "padding_mask");
  // A model-level error: an encoder needs the leads' kernels, named when the classifier runs.
  Json m = {{"type", "encoder_classifier"}, {"vocab_size", 20}, {"d_model", 16}, {"n_heads", 2},
            {"layers", Json::array({Json{{"block", "mega"}}})}};
  EncoderClassifier enc(ModelConfig::from_json(m));
  EXPECT_PRED2(has, error_of([&] { enc->forward(torch::randint(0, 20, {1, 5}, torch::kLong)); }), "bidirectional");
}

}  // namespace mega_test
