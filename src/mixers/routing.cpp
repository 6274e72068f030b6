// "routing": Routing Transformer attention. Roy, Saffar, Vaswani, Grangier
// 2021, "Efficient Content-Based Sparse Attention with Routing Transformers",
// sec. 4 (routing attention, online k-means), with the balanced clusters of
// the authors' code: centroid c takes the w tokens nearest to it, attention
// runs inside each cluster (LN-normalized queries and keys, causal by
// position), and a token's output is the mean over the clusters that took it
// (zero if none). The paper's form fixes the cluster size w and uses k =
// ceil(n / w) clusters for n real tokens (O(n w); k ~ sqrt(n) gives O(n^1.5));
// `clusters` > 0 fixes k instead (w = ceil(n / k), O(n^2 / k)). Decoder
// heads share QK (k := q, the code's share_qk); bidirectional heads may have
// their own keys, clustered by the same centroids (the official encoder).
// Centroids are buffers updated by an exponential moving average of the
// normalized queries (and keys) assigned to them (the nearest centroid), in
// training only, never by gradients.
// Local heads: blocks of b queries attend to their own block and the previous
// one (and the next one when bidirectional), as the paper's models mix them.
// Padding counts nowhere: each row's real tokens are moved to the front
// first, so cluster sizes and block boundaries follow the real tokens only.
// Not strictly causal with k > 1: a later token can push an earlier one out.
// Float32 CPU inputs run the routing heads on the fused block-sparse kernel:
// each cluster's members are gathered once (O(k w D)) and cluster c attends to
// key block c only (a block-diagonal layout), masked by original position;
// others on the gathered reference. The local heads run on the same kernel:
// query block j lists key blocks j - 1, j (and j + 1 when bidirectional).
// No streaming: with balanced clusters a later token can change which cluster
// an earlier token sits in (top-w over the whole sequence), and in training the
// centroids move with every batch, so earlier outputs are not fixed.
#include <algorithm>
#include <cmath>
#include <limits>

#include "longseq/common.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/kernels/gathered_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"
#include "longseq/mixers/cores.h"

