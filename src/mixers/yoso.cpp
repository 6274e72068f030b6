// "yoso": You Only Sample (Almost) Once. Zeng et al. 2021, sec. 3: Bernoulli
// sampling attention. Unit queries and keys hashed by m rounds of tau
// random-hyperplane bits; q_i collects the values of the keys sharing its
// bucket, so E[Y] = B(Q, K) V with B_ij = (1 - arccos(q_i.k_j)/pi)^tau (sec. 3.1).
// No softmax denominator: each output row is l2-normalized (as the official
// code does). Backward (sec. 3.2): the surrogate dB/dx ~ (tau/2) B estimated
// with the same hash tables, so it costs O(T m D^2), linear in T.
// `expectation` gives YOSO-E, B(Q, K) V itself (quadratic; the reference).
// Bidirectional only: neither the paper nor its code define a causal YOSO.
#include "longseq/mixers/yoso.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "longseq/common.h"
#include "longseq/mixers/heads.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"

extern "C" void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
extern "C" void cblas_dgemm(int order, int trans_a, int trans_b, int m, int n, int k, double alpha, const double* a,
                            int lda, const double* b, int ldb, double beta, double* c, int ldc);

namespace longseq {

torch::Tensor yoso_hash_codes(const torch::Tensor& x, const torch::Tensor& R) {
  torch::NoGradGuard ng;
  const int64_t tau = R.size(3);
  auto bits = torch::einsum("bhtd,hmdk->bhmtk", {x.detach(), R.to(x.device(), x.scalar_type())}).gt(0).to(torch::kLong);
  auto weights = torch::pow(2, torch::arange(tau, bits.options()));
  return (bits * weights).sum(-1);
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// Bucket row of a code: padded keys carry -1 and go to an extra row no query reads.
torch::Tensor bucket_rows(const torch::Tensor& codes, int64_t n_buckets) {
  return torch::where(codes.ge(0), codes, torch::full_like(codes, n_buckets));
}

// Sums rows of `values` [BH, S, E] into 2^tau buckets (+ the dump row) per (bh, round)
// by `codes` [BH, m, S] -> tables [BH, m, 2^tau + 1, E]. One round at a time: O(BH S E) extra memory.
torch::Tensor bucket_sums(const torch::Tensor& values, const torch::Tensor& codes, int64_t n_buckets) {
  const int64_t BH = values.size(0), m = codes.size(1), S = values.size(1), E = values.size(2), nb = n_buckets + 1;
  auto offs = (torch::arange(BH, codes.options()) * nb).view({BH, 1});
  auto rows = values.reshape({BH * S, E});
  std::vector<torch::Tensor> tables;
  for (int64_t r = 0; r < m; ++r) {
    auto index = (bucket_rows(codes.select(1, r), n_buckets) + offs).reshape(-1);
    tables.push_back(torch::zeros({BH * nb, E}, values.options()).index_add_(0, index, rows).view({BH, nb, E}));
  }
  return torch::stack(tables, 1);
}

// Sum over rounds of tables [BH, m, 2^tau + 1, E] read at `codes` [BH, m, T] -> [BH, T, E].
torch::Tensor bucket_read(const torch::Tensor& tables, const torch::Tensor& codes) {
  const int64_t BH = tables.size(0), m = tables.size(1), nb = tables.size(2) - 1, E = tables.size(3);
  auto out = torch::zeros({BH, codes.size(2), E}, tables.options());
  for (int64_t r = 0; r < m; ++r) {
    auto idx = bucket_rows(codes.select(1, r), nb).unsqueeze(-1).expand({-1, -1, E});
    out += tables.select(1, r).gather(1, idx);
  }
  return out;
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float* c, int64_t ldc) {
  cblas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, int(m), int(n), int(k), 1.0f, a, int(lda), b,
              int(ldb), 0.0f, c, int(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc) {
  cblas_dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, int(m), int(n), int(k), 1.0, a, int(lda), b,
              int(ldb), 0.0, c, int(ldc));
}

// Positions of each bucket, grouped: order[offsets[b] .. offsets[b+1]) hold bucket b (codes < 0 left out).
void group_by_bucket(const int64_t* codes, int64_t n, int64_t nb, std::vector<int64_t>& order,
                     std::vector<int64_t>& offsets) {
  offsets.assign(nb + 1, 0);
  for (int64_t i = 0; i < n; ++i)
    if (codes[i] >= 0) ++offsets[codes[i] + 1];
  for (int64_t b = 0; b < nb; ++b) offsets[b + 1] += offsets[b];
  order.resize(offsets[nb]);
  std::vector<int64_t> at(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i)
    if (codes[i] >= 0) order[at[codes[i]]++] = i;
}

// out_i = scale * sum_r sum_{j: f_r(in_j) = f_r(out_i)} a_j (c_j . w_i), for a, c [BH, S, D], w [BH, T, D]
// and codes [BH, m, S|T]: per round and bucket, the table sum_j a_j c_j^T (D x D) by one GEMM over the
// bucket's rows, applied to its queries by another. O(m (S + T) D^2) per sequence and head.
template <typename Scalar>
void bucket_outer_apply(const torch::Tensor& a, const torch::Tensor& c, const torch::Tensor& codes_in,
                        const torch::Tensor& w, const torch::Tensor& codes_out, int64_t nb, double scale,
                        torch::Tensor& out) {
  const int64_t BH = a.size(0), S = a.size(1), T = w.size(1), D = a.size(2), m = codes_in.size(1);
  const Scalar *A = a.data_ptr<Scalar>(), *Cm = c.data_ptr<Scalar>(), *W = w.data_ptr<Scalar>();
  const int64_t *CI = codes_in.data_ptr<int64_t>(), *CO = codes_out.data_ptr<int64_t>();
  Scalar* O = out.data_ptr<Scalar>();
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> oi, fi, oo, fo;
    std::vector<Scalar> as(S * D), cs(S * D), ws(T * D), table(D * D), res(T * D);
    for (int64_t n = begin; n < end; ++n)
      for (int64_t r = 0; r < m; ++r) {
        group_by_bucket(CI + (n * m + r) * S, S, nb, oi, fi);
        group_by_bucket(CO + (n * m + r) * T, T, nb, oo, fo);
        for (size_t k = 0; k < oi.size(); ++k) {  // rows in bucket order
          std::copy_n(A + (n * S + oi[k]) * D, D, as.data() + k * D);
          std::copy_n(Cm + (n * S + oi[k]) * D, D, cs.data() + k * D);
        }
        for (size_t k = 0; k < oo.size(); ++k) std::copy_n(W + (n * T + oo[k]) * D, D, ws.data() + k * D);
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t ni = fi[b + 1] - fi[b], no = fo[b + 1] - fo[b];
          if (ni == 0 || no == 0) continue;
          gemm(true, false, D, D, ni, as.data() + fi[b] * D, D, cs.data() + fi[b] * D, D, table.data(), D);
          gemm(false, true, no, D, D, ws.data() + fo[b] * D, D, table.data(), D, res.data() + fo[b] * D, D);
          for (int64_t k = fo[b]; k < fo[b + 1]; ++k) {
            Scalar* dst = O + (n * T + oo[k]) * D;
            for (int64_t d = 0; d < D; ++d) dst[d] += Scalar(scale) * res[k * D + d];
          }
        }
      }
  });
}

