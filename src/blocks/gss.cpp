// "gss": the Gated State Space layer (Mehta, Gupta, Cutkosky, Neyshabur 2022, "Long Range Language Modeling via
// Gated State Spaces", sec. 3) around the simplified diagonal state space of DSS (Gupta, Gu, Berant 2022, sec. 3).
// One layer replaces attention and the feed-forward (sec. 3.2), x: [B, T, C]:
//   x^ = LN(x); v = GELU(x^ W_v) [F]; u = GELU(x^ W_u) [H]; y = dss(u) [H]; out = x + ((y W_c) * v) W_o.
// dss(u) = K * LN(u) + D * LN(u) per channel, K_{h,k} = Re sum_n C~_{hn} e^{k lambda_n}, C~ = C (e^lambda - 1) / lambda,
// lambda = -exp(L_re) + i exp(L_im) (the imaginary part's exp is an option: DSS/S4D leave it free).
// Training: K built in double (angles k * Im(lambda) reach 10^5 at 64K) and applied by an FFT of length >= 2T in
// float; O(B H T log T) time, O(B H T + N T) memory. Streaming: the complex state s [B, H, N] (re, im) carried,
// s_t = e^lambda s_{t-1} + u_t, each chunk by the FFT plus the carried state's term: O(H N) a token, flat in T.
// The `softmax` form (DSS's default) replaces C by C / (e^{T lambda} - 1): it depends on T, so it cannot stream.
// Bidirectional (DSS's bidirectional option): a second C for the leads, y_t += sum_{k>=1} K'_{k-1} u_{t+k}.
// Not supported: DSS's per-channel step Delta (GSS drops it, sec. 3.1).
#include <cmath>

#include "longseq/blocks.h"
#include "longseq/common.h"

namespace longseq {

namespace {

struct GssState : MixerState {
  torch::Tensor s_re, s_im;  // [B, H, N]: the state after the tokens seen
  int64_t length = 0;
  std::map<std::string, torch::Tensor> tensors() const override { return {{"s_re", s_re}, {"s_im", s_im}}; }
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({s_re}), "block gss");
    s_re = select_rows(s_re, i), s_im = select_rows(s_im, i);
  }
};

// Real and imaginary parts of e^{k lambda_n} for the exponents k [K] (double): [N, K] each.
std::pair<torch::Tensor, torch::Tensor> powers(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& k) {
  auto mag = torch::exp(a.unsqueeze(1) * k.unsqueeze(0));
  auto angle = b.unsqueeze(1) * k.unsqueeze(0);
  return {mag * torch::cos(angle), mag * torch::sin(angle)};
}

// Re sum_n c_n e^{(from + k) lambda_n} for k in [0, L): c [..., N] (re, im) -> [..., L]. Split k = q m + r with
// m ~ sqrt(L), so no [N, L] table is built (at N = 512, T = 64K it would be 268 MB a tensor in double).
torch::Tensor re_power_sum(const torch::Tensor& cr, const torch::Tensor& ci, const torch::Tensor& a,
                           const torch::Tensor& b, int64_t from, int64_t L) {
  const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(L))))),
                Q = (L + m - 1) / m;
  auto [qr, qi] = powers(a, b, torch::arange(0, Q, a.options()) * static_cast<double>(m) + static_cast<double>(from));
  auto [rr, ri] = powers(a, b, torch::arange(0, m, a.options()));
  auto Ar = cr.unsqueeze(-1) * qr - ci.unsqueeze(-1) * qi, Ai = cr.unsqueeze(-1) * qi + ci.unsqueeze(-1) * qr;  // [..., N, Q]
  auto out = torch::matmul(Ar.transpose(-1, -2), rr) - torch::matmul(Ai.transpose(-1, -2), ri);                // [..., Q, m]
  return out.flatten(-2).narrow(-1, 0, L);
}

