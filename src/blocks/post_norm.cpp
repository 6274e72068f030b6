// "post_norm": the residual pair as published (Vaswani et al. 2017, sec. 3.1: LayerNorm(x + Sublayer(x))):
// x = LN(x + dropout(mixer(x))), then x = LN(x + dropout(FF(x))), around any registered mixer and feed-forward kind.
// The trunk's final LayerNorm stays after the stack: on an output that is already normalised it only applies its
// affine parameters.
#include "longseq/blocks.h"

namespace longseq {

namespace {

class PostNormBlockImpl : public LayerImpl {
 public:
  explicit PostNormBlockImpl(const BlockArgs& a) : dropout_(a.dropout) {
    mixer_ = register_module("mixer", make_mixer(*a.mixer, a.d_model, a.n_heads, a.layer_index));
    ln_mix_ = register_module("ln_mix", torch::nn::LayerNorm(torch::nn::LayerNormOptions({a.d_model})));
    FeedForwardKind ff = make_block_ffn(a);
    if (!ff) ff = std::make_shared<FeedForwardImpl>(a.d_model, a.d_ff, a.dropout, a.ff_activation);
    ff_ = register_module("ff", std::move(ff));
    ln_ff_ = register_module("ln_ff", torch::nn::LayerNorm(torch::nn::LayerNormOptions({a.d_model})));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx, int64_t ff_chunks) override {
    auto y = ln_mix_(x + drop(mixer_->forward(x, ctx)));
    auto f = over_length_slices(y, ff_chunks, ctx.padding_mask,
                                [&](const torch::Tensor& part, const torch::Tensor& pad) { return ff_->forward(part, pad); });
    return ln_ff_(y + drop(f));
  }
  std::unique_ptr<MixerState> initial_state(int64_t batch) const override { return mixer_->initial_state(batch); }
  std::map<std::string, torch::Tensor> aux_losses() const override { return ff_->aux_losses(); }
  std::map<std::string, double> aux_metrics() const override { return ff_->aux_metrics(); }
  void clear_aux() override { ff_->clear_aux(); }

 private:
  double dropout_;
  Mixer mixer_;
  FeedForwardKind ff_;
  torch::nn::LayerNorm ln_mix_{nullptr}, ln_ff_{nullptr};
  torch::Tensor drop(const torch::Tensor& h) { return dropout_ > 0 ? torch::dropout(h, dropout_, is_training()) : h; }
};

}  // namespace

BlockInfo post_norm_block_info() {
  BlockInfo b;
  b.name = "post_norm";
  b.summary = "post-norm residual block as published: LN(x + mixer(x)), then LN(. + FF(.)), around the layer's mixer "
              "and feed-forward kind";
  b.citation = "Vaswani et al. 2017, Attention Is All You Need, sec. 3.1";
  b.uses_mixer = true;
  b.streams = true;  // when its mixer streams
  b.not_reversible = "its LayerNorms after the residual adds cannot be inverted from the outputs";
  b.make = [](const BlockArgs& a) -> Layer { return std::make_shared<PostNormBlockImpl>(a); };
  return b;
}

}  // namespace longseq