torch::Tensor bucket_outer_apply(const torch::Tensor& a, const torch::Tensor& c, const torch::Tensor& codes_in,
                                 const torch::Tensor& w, const torch::Tensor& codes_out, int64_t nb, double scale) {
  if (!w.device().is_cpu())  // the bucket tables read raw host memory: a round trip, right on any device
    return bucket_outer_apply(a.cpu(), c.cpu(), codes_in.cpu(), w.cpu(), codes_out.cpu(), nb, scale).to(w.device());
  auto ci = codes_in.contiguous(), co = codes_out.contiguous();
  if (w.scalar_type() == torch::kDouble) {
    auto out = torch::zeros_like(w);
    bucket_outer_apply<double>(a.contiguous(), c.contiguous(), ci, w.contiguous(), co, nb, scale, out);
    return out;
  }
  auto f = [](const torch::Tensor& t) { return t.to(torch::kFloat).contiguous(); };
  auto out = torch::zeros(w.sizes(), w.options().dtype(torch::kFloat));
  bucket_outer_apply<float>(f(a), f(c), ci, f(w), co, nb, scale, out);
  return out.to(w.scalar_type());
}

class YosoFunction : public torch::autograd::Function<YosoFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& qn, const torch::Tensor& kn,
                               const torch::Tensor& v, const torch::Tensor& codes_q, const torch::Tensor& codes_k,
                               int64_t tau) {
    const int64_t B = v.size(0), H = v.size(1), S = v.size(2), D = v.size(3), T = qn.size(2), m = codes_q.size(2);
    auto cq = codes_q.reshape({B * H, m, T}), ck = codes_k.reshape({B * H, m, S});
    auto y = bucket_read(bucket_sums(v.reshape({B * H, S, D}), ck, int64_t(1) << tau), cq) / double(m);
    ctx->save_for_backward({qn, kn, v, codes_q, codes_k});
    ctx->saved_data["tau"] = tau;
    return y.view({B, H, T, D});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &qn = s[0], &kn = s[1], &v = s[2];
    const int64_t tau = ctx->saved_data["tau"].toInt(), nb = int64_t(1) << tau;
    const int64_t B = v.size(0), H = v.size(1), S = v.size(2), D = v.size(3), T = qn.size(2), m = s[3].size(2);
    auto cq = s[3].reshape({B * H, m, T}), ck = s[4].reshape({B * H, m, S});
    auto g = grads[0].reshape({B * H, T, D}).contiguous();
    // dV_j = sum_r sum_{i in bucket} g_i / m
    auto dv = bucket_read(bucket_sums(g, cq, nb), ck) / double(m);
    const double c = tau / (2.0 * m);  // the surrogate dB/dx ~ (tau/2) B, over m rounds
    auto K = kn.reshape({B * H, S, D}), Q = qn.reshape({B * H, T, D}), V = v.reshape({B * H, S, D});
    // dQ_i = (tau/2) sum_j B_ij (g_i . v_j) k_j ; dK_j = (tau/2) sum_i B_ij (g_i . v_j) q_i
    auto dq = bucket_outer_apply(K, V, ck, g, cq, nb, c);
    auto dk = bucket_outer_apply(Q, g, cq, V, ck, nb, c);
    return {dq.view(qn.sizes()), dk.view(kn.sizes()), dv.view(v.sizes()), {}, {}, {}};
  }
};

}  // namespace

