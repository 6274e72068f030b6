// "routing": Routing Transformer attention. Roy, Saffar, Vaswani, Grangier
// 2021, "Efficient Content-Based Sparse Attention with Routing Transformers",
// sec. 4 (routing attention, online k-means), with the balanced clusters of
// the authors' code: centroid c takes the w = ceil(T/k) tokens nearest to it,
// attention runs inside each cluster (shared QK, LN-normalized, slots sorted by
// position, causal by position), and a token's output is the mean over the
// clusters that took it (zero if none). Centroids are buffers updated by an
// exponential moving average of the normalized queries assigned to them (the
// nearest centroid), in training only, never by gradients.
// Local heads: blocks of b queries attend to their own block and the previous
// one (and the next one when bidirectional), as the paper's models mix them.
// Not strictly causal with k > 1: a later token can push an earlier one out.
#include <algorithm>
#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/gathered_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

constexpr double kLaplace = 1e-5;

class RoutingImpl : public MixerImpl {
 public:
  explicit RoutingImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        clusters_(a.options["clusters"]),
        local_block_(a.options["local_window"]),
        decay_(a.options["decay"]) {
    const int64_t r = a.options["routing_heads"].get<int64_t>();
    routing_heads_ = r < 0 ? (a.n_heads + 1) / 2 : std::min(r, a.n_heads);
    const bool bias = a.options["bias"].get<bool>();
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    auto init = torch::layer_norm(torch::randn({routing_heads_, clusters_, head_dim_}), {head_dim_});
    means_ = register_buffer("means", init);
    ema_sums_ = register_buffer("ema_sums", init.clone());
    ema_counts_ = register_buffer("ema_counts", torch::ones({routing_heads_, clusters_}));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "routing: x must be [B, T, C], got ", x.sizes());
    TORCH_CHECK(!ctx.state, "routing: does not stream (decode by recomputing the sequence)");
    auto qkv = qkv_(x).chunk(3, -1);
    auto q = split_heads(qkv[0], heads_), k = split_heads(qkv[1], heads_), v = split_heads(qkv[2], heads_);
    auto pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(torch::kBool) : torch::Tensor();
    const int64_t Hr = routing_heads_, Hl = heads_ - Hr;
    std::vector<torch::Tensor> parts;
    if (Hr > 0) parts.push_back(routed(q.narrow(1, 0, Hr), v.narrow(1, 0, Hr), pad, ctx.causal));
    if (Hl > 0) parts.push_back(local(q.narrow(1, Hr, Hl), k.narrow(1, Hr, Hl), v.narrow(1, Hr, Hl), pad, ctx.causal));
    return out_(merge_heads(parts.size() == 1 ? parts[0] : torch::cat(parts, 1)));
  }

 private:
  torch::Tensor routed(const torch::Tensor& q, const torch::Tensor& v, const torch::Tensor& pad, bool causal) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), K = clusters_;
    const int64_t w = (T + K - 1) / K;
    auto qn = torch::layer_norm(q, {D});  // no scale or bias: |qn| = sqrt(D)
    // A recomputation (reversible backward) routes with the centroids its forward used, and updates nothing.
    const bool recompute = in_recompute();
    auto means = (is_training() ? replay_or_record(this, "means", [&] { return means_.clone(); }) : means_).to(q.dtype());
    torch::Tensor idx;
    {
      torch::NoGradGuard ng;
      auto affinity = torch::einsum("bhtd,hkd->bhkt", {qn.detach(), means});  // [B, H, K, T]
      if (pad.defined()) affinity = affinity.masked_fill(pad.view({B, 1, 1, T}), -1e30);  // padding picked last
      idx = std::get<0>(std::get<1>(affinity.topk(w, -1)).sort(-1));  // [B, H, K, w], by position
      if (is_training() && !recompute) update_means(qn.detach(), affinity, pad);
    }
    // Logits qn_a . qn_b (no 1/sqrt(D): LN sets the temperature); the primitive divides by sqrt(D).
    auto groups = (qn * std::sqrt(static_cast<double>(D))).gather(2, idx.view({B, H, K * w, 1}).expand({B, H, K * w, D}));
    KeySlots slots{idx, causal ? (idx.unsqueeze(-2) <= idx.unsqueeze(-1)) : torch::Tensor()};
    auto o = gathered_attention(groups.view({B, H, K, w, D}), qn, v, slots, pad).out;  // [B, H, K, w, D]
    auto flat = idx.view({B, H, K * w});
    auto sum = torch::zeros({B, H, T, D}, o.options()).scatter_add(2, flat.unsqueeze(-1).expand({B, H, K * w, D}),
                                                                    o.reshape({B, H, K * w, D}));
    auto n = torch::zeros({B, H, T}, o.options()).scatter_add(2, flat, torch::ones({B, H, K * w}, o.options()));
    return sum / n.clamp_min(1).unsqueeze(-1);  // mean over the clusters that took the token; 0 if none
  }

  // Online k-means (sec. 4; the code's EMA form): nearest-centroid assignment,
  // counts and sums decayed by lambda, means = sums / Laplace-smoothed counts.
  void update_means(const torch::Tensor& qn, const torch::Tensor& affinity, const torch::Tensor& pad) {
    const int64_t K = clusters_;
    auto nearest = affinity.argmax(2);  // [B, H, T]
    auto onehot = torch::one_hot(nearest, K).to(qn.dtype());  // [B, H, T, K]
    if (pad.defined()) onehot = onehot * (~pad).to(qn.dtype()).view({pad.size(0), 1, -1, 1});
    auto counts = onehot.sum(std::vector<int64_t>{0, 2});                                   // [H, K]
    auto sums = torch::einsum("bhtk,bhtd->hkd", {onehot, qn});            // [H, K, D]
    ema_counts_.mul_(decay_).add_((1 - decay_) * counts.to(ema_counts_.dtype()));
    ema_sums_.mul_(decay_).add_((1 - decay_) * sums.to(ema_sums_.dtype()));
    auto total = ema_counts_.sum(-1, true);
    auto smoothed = (ema_counts_ + kLaplace) / (total + K * kLaplace) * total;
    means_.copy_(ema_sums_ / smoothed.clamp_min(1e-12).unsqueeze(-1));
  }

  // Blocks of b queries over their own block and the previous one (and the next one when bidirectional).
  torch::Tensor local(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& pad,
                      bool causal) const {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    const int64_t b = std::min(local_block_, T), N = (T + b - 1) / b, span = causal ? 2 : 3;
    auto kpos = (torch::arange(N) * b - b).view({N, 1}) + torch::arange(span * b).view({1, span * b});  // [N, span*b]
    auto qpos = (torch::arange(N) * b).view({N, 1, 1}) + torch::arange(b).view({1, b, 1});
    auto valid = (kpos >= 0) & (kpos < T);
    auto allowed = causal ? (kpos.unsqueeze(1) <= qpos) : torch::ones({N, b, span * b}, torch::kBool);
    KeySlots slots{torch::where(valid, kpos, torch::full_like(kpos, -1)).view({1, 1, N, span * b}),
                   allowed.view({1, 1, N, b, span * b})};
    auto qp = N * b > T ? torch::cat({q, torch::zeros({B, H, N * b - T, D}, q.options())}, 2) : q;
    auto o = gathered_attention(qp.view({B, H, N, b, D}), k, v, slots, pad).out;
    return o.reshape({B, H, N * b, D}).narrow(2, 0, T);
  }

  int64_t heads_, head_dim_, clusters_, local_block_, routing_heads_;
  double decay_;
  torch::Tensor means_, ema_sums_, ema_counts_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo routing_mixer_info() {
  MixerInfo info;
  info.name = "routing";
  info.summary = "Routing Transformer: online k-means clusters (balanced), attention within clusters, plus local heads";
  info.citation = "Roy, Saffar, Vaswani, Grangier 2021, Efficient Content-Based Sparse Attention with Routing "
                  "Transformers, sec. 4";
  info.schema = {
      {"clusters", OptionType::Int, 16, "k centroids per routing head; each takes its ceil(T/k) nearest tokens (the "
                                        "paper's 8K models: 16)", 1, 1e5},
      {"routing_heads", OptionType::Int, -1, "heads that route (the first ones); the others attend locally; -1 = half "
                                             "(the paper's enwik8 model: 4 of 8)", -1, 1e6},
      {"local_window", OptionType::Int, 256, "block size b of the local heads: a block sees itself and the previous "
                                             "block (and the next when bidirectional); the paper: 256", 1, 1e9},
      {"decay", OptionType::Float, 0.999, "EMA decay lambda of the centroid update (the paper: 0.999)", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<RoutingImpl>(a); };
  info.strictly_causal = false;
  info.strictly_causal_options = {{"clusters", 1}};
  info.flops = [](const FlopQuery& f) {
    const int64_t r = f.options["routing_heads"].get<int64_t>();
    const double hr = r < 0 ? (f.H + 1) / 2 : std::min<int64_t>(r, f.H), hl = f.H - hr, D = double(f.C) / f.H;
    const double K = f.options["clusters"].get<double>(), w = std::ceil(f.T / K);
    const double b = std::min<double>(f.options["local_window"].get<double>(), f.T);
    const double routed = hr * (4.0 * K * w * w * D / (f.causal ? 2 : 1) + 2.0 * f.T * K * D);
    const double local = hl * 4.0 * f.T * (f.causal ? 1.5 : 3.0) * b * D;
    return 8.0 * f.B * f.T * f.C * f.C + f.B * (routed + local);
  };
  return info;
}

}  // namespace longseq
