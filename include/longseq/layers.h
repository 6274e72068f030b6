// Building blocks around the mixers: feed-forward, pre-norm residual block,
// positions, and the shared trunk (embedding -> blocks -> final norm).
#pragma once
#include <torch/torch.h>

#include <functional>

#include "longseq/config.h"
#include "longseq/ffn.h"
#include "longseq/mixer.h"

namespace longseq {

// Dense position-wise feed-forward (the `dense` kind, ffn.h): [B, T, C] -> [B, T, C]. activation: gelu, relu (the
// original Transformer, sec. 3.3), or squared_relu (relu(x)^2, So et al. 2021; Perceiver AR's MLP).
class FeedForwardImpl : public FeedForwardKindImpl {
 public:
  FeedForwardImpl(int64_t d_model, int64_t d_ff, double dropout, const std::string& activation = "gelu");
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& padding_mask = {}) override;

 private:
  torch::nn::Linear w_in_{nullptr}, w_out_{nullptr};
  double dropout_;
  bool squared_relu_, relu_;
};
TORCH_MODULE(FeedForward);

// One layer of the trunk: a block kind (blocks.h lists them). x: [B, T, C] -> [B, T, C]; with ctx.state set, x
// continues the sequence held in the state and the state is advanced past x.
class LayerImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, MixContext& ctx, int64_t ff_chunks = 1) = 0;
  // A fresh streaming state for `batch` sequences; null if the layer cannot stream.
  virtual std::unique_ptr<MixerState> initial_state(int64_t batch) const = 0;
  // Auxiliary losses (weighted, in the graph) and metrics of the forwards since clear_aux() (ffn.h); none by default.
  virtual std::map<std::string, torch::Tensor> aux_losses() const { return {}; }
  virtual std::map<std::string, double> aux_metrics() const { return {}; }
  virtual void clear_aux() {}
};
using Layer = std::shared_ptr<LayerImpl>;

// The standard block: pre-norm residual x + mixer(LN(x)), then + FF(LN(.)).
class BlockImpl : public LayerImpl {
 public:
  BlockImpl(Mixer mixer, int64_t d_model, int64_t d_ff, double dropout, const std::string& activation = "gelu",
            FeedForwardKind ff = nullptr);  // ff: a feed-forward kind (ffn.h); null = dense
  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx, int64_t ff_chunks = 1) override;
  std::unique_ptr<MixerState> initial_state(int64_t batch) const override { return mixer_->initial_state(batch); }
  // The two residual branches: dropout(mixer(LN(x))) and dropout(FF(LN(x))), the latter over `chunks` slices of T.
  torch::Tensor mix_branch(const torch::Tensor& x, MixContext& ctx);
  // padding [B, T] (true = pad) or undefined reaches the feed-forward kind, sliced alike.
  torch::Tensor ff_branch(const torch::Tensor& x, int64_t chunks = 1, const torch::Tensor& padding = {});
  MixerImpl& mixer() { return *mixer_; }
  const MixerImpl& mixer() const { return *mixer_; }
  std::map<std::string, torch::Tensor> aux_losses() const override { return ff_->aux_losses(); }
  std::map<std::string, double> aux_metrics() const override { return ff_->aux_metrics(); }
  void clear_aux() override { ff_->clear_aux(); }

 private:
  torch::nn::LayerNorm ln_mix_{nullptr}, ln_ff_{nullptr};
  Mixer mixer_;
  FeedForwardKind ff_;
  double dropout_;
};
TORCH_MODULE(Block);

struct ModelState;

// Reformer's reversible stack (Kitaev et al. 2020, sec. 3, eq. 9) over
// `blocks`: x -> (Y1 + Y2) / 2 with X1 = X2 = x. Keeps only the last outputs;
// the backward walks the blocks in reverse, recomputing X2 = Y2 - FF(Y1) and
// X1 = Y1 - mix(X2) and back-propagating through each recomputation. Dropout
// masks are replayed from the saved generator state; mixers replay what that
// forward recorded (longseq/recompute.h), so forwards may precede backwards in any order.
torch::Tensor reversible_stack(std::vector<Block>& blocks, const torch::Tensor& x, MixContext& ctx,
                               ModelState* state, int64_t ff_chunks);

