// "sparse_qkv": the Scaling Transformer's sparse QKV attention (Jaszczur et al. 2021, "Sparse is Enough in Scaling
// Transformers", sec. 3.2, Fig. 4b).
//   P = FactoredDense(x)                     [B, T, S, M]  (Fig. 4a; one P shared by Q, K and V)
//   Q = Conv_q(P), K = Conv_k(P)             kernel time_kernel x module_kernel over (time, module), M -> M channels,
//                                            weights shared across modules; modules zero-padded, time causal
//   V = Conv_v(P)                            kernel time_kernel x 1
//   Y = Out(merge_heads(Attend(Q, K, V))), Out = identity by default (no W_O, as the official code)
// Attend is exact softmax attention (the paper's layer) or the attention core of any mixer that has one
// (MixerInfo::attends: longformer, bigbird, routing, linear, performer, ...), built without projections: the paper
// says sparse QKV is usable with any attention; the core then sees this layer's Q, K and V.
// Heads split the flattened [S M] features contiguously, so with S = H module s is head s.
// Cost per token: C S + C^2 multiply-adds for P (the gated copies x * D_s, then S products [C] x [C, M]),
// (2 time_kernel module_kernel + time_kernel) M^2 S for the convolutions, plus exact attention O(T C).
// Decoding keeps the last time_kernel - 1 rows of P and the core's state (a KV cache for exact attention).
// Bidirectional mode centres the time kernel: left pad time_kernel / 2 rows, right pad the rest (the paper and the
// code only define the causal decoder layer; this is our encoder extension).
#include "longseq/common.h"
#include "longseq/factored_dense.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

#include <algorithm>
#include <cmath>

namespace longseq {

MixerInfo sparse_qkv_mixer_info();

namespace {

struct SparseQkvState : MixerState {
  torch::Tensor p_tail;                   // [B, time_kernel - 1, S, M]: the last rows of P (zero at pads); undefined at the start
  std::unique_ptr<MixerState> core;       // the attention core's own state
  std::map<std::string, torch::Tensor> tensors() const override {
    auto out = core->tensors();
    out["p_tail"] = p_tail;
    return out;
  }
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({p_tail}), "sparse_qkv");
    core->reorder(i);
    p_tail = select_rows(p_tail, i);
  }
};

// The core's spec: `core` as given; exact attention ("full") takes this layer's dropout and kernel options, which
// another core refuses (it has options of its own).
MixerSpec core_spec(const Json& options) {
  const Json& given = options["core"];
  const Json defaults = validate_options(Json::object(), sparse_qkv_mixer_info().schema, "sparse_qkv");
  const bool own = options["dropout"] != defaults["dropout"] || options["kernel"] != defaults["kernel"];
  if (given.is_string() && given.get<std::string>() == "full") {
    Json spec = {{"name", "full"}, {"dropout", options["dropout"]}, {"kernel", options["kernel"]}};
    return parse_mixer_spec(spec, "sparse_qkv.core");
  }
  if (own)
    throw Error("sparse_qkv: dropout and kernel configure the built-in exact core (core \"full\"); with core " +
                json_excerpt(given) + " set them inside the core's own spec");
  return parse_mixer_spec(given, "sparse_qkv.core");
}

// A conv kernel [kt, km, M in, M out], Glorot uniform with fans counting the receptive field (as trax's Conv).
// Kept in this layout so that the convolution is one matmul whose weight gradient is a plain contiguous tensor.
torch::Tensor sparse_qkv_conv_init(int64_t M, int64_t kt, int64_t km) {
  const double fan = static_cast<double>(M * kt * km);
  const double limit = std::sqrt(6.0 / (2.0 * fan));
  return torch::empty({kt, km, M, M}).uniform_(-limit, limit);
}

// out[b, t, s, o] = bias[o] + sum_{dt, ds, i} w[dt, ds, i, o] in[b, t + dt, s + ds, i] (a VALID convolution over
// time and modules): in [B, T + kt - 1, S + km - 1, M] -> [B, T, S M], by im2col and one matmul.
torch::Tensor sparse_qkv_conv(const torch::Tensor& in, const torch::Tensor& w, const torch::Tensor& bias) {
  const int64_t kt = w.size(0), km = w.size(1), M = w.size(3);
  auto patches = in.unfold(1, kt, 1).unfold(2, km, 1);  // [B, T, S, M, kt, km]
  const int64_t B = patches.size(0), T = patches.size(1), S = patches.size(2);
  auto cols = patches.permute({0, 1, 2, 4, 5, 3}).reshape({B * T * S, kt * km * M});
  auto out = torch::matmul(cols, w.view({kt * km * M, M}));
  if (bias.defined()) out = out + bias;
  return out.view({B, T, S * M});
}

