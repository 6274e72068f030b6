// Blocked-softmax pieces of the fused CPU kernels (see softmax_blocks.h).
#include "softmax_blocks.h"

#include "panel_gemm.h"

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

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps and warn that it is uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The same reduction and polynomial on 16 lanes (AVX-512 F): the exponentials are a fifth of a tile's
// instructions once its products run on the AVX-512 blocks.
__attribute__((target("avx512f,fma"))) float exp_shifted_avx512(float* x, int64_t n, float shift) {
  const __m512 vshift = _mm512_set1_ps(shift), lo = _mm512_set1_ps(-87.0f), hi = _mm512_set1_ps(88.3f);
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f), c1 = _mm512_set1_ps(0.693359375f),
               c2 = _mm512_set1_ps(-2.12194440e-4f), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 p0 = _mm512_set1_ps(1.9875691500e-4f), p1 = _mm512_set1_ps(1.3981999507e-3f),
               p2 = _mm512_set1_ps(8.3334519073e-3f), p3 = _mm512_set1_ps(4.1665795894e-2f),
               p4 = _mm512_set1_ps(1.6666665459e-1f), p5 = _mm512_set1_ps(5.0000001201e-1f);
  __m512 total = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_sub_ps(_mm512_loadu_ps(x + i), vshift);
    const __mmask16 live = _mm512_cmp_ps_mask(v, lo, _CMP_GE_OQ);  // not NaN (x = +inf, shift = +inf) either
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(v, log2e, half), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    v = _mm512_fnmadd_ps(fx, c1, v);
    v = _mm512_fnmadd_ps(fx, c2, v);
    __m512 y = _mm512_fmadd_ps(p0, v, p1);
    y = _mm512_fmadd_ps(y, v, p2);
    y = _mm512_fmadd_ps(y, v, p3);
    y = _mm512_fmadd_ps(y, v, p4);
    y = _mm512_fmadd_ps(y, v, p5);
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(v, v), _mm512_add_ps(v, one));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    y = _mm512_maskz_mul_ps(live, y, _mm512_castsi512_ps(e));
    total = _mm512_add_ps(total, y);
    _mm512_storeu_ps(x + i, y);
  }
  float sum = _mm512_reduce_add_ps(total);
  for (; i < n; ++i) sum += x[i] = !(x[i] - shift >= -87.0f) ? 0.0f : std::exp(x[i] - shift);
  return sum;
}

__attribute__((target("avx512f"))) float row_max_avx512(const float* x, int64_t n, float init) {
  __m512 m = _mm512_set1_ps(init);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
  float mx = _mm512_reduce_max_ps(m);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  return mx;
}

#pragma GCC diagnostic pop

bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// AVX-512 where the micro-kernels use it (panel_gemm.h: the CPU has it and LONGSEQ_PANELS is not avx2).
bool wide() { return cpu_gemm::avx512_in_use(); }

}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

ScratchLease::ScratchLease(Slot slot, int64_t n) {
  if (n > kKeptFloats) {
    fresh_.reset(new float[n]);
    data_ = fresh_.get();
    return;
  }
  struct Kept {
    std::unique_ptr<float[]> data;
    int64_t size = 0;
  };
  thread_local Kept kept[kSlots];
  Kept& k = kept[slot];
  if (k.size < n) k.data.reset(new float[n]), k.size = n;
  data_ = k.data.get();
}

float exp_shifted(float* x, int64_t n, float shift) {
  if (wide()) return exp_shifted_avx512(x, n, shift);
  if (cpu_has_avx2_fma()) return exp_shifted_avx2(x, n, shift);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] = !(x[i] - shift >= -87.0f) ? 0.0f : std::exp(x[i] - shift);
  return sum;
}

float row_max(const float* x, int64_t n, float init) {
  if (wide()) return row_max_avx512(x, n, init);
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
