// "block_recurrent": the Block-Recurrent Transformer's layer (Hutchins et al.
// 2022, "Block-Recurrent Transformers", sec. 3). The sequence is cut into
// blocks of W tokens at absolute positions 0, W, 2W, ... Every layer attends
// over a sliding window: token p sees exactly the W tokens p - W .. p - 1
// (itself excluded, as the official code's causal mask), with queries and keys
// L2-normalized per head, a T5 relative bias and a learned per-head scale in
// place of 1/sqrt(D) (sec. 3.1). The window's keys and values of the previous
// block are carried from call to call (the paper's XL cache), gradient stopped.
// With recurrent = true the layer also carries S state vectors (sec. 3.1-3.3):
// the tokens of block t cross-attend to the state s_t (vertical direction), and
// after the block s_t is updated (horizontal direction) from its own
// self-attention and its cross-attention to the block's 2W window keys, through
// the gates of sec. 3.2 (fixed or LSTM) in the skip, dual or single
// configuration of sec. 3.5. Keys and values are shared between directions;
// only the four queries differ. Learned state IDs are added after the state's
// norm (sec. 3.3); s_0 is learned. Within one call the state flows through the
// blocks differentiably (backprop through the segment); it is stored for the
// next call with gradients stopped (truncated BPTT at segment boundaries).
// The window runs on the fused relative-attention kernel
// (kernels/relative_attention.h): the T5 bias is its position term, the keys
// shifted by one make "exclude the diagonal" a distance bound, so memory is
// O(T) and no [T, 2W] logits are kept. Choices (docs/mechanisms.md): the trunk's
// LayerNorm comes before the mixer (the paper: RMS-style norm, scale only);
// the zero cache at a document start is masked by default (the official code
// attends to it, `initial_cache: zeros`).
#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/relative_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

// What a layer carries from one call to the next.
struct BlockRecurrentState : MixerState {
  torch::Tensor k, v;   // [B, H, r, D]: window keys (normalized) and values of positions [first, pos)
  torch::Tensor pad;    // [B, r] bool (true = never attended) or undefined
  torch::Tensor s;      // [B, S, C]: the state at the start of the current block; undefined = s_0
  torch::Tensor s_proj;  // [B, S, 4C] of s, kept under no-grad while the weights are unchanged
  int64_t s_proj_version = -1;
  int64_t first = 0;    // absolute position of cache row 0
  int64_t pos = 0;      // tokens consumed
  bool started = false;
  std::map<std::string, torch::Tensor> tensors() const override { return {{"k", k}, {"v", v}, {"s", s}}; }
  // first and pos are shared by all rows; an undefined s (s_0, broadcast) stays undefined.
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({k, s, s_proj}), "block_recurrent");
    k = select_rows(k, i), v = select_rows(v, i), pad = select_rows(pad, i);
    s = select_rows(s, i), s_proj = select_rows(s_proj, i);
  }
};

// T5's unidirectional bucket of a distance n >= 0 (Raffel et al. 2020): exact below buckets / 2, then logarithmic up
// to max_distance, the last bucket beyond.
int64_t t5_bucket(int64_t n, int64_t buckets, int64_t max_distance) {
  const int64_t exact = buckets / 2;
  if (n < exact) return n;
  const double scaled = std::log(static_cast<double>(n) / exact) / std::log(static_cast<double>(max_distance) / exact);
  return std::min<int64_t>(buckets - 1, exact + static_cast<int64_t>(scaled * static_cast<double>(buckets - exact)));
}

// x / |x| per head row (eps 1e-6 inside the root, as the official code).
torch::Tensor l2_normalize(const torch::Tensor& x) { return x * torch::rsqrt(x.square().sum(-1, true) + 1e-6); }

