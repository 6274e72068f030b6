// "kernel_rpe": kernelized attention with relative positional encoding through
// the FFT. Luo et al. 2021, "Stable, Fast and Accurate: Kernelized Attention
// with Relative Positional Encoding", sec. 2.3 and 3.2:
//   y_i = sum_j e^{b_{j-i}} phi(q_i)^T phi(k_j) v_j / sum_j e^{b_{j-i}} phi(q_i)^T phi(k_j).
// C_ij = e^{b_{j-i}} is Toeplitz, so for every feature l the sums over j are
// Toeplitz products, done as circular convolutions of length >= 2T - 1 through
// the real FFT: O(T log T) per column. phi: FAVOR+ positive features (sec. 2.1
// builds on Performer); queries and keys are l2-normalized first (sec. 3.3's
// stable recipe: bounded feature error, the RPE term restores sharpness).
// b: one learned scalar per head and offset, offsets clipped to +-max_distance
// (a choice: the sheet leaves clipping open). Causal: e^{b_r} = 0 for r > 0.
// Memory: the FFTs run over blocks of features, and the backward recomputes
// each block, so no [T, M, D] tensor is ever kept.
#include <torch/fft.h>

#include <cmath>
#include <limits>

#include "longseq/common.h"
#include "longseq/kernels/random_features.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

// Real values per FFT block: bounds the complex intermediates of one block.
constexpr int64_t kBlockValues = int64_t(1) << 22;

// sum_l fq[:, l] * (C (fk[:, l] * v1)) for one sequence and head: fq, fk [T, lb], v1 [T, E],
// c [Lf] the circulant's first column -> [T, E], computed in `work` precision, returned in fq's.
torch::Tensor toeplitz_block(const torch::Tensor& fq, const torch::Tensor& fk, const torch::Tensor& v1,
                             const torch::Tensor& c, torch::ScalarType work) {
  const int64_t T = fq.size(0), lb = fq.size(1), E = v1.size(1), Lf = c.size(0);
  auto u = (fk.to(work).unsqueeze(-1) * v1.to(work).unsqueeze(1)).reshape({T, lb * E});
  auto fu = torch::fft::rfft(u, Lf, 0);
  auto fc = torch::fft::rfft(c.to(work), Lf, 0).unsqueeze(-1);
  auto n = torch::fft::irfft(fu * fc, Lf, 0).narrow(0, 0, T).view({T, lb, E});
  return (n * fq.to(work).unsqueeze(-1)).sum(1).to(fq.scalar_type());
}

// Feature blocks of the Toeplitz products: forward without a graph, backward recomputing block by block.
class ToeplitzFeatureProducts : public torch::autograd::Function<ToeplitzFeatureProducts> {
 public:
  // fq, fk [N, T, M]; v1 [N, T, E]; c [N, Lf] -> [N, T, E]
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& fq, const torch::Tensor& fk,
                               const torch::Tensor& v1, const torch::Tensor& c, bool wide) {
    ctx->save_for_backward({fq, fk, v1, c});
    ctx->saved_data["wide"] = wide;
    const auto work = wide ? torch::kDouble : fq.scalar_type();
    torch::NoGradGuard ng;
    auto out = torch::zeros({fq.size(0), fq.size(1), v1.size(2)}, v1.options());
    for_blocks(fq, v1, c, [&](int64_t n, int64_t l0, int64_t lb) {
      out[n] += toeplitz_block(fq[n].narrow(1, l0, lb), fk[n].narrow(1, l0, lb), v1[n], c[n], work);
    });
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &fq = s[0], &fk = s[1], &v1 = s[2], &c = s[3];
    auto g = grads[0];
    const auto work = ctx->saved_data["wide"].toBool() ? torch::kDouble : fq.scalar_type();
    auto dfq = torch::zeros_like(fq), dfk = torch::zeros_like(fk), dv = torch::zeros_like(v1), dc = torch::zeros_like(c);
    for_blocks(fq, v1, c, [&](int64_t n, int64_t l0, int64_t lb) {
      torch::AutoGradMode on(true);
      auto q = fq[n].narrow(1, l0, lb).detach().requires_grad_(true);
      auto k = fk[n].narrow(1, l0, lb).detach().requires_grad_(true);
      auto v = v1[n].detach().requires_grad_(true);
      auto cc = c[n].detach().requires_grad_(true);
      auto d = torch::autograd::grad({toeplitz_block(q, k, v, cc, work)}, {q, k, v, cc}, {g[n]});
      dfq[n].narrow(1, l0, lb) += d[0];
      dfk[n].narrow(1, l0, lb) += d[1];
      dv[n] += d[2];
      dc[n] += d[3];
    });
    return {dfq, dfk, dv, dc, torch::Tensor()};
  }

 private:
  template <class F>
  static void for_blocks(const torch::Tensor& fq, const torch::Tensor& v1, const torch::Tensor& c, F&& f) {
    const int64_t N = fq.size(0), M = fq.size(2), E = v1.size(2), Lf = c.size(1);
    const int64_t lb = std::max<int64_t>(1, std::min<int64_t>(M, kBlockValues / (Lf * E)));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l0 = 0; l0 < M; l0 += lb) f(n, l0, std::min(lb, M - l0));
  }
};