class SparseQkvImpl : public MixerImpl {
 public:
  explicit SparseQkvImpl(const MixerArgs& a)
      : C_(a.d_model), H_(a.n_heads), S_(a.options["modules"].get<int64_t>()),
        kt_(a.options["time_kernel"].get<int64_t>()), km_(a.options["module_kernel"].get<int64_t>()),
        output_(a.options["output"]) {
    if (S_ == 0) S_ = H_;  // sec. 3.2: one module per head
    if (C_ % S_ != 0)
      throw Error("sparse_qkv.modules: " + std::to_string(S_) + " must divide d_model " + std::to_string(C_));
    if (km_ % 2 != 1)
      throw Error("sparse_qkv.module_kernel: " + std::to_string(km_) +
                  " must be odd (the module axis is zero-padded symmetrically)");
    M_ = C_ / S_;
    const bool bias = a.options["bias"].get<bool>();
    factored_ = register_module("factored", FactoredDense(C_, S_, M_, bias));
    wq_ = register_parameter("conv_q", sparse_qkv_conv_init(M_, kt_, km_));
    wk_ = register_parameter("conv_k", sparse_qkv_conv_init(M_, kt_, km_));
    wv_ = register_parameter("conv_v", sparse_qkv_conv_init(M_, kt_, 1));  // Fig. 4b: V mixes no modules
    if (bias) {
      bq_ = register_parameter("conv_q_bias", torch::zeros({M_}));
      bk_ = register_parameter("conv_k_bias", torch::zeros({M_}));
      bv_ = register_parameter("conv_v_bias", torch::zeros({M_}));
    }
    core_ = register_module("core", make_core(core_spec(a.options), C_, H_, a.layer_index, "sparse_qkv.core"));
    if (output_ == "mult") out_mult_ = register_module("out", FactoredDense(C_, S_, M_, bias));
    if (output_ == "dense")
      out_dense_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(C_, C_).bias(bias)));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == C_, "sparse_qkv: x must be [B, T, ", C_, "], got ", x.sizes());
    TORCH_CHECK(x.is_floating_point(), "sparse_qkv: x must be floating point, got ", x.scalar_type());
    const int64_t B = x.size(0), T = x.size(1);
    auto p = factored_(x);
    // Pads become the conv's own zero padding, so padding neither feeds the real tokens nor depends on its side.
    if (ctx.padding_mask.defined())
      p = p.masked_fill(ctx.padding_mask.to(x.device()).to(torch::kBool).unsqueeze(-1), 0);
    p = p.reshape({B, T, S_, M_});

    auto* state = ctx.state ? dynamic_cast<SparseQkvState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || state, "sparse_qkv: the state passed was not made by this mixer");
    TORCH_CHECK(!state || ctx.causal, "sparse_qkv: streaming needs causal mode");
    TORCH_CHECK(!state || state->core, "sparse_qkv: its core does not stream");
    torch::Tensor padded;  // [B, T + time_kernel - 1, S, M]: P with its time context
    if (ctx.causal) {      // sec. 3.2: causal in time, the remembered rows (or zeros) before the first
      auto before = state && state->p_tail.defined() ? state->p_tail : torch::zeros({B, kt_ - 1, S_, M_}, p.options());
      padded = torch::cat({before, p}, 1);
    } else {
      const int64_t left = kt_ / 2;
      padded = torch::constant_pad_nd(p, {0, 0, 0, 0, left, kt_ - 1 - left});
    }
    const int64_t half = (km_ - 1) / 2;
    auto pm = torch::constant_pad_nd(padded, {0, 0, half, half});  // zero modules past the ends, never wrapped
    auto q = split_heads(sparse_qkv_conv(pm, wq_, bq_), H_);
    auto k = split_heads(sparse_qkv_conv(pm, wk_, bk_), H_);
    auto v = split_heads(sparse_qkv_conv(padded, wv_, bv_), H_);  // Fig. 4b: V's kernel spans one module

    MixContext core_ctx = ctx;
    core_ctx.state = state ? state->core.get() : nullptr;
    auto y = merge_heads(core_->attend_qkv(q, k, v, core_ctx));
    // Advanced only once the core has taken the chunk. Detached, as a KV cache keeps its rows: a stateful training
    // step must not backpropagate into the last one.
    if (state) state->p_tail = padded.narrow(1, padded.size(1) - (kt_ - 1), kt_ - 1).detach();
    if (out_mult_) return out_mult_(y);
    if (out_dense_) return out_dense_(y);
    return y;  // trax's default output_layer_type 'none': no W_O
  }

  std::unique_ptr<MixerState> initial_state(int64_t batch) const override {
    auto core = core_->initial_state(batch);
    if (!core) return nullptr;  // e.g. routing: decoding recomputes
    auto s = std::make_unique<SparseQkvState>();
    s->core = std::move(core);
    return s;
  }

 private:
  int64_t C_, H_, S_, M_ = 0, kt_, km_;
  std::string output_;
  Mixer core_;
  FactoredDense factored_{nullptr}, out_mult_{nullptr};
  torch::nn::Linear out_dense_{nullptr};
  torch::Tensor wq_, wk_, wv_, bq_, bk_, bv_;
};

}  // namespace

