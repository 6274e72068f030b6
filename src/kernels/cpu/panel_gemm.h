// Small products for the fused sparse and linear kernels without the BLAS's per-call packing: an AVX2/FMA
// register-blocked micro-kernel (6 rows x 16 columns of C in 12 registers, the register block of Goto and van de
// Geijn 2008, "Anatomy of high-performance matrix multiplication") that reads A by strided broadcasts and B by
// contiguous rows. The attention tiles are small
// (32-128 rows, D = 64) and each key block is read by several query blocks, so the keys are laid out once per
// head as transposed panels and the BLAS's packing of both operands on every call is saved. Internal to
// src/kernels/cpu.
#pragma once

#include <cstdint>

namespace longseq {
namespace cpu_gemm {

constexpr int64_t kPanel = 16;  // rows per panel: the micro-kernel's column width

// True when this CPU runs the micro-kernels (AVX2 and FMA); the callers keep their BLAS path otherwise.
bool available();

// The AVX-512 blocks (8 rows x 32 columns of C in 16 zmm registers) replace the AVX2 ones where the CPU has
// AVX-512 F/DQ/BW/VL, unless LONGSEQ_PANELS=avx2; use_avx512 switches them for the process (tests compare both).
bool avx512_available();
bool avx512_in_use();
void use_avx512(bool on);

// Floats that pack_panels writes for n rows of width D.
inline int64_t panel_floats(int64_t n, int64_t D) { return (n + kPanel - 1) / kPanel * kPanel * D; }

// Rows x[0..n) of width D (row stride ld) as panels of 16 rows transposed: out[p][d][r] = x[16 p + r][d],
// rows past n zero; with rows_of, row i is x[rows_of[i]] (rows read through an index map, not copied first).
void pack_panels(const float* x, int64_t n, int64_t D, int64_t ld, float* out, const int64_t* rows_of = nullptr);

// C = alpha * A B + beta * C for C [m, n] (row stride ldc), n a multiple of 16, where A(i, k) = a[i * ai + k * ak]
// (ai = lda, ak = 1: A row-major; ai = 1, ak = lda: A transposed) and B(k, j) = b[k * ldb + j]. beta = 0 never
// reads C.
void gemm_strided(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t ai, int64_t ak,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// C = alpha * A X^T + beta * C for C [m, n], any n: A [m, D] row-major (stride lda) and X the n rows whose panels
// start at `panels` (the first row at a panel boundary). Only the n columns of C are written.
void gemm_panels(int64_t m, int64_t n, int64_t D, float alpha, const float* a, int64_t lda, const float* panels,
                 float beta, float* c, int64_t ldc);

// C = alpha * op(A) op(B) + beta * C, row-major, as cblas_sgemm: on the micro-kernels where they apply (AVX2;
// op(B) = B with n a multiple of 16, or op(B) = B^T packed as panels into per-thread scratch; op(A) either way),
// else through the process's BLAS.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace cpu_gemm
}  // namespace longseq