torch::Tensor yoso_sampled_attention(const torch::Tensor& qn, const torch::Tensor& kn, const torch::Tensor& v,
                                     const torch::Tensor& codes_q, const torch::Tensor& codes_k, int64_t tau) {
  return YosoFunction::apply(qn, kn, v, codes_q, codes_k, tau);
}

namespace {

class YosoImpl : public MixerImpl {
 public:
  explicit YosoImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        tau_(a.options["hash_bits"]),
        rounds_(a.options["hashes"]),
        expectation_(a.options["expectation"]),
        seed_(static_cast<uint64_t>(a.options["seed"].get<int64_t>()) * 7919 + a.layer_index) {
    if (!a.core_only) {  // else the host layer projects
      const bool bias = a.options["bias"].get<bool>();
      qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
      out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    }
    forwards_ = register_buffer("forwards", torch::zeros({}, torch::kLong));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "yoso: x must be [B, T, C], got ", x.sizes());
    require_bidirectional(ctx.causal);
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    require_bidirectional(ctx.causal);
    const int64_t B = q.size(0), T = q.size(2);
    auto qn = torch::nn::functional::normalize(q, torch::nn::functional::NormalizeFuncOptions().dim(-1));
    auto kn = torch::nn::functional::normalize(k, torch::nn::functional::NormalizeFuncOptions().dim(-1));
    torch::Tensor pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(torch::kBool) : torch::Tensor();
    torch::Tensor y;
    if (expectation_) {
      auto sim = torch::matmul(qn, kn.transpose(-1, -2));
      auto prob = torch::pow(1 - torch::acos(sim.detach().clamp(-1, 1)) / M_PI, double(tau_));
      if (pad.defined()) prob = prob.masked_fill(pad.view({B, 1, 1, T}), 0.0);
      // value B, gradient the surrogate (tau/2) B with respect to q.k (sec. 3.2)
      auto weight = prob * (1 + 0.5 * tau_ * (sim - sim.detach()));
      y = torch::matmul(weight, v);
    } else {
      auto R = rotations(q.scalar_type());
      auto cq = yoso_hash_codes(qn, R), ck = yoso_hash_codes(kn, R);
      if (pad.defined()) ck = ck.masked_fill(pad.view({B, 1, 1, T}), -1);
      y = yoso_sampled_attention(qn, kn, v, cq, ck, tau_);
    }
    y = torch::nn::functional::normalize(y, torch::nn::functional::NormalizeFuncOptions().dim(-1));
    if (pad.defined()) y = y.masked_fill(pad.view({B, 1, T, 1}), 0.0);
    return y;
  }

