// Building blocks around the mixers: feed-forward, pre-norm residual block,
// positions, and the shared trunk (embedding -> blocks -> final norm).
#pragma once
#include <torch/torch.h>

#include "longseq/config.h"
#include "longseq/mixer.h"

namespace longseq {

// Dense position-wise feed-forward with GELU: [B, T, C] -> [B, T, C].
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t d_model, int64_t d_ff, double dropout);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Linear w_in_{nullptr}, w_out_{nullptr};
  double dropout_;
};
TORCH_MODULE(FeedForward);

// Pre-norm residual block: x + mixer(LN(x)), then + FF(LN(.)).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(Mixer mixer, int64_t d_model, int64_t d_ff, double dropout);
  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx);  // [B, T, C] -> [B, T, C]
  MixerImpl& mixer() { return *mixer_; }
  const MixerImpl& mixer() const { return *mixer_; }

 private:
  torch::nn::LayerNorm ln_mix_{nullptr}, ln_ff_{nullptr};
  Mixer mixer_;
  FeedForward ff_{nullptr};
  double dropout_;
};
TORCH_MODULE(Block);

// Sinusoidal table for absolute positions (Vaswani et al. 2017, sec. 3.5).
// positions: [T] long -> [T, C]
torch::Tensor sinusoidal_positions(const torch::Tensor& positions, int64_t C);

// All layers' streaming states plus the position reached.
struct ModelState {
  std::vector<std::unique_ptr<MixerState>> layers;
  int64_t offset = 0;
};

// Token embedding, absolute positions, the blocks and the final LayerNorm.
class TrunkImpl : public torch::nn::Module {
 public:
  explicit TrunkImpl(const ModelConfig& cfg);
  // tokens: [B, T] long; padding_mask: [B, T] bool or undefined -> [B, T, C]
  torch::Tensor forward(const torch::Tensor& tokens, bool causal, const torch::Tensor& padding_mask,
                        ModelState* state = nullptr, const torch::Tensor& global_mask = {});
  ModelState initial_state(int64_t batch) const;  // throws Error if a layer cannot stream
  torch::nn::Embedding& embedding() { return embed_; }
  const ModelConfig& config() const { return cfg_; }

 private:
  ModelConfig cfg_;
  torch::nn::Embedding embed_{nullptr};
  torch::nn::Embedding learned_pos_{nullptr};
  std::vector<Block> blocks_;
  torch::nn::LayerNorm ln_final_{nullptr};
};
TORCH_MODULE(Trunk);

}  // namespace longseq
