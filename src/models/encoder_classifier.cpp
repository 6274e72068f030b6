// The encoder classifier: a bidirectional trunk, pooled (mean, first token, or LRA's prepended CLS vector), then a
// linear head or LRA's Dense -> ReLU -> Dense (Tay et al. 2021; lra.md sec. 2, docs/lra.md). With dual_encoder,
// two documents share the encoder and the head reads [u, v, u*v, u-v] (LRA Retrieval, lra.md sec. 1).
#include "longseq/common.h"
#include "longseq/models.h"

namespace longseq {

EncoderClassifierImpl::EncoderClassifierImpl(const ModelConfig& cfg) {
  trunk_ = register_module("trunk", Trunk(cfg));
  if (cfg.pooling == "cls") cls_ = register_parameter("cls", torch::zeros({1, cfg.d_model}));  // LRA: zeros init
  int64_t width = cfg.dual_encoder ? 4 * cfg.d_model : cfg.d_model;
  if (cfg.classifier_hidden > 0) {
    hidden_ = register_module("hidden", torch::nn::Linear(width, cfg.classifier_hidden));
    width = cfg.classifier_hidden;
    if (cfg.dual_encoder) {  // LRA's classifier_head_dual: Dense(mlp) -> ReLU -> Dense(mlp / 2) -> ReLU -> Dense
      hidden2_ = register_module("hidden2", torch::nn::Linear(width, width / 2));
      width /= 2;
    }
  }
  classifier_ = register_module("classifier", torch::nn::Linear(width, cfg.num_classes));
}

torch::Tensor EncoderClassifierImpl::encode(const torch::Tensor& tokens, const torch::Tensor& padding_mask,
                                            const torch::Tensor& global_mask) {
  const bool cls = config().pooling == "cls";
  torch::Tensor mask = padding_mask;
  if (cls && mask.defined())  // the CLS position is never padding
    mask = torch::cat({torch::zeros({mask.size(0), 1}, mask.options()), mask}, 1);
  auto h = trunk_->forward(tokens, /*causal=*/false, mask, nullptr, global_mask, cls ? cls_ : torch::Tensor());
  if (cls || config().pooling == "first") return h.select(1, 0);
  if (padding_mask.defined()) {
    auto keep = (~padding_mask.to(torch::kBool)).to(h.dtype()).unsqueeze(-1);  // [B, T, 1]
    return (h * keep).sum(1) / keep.sum(1).clamp_min(1.0);
  }
  return h.mean(1);
}

torch::Tensor EncoderClassifierImpl::head(torch::Tensor x) {
  if (hidden_) x = torch::relu(hidden_(x));
  if (hidden2_) x = torch::relu(hidden2_(x));
  return classifier_(x);
}

torch::Tensor EncoderClassifierImpl::forward(const torch::Tensor& tokens, const torch::Tensor& padding_mask,
                                             const torch::Tensor& global_mask) {
  if (config().dual_encoder)
    throw Error("model.dual_encoder classifies pairs of documents: call forward_pair (data.corpus aan)");
  return head(encode(tokens, padding_mask, global_mask));
}

torch::Tensor EncoderClassifierImpl::forward_pair(const torch::Tensor& tokens1, const torch::Tensor& padding_mask1,
                                                  const torch::Tensor& tokens2, const torch::Tensor& padding_mask2) {
  if (!config().dual_encoder)
    throw Error("a pair of documents needs model.dual_encoder = true (the two-tower head of LRA Retrieval)");
  TORCH_CHECK(tokens1.dim() == 2 && tokens2.dim() == 2 && tokens1.size(0) == tokens2.size(0),
              "forward_pair: tokens1 ", tokens1.sizes(), " and tokens2 ", tokens2.sizes(), " must be [B, T1], [B, T2]");
  const int64_t B = tokens1.size(0), T = std::max(tokens1.size(1), tokens2.size(1));
  // Both towers in one trunk pass (one aux_loss covers both): each side right-padded to T and masked there.
  auto side = [&](const torch::Tensor& tokens, const torch::Tensor& mask, torch::Tensor& padded_mask) {
    const int64_t extra = T - tokens.size(1);
    auto m = mask.defined() ? mask.to(torch::kBool)
                            : torch::zeros(tokens.sizes(), tokens.options().dtype(torch::kBool));
    padded_mask = extra ? torch::cat({m, torch::ones({B, extra}, m.options())}, 1) : m;
    return extra ? torch::cat({tokens, torch::zeros({B, extra}, tokens.options())}, 1) : tokens;
  };
  torch::Tensor m1, m2;
  auto t1 = side(tokens1, padding_mask1, m1), t2 = side(tokens2, padding_mask2, m2);
  auto pooled = encode(torch::cat({t1, t2}), torch::cat({m1, m2}));  // [2B, C]
  auto u = pooled.slice(0, 0, B), v = pooled.slice(0, B);
  return head(torch::cat({u, v, u * v, u - v}, -1));  // [B, 4C]: LRA's interaction "NLI"
}

}  // namespace longseq
