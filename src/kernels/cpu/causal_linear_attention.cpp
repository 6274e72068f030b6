// Chunked causal linear attention on the CPU: Katharopoulos et al. 2020,
// "Transformers are RNNs", eq. 8-12 (causal prefix sums) computed chunk by
// chunk as in their sec. 3.3 / Algorithm 1, with the memory-efficient gradient
// of sec. 3.3.1 (eq. 13-15) generalised to chunks. Per (batch, head):
//   forward:  P_c = tril(a_c b_c^T) v_c + a_c S,  S += b_c^T v_c   (chunk c, S = sums of the earlier chunks)
//   backward: the chunks' own products and dL/da by the same forward sweep of S; the later chunks' parts of
//             dL/db and dL/dv by a reverse sweep of R = sum over the later chunks of a_i gn_i^T.
// The denominator a_t . z_t rides along as an implicit column of ones in v,
// handled by row sums and rank-1 updates rather than by copying v. Block
// products go to the process's BLAS (single-threaded inside our parallel
// region, as in flash_attention.cpp) or to the micro-kernels of panel_gemm.h; parallel over (B, H).
#include "longseq/kernels/causal_linear_attention.h"

#include <algorithm>
#include <vector>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "panel_gemm.h"

namespace longseq {

namespace {

using cpu_gemm::gemm;  // the 64 x 64 block products on the micro-kernels (the BLAS packs both operands per call)

// What every sweep needs to know: sizes, chunk, and whether the output is the ratio (with its denominator).
struct Problem {
  int64_t B, H, T, M, E, chunk;
  bool ratio;
  float eps;
};

// Zeroes the entries above the diagonal of an L x L block: key j > query i is not visible.
void keep_lower(float* x, int64_t L) {
  for (int64_t i = 0; i + 1 < L; ++i) std::fill(x + i * L + i + 1, x + (i + 1) * L, 0.0f);
}

constexpr int64_t kRows = 16;  // row blocks of the triangular products: only the columns up to a block's last row

// X = tril(a b^T) for a, b [L, K]: per block of rows, only the columns up to its last row (about half the product).
void lower_scores(int64_t L, int64_t K, const float* a, const float* b, float* X) {
  if (cpu_gemm::available()) {
    thread_local std::vector<float> panels;  // b's rows packed once for every row block
    panels.resize(cpu_gemm::panel_floats(L, K));
    cpu_gemm::pack_panels(b, L, K, K, panels.data());
    for (int64_t r0 = 0; r0 < L; r0 += kRows) {
      const int64_t r1 = std::min(L, r0 + kRows);
      cpu_gemm::gemm_panels(r1 - r0, r1, K, 1.0f, a + r0 * K, K, panels.data(), 0.0f, X + r0 * L, L);
    }
  } else {
    for (int64_t r0 = 0; r0 < L; r0 += kRows) {
      const int64_t r1 = std::min(L, r0 + kRows);
      gemm(false, true, r1 - r0, r1, K, 1.0f, a + r0 * K, K, b, K, 0.0f, X + r0 * L, L);
    }
  }
  keep_lower(X, L);
}

// C [L, n] = X Y (transposed: X^T Y) for X [L, L] lower triangular and Y [L, n]: the zero blocks skipped.
void lower_times(bool transposed, int64_t L, int64_t n, const float* X, const float* Y, float* C) {
  for (int64_t r0 = 0; r0 < L; r0 += kRows) {
    const int64_t r1 = std::min(L, r0 + kRows);
    if (transposed)  // row j of X^T Y sums over i >= j
      gemm(true, false, r1 - r0, n, L - r0, 1.0f, X + r0 * L + r0, L, Y + r0 * n, n, 0.0f, C + r0 * n, n);
    else  // row i of X Y sums over j <= i
      gemm(false, false, r1 - r0, n, r1, 1.0f, X + r0 * L, L, Y, n, 0.0f, C + r0 * n, n);
  }
}

// The reductions below are marked `omp simd` so that the compiler may reorder their sums into vector lanes.
float dot(const float* x, const float* y, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

// y += alpha * x.
void axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// z += sum of the L rows of x [L, M]: the chunk's sum first, then one add, as the reference's
// per-chunk sums (adding row by row into a large running z loses more to rounding).
void add_rows(const float* x, int64_t L, int64_t M, float* z) {
  thread_local std::vector<float> sum;
  sum.assign(M, 0.0f);
  for (int64_t i = 0; i < L; ++i) axpy(1.0f, x + i * M, sum.data(), M);  // row by row: contiguous, vectorized
  axpy(1.0f, sum.data(), z, M);
}

// Forward of one (b, h). a, b: [T, M]; v: [T, E]; S [M, E], z [M] (ratio only): the sums before
// position 0 in, after position T - 1 out; out [T, E]; den [T] (ratio only): a_t . z_t + eps.
void forward_head(const float* a, const float* b, const float* v, float* S, float* z, float* out, float* den,
                  const Problem& p, float* A) {
  const int64_t M = p.M, E = p.E;
  for (int64_t t0 = 0; t0 < p.T; t0 += p.chunk) {
    const int64_t L = std::min(p.chunk, p.T - t0);
    const float *ac = a + t0 * M, *bc = b + t0 * M, *vc = v + t0 * E;
    float* oc = out + t0 * E;
    lower_scores(L, M, ac, bc, A);          // tril(a_c b_c^T)
    lower_times(false, L, E, A, vc, oc);    // inside the chunk
    gemm(false, false, L, E, M, 1.0f, ac, M, S, E, 1.0f, oc, E);  // the chunks before it
    if (p.ratio) {
      for (int64_t i = 0; i < L; ++i) {
        double sum = 0;  // in double: this one number scales the whole row, and signed features cancel in it
#pragma omp simd reduction(+ : sum)
        for (int64_t m = 0; m < M; ++m) sum += double(ac[i * M + m]) * z[m];
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j <= i; ++j) sum += A[i * L + j];
        const float d = static_cast<float>(sum + p.eps);
        den[t0 + i] = d;
        float* row = oc + i * E;
        if (d != 0.0f)
          for (int64_t e = 0; e < E; ++e) row[e] /= d;
        else
          std::fill(row, row + E, 0.0f);  // no key visible: 0, as the reference's guard
      }
      add_rows(bc, L, M, z);
    }
    gemm(true, false, M, E, L, 1.0f, bc, M, vc, E, 1.0f, S, E);  // S += b_c^T v_c, after the read (inclusive inside)
  }
}

// dL/d(numerator) gn [L, E] and dL/d(denominator) gd [L] of one chunk's rows from the output gradient g:
// y = n / d gives gn = g / d, gd = -(g . y) / d; 0 where d = 0 (the guard). Prefix mode: gn = g.
void chunk_output_grads(const float* g, const float* y, const float* den, int64_t L, const Problem& p, float* gn,
                        float* gd) {
  const int64_t E = p.E;
  if (!p.ratio) {
    std::copy(g, g + L * E, gn);
    return;
  }
  for (int64_t i = 0; i < L; ++i) {
    const float d = den[i];
    if (d == 0.0f) {
      std::fill(gn + i * E, gn + (i + 1) * E, 0.0f);
      gd[i] = 0;
      continue;
    }
    const float inv = 1.0f / d;
    for (int64_t e = 0; e < E; ++e) gn[i * E + e] = g[i * E + e] * inv;
    gd[i] = -dot(g + i * E, y + i * E, E) * inv;
  }
}

// G = tril(gn v_c^T + gd 1^T): dL/d(a_i . b_j) for j <= i inside a chunk.
void chunk_score_grads(const float* gn, const float* gd, const float* vc, int64_t L, const Problem& p, float* G) {
  lower_scores(L, p.E, gn, vc, G);
  if (p.ratio)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j <= i; ++j) G[i * L + j] += gd[i];
}

struct Scratch {
  std::vector<float> A, G, gn, gd, S, z, R, r, rc;
  explicit Scratch(const Problem& p)
      : A(p.chunk * p.chunk), G(p.chunk * p.chunk), gn(p.chunk * p.E), gd(p.chunk), S(p.M * p.E), z(p.M),
        R(p.M * p.E), r(p.M), rc(p.M) {}
};

// Backward of one (b, h): S0 [M, E], z0 [M] the sums the forward started from (null = 0);
// y [T, E], den [T] the forward's output and denominators; g [T, E] dL/dy -> da, db [T, M], dv [T, E].
// First sweep (forward order): everything inside a chunk (its tril products, each once) and dL/da's part from the
// earlier chunks (eq. 13 chunked). Reverse sweep: dL/db and dL/dv's parts from the later chunks (eq. 14-15), three
// products a chunk with R = sum over the later chunks of a_i gn_i^T. Each sweep derives gn, gd from g (elementwise:
// cheaper than keeping [T, E] of them, whose fresh pages the kernel would pay to zero).
void backward_head(const float* a, const float* b, const float* v, const float* y, const float* den, const float* g,
                   const float* S0, const float* z0, float* da, float* db, float* dv, const Problem& p, Scratch& w) {
  const int64_t T = p.T, M = p.M, E = p.E, c = p.chunk;
  float *S = w.S.data(), *z = w.z.data(), *R = w.R.data(), *r = w.r.data();
  float *A = w.A.data(), *G = w.G.data(), *gnc = w.gn.data(), *gdc = w.gd.data();
  if (S0) std::copy(S0, S0 + M * E, S); else std::fill(w.S.begin(), w.S.end(), 0.0f);
  if (z0) std::copy(z0, z0 + M, z); else std::fill(w.z.begin(), w.z.end(), 0.0f);
  for (int64_t t0 = 0; t0 < T; t0 += c) {
    const int64_t L = std::min(c, T - t0);
    const float *ac = a + t0 * M, *bc = b + t0 * M, *vc = v + t0 * E;
    float *dac = da + t0 * M, *dbc = db + t0 * M, *dvc = dv + t0 * E;
    chunk_output_grads(g + t0 * E, y + t0 * E, den ? den + t0 : nullptr, L, p, gnc, gdc);
    chunk_score_grads(gnc, gdc, vc, L, p, G);
    lower_times(false, L, M, G, bc, dac);       // dL/da inside the chunk
    lower_times(true, L, M, G, ac, dbc);        // dL/db inside the chunk
    lower_scores(L, M, ac, bc, A);
    lower_times(true, L, E, A, gnc, dvc);       // dL/dv inside the chunk
    gemm(false, true, L, M, E, 1.0f, gnc, E, S, E, 1.0f, dac, M);  // dL/da from the earlier chunks
    if (p.ratio) {
      for (int64_t i = 0; i < L; ++i) axpy(gdc[i], z, dac + i * M, M);
      add_rows(bc, L, M, z);
    }
    gemm(true, false, M, E, L, 1.0f, bc, M, vc, E, 1.0f, S, E);
  }
  std::fill(w.R.begin(), w.R.end(), 0.0f);
  std::fill(w.r.begin(), w.r.end(), 0.0f);
  const int64_t last = T == 0 ? 0 : ((T - 1) / c) * c;
  for (int64_t t0 = last; t0 >= 0 && T > 0; t0 -= c) {
    const int64_t L = std::min(c, T - t0);
    const float *ac = a + t0 * M, *bc = b + t0 * M, *vc = v + t0 * E;
    float *dbc = db + t0 * M, *dvc = dv + t0 * E;
    chunk_output_grads(g + t0 * E, y + t0 * E, den ? den + t0 : nullptr, L, p, gnc, gdc);
    gemm(false, true, L, M, E, 1.0f, vc, E, R, E, 1.0f, dbc, M);
    gemm(false, false, L, E, M, 1.0f, bc, M, R, E, 1.0f, dvc, E);
    if (p.ratio) {
      for (int64_t j = 0; j < L; ++j) axpy(1.0f, r, dbc + j * M, M);
      std::fill(w.rc.begin(), w.rc.end(), 0.0f);  // the chunk's part first, as for z
      for (int64_t i = 0; i < L; ++i) axpy(gdc[i], ac + i * M, w.rc.data(), M);
      axpy(1.0f, w.rc.data(), r, M);
    }
    gemm(true, false, M, E, L, 1.0f, ac, M, gnc, E, 1.0f, R, E);  // after the reads: R holds the later chunks only
  }
}

float* data_or_null(const torch::Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr<float>() : nullptr; }

Problem make_problem(const torch::Tensor& a, const torch::Tensor& v, int64_t chunk, bool ratio, double eps) {
  return {a.size(0), a.size(1), a.size(2), a.size(3), v.size(3), std::max<int64_t>(1, std::min(chunk, a.size(2))),
          ratio, static_cast<float>(eps)};
}

// a, b, v contiguous; S [B, H, M, E] and z [B, H, M] (ratio) contiguous running sums, advanced in place.
// Returns (out [B, H, T, E], den [B, H, T] or empty).
std::pair<torch::Tensor, torch::Tensor> run_forward(const torch::Tensor& a, const torch::Tensor& b,
                                                    const torch::Tensor& v, const torch::Tensor& S,
                                                    const torch::Tensor& z, const Problem& p) {
  auto out = torch::empty({p.B, p.H, p.T, p.E}, v.options());
  auto den = p.ratio ? torch::empty({p.B, p.H, p.T}, v.options()) : torch::empty({0}, v.options());
  if (p.T == 0) return {out, den};
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *Sp = S.data_ptr<float>(), *zp = data_or_null(z), *op = out.data_ptr<float>(), *dp = data_or_null(den);
  at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> A(p.chunk * p.chunk);
    for (int64_t bh = begin; bh < end; ++bh)
      forward_head(ap + bh * p.T * p.M, bp + bh * p.T * p.M, vp + bh * p.T * p.E, Sp + bh * p.M * p.E,
                   p.ratio ? zp + bh * p.M : nullptr, op + bh * p.T * p.E, p.ratio ? dp + bh * p.T : nullptr, p,
                   A.data());
  });
  return {out, den};
}

