// Block-sparse softmax attention: each block of queries attends to a listed
// set of key blocks (a CSR layout), in one softmax over all of them. The
// shared core of BigBird's blocks (Zaheer et al. 2020, App. D), the Routing
// Transformer's clusters (Roy et al. 2021, sec. 4) and Reformer's sorted
// chunks (Kitaev et al. 2020, sec. 2 and App. A).
// Queries and keys that are a permutation of the sequence (clusters, sorted
// chunks) are sorted once by the caller with index_select/gather (O(T * D));
// the original positions of the sorted rows then drive the masks.
// The fused CPU kernel (kernels/cpu/block_sparse_attention.cpp) never builds
// a [slots x keys] tensor: online softmax over a query block's key blocks,
// backward by recomputation from the saved log-sum-exp. The reference
// (composite ATen ops, any device and dtype) is its oracle and fallback.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace longseq {

// Which key blocks each query block sees. Groups: the layout may differ per
// batch row and/or head (G_B in {1, B}, G_H in {1, H}); query block j of
// group g sees blocks[g][offsets[g][j] .. offsets[g][j + 1]). A block listed
// twice counts twice (as the gathered path counts duplicate slots).
struct BlockSparseLayout {
  int64_t block_q = 0;    // rows per query block (the last one may be partial)
  int64_t block_k = 0;    // rows per key block (the last one may be partial)
  torch::Tensor offsets;  // [G_B, G_H, NQ + 1] int64 CPU, NQ = ceil(Nq / block_q)
  torch::Tensor blocks;   // [G_B, G_H, nnz] int64 CPU key block indices (nnz = the largest group's)
};

// Masks inside a (query block, key block) pair, from the rows' original
// positions. Key s is allowed for query t when k_pos[s] >= 0, q_pos[t] >= 0
// and, if causal, k_pos[s] <= q_pos[t] (and, with a band, within it).
struct BlockSparseMask {
  bool causal = false;
  torch::Tensor q_pos;  // [B|1, H|1, Nq] int64, -1 = empty row (output 0); undefined = 0 .. Nq-1
  torch::Tensor k_pos;  // [B|1, H|1, Nk] int64, -1 = never attended (padding, empty); undefined = 0 .. Nk-1
  // Reformer's shared-QK self rule (App. A): != 0 puts this penalty on the logit of a row's own key
  // (k_pos == q_pos) inside the log-sum-exp. exp(-1e5) is 0 beside any other key, so the own key is
  // used only when nothing else is allowed; the kernel computes it that way (the row's output is then
  // its own value, its lse the own logit minus the penalty) rather than rounding logits of size 1e5
  // in float32. Keys that share a position are taken to be copies of one key and value (LSH's rounds).
  double self_penalty = 0.0;
  // A band (Longformer's sliding window, sec. 3.1): >= 0 also requires q_pos - k_pos <= window_left and
  // k_pos - q_pos <= window_right; -1 = no bound on that side.
  int64_t window_left = -1, window_right = -1;
};

struct BlockSparseResult {
  torch::Tensor out;  // [B, H, Nq, D]; rows that see nothing are 0
  torch::Tensor lse;  // [B, H, Nq] log-sum-exp of the (scaled, penalized) logits, -inf where nothing is allowed;
                      // differentiable (Reformer combines its rounds by it, eq. 14)
};

// q: [B, H, Nq, D], k, v: [B, H, Nk, D]; logits scale * q.k.
// kernel = "auto" (fused when supported), "fused" (an Error with the reasons
// when not) or "reference". LONGSEQ_ATTENTION=reference forces the reference.
BlockSparseResult block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const BlockSparseLayout& layout, const BlockSparseMask& mask, double scale,
                                         const std::string& kernel = "auto");

// Rows read and written through index maps: the layout and masks index logical rows, logical query row i is q
// row q[b, h, i] and writes output row out[b, h, i], logical key row s is k and v row kv[b, h, s]. A caller
// that sorts its rows (Reformer's chunks) passes the sort instead of sorted copies, and gets its outputs in its
// own order: no gathered q, k, v or unsorted output is materialized (the fused kernel reads the rows in place).
struct BlockSparseRows {
  torch::Tensor q;       // [B, H, Nq] int64 CPU, in [0, q.size(2))
  torch::Tensor kv;      // [B, H, Nk] int64 CPU, in [0, k.size(2))
  torch::Tensor out;     // [B, H, Nq] int64 CPU, in [0, out_rows), no two rows alike
  int64_t out_rows = 0;  // rows of the outputs; rows no query writes are 0 (out) and -inf (lse)
};

// As above through the maps -> out [B, H, out_rows, D], lse [B, H, out_rows]. The reference gathers, attends
// and scatters.
BlockSparseResult block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const BlockSparseRows& rows, const BlockSparseLayout& layout,
                                         const BlockSparseMask& mask, double scale, const std::string& kernel = "auto");

// The composite-ATen oracle: the layout's key blocks gathered per query block,
// a masked softmax over them. Memory O(NQ * block_q * keys per row).
BlockSparseResult block_sparse_attention_reference(const torch::Tensor& q, const torch::Tensor& k,
                                                   const torch::Tensor& v, const BlockSparseLayout& layout,
                                                   const BlockSparseMask& mask, double scale);

// Why the fused kernel cannot take these inputs; empty = it can.
std::vector<std::string> block_sparse_attention_unsupported_reasons(const torch::Tensor& q, const torch::Tensor& k,
                                                                    const torch::Tensor& v,
                                                                    const BlockSparseLayout& layout,
                                                                    const BlockSparseMask& mask);

// The layout from a list of key blocks per query block: rows[g_b][g_h][j].
BlockSparseLayout block_sparse_layout(int64_t block_q, int64_t block_k,
                                      const std::vector<std::vector<std::vector<std::vector<int64_t>>>>& rows);

// Useful FLOPs of one forward over the layout (2 per multiply-add of QK^T and
// PV; a causal pair whose key block is the query block's own counts half).
double block_sparse_flops(const BlockSparseLayout& layout, int64_t B, int64_t H, int64_t Nq, int64_t Nk, int64_t D,
                          bool causal_diagonal_half);

// The fused kernel's tolerance against a float64 reference: max |error| / max |reference|.
constexpr double kBlockSparseTolerance = 2e-5;

}  // namespace longseq
