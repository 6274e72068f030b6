// An append-only cache along the length axis of [B, H, S, E] tensors with
// doubling capacity: a decoding step copies only its new rows (amortized), not
// the whole cache as a concatenation would. The view it returns keeps each
// head's rows contiguous, which the fused attention kernel reads in place.
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
    torch::Tensor before = length_ > 0 ? buffer_.narrow(2, 0, length_) : torch::Tensor();
    const bool keep_graph = torch::GradMode::is_enabled() && x.requires_grad();
    torch::Tensor joined = keep_graph && before.defined() ? torch::cat({before, x}, 2) : torch::Tensor();
    if (!buffer_.defined() || length_ + n > buffer_.size(2) || buffer_.size(0) != x.size(0)) {
      auto bigger = torch::empty({x.size(0), x.size(1), std::max<int64_t>(2 * (length_ + n), 64), x.size(3)},
                                 x.options());
      if (length_ > 0) bigger.narrow(2, 0, length_).copy_(before);
      buffer_ = bigger;
    }
    {
      torch::NoGradGuard ng;
      buffer_.narrow(2, length_, n).copy_(x.detach());
    }
    length_ += n;
    if (keep_graph) return joined.defined() ? joined : x;
    return buffer_.narrow(2, 0, length_);
  }

  int64_t length() const { return length_; }

 private:
  torch::Tensor buffer_;  // [B, H, capacity, E]
  int64_t length_ = 0;
};

}  // namespace longseq
