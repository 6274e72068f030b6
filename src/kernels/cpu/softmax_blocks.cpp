// Blocked-softmax pieces of the fused CPU kernels (see softmax_blocks.h).
#include "softmax_blocks.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

extern "C" void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);

namespace longseq {
namespace cpu_softmax {

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// Cephes-style range reduction and degree-6 polynomial, relative error ~1e-7.
__attribute__((target("avx2,fma"))) float exp_shifted_avx2(float* x, int64_t n, float shift) {
  const __m256 vshift = _mm256_set1_ps(shift), lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.3f);
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), c1 = _mm256_set1_ps(0.693359375f),
               c2 = _mm256_set1_ps(-2.12194440e-4f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 p0 = _mm256_set1_ps(1.9875691500e-4f), p1 = _mm256_set1_ps(1.3981999507e-3f),
               p2 = _mm256_set1_ps(8.3334519073e-3f), p3 = _mm256_set1_ps(4.1665795894e-2f),
               p4 = _mm256_set1_ps(1.6666665459e-1f), p5 = _mm256_set1_ps(5.0000001201e-1f);
  __m256 total = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vshift);
    __m256 dead = _mm256_cmp_ps(v, lo, _CMP_NGE_UQ);  // NaN (x = +inf, shift = +inf) too
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(v, log2e, half));
    v = _mm256_fnmadd_ps(fx, c1, v);
    v = _mm256_fnmadd_ps(fx, c2, v);
    __m256 y = _mm256_fmadd_ps(p0, v, p1);
    y = _mm256_fmadd_ps(y, v, p2);
    y = _mm256_fmadd_ps(y, v, p3);
    y = _mm256_fmadd_ps(y, v, p4);
    y = _mm256_fmadd_ps(y, v, p5);
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(v, v), _mm256_add_ps(v, one));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(dead, y);
    total = _mm256_add_ps(total, y);
    _mm256_storeu_ps(x + i, y);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, total);
  float sum = 0;
  for (float lane : lanes) sum += lane;
  for (; i < n; ++i) sum += x[i] = !(x[i] - shift >= -87.0f) ? 0.0f : std::exp(x[i] - shift);
  return sum;
}

__attribute__((target("avx2,fma"))) float row_max_avx2(const float* x, int64_t n, float init) {
  __m256 m = _mm256_set1_ps(init);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float mx = init;
  for (float lane : lanes) mx = std::max(mx, lane);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  return mx;
}

bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

float exp_shifted(float* x, int64_t n, float shift) {
  if (cpu_has_avx2_fma()) return exp_shifted_avx2(x, n, shift);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] = !(x[i] - shift >= -87.0f) ? 0.0f : std::exp(x[i] - shift);
  return sum;
}

float row_max(const float* x, int64_t n, float init) {
  if (cpu_has_avx2_fma()) return row_max_avx2(x, n, init);
  float mx = init;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  return mx;
}

void online_softmax_step(float* s, int64_t rows, int64_t cols, float* m, float* l, float* acc, int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * cols;
    const float mx = row_max(row, cols, m[r]);
    if (mx == -std::numeric_limits<float>::infinity()) {  // nothing visible yet in this row
      std::fill(row, row + cols, 0.0f);
      continue;
    }
    const float alpha = std::exp(m[r] - mx);  // 0 when m = -inf
    l[r] = l[r] * alpha + exp_shifted(row, cols, mx);
    m[r] = mx;
    if (alpha != 1.0f)
      for (int64_t d = 0; d < D; ++d) acc[r * D + d] *= alpha;
  }
}

}  // namespace cpu_softmax
}  // namespace longseq
