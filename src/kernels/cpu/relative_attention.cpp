// Transformer-XL's relative attention on the CPU (Dai et al. 2019, sec. 3.3)
// on the FlashAttention-2 machinery (Dao 2023, Algorithms 1 and 2). A tile of
// query rows [t0, t1) and key rows [s0, s0 + cols) spans the distances
// M + t - s, at most rows + cols - 1 of them: one product of the qv rows with
// that run of the position table gives every position term of the tile, and
// row t of the tile reads it backwards (key s + 1 is one step nearer). This is
// the shift of App. B done per tile, without the T x K matrix. The backward
// recomputes the tile from the saved log-sum-exp and scatters the score
// gradient back along the same diagonals to get the table's gradient.
// Memory O((T + K) * D) per head, plus the table's gradient per (batch, head).
#include <algorithm>
#include <cmath>
#include <limits>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/relative_attention.h"
#include "softmax_blocks.h"

namespace longseq {

namespace {

constexpr int64_t kBlockQ = 64, kBlockK = 512;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using cpu_softmax::gemm;
using cpu_softmax::exp_shifted;
using cpu_softmax::online_softmax_step;

struct Problem {
  int64_t B, H, T, K, R, D, M, maxd;
  float scale;
  // Query t sees keys [first_key(t), M + t].
  int64_t first_key(int64_t t) const { return maxd >= 0 ? std::max<int64_t>(0, M + t - maxd) : 0; }
};

// The distances a tile spans that some query of it can see: [lo, hi]; empty when hi < lo.
struct Span {
  int64_t lo, hi;
  int64_t size() const { return hi - lo + 1; }
};
Span distances(int64_t t0, int64_t rows, int64_t s0, int64_t cols, const Problem& p) {
  Span d{std::max<int64_t>(0, p.M + t0 - (s0 + cols - 1)), p.M + t0 + rows - 1 - s0};
  if (p.maxd >= 0) d.hi = std::min(d.hi, p.maxd);
  return d;
}

// Visible columns of tile row r: [c_lo, c_hi] (empty when c_hi < c_lo); base = the distance at column 0.
struct RowRange {
  int64_t base, c_lo, c_hi;
};
RowRange row_range(int64_t t, int64_t s0, int64_t cols, const Problem& p) {
  const int64_t base = p.M + t - s0;
  return {base, p.maxd >= 0 ? std::max<int64_t>(0, base - p.maxd) : 0, std::min(cols - 1, base)};
}

// s (rows x cols) += the position terms bd (rows x span, column e = distance span.lo + e); invisible pairs -> -inf.
void add_positions(float* s, const float* bd, Span span, int64_t t0, int64_t rows, int64_t s0, int64_t cols,
                   const Problem& p) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * cols;
    const RowRange rr = row_range(t0 + r, s0, cols, p);
    if (rr.c_hi < rr.c_lo) {
      std::fill(row, row + cols, kNegInf);
      continue;
    }
    std::fill(row, row + rr.c_lo, kNegInf);
    std::fill(row + rr.c_hi + 1, row + cols, kNegInf);
    const float* b = bd + r * span.size() + (rr.base - span.lo);  // b[-c]: the distance of column c
    for (int64_t c = rr.c_lo; c <= rr.c_hi; ++c) row[c] += b[-c];
  }
}

// The inverse of add_positions for gradients: dbd[r, distance - lo] = ds[r, c] over the visible pairs, else 0.
void gather_positions(const float* ds, float* dbd, Span span, int64_t t0, int64_t rows, int64_t s0, int64_t cols,
                      const Problem& p) {
  std::fill(dbd, dbd + rows * span.size(), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const RowRange rr = row_range(t0 + r, s0, cols, p);
    float* b = dbd + r * span.size() + (rr.base - span.lo);
    const float* row = ds + r * cols;
    for (int64_t c = rr.c_lo; c <= rr.c_hi; ++c) b[-c] = row[c];
  }
}

