// The explicit list of mechanisms: one line each. Adding a mechanism means a
// new file under mixers/ and one line here, nothing else.
#include "longseq/registry.h"

#include <tuple>

#include "longseq/common.h"

namespace longseq {

MixerInfo full_mixer_info();
MixerInfo longformer_mixer_info();
MixerInfo bigbird_mixer_info();
MixerInfo lsh_mixer_info();
MixerInfo routing_mixer_info();
MixerInfo linear_mixer_info();
MixerInfo performer_mixer_info();
MixerInfo yoso_mixer_info();
MixerInfo luna_mixer_info();
MixerInfo mgk_mixer_info();
MixerInfo kernel_rpe_mixer_info();
MixerInfo learned_kernel_mixer_info();
MixerInfo xl_mixer_info();
MixerInfo block_recurrent_mixer_info();
MixerInfo infinity_former_mixer_info();
MixerInfo sparse_qkv_mixer_info();

const std::vector<MixerInfo>& mixer_registry() {
  static const std::vector<MixerInfo> registry = {
      full_mixer_info(),
      longformer_mixer_info(),
      bigbird_mixer_info(),
      lsh_mixer_info(),
      routing_mixer_info(),
      linear_mixer_info(),
      performer_mixer_info(),
      yoso_mixer_info(),
      luna_mixer_info(),
      mgk_mixer_info(),
      kernel_rpe_mixer_info(),
      learned_kernel_mixer_info(),
      xl_mixer_info(),
      block_recurrent_mixer_info(),
      infinity_former_mixer_info(),
      sparse_qkv_mixer_info(),
  };
  return registry;
}

const MixerInfo& find_mixer(const std::string& name) { return find_named(mixer_registry(), name, "mixer"); }

MixerSpec parse_mixer_spec(const Json& spec, const std::string& where) {
  MixerSpec out;
  Json options;
  std::tie(out.name, options) = split_named_spec(spec, where, "mixer");
  out.options = validate_options(options, find_mixer(out.name).schema, where);
  return out;
}

Mixer make_mixer(const MixerSpec& spec, int64_t d_model, int64_t n_heads, int64_t layer_index) {
  const auto& info = find_mixer(spec.name);
  if (n_heads <= 0 || d_model % n_heads != 0)
    throw Error("mixer " + spec.name + ": d_model " + std::to_string(d_model) +
                " must be a positive multiple of n_heads " + std::to_string(n_heads));
  MixerArgs args{d_model, n_heads, layer_index, validate_options(spec.options, info.schema, spec.name)};
  return info.make(args);
}

MixerInfo mixer_properties(const MixerSpec& spec) {
  MixerInfo m = find_mixer(spec.name);
  if (!spec.options.is_object() || !spec.options.contains("core")) return m;
  const auto core_spec = parse_mixer_spec(spec.options["core"], spec.name + ".core");
  const auto& core = find_mixer(core_spec.name);
  bool core_strict = core.strictly_causal;
  if (!core_strict && !core.strictly_causal_options.empty()) {
    core_strict = true;
    for (const auto& kv : core.strictly_causal_options.items())
      core_strict = core_strict && core_spec.options.contains(kv.key()) && core_spec.options[kv.key()] == kv.value();
  }
  m.supports_causal = m.supports_causal && core.supports_causal;
  m.supports_bidirectional = m.supports_bidirectional && core.supports_bidirectional;
  m.strictly_causal = m.strictly_causal && core_strict;
  m.strictly_causal_options = core.strictly_causal_options.empty() ? Json::object()
                                                                   : Json{{"core", core.strictly_causal_options}};
  m.streams = m.streams && core.streams;
  if (!core.left_padding_changes.empty()) m.left_padding_changes = core.left_padding_changes;
  m.exact_gradients = m.exact_gradients && core.exact_gradients;
  m.core_kernels.clear();
  m.core = nullptr;
  return m;
}

double core_flops(const MixerInfo& info, const FlopQuery& f) {
  if (!info.flops) return 0.0;
  const double projections = info.projection_flops ? info.projection_flops(f) : 8.0 * f.B * f.T * f.C * f.C;
  return info.flops(f) - projections;
}

Mixer make_core(const MixerSpec& spec, int64_t d_model, int64_t n_heads, int64_t layer_index, const std::string& where) {
  const auto& info = find_mixer(spec.name);
  if (!info.attends) {
    std::string names;
    for (const auto& m : mixer_registry())
      if (m.attends) names += (names.empty() ? "" : ", ") + m.name;
    throw Error(where + ": mixer \"" + spec.name + "\" has no attention core that takes given queries, keys and " +
                "values; the mixers that have one: " + names);
  }
  if (n_heads <= 0 || d_model % n_heads != 0)
    throw Error(where + ": d_model " + std::to_string(d_model) + " must be a positive multiple of n_heads " +
                std::to_string(n_heads));
  MixerArgs args{d_model, n_heads, layer_index, validate_options(spec.options, info.schema, where), true};
  return info.make(args);
}

}  // namespace longseq
