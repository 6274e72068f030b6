// Option schemas: the single description of every config key (name, type,
// default, range, one-line doc). Used to validate JSON configs with messages
// that name the key, and to print documentation (`longseq info`).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
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

// Markdown table of a schema, for `longseq info` and the docs.
std::string schema_markdown(const Schema& schema);

}  // namespace longseq
