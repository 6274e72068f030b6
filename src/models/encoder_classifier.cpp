// The encoder classifier: a bidirectional trunk, pooled (mean, first token, or LRA's prepended CLS vector), then a
// linear head or LRA's Dense -> ReLU -> Dense (Tay et al. 2021; lra.md sec. 2, docs/lra.md).
#include "longseq/models.h"

namespace longseq {

EncoderClassifierImpl::EncoderClassifierImpl(const ModelConfig& cfg) {
  trunk_ = register_module("trunk", Trunk(cfg));
  if (cfg.pooling == "cls") cls_ = register_parameter("cls", torch::zeros({1, cfg.d_model}));  // LRA: zeros init
  int64_t width = cfg.d_model;
  if (cfg.classifier_hidden > 0) {
    hidden_ = register_module("hidden", torch::nn::Linear(cfg.d_model, cfg.classifier_hidden));
    width = cfg.classifier_hidden;
  }
  classifier_ = register_module("classifier", torch::nn::Linear(width, cfg.num_classes));
}

torch::Tensor EncoderClassifierImpl::forward(const torch::Tensor& tokens, const torch::Tensor& padding_mask,
                                             const torch::Tensor& global_mask) {
  const bool cls = config().pooling == "cls";
  torch::Tensor mask = padding_mask;
  if (cls && mask.defined())  // the CLS position is never padding
    mask = torch::cat({torch::zeros({mask.size(0), 1}, mask.options()), mask}, 1);
  auto h = trunk_->forward(tokens, /*causal=*/false, mask, nullptr, global_mask, cls ? cls_ : torch::Tensor());
  torch::Tensor pooled;  // [B, C]
  if (cls || config().pooling == "first") {
    pooled = h.select(1, 0);
  } else if (padding_mask.defined()) {
    auto keep = (~padding_mask.to(torch::kBool)).to(h.dtype()).unsqueeze(-1);  // [B, T, 1]
    pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0);
  } else {
    pooled = h.mean(1);
  }
  if (hidden_) pooled = torch::relu(hidden_(pooled));
  return classifier_(pooled);
}

}  // namespace longseq
