// A cache along the length axis of [B, H, S, E] tensors with doubling
// capacity: a decoding step copies only its new rows (amortized), not the
// whole cache as a concatenation would. keep_last drops the oldest rows (a
// sliding memory) by moving a start offset; the rows move to the front only
// when the buffer is full, so that too costs O(1) copies per row appended. The
// view it returns keeps each head's rows contiguous, which the fused attention
// kernels read in place.
#pragma once
#include <torch/torch.h>

#include <algorithm>

namespace longseq {

class GrowingCache {
 public:
  // Appends x [B, H, n, E] and returns the whole cache [B, H, length, E]. With
  // gradients wanted through x, returns a concatenation that keeps them.
  torch::Tensor append(const torch::Tensor& x) {
    const int64_t n = x.size(2);
    torch::Tensor before = view();
    const bool keep_graph = torch::GradMode::is_enabled() && x.requires_grad();
    torch::Tensor joined = keep_graph && before.defined() ? torch::cat({before, x}, 2) : torch::Tensor();
    if (!buffer_.defined() || start_ + length_ + n > buffer_.size(2) || buffer_.size(0) != x.size(0) ||
        buffer_.size(1) != x.size(1) || buffer_.size(3) != x.size(3)) {
      auto bigger = torch::empty({x.size(0), x.size(1), std::max<int64_t>(2 * (length_ + n), 64), x.size(3)},
                                 x.options());
      if (length_ > 0) bigger.narrow(2, 0, length_).copy_(before);
      buffer_ = bigger;
      start_ = 0;
    }
    {
      torch::NoGradGuard ng;
      buffer_.narrow(2, start_ + length_, n).copy_(x.detach());
    }
    length_ += n;
    if (keep_graph) return joined.defined() ? joined : x;
    return view();
  }

  // The cached rows [B, H, length, E] (undefined when empty).
  torch::Tensor view() const { return length_ > 0 ? buffer_.narrow(2, start_, length_) : torch::Tensor(); }

  // Keeps the newest n rows.
  void keep_last(int64_t n) {
    n = std::max<int64_t>(0, std::min(n, length_));
    start_ += length_ - n;
    length_ = n;
  }

  void clear() { start_ = length_ = 0; }

  // Keeps batch rows `index` ([n] long, checked by the caller) in a fresh buffer, so repeated rows never share
  // storage that a later append writes into.
  void reorder(const torch::Tensor& index) {
    if (buffer_.defined()) buffer_ = buffer_.index_select(0, index.to(buffer_.device()));
  }

  // Batch rows of the buffer, or -1 before the first append.
  int64_t rows() const { return buffer_.defined() ? buffer_.size(0) : -1; }

  int64_t length() const { return length_; }

 private:
  torch::Tensor buffer_;  // [B, H, capacity, E]
  int64_t start_ = 0, length_ = 0;
};

}  // namespace longseq
