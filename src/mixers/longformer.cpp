// "longformer": sliding-window, dilated and global attention.
// Beltagy, Peters, Cohan 2020, "Longformer: The Long-Document Transformer",
// sec. 3.1 (attention pattern, separate global projections), sec. 4.1
// (window growing with depth, dilation on some heads of the upper layers).
// Row i (not global) sees keys i + d*m for m in [-w, w] ([-w, 0] causal)
// plus every global token (through the local K, V, as the official code
// does); a global row sees every key through Q_g, K_g, V_g (sec. 3.1).
// Memory O(T * w): a dilated head is a plain window over each residue class
// mod d, so the rows are permuted into d contiguous subsequences and the
// window runs over them block by block. Float32 CPU inputs run on the fused
// block-sparse kernel with a band mask (kernels/cpu/block_sparse_attention:
// online softmax, no gathered copies, O(T) memory); the global keys join by
// log-sum-exp. The gathered path (kernels/gathered_attention) is the reference.
#include <algorithm>

#include <cmath>
#include <limits>

#include "longseq/common.h"
#include "longseq/kernels/banded_attention.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/kernels/gathered_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/mixers/per_layer.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

constexpr int64_t kMaxBlock = 256;

struct WindowCache : MixerState {
  torch::Tensor k, v;         // [B, H, S, D]: the last w * max(d) positions
  torch::Tensor key_padding;  // [B, S] or undefined
  int64_t length = 0;         // positions consumed so far
  // With configured global tokens: the whole prefix's input, [B, S, C] (a mixer) or its q, k, v concatenated as
  // [B, H, S, 3 D] (a core), and its padding [B, S].
  torch::Tensor x, pad;
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({k, x}), "longformer");
    k = select_rows(k, i), v = select_rows(v, i), key_padding = select_rows(key_padding, i);
    x = select_rows(x, i), pad = select_rows(pad, i);
  }
};

