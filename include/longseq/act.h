// Adaptive Computation Time over depth, as the Universal Transformer uses it
// (Dehghani et al. 2019, sec. 2.2 and its ACT listing; Graves 2016): a
// halting unit p = sigmoid(s w_h + b_h) per position, halting when the
// accumulated probability would pass 1 - epsilon, the remainder R as the
// halting step's weight, ponder cost N + R. One step of the recurrence is the
// caller's (a shared block); this file holds the halting arithmetic and the
// loop, so that its exact cases are tested apart from any block.
// Decisions (../shared/mechanisms/universal_transformer.md, "Details"):
// - a halted flag, not t2t's `c < 1` test, decides who still runs (after
//   halting c = c + R can round below 1 and would re-activate a position);
// - halted positions carry their state unchanged to later steps (the paper's
//   "copied to the next step"; t2t keeps transforming them), so they serve
//   as keys and values for the positions still running as they were when
//   they halted;
// - the interpolating update out = w y + (1 - w) out ("basic", t2t's default,
//   with the operator precedence of the fixed code, t2t PR #1011) or the
//   weighted sum out = out + w y ("accumulated", Graves's form);
// - no forced halt at max_steps: positions that never pass 1 - epsilon get no
//   remainder (R = 0), as in t2t.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>

namespace longseq {

struct ActOptions {
  double epsilon = 0.01;    // halt when the accumulated probability would exceed 1 - epsilon
  int64_t max_steps = 12;   // the loop's cap (t2t: 2 x num_hidden_layers)
  bool accumulated = false; // out += w y instead of the interpolation
  bool run_to_cap = false;   // step to max_steps even when every position halted (decoding: every step's cache
                             // then holds every token, as the whole-sequence loop would have given it)
};

// The running totals of one ACT loop, all [B, T] except out [B, T, C].
struct ActState {
  torch::Tensor c;       // accumulated halting probability
  torch::Tensor R;       // remainders (set at the halting step)
  torch::Tensor N;       // steps each position ran (ponder time)
  torch::Tensor halted;  // bool
  torch::Tensor out;     // the weighted output so far
  int64_t steps = 0;     // iterations run (= max over positions of N)
};

// Zeros for a state of batch B, length T, width C on `like`'s device and dtype.
ActState act_start(int64_t B, int64_t T, int64_t C, const torch::Tensor& like);

// One ACT update with halting probabilities p [B, T] and the block's output y [B, T, C] of this step; returns
// the weights w [B, T] it gave y. Positions already halted get w = 0 and keep their totals.
torch::Tensor act_update(ActState& st, const torch::Tensor& p, const torch::Tensor& y, const ActOptions& o);

// Whether another step is due: fewer than max_steps have run and some position runs (or run_to_cap).
bool act_continues(const ActState& st, const ActOptions& o);

// What one step gives for state H at step t: the halting probabilities p [B, T] and the block's output y.
using ActStep = std::function<std::pair<torch::Tensor, torch::Tensor>(const torch::Tensor& H, int64_t t)>;

// The whole loop from state H [B, T, C], steps t = 1, 2, ...; halted positions keep their H. Returns the final
// state (out, N, R, steps).
ActState act_loop(const torch::Tensor& H0, const ActStep& step, const ActOptions& o);

// The ponder cost tau * mean over positions of (N + R) (t2t: padding included).
torch::Tensor act_ponder_cost(const ActState& st, double tau);

}  // namespace longseq
