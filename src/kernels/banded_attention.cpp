// Banded attention on the block-sparse kernel (see the header): the layout of
// a band's key blocks and the permutation that makes a dilated band contiguous.
#include "longseq/kernels/banded_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "longseq/common.h"

namespace longseq {

namespace {

void check_band(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const BandSpec& band,
                const torch::Tensor& key_padding) {
  TORCH_CHECK(q.dim() == 4 && q.sizes() == k.sizes() && k.sizes() == v.sizes(),
              "banded_attention: q, k, v must all be [B, H, T, D]; got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(band.window >= 0 && band.dilation >= 1, "banded_attention: window must be >= 0 and dilation >= 1, got ",
              band.window, " and ", band.dilation);
  TORCH_CHECK(!key_padding.defined() ||
                  (key_padding.dim() == 2 && key_padding.size(0) == q.size(0) && key_padding.size(1) == q.size(2)),
              "banded_attention: key_padding must be [B, T] = [", q.size(0), ", ", q.size(2), "], got ",
              key_padding.defined() ? key_padding.sizes() : torch::IntArrayRef{});
}

}  // namespace

BlockSparseResult banded_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const BandSpec& band, const torch::Tensor& key_padding, const std::string& kernel) {
  check_band(q, k, v, band, key_padding);
  const int64_t w = band.window, d = band.dilation;
  const bool causal = band.causal;
  const int64_t B = q.size(0), T = q.size(2), D = q.size(3);
  const int64_t Tp = (T + d - 1) / d * d, L = Tp / d;  // d residue classes of L rows each
  auto lopts = q.options().dtype(torch::kLong);  // positions on q's device: the reference never mixes devices
  // Permuted row p = r * L + s holds original position s * d + r; classes are laid end to end at
  // coordinate r * (L + w + 1) + s, so a band of w never reaches into the next class.
  auto p_all = torch::arange(Tp, lopts);
  auto orig = (p_all % L) * d + p_all.div(L, "floor");
  auto coord = p_all.div(L, "floor") * (L + w + 1) + p_all % L;
  auto valid = orig < T;
  auto q_pos = torch::where(valid, coord, torch::full_like(coord, -1));
  torch::Tensor k_pos = q_pos.view({1, 1, Tp});
  auto widen = [&](const torch::Tensor& t) {  // [B, H, T, D] -> [B, H, Tp, D] in permuted order
    auto x = Tp > T ? torch::cat({t, torch::zeros({B, t.size(1), Tp - T, D}, t.options())}, 2) : t;
    return d > 1 ? x.index_select(2, orig) : x;
  };
  if (key_padding.defined()) {
    auto kp = key_padding.to(q.device(), torch::kBool);
    if (Tp > T) kp = torch::cat({kp, torch::ones({B, Tp - T}, kp.options())}, 1);
    if (d > 1) kp = kp.index_select(1, orig);
    k_pos = torch::where(kp, torch::full({B, Tp}, -1, lopts), q_pos.view({1, Tp})).view({B, 1, Tp});
  }
  // Query block j needs the key blocks of rows [j b - w, (j + 1) b - 1 + w] (causal: up to (j + 1) b - 1).
  // Blocks of 16 rows when D suits the kernel's panel products (w = 256, T = 16K, causal: forward 0.078 s against
  // 0.081, 0.090 and 0.087 s with 32, 48 and 64, one run; the smaller band waste wins), else of up to 32 for the BLAS.
  const int64_t b = D % 16 == 0 ? 16 : std::clamp<int64_t>(w, 16, 32), NQ = (Tp + b - 1) / b, right = causal ? 0 : w;
  std::vector<std::vector<int64_t>> rows(NQ);
  for (int64_t j = 0; j < NQ; ++j)
    for (int64_t c = std::max<int64_t>(0, j * b - w) / b; c <= std::min(Tp - 1, (j + 1) * b - 1 + right) / b; ++c)
      rows[j].push_back(c);
  BlockSparseMask mask{causal, q_pos.view({1, 1, Tp}), k_pos, 0.0, w, right};
  auto r = block_sparse_attention(widen(q), widen(k), widen(v), block_sparse_layout(b, b, {{rows}}), mask,
                                  1.0 / std::sqrt(static_cast<double>(D)), kernel);
  if (d > 1) {  // back to the original order
    auto inv = torch::empty_like(orig).scatter_(0, orig, p_all);
    r.out = r.out.index_select(2, inv), r.lse = r.lse.index_select(2, inv);
  }
  return {r.out.narrow(2, 0, T), r.lse.narrow(2, 0, T)};
}

double banded_attention_flops(int64_t B, int64_t H, int64_t T, int64_t D, const BandSpec& band) {
  // Per residue class of n rows, a window of w on each side (causal: behind) holds
  // sum_i (min(i, w) + 1 + [bidirectional] min(n - 1 - i, w)) pairs.
  const int64_t d = std::max<int64_t>(band.dilation, 1), w = band.window;
  double pairs = 0;
  for (int64_t r = 0; r < std::min(d, T); ++r) {
    const double n = static_cast<double>((T - r + d - 1) / d), m = std::min<double>(static_cast<double>(w), n - 1);
    const double side = m * (m + 1) / 2 + (n - 1 - m) * m;  // sum over i of min(i, w)
    pairs += n + side * (band.causal ? 1 : 2);
  }
  return 4.0 * static_cast<double>(B * H * D) * pairs;
}

}  // namespace longseq
