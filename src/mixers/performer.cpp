// "performer": FAVOR+ attention. Choromanski et al. 2021, "Rethinking Attention
// with Performers", sec. 2: softmax attention exp(q^T k / sqrt(D)) estimated by
// positive random features phi(x) = exp(w^T x~ - |x~|^2/2) / sqrt(M) (Lemma 1,
// x~ = x D^(-1/4)) over block-orthogonal w with chi(D) row norms; then linear
// attention (bidirectional) or its causal prefix sums. Also the generalized
// kernel "Performer-ReLU": phi(x) = ReLU(W x / sqrt(M)) + 1e-3.
// Stabilizers (the official code's, not the paper's equations): each query row
// minus its own max, all keys of a (batch, head) minus their common max; both
// are constants that cancel. Unlike the official code no epsilon is added
// inside the features or (by default) to the denominator, so the stabilizers
// cancel exactly: streamed == whole, and a later key far above the earlier
// ones leaves earlier causal outputs alone (a zero denominator gives 0).
// W is a buffer (saved with the model), redrawn every `redraw` training forwards.
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

constexpr double kReluFeatureFloor = 1e-3;  // the official generalized kernel's numerical stabilizer

struct PerformerState : MixerState {
  LinearAttentionState sums;
  torch::Tensor key_max;  // [B, H]: the stabilizer the sums are scaled by
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({sums.S, key_max}), "performer");
    sums.reorder(i), key_max = select_rows(key_max, i);
  }
};

class PerformerImpl : public MixerImpl {
 public:
  explicit PerformerImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        features_(a.options["features"]),
        relu_(a.options["kernel"].get<std::string>() == "relu"),
        orthogonal_(a.options["orthogonal"]),
        fixed_norms_(a.options["fixed_norms"]),
        redraw_(a.options["redraw"]),
        chunk_(a.options["chunk"]),
        eps_(a.options["eps"]),
        seed_(static_cast<uint64_t>(a.options["seed"].get<int64_t>()) * 7919 + a.layer_index) {
    if (!a.core_only) {  // else the host layer projects
      const bool bias = a.options["bias"].get<bool>();
      qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
      out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    }
    projection_ = register_buffer("projection", draw(0));
    calls_ = register_buffer("calls", torch::zeros({}, torch::kLong));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "performer: x must be [B, T, C], got ", x.sizes());
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    const auto projection = maybe_redraw();
    auto* st = ctx.state ? dynamic_cast<PerformerState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || st, "performer: the state passed was not made by this mixer");
    FeaturePair f;
    if (relu_) {
      const double s = 1.0 / std::sqrt(double(features_));
      f.q = torch::relu(torch::matmul(q, projection.t()) * s) + kReluFeatureFloor;
      f.k = zero_padded(torch::relu(torch::matmul(k, projection.t()) * s) + kReluFeatureFloor, ctx.padding_mask);
    } else {
      f = favor_features(q, k, projection, ctx.padding_mask, 0.5, st ? &st->sums : nullptr,
                         st ? &st->key_max : nullptr);
    }
    return kernelized_attention(f.q, f.k, v, ctx.causal, chunk_, eps_, st ? &st->sums : nullptr);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<PerformerState>(); }

 private:
  // Draw `index` of this layer's projection: a fixed function of (seed, layer, index).
  torch::Tensor draw(int64_t index) const {
    auto gen = at::detail::createCPUGenerator(seed_ * 1000003 + static_cast<uint64_t>(index));
    return gaussian_projection(features_, head_dim_, orthogonal_, fixed_norms_, gen);
  }

  // The projection this forward uses: redrawn every `redraw` training forwards, counted in the buffer calls_ (saved
  // with the model, so a resumed run redraws on schedule); a recomputation replays its own forward's.
  torch::Tensor maybe_redraw() {
    if (!is_training() || redraw_ <= 0) return projection_;
    return replay_or_record(this, "projection", [&] {
      torch::NoGradGuard ng;
      const int64_t n = calls_.add_(1).item<int64_t>();
      if (n % redraw_ == 0) projection_.copy_(draw(n / redraw_));
      return projection_.clone();
    });
  }

  int64_t heads_, head_dim_, features_;
  bool relu_, orthogonal_, fixed_norms_;
  int64_t redraw_, chunk_;
  double eps_;
  uint64_t seed_;
  torch::Tensor calls_;  // training forwards since construction: a buffer
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
  torch::Tensor projection_;  // [M, D]
};

}  // namespace

MixerInfo performer_mixer_info() {
  MixerInfo info;
  info.name = "performer";
  info.summary = "FAVOR+: positive orthogonal random features estimate softmax attention in O(T M D); ReLU kernel option";
  info.citation = "Choromanski et al. 2021, Rethinking Attention with Performers, sec. 2";
  info.schema = {
      {"features", OptionType::Int, 256, "M random features per head (the official default 256; theory: M = Theta(D log D))",
       1, 1e6},
      {"kernel", OptionType::String, "softmax", "softmax: FAVOR+ positive features; relu: the generalized kernel "
                                                "ReLU(W x / sqrt(M)) + 1e-3", -1e300, 1e300, {"softmax", "relu"}},
      {"orthogonal", OptionType::Bool, true, "rows of W orthogonal in blocks of D (ORF); false = i.i.d. Gaussian"},
      {"fixed_norms", OptionType::Bool, false, "ORF row norms all sqrt(D) instead of chi(D) draws"},
      {"redraw", OptionType::Int, 1000, "draw a new W every this many training forwards (0 = never; eval never redraws)",
       0, 1e12},
      {"seed", OptionType::Int, 0, "seed of the draws (each layer and each redraw gets its own stream)", 0, 1e15},
      {"chunk", OptionType::Int, 128, "causal: positions per chunk of the prefix sums", 1, 1e6},
      {"eps", OptionType::Float, 0.0, "added to the denominator (official: 1e-6). 0 = exact: the stabilizers cancel "
                                      "and a query that sees no real key returns 0; a positive value does not cancel "
                                      "with the key stabilizer, so later keys then move earlier causal outputs", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<PerformerImpl>(a); };
  info.streams = true;
  info.attends = true;
  info.sparse_options = {{"features", 8}, {"chunk", 3}};  // M < D: a coarse estimate; several chunks of prefix sums
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // the kernelized product on drawn positive features (the feature map apart)
    return kernelized_core(c, c.options["features"].get<int64_t>(), c.options["chunk"].get<int64_t>(), c.options["eps"].get<double>());
  };
  info.flops = [](const FlopQuery& f) {  // projections; features of Q and K; phi(K)^T V and phi(Q) S (+ chunk products)
    const double M = f.options["features"].get<double>();
    const double c = f.causal ? (std::min<double>(f.options["chunk"].get<double>(), f.T) + 1) / 2 : 0;  // lower triangles
    return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * M * f.C + 4.0 * f.B * f.T * M * f.C +
           2.0 * f.B * f.T * c * (M * f.H + f.C);
  };
  return info;
}

}  // namespace longseq