namespace longseq {

namespace {

constexpr double kLaplace = 1e-5;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Centroids per routing head: a fixed k, or enough clusters of `cluster_size` for `max_len` tokens.
int64_t centroid_count(const Json& o) {
  const int64_t k = o["clusters"].get<int64_t>();
  return k > 0 ? k : ceil_div(o["max_len"].get<int64_t>(), o["cluster_size"].get<int64_t>());
}

int64_t routing_head_count(const Json& o, int64_t heads) {
  const int64_t r = o["routing_heads"].get<int64_t>();
  return r < 0 ? (heads + 1) / 2 : std::min(r, heads);
}

class RoutingImpl : public MixerImpl {
 public:
  explicit RoutingImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        routing_heads_(routing_head_count(a.options, a.n_heads)),
        fixed_clusters_(a.options["clusters"]),
        cluster_size_(a.options["cluster_size"]),
        centroids_(centroid_count(a.options)),
        local_block_(a.options["local_window"]),
        shared_qk_(a.options["shared_qk"]),
        decay_(a.options["decay"]),
        kernel_(a.options["kernel"]) {
    const bool bias = a.options["bias"].get<bool>();
    // [q (all heads) | k (the heads that use keys: local ones, and routing ones without shared QK) | v (all heads)]
    key_heads_ = shared_qk_ ? heads_ - routing_heads_ : heads_;
    const int64_t width = 2 * a.d_model + key_heads_ * head_dim_;
    if (!a.core_only) {  // else the host layer projects
      qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, width).bias(bias)));
      out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    }
    auto init = torch::layer_norm(torch::randn({routing_heads_, centroids_, head_dim_}), {head_dim_});
    means_ = register_buffer("means", init);
    ema_sums_ = register_buffer("ema_sums", init.clone());
    ema_counts_ = register_buffer("ema_counts", torch::ones({routing_heads_, centroids_}));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "routing: x must be [B, T, C], got ", x.sizes());
    check_context(ctx);
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
    auto [order, pad] = real_first(ctx.padding_mask, T);
    auto xs = order.defined() ? x.gather(1, order.unsqueeze(-1).expand({B, T, C})) : x;
    auto proj = qkv_(xs);
    const int64_t Ck = key_heads_ * head_dim_;
    auto q = split_heads(proj.narrow(-1, 0, C), heads_), v = split_heads(proj.narrow(-1, C + Ck, C), heads_);
    auto k = key_heads_ > 0 ? split_heads(proj.narrow(-1, C, Ck), key_heads_) : torch::Tensor();
    auto y = out_(merge_heads(attend_sorted(q, k, v, pad, ctx.causal)));
    return order.defined() ? torch::zeros_like(y).scatter(1, order.unsqueeze(-1).expand({B, T, C}), y) : y;
  }

  // As a core, k has every head; with shared_qk the routed heads read none of it (their keys are their queries,
  // as the mixer projects no keys for them) and the local heads read theirs.
  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    check_context(ctx);
    const int64_t B = q.size(0), T = q.size(2);
    auto sorted = real_first(ctx.padding_mask, T);
    const auto& order = sorted.first;
    auto sort = [&](const torch::Tensor& t) {
      return order.defined() ? t.gather(2, order.view({B, 1, T, 1}).expand_as(t)) : t;
    };
    auto keys = key_heads_ > 0 ? sort(k.narrow(1, heads_ - key_heads_, key_heads_)) : torch::Tensor();
    auto y = attend_sorted(sort(q), keys, sort(v), sorted.second, ctx.causal);
    return order.defined() ? torch::zeros_like(y).scatter(2, order.view({B, 1, T, 1}).expand_as(y), y) : y;
  }

 private:
  void check_context(const MixContext& ctx) const {
    TORCH_CHECK(!ctx.state, "routing: does not stream (decode by recomputing the sequence)");
    TORCH_CHECK(shared_qk_ || !ctx.causal || routing_heads_ == 0,
                "routing: shared_qk false is bidirectional only (the official encoder); causal routing shares QK");
  }

  // Real tokens first, in order (a stable sort on the padding flag): padding then changes no cluster size and no
  // block boundary; attention is per token outside the clusters, so permuting the rows permutes the output.
  // -> (order [B, T], padding in that order [B, T]); both undefined without a padding mask.
  static std::pair<torch::Tensor, torch::Tensor> real_first(const torch::Tensor& padding_mask, int64_t T) {
    if (!padding_mask.defined()) return {};
    auto p = padding_mask.to(torch::kBool);
    auto key = p.to(torch::kLong) * T + torch::arange(T, p.options().dtype(torch::kLong)).unsqueeze(0);
    auto order = std::get<1>(key.sort(-1));
    return {order, p.gather(1, order)};  // right padding only
  }

  // q, v [B, H, T, D]; k [B, key_heads, T, D] (the local heads' keys last) or undefined; rows sorted real first.
  torch::Tensor attend_sorted(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& pad, bool causal) {
    const int64_t Hr = routing_heads_, Hl = heads_ - Hr;
    if (q.size(2) == 0) return torch::zeros_like(v);  // no rows: no clusters or windows to size
    std::vector<torch::Tensor> parts;
    if (Hr > 0)
      parts.push_back(routed(q.narrow(1, 0, Hr), shared_qk_ ? torch::Tensor() : k.narrow(1, 0, Hr),
                             v.narrow(1, 0, Hr), pad, causal));
    if (Hl > 0)
      parts.push_back(local(q.narrow(1, Hr, Hl), k.narrow(1, key_heads_ - Hl, Hl), v.narrow(1, Hr, Hl), pad, causal));
    return parts.size() == 1 ? parts[0] : torch::cat(parts, 1);
  }

  // q, v [B, H, T, D]; k undefined (shared QK) or [B, H, T, D]; pad [B, T] right padding or undefined.
  torch::Tensor routed(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& pad,
                       bool causal) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    auto lopts = q.options().dtype(torch::kLong);
    // Per row: n real tokens, k_b clusters of w_b (the paper's k = ceil(n / w); fixed k: w = ceil(n / k);
    // beyond the centroids sized by max_len the clusters grow).
    auto n = pad.defined() ? (~pad).sum(1) : torch::full({B}, T, lopts);
    auto n_cpu = n.to(torch::kCPU);
    std::vector<int64_t> kb(B), wb(B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t nb = n_cpu[b].item<int64_t>();
      kb[b] = fixed_clusters_ > 0 ? fixed_clusters_ : std::clamp<int64_t>(ceil_div(nb, cluster_size_), 1, centroids_);
      wb[b] = std::min(nb, fixed_clusters_ > 0 || ceil_div(nb, cluster_size_) > centroids_ ? ceil_div(nb, kb[b])
                                                                                            : cluster_size_);
    }
    const int64_t K = *std::max_element(kb.begin(), kb.end()), W = *std::max_element(wb.begin(), wb.end());
    auto qn = torch::layer_norm(q, {D});  // no scale or bias: |qn| = sqrt(D)
    auto kn = k.defined() ? torch::layer_norm(k, {D}) : qn;
    if (W == 0) return torch::zeros_like(v);  // no real token anywhere
    // A recomputation (reversible backward) routes with the centroids its forward used, and updates nothing.
    const bool recompute = in_recompute();
    auto means = (is_training() ? replay_or_record(this, "means", [&] { return means_.clone(); }) : means_)
                     .narrow(1, 0, K)
                     .to(q.dtype());
    auto cluster = torch::arange(K, lopts).view({1, 1, K, 1});
    auto kb_t = torch::tensor(kb, torch::kLong).to(q.device()).view({B, 1, 1, 1});
    auto wb_t = torch::tensor(wb, torch::kLong).to(q.device()).view({B, 1, 1, 1});
    const double lowest = -std::numeric_limits<double>::infinity();  // any dtype: padding and unused clusters rank last
    // Members of each cluster: its w_b nearest real tokens (rank < w_b), in the row's first k_b clusters; -1 = none.
    auto members = [&](const torch::Tensor& xn, torch::Tensor& affinity) {
      affinity = torch::einsum("bhtd,hkd->bhkt", {xn.detach(), means});  // [B, H, K, T]
      if (pad.defined()) affinity = affinity.masked_fill(pad.view({B, 1, 1, T}), lowest);  // padding picked last
      auto idx = std::get<1>(affinity.topk(W, -1));  // [B, H, K, W]
      auto keep = (torch::arange(W, lopts).view({1, 1, 1, W}) < wb_t) & (cluster < kb_t);
      return torch::where(keep, idx, torch::full_like(idx, -1));
    };
    torch::Tensor q_idx, k_idx, q_aff, k_aff;
    {
      torch::NoGradGuard ng;
      q_idx = members(qn, q_aff);
      k_idx = k.defined() ? members(kn, k_aff) : q_idx;
      if (is_training() && !recompute) {
        auto real_cluster = cluster.view({1, 1, K}) < kb_t.view({B, 1, 1});  // [B, 1, K]
        update_means(qn.detach(), q_aff.masked_fill(~real_cluster.unsqueeze(-1), lowest), pad, K);
        if (k.defined()) update_means(kn.detach(), k_aff.masked_fill(~real_cluster.unsqueeze(-1), lowest), pad, K);
      }
    }
    // Logits qn_a . kn_b (no 1/sqrt(D): LN sets the temperature).
    auto o = use_fused(qn) ? fused_clusters(qn, kn, v, q_idx, k_idx, pad, causal)
                           : gathered_clusters(qn, kn, v, q_idx, k_idx, pad, causal);  // [B, H, K, W, D]
    // Scatter back; empty slots go to a spare row T that is dropped.
    auto flat = torch::where(q_idx >= 0, q_idx, torch::full_like(q_idx, T)).view({B, H, K * W});
    auto sum = torch::zeros({B, H, T + 1, D}, o.options())
                   .scatter_add(2, flat.unsqueeze(-1).expand({B, H, K * W, D}), o.reshape({B, H, K * W, D}));
    auto count = torch::zeros({B, H, T + 1}, o.options()).scatter_add(2, flat, torch::ones({B, H, K * W}, o.options()));
    // Mean over the clusters that took the token; 0 if none.
    return (sum / count.clamp_min(1).unsqueeze(-1)).narrow(2, 0, T);
  }

  bool use_fused(const torch::Tensor& q) const {
    if (kernel_ == "reference") return false;
    BlockSparseLayout probe{1, 1, {}, {}};
    auto why = block_sparse_attention_unsupported_reasons(q, q, q, probe, {});
    if (kernel_ == "fused" && !why.empty())
      throw Error("routing: kernel \"fused\" cannot take this input: " + join(why, "; "));
    return why.empty();
  }

  // Members gathered in cluster order, then cluster c (block c of W rows) attends to key block c only; masks by
  // original position: empty slots and padding -1, causal k <= q.
  // qn, kn, v [B, H, T, D]; q_idx, k_idx [B, H, K, W] (-1 = empty) -> [B, H, K, W, D]
  torch::Tensor fused_clusters(const torch::Tensor& qn, const torch::Tensor& kn, const torch::Tensor& v,
                               const torch::Tensor& q_idx, const torch::Tensor& k_idx, const torch::Tensor& pad,
                               bool causal) const {
    const int64_t B = qn.size(0), H = qn.size(1), D = qn.size(3), K = q_idx.size(2), W = q_idx.size(3);
    auto rows = [&](const torch::Tensor& t, const torch::Tensor& idx) {
      return t.gather(2, idx.clamp_min(0).view({B, H, K * W, 1}).expand({B, H, K * W, D}));
    };
    auto kpos = k_idx.view({B, H, K * W});
    if (pad.defined()) {
      auto padded = pad.view({B, 1, -1}).expand({B, H, pad.size(1)}).gather(2, kpos.clamp_min(0));
      kpos = torch::where(padded, torch::full_like(kpos, -1), kpos);
    }
    auto diag = torch::arange(K, torch::kLong);
    BlockSparseLayout layout{W, W, torch::arange(K + 1, torch::kLong).view({1, 1, K + 1}), diag.view({1, 1, K})};
    auto r = block_sparse_attention(rows(qn, q_idx), rows(kn, k_idx), rows(v, k_idx), layout,
                                    BlockSparseMask{causal, q_idx.reshape({B, H, K * W}), kpos, 0.0}, 1.0, "fused");
    return r.out.view({B, H, K, W, D});
  }

  // The gathered reference: each cluster's queries over its key slots. Arguments as fused_clusters.
  torch::Tensor gathered_clusters(const torch::Tensor& qn, const torch::Tensor& kn, const torch::Tensor& v,
                                  const torch::Tensor& q_idx, const torch::Tensor& k_idx, const torch::Tensor& pad,
                                  bool causal) const {
    const int64_t B = qn.size(0), H = qn.size(1), D = qn.size(3), K = q_idx.size(2), W = q_idx.size(3);
    // The primitive divides by sqrt(D); the routing logits have no such scale.
    auto qg = (qn * std::sqrt(static_cast<double>(D)))
                  .gather(2, q_idx.clamp_min(0).view({B, H, K * W, 1}).expand({B, H, K * W, D}));
    KeySlots slots{k_idx, causal ? (k_idx.unsqueeze(-2) <= q_idx.unsqueeze(-1)) : torch::Tensor()};
    return gathered_attention(qg.view({B, H, K, W, D}), kn, v, slots, pad).out;
  }

  // Online k-means (sec. 4; the code's EMA form): nearest-centroid assignment among the K clusters in use,
  // counts and sums decayed by lambda, means = sums / Laplace-smoothed counts. Centroids beyond K (sized for
  // longer inputs) keep their state.
  void update_means(const torch::Tensor& xn, const torch::Tensor& affinity, const torch::Tensor& pad, int64_t K) {
    auto nearest = affinity.argmax(2);  // [B, H, T]
    auto onehot = torch::one_hot(nearest, K).to(xn.dtype());  // [B, H, T, K]
    if (pad.defined()) onehot = onehot * (~pad).to(xn.dtype()).view({pad.size(0), 1, -1, 1});
    auto counts = onehot.sum(std::vector<int64_t>{0, 2});                                   // [H, K]
    auto sums = torch::einsum("bhtk,bhtd->hkd", {onehot, xn});            // [H, K, D]
    auto ema_counts = ema_counts_.narrow(1, 0, K), ema_sums = ema_sums_.narrow(1, 0, K);
    ema_counts.mul_(decay_).add_((1 - decay_) * counts.to(ema_counts_.dtype()));
    ema_sums.mul_(decay_).add_((1 - decay_) * sums.to(ema_sums_.dtype()));
    auto total = ema_counts.sum(-1, true);
    auto smoothed = (ema_counts + kLaplace) / (total + K * kLaplace) * total;
    means_.narrow(1, 0, K).copy_(ema_sums / smoothed.clamp_min(1e-12).unsqueeze(-1));
  }

  // Blocks of b queries over their own block and the previous one (and the next one when bidirectional).
  torch::Tensor local(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& pad,
                      bool causal) const {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    const int64_t b = std::min(local_block_, T), N = (T + b - 1) / b, span = causal ? 2 : 3;
    if (use_fused(q)) {
      std::vector<std::vector<int64_t>> rows(N);
      for (int64_t j = 0; j < N; ++j)
        for (int64_t c = std::max<int64_t>(0, j - 1); c <= std::min(N - 1, causal ? j : j + 1); ++c) rows[j].push_back(c);
      BlockSparseMask mask{causal, {}, {}, 0.0};
      if (pad.defined()) {
        auto kp = pad.to(torch::kCPU, torch::kBool);
        mask.k_pos = torch::where(kp, torch::full(kp.sizes(), -1, torch::kLong), torch::arange(T, torch::kLong).expand_as(kp))
                         .view({B, 1, T});
      }
      return block_sparse_attention(q, k, v, block_sparse_layout(b, b, {{rows}}), mask,
                                    1.0 / std::sqrt(static_cast<double>(D)), "fused")
          .out;
    }
    auto lopts = q.options().dtype(torch::kLong);
    auto kpos = (torch::arange(N, lopts) * b - b).view({N, 1}) + torch::arange(span * b, lopts).view({1, span * b});
    auto qpos = (torch::arange(N, lopts) * b).view({N, 1, 1}) + torch::arange(b, lopts).view({1, b, 1});
    auto valid = (kpos >= 0) & (kpos < T);
    auto allowed = causal ? (kpos.unsqueeze(1) <= qpos) : torch::ones({N, b, span * b}, lopts.dtype(torch::kBool));
    KeySlots slots{torch::where(valid, kpos, torch::full_like(kpos, -1)).view({1, 1, N, span * b}),
                   allowed.view({1, 1, N, b, span * b})};
    auto qp = N * b > T ? torch::cat({q, torch::zeros({B, H, N * b - T, D}, q.options())}, 2) : q;
    auto o = gathered_attention(qp.view({B, H, N, b, D}), k, v, slots, pad).out;
    return o.reshape({B, H, N * b, D}).narrow(2, 0, T);
  }

  int64_t heads_, head_dim_, routing_heads_, fixed_clusters_, cluster_size_, centroids_, local_block_;
  int64_t key_heads_ = 0;
  bool shared_qk_;
  double decay_;
  std::string kernel_;
  torch::Tensor means_, ema_sums_, ema_counts_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo routing_mixer_info() {
  MixerInfo info;
  info.name = "routing";
  info.summary = "Routing Transformer: online k-means clusters of fixed size (balanced), attention within clusters, "
                 "plus local heads";
  info.citation = "Roy, Saffar, Vaswani, Grangier 2021, Efficient Content-Based Sparse Attention with Routing "
                  "Transformers, sec. 4";
  info.schema = {
      {"cluster_size", OptionType::Int, 512, "w tokens per cluster; n real tokens use k = ceil(n / w) clusters (the "
                                             "paper's form, O(n w); the paper's 8K models: w = 512, k = 16)", 1, 1e9},
      {"clusters", OptionType::Int, 0, "0: k follows the length (cluster_size); > 0: a fixed k, each cluster takes "
                                       "ceil(n / k) tokens (O(n^2 / k))", 0, 1e5},
      {"max_len", OptionType::Int, 65536, "longest input the centroids are sized for: ceil(max_len / cluster_size) "
                                          "per routing head; longer inputs keep that many clusters, which then grow",
       1, 1e9},
      {"routing_heads", OptionType::Int, -1, "heads that route (the first ones); the others attend locally; -1 = half "
                                             "(the paper's enwik8 model: 4 of 8)", -1, 1e6},
      {"shared_qk", OptionType::Bool, true, "routing heads use their queries as keys (the decoder's form); false: own "
                                            "keys, clustered by the same centroids (the official encoder; "
                                            "bidirectional only)"},
      {"local_window", OptionType::Int, 256, "block size b of the local heads: a block sees itself and the previous "
                                             "block (and the next when bidirectional); the paper: 256", 1, 1e9},
      {"decay", OptionType::Float, 0.999, "EMA decay lambda of the centroid update (the paper: 0.999)", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
      {"kernel", OptionType::String, "auto",
       "attention core of the routing heads: auto (the fused block-sparse CPU kernel when it supports the input, "
       "else the gathered reference), reference, or fused (error when unsupported); LONGSEQ_ATTENTION=reference "
       "forces reference",
       -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<RoutingImpl>(a); };
  info.attends = true;
  // streams = false: balanced clusters are chosen over the whole sequence (top-w per centroid), so a later token
  // can move an earlier one between clusters or out of all of them; a prefix's outputs are not final.
  info.strictly_causal = false;
  info.strictly_causal_options = {{"clusters", 1}};
  info.sparse_options = {{"cluster_size", 4}, {"local_window", 4}};  // several clusters of 4, blocks of 4
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // every head routed: k clusters of w drawn members (a balanced shuffle),
    const int64_t fixed = c.options["clusters"].get<int64_t>();          // cluster c attending to itself
    const int64_t w = fixed > 0 ? ceil_div(c.T, fixed) : std::min<int64_t>(c.options["cluster_size"].get<int64_t>(), c.T);
    const int64_t K = ceil_div(c.T, w);
    auto members = torch::randperm(K * w, torch::kLong).view({K, w});
    members = std::get<0>(members.sort(-1)).view({1, 1, K * w});  // in position order inside a cluster
    auto pos = torch::where(members < c.T, members, torch::full_like(members, -1));
    std::vector<std::vector<int64_t>> rows(K);
    for (int64_t j = 0; j < K; ++j) rows[j] = {j};
    return block_sparse_core(c, K * w, K * w, block_sparse_layout(w, w, {{rows}}),
                             BlockSparseMask{c.causal, pos, pos, 0.0}, c.causal ? 0.5 : 1.0);
  };
  info.flops = [](const FlopQuery& f) {
    const double hr = routing_head_count(f.options, f.H), hl = f.H - hr, D = double(f.C) / f.H;
    const int64_t fixed = f.options["clusters"].get<int64_t>(), w0 = f.options["cluster_size"].get<int64_t>();
    const int64_t cap = centroid_count(f.options), need = ceil_div(f.T, w0);
    const double K = fixed > 0 ? fixed : std::clamp<int64_t>(need, 1, cap);
    const double w = fixed > 0 || need > cap ? std::ceil(f.T / K) : std::min<double>(w0, f.T);
    const double b = std::min<double>(f.options["local_window"].get<double>(), f.T);
    const double key_heads = f.options["shared_qk"].get<bool>() ? hl : f.H;
    const double routed = hr * (4.0 * K * w * w * D / (f.causal ? 2 : 1) + 2.0 * f.T * K * D * (key_heads > hl ? 2 : 1));
    const double local = hl * 4.0 * f.T * (f.causal ? 1.5 : 3.0) * b * D;
    const double projections = 2.0 * f.T * f.C * (3.0 * f.C + key_heads * D);  // q, v, out and the keys in use
    return f.B * (projections + routed + local);
  };
  info.projection_flops = [](const FlopQuery& f) {
    const double hl = f.H - routing_head_count(f.options, f.H), D = double(f.C) / f.H;
    return 2.0 * f.B * f.T * f.C * (3.0 * f.C + (f.options["shared_qk"].get<bool>() ? hl : f.H) * D);
  };
  return info;
}

}  // namespace longseq
