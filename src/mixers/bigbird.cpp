// "bigbird": block-sparse attention with window, global and random blocks.
// Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", sec. 2
// (eq. AT: window + global + random) and App. D (the blocked ITC form).
// Query block j attends to its key blocks in one softmax; the global rows
// (first and last block) attend to every key through the fused exact kernel.
// The random table is a fixed function of (seed + layer, head, j): the same for
// every batch item, step and call. With padding, each sequence's real tokens
// are packed to the front and attend at their own length, so the blocks, the
// last global block and the random table do not depend on the batch's padding.
// Float32 CPU inputs run on the fused block-sparse kernel (one CSR row per
// query block, global rows included; kernels/cpu/block_sparse_attention.cpp);
// others on the gathered reference below. Cost O(T * (5 + r) * b * C).
// Causal streaming: the causal pattern of block j depends on j alone (never on
// T), so decoding keeps the keys and values of the real tokens and each new
// token attends to its own block's pattern: O((3 + r) * b * C) per token.
#include "longseq/mixers/bigbird.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "longseq/common.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/gathered_attention.h"
#include "longseq/kernels/growing_cache.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"
#include "longseq/mixers/cores.h"

namespace longseq {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// r distinct entries of `pool`, uniformly (partial Fisher-Yates on a counter-based stream).
std::vector<int64_t> draw(std::vector<int64_t> pool, int64_t r, uint64_t key) {
  r = std::min<int64_t>(r, static_cast<int64_t>(pool.size()));
  for (int64_t i = 0; i < r; ++i) {
    const uint64_t u = splitmix64(key + static_cast<uint64_t>(i));
    const int64_t pick = i + static_cast<int64_t>(u % static_cast<uint64_t>(pool.size() - i));
    std::swap(pool[i], pool[pick]);
  }
  pool.resize(r);
  return pool;
}

uint64_t row_key(uint64_t seed, int64_t h, int64_t j) {
  return splitmix64(splitmix64(seed) ^ splitmix64(static_cast<uint64_t>(h) * 0x100000001B3ULL + 7)) ^
         splitmix64(static_cast<uint64_t>(j) + 0xABCDEFULL) * 0x9E3779B97F4A7C15ULL;
}

}  // namespace

std::vector<int64_t> bigbird_causal_row(int64_t j, int64_t r, uint64_t seed, int64_t h) {
  std::vector<int64_t> fixed, pool;
  for (int64_t c : {int64_t{0}, j - 1, j})
    if (c >= 0 && std::find(fixed.begin(), fixed.end(), c) == fixed.end()) fixed.push_back(c);
  for (int64_t c = 1; c <= j - 2; ++c) pool.push_back(c);
  auto rnd = pool.empty() ? std::vector<int64_t>{} : draw(pool, r, row_key(seed, h, j));
  fixed.insert(fixed.end(), rnd.begin(), rnd.end());
  return fixed;
}

BigBirdPattern bigbird_pattern(int64_t T, int64_t block, int64_t r, uint64_t seed, int64_t heads, bool causal) {
  BigBirdPattern p;
  const int64_t nb = (T + block - 1) / block;
  p.blocks = nb;
  p.exact = causal ? nb <= r + 3 : nb < r + 5;
  if (p.exact) return p;
  p.rows.assign(heads, std::vector<std::vector<int64_t>>(nb));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < nb; ++j) {
      if (causal) {
        p.rows[h][j] = bigbird_causal_row(j, r, seed, h);
        continue;
      }
      std::vector<int64_t> fixed, pool;
      if (j == 0 || j == nb - 1) {
        for (int64_t c = 0; c < nb; ++c) fixed.push_back(c);  // global rows: everything
      } else {
        for (int64_t c : {int64_t{0}, j - 1, j, j + 1, nb - 1})
          if (std::find(fixed.begin(), fixed.end(), c) == fixed.end()) fixed.push_back(c);
        for (int64_t c = 1; c < nb - 1; ++c)
          if (std::find(fixed.begin(), fixed.end(), c) == fixed.end()) pool.push_back(c);
      }
      auto rnd = pool.empty() ? std::vector<int64_t>{} : draw(pool, r, row_key(seed, h, j));
      fixed.insert(fixed.end(), rnd.begin(), rnd.end());
      p.rows[h][j] = fixed;
    }
  return p;
}