// Scores of one tile: scale * (qu k^T + position terms), masked. False when no pair of it is visible.
bool tile_scores(const float* qu, const float* qv, const float* k, const float* rel, int64_t t0, int64_t rows,
                 int64_t s0, int64_t cols, const Problem& p, float* s, float* bd, Span* span) {
  *span = distances(t0, rows, s0, cols, p);
  if (span->hi < span->lo) return false;
  const int64_t D = p.D;
  gemm(false, true, rows, cols, D, p.scale, qu + t0 * D, D, k + s0 * D, D, 0.0f, s, cols);
  gemm(false, true, rows, span->size(), D, p.scale, qv + t0 * D, D, rel + span->lo * D, D, 0.0f, bd, span->size());
  add_positions(s, bd, *span, t0, rows, s0, cols, p);
  return true;
}

struct Buffers {
  std::vector<float> s, bd, dp, m, l;
  Buffers() : s(kBlockQ * kBlockK), bd(kBlockQ * (kBlockQ + kBlockK)), dp(kBlockQ * kBlockK), m(kBlockQ), l(kBlockQ) {}
};

// One (b, h), query rows [t0, t1): o rows and lse.
void forward_rows(const float* qu, const float* qv, const float* k, const float* v, const float* rel, float* o,
                  float* lse, int64_t t0, int64_t t1, const Problem& p, Buffers& w) {
  const int64_t rows = t1 - t0, D = p.D;
  float* acc = o + t0 * D;
  std::fill(acc, acc + rows * D, 0.0f);
  std::fill(w.m.begin(), w.m.begin() + rows, kNegInf);
  std::fill(w.l.begin(), w.l.begin() + rows, 0.0f);
  const int64_t j_end = std::min(p.K, p.M + t1);
  for (int64_t s0 = p.first_key(t0); s0 < j_end; s0 += kBlockK) {
    const int64_t cols = std::min(kBlockK, j_end - s0);
    Span span{};
    if (!tile_scores(qu, qv, k, rel, t0, rows, s0, cols, p, w.s.data(), w.bd.data(), &span)) continue;
    online_softmax_step(w.s.data(), rows, cols, w.m.data(), w.l.data(), acc, D);
    gemm(false, false, rows, D, cols, 1.0f, w.s.data(), cols, v + s0 * D, D, 1.0f, acc, D);
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (w.l[r] == 0.0f) {  // no key visible: zeros, and lse = +inf so the backward sees P = 0
      std::fill(acc + r * D, acc + (r + 1) * D, 0.0f);
      lse[t0 + r] = std::numeric_limits<float>::infinity();
      continue;
    }
    const float inv = 1.0f / w.l[r];
    for (int64_t d = 0; d < D; ++d) acc[r * D + d] *= inv;
    lse[t0 + r] = w.m[r] + std::log(w.l[r]);
  }
}

