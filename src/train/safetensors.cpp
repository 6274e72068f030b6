#include "longseq/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/schema.h"

namespace longseq {

namespace {

struct DtypeName {
  torch::ScalarType type;
  const char* name;
};
const DtypeName kDtypes[] = {
    {torch::kFloat, "F32"}, {torch::kDouble, "F64"}, {torch::kHalf, "F16"}, {torch::kBFloat16, "BF16"},
    {torch::kLong, "I64"},  {torch::kInt, "I32"},    {torch::kShort, "I16"}, {torch::kChar, "I8"},
    {torch::kByte, "U8"},   {torch::kBool, "BOOL"},
};

const char* dtype_name(torch::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw Error(std::string("safetensors: unsupported dtype ") + c10::toString(t));
}

bool dtype_from_name(const std::string& n, torch::ScalarType* t) {
  for (const auto& d : kDtypes)
    if (n == d.name) { *t = d.type; return true; }
  return false;
}

static_assert(sizeof(uint64_t) == 8, "uint64_t must be 8 bytes");
bool little_endian() {
  const uint16_t one = 1;
  return *reinterpret_cast<const uint8_t*>(&one) == 1;
}

}  // namespace

const torch::Tensor* TensorFile::find(const std::string& name) const {
  for (const auto& kv : tensors)
    if (kv.first == name) return &kv.second;
  return nullptr;
}

std::string safetensors_serialize(const TensorFile& file) {
  TORCH_CHECK(little_endian(), "safetensors: big-endian hosts are not supported");
  nlohmann::json header = nlohmann::json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& kv : file.tensors) {
    auto t = kv.second.detach().cpu().contiguous();
    const uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[kv.first] = {{"dtype", dtype_name(t.scalar_type())},
                        {"shape", t.sizes().vec()},
                        {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(t);
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // the format pads the header to 8 bytes
  std::string out(8, '\0');
  const uint64_t hlen = h.size();
  std::memcpy(&out[0], &hlen, 8);
  out += h;
  out.reserve(out.size() + offset);
  for (const auto& t : data)
    out.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size());
  return out;
}

TensorFile safetensors_parse(const std::string& bytes, const std::string& source) {
  auto bad = [&](const std::string& why) { return Error(source + ": not a valid safetensors file: " + why); };
  if (bytes.size() < 8) throw bad("shorter than its 8-byte header length (" + std::to_string(bytes.size()) + " bytes)");
  uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  if (hlen > bytes.size() - 8) throw bad("header length " + std::to_string(hlen) + " exceeds the file (truncated?)");
  nlohmann::json header;
  try {  // bounded nesting: a deep header would overflow the stack when copied or printed
    header = parse_json(bytes.substr(8, hlen), "header");
  } catch (const Error& e) {
    throw bad(e.what());
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  const uint64_t data_size = bytes.size() - 8 - hlen;
  const char* data = bytes.data() + 8 + hlen;
  TensorFile out;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) throw bad("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) throw bad("__metadata__." + m.key() + " is not a string");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& e = *it;
    const std::string where = "tensor " + it.key();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw bad(where + " lacks dtype, shape or data_offsets");
    torch::ScalarType type;
    if (!e["dtype"].is_string() || !dtype_from_name(e["dtype"].get<std::string>(), &type))
      throw bad(where + " has unsupported dtype " + json_excerpt(e["dtype"]));
    std::vector<int64_t> shape;
    if (!e["shape"].is_array()) throw bad(where + " has a shape that is not a list");
    // The byte count is checked against the file below; it must not wrap around on the way
    // (nor may the nonzero dimensions alone, whose product LibTorch also forms).
    const uint64_t limit = static_cast<uint64_t>(INT64_MAX);
    uint64_t nonzero = c10::elementSize(type), need = nonzero;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) throw bad(where + " has a bad dimension " + json_excerpt(d));
      const uint64_t n = d.get<uint64_t>();
      if (n != 0 && nonzero > limit / n)
        throw bad(where + " has shape " + json_excerpt(e["shape"]) + ", more than 2^63 bytes");
      if (n != 0) nonzero *= n;
      shape.push_back(static_cast<int64_t>(n));
      need *= n;
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad(where + " has bad data_offsets " + json_excerpt(off));
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (en < b || en - b != need)
      throw bad(where + " spans " + std::to_string(en - b) + " bytes but its shape and dtype need " + std::to_string(need));
    if (en > data_size)
      throw bad(where + " ends at byte " + std::to_string(en) + " beyond the data (" + std::to_string(data_size) +
                " bytes; truncated?)");
    spans.push_back({b, en});
    auto t = torch::empty(shape, torch::TensorOptions().dtype(type));
    if (need) std::memcpy(t.data_ptr(), data + b, need);
    out.tensors.push_back({it.key(), t});
  }
  std::sort(spans.begin(), spans.end());
  uint64_t pos = 0;
  for (const auto& s : spans) {
    if (s.first != pos) throw bad("tensor data overlaps or leaves a gap at byte " + std::to_string(pos));
    pos = s.second;
  }
  if (pos != data_size) throw bad("data holds " + std::to_string(data_size - pos) + " bytes no tensor claims");
  return out;
}

void save_safetensors(const std::string& path, const TensorFile& file) {
  write_file_atomic(path, safetensors_serialize(file));
}

TensorFile load_safetensors(const std::string& path) {
  if (!path_exists(path)) throw Error("checkpoint " + path + " does not exist");
  return safetensors_parse(read_file(path), path);
}

TensorFile module_tensors(const torch::nn::Module& module, const std::string& prefix) {
  TensorFile f;
  for (const auto& p : module.named_parameters(true)) f.tensors.push_back({prefix + p.key(), p.value()});
  for (const auto& b : module.named_buffers(true)) f.tensors.push_back({prefix + b.key(), b.value()});
  return f;
}

void check_tensor_matches(const torch::Tensor& found, const torch::Tensor& expected, const std::string& source,
                          const std::string& what) {
  if (found.scalar_type() != expected.scalar_type())
    throw Error(source + " does not match the model: " + what + " has dtype " + c10::toString(found.scalar_type()) +
                ", the model expects " + c10::toString(expected.scalar_type()));
  if (found.sizes() != expected.sizes())
    throw Error(source + " does not match the model: " + what + " has shape " + c10::str(found.sizes()) +
                ", the model expects " + c10::str(expected.sizes()));
}

void load_module_tensors(torch::nn::Module& module, const TensorFile& file, const std::string& source,
                         const std::string& prefix) {
  auto own = module_tensors(module, prefix);
  for (const auto& kv : own.tensors) {
    const auto* t = file.find(kv.first);
    if (!t) throw Error(source + " does not match the model: it lacks tensor " + kv.first);
    check_tensor_matches(*t, kv.second, source, "tensor " + kv.first);
  }
  for (const auto& kv : file.tensors) {
    if (kv.first.rfind(prefix, 0) != 0) continue;
    if (!own.find(kv.first))
      throw Error(source + " does not match the model: it has tensor " + kv.first + " that the model lacks");
  }
  torch::NoGradGuard no_grad;
  for (auto& kv : own.tensors) kv.second.copy_(*file.find(kv.first));
}

}  // namespace longseq