// Sinusoidal table for absolute positions (Vaswani et al. 2017, sec. 3.5).
// positions: [T] long -> [T, C]
torch::Tensor sinusoidal_positions(const torch::Tensor& positions, int64_t C);

// x [B, T, C] plus the absolute positions offset .. offset + T - 1 that cfg.positions names (sinusoidal, or
// `learned`'s rows, an Error past max_len); x itself for none and rotary.
torch::Tensor add_absolute_positions(const torch::Tensor& x, const ModelConfig& cfg, torch::nn::Embedding& learned,
                                     int64_t offset);

// fn(slice of x, the same slice of padding or undefined) over `chunks` slices of the length, concatenated: a
// position-wise function computed one slice at a time (Kitaev et al. 2020, Reformer, eq. 10). x: [B, T, ..].
torch::Tensor over_length_slices(const torch::Tensor& x, int64_t chunks, const torch::Tensor& padding,
                                 const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>& fn);

// "mixer <name>" or "block <kind>" for each layer of cfg, for messages.
std::vector<std::string> layer_names(const ModelConfig& cfg);

// A fresh streaming state for each layer; an Error naming the first that cannot stream (`names`: what each layer is).
std::vector<std::unique_ptr<MixerState>> block_states(const std::vector<Layer>& layers, const std::vector<std::string>& names,
                                                      int64_t batch);

// All layers' streaming states plus the position reached.
struct ModelState {
  std::vector<std::unique_ptr<MixerState>> layers;
  int64_t offset = 0;
  std::unique_ptr<MixerState> own;  // what a model kind keeps beside its layers' states (Perceiver AR's caches)
  // Keeps batch rows `index` ([n] long, rows may repeat) of every layer's state and of `own` (MixerState::reorder:
  // an Error naming a state that cannot); the offset is shared by all rows.
  void reorder(const torch::Tensor& index);
};

// Token embedding, absolute positions, the blocks and the final LayerNorm.
class TrunkImpl : public torch::nn::Module {
 public:
  explicit TrunkImpl(const ModelConfig& cfg);
  // tokens: [B, T] long; padding_mask: [B, P + T] bool or undefined -> [B, P + T, C]. prefix: [P, C] vectors placed
  // before the token embeddings, positions added to both (LRA's CLS vector, P = 1); undefined = none, P = 0.
  torch::Tensor forward(const torch::Tensor& tokens, bool causal, const torch::Tensor& padding_mask,
                        ModelState* state = nullptr, const torch::Tensor& global_mask = {},
                        const torch::Tensor& prefix = {});
  ModelState initial_state(int64_t batch) const;  // throws Error if a layer cannot stream
  // With model.act: the last forward's ponder cost tau * mean(N + R) (in its graph) and mean(N + R); else undefined.
  // The last forward's auxiliary losses in its graph: ACT's ponder cost and the layers' own (ffn.h); undefined = none.
  torch::Tensor aux_loss() const { return aux_loss_; }
  // The last forward's layer losses (summed over layers) and metrics (averaged over the layers that report them).
  const std::map<std::string, double>& aux_metrics() const { return aux_metrics_; }
  torch::Tensor ponder() const { return ponder_; }
  torch::Tensor ponder_positions() const { return ponder_map_; }  // [B, T] N + R per position, detached
  torch::nn::Embedding& embedding() { return embed_; }
  std::vector<Block>& blocks() { return blocks_; }  // the standard blocks among the layers, in order
  std::vector<Layer>& layers() { return layers_; }
  const ModelConfig& config() const { return cfg_; }

 private:
  ModelConfig cfg_;
  torch::nn::Embedding embed_{nullptr};
  torch::nn::Embedding learned_pos_{nullptr};
  std::vector<Layer> layers_;
  std::vector<Block> blocks_;
  torch::nn::LayerNorm ln_final_{nullptr};
  torch::nn::Linear halting_{nullptr};  // model.act: p = sigmoid(s w_h + b_h)
  torch::Tensor aux_loss_, ponder_, ponder_map_;
  std::map<std::string, double> aux_metrics_;
  // The blocks once over x at recurrence step t (1-based), each step with its own streaming states.
  torch::Tensor step_blocks(torch::Tensor x, MixContext& ctx, ModelState* state, int64_t t);
};
TORCH_MODULE(Trunk);

}  // namespace longseq
