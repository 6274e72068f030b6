// "luna": Linear Unified Nested Attention. Ma et al. 2021, sec. 3 (pack and
// unpack attention, the Luna layer) and its causal variant (the official
// LunarCausalAttention).
// Bidirectional: pack Y_P = softmax_T(P Wpq (X Wpk)^T / sqrt(D)) X Wpv (l packed
// slots attend to the sequence), unpack Y_X = softmax_l(X Wq (Y_P Wk)^T / sqrt(D))
// Y_P Wv Wo; the next layer gets P' = LN_P(P + Y_P) through the context (the
// first layer, and every layer inside a reversible stack, uses its own learned P).
// Causal: w_j = omega(c_j . p_l), omega = softplus with beta = ln 2 (omega(0) = 1);
// logits a_t = (1/t) sum_{j<=t} (q_t . k_j) w_j, alpha_t = softmax_l(a_t),
// out_t = (1/t) sum_{j<=t} (alpha_t . w_j) v_j: two causal prefix products, so
// decoding keeps O(D l) state. P is a learned input there, never updated.
// t counts real tokens only (the official code counts padding too), so left
// padding changes nothing.
#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/linear_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

constexpr const char* kCarryKey = "luna.packed";

struct LunaState : MixerState {
  torch::Tensor logit_sums;  // [B, H, D, l]: sum of k_j w_j^T
  torch::Tensor value_sums;  // [B, H, l, D]: sum of w_j v_j^T
  torch::Tensor count;       // [B]: real tokens so far
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({logit_sums, value_sums, count}), "luna");
    logit_sums = select_rows(logit_sums, i), value_sums = select_rows(value_sums, i), count = select_rows(count, i);
  }
};

torch::nn::Linear linear(int64_t C, bool bias) { return torch::nn::Linear(torch::nn::LinearOptions(C, C).bias(bias)); }

class LunaImpl : public MixerImpl {
 public:
  explicit LunaImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        tied_(a.options["tied"]),
        softplus_(a.options["activation"].get<std::string>() == "softplus"),
        chunk_(a.options["chunk"]) {
    const int64_t C = a.d_model, L = a.options["length"];
    const bool bias = a.options["bias"].get<bool>();
    q_ = register_module("q", linear(C, bias));
    pack_q_ = register_module("pack_q", linear(C, bias));
    pack_k_ = register_module("pack_k", linear(C, bias));
    if (!tied_) pack_v_ = register_module("pack_v", linear(C, bias));
    k_ = register_module("k", linear(C, bias));
    if (!tied_) v_ = register_module("v", linear(C, bias));
    out_ = register_module("out", linear(C, bias));
    packed_ = register_parameter("packed", torch::randn({L, C}) / std::sqrt(double(C)));  // the paper's init
    norm_ = register_module("packed_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "luna: x must be [B, T, C], got ", x.sizes());
    auto* st = ctx.state ? dynamic_cast<LunaState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || st, "luna: the state passed was not made by this mixer");
    TORCH_CHECK(!st || ctx.causal, "luna: streaming needs causal mode");
    return out_(merge_heads(ctx.causal ? causal(x, ctx.padding_mask, st) : bidirectional(x, ctx)));
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<LunaState>(); }

 private:
  torch::Tensor bidirectional(const torch::Tensor& x, MixContext& ctx) {
    const int64_t B = x.size(0);
    const bool carried = ctx.carry_allowed && ctx.carry.count(kCarryKey);
    auto P = carried ? ctx.carry[kCarryKey] : packed_.unsqueeze(0).expand({B, packed_.size(0), packed_.size(1)});
    AttentionMask keys;
    keys.key_padding = ctx.padding_mask;
    auto pk = split_heads(pack_k_(x), heads_);
    auto pv = tied_ ? pk : split_heads(pack_v_(x), heads_);
    auto yp = merge_heads(exact_attention(split_heads(pack_q_(P), heads_), pk, pv, keys));  // pack: softmax over T
    auto k = split_heads(k_(yp), heads_);
    auto v = tied_ ? k : split_heads(v_(yp), heads_);
    auto y = exact_attention(split_heads(q_(x), heads_), k, v, AttentionMask{});  // unpack: softmax over l
    if (ctx.carry_allowed) ctx.carry[kCarryKey] = norm_(P + yp);  // P' for the next layer (no FFN on P)
    return y;
  }

