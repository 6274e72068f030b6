// "xl": Transformer-XL's attention (Dai et al. 2019, "Transformer-XL: Attentive
// Language Models Beyond a Fixed-Length Context"). Segment-level recurrence
// (sec. 3.2): the keys and values of a segment are projected from the
// gradient-stopped inputs of the previous segments (the memory, at most
// mem_len rows) followed by the segment's own inputs. Relative positions
// (sec. 3.3): score = (q_i + u) . k_j + (q_i + v) . W_R R_{i-j}, with R the
// sinusoid of the distance (sin and cos halves concatenated, frequencies of
// d_model) and u, v learned per head. The core runs on the fused relative
// kernel (kernels/relative_attention.h), never on a T x (M + T) matrix.
// Choices: u, v and W_R belong to each layer (the official code's untie_r);
// the trunk's block is pre-norm, so the memory holds the mixer's normalized
// input (the official pre_lnorm form; LayerNorm acts per token, so this is
// the memory of the unnormalized input read through the current norm).
// same_length and clamp_len are the official code's evaluation options.
// Under no-grad (evaluation, generation) the memory's keys, values and the
// position table are kept and reused while the weights stay unchanged.
#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/growing_cache.h"
#include "longseq/kernels/relative_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

// What a layer carries from one segment to the next.
// The memory slides in growing caches: a decoding step copies its own row, not the M rows before it.
struct XlMemory : MixerState {
  GrowingCache mem;         // [B, 1, M, C]: the last inputs, gradient stopped
  torch::Tensor pad;        // [B, M] bool, or undefined (no padding so far)
  GrowingCache k, v;        // [B, H, M, D] of mem, when computed under no-grad
  int64_t kv_version = -1;  // the projection's version counter k and v were computed with (-1: none)
  int64_t length = 0;       // rows in mem

  torch::Tensor memory() const { return length > 0 ? mem.view().squeeze(1) : torch::Tensor(); }
  std::map<std::string, torch::Tensor> tensors() const override {
    if (length == 0) return {};
    return {{"mem", memory()}};
  }
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, length > 0 ? mem.rows() : -1, "xl");
    mem.reorder(i), k.reorder(i), v.reorder(i), pad = select_rows(pad, i);
  }
};

class XlAttentionImpl : public MixerImpl {
 public:
  explicit XlAttentionImpl(const MixerArgs& a)
      : C_(a.d_model),
        H_(a.n_heads),
        D_(a.d_model / a.n_heads),
        mem_len_(a.options["mem_len"]),
        clamp_len_(a.options["clamp_len"]),
        same_length_(a.options["same_length"]),
        dropout_(a.options["dropout"]),
        kernel_(a.options["kernel"]),
        table_(C_, H_, clamp_len_) {
    if (C_ % 2 != 0) throw Error("mixer xl: d_model must be even (sin and cos halves), got " + std::to_string(C_));
    if (same_length_ && mem_len_ < 1) throw Error("mixer xl: same_length needs mem_len >= 1");
    auto lin = [&](const char* name, int64_t out) {
      return register_module(name, torch::nn::Linear(torch::nn::LinearOptions(C_, out).bias(false)));
    };
    q_ = lin("q", C_);
    kv_ = lin("kv", 2 * C_);
    r_ = lin("r", C_);
    out_ = lin("out", C_);
    u_ = register_parameter("u", torch::randn({H_, D_}) * 0.02);  // N(0, 0.02) as the official init
    v_ = register_parameter("v", torch::randn({H_, D_}) * 0.02);
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == C_, "xl: x must be [B, T, ", C_, "], got ", x.sizes());
    TORCH_CHECK(ctx.causal, "xl: Transformer-XL attention is causal (a language model's); bidirectional is not defined");
    const int64_t B = x.size(0), T = x.size(1);
    XlMemory* st = nullptr;
    if (ctx.state) {
      st = dynamic_cast<XlMemory*>(ctx.state);
      TORCH_CHECK(st, "xl: the state passed was not made by this mixer");
      TORCH_CHECK(st->length == 0 || st->memory().size(0) == B, "xl: the state holds ", st->memory().size(0),
                  " sequences, the input ", B);
    }
    const int64_t M = st ? st->length : 0, K = M + T;
    auto q = split_heads(q_(x), H_);
    const bool reuse = st && M > 0 && !torch::GradMode::is_enabled() && st->kv_version >= 0 &&
                       st->k.length() == M && st->kv_version == static_cast<int64_t>(kv_->weight._version()) &&
                       st->memory().scalar_type() == x.scalar_type();
    torch::Tensor k, v, h;
    if (reuse) {  // the memory's keys and values are those of the previous call: project only the new rows
      auto kv = kv_(x).chunk(2, -1);
      k = st->k.append(split_heads(kv[0], H_));
      v = st->v.append(split_heads(kv[1], H_));
    } else {
      h = M > 0 ? torch::cat({st->memory().to(x.dtype()), x}, 1) : x;
      auto kv = kv_(h).chunk(2, -1);
      k = split_heads(kv[0], H_), v = split_heads(kv[1], H_);
    }
    RelativeMask mask;
    mask.memory = M;
    mask.max_distance = same_length_ ? mem_len_ - 1 : -1;
    if (st) mask.key_padding = append_padding(st->pad, M, ctx.padding_mask, B, T);
    else if (ctx.padding_mask.defined()) mask.key_padding = ctx.padding_mask.to(torch::kBool);
    if (mask.key_padding.defined()) mask.key_padding = mask.key_padding.to(x.device());
    auto y = relative_attention(q + u_.view({1, H_, 1, D_}), q + v_.view({1, H_, 1, D_}), k, v, positions(K, x),
                                mask, kernel_, dropout_, is_training());
    if (st) remember(*st, x, h, k, v, mask.key_padding, reuse);
    return out_(merge_heads(y));
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<XlMemory>(); }

 private:
  torch::Tensor positions(int64_t n, const torch::Tensor& like) { return table_.get(r_, n, like); }

  // The memory of the next segment: the last mem_len rows of (memory, input), gradient stopped (sec. 3.2).
  // With reuse, k and v are already in the caches (appended by forward); otherwise h = (memory, input).
  void remember(XlMemory& st, const torch::Tensor& x, const torch::Tensor& h, const torch::Tensor& k,
                const torch::Tensor& v, const torch::Tensor& pad, bool reuse) const {
    const bool graph = torch::GradMode::is_enabled() && k.requires_grad();
    torch::NoGradGuard ng;
    const int64_t K = st.length + x.size(1), keep = std::min<int64_t>(mem_len_, K), from = K - keep;
    st.pad = pad.defined() ? pad.narrow(1, from, keep) : torch::Tensor();
    st.length = keep;
    if (reuse) {
      st.mem.append(x.unsqueeze(1));
    } else {
      st.mem.clear();
      if (keep > 0) st.mem.append(h.narrow(1, from, keep).unsqueeze(1));
    }
    st.mem.keep_last(keep);
    if (reuse) {
      st.k.keep_last(keep), st.v.keep_last(keep);
    } else if (!graph) {
      st.k.clear(), st.v.clear();
      if (keep > 0) st.k.append(k.narrow(2, from, keep)), st.v.append(v.narrow(2, from, keep));
      st.kv_version = static_cast<int64_t>(kv_->weight._version());
    } else {
      st.k.clear(), st.v.clear();
      st.kv_version = -1;
    }
  }

  int64_t C_, H_, D_, mem_len_, clamp_len_;
  bool same_length_;
  double dropout_;
  std::string kernel_;
  torch::nn::Linear q_{nullptr}, kv_{nullptr}, r_{nullptr}, out_{nullptr};
  torch::Tensor u_, v_;
  RelativePositionTable table_;
};

}  // namespace

