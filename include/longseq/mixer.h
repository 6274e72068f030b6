// The token-mixer contract: every attention mechanism is a module mapping
// x: [B, T, C] -> [B, T, C]. Each mixer owns its projections, so no mixer needs
// flags that another must interpret.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "longseq/rotary.h"

namespace longseq {

// Per-layer streaming state (KV cache, running sums, segment memory, ...).
// A mixer downcasts the state it created in initial_state().
struct MixerState {
  virtual ~MixerState() = default;
  // What the state holds, by name (for tests and inspection); empty when the mixer names nothing.
  virtual std::map<std::string, torch::Tensor> tensors() const { return {}; }
  // Keeps batch rows `index` ([n] long; n may differ from the current batch, rows may repeat), as a beam search
  // does after pruning. The default throws an Error naming the state: a state must opt in.
  virtual void reorder(const torch::Tensor& index);
};

// Helpers of reorder implementations (src/mixers/mixer_state.cpp).
// `index` checked as [n >= 1] integers in [0, rows) (rows < 0: not known yet, only >= 0) -> [n] long on the CPU;
// errors name `what`.
torch::Tensor reorder_index(const torch::Tensor& index, int64_t rows, const std::string& what);
// t.index_select(dim, index) on t's device; an undefined t stays undefined (nothing streamed yet).
torch::Tensor select_rows(const torch::Tensor& t, const torch::Tensor& index, int64_t dim = 0);
// size(0) of the first defined tensor, or -1 when none is defined.
int64_t rows_of(const std::vector<torch::Tensor>& tensors);

struct MixContext {
  bool causal = false;
  torch::Tensor padding_mask;   // [B, T] bool, true = padding (may be undefined)
  torch::Tensor global_mask;    // [B, T] bool, tokens with global attention (may be undefined)
  int64_t offset = 0;           // absolute position of x[:, 0] when streaming
  MixerState* state = nullptr;  // this layer's state; null = no streaming
  // What a mixer hands to the next layer's mixer (Luna's packed sequence): the
  // trunk passes one context through its layers. Reversible stacks turn it off
  // (a carried tensor would have to be reversible too).
  std::map<std::string, torch::Tensor> carry;
  bool carry_allowed = true;
  // Rotary positions for q and k at offset + i (Perceiver AR's latent layers); only mixers whose
  // MixerInfo::rotary is set read it, and the model refuses others when it sets it.
  const RotarySpec* rotary = nullptr;
};

class MixerImpl : public torch::nn::Module {
 public:
  // x: [B, T, C] -> [B, T, C]. With ctx.state set, x continues the sequence
  // held in the state and the state is advanced past x.
  virtual torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) = 0;
  // The attention core alone, for a layer that makes its own queries, keys and values (MixerInfo::attends; the
  // Scaling Transformer's sparse QKV): q, k, v [B, H, T, D] -> [B, H, T, D], heads not yet merged and no output
  // projection. ctx as for forward; its state is one this mixer's initial_state made. The default throws an Error.
  virtual torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   MixContext& ctx);
  // A fresh state for streaming `batch` sequences; null if the mixer cannot stream.
  virtual std::unique_ptr<MixerState> initial_state(int64_t batch) const {
    (void)batch;
    return nullptr;
  }
};

using Mixer = std::shared_ptr<MixerImpl>;

}  // namespace longseq