// sum_l e^{(L-1-l) lambda_n} u_l for u [B, H, L] -> [B, H, N] (re, im), by the same split of the exponent.
std::pair<torch::Tensor, torch::Tensor> power_weighted_sum(const torch::Tensor& u, const torch::Tensor& a,
                                                           const torch::Tensor& b) {
  const int64_t L = u.size(-1);
  const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(L))))),
                Q = (L + m - 1) / m;
  auto U = torch::constant_pad_nd(u.flip(-1), {0, Q * m - L}).unflatten(-1, {Q, m});  // U[q, r] = u_{L-1-qm-r}
  auto [qr, qi] = powers(a, b, torch::arange(0, Q, a.options()) * static_cast<double>(m));
  auto [rr, ri] = powers(a, b, torch::arange(0, m, a.options()));
  auto inner_r = torch::matmul(U, rr.t()), inner_i = torch::matmul(U, ri.t());  // [B, H, Q, N]
  auto re = (inner_r * qr.t() - inner_i * qi.t()).sum(-2), im = (inner_r * qi.t() + inner_i * qr.t()).sum(-2);
  return {re, im};
}

// Causal convolution y_t = sum_{k <= t} K_k u_{t-k} by FFT: u [B, H, T], K [H, L] -> [B, H, T] (zero-padded to
// n >= T + L, so no tap wraps around to the past: the sheet's pitfall 3).
torch::Tensor causal_conv(const torch::Tensor& u, const torch::Tensor& K) {
  const int64_t T = u.size(-1);
  int64_t n = 1;
  while (n < T + K.size(-1)) n *= 2;
  auto y = torch::fft::irfft(torch::fft::rfft(u, n) * torch::fft::rfft(K, n), n);
  return y.narrow(-1, 0, T);
}

