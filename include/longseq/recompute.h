// Whether the current forward is a recomputation for a backward pass
// (reversible layers): mixers with training-time randomness or side effects
// (fresh LSH rotations, k-means updates) repeat their last forward instead.
#pragma once

namespace longseq {

bool in_recompute();

// Marks the current thread as recomputing while alive.
class RecomputeScope {
 public:
  RecomputeScope();
  ~RecomputeScope();
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  bool previous_;
};

}  // namespace longseq
