// "mgk": Transformer with a mixture of Gaussian keys. Nguyen et al. 2022,
// "Improving Transformers with Probabilistic Attention Keys", sec. 2-3: each
// key position j holds K keys k_jr (K projections) with priors pi_r, and
//   s_ij = sum_r pi_r exp(-|q_i - k_jr|^2 / (2 sigma^2)),  a_ij = s_ij / sum_j' s_ij'.
// Computed in log space: |q_i|^2 cancels per row, so a is a softmax over the
// K*S pairs (j, r) of (q_i.k_jr - |k_jr|^2/2) / sigma^2 + log pi_r. That is
// exact attention over K interleaved keys per position with an augmented head
// [q sqrt(D')/sigma^2, sqrt(D')] . [k_jr, -|k_jr|^2/(2 sigma^2) + log pi_r]
// (D' = D + 1, the kernel scales by 1/sqrt(D')), so the fused kernel runs it;
// causal queries are repeated K times so that the kernel's causal mask sees
// (j, r) <= i exactly when j <= i.
// `linear`: the paper's linear MGK (MLK), phi(q)^T sum_r pi_r phi(k_jr) with
// phi = elu + 1, through linear attention and its prefix sums.
// Priors: one pair per head, learned (or fixed at 1/K), clamped to [1e-6, 1] as the official code
// clamps to [0, 1] (not renormalized); the soft/hard E-step variants are not offered.
#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/growing_cache.h"
#include "longseq/kernels/linear_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

struct MgkState : MixerState {
  LinearAttentionState sums;       // linear
  GrowingCache k, v;                // softmax: augmented keys [B, H, K*S, D'] and values
  torch::Tensor key_padding;        // [B, K*S]
  int64_t length = 0;               // positions cached
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, k.rows() >= 0 ? k.rows() : rows_of({sums.S, key_padding}), "mgk");
    sums.reorder(i), k.reorder(i), v.reorder(i), key_padding = select_rows(key_padding, i);
  }
};

