// Perceiver AR (Hawthorne et al. 2022, "General-purpose, long-context
// autoregressive modeling with Perceiver AR", sec. 3 and App. E.3): the last
// N of T inputs become latents z0 = Linear(E[T-N:]) that cross-attend causally
// to all T inputs (latent i at position p_i = T - N + i sees inputs j <= p_i),
// then L causal self-attention layers over the latents; logits only for the
// latent positions (each predicts the token after its own).
//
// The cross-attention is a causal rectangle (queries are the last N keys), so
// it runs on the fused exact kernel in O(T * N) time and O(T) memory.
// Decoding keeps the inputs' cross keys and values and each latent layer's
// cache; when the latent caches would hold more than N latents, a refill pass
// with reset_latents latents over the context window (the last max_len
// inputs) starts them afresh (App. E.3), so no latent ever sees a longer chain
// of latents than training.
#pragma once
#include <torch/torch.h>

#include "longseq/models.h"
#include "longseq/rotary.h"

namespace longseq {

class PerceiverARImpl : public LanguageModelImpl {
 public:
  explicit PerceiverARImpl(const ModelConfig& cfg);
  // Without a state: tokens [B, T] -> logits [B, min(N, T), V] for the last positions. In training with
  // context_dropout, a random share of the positions before the latents is removed per example.
  // With a state: tokens [B, c] continue the sequence; returns logits for the last min(c, F) of them,
  // where F is the latents of this call (c when the caches have room, else the refill pass's).
  torch::Tensor forward(const torch::Tensor& tokens, ModelState* state = nullptr,
                        const torch::Tensor& padding_mask = {}) override;
  // The same model with n latents instead of N (no dropout of context positions): [B, T] -> [B, n, V].
  torch::Tensor forward_latents(const torch::Tensor& tokens, int64_t n, const torch::Tensor& padding_mask = {});
  int64_t scored_positions(int64_t T) const override { return std::min(cfg_.latents, T); }
  int64_t decode_period() const override { return cfg_.latents - reset_latents(); }
  ModelState initial_state(int64_t batch) const override;
  const ModelConfig& config() const override { return cfg_; }
  // The z-loss of the last forward (Perceiver AR's losses: 1e-4 * mean(log Z)^2), in its graph.
  torch::Tensor aux_loss() const override { return aux_loss_; }
  int64_t reset_latents() const { return cfg_.reset_latents > 0 ? cfg_.reset_latents : std::max<int64_t>(1, cfg_.latents / 2); }

 private:
  ModelConfig cfg_;
  RotarySpec rotary_;
  torch::nn::Embedding embed_{nullptr}, learned_pos_{nullptr};
  torch::nn::Linear latent_init_{nullptr}, cross_q_{nullptr}, cross_kv_{nullptr}, cross_out_{nullptr};
  torch::nn::LayerNorm ln_q_{nullptr}, ln_kv_{nullptr}, ln_cross_ff_{nullptr}, ln_final_{nullptr};
  FeedForward cross_ff_{nullptr};
  std::vector<Layer> blocks_;  // standard blocks (the config refuses other kinds)
  torch::nn::Linear head_{nullptr};  // only without tied embeddings (zero-initialised, as the paper's)
  torch::Tensor aux_loss_;

  // Token embeddings at positions [first, first + T) (absolute positions added unless rotary or none).
  torch::Tensor embed(const torch::Tensor& tokens, int64_t first);
  // Cross keys and values [B, H, S, D] of embeddings e [B, S, C] at `positions` ([S] or [B, S]).
  std::pair<torch::Tensor, torch::Tensor> cross_keys(const torch::Tensor& e, const torch::Tensor& positions);
  // Latents from embeddings e [B, n, C] at positions first..first+n-1, reading keys k, v whose last n are
  // the latents' own -> logits [B, n, V]. `layers` holds the latent layers' states (null = none).
  torch::Tensor latent_pass(const torch::Tensor& e, int64_t first, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& key_padding, const torch::Tensor& latent_padding,
                            std::vector<std::unique_ptr<MixerState>>* layers);
  torch::Tensor logits_of(const torch::Tensor& z);
};
TORCH_MODULE(PerceiverAR);

}  // namespace longseq