// Gradients of one (b, h); every output row and the table gradient drel are this head's own.
void backward_head(const float* qu, const float* qv, const float* k, const float* v, const float* rel, const float* o,
                   const float* dout, const float* lse, float* dqu, float* dqv, float* dk, float* dv, float* drel,
                   const Problem& p, Buffers& w, std::vector<float>& delta) {
  const int64_t T = p.T, K = p.K, D = p.D;
  for (int64_t t = 0; t < T; ++t) {  // delta_t = rowsum(dO * O) (FA2 Algorithm 2, line 4)
    float acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += dout[t * D + d] * o[t * D + d];
    delta[t] = acc;
  }
  std::fill(dqu, dqu + T * D, 0.0f);
  std::fill(dqv, dqv + T * D, 0.0f);
  std::fill(dk, dk + K * D, 0.0f);
  std::fill(dv, dv + K * D, 0.0f);
  std::fill(drel, drel + p.R * D, 0.0f);
  float *s = w.s.data(), *ds = w.dp.data(), *bd = w.bd.data();
  for (int64_t s0 = 0; s0 < K; s0 += kBlockK) {
    const int64_t cols = std::min(kBlockK, K - s0);
    const int64_t t_first = std::max<int64_t>(0, s0 - p.M);  // the first query that sees key s0
    const int64_t t_last = p.maxd >= 0 ? std::min(T - 1, s0 + cols - 1 + p.maxd - p.M) : T - 1;
    for (int64_t t0 = (t_first / kBlockQ) * kBlockQ; t0 <= t_last; t0 += kBlockQ) {
      const int64_t rows = std::min(kBlockQ, T - t0);
      Span span{};
      if (!tile_scores(qu, qv, k, rel, t0, rows, s0, cols, p, s, bd, &span)) continue;
      for (int64_t r = 0; r < rows; ++r) exp_shifted(s + r * cols, cols, lse[t0 + r]);  // P = exp(S - lse)
      gemm(true, false, cols, D, rows, 1.0f, s, cols, dout + t0 * D, D, 1.0f, dv + s0 * D, D);  // dV += P^T dO
      gemm(false, true, rows, cols, D, 1.0f, dout + t0 * D, D, v + s0 * D, D, 0.0f, ds, cols);  // dP = dO V^T
      for (int64_t r = 0; r < rows; ++r) {                                                      // dS = P (dP - delta)
        float* dsr = ds + r * cols;
        const float* pr = s + r * cols;
        const float dl = delta[t0 + r];
        for (int64_t c = 0; c < cols; ++c) dsr[c] = pr[c] * (dsr[c] - dl);
      }
      gemm(true, false, cols, D, rows, p.scale, ds, cols, qu + t0 * D, D, 1.0f, dk + s0 * D, D);  // dK += s dS^T qu
      gemm(false, false, rows, D, cols, p.scale, ds, cols, k + s0 * D, D, 1.0f, dqu + t0 * D, D);  // dqu += s dS K
      gather_positions(ds, bd, span, t0, rows, s0, cols, p);  // dS along the diagonals: [rows, span]
      const int64_t n = span.size();
      gemm(false, false, rows, D, n, p.scale, bd, n, rel + span.lo * D, D, 1.0f, dqv + t0 * D, D);  // dqv += s dBD r
      gemm(true, false, n, D, rows, p.scale, bd, n, qv + t0 * D, D, 1.0f, drel + span.lo * D, D);  // dr += s dBD^T qv
    }
  }
}

Problem make_problem(const torch::Tensor& qu, const torch::Tensor& k, const torch::Tensor& rel, int64_t maxd) {
  Problem p{};
  p.B = qu.size(0), p.H = qu.size(1), p.T = qu.size(2), p.K = k.size(2), p.R = rel.size(1), p.D = qu.size(3);
  p.M = p.K - p.T, p.maxd = maxd;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.D)));
  return p;
}