// A gate of sec. 3.2 onto the state s with candidate z, driven by the input h.
class GateImpl : public torch::nn::Module {
 public:
  GateImpl(const std::string& kind, int64_t in, int64_t C) : lstm_(kind == "lstm") {
    if (lstm_) {
      forget_ = register_module("forget", torch::nn::Linear(in, C));
      input_ = register_module("input", torch::nn::Linear(in, C));
      for (auto* l : {&forget_, &input_}) {  // sec. 3.4: kernels variance-scaling 0.1, biases N(0, 0.1)
        torch::NoGradGuard g;
        (*l)->weight.normal_(0.0, std::sqrt(0.1 / static_cast<double>(in)));
        (*l)->bias.normal_(0.0, 0.1);
      }
    } else {
      bias_ = register_parameter("bias", torch::randn({C}) * 0.1);  // sigma(b) starts near 0.5
    }
  }
  torch::Tensor forward(const torch::Tensor& s, const torch::Tensor& z, const torch::Tensor& h) {
    if (!lstm_) {  // fixed gate: a learned EMA over blocks
      auto g = torch::sigmoid(bias_);
      return s * g + z * (1 - g);
    }
    auto f = torch::sigmoid(forget_(h) + 1.0), i = torch::sigmoid(input_(h) - 1.0);  // the +1 / -1 offsets of sec. 3.2
    return s * f + z * i;
  }

 private:
  bool lstm_;
  torch::nn::Linear forget_{nullptr}, input_{nullptr};
  torch::Tensor bias_;
};
TORCH_MODULE(Gate);

