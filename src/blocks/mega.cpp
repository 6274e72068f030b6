// "mega": Mega, Moving Average Equipped Gated Attention (Ma, Zhou, Kong, He, Gui, Neubig, May, Zettlemoyer, ICLR 2023,
// arXiv 2209.10655). One layer = the Mega layer (sec. 3.2, eq. 8-16) followed by the normalised feed-forward; it
// replaces the standard block's mixer + feed-forward pair. Letters: B batch, T length, C d_model, D the shared q/k
// width (paper z), V the value width (paper v), N the EMA expansion (paper h), c the chunk length.
//   EMA (sec. 3.1, eq. 2-3): u_t = beta x_t, h_t = alpha u_t + (1 - alpha delta) h_{t-1}, y_t = eta^T h_t per channel,
//     alpha = sigmoid(a), delta = sigmoid(d), eta = gamma sqrt(1/N); X' = SiLU(EMA(X) + omega X) (official code).
//   Gated attention (eq. 8-16): Z from X', Q/K by per-dimension scale + offset of Z, V from X, one head;
//     Y = phi H^ + (1 - phi) X_in. Attention f: softmax, laplace (sec. 3.3) or relu2; bias b_rel simple or rotary.
//   Mega-chunk (sec. 3.5): attention only inside chunks of c positions; the EMA still spans the whole sequence.
// Training: the EMA as a linear convolution by FFT (n >= T + kernel length; at least float32), O(B C T log T); the
// attention O(B T min(T, c) (D + V)). Streaming (causal only): the EMA state h [B, C, N] and the K, V of the current
// chunk, O(C N + c (D + V)) a token. Bidirectional (encoders): a second kernel set for the leads, lead 0 dropped.
// Not supported: batchnorm / syncbatchnorm (LRA image configs), the code's eval-mode kernel cache (pitfall 8: the
// kernel is rebuilt at every call), bucketed relative positions. Streaming ignores `truncation` (the recurrence is
// exact; pitfall 7), so chunked == whole holds when truncation is unset or >= T.
#include <cmath>
#include <limits>

#include "longseq/blocks.h"
#include "longseq/common.h"

