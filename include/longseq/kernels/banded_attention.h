// Banded softmax attention: row i sees keys i + d*m for m in [-w, w]
// ([-w, 0] causal), the sliding and dilated windows of Longformer (Beltagy
// et al. 2020, sec. 3.1). The shared local core of Longformer and, to come,
// the Block-Recurrent Transformer's window, Mega-chunk and GSS-Hybrid.
// It runs on the block-sparse kernel (block_sparse_attention.h) with a band
// mask: a dilated head's residue classes mod d are laid end to end, so each is
// a plain window; a query block sees the few contiguous key blocks of its band,
// read in place (no gathered copies), memory O(T * D).
#pragma once
#include <torch/torch.h>

#include <string>

#include "longseq/kernels/block_sparse_attention.h"

namespace longseq {

struct BandSpec {
  int64_t window = 0;    // w >= 0: keys up to w steps (of d rows) away on each side (causal: behind)
  int64_t dilation = 1;  // d >= 1: the step between the keys a row sees
  bool causal = false;
};

// q, k, v: [B, H, T, D]; key_padding: [B, T] bool (true = never attended) or
// undefined. Logits scaled by 1/sqrt(D). Rows that see no key give 0 and
// lse = -inf. kernel: auto | fused | reference, as block_sparse_attention.
// The lse output is differentiable, so further keys (Longformer's global
// tokens) can join the same softmax.
BlockSparseResult banded_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const BandSpec& band, const torch::Tensor& key_padding,
                                   const std::string& kernel = "auto");

// Useful FLOPs of one forward (2 per multiply-add of QK^T and PV): the exact count of
// (query, key) pairs inside the band, times 4 D, for B * H heads.
double banded_attention_flops(int64_t B, int64_t H, int64_t T, int64_t D, const BandSpec& band);

}  // namespace longseq
