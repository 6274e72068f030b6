// "lsh": Reformer's LSH attention. Kitaev, Kaiser, Levskaya 2020, "Reformer:
// The Efficient Transformer", sec. 2 (eqs. 3-6) and App. A (eqs. 14-16).
// Shared QK (keys are the unit-normalized queries, no 1/sqrt(D) on the
// logits); angular LSH h(x) = argmax([xR; -xR]) per round; items sorted by
// (round, bucket, position) and cut into chunks of m, each attending to
// itself and the previous chunk (circularly, as the official code does); the
// self logit carries the penalty 1e5 (App. A) inside the log-sum-exp, so a
// token sees itself only when nothing else is visible and such a round then
// weighs nothing beside rounds that see more; causal masking by original
// position; rounds combined by their log-sum-exp weights (eq. 14).
// Padding tokens get a bucket of their own, sorted after the real tokens; the
// automatic bucket count and the circular look-back follow each sequence's
// real length, so padding changes no real output. Not strictly causal when
// m < T: later tokens move chunk boundaries (a property of the method).
// Float32 CPU inputs run on the fused block-sparse kernel, which reads q, k
// and v through the sort (by position within each chunk, which changes no
// chunk's members) and writes each round's outputs in position order, so no
// sorted copies are made; chunk c of the sorted order
// attends to key blocks {prev(c), c} with the self penalty inside the kernel,
// which returns each round's log-sum-exp; others on the gathered reference.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "longseq/common.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/kernels/gathered_attention.h"
#include "longseq/mixers/heads.h"
#include "longseq/mixers/lsh.h"
#include "longseq/recompute.h"
#include "longseq/registry.h"

namespace longseq {

torch::Tensor lsh_buckets(const torch::Tensor& q, int64_t n_buckets, int64_t rounds, at::Generator gen) {
  torch::NoGradGuard ng;
  auto rot = at::normal(0.0, 1.0, {q.size(1), rounds, q.size(3), n_buckets / 2}, gen).to(q.device(), q.scalar_type());
  // argmax([p; -p]) without the concatenation: p's argmax when max p >= -min p (the first index wins ties, as in
  // the concatenation), else nb/2 + p's argmin; over row chunks, so [B, H, R, T, nb/2] is never whole (with the
  // paper's nb = 2T/m it grows as T^2).
  constexpr int64_t kRows = 2048;
  std::vector<torch::Tensor> parts;
  for (int64_t t0 = 0; t0 < q.size(2); t0 += kRows) {
    auto proj = torch::einsum("bhtd,hrdn->bhrtn", {q.detach().narrow(2, t0, std::min(kRows, q.size(2) - t0)), rot});
    auto hi = proj.max(-1), lo = proj.min(-1);
    parts.push_back(torch::where(std::get<0>(hi) >= -std::get<0>(lo), std::get<1>(hi), std::get<1>(lo) + n_buckets / 2));
  }
  return torch::cat(parts, -1);
}

at::Generator lsh_eval_generator(uint64_t layer_seed, int64_t n_buckets) {
  return at::detail::createCPUGenerator(layer_seed * 1000003 + static_cast<uint64_t>(n_buckets));
}

namespace {

struct LshCache : MixerState {
  torch::Tensor q, v;  // [B, H, S, D] projections of the prefix
  torch::Tensor pad;   // [B, S]
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({q}), "lsh");
    q = select_rows(q, i), v = select_rows(v, i), pad = select_rows(pad, i);
  }
};