namespace longseq {

namespace {
namespace mega {  // a named scope: the library is a unity build, so helper names must not meet other files'

constexpr double kNormEps = 1e-5;
const double kLaplaceMu = std::sqrt(0.5), kLaplaceSigma = std::sqrt(0.25 / M_PI);  // sec. 3.3: f ~ relu2 near 0..2

struct MegaState : MixerState {
  torch::Tensor h;              // [B, C, N]: the EMA state after the tokens seen
  torch::Tensor k, v, key_pad;  // the current attention chunk so far: [B, S, D], [B, S, V], [B, S] bool
  int64_t length = 0;           // tokens seen
  std::map<std::string, torch::Tensor> tensors() const override {
    std::map<std::string, torch::Tensor> out;
    if (h.defined()) out["h"] = h;
    if (k.defined()) out["k"] = k, out["v"] = v, out["key_pad"] = key_pad;
    return out;
  }
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({h, k}), "block mega");
    h = select_rows(h, i), k = select_rows(k, i), v = select_rows(v, i), key_pad = select_rows(key_pad, i);
  }
};

// Layer norm, Mega's scalenorm g x / sqrt(mean(x^2) + eps) with one scalar g (pitfall 11), or RMSNorm: [.., C].
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(const std::string& kind, int64_t C) : kind_(kind), C_(C) {
    if (kind_ == "layernorm") {
      weight_ = register_parameter("weight", torch::ones({C}));
      bias_ = register_parameter("bias", torch::zeros({C}));
    } else if (kind_ == "rmsnorm") {
      weight_ = register_parameter("weight", torch::ones({C}));
    } else {
      weight_ = register_parameter("scale", torch::ones({1}));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    if (kind_ == "layernorm") return torch::layer_norm(x, {C_}, weight_, bias_, kNormEps);
    return x * torch::rsqrt(x.square().mean(-1, true) + kNormEps) * weight_;
  }

 private:
  std::string kind_;
  int64_t C_;
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(Norm);

// Linear causal convolution y_t = sum_{k < L} K_k u_{t-k}: u [B, C, T], K [C, L] -> [B, C, T]. The FFT size is at
// least T + L - 1, so no tap wraps round to the sequence's start.
torch::Tensor causal_conv(const torch::Tensor& u, const torch::Tensor& K) {
  const int64_t T = u.size(-1);
  int64_t n = 1;
  while (n < T + K.size(-1)) n *= 2;
  return torch::fft::irfft(torch::fft::rfft(u, n) * torch::fft::rfft(K, n), n).narrow(-1, 0, T);
}

// exp(k log q) for k in [from, from + L): logq [E, N] -> [E, N, L] (the code's Vandermonde form).
torch::Tensor powers(const torch::Tensor& logq, int64_t from, int64_t L) {
  return torch::exp(logq.unsqueeze(-1) * torch::arange(from, from + L, logq.options()));
}

// RoPE of one vector at each position, half-split layout, base 10000: vec [D], pos [L] long -> [L, D].
torch::Tensor rotate(const torch::Tensor& vec, const torch::Tensor& pos) {
  const int64_t half = vec.size(0) / 2;
  auto dopts = torch::TensorOptions().dtype(torch::kDouble).device(vec.device());
  auto freq = torch::exp(torch::arange(half, dopts) * (-std::log(10000.0) / static_cast<double>(half)));
  auto angle = pos.to(torch::kDouble).unsqueeze(1) * freq.unsqueeze(0);  // in double: angles grow with position
  auto c = torch::cos(angle).to(vec.dtype()), s = torch::sin(angle).to(vec.dtype());
  auto x1 = vec.narrow(0, 0, half), x2 = vec.narrow(0, half, half);
  return torch::cat({x1 * c - x2 * s, x2 * c + x1 * s}, 1);
}

class MegaImpl : public LayerImpl {
 public:
  explicit MegaImpl(const BlockArgs& a)
      : C_(a.d_model),
        D_(a.options["z_dim"].get<int64_t>() > 0 ? a.options["z_dim"].get<int64_t>()
                                                 : std::max<int64_t>(2, a.d_model / 4 / 2 * 2)),
        V_(a.options["v_dim"].get<int64_t>() > 0 ? a.options["v_dim"].get<int64_t>() : 2 * a.d_model),
        N_(a.options["ndim"]),
        F_(a.options["ffn_dim"].get<int64_t>() > 0 ? a.options["ffn_dim"].get<int64_t>() : a.d_ff),
        chunk_(a.options["chunk"]),
        trunc_(a.options["truncation"]),
        attn_(a.options["attention"].get<std::string>()),
        rotary_(a.options["rel_pos"] == "rotary"),
        prenorm_(a.options["prenorm"]),
        bidirectional_(a.options["bidirectional"]),
        dropout_(a.options["dropout"].get<double>() >= 0 ? a.options["dropout"].get<double>() : a.dropout),
        attn_dropout_(a.options["attention_dropout"]),
        hidden_dropout_(a.options["hidden_dropout"]) {
    if (C_ < 1) throw Error("block mega: d_model must be positive, got " + std::to_string(C_));
    if (chunk_ == 0) throw Error("block mega: option chunk must be -1 (full attention) or >= 1, got 0");
    if (rotary_ && D_ % 2 != 0)
      throw Error("block mega: option z_dim = " + std::to_string(D_) + " must be even for rel_pos = rotary");
    if (F_ < 1) throw Error("block mega: option ffn_dim is 0 and d_ff = " + std::to_string(a.d_ff) + " is not positive");
    // Mega has one attention head (sec. 3.2); BlockArgs::n_heads is ignored.
    const int64_t E = bidirectional_ ? 2 * C_ : C_;  // forward kernels, then the leads' kernels
    auto normal = [](std::vector<int64_t> shape, double std) { return torch::randn(shape) * std; };
    ema_a_ = register_parameter("ema_alpha", normal({E, N_}, 0.2));
    ema_d_ = register_parameter("ema_delta", normal({E, N_}, 0.2));
    // beta ~ N(0, 0.02) + (+1, -1, +1, ...) along n: the code's init, "more stable" than all-positive.
    auto sign = torch::ones({N_});
    for (int64_t n = 1; n < N_; n += 2) sign[n] = -1.0;
    ema_beta_ = register_parameter("ema_beta", normal({E, N_}, 0.02) + sign);
    ema_gamma_ = register_parameter("ema_gamma", normal({E, N_}, 1.0));
    ema_omega_ = register_parameter("ema_omega", normal({C_}, 1.0));
    norm_mix_ = register_module("norm_mix", Norm(a.options["norm"].get<std::string>(), C_));
    norm_ff_ = register_module("norm_ff", Norm(a.options["norm"].get<std::string>(), C_));
    auto linear = [&](const std::string& name, int64_t in, int64_t out) {
      auto l = register_module(name, torch::nn::Linear(in, out));
      torch::NoGradGuard guard;
      l->weight.normal_(0.0, 0.02), l->bias.zero_();
      return l;
    };
    mx_proj_ = linear("mx_proj", C_, 2 * C_ + D_ + V_);  // phi | [z, gamma_r] | h: W_phi, W_z, W_gamma, W_h fused
    v_proj_ = linear("v_proj", C_, V_);
    h_proj_ = linear("h_proj", V_, C_);
    fc1_ = linear("fc1", C_, F_);
    fc2_ = linear("fc2", F_, C_);
    qk_scale_ = register_parameter("qk_scale", normal({2, D_}, 0.02));  // kappa_q, kappa_k (eq. 11-12)
    qk_offset_ = register_parameter("qk_offset", torch::zeros({2, D_}));  // mu_q, mu_k
    if (rotary_) {
      rel_a_ = register_parameter("rel_a", normal({D_}, 0.02));
      rel_b_ = register_parameter("rel_b", normal({D_}, 0.02));
    } else {
      M_ = chunk_ > 0 ? chunk_ : a.options["max_positions"].get<int64_t>();  // pitfall 10: sized by c when chunked
      rel_table_ = register_parameter("rel_pos", normal({2 * M_ - 1}, 0.02));
    }
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx, int64_t ff_chunks) override {
    if (x.dim() != 3 || x.size(2) != C_)
      throw Error("block mega: x must be [B, T, " + std::to_string(C_) + "], got " + c10::str(x.sizes()));
    const auto& pad = ctx.padding_mask;
    if (pad.defined() && (pad.dim() != 2 || pad.size(0) != x.size(0) || pad.size(1) != x.size(1) ||
                          pad.scalar_type() != torch::kBool))
      throw Error("block mega: padding_mask must be [B, T] = " + c10::str(x.sizes().slice(0, 2)) + " bool, got " +
                  c10::str(pad.sizes()) + " " + std::string(c10::toString(pad.scalar_type())));
    auto* st = ctx.state ? dynamic_cast<MegaState*>(ctx.state) : nullptr;
    if (ctx.state && !st) throw Error("block mega: the state passed was not made by this block");
    if (st && !ctx.causal) throw Error("block mega: the bidirectional EMA reads later tokens, so it cannot stream");
    if (!ctx.causal && !bidirectional_)
      throw Error("block mega: a bidirectional (non-causal) model needs the option bidirectional = true (the leads' "
                  "EMA kernels)");
    if (st && st->h.defined() && st->h.size(0) != x.size(0))
      throw Error("block mega: the state holds " + std::to_string(st->h.size(0)) + " sequences, the input " +
                  std::to_string(x.size(0)));
    auto y = mega_layer(x, pad, ctx.causal, st);
    if (st) st->length += x.size(1);
    return ffn(y, ff_chunks);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<MegaState>(); }

 private:
  int64_t C_, D_, V_, N_, F_, chunk_, trunc_, M_ = 0;
  std::string attn_;
  bool rotary_, prenorm_, bidirectional_;
  double dropout_, attn_dropout_, hidden_dropout_;
  torch::Tensor ema_a_, ema_d_, ema_beta_, ema_gamma_, ema_omega_, qk_scale_, qk_offset_, rel_a_, rel_b_, rel_table_;
  Norm norm_mix_{nullptr}, norm_ff_{nullptr};
  torch::nn::Linear mx_proj_{nullptr}, v_proj_{nullptr}, h_proj_{nullptr}, fc1_{nullptr}, fc2_{nullptr};

  torch::Tensor drop(const torch::Tensor& x, double p) { return p > 0 ? torch::dropout(x, p, is_training()) : x; }

  // The Mega layer (eq. 8-16 with the code's residual and norm placement): x [B, T, C] -> [B, T, C].
  torch::Tensor mega_layer(const torch::Tensor& x, const torch::Tensor& pad, bool causal, MegaState* st) {
    auto xn = prenorm_ ? norm_mix_(x) : x;
    auto v = drop(torch::silu(v_proj_(xn)), hidden_dropout_);  // eq. 12: V from X, not X' (pitfall 6)
    auto mx = drop(ema(xn, pad, causal, st), dropout_);         // X' (eq. 8 + the code's SiLU and omega)
    auto parts = mx_proj_(mx).split_with_sizes({C_, D_ + V_, C_}, -1);
    auto phi = torch::sigmoid(parts[0]);                         // update gate (eq. 14)
    auto zr = torch::silu(parts[1]).split_with_sizes({D_, V_}, -1);
    auto z = zr[0], r = zr[1];                                   // Z (eq. 9), reset gate gamma_r (eq. 13)
    auto q = z * qk_scale_[0] + qk_offset_[0], k = z * qk_scale_[1] + qk_offset_[1];  // eq. 10-11
    auto o = st ? attention_stream(q, k, v, pad, *st) : attention_whole(q, k, v, pad, causal);
    auto h = drop(torch::silu(parts[2] + h_proj_(drop(o * r, hidden_dropout_))), dropout_);  // H^ (eq. 15)
    auto out = x + phi * (h - x);  // eq. 16: phi H^ + (1 - phi) X_in, exactly X_in when phi = 0
    return prenorm_ ? out : norm_mix_(out);
  }

  // Normalised feed-forward (the code's NormalizedFeedForwardNetwork, SiLU), over `chunks` slices of T.
  torch::Tensor ffn(const torch::Tensor& x, int64_t chunks) {
    auto run = [&](const torch::Tensor& part) {
      auto f = drop(fc2_(drop(torch::silu(fc1_(prenorm_ ? norm_ff_(part) : part)), hidden_dropout_)), dropout_);
      return prenorm_ ? part + f : norm_ff_(part + f);
    };
    const int64_t T = x.size(1);
    if (chunks <= 1 || T <= 1) return run(x);
    std::vector<torch::Tensor> out;
    const int64_t step = (T + chunks - 1) / chunks;
    for (int64_t t = 0; t < T; t += step) out.push_back(run(x.narrow(1, t, std::min(step, T - t))));
    return torch::cat(out, 1);
  }

  // X' = SiLU(EMA(xn) + omega xn) with padded tokens zeroed first (pitfall 12): xn [B, T, C] -> [B, T, C]. The
  // EMA runs in at least float32 (the code's fp32 FFT); with a state, the chunk form continues it exactly.
  torch::Tensor ema(const torch::Tensor& xn, const torch::Tensor& pad, bool causal, MegaState* st) {
    const auto cd = xn.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    auto u = xn.to(cd);
    if (pad.defined()) u = u.masked_fill(pad.unsqueeze(-1), 0.0);
    auto ut = u.transpose(1, 2);  // [B, C, T]
    const int64_t B = u.size(0), T = u.size(1);
    auto alpha = torch::sigmoid(ema_a_.to(cd)), delta = torch::sigmoid(ema_d_.to(cd));
    // log q, q = 1 - alpha delta; the floor keeps exp(0 * log q) = 1 when alpha = delta = 1 in floating point.
    auto logq = torch::log((1.0 - alpha * delta).clamp_min(std::numeric_limits<float>::min()));
    auto ab = alpha * ema_beta_.to(cd);                                   // alpha beta: what multiplies x (pitfall 2)
    auto eta = ema_gamma_.to(cd) * std::sqrt(1.0 / static_cast<double>(N_));  // the code's sqrt(1/N) (pitfall 1)
    torch::Tensor y;
    if (!st) {
      const int64_t L = trunc_ > 0 ? std::min(trunc_, T) : T, E = causal ? C_ : ema_a_.size(0);  // leads' rows unused
      auto K = ((eta * ab).narrow(0, 0, E).unsqueeze(-1) * powers(logq.narrow(0, 0, E), 0, L)).sum(1);  // [E, L]
      y = causal_conv(ut, K.narrow(0, 0, C_));
      if (!causal) {  // leads: y_t += sum_{k >= 1} K^b_k x_{t+k}; lead 0 dropped so x_t counts once (pitfall 3)
        auto Kb = torch::constant_pad_nd(K.narrow(0, C_, C_).narrow(1, 1, L - 1), {1, 0});
        y = y + causal_conv(ut.flip(-1), Kb).flip(-1);
      }
    } else {  // y = conv(x, K_T) + sum_n eta q^{t+1} h0; h = sum_l alpha beta q^{T-1-l} x_l + q^T h0
      auto lq = logq.narrow(0, 0, C_), abf = ab.narrow(0, 0, C_), etaf = eta.narrow(0, 0, C_);
      auto P = powers(lq, 0, T + 1);  // [C, N, T + 1]
      auto h0 = st->h.defined() ? st->h.to(cd) : torch::zeros({B, C_, N_}, u.options());
      y = causal_conv(ut, ((etaf * abf).unsqueeze(-1) * P.narrow(2, 0, T)).sum(1)) +
          torch::einsum("bcn,cnt->bct", {h0, etaf.unsqueeze(-1) * P.narrow(2, 1, T)});
      auto h = torch::einsum("bct,cnt->bcn", {ut, abf.unsqueeze(-1) * P.narrow(2, 0, T).flip(-1)}) + P.select(2, T) * h0;
      st->h = h.detach();
    }
    return torch::silu(y.transpose(1, 2) + u * ema_omega_.to(cd)).to(xn.scalar_type());
  }

  // b_rel[i, j] for query positions qpos [Lq] and key positions kpos [Lk] (long) -> [Lq, Lk]; depends on j - i only.
  torch::Tensor rel_bias(const torch::Tensor& qpos, const torch::Tensor& kpos) {
    if (rotary_) return torch::matmul(rotate(rel_a_, qpos), rotate(rel_b_, kpos).t());  // <R_i a, R_j b>
    auto idx = kpos.unsqueeze(0) - qpos.unsqueeze(1) + (M_ - 1);                          // w[M - 1 + j - i]
    return rel_table_.index_select(0, idx.flatten()).view({qpos.size(0), kpos.size(0)});
  }

  // One attention frame: q [G, Lq, D] at positions q0 .. q0 + Lq - 1 of the frame, k [G, Lk, D], v [G, Lk, V] at
  // positions 0 .. Lk - 1, key_pad [G, Lk] bool (true = masked) -> O [G, Lq, V].
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& key_pad, int64_t q0, bool causal) {
    const int64_t Lq = q.size(1), Lk = k.size(1);
    auto lopts = torch::TensorOptions().dtype(torch::kLong).device(q.device());
    auto qpos = torch::arange(q0, q0 + Lq, lopts), kpos = torch::arange(Lk, lopts);
    auto visible = causal ? (kpos.unsqueeze(0) <= qpos.unsqueeze(1)) : torch::ones({Lq, Lk}, lopts.dtype(torch::kBool));
    auto keep = visible.unsqueeze(0) & key_pad.logical_not().unsqueeze(1);  // [G, Lq, Lk]
    auto bias = rel_bias(qpos, kpos).to(q.dtype());
    torch::Tensor w;
    if (attn_ == "softmax") {
      auto s = torch::matmul(q * (1.0 / std::sqrt(static_cast<double>(D_))), k.transpose(1, 2)) + bias;
      // A row whose visible keys are all padding attends to them (the code's padding_mask_all): no NaN (pitfall 5).
      keep = keep | (visible.unsqueeze(0) & keep.any(-1, true).logical_not());
      w = torch::softmax(s.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity()), -1);
    } else {
      // tau = the number of keys the query may see (pitfall 4); multiplicative 0/1 mask after f.
      auto n = keep.sum(-1, true).clamp_min(1).to(q.dtype());
      auto s = torch::matmul(q, k.transpose(1, 2)) / n + bias;
      w = attn_ == "laplace" ? 0.5 * (1.0 + torch::erf((s - kLaplaceMu) / (kLaplaceSigma * std::sqrt(2.0))))
                             : torch::relu(s).square();
      w = w * keep.to(w.dtype());
    }
    return torch::matmul(drop(w, attn_dropout_), v);
  }

