// Fused exact attention for the CPU: the FlashAttention-2 algorithm (Dao 2023,
// Algorithms 1 and 2). Blocked online softmax that never builds the T x S
// score matrix; the backward recomputes the scores from the saved
// log-sum-exp. Same semantics as attention_reference (AttentionMask), except
// that a query whose keys are all masked returns zeros in both.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "longseq/kernels/attention_reference.h"

namespace longseq {

// Why the fused kernel cannot take these inputs; empty = it can.
std::vector<std::string> flash_attention_unsupported_reasons(const torch::Tensor& q, const torch::Tensor& k,
                                                             const torch::Tensor& v, const AttentionMask& mask);

// q: [B, H, T, D], k, v: [B, H, S, D] float32 CPU -> [B, H, T, D]; differentiable.
torch::Tensor flash_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const AttentionMask& mask);

// The kernel's tolerance against a float64 reference: max |error| / max |reference|.
constexpr double kFlashAttentionTolerance = 2e-5;

// True when LONGSEQ_ATTENTION=reference forces every mixer onto the reference path.
bool attention_reference_forced();

// Exact attention through the fastest path that supports the input:
// kernel = "auto" (fused when supported), "reference", or "fused" (an Error
// listing the reasons when it is not supported).
torch::Tensor exact_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const AttentionMask& mask, const std::string& kernel = "auto", double dropout = 0.0,
                              bool training = false);

}  // namespace longseq
