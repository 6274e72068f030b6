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

namespace {

// One sentence's search: its alive and finished hypotheses, and what its rows feed next (parents are its own rows of
// the previous call, 0 .. k-1).
struct SentenceBeam {
  std::vector<BeamHypothesis> alive, finished;
  std::vector<int64_t> parents, tokens;
  bool done = false;
};

SentenceBeam start_sentence_beam(const BeamOptions& o) {
  SentenceBeam s;
  s.alive.resize(o.beam);
  for (int64_t b = 1; b < o.beam; ++b) s.alive[b].log_prob = kNegInf;  // step 1 expands the start state once
  s.parents.assign(o.beam, 0);
  s.tokens.assign(o.beam, o.bos);
  return s;
}

// Step i (0-based) of one sentence from its rows' log-probabilities logp [k, V].
void advance_sentence_beam(SentenceBeam& s, const torch::Tensor& logp, int64_t i, const BeamOptions& o) {
  const int64_t k = o.beam, V = logp.size(1);
  std::vector<double> base(k);
  for (int64_t b = 0; b < k; ++b) base[b] = s.alive[b].log_prob;
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
    BeamHypothesis h = s.alive[parent];
    h.tokens.push_back(token);
    h.log_prob = v, h.score = v / lp;
    if (token == o.eos) {
      h.finished = true;
      if (c < k) s.finished.push_back(h);  // only EOS candidates within the top k finish, so beam 1 is greedy
    } else if (static_cast<int64_t>(next.size()) < k) {  // the best k non-EOS candidates stay alive
      next.push_back(h);
      next_parents.push_back(parent), next_tokens.push_back(token);
    }
  }
  std::stable_sort(s.finished.begin(), s.finished.end(),
                   [](const BeamHypothesis& a, const BeamHypothesis& b) { return a.score > b.score; });
  if (static_cast<int64_t>(s.finished.size()) > k) s.finished.resize(k);
  if (next.empty()) {
    s.done = true;
    return;
  }
  while (static_cast<int64_t>(next.size()) < k) {  // fewer than k live candidates: pad with dead copies
    next.push_back(next.back());
    next.back().log_prob = kNegInf;
    next_parents.push_back(next_parents.back()), next_tokens.push_back(next_tokens.back());
  }
  s.alive = next;
  s.parents = next_parents, s.tokens = next_tokens;
  // An extension's score is at most its log-prob (<= now) over lp(max_len) (>= its own lp).
  if (o.stop_early && !s.finished.empty() &&
      s.finished.front().score > s.alive.front().log_prob / gnmt_length_penalty(o.max_len, o.alpha))
    s.done = true;
}

BeamHypothesis best_of_sentence_beam(const SentenceBeam& s, const BeamOptions& o) {
  if (!s.finished.empty()) return s.finished.front();
  BeamHypothesis best = s.alive.front();
  best.score = best.log_prob / gnmt_length_penalty(static_cast<int64_t>(best.tokens.size()), o.alpha);
  return best;
}

}  // namespace

std::vector<BeamHypothesis> beam_search_batch(const BeamStep& step, int64_t sentences, const BeamOptions& o) {
  check(o);
  if (sentences < 1) throw Error("beam search: needs at least one sentence, got " + std::to_string(sentences));
  const int64_t k = o.beam;
  std::vector<SentenceBeam> beams(sentences, start_sentence_beam(o));
  std::vector<int64_t> active(sentences), first_row(sentences);  // first_row: the sentence's row 0 in the last call
  for (int64_t s = 0; s < sentences; ++s) active[s] = s, first_row[s] = s;  // the start state: one row per sentence
  for (int64_t i = 0; i < o.max_len && !active.empty(); ++i) {
    std::vector<int64_t> parents, tokens;
    for (int64_t s : active)
      for (int64_t r = 0; r < k; ++r)
        parents.push_back(first_row[s] + beams[s].parents[r]), tokens.push_back(beams[s].tokens[r]);
    auto logp = step(torch::tensor(parents, torch::kLong), torch::tensor(tokens, torch::kLong))
                    .to(torch::kDouble)
                    .contiguous();  // [active k, V]
    TORCH_CHECK(logp.dim() == 2 && logp.size(0) == static_cast<int64_t>(parents.size()),
                "beam search: the step must return [", parents.size(), ", V] log-probabilities, got ", logp.sizes());
    std::vector<int64_t> still;
    for (size_t a = 0; a < active.size(); ++a) {
      const int64_t s = active[a];
      advance_sentence_beam(beams[s], logp.narrow(0, static_cast<int64_t>(a) * k, k), i, o);
      first_row[s] = static_cast<int64_t>(a) * k;
      if (!beams[s].done) still.push_back(s);  // a finished sentence's rows leave the next calls
    }
    active = still;
  }
  std::vector<BeamHypothesis> out;
  for (const auto& b : beams) out.push_back(best_of_sentence_beam(b, o));
  return out;
}

BeamHypothesis beam_search(const BeamStep& step, const BeamOptions& o) { return beam_search_batch(step, 1, o).front(); }

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
