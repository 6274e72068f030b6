// FlashAttention-2 on the CPU (Dao 2023, "FlashAttention-2", Algorithm 1
// forward, Algorithm 2 backward). Per (batch, head) and block of queries, the
// key blocks stream through an online softmax (running max m, running sum l,
// unnormalized output); the backward recomputes P = exp(S - lse) block by
// block. Memory O(T * D) per head instead of O(T * S). Block products go to
// the process's BLAS (OpenBLAS, single-threaded inside our parallel region);
// the exponentials use an AVX2/FMA polynomial when the CPU has it.
// Parallel over (B, H, query blocks) forward and over (B, H) backward.
#include <cmath>
#include <cstdlib>
#include <limits>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "softmax_blocks.h"

namespace longseq {

namespace {

constexpr int64_t kBlockQ = 128, kBlockK = 512;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using cpu_softmax::gemm;
using cpu_softmax::exp_shifted;
using cpu_softmax::online_softmax_step;

struct Problem {
  int64_t B, H, T, S, D;
  bool causal;
  const bool* key_padding;  // [B, S] or null
  float scale;
  int64_t last_visible(int64_t t) const { return causal ? t + (S - T) : S - 1; }  // last key query t sees
};

// Sets masked scores of a (rows x cols) block to -inf; returns false if nothing is masked.
void mask_block(float* s, int64_t t0, int64_t rows, int64_t s0, int64_t cols, const Problem& p, const bool* pad) {
  const bool causal_cut = p.causal && s0 + cols - 1 > p.last_visible(t0);
  if (!causal_cut && !pad) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * cols;
    if (pad)
      for (int64_t c = 0; c < cols; ++c)
        if (pad[s0 + c]) row[c] = kNegInf;
    if (causal_cut)
      for (int64_t c = std::max<int64_t>(0, p.last_visible(t0 + r) + 1 - s0); c < cols; ++c) row[c] = kNegInf;
  }
}

// One (b, h) and query rows [t0, t1): writes o rows and lse.
void forward_rows(const float* q, const float* k, const float* v, float* o, float* lse, int64_t t0, int64_t t1,
                  const Problem& p, const bool* pad, float* sbuf, float* m, float* l) {
  const int64_t rows = t1 - t0, D = p.D;
  float* acc = o + t0 * D;
  std::fill(acc, acc + rows * D, 0.0f);
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.0f);
  const int64_t s_end = std::min(p.S, p.last_visible(t1 - 1) + 1);
  for (int64_t s0 = 0; s0 < s_end; s0 += kBlockK) {
    const int64_t cols = std::min(kBlockK, s_end - s0);
    gemm(false, true, rows, cols, D, p.scale, q + t0 * D, D, k + s0 * D, D, 0.0f, sbuf, cols);
    mask_block(sbuf, t0, rows, s0, cols, p, pad);
    online_softmax_step(sbuf, rows, cols, m, l, acc, D);
    gemm(false, false, rows, D, cols, 1.0f, sbuf, cols, v + s0 * D, D, 1.0f, acc, D);
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (l[r] == 0.0f) {  // every key masked: zeros, and lse = +inf so the backward sees P = 0
      std::fill(acc + r * D, acc + (r + 1) * D, 0.0f);
      lse[t0 + r] = std::numeric_limits<float>::infinity();
      continue;
    }
    const float inv = 1.0f / l[r];
    for (int64_t d = 0; d < D; ++d) acc[r * D + d] *= inv;
    lse[t0 + r] = m[r] + std::log(l[r]);
  }
}

// An empty tensor stands for "no padding": autograd functions take no undefined tensors.
const bool* padding_ptr(const torch::Tensor& pad) {
  return pad.defined() && pad.numel() > 0 ? pad.data_ptr<bool>() : nullptr;
}

Problem make_problem(const torch::Tensor& q, const torch::Tensor& k, bool causal, const torch::Tensor& pad) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), causal, padding_ptr(pad),
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.size(3))))};
}

