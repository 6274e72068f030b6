// The explicit list of feed-forward kinds: one line each. Adding a kind means a new file under ffn/ and one line here.
#include "longseq/ffn.h"

#include <tuple>

#include "longseq/common.h"

namespace longseq {

FfnInfo dense_ffn_info();
FfnInfo chunked_ffn_info();
FfnInfo moe_ffn_info();
FfnInfo sparse_ff_ffn_info();

const std::vector<FfnInfo>& ffn_registry() {
  static const std::vector<FfnInfo> registry = {
      dense_ffn_info(),
      chunked_ffn_info(),
      moe_ffn_info(),
      sparse_ff_ffn_info(),
  };
  return registry;
}

const FfnInfo& find_ffn(const std::string& name) { return find_named(ffn_registry(), name, "feed-forward kind"); }

FfnSpec parse_ffn_spec(const Json& spec, const std::string& where) {
  FfnSpec out;
  Json options;
  std::tie(out.name, options) = split_named_spec(spec, where, "feed-forward kind");
  out.options = validate_options(options, find_ffn(out.name).schema, where);
  return out;
}

FeedForwardKind make_ffn(const FfnSpec& spec, const FfnArgs& args) {
  const auto& info = find_ffn(spec.name);
  FfnArgs a = args;
  a.options = validate_options(spec.options, info.schema, "feed-forward " + spec.name);
  return info.make(a);
}

std::map<std::string, torch::Tensor> FeedForwardKindImpl::aux_losses() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& kv : losses_) out[kv.first] = kv.second / static_cast<double>(calls_);
  return out;
}

std::map<std::string, double> FeedForwardKindImpl::aux_metrics() const {
  std::map<std::string, double> out;
  for (const auto& kv : metrics_) out[kv.first] = kv.second / static_cast<double>(calls_);
  return out;
}

void FeedForwardKindImpl::record_aux(const std::map<std::string, torch::Tensor>& losses,
                                     const std::map<std::string, double>& metrics) {
  for (const auto& kv : losses) losses_[kv.first] = losses_.count(kv.first) ? losses_[kv.first] + kv.second : kv.second;
  for (const auto& kv : metrics) metrics_[kv.first] += kv.second;
  ++calls_;
}

}  // namespace longseq
