// The explicit list of block kinds: one line each. Adding a kind means a new file under blocks/ and one line here.
#include "longseq/blocks.h"

#include <tuple>

#include "longseq/common.h"

namespace longseq {

BlockInfo standard_block_info();
BlockInfo post_norm_block_info();
BlockInfo mega_block_info();
BlockInfo gss_block_info();

const std::vector<BlockInfo>& block_registry() {
  static const std::vector<BlockInfo> registry = {
      standard_block_info(),
      post_norm_block_info(),
      mega_block_info(),
      gss_block_info(),
  };
  return registry;
}

const BlockInfo& find_block(const std::string& name) { return find_named(block_registry(), name, "block kind"); }

BlockSpec parse_block_spec(const Json& spec, const std::string& where) {
  BlockSpec out;
  Json options;
  std::tie(out.name, options) = split_named_spec(spec, where, "block kind");
  out.options = validate_options(options, find_block(out.name).schema, where);
  return out;
}

Layer make_layer(const BlockSpec& block, const BlockArgs& args) {
  const auto& info = find_block(block.name);
  if (info.uses_mixer && (!args.mixer || args.mixer->name.empty()))
    throw Error("block " + block.name + " (layer " + std::to_string(args.layer_index) + ") needs a mixer");
  BlockArgs a = args;
  a.options = validate_options(block.options, info.schema, "block " + block.name);
  return info.make(a);
}

}  // namespace longseq