// q: [B, H, T, D] contiguous, k, v: [B, H, S, D] with contiguous rows, float32 -> (o [B, H, T, D], lse [B, H, T])
std::pair<torch::Tensor, torch::Tensor> flash_forward(const torch::Tensor& q, const torch::Tensor& k,
                                                      const torch::Tensor& v, bool causal, const torch::Tensor& pad) {
  const Problem p = make_problem(q, k, causal, pad);
  auto o = torch::empty_like(q);
  auto lse = torch::empty({p.B, p.H, p.T}, q.options());
  const int64_t q_blocks = (p.T + kBlockQ - 1) / kBlockQ;
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = o.data_ptr<float>(), *lp = lse.data_ptr<float>();
  at::parallel_for(0, p.B * p.H * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sbuf(kBlockQ * kBlockK), m(kBlockQ), l(kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, blk = task % q_blocks, b = bh / p.H;
      const int64_t t0 = blk * kBlockQ, t1 = std::min(p.T, t0 + kBlockQ);
      const int64_t h = bh % p.H;  // k, v: rows contiguous per head, heads and batches at any stride
      forward_rows(qp + bh * p.T * p.D, kp + b * k.stride(0) + h * k.stride(1), vp + b * v.stride(0) + h * v.stride(1),
                   op + bh * p.T * p.D,
                   lp + bh * p.T, t0, t1, p, p.key_padding ? p.key_padding + b * p.S : nullptr, sbuf.data(), m.data(),
                   l.data());
    }
  });
  return {o, lse};
}

// Gradients of one (b, h): dq, dk, dv rows are this head's alone, so no races.
void backward_head(const float* q, const float* k, const float* v, const float* o, const float* dout,
                   const float* lse, float* dq, float* dk, float* dv, const Problem& p, const bool* pad, float* pbuf,
                   float* dpbuf, float* delta) {
  const int64_t T = p.T, S = p.S, D = p.D;
  for (int64_t t = 0; t < T; ++t) {  // delta_t = rowsum(dO * O) (FA2 Algorithm 2, line 4)
    float acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += dout[t * D + d] * o[t * D + d];
    delta[t] = acc;
  }
  std::fill(dq, dq + T * D, 0.0f);
  std::fill(dk, dk + S * D, 0.0f);
  std::fill(dv, dv + S * D, 0.0f);
  for (int64_t s0 = 0; s0 < S; s0 += kBlockK) {
    const int64_t cols = std::min(kBlockK, S - s0);
    // first query that sees key s0: last_visible(t) >= s0
    const int64_t t_first = p.causal ? std::max<int64_t>(0, s0 - (S - T)) : 0;
    for (int64_t t0 = (t_first / kBlockQ) * kBlockQ; t0 < T; t0 += kBlockQ) {
      const int64_t rows = std::min(kBlockQ, T - t0);
      gemm(false, true, rows, cols, D, p.scale, q + t0 * D, D, k + s0 * D, D, 0.0f, pbuf, cols);
      mask_block(pbuf, t0, rows, s0, cols, p, pad);
      for (int64_t r = 0; r < rows; ++r) exp_shifted(pbuf + r * cols, cols, lse[t0 + r]);  // P = exp(S - lse)
      gemm(true, false, cols, D, rows, 1.0f, pbuf, cols, dout + t0 * D, D, 1.0f, dv + s0 * D, D);     // dV += P^T dO
      gemm(false, true, rows, cols, D, 1.0f, dout + t0 * D, D, v + s0 * D, D, 0.0f, dpbuf, cols);    // dP = dO V^T
      for (int64_t r = 0; r < rows; ++r) {                                                           // dS = P (dP - delta)
        float* ds = dpbuf + r * cols;
        const float* pr = pbuf + r * cols;
        const float dl = delta[t0 + r];
        for (int64_t c = 0; c < cols; ++c) ds[c] = pr[c] * (ds[c] - dl);
      }
      gemm(true, false, cols, D, rows, p.scale, dpbuf, cols, q + t0 * D, D, 1.0f, dk + s0 * D, D);  // dK += s dS^T Q
      gemm(false, false, rows, D, cols, p.scale, dpbuf, cols, k + s0 * D, D, 1.0f, dq + t0 * D, D);  // dQ += s dS K
    }
  }
}