class LshImpl : public MixerImpl {
 public:
  explicit LshImpl(const MixerArgs& a)
      : heads_(a.n_heads),
        head_dim_(a.d_model / a.n_heads),
        rounds_(a.options["n_hashes"]),
        chunk_(a.options["chunk_length"]),
        buckets_(a.options["n_buckets"]),
        rehash_(a.options["rehash"]),
        kernel_(a.options["kernel"]) {
    const bool bias = a.options["bias"].get<bool>();
    qv_ = register_module("qv", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, 2 * a.d_model).bias(bias)));
    out_ = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(a.d_model, a.d_model).bias(bias)));
    if (buckets_ % 2) throw Error("lsh.n_buckets must be even (h(x) = argmax([xR; -xR])), got " + std::to_string(buckets_));
    seed_ = static_cast<uint64_t>(a.options["seed"].get<int64_t>() + a.layer_index);
    forwards_ = register_buffer("forwards", torch::zeros({}, torch::kLong));
  }

  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx) override {
    TORCH_CHECK(x.dim() == 3, "lsh: x must be [B, T, C], got ", x.sizes());
    const int64_t B = x.size(0), T = x.size(1);
    auto qv = qv_(x).chunk(2, -1);
    auto q = split_heads(qv[0], heads_), v = split_heads(qv[1], heads_);
    auto pad = ctx.padding_mask.defined() ? ctx.padding_mask.to(x.device(), torch::kBool)
                                          : torch::zeros({B, T}, x.options().dtype(torch::kBool));
    if (!ctx.state) return out_(merge_heads(attend(q, v, pad, ctx.causal)));
    // Decoding: the new rows of the whole-sequence computation on the prefix so far. The projections are
    // cached; hashing, sorting and chunked attention run again over the prefix (the chunks of earlier
    // tokens move as the prefix grows, so nothing else can be reused: LSH is not strictly causal).
    auto* cache = dynamic_cast<LshCache*>(ctx.state);
    TORCH_CHECK(cache, "lsh: the state passed was not made by this mixer");
    TORCH_CHECK(ctx.causal, "lsh: streaming needs causal mode");
    if (cache->q.defined()) {
      q = torch::cat({cache->q, q}, 2), v = torch::cat({cache->v, v}, 2), pad = torch::cat({cache->pad, pad}, 1);
    }
    cache->q = q.detach(), cache->v = v.detach(), cache->pad = pad;
    return out_(merge_heads(attend(q, v, pad, true).narrow(2, q.size(2) - T, T)));
  }

  std::unique_ptr<MixerState> initial_state(int64_t) const override { return std::make_unique<LshCache>(); }

 private:
  // q, v: [B, H, T, D]; pad: [B, T] bool -> [B, H, T, D]
  torch::Tensor attend(torch::Tensor q, torch::Tensor v, torch::Tensor pad, bool causal) {
    const int64_t B = q.size(0), T = q.size(2), D = head_dim_;
    if (T == 0) return torch::zeros_like(v);  // no rows: no chunks of m = min(chunk, T) = 0 to cut
    const int64_t m = std::min(chunk_, T), Tp = (T + m - 1) / m * m, R = rounds_, Nr = Tp / m;
    auto lopts = q.options().dtype(torch::kLong);
    if (Tp > T) {
      auto z = torch::zeros({B, heads_, Tp - T, D}, q.options());
      q = torch::cat({q, z}, 2), v = torch::cat({v, z}, 2);
      pad = torch::cat({pad, torch::ones({B, Tp - T}, pad.options())}, 1);
    }
    auto k = q / q.norm(2, -1, true).clamp_min(1e-6);  // shared QK: unit keys (sec. 2)
    // A row's bucket count and last chunk follow its real length, not the batch's: padding sorts after the real
    // tokens of each round, so a sequence is hashed and chunked as it is alone, whatever padding its batch carries.
    auto real = (~pad).sum(1);                                              // [B]
    auto row_chunks = (real + m - 1).div(m, "floor").clamp_min(1);         // chunks of a round holding real tokens
    auto row_nb = buckets_ > 0 ? torch::full({B}, buckets_, lopts)
                               : (2 * (real + chunk_ - 1).div(chunk_, "floor")).clamp(2, 8192);  // 2T/m (sec. 2)
    const int64_t nb = row_nb.max().item<int64_t>();
    // Rotations fresh at each training forward when rehashing; otherwise a fixed function of (seed + layer, nb),
    // so evaluation and tests see the same hashes every call. Padding goes to an extra bucket nb.
    at::Generator gen = lsh_eval_generator(seed_, nb);
    if (is_training() && rehash_) {  // draw n of (seed + layer); a recomputation replays its forward's n
      auto n = replay_or_record(this, "draw", [&] { return forwards_.add_(1).clone(); });
      gen = at::detail::createCPUGenerator(draw_seed(seed_, static_cast<uint64_t>(n.item<int64_t>())));
    }
    const bool fixed = !(is_training() && rehash_);
    torch::Tensor buckets;  // [B, H, R, Tp]
    auto counts = std::get<0>(at::_unique(row_nb)).cpu();
    if (counts.numel() == 1) {
      buckets = lsh_buckets(q, nb, R, gen);
    } else {  // rows of each bucket count hashed with their own rotations, in increasing count
      buckets = torch::empty({B, heads_, R, Tp}, lopts);
      for (int64_t i = 0; i < counts.numel(); ++i) {
        const int64_t n = counts[i].item<int64_t>();
        auto rows = (row_nb == n).nonzero().squeeze(1);
        buckets.index_copy_(0, rows, lsh_buckets(q.index_select(0, rows), n, R, fixed ? lsh_eval_generator(seed_, n) : gen));
      }
    }
    buckets = buckets.masked_fill(pad.view({B, 1, 1, Tp}), nb);
    // Sort key (round, bucket, position); ties cannot happen.
    auto pos = torch::arange(Tp, lopts).view({1, 1, 1, Tp});
    auto round_off = torch::arange(R, lopts).view({1, 1, R, 1}) * (nb + 1);
    auto key = ((round_off + buckets) * Tp + pos).view({B, heads_, R * Tp});
    auto order = std::get<1>(key.sort(-1));              // sorted item -> (round * Tp + position)
    // Then by position within each chunk: a chunk's members, and so every output, stay the same, and the causal
    // mask becomes a staircase in each key block, which the fused kernel cuts per pass of query rows.
    order = std::get<0>(order.view({B, heads_, R * Tp / m, m}).sort(-1)).view({B, heads_, R * Tp});
    auto spos = order.remainder(Tp);                     // [B, H, R*Tp] original positions in sorted order
    const int64_t N = R * Tp / m;
    // Each chunk also sees the previous one; a round's first chunk sees the previous round's last chunk holding
    // real tokens (circularly, as the official code does).
    auto c = torch::arange(N, lopts).view({1, N});
    auto wrap = (c.div(Nr, "floor") + R - 1).remainder(R) * Nr + row_chunks.view({B, 1}) - 1;
    auto prev = torch::where(c.remainder(Nr) == 0, wrap, (c - 1).expand({B, N}));  // [B, N]
    // o: [B, H, R*Tp, D] and lse: [B, H, R*Tp], both in (round, position) order.
    torch::Tensor o, lse_r;
    if (use_fused(q, prev, m)) {
      std::tie(o, lse_r) = fused_rounds(q, k, v, order, spos, prev, pad, causal, m);
    } else {  // sorted order, then unsorted
      torch::Tensor o_sorted, lse_sorted;
      std::tie(o_sorted, lse_sorted) = gathered_rounds(q, k, v, spos, prev, pad, causal, m);
      auto inv = torch::empty_like(order).scatter_(2, order, torch::arange(R * Tp, lopts).view({1, 1, -1}).expand_as(order));
      o = o_sorted.gather(2, inv.unsqueeze(-1).expand({B, heads_, R * Tp, D}));
      lse_r = lse_sorted.gather(2, inv);
    }
    // Combine rounds: o = sum_r softmax_r(lse_r) o_r (eq. 14).
    auto lse = lse_r.view({B, heads_, R, Tp}).transpose(2, 3);
    auto w = masked_softmax(lse.masked_fill(torch::isinf(lse), 0), torch::isfinite(lse)).transpose(2, 3);  // over R
    return (o.view({B, heads_, R, Tp, D}) * w.unsqueeze(-1)).sum(2).narrow(2, 0, T);
  }

  bool use_fused(const torch::Tensor& q, const torch::Tensor& prev, int64_t m) const {
    if (kernel_ == "reference") return false;
    BlockSparseLayout probe{m, m, {}, {}};
    auto why = block_sparse_attention_unsupported_reasons(q, q, q, probe, {});
    if (!prev.device().is_cpu()) why.push_back("the chunk table is not on the CPU");
    if (kernel_ == "fused" && !why.empty())
      throw Error("lsh: kernel \"fused\" cannot take this input: " + join(why, "; "));
    return why.empty();
  }

  // The kernel over the sorted items, read in place through the sort: chunk c (block of m rows) sees key blocks
  // {prev[b, c], c}; keys are the unit keys, masks by original position (padding: -1), the self penalty 1e5 inside
  // the softmax; outputs written straight to (round, position) order. q, k, v: [B, H, Tp, D]; order, spos
  // [B, H, R*Tp]; prev [B, N]; pad [B, Tp] -> (o [B, H, R*Tp, D], lse [B, H, R*Tp])
  std::pair<torch::Tensor, torch::Tensor> fused_rounds(const torch::Tensor& q, const torch::Tensor& k,
                                                       const torch::Tensor& v, const torch::Tensor& order,
                                                       const torch::Tensor& spos, const torch::Tensor& prev,
                                                       const torch::Tensor& pad, bool causal, int64_t m) const {
    const int64_t B = q.size(0), RT = spos.size(2), N = prev.size(1);
    auto kpos = torch::where(pad.unsqueeze(1).expand({B, heads_, pad.size(1)}).gather(2, spos),
                             torch::full_like(spos, -1), spos);
    auto own = torch::arange(N, prev.options()).view({1, N}).expand({B, N});
    BlockSparseLayout layout{m, m, (torch::arange(N + 1, prev.options()) * 2).view({1, 1, N + 1}).expand({B, 1, N + 1}).contiguous(),
                             torch::stack({prev, own}, -1).view({B, 1, 2 * N})};
    auto r = block_sparse_attention(q, k, v, BlockSparseRows{spos, spos, order, RT}, layout,
                                    BlockSparseMask{causal, spos, kpos, kSelfPenalty}, 1.0, "fused");
    return {r.out, r.lse};
  }

  // The gathered reference: the sorted items of each chunk over 2m key slots (the previous chunk's and their own).
  // Arguments and results as fused_rounds.
  std::pair<torch::Tensor, torch::Tensor> gathered_rounds(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& v, const torch::Tensor& spos,
                                                          const torch::Tensor& prev, const torch::Tensor& pad,
                                                          bool causal, int64_t m) const {
    const int64_t B = q.size(0), D = q.size(3), N = prev.size(1), Tp = pad.size(1);
    auto qs = (q * std::sqrt(static_cast<double>(D)))  // undo the primitive's 1/sqrt(D)
                  .gather(2, spos.unsqueeze(-1).expand({B, heads_, N * m, D}))
                  .view({B, heads_, N, m, D});
    auto cpos = spos.view({B, heads_, N, m});
    auto kpos = torch::cat({cpos.gather(2, prev.view({B, 1, N, 1}).expand({B, heads_, N, m})), cpos}, -1);  // [B, H, N, 2m]
    auto qp = cpos.unsqueeze(-1), kp = kpos.unsqueeze(-2);  // [B, H, N, m, 1], [B, H, N, 1, 2m]
    auto ok = causal ? (kp <= qp) : torch::ones_like(kp, torch::kBool).expand({B, heads_, N, m, 2 * m});
    ok = ok & ~pad.view({B, 1, 1, 1, Tp}).expand({B, heads_, N, m, Tp}).gather(4, kp.expand({B, heads_, N, m, 2 * m}));
    auto self = (kp == qp) & ok;
    auto others = ok & ~self;
    auto sees_others = others.any(-1, true);
    auto allowed = others | (self & ~sees_others);
    auto r = gathered_attention(qs, k, v, KeySlots{kpos, allowed}, {}, nullptr, /*want_lse=*/true);
    // The self logit carries the penalty 1e5 (App. A): beside other keys its weight exp(-1e5) is 0; alone it gives
    // v_i, and the round's log-sum-exp drops by 1e5, so that round gets no weight in eq. 14 when another sees more.
    auto lse_r = r.lse - kSelfPenalty * (self.any(-1) & ~sees_others.squeeze(-1)).to(r.lse.scalar_type());
    return {r.out.view({B, heads_, N * m, D}), lse_r.view({B, heads_, N * m})};
  }

  static constexpr double kSelfPenalty = 1e5;  // App. A: finite, below the causal mask
  int64_t heads_, head_dim_, rounds_, chunk_, buckets_;
  bool rehash_;
  std::string kernel_;
  uint64_t seed_;
  torch::Tensor forwards_;  // training forwards that drew rotations (a buffer: a resumed run continues them)
  torch::nn::Linear qv_{nullptr}, out_{nullptr};
};

}  // namespace

