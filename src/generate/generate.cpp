#include "longseq/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "longseq/common.h"

namespace longseq {

void check_sample_options(const SampleOptions& opts) {
  if (!(std::isfinite(opts.temperature) && opts.temperature >= 0))
    throw Error("generate: temperature must be a finite number >= 0 (0 = greedy), got " +
                std::to_string(opts.temperature));
  if (!(opts.top_p >= 0 && opts.top_p <= 1))
    throw Error("generate: top_p must be a number in [0, 1], got " + std::to_string(opts.top_p));
  if (opts.top_k < 0) throw Error("generate: top_k must be >= 0 (0 = off), got " + std::to_string(opts.top_k));
}

int64_t sample_token(const torch::Tensor& logits, const SampleOptions& opts, std::mt19937_64& rng) {
  check_sample_options(opts);
  auto l = logits.detach().to(torch::kCPU, torch::kDouble).contiguous();  // read through a host pointer below
  const int64_t V = l.numel();
  const double* p = l.data_ptr<double>();
  if (opts.temperature <= 0) return static_cast<int64_t>(std::max_element(p, p + V) - p);
  std::vector<int64_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  int64_t keep = opts.top_k > 0 ? std::min(opts.top_k, V) : V;
  std::vector<double> prob(keep);
  const double top = p[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += prob[i] = std::exp((p[order[i]] - top) / opts.temperature);
  if (opts.top_p < 1.0) {  // smallest prefix whose mass reaches top_p (Holtzman et al. 2020)
    double mass = 0;
    int64_t n = 0;
    while (n < keep && mass < opts.top_p * total) mass += prob[n++];
    keep = std::max<int64_t>(n, 1);
    total = 0;
    for (int64_t i = 0; i < keep; ++i) total += prob[i];
  }
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (int64_t i = 0; i < keep; ++i) {
    u -= prob[i];
    if (u <= 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<int64_t> generate(LanguageModelImpl& model, const std::vector<int64_t>& prompt, int64_t max_new,
                              const SampleOptions& opts, std::vector<torch::Tensor>* step_logits) {
  if (prompt.empty()) throw Error("generate: the prompt must hold at least one token");
  for (auto id : prompt)
    if (id < 0 || id >= model.config().vocab_size)
      throw Error("generate: prompt token " + std::to_string(id) + " is outside the vocabulary");
  check_sample_options(opts);
  // Learned positions end at max_len: a prompt of L <= max_len tokens leaves max_len - L + 1
  // tokens to draw (the last one is predicted, never fed), and generation stops there.
  const auto& cfg = model.config();
  if (cfg.positions == "learned") {
    const int64_t L = static_cast<int64_t>(prompt.size());
    if (L > cfg.max_len)
      throw Error("generate: the prompt holds " + std::to_string(L) + " tokens, more than model.max_len = " +
                  std::to_string(cfg.max_len) + " of the learned positions");
    max_new = std::min(max_new, cfg.max_len - L + 1);
  }
  torch::NoGradGuard no_grad;
  model.eval();
  std::mt19937_64 rng(opts.seed);
  std::vector<int64_t> seq = prompt, out;
  // Tokens go where the model's weights are (a CUDA model takes no CPU tokens).
  const auto params = model.parameters();
  const torch::Device device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  auto as_tensor = [device](const std::vector<int64_t>& ids, size_t from) {
    return torch::tensor(std::vector<int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.end()),
                         torch::kLong).unsqueeze(0).to(device);
  };
  ModelState state;
  if (opts.use_cache) state = model.initial_state(1);
  size_t fed = 0;  // tokens already in the state
  for (int64_t i = 0; i < max_new; ++i) {
    torch::Tensor logits;
    if (opts.use_cache) {
      logits = model.forward(as_tensor(seq, fed), &state);
      fed = seq.size();
    } else {
      logits = model.forward(as_tensor(seq, 0));
    }
    auto last = logits[0][logits.size(1) - 1];
    if (step_logits) step_logits->push_back(last.clone());
    int64_t next = sample_token(last, opts, rng);
    seq.push_back(next);
    out.push_back(next);
  }
  return out;
}

}  // namespace longseq
