// "learned_kernel": kernelized attention whose kernel is learned through its
// spectral distribution. Chowdhury et al. 2021, "Learning the Transformer
// Kernel" (KL-Transformer): frequencies are a differentiable function of fixed
// noise (re-parameterization), so the distribution trains by gradient.
//  - gmm_prf: per head omega = mu_h + exp(s_h / 2) * eps (diagonal Gaussian),
//    phi(x) = exp(Omega x~ - |x~|^2) / sqrt(M): E[phi(x)^T phi(y)] =
//    exp(mu^T u + u^T diag(e^s) u / 2 - |x~|^2 - |y~|^2), u = x~ + y~.
//  - gmm_rks: per head omega_+- = L_h^T eps +- mu_h (symmetrized spectrum), n = M/4 draws,
//    phi(x) = [cos Omega_+ x~, sin Omega_+ x~, cos Omega_- x~, sin Omega_- x~] / sqrt(n) (+) [1]:
//    E[phi(x)^T phi(y)] = 2 exp(-|L (x~ - y~)|^2 / 2) cos(mu^T (x~ - y~)) + 1.
// x~ = x D^(-1/4). Then linear attention, or its causal prefix sums (streams).
// Init mu = 0, s = 0, L = I (the RBF kernel; the official code starts from
// xavier draws). The noise is a buffer redrawn every `redraw` training
// forwards (official: every forward, in eval too; here eval is deterministic).
#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/linear_attention.h"
#include "longseq/kernels/random_features.h"
#include "longseq/mixers/heads.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"
#include "longseq/mixers/cores.h"

namespace longseq {

namespace {

struct LearnedKernelState : MixerState {
  LinearAttentionState sums;
  torch::Tensor key_max;  // gmm_prf: the stabilizer the sums are scaled by ([B, H])
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({sums.S, key_max}), "learned_kernel");
    sums.reorder(i), key_max = select_rows(key_max, i);
  }
};

class LearnedKernelImpl : public MixerImpl {
 public:
  explicit LearnedKernelImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        rks_(a.options["kernel"].get<std::string>() == "gmm_rks"),
        draws_(rks_ ? std::max<int64_t>(1, a.options["features"].get<int64_t>() / 4) : a.options["features"].get<int64_t>()),
        redraw_(a.options["redraw"]),
        chunk_(a.options["chunk"]),
        eps_(a.options["eps"]),
        seed_(static_cast<uint64_t>(a.options["seed"].get<int64_t>()) * 7919 + a.layer_index) {
    if (!a.core_only) {  // else the host layer projects
      const bool bias = a.options["bias"].get<bool>();
      qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
      out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    }
    mean_ = register_parameter("mean", torch::zeros({heads_, head_dim_}));
    if (rks_)
      factor_ = register_parameter("factor", torch::eye(head_dim_).repeat({heads_, 1, 1}));  // L_h
    else
      log_var_ = register_parameter("log_var", torch::zeros({heads_, head_dim_}));  // s_h
    noise_ = register_buffer("noise", draw(0));
    calls_ = register_buffer("calls", torch::zeros({}, torch::kLong));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "learned_kernel: x must be [B, T, C], got ", x.sizes());
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    const auto noise = maybe_redraw();
    auto* st = ctx.state ? dynamic_cast<LearnedKernelState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || st, "learned_kernel: the state passed was not made by this mixer");
    FeaturePair f;
    if (rks_) {
      auto e = noise.to(q.scalar_type());                                              // [M/4, D]
      auto base = torch::matmul(e, factor_);                                           // (L^T eps)^T: [H, n, D]
      auto plus = base + mean_.unsqueeze(1), minus = base - mean_.unsqueeze(1);
      f = {trig_features(q, plus, minus), zero_padded(trig_features(k, plus, minus), ctx.padding_mask)};
    } else {
      auto omega = mean_.unsqueeze(1) + torch::exp(0.5 * log_var_).unsqueeze(1) * noise.to(q.scalar_type());  // [H, M, D]
      f = favor_features(q, k, omega, ctx.padding_mask, 1.0, st ? &st->sums : nullptr, st ? &st->key_max : nullptr);
    }
    return kernelized_attention(f.q, f.k, v, ctx.causal, chunk_, eps_, st ? &st->sums : nullptr);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<LearnedKernelState>(); }

 private:
  // [cos, sin of Omega_+ x~ and of Omega_- x~] / sqrt(n), then the constant smoothing feature 1.
  torch::Tensor trig_features(const torch::Tensor& x, const torch::Tensor& plus, const torch::Tensor& minus) const {
    auto xs = x * std::pow(double(head_dim_), -0.25);
    auto a = torch::matmul(xs, plus.transpose(-1, -2)), b = torch::matmul(xs, minus.transpose(-1, -2));
    auto ones = torch::ones({x.size(0), x.size(1), x.size(2), 1}, x.options());
    return torch::cat({torch::cat({a.cos(), a.sin(), b.cos(), b.sin()}, -1) / std::sqrt(double(draws_)), ones}, -1);
  }

  torch::Tensor draw(int64_t index) const {
    auto gen = at::detail::createCPUGenerator(seed_ * 1000003 + static_cast<uint64_t>(index));
    return at::normal(0.0, 1.0, {draws_, head_dim_}, gen).to(torch::kFloat);
  }

  // The noise this forward uses: redrawn every `redraw` training forwards, counted in the buffer calls_ (saved
  // with the model, so a resumed run redraws on schedule); a recomputation replays its own forward's.
  torch::Tensor maybe_redraw() {
    if (!is_training() || redraw_ <= 0) return noise_;
    return replay_or_record(this, "noise", [&] {
      torch::NoGradGuard ng;
      const int64_t n = calls_.add_(1).item<int64_t>();
      if (n % redraw_ == 0) noise_.copy_(draw(n / redraw_));
      return noise_.clone();
    });
  }

  int64_t heads_, head_dim_;
  bool rks_;
  int64_t draws_, redraw_, chunk_;
  double eps_;
  uint64_t seed_;
  torch::Tensor calls_;  // training forwards since construction: a buffer
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
  torch::Tensor mean_, log_var_, factor_, noise_;
};

}  // namespace