class MgkImpl : public MixerImpl {
 public:
  explicit MgkImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        keys_(a.options["keys"]),
        linear_(a.options["linear"]),
        chunk_(a.options["chunk"]),
        eps_(a.options["eps"]) {
    const int64_t C = a.d_model;
    const double var = a.options["variance"];
    variance_ = var > 0 ? var : std::sqrt(double(head_dim_));  // the paper's LRA code: sqrt(D)
    const bool bias = a.options["bias"].get<bool>();
    q_ = register_module("q", torch::nn::Linear(torch::nn::LinearOptions(C, C).bias(bias)));
    k_ = register_module("k", torch::nn::Linear(torch::nn::LinearOptions(C, keys_ * C).bias(bias)));
    v_ = register_module("v", torch::nn::Linear(torch::nn::LinearOptions(C, C).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(C, C).bias(bias)));
    auto prior = torch::full({heads_, keys_}, 1.0 / keys_);  // LRA code: [0.5, 0.5]
    prior_ = a.options["learn_prior"].get<bool>() ? register_parameter("prior", prior) : register_buffer("prior", prior);
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "mgk: x must be [B, T, C], got ", x.sizes());
    auto* st = ctx.state ? dynamic_cast<MgkState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || st, "mgk: the state passed was not made by this mixer");
    TORCH_CHECK(!st || ctx.causal, "mgk: streaming needs causal mode");
    const int64_t B = x.size(0), T = x.size(1), K = keys_, D = head_dim_;
    auto q = split_heads(q_(x), heads_);
    auto v = split_heads(v_(x), heads_);
    auto k = k_(x).view({B, T, K, heads_, D}).permute({0, 3, 1, 2, 4});  // [B, H, T, K, D]
    auto pi = prior_.clamp(1e-6, 1.0).view({1, heads_, 1, K});
    torch::Tensor y;
    if (linear_) {
      auto fk = zero_padded(((torch::elu(k) + 1) * pi.unsqueeze(-1)).sum(3), ctx.padding_mask);  // sum_r pi_r phi(k_jr)
      y = kernelized_attention(torch::elu(q) + 1, fk, v, ctx.causal, chunk_, eps_, st ? &st->sums : nullptr);
    } else {
      y = gaussian_mixture(q, k, v, pi, ctx, st);
    }
    return out_(merge_heads(y));
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<MgkState>(); }

 private:
  torch::Tensor gaussian_mixture(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& pi, MixContext& ctx, MgkState* st) const {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), K = keys_, D = head_dim_;
    const double root = std::sqrt(double(D + 1));
    auto bias = -k.pow(2).sum(-1) / (2 * variance_) + torch::log(pi);                     // [B, H, T, K]
    auto ka = torch::cat({k, bias.unsqueeze(-1)}, -1).reshape({B, H, T * K, D + 1});        // (j, r) at K j + r
    auto va = torch::constant_pad_nd(v.unsqueeze(3).expand({B, H, T, K, D}), {0, 1}).reshape({B, H, T * K, D + 1});
    auto qa = torch::cat({q * (root / variance_), torch::full({B, H, T, 1}, root, q.options())}, -1);
    AttentionMask mask;
    mask.causal = ctx.causal;
    if (ctx.padding_mask.defined()) mask.key_padding = ctx.padding_mask.to(torch::kBool).repeat_interleave(K, 1);
    if (st) {
      ka = st->k.append(ka);
      va = st->v.append(va);
      mask.key_padding = append_padding(st->key_padding, st->length * K, mask.key_padding, B, T * K);
      st->key_padding = mask.key_padding;
      st->length += T;
    }
    if (!ctx.causal) return exact_attention(qa, ka, va, mask).narrow(-1, 0, D);
    // Query i repeated K times sits at K i + r; its last copy sees exactly the pairs (j <= i, r).
    auto qk = qa.unsqueeze(3).expand({B, H, T, K, D + 1}).reshape({B, H, T * K, D + 1});
    return exact_attention(qk, ka, va, mask).view({B, H, T, K, D + 1}).select(3, K - 1).narrow(-1, 0, D);
  }

  int64_t heads_, head_dim_, keys_;
  bool linear_;
  int64_t chunk_;
  double eps_, variance_ = 1;
  torch::nn::Linear q_{nullptr}, k_{nullptr}, v_{nullptr}, out_{nullptr};
  torch::Tensor prior_;  // [H, K]
};

}  // namespace

MixerInfo mgk_mixer_info() {
  MixerInfo info;
  info.name = "mgk";
  info.summary = "mixture of Gaussian keys per head (softmax form, fused kernel) or its linear form (MLK)";
  info.citation = "Nguyen et al. 2022, Improving Transformers with Probabilistic Attention Keys, sec. 2-3";
  info.schema = {
      {"keys", OptionType::Int, 2, "K Gaussian keys per position and head (the paper: 2)", 1, 16},
      {"learn_prior", OptionType::Bool, true, "priors pi learned (clamped to [1e-6, 1]); false = fixed at 1/K"},
      {"variance", OptionType::Float, 0.0, "sigma^2 of every component; 0 = sqrt(D) (the paper's LRA code)", 0.0, 1e9},
      {"linear", OptionType::Bool, false, "linear MGK: phi(q)^T sum_r pi_r phi(k_r), phi = elu + 1, O(T D^2)"},
      {"chunk", OptionType::Int, 64, "linear, causal: positions per chunk of the prefix sums", 1, 1e6},
      {"eps", OptionType::Float, 1e-6, "linear: added to the denominator", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<MgkImpl>(a); };
  info.sparse_options = {{"linear", true}, {"keys", 3}, {"chunk", 4}};  // the linear form (MLK), several chunks
  info.streams = true;
  info.flops = [](const FlopQuery& f) {  // projections (K key projections); scores and values over K T pairs
    const double K = f.options["keys"].get<double>(), D = double(f.C) / f.H;
    const double proj = 2.0 * f.B * f.T * f.C * f.C * (3 + K);
    if (f.options["linear"].get<bool>()) return proj + 4.0 * f.B * f.T * f.C * D;
    return proj + 4.0 * f.B * f.T * K * f.T * f.C * (f.causal ? 0.5 : 1.0);
  };
  return info;
}

}  // namespace longseq
