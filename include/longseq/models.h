// Models: a decoder-only language model and an encoder classifier, both on
// the shared trunk, each layer's mixer chosen by the config.
#pragma once
#include <torch/torch.h>

#include "longseq/layers.h"

namespace longseq {

class DecoderLMImpl : public torch::nn::Module {
 public:
  explicit DecoderLMImpl(const ModelConfig& cfg);
  // tokens: [B, T] long -> logits [B, T, V]. With a state, tokens continue it.
  torch::Tensor forward(const torch::Tensor& tokens, ModelState* state = nullptr,
                        const torch::Tensor& padding_mask = {});
  ModelState initial_state(int64_t batch) const { return trunk_->initial_state(batch); }
  const ModelConfig& config() const { return trunk_->config(); }
  // The last forward's auxiliary loss (the ACT ponder cost, in its graph) and mean ponder time; undefined without.
  torch::Tensor aux_loss() const { return trunk_->aux_loss(); }
  torch::Tensor ponder() const { return trunk_->ponder(); }

 private:
  Trunk trunk_{nullptr};
  torch::nn::Linear head_{nullptr};  // only without tied embeddings
};
TORCH_MODULE(DecoderLM);

class EncoderClassifierImpl : public torch::nn::Module {
 public:
  explicit EncoderClassifierImpl(const ModelConfig& cfg);
  // tokens: [B, T] long, padding_mask: [B, T] bool or undefined -> logits [B, num_classes]
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& padding_mask = {},
                        const torch::Tensor& global_mask = {});
  const ModelConfig& config() const { return trunk_->config(); }

 private:
  Trunk trunk_{nullptr};
  torch::nn::Linear classifier_{nullptr};
};
TORCH_MODULE(EncoderClassifier);

}  // namespace longseq
