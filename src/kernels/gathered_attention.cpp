#include "longseq/kernels/gathered_attention.h"

#include <cmath>
#include <limits>

namespace longseq {

namespace {

// Rows of k [B, H, S, D] at positions idx [B|1, H|1, N, m] (>= 0) -> [B, H, N, m, D].
torch::Tensor gather_rows(const torch::Tensor& k, const torch::Tensor& idx) {
  const int64_t B = k.size(0), H = k.size(1), D = k.size(3), N = idx.size(2), m = idx.size(3);
  if (idx.size(0) == 1 && idx.size(1) == 1)  // one pattern for every batch item and head
    return k.index_select(2, idx.reshape({N * m})).view({B, H, N, m, D});
  auto flat = idx.expand({B, H, N, m}).reshape({B, H, N * m, 1}).expand({B, H, N * m, D});
  return k.gather(2, flat).view({B, H, N, m, D});
}

struct SoftmaxLse {
  torch::Tensor probs, lse;
};

// exp(s - lse) on allowed entries; the shift is detached (it cancels exactly).
SoftmaxLse softmax_lse(const torch::Tensor& scores, const torch::Tensor& allowed) {
  const double lowest = std::numeric_limits<float>::lowest();
  auto s = allowed.defined() ? scores.masked_fill(~allowed, lowest) : scores;
  auto mx = std::get<0>(s.detach().max(-1, /*keepdim=*/true));
  auto e = torch::exp(s - mx);
  if (allowed.defined()) e = e * allowed.to(e.dtype());
  auto l = e.sum(-1, /*keepdim=*/true);
  const double tiny = std::numeric_limits<float>::min();
  auto probs = e / l.clamp_min(tiny);
  auto lse = torch::where(l > 0, mx + torch::log(l.clamp_min(tiny)),
                          torch::full_like(l, -std::numeric_limits<double>::infinity()));
  return {probs, lse.squeeze(-1)};
}

}  // namespace

torch::Tensor masked_softmax(const torch::Tensor& scores, const torch::Tensor& allowed) {
  return softmax_lse(scores, allowed).probs;
}

GatheredResult gathered_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const KeySlots& slots, const torch::Tensor& key_padding, const ExtraKeys* extra,
                                  bool want_lse) {
  TORCH_CHECK(q.dim() == 5, "gathered_attention: q must be [B, H, N, b, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(1) == q.size(1) &&
                  k.size(3) == q.size(4),
              "gathered_attention: k, v must be [B, H, S, D] matching q ", q.sizes(), "; got ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(slots.pos.dim() == 4 && slots.pos.size(2) == q.size(2),
              "gathered_attention: slots.pos must be [B|1, H|1, N, m] with N = ", q.size(2), ", got ",
              slots.pos.sizes());
  const int64_t S = k.size(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(4)));
  auto valid = slots.pos >= 0;                          // [B|1, H|1, N, m]
  auto idx = slots.pos.clamp_min(0);
  auto kg = gather_rows(k, idx), vg = gather_rows(v, idx);  // [B, H, N, m, D]
  auto scores = torch::matmul(q, kg.transpose(-1, -2)) * scale;  // [B, H, N, b, m]
  auto allowed = valid.unsqueeze(-2);                   // [B|1, H|1, N, 1, m]
  if (slots.allowed.defined()) allowed = allowed & slots.allowed;
  if (key_padding.defined()) {
    TORCH_CHECK(key_padding.dim() == 2 && key_padding.size(0) == k.size(0) && key_padding.size(1) == S,
                "gathered_attention: key_padding must be [B, S] = [", k.size(0), ", ", S, "], got ",
                key_padding.sizes());
    auto pad = key_padding.to(torch::kBool);
    auto pad_g = pad.unsqueeze(1).unsqueeze(1).expand({pad.size(0), idx.size(1), idx.size(2), S})
                     .gather(3, idx.expand({pad.size(0), idx.size(1), idx.size(2), idx.size(3)}));
    allowed = allowed & (~pad_g).unsqueeze(-2);
  }
  if (extra) {  // extra columns: one more score block, softmax taken over both together
    auto se = torch::matmul(q, extra->k.unsqueeze(2).transpose(-1, -2)) * scale;  // [B, H, N, b, G]
    scores = torch::cat({scores, se}, -1);
    auto shape = scores.sizes().vec();
    shape.back() = -1;
    allowed = torch::cat({allowed.expand({shape[0], shape[1], shape[2], shape[3], kg.size(3)}),
                          extra->allowed.expand({shape[0], shape[1], shape[2], shape[3], se.size(-1)})},
                         -1);
  }
  SoftmaxLse r;
  torch::Tensor sees;  // [.., b, 1]: rows with at least one allowed key
  if (want_lse) {
    r = softmax_lse(scores, allowed);
  } else {  // leaner autograd: softmax keeps only its output, masked_fill only the mask
    r.probs = torch::softmax(scores.masked_fill(~allowed, std::numeric_limits<float>::lowest()), -1);
    sees = allowed.any(-1, /*keepdim=*/true).to(scores.dtype());
  }
  torch::Tensor out;
  if (extra) {
    const int64_t m = kg.size(3);
    out = torch::matmul(r.probs.narrow(-1, 0, m), vg) +
          torch::matmul(r.probs.narrow(-1, m, r.probs.size(-1) - m), extra->v.unsqueeze(2));
  } else {
    out = torch::matmul(r.probs, vg);
  }
  if (sees.defined()) out = out * sees;  // a row that sees nothing returns zeros
  return {out, r.lse};
}

}  // namespace longseq
