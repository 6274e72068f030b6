// The model-independent parts of the translation recipe (translation.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "longseq/common.h"
#include "longseq/translation.h"

namespace longseq {

double noam_learning_rate(int64_t step, int64_t d_model, int64_t warmup) {
  if (step < 1 || d_model < 1 || warmup < 1)
    throw Error("noam learning rate: step, d_model and warmup must be >= 1 (the step is 1-based)");
  const double s = static_cast<double>(step);
  return std::pow(static_cast<double>(d_model), -0.5) * std::min(std::pow(s, -0.5), s * std::pow(warmup, -1.5));
}

torch::Tensor label_smoothed_loss(const torch::Tensor& logits, const torch::Tensor& targets, double eps,
                                  int64_t pad_id) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "label_smoothed_loss: logits [N, V] and targets [N], got ", logits.sizes(), " and ", targets.sizes());
  const int64_t V = logits.size(1);
  TORCH_CHECK(V >= 2 && eps >= 0 && eps < 1, "label_smoothed_loss: needs V >= 2 and 0 <= eps < 1");
  auto logp = torch::log_softmax(logits, -1);
  const double off = eps / static_cast<double>(V - 1);
  // -sum_c q_c log p_c with q = off everywhere and 1 - eps at the target.
  auto nll = -(logp.gather(1, targets.unsqueeze(1)).squeeze(1) * (1.0 - eps - off) + logp.sum(1) * off);
  const double floor_value = -((1.0 - eps) * std::log(1.0 - eps) + (eps > 0 ? eps * std::log(off) : 0.0));
  auto keep = pad_id >= 0 ? targets.ne(pad_id).to(nll.dtype()) : torch::ones_like(nll);
  return ((nll - floor_value) * keep).sum() / keep.sum().clamp_min(1.0);
}

double gnmt_length_penalty(int64_t length, double alpha) {
  return std::pow((5.0 + static_cast<double>(length)) / 6.0, alpha);
}

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

void check(const BeamOptions& o) {
  if (o.beam < 1) throw Error("beam search: beam must be >= 1, got " + std::to_string(o.beam));
  if (o.max_len < 1) throw Error("beam search: max_len must be >= 1, got " + std::to_string(o.max_len));
  if (!(o.alpha >= 0)) throw Error("beam search: alpha must be >= 0");
}

}  // namespace

BeamHypothesis beam_search(const BeamStep& step, const BeamOptions& o) {
  check(o);
  const int64_t k = o.beam;
  std::vector<BeamHypothesis> alive(k), finished;
  for (int64_t b = 1; b < k; ++b) alive[b].log_prob = kNegInf;  // step 1 expands the start state once
  auto parents = torch::zeros({k}, torch::kLong);
  auto tokens = torch::full({k}, o.bos, torch::kLong);
  for (int64_t i = 0; i < o.max_len; ++i) {
    auto logp = step(parents, tokens).to(torch::kDouble).contiguous();  // [k, V]
    const int64_t V = logp.size(1);
    std::vector<double> base(k);
    for (int64_t b = 0; b < k; ++b) base[b] = alive[b].log_prob;
    auto cand = (logp + torch::tensor(base, torch::kDouble).unsqueeze(1)).flatten();  // [k V]
    const double lp = gnmt_length_penalty(i + 1, o.alpha);
    auto top = torch::topk(cand, std::min<int64_t>(2 * k, k * V));
    auto vals = std::get<0>(top), idx = std::get<1>(top);
    std::vector<BeamHypothesis> next;
    std::vector<int64_t> next_parents, next_tokens;
    for (int64_t c = 0; c < vals.size(0); ++c) {
      const double v = vals[c].item<double>();
      if (v == kNegInf) break;
      const int64_t flat = idx[c].item<int64_t>(), parent = flat / V, token = flat % V;
      BeamHypothesis h = alive[parent];
      h.tokens.push_back(token);
      h.log_prob = v, h.score = v / lp;
      if (token == o.eos) {
        h.finished = true;
        if (c < k) finished.push_back(h);  // only EOS candidates within the top k finish, so beam 1 is greedy
      } else if (static_cast<int64_t>(next.size()) < k) {  // the best k non-EOS candidates stay alive
        next.push_back(h);
        next_parents.push_back(parent), next_tokens.push_back(token);
      }
    }
    std::stable_sort(finished.begin(), finished.end(),
                     [](const BeamHypothesis& a, const BeamHypothesis& b) { return a.score > b.score; });
    if (static_cast<int64_t>(finished.size()) > k) finished.resize(k);
    if (next.empty()) break;
    while (static_cast<int64_t>(next.size()) < k) {  // fewer than k live candidates: pad with dead copies
      next.push_back(next.back());
      next.back().log_prob = kNegInf;
      next_parents.push_back(next_parents.back()), next_tokens.push_back(next_tokens.back());
    }
    alive = next;
    parents = torch::tensor(next_parents, torch::kLong), tokens = torch::tensor(next_tokens, torch::kLong);
    if (o.stop_early && !finished.empty() &&
        finished.front().score > alive.front().log_prob / gnmt_length_penalty(o.max_len, o.alpha))
      break;  // an extension's score is at most its log-prob (<= now) over lp(max_len) (>= its own lp)
  }
  if (!finished.empty()) return finished.front();
  BeamHypothesis best = alive.front();
  best.score = best.log_prob / gnmt_length_penalty(static_cast<int64_t>(best.tokens.size()), o.alpha);
  return best;
}

BeamHypothesis greedy_search(const BeamStep& step, const BeamOptions& o) {
  check(o);
  BeamHypothesis h;
  auto parents = torch::zeros({1}, torch::kLong);
  auto token = torch::full({1}, o.bos, torch::kLong);
  for (int64_t i = 0; i < o.max_len; ++i) {
    auto logp = step(parents, token).to(torch::kDouble);
    const int64_t t = logp[0].argmax().item<int64_t>();
    h.log_prob += logp[0][t].item<double>();
    h.tokens.push_back(t);
    token = torch::full({1}, t, torch::kLong);
    if (t == o.eos) {
      h.finished = true;
      break;
    }
  }
  h.score = h.log_prob / gnmt_length_penalty(static_cast<int64_t>(h.tokens.size()), o.alpha);
  return h;
}

}  // namespace longseq