MixerInfo sparse_qkv_mixer_info() {
  MixerInfo info;
  info.name = "sparse_qkv";
  info.summary = "Scaling Transformer sparse QKV: shared multiplicative dense, then time x module convolutions for "
                 "Q, K, V; exact softmax attention, KV cache for decoding";
  info.citation = "Jaszczur et al. 2021, Sparse is Enough in Scaling Transformers, sec. 3.2, Fig. 4";
  info.schema = {
      {"modules", OptionType::Int, 0,
       "S, modules of the multiplicative dense and of the convolutions (width d_model / S); 0 = n_heads", 0, 1 << 20},
      {"time_kernel", OptionType::Int, 3,
       "convolution width over time (causal: this many steps ending at the token; paper and code: 3)", 1, 1 << 10},
      {"module_kernel", OptionType::Int, 3,
       "Q and K convolution width over modules, odd, zero-padded at the ends (paper and code: 3; V uses 1)", 1,
       1 << 10},
      {"output", OptionType::String, "none",
       "output projection: none (the official code's default, no W_O), mult (a multiplicative dense) or dense",
       -1e300, 1e300, {"none", "mult", "dense"}},
      {"bias", OptionType::Bool, true, "bias terms in the multiplicative dense, the convolutions and the output"},
      {"core", OptionType::Any, "full",
       "the attention on this layer's Q, K, V: \"full\" (exact softmax attention, the paper's) or the spec of any "
       "mixer that has an attention core (`longseq info` marks them), e.g. {\"name\": \"longformer\", \"window\": "
       "[128]}; built without projections of its own, so the core's projection options (bias, longformer's "
       "global_projections) do nothing there"},
      {"dropout", OptionType::Float, 0.0, "dropout on the attention probabilities (core \"full\")", 0.0, 1.0},
      {"kernel", OptionType::String, "auto",
       "exact core (core \"full\"): auto (fused CPU kernel when it supports the input, else reference), reference, "
       "or fused", -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<SparseQkvImpl>(a); };
  // The defaults are already sparse at every T; this second configuration makes the invariant suite cover S != H,
  // a wider module kernel, an even time kernel and the mult output too.
  info.sparse_options = {{"modules", 8}, {"module_kernel", 5}, {"time_kernel", 2}, {"output", "mult"}};
  info.streams = true;  // with a core that streams; otherwise initial_state is null and decoding recomputes
  info.flops = [](const FlopQuery& f) {
    const double C = static_cast<double>(f.C);
    const int64_t s = f.options.value("modules", int64_t{0});
    const double S = static_cast<double>(s > 0 ? s : f.H), M = C / S;
    const double kt = static_cast<double>(f.options.value("time_kernel", int64_t{3}));
    const double km = static_cast<double>(f.options.value("module_kernel", int64_t{3}));
    const std::string out = f.options.value("output", std::string("none"));
    const double factored = C * S + C * C;  // gating x * D_s (C S), then S products [C] x [C, M] (C^2)
    const double convs = (2.0 * kt * km + kt) * M * M * S;
    const double proj = out == "mult" ? factored : out == "dense" ? C * C : 0.0;
    const double layer = 2.0 * f.B * f.T * (factored + convs + proj);
    const Json core = f.options.value("core", Json("full"));
    if (core.is_string() && core.get<std::string>() == "full") {
      const double attn = 4.0 * f.B * f.T * f.T * C;  // QK^T and PV, half of them when causal
      return layer + (f.causal ? attn / 2 : attn);
    }
    // Another core: its mixer's count less the projections it does not run here.
    const auto spec = parse_mixer_spec(core, "sparse_qkv.core");
    FlopQuery q = f;
    q.options = spec.options;
    return layer + core_flops(find_mixer(spec.name), q);
  };
  return info;
}

}  // namespace longseq
