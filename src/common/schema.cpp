#include "longseq/schema.h"

#include <cmath>
#include <sstream>

#include "longseq/common.h"

namespace longseq {

const char* option_type_name(OptionType t) {
  switch (t) {
    case OptionType::Int: return "int";
    case OptionType::Float: return "float";
    case OptionType::Bool: return "bool";
    case OptionType::String: return "string";
    case OptionType::IntList: return "int list";
    case OptionType::Any: return "json";
  }
  return "?";
}

namespace {

// "line L, column C" of byte `at` of `text`, both counted from 1.
std::string position_text(const std::string& text, size_t at) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < at && i < text.size(); ++i) {
    if (text[i] == '\n') { ++line; col = 1; } else { ++col; }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(col);
}

// Byte offset of the first '[' or '{' that opens a level deeper than `max_depth`,
// or npos. Strings are skipped as the parser skips them, so on any text the
// parser accepts up to that point this depth is the parser's.
size_t too_deep_at(const std::string& text, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string::npos;
}

std::string number_text(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<long long>(v));
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string range_text(const OptionSpec& s) { return "[" + number_text(s.min) + ", " + number_text(s.max) + "]"; }

void check_number(const OptionSpec& s, double v, const std::string& key) {
  if (!(v >= s.min && v <= s.max))
    throw Error(key + " = " + number_text(v) + " is out of range; allowed " + range_text(s));
}

Json check_value(const OptionSpec& s, const Json& v, const std::string& key) {
  auto wrong = [&]() {
    return Error(key + " must be of type " + option_type_name(s.type) + ", got " + json_excerpt(v));
  };
  switch (s.type) {
    case OptionType::Int:
      if (!v.is_number_integer()) throw wrong();
      check_number(s, v.get<double>(), key);
      return v;
    case OptionType::Float:
      if (!v.is_number()) throw wrong();
      check_number(s, v.get<double>(), key);
      return Json(v.get<double>());
    case OptionType::Bool:
      if (!v.is_boolean()) throw wrong();
      return v;
    case OptionType::String:
      if (!v.is_string()) throw wrong();
      if (!s.choices.empty()) {
        auto str = v.get<std::string>();
        bool ok = false;
        for (const auto& c : s.choices) ok = ok || c == str;
        if (!ok) throw Error(key + " = \"" + str + "\" is not allowed; choose one of: " + join(s.choices));
      }
      return v;
    case OptionType::IntList:
      if (v.is_number_integer()) {  // a single value stands for a one-item list
        check_number(s, v.get<double>(), key);
        return Json::array({v});
      }
      if (!v.is_array()) throw wrong();
      for (const auto& item : v) {
        if (!item.is_number_integer()) throw wrong();
        check_number(s, item.get<double>(), key);
      }
      return v;
    case OptionType::Any:
      return v;
  }
  return v;
}

}  // namespace

Json validate_options(const Json& given, const Schema& schema, const std::string& where) {
  Json in = given.is_null() ? Json::object() : given;
  if (!in.is_object()) throw Error(where + " must be a JSON object, got " + json_excerpt(in));
  std::vector<std::string> names;
  for (const auto& s : schema) names.push_back(s.name);
  for (auto it = in.begin(); it != in.end(); ++it) {
    bool known = false;
    for (const auto& s : schema) known = known || s.name == it.key();
    if (!known)
      throw Error("unknown key " + where + "." + it.key() + "; valid keys: " + join(names));
  }
  Json out = Json::object();
  for (const auto& s : schema) {
    const std::string key = where + "." + s.name;
    out[s.name] = in.contains(s.name) ? check_value(s, in[s.name], key) : s.default_value;
  }
  return out;
}

Json parse_json(const std::string& text, const std::string& source) {
  const size_t deep = too_deep_at(text, kMaxJsonDepth);
  if (deep != std::string::npos)
    throw Error(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels at " +
                position_text(text, deep));
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw Error(source + ": malformed JSON at " + position_text(text, e.byte > 0 ? e.byte - 1 : 0) + ": " + e.what());
  } catch (const Json::exception& e) {  // e.g. out_of_range for a number beyond a double (1e400)
    throw Error(source + ": unreadable JSON: " + e.what());
  }
}

std::string json_excerpt(const Json& value, size_t max_chars) {
  std::string s = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

std::string schema_markdown(const Schema& schema) {
  std::ostringstream os;
  os << "| option | type | default | range / choices | meaning |\n|---|---|---|---|---|\n";
  for (const auto& s : schema) {
    std::string range;
    if (!s.choices.empty()) range = join(s.choices, ", ");
    else if (s.type == OptionType::Int || s.type == OptionType::Float || s.type == OptionType::IntList) {
      if (s.min > -1e299 || s.max < 1e299) range = range_text(s);
    }
    os << "| " << s.name << " | " << option_type_name(s.type) << " | " << s.default_value.dump()
       << " | " << range << " | " << s.doc << " |\n";
  }
  return os.str();
}

std::pair<std::string, Json> split_named_spec(const Json& spec, const std::string& where, const std::string& what) {
  if (spec.is_string()) return {spec.get<std::string>(), Json::object()};
  if (!spec.is_object())
    throw Error(where + " must be a " + what + " name or an object with \"name\", got " + json_excerpt(spec));
  if (!spec.contains("name") || !spec["name"].is_string())
    throw Error(where + " must have a string \"name\" (the " + what + "), got " + json_excerpt(spec));
  Json options = spec;
  options.erase("name");
  return {spec["name"].get<std::string>(), options};
}

void throw_unknown(const std::string& what, const std::string& name, const std::string& names) {
  throw Error("unknown " + what + " \"" + name + "\"; registered " + what + "s: " + names);
}

}  // namespace longseq