class CausalLinearAttentionFunction : public torch::autograd::Function<CausalLinearAttentionFunction> {
 public:
  // S0, z0: the sums the stream starts from (empty = 0), kept unchanged for the backward;
  // S, z: the running sums (a copy of S0, z0), advanced past the last position.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b,
                               const torch::Tensor& v, const torch::Tensor& S0, const torch::Tensor& z0,
                               const torch::Tensor& S, const torch::Tensor& z, int64_t chunk, bool ratio,
                               double eps) {
    const Problem p = make_problem(a, v, chunk, ratio, eps);
    auto out = run_forward(a, b, v, S, z, p);
    ctx->save_for_backward({a, b, v, out.first, out.second, S0, z0});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["ratio"] = ratio;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({out.second});
    return out.first;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &a = saved[0], &b = saved[1], &v = saved[2], &y = saved[3], &den = saved[4], &S0 = saved[5],
               &z0 = saved[6];
    const Problem p = make_problem(a, v, ctx->saved_data["chunk"].toInt(), ctx->saved_data["ratio"].toBool(),
                                   ctx->saved_data["eps"].toDouble());
    auto g = grads[0].contiguous();
    auto da = torch::empty_like(a), db = torch::empty_like(b), dv = torch::empty_like(v);
    const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>(), *vp = v.data_ptr<float>(),
                *yp = y.data_ptr<float>(), *dp = data_or_null(den), *gp = g.data_ptr<float>(),
                *S0p = data_or_null(S0), *z0p = data_or_null(z0);
    float *dap = da.data_ptr<float>(), *dbp = db.data_ptr<float>(), *dvp = dv.data_ptr<float>();
    at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
      Scratch w(p);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t tm = bh * p.T * p.M, te = bh * p.T * p.E;
        backward_head(ap + tm, bp + tm, vp + te, yp + te, dp ? dp + bh * p.T : nullptr, gp + te,
                      S0p ? S0p + bh * p.M * p.E : nullptr, z0p ? z0p + bh * p.M : nullptr, dap + tm, dbp + tm,
                      dvp + te, p, w);
      }
    });
    return {da, db, dv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

bool records_gradient(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
  return torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad() || v.requires_grad());
}