MixerInfo xl_mixer_info() {
  MixerInfo info;
  info.name = "xl";
  info.summary = "Transformer-XL: segment memory (gradient stopped) and relative positional attention, fused kernel";
  info.citation = "Dai et al. 2019, Transformer-XL, sec. 3.2-3.3, App. B";
  info.schema = {
      {"mem_len", OptionType::Int, 512,
       "memory length M: rows of earlier segments each layer keeps (the paper trains with M = segment length)", 0.0,
       1e9},
      {"same_length", OptionType::Bool, false,
       "every query sees the same number of keys, mem_len (official code's evaluation option; masks distance >= mem_len)"},
      {"clamp_len", OptionType::Int, -1, "distances above this share its position vector (official code); -1 = none",
       -1.0, 1e9},
      {"dropout", OptionType::Float, 0.0, "dropout on the attention probabilities (dropatt)", 0.0, 1.0},
      {"kernel", OptionType::String, "auto",
       "attention core: auto (fused CPU relative kernel when it supports the input, else reference), reference (the "
       "paper's shift trick on materialized scores) or fused (error when unsupported)",
       -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<XlAttentionImpl>(a); };
  info.supports_bidirectional = false;
  // same_length bounds every query to its last mem_len keys, in one pass and across segments alike.
  info.sparse_options = {{"mem_len", 4}, {"same_length", true}};
  info.streams = true;
  info.flops = [](const FlopQuery& f) {  // q, k, v, out projections, W_R on T distances, the relative core
    const int64_t mem = f.options["mem_len"], maxd = f.options["same_length"].get<bool>() ? mem - 1 : -1;
    return 8.0 * f.B * f.T * f.C * f.C + 2.0 * f.T * f.C * f.C +
           relative_attention_flops(f.B, f.H, f.T, f.T, f.C / f.H, maxd);
  };
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // the relative core on drawn qu, qv, k, v and position table, no memory
    CoreRun r;
    for (int i = 0; i < 4; ++i) r.inputs.push_back(torch::randn({c.B, c.H, c.T, c.D}));
    r.inputs.push_back(torch::randn({c.H, c.T, c.D}));
    const auto in = r.inputs;
    RelativeMask mask;
    const int64_t mem = c.options["mem_len"];
    mask.max_distance = c.options["same_length"].get<bool>() ? mem - 1 : -1;
    r.run = [in, mask, kernel = c.kernel] { return relative_attention(in[0], in[1], in[2], in[3], in[4], mask, kernel); };
    r.flops = relative_attention_flops(c.B, c.H, c.T, c.T, c.D, mask.max_distance);
    return r;
  };
  return info;
}

}  // namespace longseq
