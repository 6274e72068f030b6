// The safetensors format (8-byte little-endian header length, a JSON header of
// name -> {dtype, shape, data_offsets}, then raw little-endian data), so the
// weights are readable by the rest of the ecosystem. Parsing validates
// everything and names the file and tensor at fault.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace longseq {

struct TensorFile {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
  const torch::Tensor* find(const std::string& name) const;
};

std::string safetensors_serialize(const TensorFile& file);
TensorFile safetensors_parse(const std::string& bytes, const std::string& source);
void save_safetensors(const std::string& path, const TensorFile& file);  // atomic
TensorFile load_safetensors(const std::string& path);

// Parameters and buffers of a module, by their registered names, with a prefix.
TensorFile module_tensors(const torch::nn::Module& module, const std::string& prefix = "");
// Throws an Error naming `source` and `what` (e.g. "tensor block0.w") when `found`
// differs from `expected` in dtype or shape.
void check_tensor_matches(const torch::Tensor& found, const torch::Tensor& expected, const std::string& source,
                          const std::string& what);
// Copies `file` into the module's parameters and buffers. Every name must match
// in both directions with the same shape; all is checked before anything is
// copied, so a mismatch leaves the module unchanged.
void load_module_tensors(torch::nn::Module& module, const TensorFile& file, const std::string& source,
                         const std::string& prefix = "");

}  // namespace longseq