// Causal streaming (the FFT needs the whole sequence; with offsets clipped at R = max_distance it
// does not): a key more than R positions back carries the constant weight e^{b_{-R}}, so it enters
// a sum; the last R positions stay as features and values, weighted exactly per offset.
struct KernelRpeState : MixerState {
  torch::Tensor far;      // [B, H, M, D + 1]: sum of phi(k_j) [v_j, 1]^T over the keys older than the window
  torch::Tensor win_k;    // [B, H, W, M]: features of the last W <= R positions
  torch::Tensor win_v;    // [B, H, W, D + 1]
  torch::Tensor key_max;  // [B, H]: the key stabilizer all three are scaled by (-inf: no real key yet)
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({key_max}), "kernel_rpe");
    far = select_rows(far, i), win_k = select_rows(win_k, i), win_v = select_rows(win_v, i);
    key_max = select_rows(key_max, i);
  }
};

// Queries per streamed piece: bounds the [piece, R + piece] weight matrix of a long prefill.
constexpr int64_t kStreamPiece = 256;

int64_t fft_length(int64_t T) {  // a power of two >= 2T - 1: a linear, not circular, convolution
  int64_t L = 1;
  while (L < 2 * T - 1) L <<= 1;
  return L;
}

class KernelRpeImpl : public MixerImpl {
 public:
  explicit KernelRpeImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        max_distance_(a.options["max_distance"]),
        normalize_(a.options["normalize"]),
        wide_fft_(a.options["fft_precision"].get<std::string>() == "float64"),
        eps_(a.options["eps"]) {
    if (!a.core_only) {  // else the host layer projects
      const bool bias = a.options["bias"].get<bool>();
      qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
      out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    }
    rpe_ = register_parameter("rpe", torch::zeros({heads_, 2 * max_distance_ + 1}));  // b = 0: plain kernelized
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(a.options["seed"].get<int64_t>()) * 7919 +
                                              a.layer_index);
    projection_ = register_buffer(
        "projection", gaussian_projection(a.options["features"], head_dim_, a.options["orthogonal"], false, gen));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "kernel_rpe: x must be [B, T, C], got ", x.sizes());
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v,
                           MixContext& ctx) override {
    const int64_t B = q_in.size(0), T = q_in.size(2), H = heads_, D = head_dim_;
    auto [q, k] = normalized(q_in, k_in);
    if (ctx.state) return stream(q, k, v, ctx);
    if (T == 0) return torch::zeros_like(v);  // nothing to convolve
    auto f = favor_features(q, k, projection_, ctx.padding_mask);
    auto v1 = torch::cat({v, torch::ones({B, H, T, 1}, v.options())}, -1);  // the ones column gives the denominator
    const int64_t Lf = fft_length(T);
    auto c = circulant_column(T, Lf, ctx.causal).to(q.scalar_type());        // [H, Lf]
    auto flat = [&](const torch::Tensor& t) { return t.reshape({B * H, T, t.size(3)}); };
    auto nd = ToeplitzFeatureProducts::apply(flat(f.q), flat(f.k), flat(v1),
                                             c.unsqueeze(0).expand({B, H, Lf}).reshape({B * H, Lf}), wide_fft_);
    nd = nd.view({B, H, T, D + 1});
    // The true denominator is positive, but FFT round-off is relative to the largest entries, so a row whose
    // visible weights e^b are all small can come out ~0 or negative. Floor it at that noise level (sec. 3.2's
    // FFT; the pitfall of the sheet): max_r e^{b_r} = 1 bounds C, so phi(q_i)^T sum_j phi(k_j) bounds every row.
    const double unit = wide_fft_ ? std::numeric_limits<double>::epsilon()
                        : q.scalar_type() == torch::kDouble ? std::numeric_limits<double>::epsilon()
                                                            : std::numeric_limits<float>::epsilon();
    auto bound = torch::matmul(f.q, f.k.sum(2).unsqueeze(-1)).detach();  // [B, H, T, 1]
    auto floor = bound * (unit * std::sqrt(double(Lf)));
    auto den = torch::maximum(nd.narrow(-1, D, 1) + eps_, floor);
    return ratio(nd.narrow(-1, 0, D), den);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<KernelRpeState>(); }

 private:
  // q, k (l2-normalized when configured), v: [B, H, T, D].
  // q and k as the features see them: unit rows when `normalize` is set.
  std::pair<torch::Tensor, torch::Tensor> normalized(const torch::Tensor& q, const torch::Tensor& k) const {
    if (!normalize_) return {q, k};
    auto unit = torch::nn::functional::NormalizeFuncOptions().dim(-1);
    return {torch::nn::functional::normalize(q, unit), torch::nn::functional::normalize(k, unit)};
  }

  // num / den where den > 0, else 0 (no key visible).
  static torch::Tensor ratio(const torch::Tensor& num, const torch::Tensor& den) {
    return num / torch::where(den > 0, den, torch::ones_like(den)) * (den > 0).to(den.dtype());
  }

  // The next piece of a causal stream: window and far sums instead of the FFT (same function, no round-off floor).
  // q, k (normalized), v: [B, H, T, D] -> [B, H, T, D]
  torch::Tensor stream(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, MixContext& ctx) {
    auto* st = dynamic_cast<KernelRpeState*>(ctx.state);
    TORCH_CHECK(st, "kernel_rpe: the state passed was not made by this mixer");
    TORCH_CHECK(ctx.causal, "kernel_rpe: streams only causally (a bidirectional query sees later tokens)");
    const int64_t T = q.size(2);
    if (T > kStreamPiece) {
      std::vector<torch::Tensor> parts;
      for (int64_t t0 = 0; t0 < T; t0 += kStreamPiece) {
        MixContext piece = ctx;
        const int64_t n = std::min(kStreamPiece, T - t0);
        piece.offset = ctx.offset + t0;
        if (ctx.padding_mask.defined()) piece.padding_mask = ctx.padding_mask.narrow(1, t0, n);
        parts.push_back(stream(q.narrow(2, t0, n), k.narrow(2, t0, n), v.narrow(2, t0, n), piece));
      }
      return torch::cat(parts, 2);
    }
    const int64_t B = q.size(0), H = heads_, D = head_dim_, R = max_distance_;
    const auto& pad = ctx.padding_mask;
    auto ek = favor_exponents(k, projection_);
    auto c = favor_key_max(ek, pad);
    const int64_t M = ek.size(-1);
    if (!st->key_max.defined()) {
      st->key_max = c.detach();
      st->far = torch::zeros({B, H, M, D + 1}, q.options());
      st->win_k = torch::zeros({B, H, 0, M}, q.options());
      st->win_v = torch::zeros({B, H, 0, D + 1}, q.options());
    } else {  // the stabilizer grows to this piece's keys: rescale what was summed under the old one
      auto grown = torch::maximum(st->key_max, c);
      auto f = torch::where(grown == st->key_max, torch::ones_like(grown), torch::exp(st->key_max - grown));
      f = f.view({B, H, 1, 1});
      st->far = (st->far * f).detach(), st->win_k = (st->win_k * f).detach(), st->key_max = grown.detach();
    }
    auto fk = zero_padded(favor_key_features(ek, st->key_max.masked_fill(torch::isinf(st->key_max), 0.0)), pad);
    auto fq = favor_query_features(favor_exponents(q, projection_));
    auto keys = torch::cat({st->win_k, fk}, 2);                                            // [B, H, W + T, M]
    auto vals = torch::cat({st->win_v, torch::cat({v, torch::ones({B, H, T, 1}, v.options())}, -1)}, 2);
    const int64_t W = st->win_k.size(2), L = W + T;
    // Query t sits W + t rows into `keys`: it sees rows e <= W + t with weight e^{b_{-min(W + t - e, R)}}.
    auto lopts = torch::TensorOptions().dtype(torch::kLong).device(q.device());
    auto back = torch::arange(T, lopts).unsqueeze(1) + W - torch::arange(L, lopts).unsqueeze(0);  // [T, L]
    auto b = rpe_ - std::get<0>(rpe_.detach().max(-1, true));                                    // as the FFT path
    auto eb = torch::exp(b.to(q.scalar_type()));                                                 // [H, 2R + 1]
    auto weight = eb.index_select(1, (R - back.clamp(0, R)).flatten()).view({H, T, L}) *
                  (back >= 0).to(q.scalar_type());
    auto nd = torch::matmul(torch::matmul(fq, keys.transpose(-1, -2)) * weight, vals) +
              eb.select(1, 0).view({1, H, 1, 1}) * torch::matmul(fq, st->far);  // e^{b_{-R}} on the far sum
    // Keep the last R positions; the ones leaving the window join the far sum.
    const int64_t keep = std::min(R, L), leave = L - keep;
    // Detached: the state carries values, not the graph (a stream's next segment must not backpropagate into this one).
    if (leave > 0)
      st->far = (st->far + torch::matmul(keys.narrow(2, 0, leave).transpose(-1, -2), vals.narrow(2, 0, leave))).detach();
    st->win_k = keys.narrow(2, leave, keep).detach();
    st->win_v = vals.narrow(2, leave, keep).detach();
    auto den = nd.narrow(-1, D, 1) + eps_;
    return ratio(nd.narrow(-1, 0, D), den);
  }

  // First column of the circulant embedding of C_ij = e^{b_{j-i}} (sec. 3.2): c[i] = e^{b_{-i}} for
  // i < T, c[Lf - r] = e^{b_r} for 0 < r < T (0 when causal), zeros between. b minus its max (cancels).
  torch::Tensor circulant_column(int64_t T, int64_t Lf, bool causal) const {
    auto b = rpe_ - std::get<0>(rpe_.detach().max(-1, true));
    auto lopts = rpe_.options().dtype(torch::kLong);
    auto offsets = torch::arange(T, lopts).clamp_max(max_distance_);  // |r| clipped
    auto past = torch::exp(b.index_select(1, max_distance_ - offsets));     // e^{b_{-i}}, i = 0..T-1
    auto middle = torch::zeros({heads_, Lf - 2 * T + 1}, b.options());
    auto tail = torch::zeros({heads_, T - 1}, b.options());
    if (!causal && T > 1) {  // c[Lf - r] = e^{b_r}: r = T-1 .. 1 in order of position
      auto r = torch::arange(T - 1, 0, -1, lopts).clamp_max(max_distance_);
      tail = torch::exp(b.index_select(1, max_distance_ + r));
    }
    return torch::cat({past, middle, tail}, 1);
  }

  int64_t heads_, head_dim_, max_distance_;
  bool normalize_, wide_fft_;
  double eps_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
  torch::Tensor rpe_;         // [H, 2 max_distance + 1], b_r at r + max_distance
  torch::Tensor projection_;  // [M, D]
};

}  // namespace

