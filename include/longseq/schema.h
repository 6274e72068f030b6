// Option schemas: the single description of every config key (name, type,
// default, range, one-line doc). Used to validate JSON configs with messages
// that name the key, and to print documentation (`longseq info`).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace longseq {

using Json = nlohmann::json;

enum class OptionType { Int, Float, Bool, String, IntList, Any };

struct OptionSpec {
  std::string name;
  OptionType type;
  Json default_value;
  std::string doc;
  double min = -1e300;               // inclusive bounds for Int/Float (and IntList items)
  double max = 1e300;
  std::vector<std::string> choices;  // allowed values for String (empty = any)
  bool per_layer = false;            // IntList: one entry for every layer or one per layer
};

using Schema = std::vector<OptionSpec>;

const char* option_type_name(OptionType t);

// Returns `given` with defaults filled in. Throws Error naming `where.key` for
// an unknown key (listing the valid ones), a wrong type or a value out of range.
Json validate_options(const Json& given, const Schema& schema, const std::string& where);

// Deepest nesting of arrays and objects accepted in JSON read from a file or the
// command line: far beyond any config or safetensors header, far below the depth
// at which nlohmann::json's recursive copy and dump overflow the stack.
constexpr size_t kMaxJsonDepth = 100;

// Parses JSON text. A syntax error, or nesting deeper than kMaxJsonDepth, is an
// Error naming `source`, the line and the column.
Json parse_json(const std::string& text, const std::string& source);

// A value for an error message: its JSON text (invalid UTF-8 replaced), cut
// after about `max_chars` characters.
std::string json_excerpt(const Json& value, size_t max_chars = 60);

// A registry entry's spec: "name" or {"name": ..., option: value, ...} -> (name, options not yet validated).
// Errors name `where` and `what` (mixer, block kind, feed-forward kind).
std::pair<std::string, Json> split_named_spec(const Json& spec, const std::string& where, const std::string& what);

// Throws Error("unknown <what> \"name\"; registered <what>s: names").
[[noreturn]] void throw_unknown(const std::string& what, const std::string& name, const std::string& names);

// The entry named `name` of a registry (a vector of infos with a `name`); an Error listing the registered names.
template <class Info>
const Info& find_named(const std::vector<Info>& registry, const std::string& name, const std::string& what) {
  std::string names;
  for (const auto& info : registry) {
    if (info.name == name) return info;
    names += (names.empty() ? "" : ", ") + info.name;
  }
  throw_unknown(what, name, names);
}

// Markdown table of a schema, for `longseq info` and the docs.
std::string schema_markdown(const Schema& schema);

}  // namespace longseq