class BlockRecurrentImpl : public MixerImpl {
 public:
  explicit BlockRecurrentImpl(const MixerArgs& a)
      : C_(a.d_model),
        H_(a.n_heads),
        D_(a.d_model / a.n_heads),
        W_(a.options["window"]),
        S_(a.options["states"]),
        buckets_(a.options["position_buckets"]),
        max_distance_(a.options["position_max_distance"]),
        recurrent_(a.options["recurrent"]),
        config_(a.options["config"]),
        attend_zero_cache_(a.options["initial_cache"].get<std::string>() == "zeros"),
        dropout_(a.options["dropout"]),
        kernel_(a.options["kernel"]) {
    if (buckets_ > 0 && max_distance_ <= buckets_ / 2)
      throw Error("mixer block_recurrent: position_max_distance (" + std::to_string(max_distance_) +
                  ") must exceed position_buckets / 2 (" + std::to_string(buckets_ / 2) + ")");
    const double scale = a.options["scale_init"];
    tokens_ = register_module("tokens", bias_free_linear(C_, (recurrent_ ? 4 : 3) * C_));  // k, v, q_self (, q_state)
    out_ = register_module("out", bias_free_linear((recurrent_ ? 2 : 1) * C_, C_));
    scale_self_ = register_parameter("scale_self", torch::full({H_}, scale));
    if (buckets_ > 0) position_bias_ = register_parameter("position_bias", torch::zeros({buckets_, H_}));
    if (!recurrent_) return;
    const int64_t F = a.options["state_ff"].get<int64_t>() > 0 ? a.options["state_ff"].get<int64_t>() : 4 * C_;
    scale_cross_ = register_parameter("scale_cross", torch::full({H_}, scale));
    scale_state_ = register_parameter("scale_state", torch::full({H_}, scale));
    scale_state_cross_ = register_parameter("scale_state_cross", torch::full({H_}, scale));
    state_norm_ = register_module("state_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C_})));
    state_ids_ = register_parameter("state_ids", torch::randn({S_, C_}));
    initial_ = register_parameter("initial_state", torch::randn({S_, C_}) * 0.1);  // s_0 ~ N(0, 0.1)
    state_ = register_module("state", bias_free_linear(C_, 4 * C_));                       // k, v, q_self, q_tokens
    const std::string gate = a.options["gate"];
    if (config_ == "single") {  // MLP on h, tanh, one gate (sec. 3.5)
      ff_in_ = register_module("ff_in", bias_free_linear(2 * C_, F));
      ff_out_ = register_module("ff_out", bias_free_linear(F, C_));
      gate_ = register_module("gate", Gate(gate, F, C_));
      return;
    }
    z_ = register_module("z", bias_free_linear(2 * C_, C_));
    gate_ = register_module("gate", Gate(gate, 2 * C_, C_));
    if (config_ == "dual") {  // plus the state's own MLP and a second gate in place of its residual
      ff_norm_ = register_module("ff_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C_})));
      ff_in_ = register_module("ff_in", bias_free_linear(C_, F));
      ff_out_ = register_module("ff_out", bias_free_linear(F, C_));
      gate_ff_ = register_module("gate_ff", Gate(gate, F, C_));
    }
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == C_, "block_recurrent: x must be [B, T, ", C_, "], got ", x.sizes());
    TORCH_CHECK(ctx.causal, "block_recurrent: the Block-Recurrent Transformer is causal (a language model's)");
    const int64_t B = x.size(0), T = x.size(1);
    BlockRecurrentState local;
    auto* st = &local;
    if (ctx.state) {
      st = dynamic_cast<BlockRecurrentState*>(ctx.state);
      TORCH_CHECK(st, "block_recurrent: the state passed was not made by this mixer");
      TORCH_CHECK(!st->k.defined() || st->k.size(0) == B, "block_recurrent: the state holds ", st->k.size(0),
                  " sequences, the input ", B);
    }
    start(*st, B, x);
    auto proj = tokens_(x).chunk(recurrent_ ? 4 : 3, -1);
    auto k = l2_normalize(split_heads(proj[0], H_)), v = split_heads(proj[1], H_);
    auto q = l2_normalize(split_heads(proj[2], H_));
    const int64_t r = st->pos - st->first;
    auto K = r > 0 ? torch::cat({st->k.to(x.dtype()), k}, 2) : k;
    auto V = r > 0 ? torch::cat({st->v.to(x.dtype()), v}, 2) : v;
    torch::Tensor pad;
    if (st->pad.defined() || ctx.padding_mask.defined()) pad = append_padding(st->pad, r, ctx.padding_mask, B, T);
    auto y = window_attention(q, K, V, pad, r);
    if (recurrent_) {
      auto cross = state_path(*st, l2_normalize(split_heads(proj[3], H_)), K, V, pad, r);
      y = torch::cat({y, cross}, -1);
    }
    remember(*st, K, V, pad, T);
    return out_(y);
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override {
    return std::make_unique<BlockRecurrentState>();
  }

 private:
  // A document start: the window's cache is W zero rows before position 0 (attended, as the official code) or none.
  void start(BlockRecurrentState& st, int64_t B, const torch::Tensor& like) const {
    if (st.started) return;
    st.started = true;
    st.pos = 0;
    st.first = attend_zero_cache_ ? -W_ : 0;
    if (attend_zero_cache_) st.k = st.v = torch::zeros({B, H_, W_, D_}, like.options());
  }

  // Token p attends to keys p - W .. p - 1 (sec. 3.1): with the keys shifted by one row, key j of the shifted rows
  // sits at distance d' = (true distance) - 1 in [0, W - 1], so the band is the relative kernel's max_distance.
  // q, K, V: [B, H, T, D], [B, H, r + T, D]; pad [B, r + T] or undefined -> [B, T, C].
  torch::Tensor window_attention(const torch::Tensor& q, const torch::Tensor& K, const torch::Tensor& V,
                                 const torch::Tensor& pad, int64_t r) {
    const int64_t B = q.size(0), T = q.size(2);
    const int64_t skip = r == 0 ? 1 : 0;  // with no earlier key the first query sees nothing: its output is 0
    auto out = torch::zeros({B, H_, T, D_}, q.options());
    if (T - skip > 0) {
      const int64_t n = T - skip, keys = r + T - 1;
      auto scale = scale_self_.view({1, H_, 1, 1}) * std::sqrt(static_cast<double>(D_));  // undoes the kernel's 1/sqrt(D)
      auto qu = q.narrow(2, skip, n) * scale;
      auto qv = torch::zeros({B, H_, n, D_}, q.options());
      qv.select(3, 0).fill_(1.0);  // qv . r_d = the first column of r_d: the bias alone
      RelativeMask mask;
      mask.memory = r == 0 ? 0 : r - 1;
      mask.max_distance = W_ - 1;
      if (pad.defined()) mask.key_padding = pad.narrow(1, 0, keys);
      auto o = relative_attention(qu.contiguous(), qv, K.narrow(2, 0, keys).contiguous(),
                                  V.narrow(2, 0, keys).contiguous(), bias_table(keys, q), mask, kernel_, dropout_,
                                  is_training());
      out = skip ? torch::cat({out.narrow(2, 0, 1), o}, 2) : o;
    }
    return merge_heads(out);
  }

  // r[h, d', 0] = scale_h * sqrt(D) * b_h(bucket(d' + 1)) for d' < W, zero elsewhere: [H, rows, D].
  torch::Tensor bias_table(int64_t rows, const torch::Tensor& like) {
    auto table = torch::zeros({H_, rows, D_}, like.options());
    if (buckets_ == 0) return table;
    const int64_t n = std::min(rows, W_);
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t d = 0; d < n; ++d) idx[static_cast<size_t>(d)] = t5_bucket(d + 1, buckets_, max_distance_);
    auto bucket = torch::tensor(idx, torch::kLong).to(like.device());
    auto bias = position_bias_.index_select(0, bucket).to(like.dtype()).t();  // [H, n]
    auto col = bias * scale_self_.view({H_, 1}).to(like.dtype()) * std::sqrt(static_cast<double>(D_));
    auto first = torch::cat({col.unsqueeze(-1), torch::zeros({H_, n, D_ - 1}, like.options())}, -1);
    return n == rows ? first : torch::cat({first, table.narrow(1, n, rows - n)}, 1);
  }

  // The recurrent cell over the blocks this call touches: the tokens' cross-attention to the state of their block
  // (vertical) and the state update after every block completed here (horizontal). -> [B, T, C].
  torch::Tensor state_path(BlockRecurrentState& st, const torch::Tensor& qs, const torch::Tensor& K,
                           const torch::Tensor& V, const torch::Tensor& pad, int64_t r) {
    const int64_t B = qs.size(0), T = qs.size(2), pos0 = st.pos;
    auto s = st.s.defined() ? st.s.to(qs.dtype()) : initial_.to(qs.dtype()).unsqueeze(0).expand({B, S_, C_});
    const double root = std::sqrt(static_cast<double>(D_));
    std::vector<torch::Tensor> parts;
    int64_t at = 0;  // query row of this call
    while (at < T) {
      const int64_t p = pos0 + at, block_start = p - p % W_, block_end = block_start + W_;
      const int64_t n = std::min(T - at, block_end - p);
      auto sp = state_projections(st, s);
      auto ks = sp[0], vs = sp[1];
      auto q = qs.narrow(2, at, n) * (scale_cross_.view({1, H_, 1, 1}) * root);
      parts.push_back(exact_attention(q.contiguous(), ks, vs, AttentionMask{}, kernel_));
      if (p + n == block_end) {  // block complete: s_{t+1} from s_t and the window [block_start - W, block_end)
        const int64_t from = std::max(st.first, block_start - W_) - (pos0 - r), rows = block_end - (pos0 - r) - from;
        AttentionMask window;
        if (pad.defined()) window.key_padding = pad.narrow(1, from, rows);
        s = update(s, sp, K.narrow(2, from, rows).contiguous(), V.narrow(2, from, rows).contiguous(), window);
        st.s_proj = torch::Tensor();
      }
      at += n;
    }
    st.s = s.detach();
    return merge_heads(torch::cat(parts, 2));
  }

  // k, v, q_self, q_tokens of the state, [B, H, S, D] each (queries and keys normalized); state IDs after the norm.
  std::vector<torch::Tensor> state_projections(BlockRecurrentState& st, const torch::Tensor& s) {
    const bool cacheable = !torch::GradMode::is_enabled();
    const int64_t version = static_cast<int64_t>(state_->weight._version() + state_ids_._version() +
                                                 state_norm_->weight._version() + state_norm_->bias._version());
    torch::Tensor proj;
    if (cacheable && st.s_proj.defined() && st.s_proj_version == version && st.s_proj.scalar_type() == s.scalar_type()) {
      proj = st.s_proj;
    } else {
      proj = state_(state_norm_(s) + state_ids_.to(s.dtype()));
      if (cacheable) st.s_proj = proj, st.s_proj_version = version;
    }
    auto c = proj.chunk(4, -1);
    return {l2_normalize(split_heads(c[0], H_)).contiguous(), split_heads(c[1], H_).contiguous(),
            l2_normalize(split_heads(c[2], H_)), l2_normalize(split_heads(c[3], H_))};
  }

  // The horizontal direction (sec. 3.1, 3.5): h = [state self-attention, state -> window cross-attention], then the
  // configured gates. kw, vw: the window's keys and values [B, H, rows, D].
  torch::Tensor update(const torch::Tensor& s, const std::vector<torch::Tensor>& sp, const torch::Tensor& kw,
                       const torch::Tensor& vw, const AttentionMask& window) {
    const double root = std::sqrt(static_cast<double>(D_));
    auto qself = (sp[2] * (scale_state_.view({1, H_, 1, 1}) * root)).contiguous();
    auto qtok = (sp[3] * (scale_state_cross_.view({1, H_, 1, 1}) * root)).contiguous();
    auto b_self = exact_attention(qself, sp[0], sp[1], AttentionMask{}, kernel_);
    auto b_cross = exact_attention(qtok, kw, vw, window, kernel_);
    auto h = torch::cat({merge_heads(b_self), merge_heads(b_cross)}, -1);  // [B, S, 2C]
    if (config_ == "single") {
      auto hidden = torch::relu(ff_in_(h));
      return gate_(s, torch::tanh(ff_out_(hidden)), hidden);
    }
    auto c = gate_(s, z_(h), h);
    if (config_ == "skip") return c;
    auto hidden = torch::relu(ff_in_(ff_norm_(c)));
    return gate_ff_(c, ff_out_(hidden), hidden);
  }

  // The cache for the next call: keys and values of [max(first, block_start(pos) - W), pos), gradient stopped.
  void remember(BlockRecurrentState& st, const torch::Tensor& K, const torch::Tensor& V, const torch::Tensor& pad,
                int64_t T) const {
    const int64_t r = st.pos - st.first, end = st.pos + T, block_start = end - end % W_;
    const int64_t first = std::max(st.first, block_start - W_), from = first - st.first, rows = r + T - from;
    st.k = K.narrow(2, from, rows).detach(), st.v = V.narrow(2, from, rows).detach();
    st.pad = pad.defined() ? pad.narrow(1, from, rows) : torch::Tensor();
    st.first = first, st.pos = end;
  }

  int64_t C_, H_, D_, W_, S_, buckets_, max_distance_;
  bool recurrent_;
  std::string config_;
  bool attend_zero_cache_;
  double dropout_;
  std::string kernel_;
  torch::nn::Linear tokens_{nullptr}, out_{nullptr}, state_{nullptr}, z_{nullptr}, ff_in_{nullptr}, ff_out_{nullptr};
  torch::nn::LayerNorm state_norm_{nullptr}, ff_norm_{nullptr};
  Gate gate_{nullptr}, gate_ff_{nullptr};
  torch::Tensor scale_self_, scale_cross_, scale_state_, scale_state_cross_, position_bias_, state_ids_, initial_;
};

}  // namespace