class FlashAttentionFunction : public torch::autograd::Function<FlashAttentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, bool causal, const torch::Tensor& pad) {
    auto out = flash_forward(q, k, v, causal, pad);
    ctx->save_for_backward({q, k, v, out.first, out.second, pad});
    ctx->saved_data["causal"] = causal;
    return out.first;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &o = saved[3], &lse = saved[4], &pad = saved[5];
    const auto k = saved[1].contiguous(), v = saved[2].contiguous();  // the forward may have read strided views
    const Problem p = make_problem(q, k, ctx->saved_data["causal"].toBool(), pad);
    auto dout = grads[0].contiguous();
    auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> pbuf(kBlockQ * kBlockK), dpbuf(kBlockQ * kBlockK), delta(p.T);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / p.H, tq = bh * p.T * p.D, tk = bh * p.S * p.D;
        backward_head(q.data_ptr<float>() + tq, k.data_ptr<float>() + tk, v.data_ptr<float>() + tk,
                      o.data_ptr<float>() + tq, dout.data_ptr<float>() + tq, lse.data_ptr<float>() + bh * p.T,
                      dq.data_ptr<float>() + tq, dk.data_ptr<float>() + tk, dv.data_ptr<float>() + tk, p,
                      p.key_padding ? p.key_padding + b * p.S : nullptr, pbuf.data(), dpbuf.data(), delta.data());
      }
    });
    return {dq, dk, dv, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool attention_reference_forced() {
  const char* env = std::getenv("LONGSEQ_ATTENTION");
  return env && std::string(env) == "reference";
}

std::vector<std::string> flash_attention_unsupported_reasons(const torch::Tensor& q, const torch::Tensor& k,
                                                             const torch::Tensor& v, const AttentionMask& mask) {
  std::vector<std::string> why;
  if (attention_reference_forced()) why.push_back("LONGSEQ_ATTENTION=reference forces the reference path");
  for (const auto* t : {&q, &k, &v}) {
    if (!t->device().is_cpu()) { why.push_back("inputs are not on the CPU"); break; }
  }
  for (const auto* t : {&q, &k, &v}) {
    if (t->scalar_type() != torch::kFloat) { why.push_back("dtype is not float32"); break; }
  }
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) why.push_back("inputs are not [B, H, T, D]");
  else if (k.sizes() != v.sizes() || q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3))
    why.push_back("q, k, v shapes disagree");
  else if (mask.causal && k.size(2) < q.size(2)) why.push_back("causal with fewer keys than queries");
  return why;
}

torch::Tensor flash_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const AttentionMask& mask) {
  auto why = flash_attention_unsupported_reasons(q, k, v, mask);
  if (!why.empty()) throw Error("fused attention cannot take this input: " + join(why, "; "));
  torch::Tensor pad = torch::zeros({0}, torch::kBool);
  if (mask.key_padding.defined()) {
    TORCH_CHECK(mask.key_padding.dim() == 2 && mask.key_padding.size(0) == q.size(0) &&
                    mask.key_padding.size(1) == k.size(2),
                "flash_attention: key_padding must be [B, S] = [", q.size(0), ", ", k.size(2), "], got ",
                mask.key_padding.sizes());
    pad = mask.key_padding.to(torch::kBool).contiguous();
  }
  return FlashAttentionFunction::apply(q.contiguous(), cpu_softmax::contiguous_rows(k),
                                       cpu_softmax::contiguous_rows(v), mask.causal, pad);
}

torch::Tensor exact_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const AttentionMask& mask, const std::string& kernel, double dropout, bool training) {
  const bool dropping = dropout > 0 && training;
  if (kernel == "reference") return attention_reference(q, k, v, mask, dropout, training);
  auto why = flash_attention_unsupported_reasons(q, k, v, mask);
  if (dropping) why.push_back("attention dropout is not fused");
  if (kernel == "fused" && !why.empty())
    throw Error("kernel \"fused\" cannot take this input: " + join(why, "; "));
  if (!why.empty()) return attention_reference(q, k, v, mask, dropout, training);
  return flash_attention(q, k, v, mask);
}

}  // namespace longseq