class RelativeAttentionFunction : public torch::autograd::Function<RelativeAttentionFunction> {
 public:
  // qu, qv [B, H, T, D] and rel [H, R, D] contiguous, k, v [B, H, K, D] with contiguous rows (heads and
  // batches at any stride, as a decoding cache's view), float32 -> o [B, H, T, D]
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& qu, const torch::Tensor& qv,
                               const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& rel,
                               int64_t maxd) {
    const Problem p = make_problem(qu, k, rel, maxd);
    auto o = torch::empty_like(qu);
    auto lse = torch::empty({p.B, p.H, p.T}, qu.options());
    const int64_t q_blocks = (p.T + kBlockQ - 1) / kBlockQ;
    const float *qup = qu.data_ptr<float>(), *qvp = qv.data_ptr<float>(), *kp = k.data_ptr<float>(),
                *vp = v.data_ptr<float>(), *rp = rel.data_ptr<float>();
    float *op = o.data_ptr<float>(), *lp = lse.data_ptr<float>();
    at::parallel_for(0, p.B * p.H * q_blocks, 1, [&](int64_t begin, int64_t end) {
      Buffers w;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / q_blocks, blk = task % q_blocks, h = bh % p.H;
        const int64_t t0 = blk * kBlockQ, t1 = std::min(p.T, t0 + kBlockQ);
        const int64_t b = bh / p.H;
        forward_rows(qup + bh * p.T * p.D, qvp + bh * p.T * p.D, kp + b * k.stride(0) + h * k.stride(1),
                     vp + b * v.stride(0) + h * v.stride(1),
                     rp + h * p.R * p.D, op + bh * p.T * p.D, lp + bh * p.T, t0, t1, p, w);
      }
    });
    ctx->save_for_backward({qu, qv, k, v, rel, o, lse});
    ctx->saved_data["maxd"] = maxd;
    return o;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto sv = ctx->get_saved_variables();
    const auto &qu = sv[0], &qv = sv[1], &rel = sv[4], &o = sv[5], &lse = sv[6];
    const auto k = sv[2].contiguous(), v = sv[3].contiguous();  // the forward may have read strided views
    const Problem p = make_problem(qu, k, rel, ctx->saved_data["maxd"].toInt());
    auto dout = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(o);
    auto dqu = torch::empty_like(qu), dqv = torch::empty_like(qv), dk = torch::empty_like(k),
         dv = torch::empty_like(v);
    auto drel_bh = torch::empty({p.B, p.H, p.R, p.D}, rel.options());  // one table gradient per (b, h): no races
    at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
      Buffers w;
      std::vector<float> delta(p.T);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t tq = bh * p.T * p.D, tk = bh * p.K * p.D, h = bh % p.H;
        backward_head(qu.data_ptr<float>() + tq, qv.data_ptr<float>() + tq, k.data_ptr<float>() + tk,
                      v.data_ptr<float>() + tk, rel.data_ptr<float>() + h * p.R * p.D, o.data_ptr<float>() + tq,
                      dout.data_ptr<float>() + tq, lse.data_ptr<float>() + bh * p.T, dqu.data_ptr<float>() + tq,
                      dqv.data_ptr<float>() + tq, dk.data_ptr<float>() + tk, dv.data_ptr<float>() + tk,
                      drel_bh.data_ptr<float>() + bh * p.R * p.D, p, w, delta);
      }
    });
    return {dqu, dqv, dk, dv, drel_bh.sum(0), torch::Tensor()};
  }
};

}  // namespace

std::vector<std::string> relative_attention_unsupported_reasons(const torch::Tensor& qu, const torch::Tensor& qv,
                                                                const torch::Tensor& k, const torch::Tensor& v,
                                                                const torch::Tensor& r, const RelativeMask& mask) {
  std::vector<std::string> why;
  if (attention_reference_forced()) why.push_back("LONGSEQ_ATTENTION=reference forces the reference path");
  for (const auto* t : {&qu, &qv, &k, &v, &r})
    if (!t->device().is_cpu()) {
      why.push_back("inputs are not on the CPU");
      break;
    }
  for (const auto* t : {&qu, &qv, &k, &v, &r})
    if (t->scalar_type() != torch::kFloat) {
      why.push_back("dtype is not float32");
      break;
    }
  if (mask.key_padding.defined()) why.push_back("key padding is not fused");
  if ((kBlockQ + kBlockK) * (qu.dim() == 4 ? qu.size(3) : 0) > std::numeric_limits<int>::max() / 4)
    why.push_back("rows too wide for the BLAS's 32-bit sizes");
  return why;
}

torch::Tensor relative_attention_fused(const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k,
                                       const torch::Tensor& v, const torch::Tensor& r, const RelativeMask& mask) {
  auto why = relative_attention_unsupported_reasons(qu, qv, k, v, r, mask);
  if (!why.empty()) throw Error("relative attention kernel \"fused\" cannot take this input: " + join(why, "; "));
  check_relative_attention_inputs(qu, qv, k, v, r, mask);
  return RelativeAttentionFunction::apply(qu.contiguous(), qv.contiguous(), cpu_softmax::contiguous_rows(k),
                                          cpu_softmax::contiguous_rows(v), r.contiguous(), mask.max_distance);
}

}  // namespace longseq
