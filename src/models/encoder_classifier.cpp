#include "longseq/models.h"

namespace longseq {

EncoderClassifierImpl::EncoderClassifierImpl(const ModelConfig& cfg) {
  trunk_ = register_module("trunk", Trunk(cfg));
  classifier_ = register_module("classifier", torch::nn::Linear(cfg.d_model, cfg.num_classes));
}

torch::Tensor EncoderClassifierImpl::forward(const torch::Tensor& tokens, const torch::Tensor& padding_mask,
                                             const torch::Tensor& global_mask) {
  auto h = trunk_->forward(tokens, /*causal=*/false, padding_mask, nullptr, global_mask);  // [B, T, C]
  torch::Tensor pooled;
  if (config().pooling == "first") {
    pooled = h.select(1, 0);
  } else if (padding_mask.defined()) {
    auto keep = (~padding_mask.to(torch::kBool)).to(h.dtype()).unsqueeze(-1);  // [B, T, 1]
    pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0);
  } else {
    pooled = h.mean(1);
  }
  return classifier_(pooled);
}

}  // namespace longseq