class GssImpl : public LayerImpl {
 public:
  explicit GssImpl(const BlockArgs& a)
      : C_(a.d_model),
        F_(a.options["gate_dim"].get<int64_t>() > 0 ? a.options["gate_dim"].get<int64_t>() : 4 * a.d_model),
        H_(a.options["ssm_dim"].get<int64_t>() > 0 ? a.options["ssm_dim"].get<int64_t>()
                                                   : std::max<int64_t>(1, a.d_model / 4)),
        N_(a.options["state_dim"]),
        softmax_(a.options["kernel"] == "softmax"),
        imag_exp_(a.options["lambda_imag_exp"]),
        dropout_(a.options["dropout"].get<double>() >= 0 ? a.options["dropout"].get<double>() : a.dropout) {
    auto lin = [&](int64_t in, int64_t out, bool bias) {
      return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
    };
    ln_ = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C_})));
    w_v_ = register_module("w_v", lin(C_, F_, false));
    w_u_ = register_module("w_u", lin(C_, H_, false));
    ln_u_ = register_module("ln_u", torch::nn::LayerNorm(torch::nn::LayerNormOptions({H_})));  // inside dss (sec. 3.2)
    w_c_ = register_module("w_c", lin(H_, F_, false));
    w_o_ = register_module("w_o", lin(F_, C_, true));
    // Random initialisation, no HiPPO (sec. 3.1's simplification): standard normal as the port of the pseudocode.
    lambda_re_ = register_parameter("lambda_re", torch::randn({N_}));
    lambda_im_ = register_parameter("lambda_im", torch::randn({N_}));
    c_re_ = register_parameter("c_re", torch::randn({H_, N_}));
    c_im_ = register_parameter("c_im", torch::randn({H_, N_}));
    d_ = register_parameter("d", torch::randn({H_}));
    if (a.options["bidirectional"].get<bool>()) {  // the leads' kernel, used when the context is not causal
      cb_re_ = register_parameter("c_back_re", torch::randn({H_, N_}));
      cb_im_ = register_parameter("c_back_im", torch::randn({H_, N_}));
    }
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx, int64_t) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == C_, "gss: x must be [B, T, ", C_, "], got ", x.sizes());
    auto* st = ctx.state ? dynamic_cast<GssState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || st, "gss: the state passed was not made by this block");
    if (st && !ctx.causal) throw Error("block gss: the bidirectional form reads later tokens, so it cannot stream");
    if (!ctx.causal && !cb_re_.defined())
      throw Error("block gss: a bidirectional model needs the option bidirectional = true (the leads' kernel)");
    auto xh = ln_(x);
    auto v = torch::gelu(w_v_(xh));                            // [B, T, F]: the wide gate
    auto u = ln_u_(torch::gelu(w_u_(xh)));                     // [B, T, H]: dss normalises its input (pitfall 4)
    if (ctx.padding_mask.defined())  // pads carry nothing
      u = u.masked_fill(ctx.padding_mask.to(torch::kBool).unsqueeze(-1), 0.0);
    auto y = dss(u.transpose(1, 2), ctx.causal, st);           // [B, H, T]
    auto h = (w_c_(y.transpose(1, 2)) * v);
    auto out = w_o_(dropout_ > 0 ? torch::dropout(h, dropout_, is_training()) : h);
    return x + out;
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override {
    if (softmax_) return nullptr;  // its kernel depends on the whole length
    return std::make_unique<GssState>();
  }

 private:
  int64_t C_, F_, H_, N_;
  bool softmax_, imag_exp_;
  double dropout_;
  torch::nn::LayerNorm ln_{nullptr}, ln_u_{nullptr};
  torch::nn::Linear w_v_{nullptr}, w_u_{nullptr}, w_c_{nullptr}, w_o_{nullptr};
  torch::Tensor lambda_re_, lambda_im_, c_re_, c_im_, d_, cb_re_, cb_im_;
  struct StepCache {
    bool valid = false;
    int64_t version = 0;
    const void* ptr = nullptr;
    torch::Tensor kr, ki, er, ei;  // C~ [H, N] and e^lambda [N], double
  };
  mutable StepCache step_cache_;

  // lambda = a + i b, in double.
  std::pair<torch::Tensor, torch::Tensor> lambda() const {
    auto a = -torch::exp(lambda_re_.to(torch::kDouble));
    auto b = imag_exp_ ? torch::exp(lambda_im_.to(torch::kDouble)) : lambda_im_.to(torch::kDouble);
    return {a, b};
  }

  // C~ = C (e^lambda - 1) / lambda, and for the softmax form also / (e^{T lambda} - 1): [H, N] re, im in double.
  std::pair<torch::Tensor, torch::Tensor> coefficients(const torch::Tensor& cre, const torch::Tensor& cim,
                                                       const torch::Tensor& a, const torch::Tensor& b, int64_t T) const {
    auto ea = torch::exp(a);
    auto zr = ea * torch::cos(b) - 1.0, zi = ea * torch::sin(b);  // e^lambda - 1
    auto den = (a * a + b * b).clamp_min(1e-14);                  // |lambda|^2, guarded (pitfall 6)
    auto qr = (zr * a + zi * b) / den, qi = (zi * a - zr * b) / den;  // (e^lambda - 1) / lambda
    auto tiny = (a * a + b * b) < 1e-12;  // there the series 1 + lambda / 2, the limit the guard would miss
    qr = torch::where(tiny, 1.0 + a / 2.0, qr), qi = torch::where(tiny, b / 2.0, qi);
    if (softmax_) {  // times 1 / (e^{T lambda} - 1)
      auto eT = torch::exp(a * static_cast<double>(T));
      auto wr = eT * torch::cos(b * static_cast<double>(T)) - 1.0, wi = eT * torch::sin(b * static_cast<double>(T));
      auto w2 = (wr * wr + wi * wi).clamp_min(1e-300);
      auto nr = (qr * wr + qi * wi) / w2, ni = (qi * wr - qr * wi) / w2;
      qr = nr, qi = ni;
    }
    auto c_r = cre.to(torch::kDouble), c_i = cim.to(torch::kDouble);
    return {c_r * qr - c_i * qi, c_r * qi + c_i * qr};
  }

  // K [H, L] for lags 0..L-1: Re sum_n C~ e^{k lambda}, in double.
  torch::Tensor kernel(const torch::Tensor& cre, const torch::Tensor& cim, int64_t L, int64_t T) const {
    auto [a, b] = lambda();
    auto [kr, ki] = coefficients(cre, cim, a, b, T);
    return re_power_sum(kr, ki, a, b, 0, L);
  }

  // u [B, H, T] (normalised) -> dss(u) [B, H, T]; with a state, u continues it and the state advances.
  // Single-token decoding without gradients: s <- e^lambda s + u, y = Re sum_n C~ s + D u, with C~ and e^lambda
  // kept between calls (rebuilt when any of their parameters changes: an optimizer step bumps their versions).
  torch::Tensor dss_step(const torch::Tensor& u, GssState* st) const {
    const int64_t version = lambda_re_._version() + lambda_im_._version() + c_re_._version() + c_im_._version();
    if (!step_cache_.valid || step_cache_.version != version || step_cache_.ptr != lambda_re_.data_ptr()) {
      auto [a, b] = lambda();
      auto [kr, ki] = coefficients(c_re_, c_im_, a, b, 1);
      step_cache_ = {true, version, lambda_re_.data_ptr(), kr, ki, torch::exp(a) * torch::cos(b), torch::exp(a) * torch::sin(b)};
    }
    const auto& c = step_cache_;
    TORCH_CHECK(!st->s_re.defined() || st->s_re.size(0) == u.size(0), "gss: the state holds ", st->s_re.size(0),
                " sequences, the input ", u.size(0));
    if (!st->s_re.defined()) {
      st->s_re = torch::zeros({u.size(0), H_, N_}, u.options().dtype(torch::kDouble));
      st->s_im = torch::zeros_like(st->s_re);
    }
    auto ud = u.to(torch::kDouble);  // [B, H, 1]
    auto sr = c.er * st->s_re - c.ei * st->s_im + ud, si = c.er * st->s_im + c.ei * st->s_re;
    st->s_re = sr, st->s_im = si;
    st->length += 1;
    auto y = (c.kr * sr - c.ki * si).sum(-1, true);  // [B, H, 1]
    return y.to(u.dtype()) + d_.view({1, H_, 1}) * u;
  }

  torch::Tensor dss(const torch::Tensor& u, bool causal, GssState* st) const {
    const int64_t B = u.size(0), T = u.size(2);
    if (st && T == 1 && causal && !torch::GradMode::is_enabled()) return dss_step(u, st);
    auto y = causal_conv(u, kernel(c_re_, c_im_, T, T).to(u.dtype())) + d_.view({1, H_, 1}) * u;
    if (!causal)  // leads: y_t += sum_{k>=1} K'_{k-1} u_{t+k}, the causal convolution of the reversed input shifted
      y = y + causal_conv(u.flip(-1), torch::constant_pad_nd(kernel(cb_re_, cb_im_, T, T).to(u.dtype()), {1, 0}).narrow(-1, 0, T))
                  .flip(-1);
    if (!st) return y;
    auto [a, b] = lambda();
    auto [kr, ki] = coefficients(c_re_, c_im_, a, b, T);
    if (!st->s_re.defined()) {
      st->s_re = torch::zeros({B, H_, N_}, u.options().dtype(torch::kDouble));
      st->s_im = torch::zeros_like(st->s_re);
    }
    TORCH_CHECK(st->s_re.size(0) == B, "gss: the state holds ", st->s_re.size(0), " sequences, the input ", B);
    // The carried state's term Re sum_n C~ e^{(t+1) lambda} s0 (t = 0..T-1).
    auto pr = kr.unsqueeze(0) * st->s_re - ki.unsqueeze(0) * st->s_im;  // C~ s0: [B, H, N]
    auto pi = kr.unsqueeze(0) * st->s_im + ki.unsqueeze(0) * st->s_re;
    y = y + re_power_sum(pr, pi, a, b, 1, T).to(y.dtype());
    // s <- e^{T lambda} s0 + sum_l e^{(T-1-l) lambda} u_l.
    auto [add_r, add_i] = power_weighted_sum(u.to(torch::kDouble), a, b);
    auto eT = torch::exp(a * static_cast<double>(T));
    auto cr = eT * torch::cos(b * static_cast<double>(T)), ci = eT * torch::sin(b * static_cast<double>(T));
    auto sr = cr * st->s_re - ci * st->s_im + add_r, si = cr * st->s_im + ci * st->s_re + add_i;
    st->s_re = sr.detach(), st->s_im = si.detach();
    st->length += T;
    return y;
  }
};

}  // namespace

