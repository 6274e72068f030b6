// Pieces of the original Transformer's translation recipe (Vaswani et al. 2017; ../shared/mechanisms/transformer.md)
// that do not depend on the model: the learning-rate schedule (sec. 5.3), label-smoothed cross-entropy as
// tensor2tensor computes it (sec. 5.4), and beam search with GNMT's length penalty (sec. 6.1; Wu et al. 2016,
// sec. 7) over a step function, so any decoder with a reorderable state can use it.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace longseq {

// lr(s) = d^-0.5 min(s^-0.5, s w^-1.5) for the 1-based optimizer update s (sec. 5.3, eq. 3).
double noam_learning_rate(int64_t step, int64_t d_model, int64_t warmup);

// Mean over targets != pad_id of the cross-entropy against the smoothed distribution (1 - eps on the target,
// eps / (V - 1) on every other class), minus its minimum -[(1 - eps) log(1 - eps) + eps log(eps / (V - 1))], so a
// perfect smoothed prediction scores 0 (tensor2tensor's smoothing_cross_entropy). logits [N, V], targets [N] long.
torch::Tensor label_smoothed_loss(const torch::Tensor& logits, const torch::Tensor& targets, double eps,
                                  int64_t pad_id = -1);

// GNMT's length penalty ((5 + |Y|) / 6)^alpha, |Y| counting the generated tokens including EOS.
double gnmt_length_penalty(int64_t length, double alpha);

struct BeamOptions {
  int64_t beam = 4;
  double alpha = 0.6;
  int64_t max_len = 50;  // generated tokens at most (the paper: source length + 50)
  int64_t bos = 0, eos = 1;
  bool stop_early = true;  // stop when no alive hypothesis can beat the best finished one
};

struct BeamHypothesis {
  std::vector<int64_t> tokens;  // generated, without BOS, with EOS when finished
  double log_prob = 0;          // log P(Y | X)
  double score = 0;             // log_prob / length penalty
  bool finished = false;
};

// The decoder seen by the search: step(parents, tokens) first keeps its per-hypothesis state rows `parents` ([n]
// long, rows of the previous call's hypotheses, in order; at the first call all 0, the start state), then feeds
// `tokens` ([n] long) and returns next-token log-probabilities [n, V].
using BeamStep = std::function<torch::Tensor(const torch::Tensor& parents, const torch::Tensor& tokens)>;

// tensor2tensor's beam search (transformer.md P2): k alive hypotheses, the top 2k candidates by normalised score each
// step, the best k non-EOS candidates alive, EOS candidates to the finished set (best k kept), early stop when the
// best finished score beats every alive hypothesis's bound log_prob / lp(max_len). One change: an EOS candidate
// finishes only if it ranks within the top k (OpenNMT's and Marian's rule), so that beam 1 is greedy decoding at
// alpha = 0; t2t also finishes EOS candidates ranked k+1..2k. Returns the best finished hypothesis, or the best alive
// one if none.
BeamHypothesis beam_search(const BeamStep& step, const BeamOptions& options);

// beam_search over `sentences` sentences with one batched step per position: at each call the sentences still
// searching own k consecutive rows each, in order (parents index the previous call's rows; at the first call
// sentence s's rows all name row s, its start state); a sentence whose search ended leaves the later calls. Each
// sentence's result is what beam_search gives it alone.
std::vector<BeamHypothesis> beam_search_batch(const BeamStep& step, int64_t sentences, const BeamOptions& options);

// Argmax decoding until EOS or max_len; equal to beam_search with beam 1 when alpha = 0.
BeamHypothesis greedy_search(const BeamStep& step, const BeamOptions& options);

}  // namespace longseq