MixerInfo block_recurrent_mixer_info() {
  MixerInfo info;
  info.name = "block_recurrent";
  info.summary = "Block-Recurrent Transformer: sliding window over blocks of W with an XL cache, and a recurrent "
                 "state of S vectors updated through gates after every block";
  info.citation = "Hutchins et al. 2022, Block-Recurrent Transformers, sec. 3";
  info.schema = {
      {"window", OptionType::Int, 512, "block length W = attention window: token p sees tokens p - W .. p - 1", 1.0,
       1e9},
      {"recurrent", OptionType::Bool, true,
       "this layer carries the recurrent state (false: the paper's sliding-window \"Slide\" layer)"},
      {"states", OptionType::Int, 512, "state vectors S of the recurrent layer", 1.0, 1e9},
      {"gate", OptionType::String, "fixed", "state gate (sec. 3.2): fixed (a learned EMA) or lstm", -1e300, 1e300,
       {"fixed", "lstm"}},
      {"config", OptionType::String, "skip",
       "recurrent cell (sec. 3.5): skip (projection and one gate), dual (plus the state's MLP and a second gate), "
       "single (MLP with tanh, one gate)",
       -1e300, 1e300, {"skip", "dual", "single"}},
      {"state_ff", OptionType::Int, 0, "hidden width of the state's MLP (dual, single); 0 = 4 d_model", 0.0, 1e9},
      {"position_buckets", OptionType::Int, 32, "T5 relative-bias buckets of the window attention; 0 = no bias", 0.0,
       1e6},
      {"position_max_distance", OptionType::Int, 128, "distance at which the T5 buckets stop growing", 1.0, 1e9},
      {"initial_cache", OptionType::String, "masked",
       "at a document start: masked (no earlier keys) or zeros (W zero keys attended, as the official code)", -1e300,
       1e300, {"masked", "zeros"}},
      {"scale_init", OptionType::Float, 1.0, "initial learned per-head logit scale (queries and keys are L2-normalized)",
       1e-6, 1e6},
      {"dropout", OptionType::Float, 0.0, "dropout on the window attention's probabilities", 0.0, 1.0},
      {"kernel", OptionType::String, "auto",
       "attention cores: auto (fused CPU kernels when they support the input), reference or fused", -1e300, 1e300,
       {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<BlockRecurrentImpl>(a); };
  info.supports_bidirectional = false;
  info.sparse_options = {{"window", 4}, {"states", 3}};  // several blocks and state updates at T of 10-20
  info.streams = true;
  info.left_padding_changes =
      "blocks and state updates fall at absolute positions 0, W, 2W, ...: leading padding moves them";
  info.flops = [](const FlopQuery& f) {
    const int64_t W = f.options["window"], S = f.options["states"], C = f.C;
    const bool rec = f.options["recurrent"];
    const double blocks = static_cast<double>(f.T / W), BT = static_cast<double>(f.B * f.T);
    const double window = 4.0 * BT * static_cast<double>(std::min<int64_t>(W, f.T)) * C;  // QK and PV, W keys each
    double flops = 2.0 * BT * C * (rec ? 4 : 3) * C + 2.0 * BT * (rec ? 2 : 1) * C * C + window;
    if (rec) {
      const int64_t F = f.options["state_ff"].get<int64_t>() > 0 ? f.options["state_ff"].get<int64_t>() : 4 * C;
      const std::string cfg = f.options["config"];
      const double per_block = 2.0 * S * C * 4 * C + 4.0 * S * S * C + 4.0 * S * 2 * W * C +
                               (cfg == "single" ? 2.0 * S * (2 * C + C) * F : 2.0 * S * 2 * C * C) +
                               (cfg == "dual" ? 4.0 * S * C * F : 0.0);
      flops += 4.0 * BT * S * C + f.B * blocks * per_block;
    }
    return flops;
  };
  return info;
}

}  // namespace longseq
