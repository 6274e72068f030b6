// The micro-kernels of panel_gemm.h.
#include "panel_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <cstring>
#include <vector>

#include "softmax_blocks.h"

namespace longseq {
namespace cpu_gemm {

namespace {

#define LONGSEQ_AVX2 __attribute__((target("avx2,fma")))

// Stores one row of the 16-column block: alpha * (r0, r1) + beta * C, only the first `cols` columns.
#define LONGSEQ_PUT_ROW(i, r0, r1)                                                                       \
  do {                                                                                                   \
    float* ci = c + (i) * ldc;                                                                           \
    __m256 x0 = _mm256_mul_ps(al, r0), x1 = _mm256_mul_ps(al, r1);                                       \
    if (cols == kPanel) {                                                                                \
      if (beta != 0.0f)                                                                                  \
        x0 = _mm256_fmadd_ps(be, _mm256_loadu_ps(ci), x0), x1 = _mm256_fmadd_ps(be, _mm256_loadu_ps(ci + 8), x1); \
      _mm256_storeu_ps(ci, x0), _mm256_storeu_ps(ci + 8, x1);                                            \
    } else {                                                                                             \
      alignas(32) float t[kPanel];                                                                       \
      _mm256_store_ps(t, x0), _mm256_store_ps(t + 8, x1);                                                \
      for (int64_t j = 0; j < cols; ++j) ci[j] = beta != 0.0f ? t[j] + beta * ci[j] : t[j];             \
    }                                                                                                    \
  } while (0)

// C[MR rows, cols <= 16] = alpha * sum_k A(i, k) B(k, 0..16) + beta * C. Named accumulators, not an array:
// GCC 12 spills an array of __m256 to the stack on every step.
template <int MR>
LONGSEQ_AVX2 void block(int64_t K, const float* a, int64_t ai, int64_t ak, const float* b, int64_t ldb, float alpha,
                        float beta, float* c, int64_t ldc, int64_t cols) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float *a0 = a, *a1 = a + ai, *a2 = a + 2 * ai, *a3 = a + 3 * ai, *a4 = a + 4 * ai, *a5 = a + 5 * ai;
  for (int64_t k = 0; k < K; ++k, b += ldb) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    const int64_t o = k * ak;
    __m256 x = _mm256_broadcast_ss(a0 + o);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    if (MR > 1) x = _mm256_broadcast_ss(a1 + o), c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    if (MR > 2) x = _mm256_broadcast_ss(a2 + o), c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    if (MR > 3) x = _mm256_broadcast_ss(a3 + o), c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
    if (MR > 4) x = _mm256_broadcast_ss(a4 + o), c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
    if (MR > 5) x = _mm256_broadcast_ss(a5 + o), c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  const __m256 al = _mm256_set1_ps(alpha), be = _mm256_set1_ps(beta);
  LONGSEQ_PUT_ROW(0, c00, c01);
  if (MR > 1) LONGSEQ_PUT_ROW(1, c10, c11);
  if (MR > 2) LONGSEQ_PUT_ROW(2, c20, c21);
  if (MR > 3) LONGSEQ_PUT_ROW(3, c30, c31);
  if (MR > 4) LONGSEQ_PUT_ROW(4, c40, c41);
  if (MR > 5) LONGSEQ_PUT_ROW(5, c50, c51);
}

void rest(int64_t m, int64_t K, const float* a, int64_t ai, int64_t ak, const float* b, int64_t ldb, float alpha,
          float beta, float* c, int64_t ldc, int64_t cols);

// All m rows of one 16-column strip: blocks of 6 rows; a remainder of 1-3 rows shares the last 6 as two blocks of
// 3-5 (a block of 1 or 2 rows loads as much B as it multiplies).
void strip(int64_t m, int64_t K, const float* a, int64_t ai, int64_t ak, const float* b, int64_t ldb, float alpha,
           float beta, float* c, int64_t ldc, int64_t cols) {
  int64_t i = 0;
  const int64_t full = m % 6 != 0 && m % 6 < 4 && m > 6 ? m / 6 - 1 : m / 6;
  for (; i < full * 6; i += 6) block<6>(K, a + i * ai, ai, ak, b, ldb, alpha, beta, c + i * ldc, ldc, cols);
  const int64_t left = m - i;
  if (left > 6) {  // 7-9 rows: 4 and 3-5
    block<4>(K, a + i * ai, ai, ak, b, ldb, alpha, beta, c + i * ldc, ldc, cols);
    i += 4;
  }
  rest(m - i, K, a + i * ai, ai, ak, b, ldb, alpha, beta, c + i * ldc, ldc, cols);
}

// One block of m <= 6 rows.
void rest(int64_t m, int64_t K, const float* ar, int64_t ai, int64_t ak, const float* b, int64_t ldb, float alpha,
          float beta, float* cr, int64_t ldc, int64_t cols) {
  switch (m) {
    case 6: block<6>(K, ar, ai, ak, b, ldb, alpha, beta, cr, ldc, cols); break;
    case 5: block<5>(K, ar, ai, ak, b, ldb, alpha, beta, cr, ldc, cols); break;
    case 4: block<4>(K, ar, ai, ak, b, ldb, alpha, beta, cr, ldc, cols); break;
    case 3: block<3>(K, ar, ai, ak, b, ldb, alpha, beta, cr, ldc, cols); break;
    case 2: block<2>(K, ar, ai, ak, b, ldb, alpha, beta, cr, ldc, cols); break;
    case 1: block<1>(K, ar, ai, ak, b, ldb, alpha, beta, cr, ldc, cols); break;
    default: break;
  }
}

// Eight rows x[r][d0..d0+8) transposed into out[i * 16 + r], r, i < 8: the unpack / shuffle / lane-permute
// 8 x 8 transpose, one load and one store per row instead of 64 scalar moves.
LONGSEQ_AVX2 void transpose8(const float* const* x, int64_t d0, float* out) {
  const __m256 r0 = _mm256_loadu_ps(x[0] + d0), r1 = _mm256_loadu_ps(x[1] + d0), r2 = _mm256_loadu_ps(x[2] + d0),
               r3 = _mm256_loadu_ps(x[3] + d0), r4 = _mm256_loadu_ps(x[4] + d0), r5 = _mm256_loadu_ps(x[5] + d0),
               r6 = _mm256_loadu_ps(x[6] + d0), r7 = _mm256_loadu_ps(x[7] + d0);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
               t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(out + 0 * kPanel, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(out + 1 * kPanel, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(out + 2 * kPanel, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(out + 3 * kPanel, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(out + 4 * kPanel, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(out + 5 * kPanel, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(out + 6 * kPanel, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(out + 7 * kPanel, _mm256_permute2f128_ps(s3, s7, 0x31));
}


// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps and warn that it is uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The AVX-512 block: MR <= 8 rows x NS <= 2 strips of 16 columns (one zmm each), 16 accumulators of 32
// registers. B's strips come from two pointers (the next panel, or 16 columns on); partial strips of C are
// stored under a mask. Two strips of 16 columns load 2 + MR operands per 2 MR FMAs (the AVX2 block's ratio).
#define LONGSEQ_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))

#define LONGSEQ_FMA_ROW(i)                                                              \
  if (MR > i) {                                                                         \
    const __m512 x = _mm512_set1_ps(a[(i) * ai + o]);                                   \
    c##i##0 = _mm512_fmadd_ps(x, b0v, c##i##0);                                         \
    if (NS > 1) c##i##1 = _mm512_fmadd_ps(x, b1v, c##i##1);                             \
  }
#define LONGSEQ_PUT_ROW512(i)                                                           \
  if (MR > i) {                                                                         \
    put512(c + (i) * ldc, c##i##0, al, be, beta, m0);                                   \
    if (NS > 1) put512(c + (i) * ldc + kPanel, c##i##1, al, be, beta, m1);              \
  }

LONGSEQ_AVX512 inline void put512(float* ci, __m512 x, __m512 al, __m512 be, float beta, __mmask16 m) {
  x = _mm512_mul_ps(al, x);
  if (beta != 0.0f) x = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(m, ci), x);
  _mm512_mask_storeu_ps(ci, m, x);
}

template <int MR, int NS>
LONGSEQ_AVX512 void block512(int64_t K, const float* a, int64_t ai, int64_t ak, const float* b0, const float* b1,
                             int64_t ldb, float alpha, float beta, float* c, int64_t ldc, __mmask16 m0, __mmask16 m1) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
  for (int64_t k = 0; k < K; ++k, b0 += ldb, b1 += ldb) {
    const __m512 b0v = _mm512_loadu_ps(b0), b1v = NS > 1 ? _mm512_loadu_ps(b1) : b0v;
    const int64_t o = k * ak;
    LONGSEQ_FMA_ROW(0) LONGSEQ_FMA_ROW(1) LONGSEQ_FMA_ROW(2) LONGSEQ_FMA_ROW(3)
    LONGSEQ_FMA_ROW(4) LONGSEQ_FMA_ROW(5) LONGSEQ_FMA_ROW(6) LONGSEQ_FMA_ROW(7)
  }
  const __m512 al = _mm512_set1_ps(alpha), be = _mm512_set1_ps(beta);
  LONGSEQ_PUT_ROW512(0) LONGSEQ_PUT_ROW512(1) LONGSEQ_PUT_ROW512(2) LONGSEQ_PUT_ROW512(3)
  LONGSEQ_PUT_ROW512(4) LONGSEQ_PUT_ROW512(5) LONGSEQ_PUT_ROW512(6) LONGSEQ_PUT_ROW512(7)
}

#undef LONGSEQ_FMA_ROW
#undef LONGSEQ_PUT_ROW512

template <int NS>
void rows512(int64_t m, int64_t K, const float* a, int64_t ai, int64_t ak, const float* b0, const float* b1,
             int64_t ldb, float alpha, float beta, float* c, int64_t ldc, __mmask16 m0, __mmask16 m1) {
  switch (m) {
    case 8: block512<8, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 7: block512<7, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 6: block512<6, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 5: block512<5, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 4: block512<4, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 3: block512<3, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 2: block512<2, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    case 1: block512<1, NS>(K, a, ai, ak, b0, b1, ldb, alpha, beta, c, ldc, m0, m1); break;
    default: break;
  }
}

// All m rows of up to two 16-column strips (cols0 in the first, cols1 <= 16 in the second, 0 = none), in
// blocks of 8 rows.
void strips512(int64_t m, int64_t K, const float* a, int64_t ai, int64_t ak, const float* b0, const float* b1,
               int64_t ldb, float alpha, float beta, float* c, int64_t ldc, int64_t cols0, int64_t cols1) {
  const auto mask = [](int64_t n) { return static_cast<__mmask16>(n >= kPanel ? 0xFFFF : (1u << n) - 1u); };
  const __mmask16 m0 = mask(cols0), m1 = mask(cols1);
  for (int64_t i = 0; i < m; i += 8) {
    const int64_t r = std::min<int64_t>(8, m - i);
    if (cols1 > 0) rows512<2>(r, K, a + i * ai, ai, ak, b0, b1, ldb, alpha, beta, c + i * ldc, ldc, m0, m1);
    else rows512<1>(r, K, a + i * ai, ai, ak, b0, b1, ldb, alpha, beta, c + i * ldc, ldc, m0, m1);
  }
}

#pragma GCC diagnostic pop

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}

// LONGSEQ_PANELS=avx2 keeps the AVX2 blocks on an AVX-512 machine (to compare the two in one build).
std::atomic<bool>& avx512_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("LONGSEQ_PANELS");
    return cpu_has_avx512() && !(e && std::string(e) == "avx2");
  }()};
  return on;
}

// C [m, n] = alpha * A X^T + beta * C from X's panels, two panels (32 columns) at a time.
void panels512(int64_t m, int64_t n, int64_t D, float alpha, const float* a, int64_t ai, int64_t ak,
               const float* panels, float beta, float* c, int64_t ldc) {
  for (int64_t j = 0; j < n; j += 2 * kPanel, panels += 2 * kPanel * D) {
    const int64_t c0 = std::min(kPanel, n - j), c1 = std::max<int64_t>(0, std::min(kPanel, n - j - kPanel));
    strips512(m, D, a, ai, ak, panels, panels + kPanel * D, kPanel, alpha, beta, c + j, ldc, c0, c1);
  }
}

}  // namespace

bool available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

bool avx512_available() { return cpu_has_avx512(); }
bool avx512_in_use() { return avx512_flag().load(std::memory_order_relaxed); }
void use_avx512(bool on) { avx512_flag().store(on && cpu_has_avx512(), std::memory_order_relaxed); }

void pack_panels(const float* x, int64_t n, int64_t D, int64_t ld, float* out, const int64_t* rows_of) {
  const bool fast = available() && D % 8 == 0;
  for (int64_t p0 = 0; p0 < n; p0 += kPanel, out += kPanel * D) {
    const int64_t rows = std::min(kPanel, n - p0);
    if (fast && rows == kPanel) {  // two blocks of 8 rows, 8 columns at a time
      for (int64_t r0 = 0; r0 < kPanel; r0 += 8) {
        const float* src[8];
        for (int64_t r = 0; r < 8; ++r) src[r] = x + (rows_of ? rows_of[p0 + r0 + r] : p0 + r0 + r) * ld;
        for (int64_t d0 = 0; d0 < D; d0 += 8) transpose8(src, d0, out + d0 * kPanel + r0);
      }
      continue;
    }
    if (rows < kPanel) std::memset(out, 0, sizeof(float) * kPanel * D);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + (rows_of ? rows_of[p0 + r] : p0 + r) * ld;
      for (int64_t d = 0; d < D; ++d) out[d * kPanel + r] = row[d];
    }
  }
}

void gemm_strided(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t ai, int64_t ak,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (avx512_in_use()) {
    for (int64_t j = 0; j < n; j += 2 * kPanel)
      strips512(m, k, a, ai, ak, b + j, b + j + kPanel, ldb, alpha, beta, c + j, ldc, kPanel,
                n - j > kPanel ? kPanel : 0);
    return;
  }
  for (int64_t j = 0; j < n; j += kPanel) strip(m, k, a, ai, ak, b + j, ldb, alpha, beta, c + j, ldc, kPanel);
}

void gemm_panels(int64_t m, int64_t n, int64_t D, float alpha, const float* a, int64_t lda, const float* panels,
                 float beta, float* c, int64_t ldc) {
  if (avx512_in_use()) return panels512(m, n, D, alpha, a, lda, 1, panels, beta, c, ldc);
  for (int64_t j = 0; j < n; j += kPanel, panels += kPanel * D)
    strip(m, D, a, lda, 1, panels, kPanel, alpha, beta, c + j, ldc, std::min(kPanel, n - j));
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  if (!available() || (ta && tb) || (!tb && n % kPanel != 0) || m == 0 || n == 0) {
    cpu_softmax::gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (k == 0) {  // C = beta * C, as the BLAS
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  const int64_t ai = ta ? 1 : lda, ak = ta ? lda : 1;
  if (!tb) return gemm_strided(m, n, k, alpha, a, ai, ak, b, ldb, beta, c, ldc);
  thread_local std::vector<float> panels;  // B^T: the n rows of B as panels
  panels.resize(panel_floats(n, k));
  pack_panels(b, n, k, ldb, panels.data());
  if (avx512_in_use()) return panels512(m, n, k, alpha, a, ai, ak, panels.data(), beta, c, ldc);
  const float* pp = panels.data();
  for (int64_t j = 0; j < n; j += kPanel, pp += kPanel * k)
    strip(m, k, a, ai, ak, pp, kPanel, alpha, beta, c + j, ldc, std::min(kPanel, n - j));
}

#undef LONGSEQ_PUT_ROW
#undef LONGSEQ_AVX2
#undef LONGSEQ_AVX512

}  // namespace cpu_gemm
}  // namespace longseq
