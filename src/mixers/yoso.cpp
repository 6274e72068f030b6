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

#include <cmath>

#include "longseq/common.h"
#include "longseq/mixers/heads.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"

namespace longseq {

torch::Tensor yoso_hash_codes(const torch::Tensor& x, const torch::Tensor& R) {
  torch::NoGradGuard ng;
  const int64_t tau = R.size(3);
  auto bits = torch::einsum("bhtd,hmdk->bhmtk", {x.detach(), R.to(x.dtype())}).gt(0).to(torch::kLong);
  auto weights = torch::pow(2, torch::arange(tau, torch::kLong));
  return (bits * weights).sum(-1);
}

namespace {

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

// Positions per block when tables of D x D outer products are built: bounds their memory.
constexpr int64_t kOuterBlock = 512;

// sum over rounds of table_r[codes_out] @ w where table_r[b] = sum_{codes_in = b} a_j c_j^T:
// for each output position i, sum_r sum_{j: f_r(in_j) = f_r(out_i)} a_j (c_j . w_i). [BH, S|T, D] each.
torch::Tensor bucket_outer_apply(const torch::Tensor& a, const torch::Tensor& c, const torch::Tensor& codes_in,
                                 const torch::Tensor& w, const torch::Tensor& codes_out, int64_t n_buckets) {
  const int64_t BH = a.size(0), m = codes_in.size(1), D = a.size(2), Dc = c.size(2);
  auto out = torch::zeros({BH, w.size(1), D}, w.options());
  for (int64_t r = 0; r < m; ++r) {
    torch::Tensor table;  // [BH, 1, 2^tau + 1, D * Dc]
    for (int64_t s0 = 0; s0 < a.size(1); s0 += kOuterBlock) {
      const int64_t n = std::min(kOuterBlock, a.size(1) - s0);
      auto outer = torch::einsum("bsd,bse->bsde", {a.narrow(1, s0, n), c.narrow(1, s0, n)}).reshape({BH, n, D * Dc});
      auto part = bucket_sums(outer, codes_in.narrow(1, r, 1).narrow(2, s0, n), n_buckets);
      table = table.defined() ? table + part : part;
    }
    for (int64_t t0 = 0; t0 < w.size(1); t0 += kOuterBlock) {
      const int64_t n = std::min(kOuterBlock, w.size(1) - t0);
      auto rd = bucket_read(table, codes_out.narrow(1, r, 1).narrow(2, t0, n)).view({BH, n, D, Dc});
      out.narrow(1, t0, n) += torch::matmul(rd, w.narrow(1, t0, n).unsqueeze(-1)).squeeze(-1);
    }
  }
  return out;
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
    auto dq = bucket_outer_apply(K, V, ck, g, cq, nb) * c;
    auto dk = bucket_outer_apply(Q, g, cq, V, ck, nb) * c;
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
    const bool bias = a.options["bias"].get<bool>();
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    training_gen_ = at::detail::createCPUGenerator(seed_);
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "yoso: x must be [B, T, C], got ", x.sizes());
    if (ctx.causal)
      throw Error("yoso is bidirectional only: the paper and its code define no causal form (hash tables sum over "
                  "every key); use it in the encoder, not in the decoder LM");
    const int64_t B = x.size(0), T = x.size(1);
    auto qkv = qkv_(x).chunk(3, -1);
    auto qn = torch::nn::functional::normalize(split_heads(qkv[0], heads_), torch::nn::functional::NormalizeFuncOptions().dim(-1));
    auto kn = torch::nn::functional::normalize(split_heads(qkv[1], heads_), torch::nn::functional::NormalizeFuncOptions().dim(-1));
    auto v = split_heads(qkv[2], heads_);
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
      auto R = rotations(x.scalar_type());
      auto cq = yoso_hash_codes(qn, R), ck = yoso_hash_codes(kn, R);
      if (pad.defined()) ck = ck.masked_fill(pad.view({B, 1, 1, T}), -1);
      y = yoso_sampled_attention(qn, kn, v, cq, ck, tau_);
    }
    y = torch::nn::functional::normalize(y, torch::nn::functional::NormalizeFuncOptions().dim(-1));
    if (pad.defined()) y = y.masked_fill(pad.view({B, 1, T, 1}), 0.0);
    return out_(merge_heads(y));
  }

 private:
  // Hyperplanes [H, m, D, tau]: fresh every training forward (repeated when recomputing), fixed by the seed otherwise.
  torch::Tensor rotations(torch::ScalarType dtype) {
    const std::vector<int64_t> shape = {heads_, rounds_, head_dim_, tau_};
    if (!is_training()) {
      auto gen = at::detail::createCPUGenerator(seed_ * 1000003 + 1);
      return at::normal(0.0, 1.0, shape, gen).to(dtype);
    }
    if (!in_recompute() || !last_.defined()) last_ = at::normal(0.0, 1.0, shape, training_gen_);
    return last_.to(dtype);
  }

  int64_t heads_, head_dim_, tau_, rounds_;
  bool expectation_;
  uint64_t seed_;
  at::Generator training_gen_;
  torch::Tensor last_;
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
