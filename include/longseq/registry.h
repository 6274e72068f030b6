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
  bool streams = false;  // initial_state() returns a state and chunked == whole
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
