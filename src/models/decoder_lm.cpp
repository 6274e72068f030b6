#include "longseq/models.h"

namespace longseq {

DecoderLMImpl::DecoderLMImpl(const ModelConfig& cfg) {
  trunk_ = register_module("trunk", Trunk(cfg));
  if (cfg.output_modules > 0)  // Jaszczur et al. 2021, sec. 3.2: logits by the multiplicative dense layer
    sparse_head_ = register_module("sparse_head", FactoredDense(cfg.d_model, cfg.output_modules,
                                                                cfg.vocab_size / cfg.output_modules));
  else if (!cfg.tie_embeddings)
    head_ = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.vocab_size).bias(false)));
}

torch::Tensor DecoderLMImpl::forward(const torch::Tensor& tokens, ModelState* state,
                                     const torch::Tensor& padding_mask) {
  auto h = trunk_->forward(tokens, /*causal=*/true, padding_mask, state);
  if (sparse_head_) return sparse_head_(h);
  if (head_) return head_(h);
  return torch::matmul(h, trunk_->embedding()->weight.t());  // tied output (Press & Wolf 2017)
}

}  // namespace longseq
