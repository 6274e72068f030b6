// Feed-forward kinds: the position-wise half of a standard block. One file per kind under src/ffn/; the registry
// (src/ffn/registry.cpp) is the one place that lists them all. A kind may produce auxiliary losses (load balancing,
// router z-loss), already weighted and in the forward's graph, and metrics (dropped tokens, expert load); the model
// sums the losses into the training objective and the trainer logs both (metrics.jsonl).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "longseq/schema.h"

namespace longseq {

class FeedForwardKindImpl : public torch::nn::Module {
 public:
  // x: [B, T, C] -> [B, T, C]; padding_mask [B, T] bool (true = pad) or undefined: pads take no capacity and no part
  // in balancing statistics.
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& padding_mask = {}) = 0;
  // Losses and metrics of the calls since the last clear_aux(), each the mean over those calls.
  std::map<std::string, torch::Tensor> aux_losses() const;
  std::map<std::string, double> aux_metrics() const;
  void clear_aux() { losses_.clear(), metrics_.clear(), calls_ = 0; }

 protected:
  // Called by a kind once per forward with that forward's weighted losses and its metrics.
  void record_aux(const std::map<std::string, torch::Tensor>& losses, const std::map<std::string, double>& metrics);

 private:
  std::map<std::string, torch::Tensor> losses_;
  std::map<std::string, double> metrics_;
  int64_t calls_ = 0;
};
using FeedForwardKind = std::shared_ptr<FeedForwardKindImpl>;

struct FfnArgs {
  int64_t d_model = 0, d_ff = 0;
  double dropout = 0;
  std::string activation = "gelu";  // model.ff_activation (dense kinds)
  int64_t layer_index = 0;
  Json options;  // validated, defaults filled
};

struct FfnInfo {
  std::string name;
  std::string summary;  // one line: paper and what it does
  std::string citation;
  Schema schema;
  std::function<FeedForwardKind(const FfnArgs&)> make;
  // Why the kind cannot run inside the reversible stack (recomputed in the backward); empty = it can.
  std::string not_reversible;
  // Why model.ff_chunks > 1 would change what the kind computes (it is called once per slice); empty = it would not.
  std::string not_sliceable;
};

const std::vector<FfnInfo>& ffn_registry();
const FfnInfo& find_ffn(const std::string& name);  // throws Error listing names

struct FfnSpec {
  std::string name = "dense";
  Json options = Json::object();  // validated, defaults filled
};
// "name" or {"name": ..., option: value}; errors name `where`.
FfnSpec parse_ffn_spec(const Json& spec, const std::string& where);
FeedForwardKind make_ffn(const FfnSpec& spec, const FfnArgs& args);

}  // namespace longseq