class LongformerImpl : public MixerImpl {
 public:
  explicit LongformerImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        window_(per_layer_value(a.options, "window", a.layer_index, "longformer")),
        dilation_(per_layer_value(a.options, "dilation", a.layer_index, "longformer")),
        dilated_heads_(std::min<int64_t>(a.options["dilated_heads"].get<int64_t>(), a.n_heads)),
        global_first_(a.options["global_first"]),
        global_positions_(a.options["global_positions"].get<std::vector<int64_t>>()),
        kernel_(a.options["kernel"]) {
    if (a.core_only) return;  // the host layer projects; global rows use its q, k, v
    const bool bias = a.options["bias"].get<bool>();
    auto lin = [&](int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(a.d_model, out).bias(bias)); };
    qkv_ = register_module("qkv", lin(3 * a.d_model));
    out_ = register_module("out", lin(a.d_model));
    if (a.options["global_projections"].get<bool>()) {
      qkv_global_ = register_module("qkv_global", lin(3 * a.d_model));
      torch::NoGradGuard ng;  // sec. 3.1: the global projections start as copies of the local ones
      qkv_global_->weight.copy_(qkv_->weight);
      if (bias) qkv_global_->bias.copy_(qkv_->bias);
    }
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "longformer: x must be [B, T, C], got ", x.sizes());
    auto pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(x.device(), torch::kBool) : torch::Tensor();
    if (ctx.state && (global_first_ || !global_positions_.empty()))
      return out_(merge_heads(stream_with_globals(x, 1, pad, ctx)));
    auto qkv = qkv_(x).chunk(3, -1);
    auto q = split_heads(qkv[0], heads_), k = split_heads(qkv[1], heads_), v = split_heads(qkv[2], heads_);
    if (ctx.state) return out_(merge_heads(stream(q, k, v, pad, ctx)));
    auto is_global = global_set(x.size(0), x.size(1), ctx, pad, x.device());
    return out_(merge_heads(attend(x, q, k, v, pad, is_global, ctx.causal)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    auto pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(q.device(), torch::kBool) : torch::Tensor();
    if (ctx.state && (global_first_ || !global_positions_.empty()))
      return stream_with_globals(torch::cat({q, k, v}, -1), 2, pad, ctx);
    if (ctx.state) return stream(q, k, v, pad, ctx);
    auto is_global = global_set(q.size(0), q.size(2), ctx, pad, q.device());
    return attend(torch::Tensor(), q, k, v, pad, is_global, ctx.causal);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<WindowCache>(); }

 private:
  // [B, T] bool: the global tokens (from the context's mask and the config), never padding. Configured
  // positions count a sequence's real tokens (0 = its first), so left padding does not move them.
  torch::Tensor global_set(int64_t B, int64_t T, const MixContext& ctx, const torch::Tensor& pad,
                           const torch::Device& device) const {
    torch::Tensor g;
    if (ctx.global_mask.defined()) {
      TORCH_CHECK(ctx.global_mask.dim() == 2 && ctx.global_mask.size(0) == B && ctx.global_mask.size(1) == T,
                  "longformer: global_mask must be [B, T] = [", B, ", ", T, "], got ", ctx.global_mask.sizes());
      g = ctx.global_mask.to(device, torch::kBool).clone();
    }
    if (global_first_ || !global_positions_.empty()) {
      auto lopts = torch::TensorOptions().dtype(torch::kLong).device(device);
      auto rank = pad.defined() ? torch::cumsum((~pad).to(torch::kLong), 1) - 1
                                : torch::arange(T, lopts).unsqueeze(0).expand({B, T});
      if (!g.defined()) g = torch::zeros({B, T}, lopts.dtype(torch::kBool));
      if (global_first_) g = g | (rank == 0);
      for (int64_t p : global_positions_) g = g | (rank == p);
    }
    if (g.defined() && pad.defined()) g = g & ~pad;
    return g.defined() && g.any().item<bool>() ? g : torch::Tensor();
  }

  torch::Tensor attend(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& pad, const torch::Tensor& is_global, bool causal) {
    const int64_t B = q.size(0), T = q.size(2);
    auto lopts = q.options().dtype(torch::kLong);
    // Global keys: removed from the windows (no double counting) and offered to every row as extra columns.
    torch::Tensor gpos, gvalid, window_pad = pad;
    std::unique_ptr<ExtraKeys> extra;
    if (is_global.defined()) {
      auto count = is_global.sum(1);
      const int64_t G = count.max().item<int64_t>();
      auto order = std::get<1>(is_global.to(torch::kInt).sort(/*stable=*/true, 1, /*descending=*/true));
      gvalid = torch::arange(G, lopts).unsqueeze(0) < count.unsqueeze(1);  // [B, G]
      gpos = torch::where(gvalid, order.narrow(1, 0, G), torch::full({B, G}, T, lopts));  // dummy slot: T
      window_pad = pad.defined() ? (pad | is_global) : is_global;
      auto gidx = gpos.clamp_max(T - 1).view({B, 1, G, 1}).expand({B, heads_, G, q.size(3)});
      auto allowed = gvalid.view({B, 1, 1, G}).expand({B, 1, T, G});
      if (causal)
        allowed = allowed & (gpos.view({B, 1, 1, G}) <= torch::arange(T, lopts).view({1, 1, T, 1}));
      extra = std::make_unique<ExtraKeys>(ExtraKeys{k.gather(2, gidx), v.gather(2, gidx), allowed});
    }
    std::vector<torch::Tensor> parts;
    const int64_t h_dil = dilation_ > 1 ? dilated_heads_ : 0;
    if (h_dil > 0) parts.push_back(window_heads(q, k, v, 0, h_dil, dilation_, causal, window_pad, extra.get()));
    if (h_dil < heads_)
      parts.push_back(window_heads(q, k, v, h_dil, heads_ - h_dil, 1, causal, window_pad, extra.get()));
    auto out = parts.size() == 1 ? parts[0] : torch::cat(parts, 1);
    if (!is_global.defined()) return out;
    // Global rows: every key through Q_g, K_g, V_g (sec. 3.1); causal: keys up to the row's position.
    auto g = qkv_global_ ? qkv_global_(x).chunk(3, -1) : std::vector<torch::Tensor>{};
    auto qg = g.empty() ? q : split_heads(g[0], heads_), kg = g.empty() ? k : split_heads(g[1], heads_),
         vg = g.empty() ? v : split_heads(g[2], heads_);
    const int64_t G = gpos.size(1), D = q.size(3);
    auto gidx = gpos.clamp_max(T - 1).view({B, 1, G, 1}).expand({B, heads_, G, D});
    auto rows_q = qg.gather(2, gidx).unsqueeze(2);  // [B, H, 1, G, D]
    KeySlots all{torch::arange(T, lopts).view({1, 1, 1, T}), gvalid.view({B, 1, 1, G, 1})};
    if (causal)
      all.allowed = all.allowed & (torch::arange(T, lopts).view({1, 1, 1, 1, T}) <= gpos.view({B, 1, 1, G, 1}));
    auto rows = gathered_attention(rows_q, kg, vg, all, pad).out.squeeze(2);  // [B, H, G, D]
    auto widened = torch::cat({out, torch::zeros({B, heads_, 1, D}, out.options())}, 2);
    auto sidx = gpos.view({B, 1, G, 1}).expand({B, heads_, G, D});
    return widened.scatter(2, sidx, rows).narrow(2, 0, T);
  }

  // The fused kernel unless the option or the input rules it out ("fused": an error naming why).
  bool use_fused(const torch::Tensor& q) const {
    if (kernel_ == "reference") return false;
    auto why = block_sparse_attention_unsupported_reasons(q, q, q, BlockSparseLayout{}, {});
    if (kernel_ == "fused" && !why.empty())
      throw Error("longformer: kernel \"fused\" cannot take this input: " + join(why, "; "));
    return why.empty();
  }

  // Heads [h0, h0 + nh) with dilation d: a window of w over each residue class mod d.
  torch::Tensor window_heads(const torch::Tensor& q_all, const torch::Tensor& k_all, const torch::Tensor& v_all,
                             int64_t h0, int64_t nh, int64_t d, bool causal, const torch::Tensor& pad,
                             const ExtraKeys* extra) const {
    if (!use_fused(q_all)) return window_heads_gathered(q_all, k_all, v_all, h0, nh, d, causal, pad, extra);
    auto q = q_all.narrow(1, h0, nh);
    auto band = banded_attention(q, k_all.narrow(1, h0, nh), v_all.narrow(1, h0, nh), BandSpec{window_, d, causal}, pad, "fused");
    if (!extra) return band.out;
    // The global keys join the window's softmax through its log-sum-exp (no [T x T] tensor).
    auto s_g = torch::matmul(q, extra->k.narrow(1, h0, nh).transpose(-1, -2)) / std::sqrt(double(q.size(3)));
    s_g = s_g.masked_fill(~extra->allowed.squeeze(2), -std::numeric_limits<float>::infinity());  // [B, nh, T, G]
    auto m = torch::maximum(band.lse, std::get<0>(s_g.max(-1))).detach();
    m = torch::where(torch::isfinite(m), m, torch::zeros_like(m));
    auto e_band = torch::exp(band.lse - m).unsqueeze(-1), e_g = torch::exp(s_g - m.unsqueeze(-1));
    auto denom = e_band + e_g.sum(-1, true);
    denom = torch::where(denom > 0, denom, torch::ones_like(denom));
    return (band.out * e_band + torch::matmul(e_g, extra->v.narrow(1, h0, nh))) / denom;
  }

  // The reference: heads [h0, h0 + nh) over gathered key slots.
  torch::Tensor window_heads_gathered(const torch::Tensor& q_all, const torch::Tensor& k_all, const torch::Tensor& v_all,
                             int64_t h0, int64_t nh, int64_t d, bool causal, const torch::Tensor& pad,
                             const ExtraKeys* extra) const {
    const int64_t B = q_all.size(0), T = q_all.size(2), D = q_all.size(3);
    auto q = q_all.narrow(1, h0, nh), k = k_all.narrow(1, h0, nh), v = v_all.narrow(1, h0, nh);
    const int64_t Tp = (T + d - 1) / d * d, L = Tp / d;  // d subsequences of length L
    auto lopts = q_all.options().dtype(torch::kLong), bopts = q_all.options().dtype(torch::kBool);
    torch::Tensor key_pad = pad;
    if (Tp > T) {
      auto zeros = torch::zeros({B, nh, Tp - T, D}, q.options());
      q = torch::cat({q, zeros}, 2), k = torch::cat({k, zeros}, 2), v = torch::cat({v, zeros}, 2);
      auto tail = torch::ones({B, Tp - T}, bopts);
      key_pad = torch::cat({pad.defined() ? pad : torch::zeros({B, T}, bopts), tail}, 1);
    }
    // Permuted coordinate p = r * L + s holds original position s * d + r.
    auto p_all = torch::arange(Tp, lopts);
    auto perm = (p_all % L) * d + p_all.div(L, "floor"), inv = torch::empty_like(perm).scatter_(0, perm, p_all);
    const int64_t left = std::min(window_, L - 1), right = causal ? 0 : left;
    const int64_t b = std::clamp<int64_t>(std::max<int64_t>(window_, 1), 1, std::min(kMaxBlock, L));
    const int64_t N = (Tp + b - 1) / b, m = b + left + right;
    auto qp = torch::arange(N * b, lopts).view({N, b, 1});                               // query, permuted
    auto kp = (torch::arange(N, lopts) * b - left).view({N, 1, 1}) + torch::arange(m, lopts).view({1, 1, m});  // [N, 1, m]
    auto kvalid = (kp >= 0) & (kp < Tp);
    auto rel = kp - qp;
    auto allowed = kvalid & (qp < Tp) & (kp.div(L, "floor") == qp.div(L, "floor")) & (rel >= -left) & (rel <= right);
    KeySlots slots{torch::where(kvalid, perm.index_select(0, kp.clamp(0, Tp - 1).view(-1)).view({N, 1, m}),
                                torch::full({N, 1, m}, -1, lopts)).view({1, 1, N, m}),
                   allowed.view({1, 1, N, b, m})};
    auto qg = q.index_select(2, perm);
    if (N * b > Tp) qg = torch::cat({qg, torch::zeros({B, nh, N * b - Tp, D}, q.options())}, 2);
    std::unique_ptr<ExtraKeys> ex;
    if (extra) {
      auto ea = extra->allowed.expand({B, 1, T, extra->allowed.size(3)});
      if (Tp > T) ea = torch::cat({ea, torch::zeros({B, 1, Tp - T, ea.size(3)}, bopts)}, 2);
      ea = ea.index_select(2, perm);
      if (N * b > Tp) ea = torch::cat({ea, torch::zeros({B, 1, N * b - Tp, ea.size(3)}, bopts)}, 2);
      ex = std::make_unique<ExtraKeys>(ExtraKeys{extra->k.narrow(1, h0, nh), extra->v.narrow(1, h0, nh),
                                                 ea.view({B, 1, N, b, ea.size(3)})});
    }
    auto out = gathered_attention(qg.view({B, nh, N, b, D}), k, v, slots, key_pad, ex.get()).out;
    return out.view({B, nh, N * b, D}).narrow(2, 0, Tp).index_select(2, inv).narrow(2, 0, T);
  }

  // The state of a causal stream, checked; globals come from the options only while streaming.
  static WindowCache* stream_cache(const MixContext& ctx) {
    auto* cache = dynamic_cast<WindowCache*>(ctx.state);
    TORCH_CHECK(cache, "longformer: the state passed was not made by this mixer");
    TORCH_CHECK(ctx.causal, "longformer: streaming needs causal mode");
    if (ctx.global_mask.defined() && ctx.global_mask.any().item<bool>())
      throw Error("longformer: streaming takes global tokens from global_first and global_positions only, not "
                  "from a global-token mask");
    return cache;
  }

  // Causal decoding: new rows attend to the cached and new keys within each head's dilated window.
  torch::Tensor stream(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& pad,
                       const MixContext& ctx) {
    auto* cache = stream_cache(ctx);
    const int64_t B = q.size(0), T = q.size(2), cached = cache->k.defined() ? cache->k.size(2) : 0;
    auto lopts = q.options().dtype(torch::kLong), bopts = q.options().dtype(torch::kBool);
    auto keys = cached ? torch::cat({cache->k, k}, 2) : k, vals = cached ? torch::cat({cache->v, v}, 2) : v;
    const int64_t S = keys.size(2), first = cache->length - cached;  // absolute position of keys[0]
    auto key_pad = cache->key_padding.defined() || pad.defined()
                       ? torch::cat({cache->key_padding.defined() ? cache->key_padding
                                                                  : torch::zeros({B, cached}, bopts),
                                     pad.defined() ? pad : torch::zeros({B, T}, bopts)},
                                    1)
                       : torch::Tensor();
    auto dil = torch::ones({heads_}, lopts);
    if (dilation_ > 1) dil.narrow(0, 0, dilated_heads_).fill_(dilation_);
    auto rel = (torch::arange(S, lopts) + first).view({1, 1, S}) - (torch::arange(T, lopts) + cache->length).view({1, T, 1});
    auto dv = dil.view({heads_, 1, 1});
    auto allowed = (rel <= 0) & (rel >= -window_ * dv) & (rel.remainder(dv) == 0);  // [H, T, S]
    KeySlots slots{torch::arange(S, lopts).view({1, 1, 1, S}), allowed.view({1, heads_, 1, T, S})};
    auto out = gathered_attention(q.unsqueeze(2), keys, vals, slots, key_pad).out.squeeze(2);
    const int64_t keep = std::min(S, window_ * std::max<int64_t>(dilation_, 1));
    cache->k = keys.narrow(2, S - keep, keep).detach();
    cache->v = vals.narrow(2, S - keep, keep).detach();
    cache->key_padding = key_pad.defined() ? key_pad.narrow(1, S - keep, keep) : torch::Tensor();
    cache->length += T;
    return out;
  }

  // Causal decoding with configured global tokens: a global row sees every earlier key, so the chunk's rows are
  // recomputed over the cached prefix (O(S w) per step instead of O(w)). x: [B, T, C] -> [B, T, C] before out_.
  // `in`: the mixer's input x [B, T, C] (time_dim 1) or a core's q, k, v as [B, H, T, 3 D] (time_dim 2)
  // -> [B, H, T, D].
  torch::Tensor stream_with_globals(torch::Tensor in, int64_t time_dim, torch::Tensor pad, const MixContext& ctx) {
    auto* cache = stream_cache(ctx);
    const int64_t B = in.size(0), T = in.size(time_dim);
    if (!pad.defined()) pad = torch::zeros({B, T}, in.options().dtype(torch::kBool));
    if (cache->x.defined()) in = torch::cat({cache->x, in}, time_dim), pad = torch::cat({cache->pad, pad}, 1);
    cache->x = in.detach(), cache->pad = pad;
    const int64_t S = in.size(time_dim);
    cache->length = S;
    torch::Tensor x;
    std::vector<torch::Tensor> qkv;
    if (time_dim == 1) {
      x = in;
      for (const auto& part : qkv_(x).chunk(3, -1)) qkv.push_back(split_heads(part, heads_));
    } else {
      qkv = in.chunk(3, -1);
    }
    MixContext whole;
    auto is_global = global_set(B, S, whole, pad, in.device());
    return attend(x, qkv[0], qkv[1], qkv[2], pad, is_global, true).narrow(2, S - T, T);
  }

  int64_t heads_, window_, dilation_, dilated_heads_;
  bool global_first_;
  std::vector<int64_t> global_positions_;
  std::string kernel_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr}, qkv_global_{nullptr};
};

}  // namespace

