// The attention cores the bench times apart from their mixers (MixerInfo::core):
// drawn inputs of the shape the mechanism gives its kernel, for each kernel it offers.
#pragma once
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/registry.h"

namespace longseq {

// Kernelized attention phi(Q) (phi(K)^T V) on drawn positive features [B, H, T, M] and values
// [B, H, T, D]; causal: chunked prefix sums of `chunk` positions. FLOPs 4 T M D (+ 2 T c (M + D) causal).
CoreRun kernelized_core(const CoreQuery& c, int64_t M, int64_t chunk, double eps);

// Block-sparse attention over `layout` on drawn q [B, H, Nq, D], k, v [B, H, Nk, D]; FLOPs
// block_sparse_flops over the listed pairs, times `flop_share` (the allowed fraction when the
// mask's positions are a shuffle, e.g. 1/2 causal).
CoreRun block_sparse_core(const CoreQuery& c, int64_t Nq, int64_t Nk, const BlockSparseLayout& layout,
                          const BlockSparseMask& mask, double flop_share);

}  // namespace longseq