  // The whole sequence: chunks of c positions (T padded up to a multiple of c, pitfall 12): [B, T, .] -> [B, T, V].
  torch::Tensor attention_whole(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& pad, bool causal) {
    const int64_t B = q.size(0), T = q.size(1);
    if (!rotary_ && chunk_ < 0 && T > M_)
      throw Error("block mega: T = " + std::to_string(T) + " exceeds option max_positions = " + std::to_string(M_) +
                  " of rel_pos = simple; raise max_positions, set chunk, or use rel_pos = rotary");
    const int64_t c = chunk_ > 0 ? std::min(chunk_, T) : T, nc = (T + c - 1) / c, extra = nc * c - T;
    auto key_pad = pad.defined() ? pad : torch::zeros({B, T}, q.options().dtype(torch::kBool));
    auto fold = [&](const torch::Tensor& t) {  // [B, T, W] -> [B nc, c, W]
      return torch::constant_pad_nd(t, {0, 0, 0, extra}).reshape({B * nc, c, t.size(2)});
    };
    key_pad = torch::constant_pad_nd(key_pad, {0, extra}, 1).reshape({B * nc, c});
    auto o = attend(fold(q), fold(k), fold(v), key_pad, 0, causal);
    return o.reshape({B, nc * c, V_}).narrow(1, 0, T);
  }

