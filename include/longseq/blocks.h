// Block kinds: what one layer of the trunk is. `standard` is the pre-norm mixer + feed-forward pair (layers.h);
// Mega and GSS replace the pair with a layer of their own. One file per kind under src/blocks/; the registry
// (src/blocks/registry.cpp) is the one place that lists them all.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "longseq/layers.h"
#include "longseq/registry.h"
#include "longseq/schema.h"

namespace longseq {

struct BlockArgs {
  int64_t d_model = 0, n_heads = 0, d_ff = 0;
  double dropout = 0;
  std::string ff_activation = "gelu";
  int64_t layer_index = 0;
  Json options;              // validated, defaults filled
  const MixerSpec* mixer = nullptr;  // the layer's mixer (standard blocks only)
  const FfnSpec* ff = nullptr;       // the layer's feed-forward kind (standard blocks only; null = dense)
};

struct BlockInfo {
  std::string name;
  std::string summary;  // one line: paper and what it does
  std::string citation;
  Schema schema;
  std::function<Layer(const BlockArgs&)> make;
  bool uses_mixer = false;  // the layer's mixer spec (model.mixer / model.layers) runs inside it
  bool supports_causal = true;
  bool supports_bidirectional = true;
  bool streams = false;  // initial_state() returns a state and chunked == whole (causal)
  // Why the reversible stack cannot take it; empty = it fits the stack's two branches (standard blocks only).
  std::string not_reversible;
  // Useful FLOPs of one forward over [B, T, C] (2 per multiply-add); null = not stated.
  std::function<double(int64_t B, int64_t T, int64_t C, bool causal, const Json& options)> flops;
};

// The layer's feed-forward kind (args.ff; null = the dense default), for block kinds that run one.
FeedForwardKind make_block_ffn(const BlockArgs& args);

const std::vector<BlockInfo>& block_registry();
const BlockInfo& find_block(const std::string& name);  // throws Error listing names

// "name" or {"name": ..., option: value, ...}; errors name `where`.
BlockSpec parse_block_spec(const Json& spec, const std::string& where);
Layer make_layer(const BlockSpec& block, const BlockArgs& args);

}  // namespace longseq