// The running sums to advance: `given` itself when it may be updated in place, else a fresh copy (or zeros).
torch::Tensor running(const torch::Tensor& given, at::IntArrayRef sizes, const torch::TensorOptions& opts,
                      bool in_place) {
  if (!given.defined()) return torch::zeros(sizes, opts);
  if (in_place && given.is_contiguous()) return given;
  return given.contiguous().clone();
}

torch::Tensor empty_if_undefined(const torch::Tensor& t, const torch::TensorOptions& opts) {
  return t.defined() ? t.contiguous() : torch::empty({0}, opts);
}

// The shared entry of both forms: state S (and z for the ratio) in and out.
torch::Tensor fused(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v, int64_t chunk,
                    bool ratio, double eps, torch::Tensor* S_state, torch::Tensor* z_state) {
  TORCH_CHECK(chunk > 0, "causal linear attention: chunk must be positive, got ", chunk);
  const int64_t B = a.size(0), H = a.size(1), M = a.size(3), E = v.size(3);
  auto ac = a.contiguous(), bc = b.contiguous(), vc = v.contiguous();
  const bool grad = records_gradient(a, b, v);
  const auto opts = v.options().requires_grad(false);
  const torch::Tensor S0 = S_state ? *S_state : torch::Tensor(), z0 = z_state ? *z_state : torch::Tensor();
  auto S = running(S0, {B, H, M, E}, opts, !grad), z = ratio ? running(z0, {B, H, M}, opts, !grad) : torch::Tensor();
  torch::Tensor y;
  if (grad) {
    y = CausalLinearAttentionFunction::apply(ac, bc, vc, empty_if_undefined(S0, opts), empty_if_undefined(z0, opts),
                                             S, ratio ? z : torch::empty({0}, opts), chunk, ratio, eps);
  } else {
    torch::NoGradGuard ng;
    y = run_forward(ac, bc, vc, S, z, make_problem(ac, vc, chunk, ratio, eps)).first;
  }
  if (S_state) *S_state = S;
  if (z_state) *z_state = z;
  return y;
}

