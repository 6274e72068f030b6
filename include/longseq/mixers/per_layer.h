// Options that hold one value for every layer or one value per layer.
#pragma once
#include <string>

#include "longseq/common.h"
#include "longseq/schema.h"

namespace longseq {

// options[key] is a list: a single entry applies to every layer, otherwise
// entry `layer` is taken; a list too short for the layer is an Error naming it.
inline int64_t per_layer_value(const Json& options, const std::string& key, int64_t layer, const std::string& mixer) {
  const auto& list = options.at(key);
  if (list.empty()) throw Error(mixer + "." + key + " must not be empty");
  if (list.size() == 1) return list[0].get<int64_t>();
  if (layer >= static_cast<int64_t>(list.size()))
    throw Error(mixer + "." + key + " has " + std::to_string(list.size()) + " entries but layer " +
                std::to_string(layer) + " needs one: give a single value or one per layer");
  return list[layer].get<int64_t>();
}

}  // namespace longseq