  // Streaming (causal): each run of new tokens inside one chunk attends to the chunk's cached K, V and itself; the
  // cache is dropped when a chunk fills (full attention keeps everything): [B, T, .] -> [B, T, V].
  torch::Tensor attention_stream(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& pad, MegaState& st) {
    const int64_t B = q.size(0), T = q.size(1);
    if (!rotary_ && chunk_ < 0 && st.length + T > M_)
      throw Error("block mega: position " + std::to_string(st.length + T - 1) + " reaches option max_positions = " +
                  std::to_string(M_) + " of rel_pos = simple; raise max_positions, set chunk, or use rel_pos = rotary");
    auto key_pad = pad.defined() ? pad : torch::zeros({B, T}, q.options().dtype(torch::kBool));
    std::vector<torch::Tensor> out;
    int64_t pos = st.length;
    for (int64_t i = 0; i < T;) {
      const int64_t in_chunk = chunk_ > 0 ? pos % chunk_ : pos;
      const int64_t len = chunk_ > 0 ? std::min(T - i, chunk_ - in_chunk) : T - i;
      auto append = [&](const torch::Tensor& cache, const torch::Tensor& now) {
        return cache.defined() ? torch::cat({cache, now}, 1) : now;
      };
      auto kk = append(st.k, k.narrow(1, i, len).detach()), vv = append(st.v, v.narrow(1, i, len).detach());
      auto kp = append(st.key_pad, key_pad.narrow(1, i, len));
      // The new tokens' own keys keep their graph; the cached ones are constants.
      auto k_use = torch::cat({kk.narrow(1, 0, in_chunk), k.narrow(1, i, len)}, 1);
      auto v_use = torch::cat({vv.narrow(1, 0, in_chunk), v.narrow(1, i, len)}, 1);
      out.push_back(attend(q.narrow(1, i, len), k_use, v_use, kp, in_chunk, true));
      pos += len, i += len;
      if (chunk_ > 0 && pos % chunk_ == 0) {
        st.k = st.v = st.key_pad = torch::Tensor();
      } else {
        st.k = kk, st.v = vv, st.key_pad = kp;
      }
    }
    return torch::cat(out, 1);
  }
};

}  // namespace mega
}  // namespace