void throw_unless_supported(const std::vector<std::string>& why) {
  if (!why.empty()) throw Error("fused causal linear attention cannot take this input: " + join(why, "; "));
}

}  // namespace

std::vector<std::string> causal_linear_attention_unsupported_reasons(const torch::Tensor& a, const torch::Tensor& b,
                                                                     const torch::Tensor& v,
                                                                     const LinearAttentionState* state) {
  std::vector<std::string> why;
  if (attention_reference_forced()) why.push_back("LONGSEQ_ATTENTION=reference forces the reference path");
  std::vector<const torch::Tensor*> all = {&a, &b, &v};
  if (state && state->S.defined()) all.push_back(&state->S);
  if (state && state->z.defined()) all.push_back(&state->z);
  for (const auto* t : all)
    if (!t->device().is_cpu()) { why.push_back("inputs are not on the CPU"); break; }
  for (const auto* t : all)
    if (t->scalar_type() != torch::kFloat) { why.push_back("dtype is not float32"); break; }
  if (a.dim() != 4 || b.dim() != 4 || v.dim() != 4) {
    why.push_back("inputs are not [B, H, T, M] and [B, H, T, E]");
    return why;
  }
  if (a.sizes() != b.sizes() || v.size(0) != a.size(0) || v.size(1) != a.size(1) || v.size(2) != a.size(2))
    why.push_back("a, b, v shapes disagree");
  const int64_t B = a.size(0), H = a.size(1), M = a.size(3), E = v.size(3);
  if (state && state->S.defined() && state->S.sizes() != at::IntArrayRef{B, H, M, E})
    why.push_back("state S is not [B, H, M, E]");
  if (state && state->z.defined() && state->z.sizes() != at::IntArrayRef{B, H, M})
    why.push_back("state z is not [B, H, M]");
  return why;
}

torch::Tensor causal_linear_attention_fused(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                            int64_t chunk, double eps, LinearAttentionState* state) {
  throw_unless_supported(causal_linear_attention_unsupported_reasons(a, b, v, state));
  TORCH_CHECK(!state || state->S.defined() == state->z.defined(),
              "causal linear attention: a state needs both S and z, or neither");
  return fused(a, b, v, chunk, true, eps, state ? &state->S : nullptr, state ? &state->z : nullptr);
}

torch::Tensor causal_prefix_products_fused(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v,
                                           int64_t chunk, torch::Tensor* state) {
  LinearAttentionState s;
  if (state) s.S = *state;
  throw_unless_supported(causal_linear_attention_unsupported_reasons(a, b, v, state ? &s : nullptr));
  return fused(a, b, v, chunk, false, 0.0, state, nullptr);
}

}  // namespace longseq
