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
  // Build only the attention core (make_core): no projections of its own; forward refuses, attend_qkv works.
  bool core_only = false;
};

// What a mixer's useful-FLOP count is asked about (bench, one forward pass).
struct FlopQuery {
  int64_t B = 1, T = 0, C = 0, H = 1;
  bool causal = false;
  Json options;  // validated, defaults filled
};

// One mechanism's attention core alone (`longseq bench`, core rows): what it is asked for.
struct CoreQuery {
  int64_t B = 1, H = 1, T = 0, D = 0;  // batch, heads, length, head dimension
  bool causal = false;
  Json options;        // the mixer's options, validated, defaults filled
  std::string kernel;  // one of MixerInfo::core_kernels
};

// The core's inputs, drawn for the query, and the call that runs it on them.
struct CoreRun {
  std::vector<torch::Tensor> inputs;  // leaves: the bench sets requires_grad on them for forward + backward
  std::function<torch::Tensor()> run;
  double flops = 0;  // useful FLOPs of one forward (2 per multiply-add); 0 = not stated
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
  // A small configuration that puts the mechanism in its real sparse or
  // approximate regime at T of about 10-20 (several blocks, chunks, clusters
  // or buckets; the defaults are exact there): the invariant tests run every
  // check on it as well as on the defaults (DESIGN.md, invariant 7).
  // Null = not declared; then `no_sparse_regime` must say why.
  Json sparse_options;
  // Why the mechanism has no sparse regime (it is exact, or its defaults
  // already approximate at every T); empty when sparse_options is declared.
  std::string no_sparse_regime;
  bool streams = false;  // initial_state() returns a state and chunked == whole
  // attend_qkv works: the mechanism's attention can run on queries, keys and values another layer made (the core
  // of sparse_qkv). False for mixers that are not attention over one (q, k, v) triple.
  bool attends = false;
  bool rotary = false;   // applies MixContext::rotary to its queries and keys
  // Why left padding changes the real tokens' outputs (computation tied to absolute positions, such as blocks
  // counted from position 0); empty = it does not, and the invariant tests pad on both sides.
  std::string left_padding_changes;
  // False when the backward is the paper's surrogate rather than the derivative
  // of the forward (YOSO's sampled hash tables): finite differences do not apply.
  bool exact_gradients = true;
  // Useful FLOPs of one forward pass, counted as the paper's algorithm does
  // (2 per multiply-add, projections included); the bench takes 3x for
  // forward + backward. Null: the bench reports no FLOP rate for this mixer.
  std::function<double(const FlopQuery&)> flops;
  // The part of `flops` that the mixer's own projections make, which a core (make_core) does not run. Null: the
  // q, k, v and output projections, 8 B T C^2.
  std::function<double(const FlopQuery&)> projection_flops;
  // The kernels of the mechanism's attention core the bench times alone, one
  // series each (e.g. {"fused", "reference"}); empty: no core apart from the mixer.
  // `core` draws its inputs from the global generator, so under one seed every
  // kernel computes the same function of the same inputs (tested).
  std::vector<std::string> core_kernels;
  std::function<CoreRun(const CoreQuery&)> core;
};

const std::vector<MixerInfo>& mixer_registry();
const MixerInfo& find_mixer(const std::string& name);  // throws Error listing names

// A mixer spec is "name" or {"name": ..., option: value, ...}.
struct MixerSpec {
  std::string name;
  Json options;  // validated, defaults filled
};
MixerSpec parse_mixer_spec(const Json& spec, const std::string& where);

// A layer's block kind (blocks.h): "standard" (the layer's MixerSpec says what mixes) or another kind, whose layer
// has no MixerSpec (its name is empty).
struct BlockSpec {
  std::string name = "standard";
  Json options = Json::object();  // validated against the kind's schema, defaults filled
};
Mixer make_mixer(const MixerSpec& spec, int64_t d_model, int64_t n_heads, int64_t layer_index);
// What a spec declares: its mixer's properties, or, for a layer that runs another mixer's attention core (a `core`
// option, sparse_qkv), the properties both have: causal or bidirectional if both are, streams if both do, strictly
// causal if the host is and the core is or its spec sets the core's strictly causal options.
MixerInfo mixer_properties(const MixerSpec& spec);
// FLOPs of a core alone: the mixer's count less its projections (MixerInfo::projection_flops).
double core_flops(const MixerInfo& info, const FlopQuery& f);

// The mixer's attention core alone (MixerArgs::core_only), for a layer that projects q, k, v itself; an Error
// naming `where` and listing the mixers that attend when spec's mixer does not.
Mixer make_core(const MixerSpec& spec, int64_t d_model, int64_t n_heads, int64_t layer_index, const std::string& where);

}  // namespace longseq
