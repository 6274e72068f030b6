#include <cmath>

#include "longseq/train.h"

namespace longseq {

EvalResult evaluate_lm(DecoderLMImpl& model, const TokenSplit& split, int64_t batch, int64_t seq_len,
                       int64_t max_batches) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  double nats = 0;
  int64_t tokens = 0;
  for (const auto& b : eval_batches(split.tokens, batch, seq_len, max_batches)) {
    auto logits = model.forward(b.input);
    auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}), b.target.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    nats += loss.item<double>();
    tokens += b.target.numel();
  }
  model.train(was_training);
  EvalResult r;
  r.tokens = tokens;
  r.loss = nats / static_cast<double>(std::max<int64_t>(tokens, 1));
  // Bits per byte: the split's bytes per token converts nats/token to bits/byte.
  const double tokens_per_byte = static_cast<double>(split.tokens.size(0)) / static_cast<double>(std::max<int64_t>(split.bytes, 1));
  r.bpb = r.loss * tokens_per_byte / std::log(2.0);
  r.ppl = std::exp(r.loss);
  return r;
}

}  // namespace longseq
