// "full": exact multi-head scaled dot-product attention.
// Vaswani et al. 2017, "Attention Is All You Need", sec. 3.2.1-3.2.2.
// Cost O(T^2 * C) time; memory O(T^2 * H) on the reference kernel, O(T * C)
// on the fused CPU kernel (kernels/cpu/flash_attention.cpp).
// Streams through a KV cache (incremental decoding, causal mode only).
// `chunk = c`: attention only inside non-overlapping chunks of c positions counted from position 0 (GSS-Hybrid's
// local attention, Mehta et al. 2022, sec. 3.3), O(T c) time; decoding keeps only the current chunk's keys.
#include "longseq/common.h"
#include "longseq/kernels/attention_reference.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/growing_cache.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

torch::Tensor append_padding(const torch::Tensor& cached, int64_t cached_len,
                             const torch::Tensor& next, int64_t B, int64_t T) {
  if (!cached.defined() && !next.defined()) return {};
  auto opts = (next.defined() ? next : cached).options().dtype(torch::kBool);  // the device of the padding given
  auto a = cached.defined() ? cached.to(opts.device()) : torch::zeros({B, cached_len}, opts);
  auto b = next.defined() ? next.to(torch::kBool) : torch::zeros({B, T}, opts);
  return torch::cat({a, b}, 1);
}

namespace {

struct KvCache : MixerState {
  GrowingCache k, v;          // [B, H, S, D]
  torch::Tensor key_padding;  // [B, S] or undefined
  int64_t length = 0;
  std::map<std::string, torch::Tensor> tensors() const override { return {{"k", k.view()}, {"v", v.view()}}; }
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, k.rows() >= 0 ? k.rows() : rows_of({key_padding}), "full");
    k.reorder(i), v.reorder(i), key_padding = select_rows(key_padding, i);
  }
};