namespace {

// Decoding state: per batch row, the keys and values of its real tokens so far.
struct BigBirdCache : MixerState {
  std::vector<GrowingCache> k, v;  // [1, H, n_b, D] per row b
  std::vector<int64_t> length;     // n_b: real tokens of row b so far
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, static_cast<int64_t>(length.size()), "bigbird");
    const auto row = torch::zeros({1}, torch::kLong);
    std::vector<GrowingCache> nk, nv;
    std::vector<int64_t> nl;
    for (int64_t r = 0; r < i.size(0); ++r) {
      const int64_t from = i[r].item<int64_t>();
      nk.push_back(k[from]), nv.push_back(v[from]), nl.push_back(length[from]);
      nk.back().reorder(row), nv.back().reorder(row);  // own buffers: a repeated row must not share its copy's
    }
    k = std::move(nk), v = std::move(nv), length = std::move(nl);
  }
};

class BigBirdImpl : public MixerImpl {
 public:
  explicit BigBirdImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        block_(a.options["block"]),
        random_(a.options["random_blocks"]),
        seed_(a.options["seed"].get<int64_t>() + a.layer_index),
        kernel_(a.options["kernel"]) {
    if (a.core_only) return;  // the host layer projects
    const bool bias = a.options["bias"].get<bool>();
    qkv_ = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 3 * a.d_model).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "bigbird: x must be [B, T, C], got ", x.sizes());
    auto qkv = qkv_(x).chunk(3, -1);
    return out_(merge_heads(
        attend_qkv(split_heads(qkv[0], heads_), split_heads(qkv[1], heads_), split_heads(qkv[2], heads_), ctx)));
  }

  torch::Tensor attend_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           MixContext& ctx) override {
    const int64_t B = q.size(0), T = q.size(2);
    auto pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(q.device(), torch::kBool) : torch::Tensor();
    TORCH_CHECK(!pad.defined() || pad.sizes() == torch::IntArrayRef({B, T}), "bigbird: padding_mask must be [B, T] = [",
                B, ", ", T, "], got ", pad.sizes());  // the exact fallback at short T would broadcast it silently
    if (ctx.state) return stream(q, k, v, pad, ctx);
    if (!pad.defined() || !pad.any().item<bool>()) return attend_unpadded(q, k, v, ctx.causal);
    // Each sequence's real tokens are moved to the front and attend at their own length L, so its blocks start at
    // its first token and its last global block is its own last block, however much padding the batch carries.
    auto order = std::get<1>(pad.to(torch::kInt).sort(/*stable=*/true, 1, /*descending=*/false));  // [B, T]: real first
    auto idx = order.view({B, 1, T, 1}).expand_as(q);
    auto qc = q.gather(2, idx), kc = k.gather(2, idx), vc = v.gather(2, idx);
    auto real = (~pad).sum(1);  // [B]
    auto lengths = std::get<0>(at::_unique(real)).cpu();
    auto out = torch::zeros_like(q);  // compacted; padded rows stay zero
    for (int64_t i = 0; i < lengths.numel(); ++i) {
      const int64_t L = lengths[i].item<int64_t>();
      if (L == 0) continue;
      auto rows = (real == L).nonzero().squeeze(1);
      auto pick = [&](const torch::Tensor& t) { return t.index_select(0, rows).narrow(2, 0, L); };
      auto o = attend_unpadded(pick(qc), pick(kc), pick(vc), ctx.causal);
      if (L < T) o = torch::cat({o, torch::zeros({o.size(0), heads_, T - L, o.size(3)}, o.options())}, 2);
      out = out.index_copy(0, rows, o);
    }
    return torch::zeros_like(out).scatter(2, idx, out);
  }

  std::unique_ptr<MixerState> initial_state(int64_t batch) const override {
    auto s = std::make_unique<BigBirdCache>();
    s->k.resize(batch), s->v.resize(batch), s->length.assign(batch, 0);
    return s;
  }

 private:
  // q, k, v: [B, H, T, D], no padding -> [B, H, T, D]
  torch::Tensor attend_unpadded(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal) {
    const int64_t T = q.size(2);
    const auto& p = pattern(T, causal);
    if (p.exact) {
      if (!warned_) {
        std::fprintf(stderr, "bigbird: T = %lld makes %lld blocks of %lld, too few for the pattern with %lld random "
                             "blocks; computing exact attention (said once)\n",
                     static_cast<long long>(T), static_cast<long long>(p.blocks), static_cast<long long>(block_),
                     static_cast<long long>(random_));
        warned_ = true;
      }
      return exact_attention(q, k, v, AttentionMask{causal, {}}, kernel_ == "reference" ? "reference" : "auto");
    }
    if (use_fused(q, k, v, p.layout))
      return block_sparse_attention(q, k, v, p.layout, BlockSparseMask{causal, {}, {}, 0.0},
                                    1.0 / std::sqrt(static_cast<double>(q.size(3))), "fused")
          .out;
    return causal ? causal_blocks(q, k, v, p) : itc_blocks(q, k, v, p);
  }

  // The fused kernel unless the option or the input rules it out ("fused": an error naming why).
  bool use_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                 const BlockSparseLayout& layout) const {
    if (kernel_ == "reference") return false;
    auto why = block_sparse_attention_unsupported_reasons(q, k, v, layout, {});
    if (kernel_ == "fused" && !why.empty())
      throw Error("bigbird: kernel \"fused\" cannot take this input: " + join(why, "; "));
    return why.empty();
  }

  // Decoding: x continues each row's real tokens; new token i of row b sits at compacted position n_b + i and
  // attends to the causal pattern row of its block over the cached keys. Padded positions output zeros.
  // q, k, v: [B, H, T, D]; pad [B, T] or undefined -> [B, H, T, D]
  torch::Tensor stream(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& pad, const MixContext& ctx) {
    auto* cache = dynamic_cast<BigBirdCache*>(ctx.state);
    TORCH_CHECK(cache, "bigbird: the state passed was not made by this mixer");
    TORCH_CHECK(ctx.causal, "bigbird: streaming needs causal mode");
    const int64_t B = q.size(0), T = q.size(2), D = q.size(3);
    TORCH_CHECK(static_cast<int64_t>(cache->length.size()) == B, "bigbird: the state holds ", cache->length.size(),
                " rows, the input ", B);
    auto out = torch::zeros_like(q);
    auto real = pad.defined() ? (~pad).to(torch::kCPU) : torch::ones({B, T}, torch::kBool);
    for (int64_t b = 0; b < B; ++b) {
      auto idx = real[b].nonzero().squeeze(1).to(q.device());  // the chunk's real tokens of row b
      const int64_t n = idx.numel();
      if (n == 0) continue;
      auto pick = [&](const torch::Tensor& t) { return t.narrow(0, b, 1).index_select(2, idx); };
      auto qb = pick(q);
      auto keys = cache->k[b].append(pick(k)), values = cache->v[b].append(pick(v));
      const int64_t first = cache->length[b];
      cache->length[b] += n;
      std::vector<torch::Tensor> parts;
      for (int64_t p0 = first; p0 < first + n;) {  // the new queries of one pattern block at a time
        const int64_t j = p0 / block_, p1 = std::min(first + n, (j + 1) * block_);
        std::vector<std::vector<std::vector<int64_t>>> heads(heads_);  // [H][one query block][key blocks]
        for (int64_t h = 0; h < heads_; ++h) heads[h] = {bigbird_causal_row(j, random_, static_cast<uint64_t>(seed_), h)};
        auto layout = block_sparse_layout(p1 - p0, block_, {heads});
        BlockSparseMask mask{true, torch::arange(p0, p1, torch::kLong).view({1, 1, p1 - p0}).to(q.device()), {}, 0.0};
        const std::string kernel = kernel_ == "auto" || kernel_ == "fused" ? "auto" : "reference";
        parts.push_back(block_sparse_attention(qb.narrow(2, p0 - first, p1 - p0), keys, values, layout, mask,
                                               1.0 / std::sqrt(static_cast<double>(D)), kernel)
                            .out);
        p0 = p1;
      }
      out = out.index_copy(0, torch::tensor({b}, torch::kLong).to(q.device()),
                           torch::zeros({1, heads_, T, D}, q.options()).index_copy(2, idx, torch::cat(parts, 2)));
    }
    return out;
  }

  // The pattern of a length, with its CSR layout for the kernel: [1, H, nb + 1] offsets.
  struct Pattern : BigBirdPattern {
    BlockSparseLayout layout;
  };

  const Pattern& pattern(int64_t T, bool causal) {
    auto key = std::make_pair(T, causal);
    auto it = patterns_.find(key);
    if (it != patterns_.end()) return it->second;
    if (patterns_.size() >= 64) patterns_.clear();  // lengths of a padded batch; bounded
    Pattern p;
    static_cast<BigBirdPattern&>(p) = bigbird_pattern(T, block_, random_, static_cast<uint64_t>(seed_), heads_, causal);
    if (!p.exact) p.layout = block_sparse_layout(block_, block_, {p.rows});
    return patterns_[key] = p;
  }

  // Rows [j0, j0 + N) of the pattern as token slots [1, H, N, m] (-1 = empty).
  torch::Tensor slots(const BigBirdPattern& p, int64_t j0, int64_t N, int64_t T, const torch::Device& device) const {
    size_t most = 0;
    for (const auto& head : p.rows)
      for (int64_t j = j0; j < j0 + N; ++j) most = std::max(most, head[j].size());
    const int64_t m = static_cast<int64_t>(most) * block_;
    auto pos = torch::full({1, heads_, N, m}, -1, torch::kLong);
    auto acc = pos.accessor<int64_t, 4>();
    for (int64_t h = 0; h < heads_; ++h)
      for (int64_t n = 0; n < N; ++n) {
        const auto& blocks = p.rows[h][j0 + n];
        for (size_t s = 0; s < blocks.size(); ++s)
          for (int64_t t = 0; t < block_; ++t) {
            const int64_t key = blocks[s] * block_ + t;
            if (key < T) acc[0][h][n][static_cast<int64_t>(s) * block_ + t] = key;
          }
      }
    return pos.to(device);
  }

  torch::Tensor blocked_queries(const torch::Tensor& q, int64_t nb) const {
    const int64_t B = q.size(0), T = q.size(2), D = q.size(3);
    auto qp = nb * block_ > T ? torch::cat({q, torch::zeros({B, heads_, nb * block_ - T, D}, q.options())}, 2) : q;
    return qp.view({B, heads_, nb, block_, D});
  }

  // ITC: dense first and last block rows; the middle rows over their slots.
  torch::Tensor itc_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const BigBirdPattern& p) const {
    const int64_t B = q.size(0), T = q.size(2), D = q.size(3), nb = p.blocks, last0 = (nb - 1) * block_;
    AttentionMask all{false, {}};
    const std::string kernel = kernel_ == "reference" ? "reference" : "auto";
    auto first = exact_attention(q.narrow(2, 0, block_), k, v, all, kernel);
    auto last = exact_attention(q.narrow(2, last0, T - last0), k, v, all, kernel);
    auto mid = gathered_attention(blocked_queries(q, nb).narrow(2, 1, nb - 2), k, v,
                                  KeySlots{slots(p, 1, nb - 2, T, q.device()), {}}, {})
                   .out.reshape({B, heads_, (nb - 2) * block_, D});
    return torch::cat(std::vector<torch::Tensor>{first, mid, last}, 2);
  }

  // Causal: every row over its slots, keys after the query masked.
  torch::Tensor causal_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const BigBirdPattern& p) const {
    const int64_t B = q.size(0), T = q.size(2), D = q.size(3), nb = p.blocks;
    auto pos = slots(p, 0, nb, T, q.device());
    auto qpos = torch::arange(nb * block_, pos.options()).view({1, 1, nb, block_, 1});
    auto allowed = pos.unsqueeze(-2) <= qpos;  // [1, H, nb, b, m]
    auto out = gathered_attention(blocked_queries(q, nb), k, v, KeySlots{pos, allowed}, {}).out;
    return out.reshape({B, heads_, nb * block_, D}).narrow(2, 0, T);
  }

  int64_t heads_, block_, random_, seed_;
  std::string kernel_;
  bool warned_ = false;
  std::map<std::pair<int64_t, bool>, Pattern> patterns_;  // by (length, causal)
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo bigbird_mixer_info() {
  MixerInfo info;
  info.name = "bigbird";
  info.summary = "block-sparse window + global + random attention (ITC), O(T*(5+r)*b); causal variant";
  info.citation = "Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences, sec. 2 and App. D";
  info.schema = {
      {"block", OptionType::Int, 64, "block size b (the paper: 64); any T (the last block may be partial)", 1, 1e6},
      {"random_blocks", OptionType::Int, 3, "r random key blocks per query block (the paper: 3)", 0, 1e6},
      {"seed", OptionType::Int, 0, "seed of the random table; layer l uses seed + l (the official code: layer index)",
       0, 1e15},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
      {"kernel", OptionType::String, "auto",
       "attention core: auto (the fused block-sparse CPU kernel when it supports the input, else the gathered "
       "reference), reference, or fused (error when unsupported); LONGSEQ_ATTENTION=reference forces reference",
       -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<BigBirdImpl>(a); };
  // Causal decoding keeps the real tokens' keys and values; the causal pattern of block j depends on j alone.
  info.streams = true;
  info.attends = true;
  info.sparse_options = {{"block", 2}, {"random_blocks", 1}};  // sparse from T = 11 (6 blocks; causal: 9)
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // the pattern's blocks on drawn q, k, v (every block where it is exact)
    const int64_t b = c.options["block"].get<int64_t>();
    auto p = bigbird_pattern(c.T, b, c.options["random_blocks"].get<int64_t>(),
                             static_cast<uint64_t>(c.options["seed"].get<int64_t>()), c.H, c.causal);
    if (p.exact) {
      p.rows.assign(c.H, std::vector<std::vector<int64_t>>(p.blocks));
      for (auto& head : p.rows)
        for (int64_t j = 0; j < p.blocks; ++j)
          for (int64_t i = 0; i <= (c.causal ? j : p.blocks - 1); ++i) head[j].push_back(i);
    }
    return block_sparse_core(c, c.T, c.T, block_sparse_layout(b, b, {p.rows}), BlockSparseMask{c.causal, {}, {}, 0.0}, 1.0);
  };
  info.flops = [](const FlopQuery& f) {
    const double b = f.options["block"].get<double>(), r = f.options["random_blocks"].get<double>();
    const double nb = std::ceil(f.T / b);
    double keys;  // key tokens per query, averaged over rows
    if (f.causal)
      keys = nb <= r + 3 ? (f.T + 1) / 2.0 : std::min<double>(f.T, (2.5 + r) * b);
    else
      keys = nb < r + 5 ? f.T : ((nb - 2) * (5 + r) * b + 2 * f.T) / nb;
    return 8.0 * f.B * f.T * f.C * f.C + 4.0 * f.B * f.T * keys * f.C;
  };
  return info;
}

}  // namespace longseq
