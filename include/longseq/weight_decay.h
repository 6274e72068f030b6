// Which parameters AdamW's decoupled weight decay pulls toward zero: the weight
// matrices of projections and embeddings (torch::nn::Linear and
// torch::nn::Embedding weights), nothing else by default. Biases, norms and a
// mixer's own learned quantities (relative-position biases, kernel means and
// variances, priors, packed sequences) are not weights to shrink: decaying a
// factor that starts at the identity, or a prior, changes what the mechanism
// computes. A module whose own parameters should decay says so by also
// deriving from WeightDecayChoice.
#pragma once
#include <torch/torch.h>

#include <set>
#include <string>

namespace longseq {

class WeightDecayChoice {
 public:
  virtual ~WeightDecayChoice() = default;
  // Whether the module's own parameter `name` (as registered, not a submodule's) is decayed.
  virtual bool decays(const std::string& name) const = 0;
};

// Full names (as in root.named_parameters()) of the parameters that decay.
std::set<std::string> decayed_parameters(const torch::nn::Module& root);

}  // namespace longseq
