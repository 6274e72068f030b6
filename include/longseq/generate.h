// Text generation from a decoder LM: greedy, temperature, top-k and top-p
// (nucleus) sampling. Decoding runs through the mixers' streaming state.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <vector>

#include "longseq/models.h"

namespace longseq {

struct SampleOptions {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  uint64_t seed = 0;
  bool use_cache = true;     // false: recompute the whole sequence at each step
};

// Throws an Error unless temperature is finite and >= 0, top_p in [0, 1] and top_k >= 0.
void check_sample_options(const SampleOptions& opts);

// logits: [V] -> a token id drawn under `opts` with `rng`.
int64_t sample_token(const torch::Tensor& logits, const SampleOptions& opts, std::mt19937_64& rng);

// Returns the new tokens only: `max_new` of them, or fewer when the model's
// learned positions end first (model.max_len; a longer prompt is an Error).
// `step_logits`, when given, receives the [V]
// logits each new token was drawn from.
std::vector<int64_t> generate(LanguageModelImpl& model, const std::vector<int64_t>& prompt, int64_t max_new,
                              const SampleOptions& opts, std::vector<torch::Tensor>* step_logits = nullptr);

}  // namespace longseq