MixerInfo longformer_mixer_info() {
  MixerInfo info;
  info.name = "longformer";
  info.summary = "sliding-window + dilated + global attention, O(T*w); ring-buffer cache for decoding";
  info.citation = "Beltagy, Peters, Cohan 2020, Longformer: The Long-Document Transformer, sec. 3";
  info.schema = {
      {"window", OptionType::IntList, Json::array({256}),
       "one-sided window w: keys i-w..i+w (causal: i-w..i); the paper's total window is 2w. One value for every "
       "layer, or one per layer (e.g. small low, large high, sec. 4.1)", 0, 1e9, {}, true},
      {"dilation", OptionType::IntList, Json::array({1}),
       "dilation stride per layer (1 = contiguous; the paper's 'dilation d' is stride d+1); one value or one per layer",
       1, 1e6, {}, true},
      {"dilated_heads", OptionType::Int, 2,
       "how many heads (the first ones) use the layer's dilation; the others stay contiguous (the paper: 2 of 8)", 0, 1e6},
      {"global_positions", OptionType::IntList, Json::array(),
       "positions with global attention in every sequence, counted from its first real (non-padding) token "
       "(besides the model's global-token mask); decoding with them recomputes the prefix", 0, 1e9},
      {"global_first", OptionType::Bool, false, "the first real token has global attention (a [CLS] token)"},
      {"global_projections", OptionType::Bool, true,
       "separate Q_g, K_g, V_g for the global rows, initialized as copies of the local ones (sec. 3.1)"},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
      {"kernel", OptionType::String, "auto",
       "attention core: auto (the fused block-sparse CPU kernel with a band mask when it supports the input, else "
       "the gathered reference), reference, or fused (error when unsupported); LONGSEQ_ATTENTION=reference forces "
       "reference", -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<LongformerImpl>(a); };
  // Windows of 5 (dilated: 2 heads of 4 see every other key) and a global first token.
  info.sparse_options = {{"window", Json::array({2})}, {"dilation", Json::array({2})}, {"global_first", true}};
  info.streams = true;
  info.attends = true;
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // the layer's first band (no dilation, no globals) on drawn q, k, v
    CoreRun r;
    for (int i = 0; i < 3; ++i) r.inputs.push_back(torch::randn({c.B, c.H, c.T, c.D}));
    const auto in = r.inputs;
    const BandSpec band{per_layer_value(c.options, "window", 0, "longformer"), 1, c.causal};
    r.run = [in, band, kernel = c.kernel] { return banded_attention(in[0], in[1], in[2], band, {}, kernel).out; };
    r.flops = banded_attention_flops(c.B, c.H, c.T, c.D, band);
    return r;
  };
  info.flops = [](const FlopQuery& f) {
    const int64_t w = per_layer_value(f.options, "window", 0, "longformer");
    const double keys = std::min<double>(f.T, f.causal ? w + 1 : 2 * w + 1);
    return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * keys * f.C;
  };
  return info;
}

}  // namespace longseq