  torch::Tensor causal(const torch::Tensor& x, const torch::Tensor& padding, LunaState* st) {
    const int64_t B = x.size(0), T = x.size(1);
    const double scale = 1.0 / std::sqrt(double(head_dim_));
    auto p = split_heads(pack_q_(packed_).unsqueeze(0), heads_) * scale;  // [1, H, l, D]
    auto s = torch::matmul(split_heads(pack_k_(x), heads_), p.transpose(-1, -2));  // [B, H, T, l]
    auto w = softplus_ ? torch::nn::functional::softplus(s, torch::nn::functional::SoftplusFuncOptions().beta(std::log(2.0)))
                       : torch::elu(s) + 1;
    auto real = padding.defined() ? (~padding.to(torch::kBool)).to(x.dtype()) : torch::ones({B, T}, x.options());
    w = w * real.view({B, 1, T, 1});  // a padded token packs nothing
    auto count = torch::cumsum(real, 1);
    if (st && st->count.defined()) count = count + st->count.unsqueeze(1);
    if (st) st->count = count.select(1, T - 1).detach();
    auto inv_t = (1.0 / count.clamp_min(1.0)).view({B, 1, T, 1});
    auto k = split_heads(k_(x), heads_);
    auto v = tied_ ? k : split_heads(v_(x), heads_);
    auto q = split_heads(q_(x), heads_) * scale;
    auto a = causal_prefix_products(q, k, w, chunk_, st ? &st->logit_sums : nullptr) * inv_t;
    auto alpha = torch::softmax(a, -1);
    return causal_prefix_products(alpha, w, v, chunk_, st ? &st->value_sums : nullptr) * inv_t;
  }

  int64_t heads_, head_dim_;
  bool tied_, softplus_;
  int64_t chunk_;
  torch::nn::Linear q_{nullptr}, pack_q_{nullptr}, pack_k_{nullptr}, pack_v_{nullptr}, k_{nullptr}, v_{nullptr},
      out_{nullptr};
  torch::Tensor packed_;
  torch::nn::LayerNorm norm_{nullptr};
};

}  // namespace

MixerInfo luna_mixer_info() {
  MixerInfo info;
  info.name = "luna";
  info.summary = "pack the sequence into l slots, unpack back: O(T l D); causal by two prefix products";
  info.citation = "Ma et al. 2021, Luna: Linear Unified Nested Attention, sec. 3";
  info.schema = {
      {"length", OptionType::Int, 16, "l packed slots (the paper's LRA default 16; 32 for WMT, 128-256 for MLM)", 1,
       1e5},
      {"tied", OptionType::Bool, true, "one projection for keys and values, in pack and in unpack (the paper's default)"},
      {"activation", OptionType::String, "softplus", "causal pack weight omega: softplus with beta = ln 2 (the latest "
                                                     "official code) or elu+1 (an earlier revision)", -1e300, 1e300,
       {"softplus", "elu"}},
      {"chunk", OptionType::Int, 64, "causal: positions per chunk of the prefix products", 1, 1e6},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<LunaImpl>(a); };
  info.sparse_options = {{"length", 3}, {"chunk", 4}};  // fewer slots than tokens; several prefix chunks
  info.streams = true;
  info.flops = [](const FlopQuery& f) {  // projections of x; pack and unpack products (causal: omega and two prefix products)
    const double L = f.options["length"].get<double>(), proj = f.options["tied"].get<bool>() ? 4 : 5;
    if (!f.causal) return 2.0 * f.B * f.T * f.C * f.C * (proj - 1) + 8.0 * f.B * f.T * L * f.C;
    const double c = std::min<double>(f.options["chunk"].get<double>(), f.T);
    return 2.0 * f.B * f.T * f.C * f.C * proj + 2.0 * f.B * f.T * L * f.C + 8.0 * f.B * f.T * L * f.C +
           2.0 * f.B * f.T * c * (2 * f.C + L * f.H);
  };
  return info;
}

}  // namespace longseq
