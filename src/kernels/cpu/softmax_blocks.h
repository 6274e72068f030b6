// Pieces of the blocked online softmax shared by the fused CPU attention kernels
// (FlashAttention-2, Dao 2023, Algorithm 1): row-major BLAS products, the row
// maximum and exp(x - shift) with an AVX2/FMA polynomial chosen at run time.
// Internal to src/kernels/cpu.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>

namespace longseq {
namespace cpu_softmax {

// C[m, n] = alpha * op(A) op(B) + beta * C, row-major, through the process's BLAS.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc);

// exp(x - shift) in place, returning the sum; entries below -87 after the shift (masked: -inf; an
// empty row's shift +inf) become exactly 0.
float exp_shifted(float* x, int64_t n, float shift);

// max(init, x[0..n)).
float row_max(const float* x, int64_t n, float init);

// One step of the online softmax (FA2 Algorithm 1, lines 8-10) over a (rows x cols) score tile s: each row's
// running max m and sum l take the tile in, its accumulator row acc[r, 0..D) is rescaled, and s becomes
// exp(s - m) (zeros in a row that has seen nothing yet), ready for acc += s V.
void online_softmax_step(float* s, int64_t rows, int64_t cols, float* m, float* l, float* acc, int64_t D);

// A float buffer of n entries, contents undefined, for the length of one kernel call: the calling thread's kept
// buffer for `slot` when n is at most kKeptFloats (grown, never shrunk or zeroed, so its pages are faulted in once
// per thread instead of once per call), else a fresh one freed with the lease. One lease per slot at a time.
class ScratchLease {
 public:
  // At most 4 MiB per slot and thread stays allocated: kept buffers add to the peak of whatever the caller allocates
  // next (a kept 64 MiB raised lsh's fwd + bwd peak at 16K from 1.39x to 1.59x the exact core's).
  static constexpr int64_t kKeptFloats = int64_t(1) << 20;
  enum Slot { kKeyPanels, kValuePanels, kAllKeyPanels, kSlots };
  ScratchLease(Slot slot, int64_t n);
  float* get() const { return data_; }

 private:
  std::unique_ptr<float[]> fresh_;
  float* data_ = nullptr;
};

// t [B, H, S, E] itself when each row is contiguous (heads and batches at any stride, as a decoding cache's
// view, which the kernels read in place), else a contiguous copy.
inline torch::Tensor contiguous_rows(const torch::Tensor& t) {
  return t.stride(3) == 1 && t.stride(2) == t.size(3) ? t : t.contiguous();
}

}  // namespace cpu_softmax
}  // namespace longseq