MixerInfo lsh_mixer_info() {
  MixerInfo info;
  info.name = "lsh";
  info.summary = "Reformer LSH attention: shared QK, angular hashing, sorted chunks, rounds combined by log-sum-exp; "
                 "decoding over cached projections";
  info.citation = "Kitaev, Kaiser, Levskaya 2020, Reformer: The Efficient Transformer, sec. 2 and App. A";
  info.schema = {
      {"n_hashes", OptionType::Int, 2, "hash rounds R (the paper's enwik8 runs: 2; 8 is close to full attention)", 1,
       64},
      {"chunk_length", OptionType::Int, 128, "items per chunk m after sorting; each chunk also sees the previous one "
                                             "(the paper: 128-256); m >= T is full shared-QK attention", 1, 1e9},
      {"n_buckets", OptionType::Int, 0, "hash buckets, even; 0 = 2T/m (sec. 2: m = 2T/n_buckets), at most 8192", 0,
       8192},
      {"rehash", OptionType::Bool, true, "draw new rotations at every training forward (the official code); eval keeps "
                                         "rotations fixed by seed and bucket count"},
      {"seed", OptionType::Int, 0, "seed of the rotations; layer l uses seed + l", 0, 1e15},
      {"bias", OptionType::Bool, true, "bias terms in the projections"},
      {"kernel", OptionType::String, "auto",
       "attention core: auto (the fused block-sparse CPU kernel when it supports the input, else the gathered "
       "reference), reference, or fused (error when unsupported); LONGSEQ_ATTENTION=reference forces reference",
       -1e300, 1e300, {"auto", "reference", "fused"}},
  };
  info.make = [](const MixerArgs& a) -> Mixer { return std::make_shared<LshImpl>(a); };
  info.sparse_options = {{"chunk_length", 4}, {"n_hashes", 2}};  // several chunks and 2T/4 buckets
  info.strictly_causal = false;
  info.strictly_causal_options = {{"chunk_length", 1000000000}};
  info.streams = true;  // exactly the whole-sequence rows under the strict options; per step O(R T m D)
  info.core_kernels = {"fused", "reference"};
  info.core = [](const CoreQuery& c) {  // R rounds of sorted chunks on drawn rows: each round a shuffle of the
    const int64_t m = std::min<int64_t>(c.options["chunk_length"].get<int64_t>(), c.T);  // positions (hashing apart)
    const int64_t R = c.options["n_hashes"].get<int64_t>(), Tp = (c.T + m - 1) / m * m, Nr = Tp / m, N = R * Nr;
    std::vector<torch::Tensor> rounds;
    for (int64_t r = 0; r < R; ++r)  // in position order within chunks, as the mixer sorts them
      rounds.push_back(std::get<0>(torch::randperm(Tp, torch::kLong).view({Nr, m}).sort(-1)).view({Tp}));
    auto spos = torch::cat(rounds).view({1, 1, R * Tp});
    auto kpos = torch::where(spos < c.T, spos, torch::full_like(spos, -1));
    std::vector<std::vector<int64_t>> rows(N);
    for (int64_t j = 0; j < N; ++j) rows[j] = {j % Nr == 0 ? (j / Nr + R - 1) % R * Nr + Nr - 1 : j - 1, j};
    auto layout = block_sparse_layout(m, m, {{rows}});
    const BlockSparseMask mask{c.causal, spos, kpos, 1e5};
    CoreRun run;  // q, v per position; the sorted rows are read from them (a position's copies agree)
    run.inputs = {torch::randn({c.B, c.H, Tp, c.D}), torch::randn({c.B, c.H, Tp, c.D})};
    const auto in = run.inputs;
    // Rows read through the sort and outputs written in (round, position) order, as the mixer does.
    auto map = spos.expand({c.B, c.H, R * Tp}).contiguous();
    auto out = (torch::arange(R, torch::kLong).view({1, 1, R, 1}) * Tp + spos.view({1, 1, R, Tp}))
                   .expand({c.B, c.H, R, Tp}).reshape({c.B, c.H, R * Tp});
    const BlockSparseRows rows_map{map, map, out, R * Tp};
    run.run = [in, layout, mask, rows_map, kernel = c.kernel] {
      auto k = in[0] / in[0].norm(2, -1, true).clamp_min(1e-6);
      return block_sparse_attention(in[0], k, in[1], rows_map, layout, mask, 1.0, kernel).out;
    };
    run.flops = (c.causal ? 0.5 : 1.0) * block_sparse_flops(layout, c.B, c.H, R * Tp, R * Tp, c.D, false);
    return run;
  };
  info.flops = [](const FlopQuery& f) {  // projections (qk, v, out) + per round: 2m keys per query, hashing
    const double m = std::min<double>(f.options["chunk_length"].get<double>(), f.T), R = f.options["n_hashes"];
    const double nb = f.options["n_buckets"].get<double>() > 0 ? f.options["n_buckets"].get<double>() : 2 * f.T / m;
    return 6.0 * f.B * f.T * f.C * f.C + R * (4.0 * f.B * f.T * 2 * m * f.C + f.B * f.T * f.C * nb);
  };
  return info;
}

}  // namespace longseq
