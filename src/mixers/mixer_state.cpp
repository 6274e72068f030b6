// The streaming-state contract of mixer.h: the default reorder (a refusal naming the state) and the helpers the
// states' own reorders share.
#include <cxxabi.h>

#include <cstdlib>
#include <typeinfo>

#include "longseq/common.h"
#include "longseq/mixer.h"

namespace longseq {

namespace {

// The state's class name without namespaces ("KvCache"), for messages.
std::string mixer_state_class_name(const MixerState& s) {
  const char* mangled = typeid(s).name();
  int status = 0;
  char* plain = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && plain ? plain : mangled;
  std::free(plain);
  const auto colon = name.rfind("::");
  return colon == std::string::npos ? name : name.substr(colon + 2);
}

}  // namespace

void MixerState::reorder(const torch::Tensor& index) {
  (void)index;
  throw Error("streaming state " + mixer_state_class_name(*this) +
              " cannot reorder its batch rows (it does not implement MixerState::reorder); decode without a per-row "
              "cache instead");
}

torch::Tensor MixerImpl::attend_qkv(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, MixContext&) {
  throw Error("mixer " + name() + " has no attention core that takes given queries, keys and values");
}

torch::Tensor reorder_index(const torch::Tensor& index, int64_t rows, const std::string& what) {
  if (!index.defined() || index.dim() != 1 || index.numel() < 1 || !at::isIntegralType(index.scalar_type(), false))
    throw Error(what + ": reorder needs an index of n >= 1 integer rows [n], got " +
                (index.defined() ? std::string(index.toString()) + " " + c10::str(index.sizes()) : "undefined"));
  auto i = index.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t lo = i.min().item<int64_t>(), hi = i.max().item<int64_t>();
  if (lo < 0 || (rows >= 0 && hi >= rows))
    throw Error(what + ": reorder index " + std::to_string(lo < 0 ? lo : hi) + " is out of range for a state of " +
                (rows >= 0 ? std::to_string(rows) : std::string("unknown")) + " rows");
  return i;
}

torch::Tensor select_rows(const torch::Tensor& t, const torch::Tensor& index, int64_t dim) {
  return t.defined() ? t.index_select(dim, index.to(t.device())) : t;
}

int64_t rows_of(const std::vector<torch::Tensor>& tensors) {
  for (const auto& t : tensors)
    if (t.defined()) return t.size(0);
  return -1;
}

}  // namespace longseq
