// The registry: the one place that knows every mechanism. Maps a name to a
// factory, an option schema and the mechanism's declared properties.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "longseq/mixer.h"
#include "longseq/schema.h"

namespace longseq {

struct MixerArgs {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t layer_index = 0;  // lets per-layer options (lists) pick their entry
  Json options;             // validated against the mixer's schema, defaults filled
};

// What a mixer's useful-FLOP count is asked about (bench, one forward pass).
struct FlopQuery {
  int64_t B = 1, T = 0, C = 0, H = 1;
  bool causal = false;
  Json options;  // validated, defaults filled
};

struct MixerInfo {
  std::string name;
  std::string summary;  // one line: paper and what it does
  std::string citation;
  Schema schema;
  std::function<Mixer(const MixerArgs&)> make;
  bool supports_causal = true;
  bool supports_bidirectional = true;
  // False for methods whose causal mode lets which past tokens a position sees
  // depend on later tokens (see DESIGN.md, invariant 2).
  bool strictly_causal = true;
  // Options under which a non-strictly-causal mixer becomes strictly causal.
  Json strictly_causal_options = Json::object();
  // Options that put the mechanism in its sparse or approximate regime at small T (the invariant tests run it too).
  Json sparse_options = Json::object();
  bool streams = false;  // initial_state() returns a state and chunked == whole
  // False when the backward is the paper's surrogate rather than the derivative
  // of the forward (YOSO's sampled hash tables): finite differences do not apply.
  bool exact_gradients = true;
  // Useful FLOPs of one forward pass, counted as the paper's algorithm does
  // (2 per multiply-add, projections included); the bench takes 3x for
  // forward + backward. Null: the bench reports no FLOP rate for this mixer.
  std::function<double(const FlopQuery&)> flops;
};

const std::vector<MixerInfo>& mixer_registry();
const MixerInfo& find_mixer(const std::string& name);  // throws Error listing names

// A mixer spec is "name" or {"name": ..., option: value, ...}.
struct MixerSpec {
  std::string name;
  Json options;  // validated, defaults filled
};
MixerSpec parse_mixer_spec(const Json& spec, const std::string& where);
Mixer make_mixer(const MixerSpec& spec, int64_t d_model, int64_t n_heads, int64_t layer_index);

}  // namespace longseq