MixerInfo learned_kernel_mixer_info() {
  MixerInfo info;
  info.name = "learned_kernel";
  info.summary = "kernelized attention with a learned spectral distribution (GMM-PRF, GMM-RKS), O(T M D)";
  info.citation = "Chowdhury et al. 2021, Learning the Transformer Kernel";
  info.schema = {
      {"kernel", OptionType::String, "gmm_prf", "gmm_prf: positive features exp(Omega x - |x|^2); gmm_rks: Fourier "
                                                "features of a learned Gaussian (M/4 draws, +- spectrum, +1 smoothing)",
       -1e300, 1e300, {"gmm_prf", "gmm_rks"}},
      {"features", OptionType::Int, 256, "M features per head (the paper: pow2(D ln D) = 256 at D = 64)", 4, 1e6},
      {"redraw", OptionType::Int, 1, "draw new noise every this many training forwards (0 = never)", 0, 1e12},
      {"seed", OptionType::Int, 0, "seed of the noise draws", 0, 1e15},
      {"chunk", OptionType::Int, 128, "causal: positions per chunk of the prefix sums", 1, 1e6},
      {"eps", OptionType::Float, 0.0, "added to the denominator (official: 1e-6). 0 = exact: the gmm_prf stabilizers "
                                      "cancel and a query that sees no real key returns 0; a positive value does not "
                                      "cancel with them. gmm_rks denominators can be <= 0 either way", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<LearnedKernelImpl>(a); };
  info.streams = true;
  info.attends = true;
  info.sparse_options = {{"features", 8}, {"chunk", 3}};  // few features; several chunks of prefix sums
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // the kernelized product on drawn positive features (the feature map apart)
    return kernelized_core(c, c.options["features"].get<int64_t>(), c.options["chunk"].get<int64_t>(), c.options["eps"].get<double>());
  };
  info.flops = [](const FlopQuery& f) {  // projections; features of Q and K; phi(K)^T V and phi(Q) S
    const double M = f.options["features"].get<double>();
    const double c = f.causal ? (std::min<double>(f.options["chunk"].get<double>(), f.T) + 1) / 2 : 0;  // lower triangles
    return 8.0 * f.B * f.T * f.C * f.C + 8.0 * f.B * f.T * M * f.C + 2.0 * f.B * f.T * c * (M * f.H + f.C);
  };
  return info;
}

}  // namespace longseq