BlockInfo mega_block_info() {
  BlockInfo b;
  b.name = "mega";
  b.summary = "Mega: multi-dimensional damped EMA (FFT convolution) feeding single-head gated attention (softmax, "
              "laplace or relu2; full or in chunks of c), then a normalised feed-forward; streams (EMA state + the "
              "current chunk's K, V)";
  b.citation = "Ma et al. 2023, Mega: Moving Average Equipped Gated Attention, ICLR, sec. 3 (arXiv 2209.10655)";
  b.schema = {
      {"z_dim", OptionType::Int, 0, "D, shared query/key width (paper z); 0 = d_model / 4 rounded down to even, "
       "at least 2 (the LM configs: 256 for 1024, 128 for 512)", 0, 1 << 20},
      {"v_dim", OptionType::Int, 0, "V, value and reset-gate width (paper v); 0 = 2 d_model (the LM configs)", 0,
       1 << 20},
      {"ndim", OptionType::Int, 16, "N, EMA expansion per channel (paper h; 16 in every run of the paper)", 1, 1024},
      {"chunk", OptionType::Int, -1, "c, attention only inside chunks of c positions (Mega-chunk, sec. 3.5); -1 = full "
       "attention. T not a multiple of c is padded internally", -1, 1 << 30},
      {"attention", OptionType::String, "softmax", "attention function f: softmax (LM and text tasks), laplace "
       "(sec. 3.3; the image tasks) or relu2", -1e300, 1e300, {"softmax", "laplace", "relu2"}},
      {"rel_pos", OptionType::String, "rotary", "relative position bias: rotary (the LM configs; extends to any "
       "length and chunk, so streaming and evaluation at a larger c work) or simple (a learned table of 2M - 1, "
       "M = max_positions, or c when chunked; the LRA configs)", -1e300, 1e300, {"simple", "rotary"}},
      {"max_positions", OptionType::Int, 2048, "M of rel_pos = simple with full attention: the longest sequence", 1,
       1 << 24},
      {"truncation", OptionType::Int, 0, "EMA kernel length cap of the FFT path (LM 8192, LRA 1024); 0 = the whole "
       "length. Streaming never truncates", 0, 1 << 30},
      {"bidirectional", OptionType::Bool, false, "add the leads' EMA kernels (two-sided EMA, encoders); required when "
       "the model is not causal"},
      {"ffn_dim", OptionType::Int, 0, "hidden width of the normalised feed-forward; 0 = model.d_ff", 0, 1 << 20},
      {"prenorm", OptionType::Bool, true, "norm before each sublayer (LM, image tasks); false = after the residual "
       "add (the LRA text tasks)"},
      {"norm", OptionType::String, "layernorm", "norm of both sublayers: layernorm (LM), scalenorm (g x / "
       "sqrt(mean(x^2) + eps), one scalar g; LRA text) or rmsnorm", -1e300, 1e300,
       {"layernorm", "scalenorm", "rmsnorm"}},
      {"dropout", OptionType::Float, -1.0, "dropout on X', H^ and the feed-forward output; -1 = model.dropout", -1.0,
       0.99},
      {"attention_dropout", OptionType::Float, 0.0, "dropout on the attention weights", 0.0, 0.99},
      {"hidden_dropout", OptionType::Float, 0.0, "dropout on V, the gated attention output and the feed-forward's "
       "hidden layer", 0.0, 0.99},
  };
  b.uses_mixer = false;
  b.supports_causal = true;
  b.supports_bidirectional = true;
  b.streams = true;  // causal; chunked == whole when truncation is unset or >= T
  b.not_reversible = "one Mega layer with its own residuals and norms, not the reversible stack's mixer and "
                     "feed-forward branches";
  b.make = [](const BlockArgs& a) -> Layer { return std::make_shared<mega::MegaImpl>(a); };
  // Projections and attention, 2 FLOPs a multiply-add; the EMA's FFTs (O(C T log T)) and the kernel are not counted.
  b.flops = [](int64_t B, int64_t T, int64_t C, bool causal, const Json& o) {
    const double D = o["z_dim"].get<int64_t>() > 0 ? o["z_dim"].get<int64_t>() : std::max<int64_t>(2, C / 4 / 2 * 2);
    const double V = o["v_dim"].get<int64_t>() > 0 ? o["v_dim"].get<int64_t>() : 2.0 * C;
    const double F = o["ffn_dim"].get<int64_t>() > 0 ? o["ffn_dim"].get<int64_t>() : 4.0 * C;  // model.d_ff's default
    const int64_t chunk = o["chunk"].get<int64_t>();
    const double c = chunk > 0 ? std::min<int64_t>(chunk, T) : T;
    const double proj = 2.0 * B * T * (C * (2.0 * C + D + V) + 2.0 * C * V + 2.0 * C * F);
    const double attn = 2.0 * B * T * c * (D + V) * (causal ? 0.5 : 1.0);
    return proj + attn;
  };
  return b;
}

}  // namespace longseq