 private:
  // Hyperplanes [H, m, D, tau]: fresh every training forward (repeated when recomputing), fixed by the seed otherwise.
  static void require_bidirectional(bool causal) {
    if (causal)
      throw Error("yoso is bidirectional only: the paper and its code define no causal form (hash tables sum over "
                  "every key); use it in the encoder, not in the decoder LM");
  }

  torch::Tensor rotations(torch::ScalarType dtype) {
    const std::vector<int64_t> shape = {heads_, rounds_, head_dim_, tau_};
    if (!is_training()) {
      auto gen = at::detail::createCPUGenerator(seed_ * 1000003 + 1);
      return at::normal(0.0, 1.0, shape, gen).to(dtype);
    }
    // Draw n of the seed's training stream; a recomputation (reversible backward) replays its forward's n.
    auto n = replay_or_record(this, "draw", [&] { return forwards_.add_(1).clone(); });
    auto gen = at::detail::createCPUGenerator(draw_seed(seed_, static_cast<uint64_t>(n.item<int64_t>())));
    return at::normal(0.0, 1.0, shape, gen).to(dtype);
  }

  int64_t heads_, head_dim_, tau_, rounds_;
  bool expectation_;
  uint64_t seed_;
  torch::Tensor forwards_;  // training forwards so far (a buffer: a resumed run continues the draws)
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo yoso_mixer_info() {
  MixerInfo info;
  info.name = "yoso";
  info.summary = "Bernoulli-sampling attention: m rounds of tau-bit hyperplane LSH tables, O(T m D); bidirectional only";
  info.citation = "Zeng et al. 2021, You Only Sample (Almost) Once, sec. 3";
  info.schema = {
      {"hash_bits", OptionType::Int, 8, "tau bits per hash, 2^tau buckets (the paper: 9 for BERT, 10-12 for LRA)", 0, 20},
      {"hashes", OptionType::Int, 32, "m hash rounds (the paper's YOSO-32)", 1, 4096},
      {"expectation", OptionType::Bool, false, "YOSO-E: the expectation B(Q, K) V computed exactly, O(T^2)"},
      {"seed", OptionType::Int, 0, "seed of the hyperplanes (training draws fresh ones every forward)", 0, 1e15},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<YosoImpl>(a); };
  info.attends = true;
  info.sparse_options = {{"hash_bits", 2}, {"hashes", 3}};  // 4 buckets: keys collide, the estimate is coarse
  info.supports_causal = false;
  info.exact_gradients = false;  // sec. 3.2's surrogate; the sampled forward is piecewise constant in Q, K
  info.flops = [](const FlopQuery& f) {  // projections; hashing of Q and K; table writes and reads
    const double m = f.options["hashes"].get<double>(), tau = f.options["hash_bits"].get<double>();
    if (f.options["expectation"].get<bool>()) return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * f.T * f.C;
    return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * f.C * m * tau + 2.0 * f.B * f.T * f.C * m;
  };
  return info;
}

}  // namespace longseq
