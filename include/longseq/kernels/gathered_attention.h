// Attention of groups of queries over gathered key slots: the shared core of
// the sparse and hashed mechanisms (Longformer windows, BigBird blocks, LSH
// chunks, Routing clusters). Each group of b queries attends to its own list
// of m key positions, so memory is O(N * b * m), never O(T * S): the T x S
// matrix is built neither as scores nor as a mask.
// Composite ATen ops (gather, matmul, masked softmax): autograd for free.
#pragma once
#include <torch/torch.h>

namespace longseq {

struct KeySlots {
  torch::Tensor pos;      // [B|1, H|1, N, m] int64 key positions, -1 = empty slot
  torch::Tensor allowed;  // [B|1, H|1, N, b, m] bool, false = query may not use this slot; undefined = all
};

// Key/value columns every query group sees besides its slots (Longformer's
// global tokens): k, v [B, H, G, D]; allowed [B|1, H|1, N, b, G] bool.
struct ExtraKeys {
  torch::Tensor k, v, allowed;
};

struct GatheredResult {
  torch::Tensor out;  // [B, H, N, b, D]
  torch::Tensor lse;  // [B, H, N, b] log-sum-exp of the scaled scores, -inf where nothing is allowed;
                      // undefined unless asked for (it keeps the scores alive for its gradient)
};

// q: [B, H, N, b, D] (grouped queries); k, v: [B, H, S, D]; key_padding: [B, S]
// bool (true = padding, never attended) or undefined. Scores are scaled by
// 1/sqrt(D). A query with no allowed key returns zeros. Duplicate positions in
// a slot list count twice: callers mark duplicates empty.
GatheredResult gathered_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const KeySlots& slots, const torch::Tensor& key_padding,
                                  const ExtraKeys* extra = nullptr, bool want_lse = false);

// Softmax over the last dimension restricted to `allowed` (broadcastable
// bool); rows with nothing allowed give zeros, never NaN.
torch::Tensor masked_softmax(const torch::Tensor& scores, const torch::Tensor& allowed);

}  // namespace longseq
