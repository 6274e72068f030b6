// libFuzzer target: the safetensors reader. Any bytes must parse or fail with a
// longseq::Error (never a crash, a hang or another exception); a file that parses
// must come back unchanged from a serialize/parse round trip, and loading it into
// a module must succeed or fail with an Error.
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "longseq/common.h"
#include "longseq/safetensors.h"

using namespace longseq;

namespace {

torch::nn::Linear* module = nullptr;  // a small module to load parsed files into

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  // Compares raw bytes, not values: NaN payloads and -0 must survive too.
  const size_t n = static_cast<size_t>(a.numel()) * a.element_size();
  return n == static_cast<size_t>(b.numel()) * b.element_size() && (n == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), n) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  module = new torch::nn::Linear(3, 2);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  TensorFile file;
  try {
    file = safetensors_parse(bytes, "input.safetensors");
  } catch (const Error&) {
    return 0;  // refused with a message: what the reader must do with bad bytes
  }
  const TensorFile again = safetensors_parse(safetensors_serialize(file), "round trip");
  if (again.tensors.size() != file.tensors.size() || again.metadata != file.metadata) __builtin_trap();
  for (size_t i = 0; i < file.tensors.size(); ++i) {
    const auto &a = file.tensors[i], &b = again.tensors[i];
    if (a.first != b.first || a.second.scalar_type() != b.second.scalar_type() || a.second.sizes() != b.second.sizes() ||
        !same_bytes(a.second, b.second))
      __builtin_trap();
  }
  try {
    load_module_tensors(**module, file, "input.safetensors");
  } catch (const Error&) {
  }
  return 0;
}
