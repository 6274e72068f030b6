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
    return Error(key + " must be of type " + option_type_name(s.type) + ", got " + v.dump());
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
  if (!in.is_object()) throw Error(where + " must be a JSON object, got " + in.dump());
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

}  // namespace longseq
