// "infinity_former": the ∞-former's attention (Martins et al. 2022, "∞-former:
// Infinite Memory Transformer"). Short-term: Transformer-XL attention
// (relative positions, sec. 3.3 of Dai et al.) over the current segment and
// the previous one, segments of L tokens at absolute positions 0, L, 2L, ...
// (the paper's mem_len = tgt_len). Long-term (sec. 3.1): the inputs that
// leave the short-term memory (segment k - 2 when segment k starts) are
// masked by sigma(Conv1d_3(X)) and fit by ridge regression onto N Gaussian
// radial basis functions, B = G^T X; K = B W_K and V = B W_V; each query's
// scores s = K q / sqrt(D) give a Gaussian density N(mu, sigma^2) on R,
// mu = sigmoid(w_mu . s), sigma^2 = softplus(w_sigma . s), whose expectation of
// psi is closed form; Z_LTM = W_O (V^T E[psi]) is added to the short-term
// output. Unbounded memory (sec. 3.2): the old signal, sampled at M points,
// is contracted into [0, tau] and refit with the new vectors. Sticky memories
// (sec. 3.3): the samples are drawn where the previous segment's densities put
// their mass. Choices (docs/mechanisms.md): the paper's plain ridge formula on
// [0, 1] (the official code pads the domain); the memory's inputs and B_old
// are gradient stopped between calls (a training step, the paper's segment
// step), exact within one; no KL regularizer.
#include <cmath>
#include <map>
#include <string>
#include <tuple>

#include "longseq/common.h"
#include "longseq/kernels/continuous_memory.h"
#include "longseq/kernels/relative_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

struct InfinityMemory : MixerState {
  torch::Tensor mem;     // [B, r, C]: inputs of positions [first, pos) (the short-term memory), gradient stopped
  torch::Tensor pad;     // [B, r] bool or undefined
  torch::Tensor k, v;    // [B, H, r, D] of mem, kept under no-grad
  int64_t kv_version = -1;
  torch::Tensor coeff;   // [B, N, C]: the long-term signal's coefficients; undefined = empty
  torch::Tensor mass;    // [B, bins]: where this segment's densities put their mass (sticky memories)
  torch::Tensor ltm_k, ltm_v, ltm_of;  // [B, H, N, D] of the coefficients ltm_of, kept under no-grad
  int64_t ltm_version = -1;
  int64_t first = 0, pos = 0;
  std::map<std::string, torch::Tensor> tensors() const override { return {{"mem", mem}, {"coeff", coeff}}; }
  // Positions (first, pos) are shared by all rows; the long-term K/V cache is keyed by coeff's storage, so it is
  // dropped and recomputed from the reordered coefficients.
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({mem, coeff, mass}), "infinity_former");
    mem = select_rows(mem, i), pad = select_rows(pad, i), k = select_rows(k, i), v = select_rows(v, i);
    coeff = select_rows(coeff, i), mass = select_rows(mass, i);
    ltm_k = ltm_v = ltm_of = torch::Tensor();
    ltm_version = -1;
  }
};