class FullAttentionImpl : public MixerImpl {
 public:
  explicit FullAttentionImpl(const MixerArgs& a)
      : heads_(a.n_heads), chunk_(a.options["chunk"]), dropout_(a.options["dropout"].get<double>()),
        kernel_(a.options["kernel"]) {
    if (a.core_only) return;  // the host layer projects
    const bool bias = a.options["bias"].get<bool>();
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "full: x must be [B, T, C], got ", x.sizes());
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                           MixContext& ctx) override {
    const int64_t B = q_in.size(0), T = q_in.size(2);
    auto q = q_in, k = k_in, v = v_in;
    if (ctx.rotary) {  // positions offset + i; cached keys were rotated at their own positions
      auto pos = torch::arange(ctx.offset, ctx.offset + T, torch::TensorOptions().dtype(torch::kLong).device(q.device()));
      q = apply_rotary(q, pos, *ctx.rotary);
      k = apply_rotary(k, pos, *ctx.rotary);
    }
    if (chunk_ > 0) return chunked(q, k, v, ctx, B, T);
    AttentionMask mask{ctx.causal, ctx.padding_mask};
    if (ctx.state) {
      auto* cache = dynamic_cast<KvCache*>(ctx.state);
      TORCH_CHECK(cache, "full: the state passed was not made by this mixer");
      TORCH_CHECK(ctx.causal, "full: streaming with a KV cache needs causal mode");
      k = cache->k.append(k);
      v = cache->v.append(v);
      mask.key_padding = append_padding(cache->key_padding, cache->length, ctx.padding_mask, B, T);
      cache->key_padding = mask.key_padding;
      cache->length += T;
    }
    if (mask.key_padding.defined()) mask.key_padding = mask.key_padding.to(q.device());
    return exact_attention(q, k, v, mask, kernel_, dropout_, is_training());
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override {
    return std::make_unique<KvCache>();
  }

 private:
  // Attention inside chunks of chunk_ positions: q, k, v [B, H, T, D] -> [B, H, T, D]. Whole sequences fold the
  // chunks into the batch (padded to a multiple; pads are masked keys); a state keeps the current chunk's keys.
  torch::Tensor chunked(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, MixContext& ctx,
                        int64_t B, int64_t T) {
    const int64_t c = chunk_, H = q.size(1), D = q.size(3);
    if (ctx.state) {
      auto* cache = dynamic_cast<KvCache*>(ctx.state);
      TORCH_CHECK(cache, "full: the state passed was not made by this mixer");
      TORCH_CHECK(ctx.causal, "full: streaming with a KV cache needs causal mode");
      std::vector<torch::Tensor> out;
      for (int64_t t = 0; t < T;) {  // pieces that end at a chunk boundary or at the input's end
        if (cache->length % c == 0) {  // a new chunk starts: its keys only
          cache->k = GrowingCache(), cache->v = GrowingCache();
          cache->key_padding = torch::Tensor();
        }
        const int64_t n = std::min(T - t, c - cache->length % c);
        auto pad = ctx.padding_mask.defined() ? ctx.padding_mask.narrow(1, t, n) : torch::Tensor();
        AttentionMask mask{true, {}};
        const int64_t held = cache->length % c;
        auto kk = cache->k.append(k.narrow(2, t, n)), vv = cache->v.append(v.narrow(2, t, n));
        mask.key_padding = append_padding(cache->key_padding, held, pad, B, n);
        cache->key_padding = mask.key_padding;
        cache->length += n;
        out.push_back(exact_attention(q.narrow(2, t, n), kk, vv, mask, kernel_, dropout_, is_training()));
        t += n;
      }
      return torch::cat(out, 2);
    }
    const int64_t n = (T + c - 1) / c, Tp = n * c;
    auto fold = [&](const torch::Tensor& x) {  // [B, H, T, D] -> [B n, H, c, D]
      return torch::constant_pad_nd(x, {0, 0, 0, Tp - T}).view({B, H, n, c, D}).transpose(1, 2).reshape({B * n, H, c, D});
    };
    torch::Tensor pad;
    if (ctx.padding_mask.defined() || Tp > T) {
      auto given = ctx.padding_mask.defined() ? ctx.padding_mask.to(torch::kBool)
                                              : torch::zeros({B, T}, q.options().dtype(torch::kBool));
      pad = torch::constant_pad_nd(given, {0, Tp - T}, 1).view({B * n, c});
    }
    auto y = exact_attention(fold(q), fold(k), fold(v), AttentionMask{ctx.causal, pad}, kernel_, dropout_, is_training());
    return y.view({B, n, H, c, D}).transpose(1, 2).reshape({B, H, Tp, D}).narrow(2, 0, T);
  }

  int64_t heads_, chunk_;
  double dropout_;
  std::string kernel_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo full_mixer_info() {
  MixerInfo info;
  info.name = "full";
  info.summary = "exact multi-head softmax attention, O(T^2); KV cache for decoding";
  info.citation = "Vaswani et al. 2017, Attention Is All You Need, sec. 3.2";
  info.schema = {
      {"dropout", OptionType::Float, 0.0, "dropout on the attention probabilities", 0.0, 1.0},
      {"bias", OptionType::Bool, true, "bias terms in the q/k/v and output projections"},
      {"chunk", OptionType::Int, 0, "attention only inside non-overlapping chunks of this many positions counted "
       "from position 0 (GSS-Hybrid's local attention: 512), O(T c); 0 = over the whole sequence", 0, 1 << 30},
      {"kernel", OptionType::String, "auto",
       "attention core: auto (fused FlashAttention-2 CPU kernel when it supports the input, else reference), "
       "reference, or fused (error when unsupported); LONGSEQ_ATTENTION=reference forces reference",
       -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<FullAttentionImpl>(a); };
  info.no_sparse_regime = "exact softmax attention at every length";
  info.streams = true;
  info.attends = true;
  info.rotary = true;
  info.flops = [](const FlopQuery& f) {  // q, k, v, out projections + QK^T and PV (half of them when causal)
    const int64_t c = f.options.value("chunk", int64_t{0});
    const double attn = 4.0 * f.B * f.T * (c > 0 ? std::min<int64_t>(c, f.T) : f.T) * f.C;
    return 8.0 * f.B * f.T * f.C * f.C + (f.causal ? attn / 2 : attn);
  };
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // softmax(QK^T / sqrt(D)) V on drawn q, k, v
    CoreRun r;
    for (int i = 0; i < 3; ++i) r.inputs.push_back(torch::randn({c.B, c.H, c.T, c.D}));
    const auto in = r.inputs;
    const AttentionMask mask{c.causal, {}};
    r.run = [in, mask, kernel = c.kernel] { return exact_attention(in[0], in[1], in[2], mask, kernel); };
    const double f = 4.0 * c.B * c.H * c.T * c.T * c.D;  // QK^T and PV, half of them when causal
    r.flops = c.causal ? f / 2 : f;
    return r;
  };
  return info;
}

}  // namespace longseq