MixerInfo kernel_rpe_mixer_info() {
  MixerInfo info;
  info.name = "kernel_rpe";
  info.summary = "FAVOR+ kernelized attention with a relative position bias, Toeplitz products by FFT, O(T log T)";
  info.citation = "Luo et al. 2021, Stable, Fast and Accurate: Kernelized Attention with RPE, sec. 2.3, 3.2";
  info.schema = {
      {"features", OptionType::Int, 32, "M positive random features per head (the FFT cost grows with M (D + 1))", 1,
       4096},
      {"max_distance", OptionType::Int, 128, "offsets beyond +-this share the bias of the last one", 1, 1e6},
      {"normalize", OptionType::Bool, true, "l2-normalize queries and keys before the features (sec. 3.3)"},
      {"orthogonal", OptionType::Bool, true, "orthogonal random features (drawn once per layer)"},
      {"seed", OptionType::Int, 0, "seed of the random features", 0, 1e15},
      {"fft_precision", OptionType::String, "float64", "float64: the Toeplitz products run in double precision "
                                                       "(float32 round-off, relative to the largest entry, swamps "
                                                       "rows whose visible biases are all low); input: in the "
                                                       "input's precision (faster, for narrow bias ranges)",
       -1e300, 1e300, {"float64", "input"}},
      {"eps", OptionType::Float, 1e-12, "added to the denominator (which is also floored at the FFT's round-off "
                                        "level, so it never comes out <= 0)", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<KernelRpeImpl>(a); };
  info.sparse_options = {{"features", 4}, {"max_distance", 3}};  // M < D features; offsets clipped inside T
  // Causal streaming keeps the last max_distance positions and one far sum: O(R M D) per token.
  info.streams = true;
  info.attends = true;
  info.flops = [](const FlopQuery& f) {  // projections; features; per column one forward and one inverse real FFT
    const double M = f.options["features"].get<double>(), D = double(f.C) / f.H;
    const double Lf = double(fft_length(f.T)), cols = f.B * f.H * M * (D + 1);
    return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * M * f.C + cols * 2 * 2.5 * Lf * std::log2(Lf) +
           2.0 * cols * f.T;
  };
  return info;
}

}  // namespace longseq