class InfinityFormerImpl : public MixerImpl {
 public:
  explicit InfinityFormerImpl(const MixerArgs& a)
      : C_(a.d_model),
        H_(a.n_heads),
        D_(a.d_model / a.n_heads),
        L_(a.options["segment"]),
        N_(a.options["basis"]),
        M_(a.options["samples"]),
        bins_(a.options["bins"]),
        ridge_(a.options["ridge"]),
        tau_(a.options["tau"]),
        sticky_(a.options["sticky"]),
        use_mask_(a.options["mask"]),
        dropout_(a.options["dropout"]),
        kernel_(a.options["kernel"]),
        narrow_(a.options["width_narrow"]),
        wide_(a.options["width_wide"]),
        table_(C_, H_, a.options["clamp_len"]) {
    if (C_ % 2 != 0) throw Error("mixer infinity_former: d_model must be even (sin and cos halves), got " + std::to_string(C_));
    if (N_ % 2 != 0) throw Error("mixer infinity_former: basis must be even (N / 2 centres for each of two widths)");
    q_ = register_module("q", bias_free_linear(C_, C_));
    kv_ = register_module("kv", bias_free_linear(C_, 2 * C_));
    r_ = register_module("r", bias_free_linear(C_, C_));
    out_ = register_module("out", bias_free_linear(C_, C_));
    u_ = register_parameter("u", torch::randn({H_, D_}) * 0.02);
    v_ = register_parameter("v", torch::randn({H_, D_}) * 0.02);
    ltm_kv_ = register_module("ltm_kv", bias_free_linear(C_, 2 * C_));
    ltm_out_ = register_module("ltm_out", bias_free_linear(C_, C_));
    const double bound = 1.0 / std::sqrt(static_cast<double>(N_));  // as a Linear(N, 1)
    w_mu_ = register_parameter("w_mu", torch::empty({N_}).uniform_(-bound, bound));
    w_sigma_ = register_parameter("w_sigma", torch::empty({N_}).uniform_(-bound, bound));
    if (use_mask_) mask_ = register_module("mask", torch::nn::Conv1d(torch::nn::Conv1dOptions(C_, C_, 3).padding(1)));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == C_, "infinity_former: x must be [B, T, ", C_, "], got ", x.sizes());
    TORCH_CHECK(ctx.causal, "infinity_former: the ∞-former is causal (a language model's)");
    const int64_t B = x.size(0), T = x.size(1);
    InfinityMemory local;
    auto* st = &local;
    if (ctx.state) {
      st = dynamic_cast<InfinityMemory*>(ctx.state);
      TORCH_CHECK(st, "infinity_former: the state passed was not made by this mixer");
      TORCH_CHECK(!st->mem.defined() || st->mem.size(0) == B, "infinity_former: the state holds ", st->mem.size(0),
                  " sequences, the input ", B);
    }
    torch::Tensor pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(torch::kBool) : torch::Tensor();
    auto coeff = st->coeff.defined() ? st->coeff.to(x.dtype()) : torch::Tensor();
    std::vector<torch::Tensor> parts;
    for (int64_t at = 0; at < T;) {
      const int64_t p = st->pos, n = std::min(T - at, L_ - p % L_);
      if (p % L_ == 0 && p - st->first > L_) coeff = absorb(*st, coeff, p - st->first - L_);  // segment k - 2 leaves
      auto piece = x.narrow(1, at, n);
      auto piece_pad = pad.defined() ? pad.narrow(1, at, n) : torch::Tensor();
      auto q = split_heads(q_(piece), H_);
      auto y = short_term(*st, piece, piece_pad, q);
      if (coeff.defined()) y = y + long_term(*st, coeff, q);
      parts.push_back(y);
      at += n;
    }
    // Truncated backprop at the call's end (one training step = the paper's segment step): B_old and the memory's
    // inputs carry no gradient into the next call.
    if (st->mem.defined()) st->mem = st->mem.detach();
    if (coeff.defined()) st->coeff = coeff.detach();
    return torch::cat(parts, 1);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<InfinityMemory>(); }

 private:
  // Transformer-XL attention of the piece over (memory, piece); appends the piece to the memory.
  torch::Tensor short_term(InfinityMemory& st, const torch::Tensor& x, const torch::Tensor& pad, const torch::Tensor& q) {
    const int64_t B = x.size(0), T = x.size(1), r = st.pos - st.first;
    const bool reuse = r > 0 && !torch::GradMode::is_enabled() && st.k.defined() &&
                       st.kv_version == static_cast<int64_t>(kv_->weight._version());
    auto h = r > 0 ? torch::cat({st.mem.to(x.dtype()), x}, 1) : x;
    torch::Tensor k, v;
    if (reuse) {
      auto kv = kv_(x).chunk(2, -1);
      k = torch::cat({st.k, split_heads(kv[0], H_)}, 2), v = torch::cat({st.v, split_heads(kv[1], H_)}, 2);
    } else {
      auto kv = kv_(h).chunk(2, -1);
      k = split_heads(kv[0], H_), v = split_heads(kv[1], H_);
    }
    RelativeMask mask;
    mask.memory = r;
    auto all_pad = st.pad.defined() || pad.defined() ? append_padding(st.pad, r, pad, B, T) : torch::Tensor();
    if (all_pad.defined()) mask.key_padding = all_pad.to(x.device());
    auto y = relative_attention(q + u_.view({1, H_, 1, D_}), q + v_.view({1, H_, 1, D_}), k.contiguous(), v.contiguous(),
                                table_.get(r_, r + T, x), mask, kernel_, dropout_, is_training());
    st.mem = h, st.pad = all_pad;  // gradient stopped when the call ends
    if (!torch::GradMode::is_enabled()) {
      st.k = k.detach(), st.v = v.detach(), st.kv_version = static_cast<int64_t>(kv_->weight._version());
    } else {
      st.k = st.v = torch::Tensor();
    }
    st.pos += T;
    return out_(merge_heads(y));
  }

  // Z_LTM for queries q [B, H, T, D] (sec. 3.1): densities from the scores, closed-form expectation, V^T r, W_O.
  torch::Tensor long_term(InfinityMemory& st, const torch::Tensor& coeff, const torch::Tensor& q) {
    torch::Tensor K, V;  // [B, H, N, D]
    const int64_t version = static_cast<int64_t>(ltm_kv_->weight._version());
    if (!torch::GradMode::is_enabled() && st.ltm_of.defined() && st.ltm_of.data_ptr() == coeff.data_ptr() &&
        st.ltm_of.sizes() == coeff.sizes() && st.ltm_version == version) {
      K = st.ltm_k, V = st.ltm_v;  // decoding: the signal changes once a segment, not every token
    } else {
      auto kv = ltm_kv_(coeff).chunk(2, -1);
      K = split_heads(kv[0], H_), V = split_heads(kv[1], H_);
      if (!torch::GradMode::is_enabled()) st.ltm_k = K, st.ltm_v = V, st.ltm_of = coeff, st.ltm_version = version;
    }
    auto s = torch::matmul(q, K.transpose(-1, -2)) / std::sqrt(static_cast<double>(D_));  // [B, H, T, N]
    auto mu = torch::sigmoid(torch::matmul(s, w_mu_.to(s.dtype())));
    auto var = torch::softplus(torch::matmul(s, w_sigma_.to(s.dtype()))).clamp_min(1e-6);
    auto rpsi = gaussian_basis_expectation(basis(q.options()), mu, var);
    if (sticky_) {
      torch::NoGradGuard g;
      auto m = density_bin_mass(mu.detach(), var.detach(), bins_);
      st.mass = st.mass.defined() ? st.mass + m : m;
    }
    return ltm_out_(merge_heads(torch::matmul(rpsi, V)));
  }

  // The rows [first, first + rows) leave the short-term memory into the long-term signal (sec. 3.1-3.3).
  torch::Tensor absorb(InfinityMemory& st, const torch::Tensor& coeff, int64_t rows) {
    auto X = st.mem.narrow(1, 0, rows);
    if (st.pad.defined()) X = X.masked_fill(st.pad.narrow(1, 0, rows).unsqueeze(-1), 0.0);  // padding: signal 0
    if (use_mask_) X = X * torch::sigmoid(mask_(X.transpose(1, 2)).transpose(1, 2));
    const auto opts = X.options();
    const auto& b = basis(opts);
    const int64_t old = coeff.defined() ? M_ : 0;
    auto G = fit_matrix(old, rows, opts);  // [old + rows, N]
    if (old > 0) {  // sample the old signal, B_old gradient stopped; sticky: where the last segment's densities were
      auto t = sticky_ && st.mass.defined()
                   ? sticky_positions(st.mass.to(X.dtype()), M_)
                   : (torch::arange(1, M_ + 1, opts) / static_cast<double>(M_)).unsqueeze(0).expand({X.size(0), M_});
      X = torch::cat({torch::matmul(rbf_evaluate(b, t), coeff), X}, 1);
    }
    auto fresh = torch::matmul(G.t(), X);  // [B, N, C]
    st.mass = torch::Tensor();
    st.mem = st.mem.narrow(1, rows, st.mem.size(1) - rows);
    st.pad = st.pad.defined() ? st.pad.narrow(1, rows, st.pad.size(1) - rows) : torch::Tensor();
    if (st.k.defined()) st.k = st.k.narrow(2, rows, st.k.size(2) - rows), st.v = st.v.narrow(2, rows, st.v.size(2) - rows);
    st.first += rows;
    return fresh;
  }

  const RbfBasis& basis(const torch::TensorOptions& opts) {
    if (!basis_.mu.defined() || basis_.mu.scalar_type() != opts.dtype().toScalarType() ||
        basis_.mu.device() != opts.device())  // a module moved to another device needs its basis there
      basis_ = rbf_basis(N_, narrow_, wide_, opts.requires_grad(false));
    return basis_;
  }

  // G of the refit positions (memory_positions), kept per (old, fresh, dtype, device): the positions never depend on data.
  torch::Tensor fit_matrix(int64_t old, int64_t fresh, const torch::TensorOptions& opts) {
    auto key = std::make_tuple(old, fresh, static_cast<int>(opts.dtype().toScalarType()), opts.device().str());
    auto it = fits_.find(key);
    if (it != fits_.end()) return it->second;
    torch::NoGradGuard g;
    auto G = ridge_fit_matrix(basis(opts), memory_positions(old, fresh, tau_, opts.requires_grad(false)), ridge_);
    fits_[key] = G;
    return G;
  }

  int64_t C_, H_, D_, L_, N_, M_, bins_;
  double ridge_, tau_;
  bool sticky_, use_mask_;
  double dropout_;
  std::string kernel_;
  double narrow_, wide_;
  RelativePositionTable table_;
  torch::nn::Linear q_{nullptr}, kv_{nullptr}, r_{nullptr}, out_{nullptr}, ltm_kv_{nullptr}, ltm_out_{nullptr};
  torch::nn::Conv1d mask_{nullptr};
  torch::Tensor u_, v_, w_mu_, w_sigma_;
  RbfBasis basis_;
  std::map<std::tuple<int64_t, int64_t, int, std::string>, torch::Tensor> fits_;
};

}  // namespace

