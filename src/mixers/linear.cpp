// "linear": linear attention. Katharopoulos, Vyas, Pappas, Fleuret 2020,
// "Transformers are RNNs", sec. 3.2 (eq. 5-7: phi(x) = elu(x) + 1, no 1/sqrt(D)),
// sec. 3.3 (causal prefix sums, eq. 8-12) and sec. 3.4 (the RNN form).
// Bidirectional in O(T D^2); causal chunk by chunk: masked products inside a
// chunk plus the running state (S, z) of the chunks before it: the fused CPU
// kernel (kernels/cpu/causal_linear_attention) keeps memory O(T D + D^2), the
// reference O(T D + (T / chunk) D^2), never O(T D^2). The state carries across forward
// calls when streaming: O(D^2) time and memory per generated token.
#include "longseq/common.h"
#include "longseq/kernels/linear_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"
#include "longseq/mixers/cores.h"

namespace longseq {

namespace {

struct LinearState : MixerState {
  LinearAttentionState sums;  // S = sum of phi(k) v^T so far, z = sum of phi(k)
  void reorder(const torch::Tensor& index) override { sums.reorder(reorder_index(index, rows_of({sums.S}), "linear")); }
};

class LinearImpl : public MixerImpl {
 public:
  explicit LinearImpl(const MixerArgs& a)
      : heads_(a.n_heads), chunk_(a.options["chunk"]), eps_(a.options["eps"]) {
    if (a.core_only) return;  // the host layer projects
    const bool bias = a.options["bias"].get<bool>();
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "linear: x must be [B, T, C], got ", x.sizes());
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    auto fq = torch::elu(q) + 1;  // eq. 7
    auto fk = zero_padded(torch::elu(k) + 1, ctx.padding_mask);
    auto* st = ctx.state ? dynamic_cast<LinearState*>(ctx.state) : nullptr;
    TORCH_CHECK(!ctx.state || st, "linear: the state passed was not made by this mixer");
    return kernelized_attention(fq, fk, v, ctx.causal, chunk_, eps_, st ? &st->sums : nullptr);  // eq. 6 or 8-12
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<LinearState>(); }

 private:
  int64_t heads_, chunk_;
  double eps_;
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo linear_mixer_info() {
  MixerInfo info;
  info.name = "linear";
  info.summary = "linear attention with phi = elu + 1, O(T D^2); causal by chunked prefix sums; O(1) decoding state";
  info.citation = "Katharopoulos et al. 2020, Transformers are RNNs, sec. 3.2-3.4";
  info.schema = {
      {"chunk", OptionType::Int, 64, "causal: queries per chunk (masked products inside, running state across)", 1,
       1e6},
      {"eps", OptionType::Float, 1e-6, "added to the denominator (the official code's value; the paper has none)", 0.0,
       1.0},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<LinearImpl>(a); };
  info.sparse_options = {{"chunk", 3}};  // exact at every T; this puts several chunks of the causal prefix sums in T
  info.streams = true;
  info.attends = true;
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // the kernelized product on drawn positive features (the feature map apart)
    return kernelized_core(c, c.D, c.options["chunk"].get<int64_t>(), c.options["eps"].get<double>());
  };
  info.flops = [](const FlopQuery& f) {  // projections; phi(K)^T V and phi(Q) S (+ the chunks' lower triangles)
    const double D = double(f.C) / f.H, c = f.causal ? (std::min<double>(f.options["chunk"].get<double>(), f.T) + 1) / 2 : 0;
    return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * f.C * D + 4.0 * f.B * f.T * c * f.C;
  };
  return info;
}

}  // namespace longseq
