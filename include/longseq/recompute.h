// Per-forward records for recomputation (reversible layers, Kitaev et al.
// 2020, sec. 3). A training forward whose activations the backward recomputes
// records what it drew or used (rotations' draw index, centroids, random
// features) in a ForwardRecord; the recomputation of that forward replays
// that record, not the mixer's latest state, so any number of forwards may
// precede their backwards. The record is owned by the forward's autograd node
// and freed with its graph.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>

namespace longseq {

class ForwardRecord {
 public:
  ForwardRecord();
  ~ForwardRecord();
  ForwardRecord(const ForwardRecord&) = delete;
  ForwardRecord& operator=(const ForwardRecord&) = delete;
  // Throws if (owner, name) was recorded already: one forward, one value.
  void put(const void* owner, const std::string& name, at::Tensor value);
  // Throws if the forward recorded nothing under (owner, name).
  const at::Tensor& get(const void* owner, const std::string& name) const;

 private:
  std::map<std::pair<const void*, std::string>, at::Tensor> entries_;
};

// Records alive in the process (a test hook: each must die with its graph).
int64_t live_forward_records();

// Whether the current forward is a recomputation for a backward pass: mixers
// skip their side effects (counters, k-means updates) and replay their draws.
bool in_recompute();

// While alive, forwards on this thread record into `record` (recompute =
// false) or replay from it (recompute = true, in_recompute() is true).
class RecordScope {
 public:
  RecordScope(ForwardRecord* record, bool recompute);
  ~RecordScope();
  RecordScope(const RecordScope&) = delete;
  RecordScope& operator=(const RecordScope&) = delete;

 private:
  ForwardRecord* previous_record_;
  bool previous_recompute_;
};

// For mixers, in training forwards: in a recomputation, the value its forward
// recorded under (owner, name); otherwise make(), recorded when the forward
// records. make() runs the forward's side effects and must return a tensor
// nothing modifies later (a clone of a buffer, not the buffer).
at::Tensor replay_or_record(const void* owner, const std::string& name, const std::function<at::Tensor()>& make);

// The seed of draw `index` of the random stream `stream` (splitmix64 of both):
// training draws are a function of a saved counter, so a resumed run repeats them.
uint64_t draw_seed(uint64_t stream, uint64_t index);

}  // namespace longseq