MixerInfo infinity_former_mixer_info() {
  MixerInfo info;
  info.name = "infinity_former";
  info.summary = "∞-former: Transformer-XL attention over two segments plus an unbounded continuous long-term memory "
                 "(ridge fit on Gaussian RBFs, Gaussian-density reads, contraction, sticky memories)";
  info.citation = "Martins et al. 2022, ∞-former, sec. 2-3";
  info.schema = {
      {"segment", OptionType::Int, 512,
       "segment length L: queries see their segment and the previous one; segment k - 2 enters the long-term memory "
       "when segment k starts",
       1.0, 1e9},
      {"basis", OptionType::Int, 512, "basis functions N (half narrow, half wide)", 2.0, 1e6},
      {"width_narrow", OptionType::Float, 0.01, "standard deviation of the narrow basis functions", 1e-6, 10.0},
      {"width_wide", OptionType::Float, 0.05, "standard deviation of the wide basis functions", 1e-6, 10.0},
      {"ridge", OptionType::Float, 1.0, "ridge penalty lambda", 1e-12, 1e12},
      {"tau", OptionType::Float, 0.75, "share of [0, 1] the contracted old memory keeps", 1e-6, 0.999999},
      {"samples", OptionType::Int, 512, "points M at which the old signal is sampled before a refit", 1.0, 1e7},
      {"sticky", OptionType::Bool, false, "sticky memories: sample the old signal where attention was dense (sec. 3.3)"},
      {"bins", OptionType::Int, 128, "histogram bins of the sticky memories", 1.0, 1e6},
      {"mask", OptionType::Bool, true, "sigma(Conv1d_3(X)) * X before the fit (the official code's cnn mask)"},
      {"clamp_len", OptionType::Int, -1, "distances above this share its position vector; -1 = none", -1.0, 1e9},
      {"dropout", OptionType::Float, 0.0, "dropout on the short-term attention probabilities", 0.0, 1.0},
      {"kernel", OptionType::String, "auto",
       "short-term attention core: auto (fused CPU relative kernel when it supports the input), reference or fused",
       -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<InfinityFormerImpl>(a); };
  info.supports_bidirectional = false;
  info.sparse_options = {{"segment", 3}, {"basis", 6}, {"samples", 4}};  // long-term memory active from T = 7
  info.streams = true;
  info.left_padding_changes = "segments fall at absolute positions 0, L, 2L, ...: leading padding moves them";
  info.flops = [](const FlopQuery& f) {  // segment by segment: the long-term memory starts at the third
    const int64_t L = f.options["segment"], N = f.options["basis"], M = f.options["samples"], C = f.C;
    double total = 8.0 * f.B * f.T * C * C;  // q, k, v, out projections
    for (int64_t s = 0; s * L < f.T; ++s) {
      const double n = static_cast<double>(std::min(L, f.T - s * L)), mem = s > 0 ? static_cast<double>(L) : 0.0;
      total += 2.0 * (mem + n) * C * C;                        // W_R on the segment's distances
      total += 4.0 * f.B * (mem * n + n * (n + 1) / 2) * C;    // the relative core, causal
      if (s >= 2)  // the read (q projection, basis expectations, B^T products) and the segment's refit
        total += f.B * (n * (2.0 * C * C + 4.0 * N * C) + 4.0 * N * C * C + 2.0 * (M + L) * N * C);
    }
    return total;
  };
  return info;
}

}  // namespace longseq