BlockInfo gss_block_info() {
  BlockInfo b;
  b.name = "gss";
  b.summary = "Gated State Space layer: a diagonal state space (DSS, random complex Lambda, FFT convolution) on a "
              "narrow branch, gated by a wide GELU branch; replaces attention and the feed-forward";
  b.citation = "Mehta, Gupta, Cutkosky, Neyshabur 2022, Long Range Language Modeling via Gated State Spaces, sec. 3; "
               "Gupta, Gu, Berant 2022, Diagonal State Spaces are as Effective as Structured State Spaces";
  b.schema = {
      {"gate_dim", OptionType::Int, 0, "F, width of the gate branch v; 0 = 4 d_model (sec. 3.2: F = 4E)", 0, 1 << 20},
      {"ssm_dim", OptionType::Int, 0, "H, channels of the state space branch u; 0 = d_model / 4 (sec. 3.2: H = 256 "
       "for E = 1024)", 0, 1 << 20},
      {"state_dim", OptionType::Int, 512, "N, complex state size per channel (sec. 3.2's N = 512; DSS used 64)", 1,
       1 << 16},
      {"kernel", OptionType::String, "exp", "exp (GSS: the prefix does not depend on T, so it streams and extends to "
       "longer inputs) or softmax (DSS's default; depends on T, cannot stream)", -1e300, 1e300, {"exp", "softmax"}},
      {"lambda_imag_exp", OptionType::Bool, true, "Im(lambda) = exp(parameter) as the GSS pseudocode; false = the "
       "parameter itself (DSS, S4D)"},
      {"bidirectional", OptionType::Bool, false, "add the leads' kernel (DSS's bidirectional form) for encoders; "
       "required when the model is not causal"},
      {"dropout", OptionType::Float, -1.0, "dropout on the gated product before W_o; -1 = model.dropout", -1.0, 0.99},
  };
  b.supports_causal = true;
  b.supports_bidirectional = true;
  b.streams = true;  // with kernel = exp
  b.not_reversible = "one residual branch (the gated SSM) where the reversible stack needs a mixer and a feed-forward";
  b.make = [](const BlockArgs& a) -> Layer { return std::make_shared<GssImpl>(a); };
  b.flops = [](int64_t B, int64_t T, int64_t C, bool causal, const Json& o) {
    const double F = o["gate_dim"].get<int64_t>() > 0 ? o["gate_dim"].get<int64_t>() : 4.0 * C;
    const double H = o["ssm_dim"].get<int64_t>() > 0 ? o["ssm_dim"].get<int64_t>() : std::max<int64_t>(1, C / 4);
    const double N = o["state_dim"].get<int64_t>();
    double n = 1;
    while (n < 2.0 * T) n *= 2;
    // Projections, the kernel (2 real products of [H, N] x [N, T]) and the FFTs (about 5 n log2 n a transform).
    const double proj = 2.0 * B * T * (C * F + C * H + H * F + F * C);
    const double kern = 2.0 * 2.0 * H * N * T;
    const double fft = (causal ? 3.0 : 6.0) * B * H * 5.0 * n * std::log2(n) / 2.0;
    return proj + kern + fft;
  };
  return b;
}

}  // namespace longseq
