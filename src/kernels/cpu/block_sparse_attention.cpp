// Block-sparse attention on the CPU: FlashAttention-2 (Dao 2023, Algorithm 1
// forward, Algorithm 2 backward) restricted to the key blocks a CSR layout
// lists per query block. Per (batch, head, query block) the listed key blocks
// are packed into tiles of up to kTileK rows (a copy of O(keys * D), 1/(2 b)
// of the tile's product) so that each tile is one SGEMM, and the tiles stream
// through an online softmax. Masks come from the rows' original positions
// (causal, padding = -1, Reformer's self rule). The backward recomputes
// P = exp(S - lse) tile by tile; it runs per (batch, head), whose dq, dk, dv
// rows are its own, so no two threads write the same row.
// A band mask (|q_pos - k_pos| bounds) makes it Longformer's window (kernels/banded_attention.h).
// With AVX2 and D a multiple of 16, tiles whose segments start on 16-row boundaries skip the packing: the keys
// (forward) and values (backward) are laid out once per head as transposed panels (panel_gemm.h), and every
// other product reads its rows in place.
// Causal problems run in passes of 32 query rows; each pass's key tiles are cut, run by run (a run: keys in
// position order), past its last visible key, so sorted clusters and chunks compute little more than their triangle.
// Row maps (BlockSparseRows) read q, k, v rows and write outputs through index maps: a caller's sort is read in
// place (LSH), and the gradients of repeated rows accumulate (one thread per head).
// Memory: O(Nq + Nk) * D per head plus per-thread tiles; no [slots x keys] tensor.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>

#include "longseq/common.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/kernels/flash_attention.h"
#include "panel_gemm.h"
#include "softmax_blocks.h"

namespace longseq {

namespace {

constexpr int64_t kTileQ = 128, kTileK = 512;
// Causal passes of 32 query rows: a sorted cluster's or chunk's triangle is then computed to 56% of its square
// (36 of 64 blocks of 32 x 32 in a 256-row cluster) instead of 75% with passes of 128.
constexpr int64_t kCausalRows = 32;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

using cpu_softmax::gemm;
using cpu_softmax::exp_shifted;
using cpu_softmax::online_softmax_step;

// Row positions of one (b, h): explicit, or identity when `pos` is null.
struct Positions {
  const int64_t* pos = nullptr;
  int64_t at(int64_t i) const { return pos ? pos[i] : i; }
};

struct Problem {
  int64_t B, H, Nq, Nk, D, bq, bk, NQ;
  int64_t gb, gh, nnz;            // layout groups and entries per group
  const int64_t *offsets, *blocks;
  const int64_t *q_pos, *k_pos;   // null = identity
  int64_t qp_b, qp_h, kp_b, kp_h;  // strides of the position tensors (0 where broadcast)
  bool causal;
  float scale, penalty;
  bool self_rule;  // penalty != 0: a row's own key only when nothing else is allowed
  int64_t wl, wr;  // band: q - k <= wl, k - q <= wr (-1 = unbounded)
  bool panels;     // the panel products may run (AVX2, D a multiple of 16)
  int64_t row_step;  // query rows per pass: fewer when causal, so that each pass's key tiles end at its last query

  int64_t group(int64_t b, int64_t h) const { return (gb == 1 ? 0 : b) * gh + (gh == 1 ? 0 : h); }
  const int64_t* row_offsets(int64_t b, int64_t h) const { return offsets + group(b, h) * (NQ + 1); }
  const int64_t* row_blocks(int64_t b, int64_t h) const { return blocks + group(b, h) * nnz; }
  Positions qpos(int64_t b, int64_t h) const { return {q_pos ? q_pos + b * qp_b + h * qp_h : nullptr}; }
  Positions kpos(int64_t b, int64_t h) const { return {k_pos ? k_pos + b * kp_b + h * kp_h : nullptr}; }
};

// A run of consecutive key rows [start, start + count).
struct Segment {
  int64_t start, count;
};

// The key rows query block j sees, cut into tiles of at most kTileK rows.
// Consecutive listed blocks (BigBird's window, Longformer's band, LSH's previous and own chunk) merge into one
// segment; visible_tile splits it again where its positions descend.
std::vector<std::vector<Segment>> key_tiles(const Problem& p, const int64_t* offs, const int64_t* blks, int64_t j) {
  std::vector<Segment> segs;
  for (int64_t e = offs[j]; e < offs[j + 1]; ++e) {
    const int64_t s0 = blks[e] * p.bk, n = std::min(p.bk, p.Nk - s0);
    if (n <= 0) continue;
    if (!segs.empty() && segs.back().start + segs.back().count == s0) segs.back().count += n;
    else segs.push_back({s0, n});
  }
  std::vector<std::vector<Segment>> tiles;
  int64_t used = kTileK;
  for (auto s : segs)
    while (s.count > 0) {
      if (used == kTileK) tiles.emplace_back(), used = 0;
      const int64_t take = std::min(s.count, kTileK - used);
      tiles.back().push_back({s.start, take});
      used += take, s.start += take, s.count -= take;
    }
  return tiles;
}

int64_t tile_cols(const std::vector<Segment>& tile) {
  int64_t n = 0;
  for (const auto& s : tile) n += s.count;
  return n;
}

// The last key position any of the query rows may see (causal and right band bounds; max when unbounded,
// lowest when every row is padding).
int64_t rows_limit(const int64_t* qp, int64_t rows, const Problem& p) {
  if (!p.causal && p.wr < 0) return std::numeric_limits<int64_t>::max();
  int64_t limit = std::numeric_limits<int64_t>::lowest();
  for (int64_t r = 0; r < rows; ++r)
    if (qp[r] >= 0) limit = std::max(limit, p.causal ? (p.wr >= 0 ? std::min(qp[r], qp[r] + p.wr) : qp[r]) : qp[r] + p.wr);
  return limit;
}

// The tile without the keys no row may see at the end of each run (past the limit, or padding), their positions
// written to kp: a causal run in position order (a sorted cluster or chunk) is cut at the rows' last query. A
// segment is cut into runs where its positions descend (padding counting as last), when every descent falls on a
// panel boundary (LSH's chunks of sorted rows); else it is one run, cut at its end only. Empty runs are dropped.
std::vector<Segment> visible_tile(const std::vector<Segment>& tile, Positions kpos, int64_t limit, int64_t* kp) {
  std::vector<Segment> out;
  std::vector<int64_t> cuts;
  auto key = [](int64_t pos) { return pos < 0 ? std::numeric_limits<int64_t>::max() : pos; };
  for (const auto& s : tile) {
    cuts.clear();
    bool aligned = true;
    for (int64_t i = 1; i < s.count && aligned; ++i)
      if (key(kpos.at(s.start + i)) < key(kpos.at(s.start + i - 1))) {
        aligned = i % cpu_gemm::kPanel == 0;
        cuts.push_back(i);
      }
    if (!aligned) cuts.clear();
    cuts.push_back(s.count);
    int64_t from = 0;
    for (const int64_t to : cuts) {
      int64_t n = to - from;
      const int64_t start = s.start + from;
      from = to;
      while (n > 0 && (kpos.at(start + n - 1) < 0 || kpos.at(start + n - 1) > limit)) --n;
      if (n == 0) continue;
      for (int64_t i = 0; i < n; ++i) *kp++ = kpos.at(start + i);
      out.push_back({start, n});
    }
  }
  return out;
}

// Whether a tile can take the panel products: every segment starts on a panel boundary.
bool on_panels(const std::vector<Segment>& tile) {
  for (const auto& s : tile)
    if (s.start % cpu_gemm::kPanel != 0) return false;
  return true;
}

// The row of `base` ([rows, D]) that column c of the tile holds.
const float* tile_row(const float* base, const std::vector<Segment>& tile, int64_t c, int64_t D) {
  for (const auto& s : tile) {
    if (c < s.count) return base + (s.start + c) * D;
    c -= s.count;
  }
  return nullptr;
}

// C[rows, cols] = alpha * A X^T for the tile's rows of X, from X's panels (on_panels(tile)).
void tile_scores(int64_t rows, const std::vector<Segment>& tile, int64_t D, float alpha, const float* a,
                 const float* panels, float* c, int64_t cols) {
  int64_t at = 0;
  for (const auto& s : tile) {
    cpu_gemm::gemm_panels(rows, s.count, D, alpha, a, D, panels + s.start * D, 0.0f, c + at, cols);
    at += s.count;
  }
}

// C[rows, D] += alpha * S X for S [rows, cols] and the tile's rows of X, read in place.
void tile_times_rows(int64_t rows, const std::vector<Segment>& tile, int64_t D, float alpha, const float* s,
                     int64_t cols, const float* x, float* c) {
  int64_t at = 0;
  for (const auto& g : tile) {
    cpu_gemm::gemm_strided(rows, D, g.count, alpha, s + at, cols, 1, x + g.start * D, D, 1.0f, c, D);
    at += g.count;
  }
}

// The tile's rows of C [*, D] += alpha * S^T Y for S [rows, cols] and Y [rows, D], written in place.
void tile_transposed_times(int64_t rows, const std::vector<Segment>& tile, int64_t D, float alpha, const float* s,
                           int64_t cols, const float* y, float* c) {
  int64_t at = 0;
  for (const auto& g : tile) {
    cpu_gemm::gemm_strided(g.count, D, rows, alpha, s + at, 1, cols, y, D, 1.0f, c + g.start * D, D);
    at += g.count;
  }
}

// Per-thread scratch of one tile.
struct Scratch {
  int64_t D;
  std::vector<float> s, dp, k, v, dk, dv, m, l, self_acc, self_s, self_n, q, go, acc;
  std::vector<int64_t> kp;
  std::vector<std::pair<int64_t, int64_t>> self_hits;  // (row, col) of own keys in the current tile
  explicit Scratch(int64_t D)
      : D(D), s(kTileQ * kTileK), dp(kTileQ * kTileK), k(kTileK * D), v(kTileK * D), dk(kTileK * D),
        dv(kTileK * D), m(kTileQ), l(kTileQ), self_acc(kTileQ * D), self_s(kTileQ), self_n(kTileQ), q(kTileQ * D),
        go(kTileQ * D), acc(kTileQ * D), kp(kTileK) {}
};

// The calling thread's scratch for head width D, kept across calls: made afresh per call, its 1.5 MiB (D = 64)
// were faulted in and zeroed every time (memset and page clearing: 5-8% of longformer's forward + backward).
Scratch& thread_scratch(int64_t D) {
  thread_local std::unique_ptr<Scratch> w;
  if (!w || w->D != D) w = std::make_unique<Scratch>(D);
  return *w;
}

// One head's row maps (null = identity): logical query row i reads q row q[i] and writes o row o[i]; logical key
// row s reads k and v row kv[s]. The callers' sorted orders are read and written in place through them.
struct HeadMaps {
  const int64_t *q = nullptr, *kv = nullptr, *o = nullptr;
};

// Rows of `src` ([rows, D] contiguous) listed by the tile (through `map`), packed into `dst`; returns
// src itself when the tile is one segment read without a map (no copy).
const float* pack(const float* src, const std::vector<Segment>& tile, int64_t D, float* dst,
                  const int64_t* map = nullptr) {
  if (tile.size() == 1 && !map) return src + tile[0].start * D;
  float* at = dst;
  for (const auto& s : tile)
    for (int64_t i = s.start; i < s.start + s.count; ++i) {
      const float* row = src + (map ? map[i] : i) * D;
      at = std::copy(row, row + D, at);
    }
  return dst;
}

// dst rows listed by the tile (through `map`) += packed rows (the inverse of pack).
void unpack_add(const float* packed, const std::vector<Segment>& tile, int64_t D, float* dst,
                const int64_t* map = nullptr) {
  for (const auto& s : tile)
    for (int64_t i = s.start; i < s.start + s.count; ++i, packed += D) {
      float* row = dst + (map ? map[i] : i) * D;
      for (int64_t d = 0; d < D; ++d) row[d] += packed[d];
    }
}

// Whether each segment's keys are in position order (padding at a segment's end was cut by visible_tile).
bool segments_sorted(const int64_t* kp, const std::vector<Segment>& tile) {
  for (const auto& g : tile) {
    for (int64_t c = 1; c < g.count; ++c)
      if (kp[c] < kp[c - 1]) return false;
    kp += g.count;
  }
  return true;
}

// Masks a (rows x cols) score tile: -inf where not allowed. Under the self rule a row's own key is
// recorded in `hits` by the forward (alone = null; its raw score stays in s for the caller to take),
// and the backward keeps it alone in the rows that saw only themselves (alone[r] != 0), else -inf.
void mask_tile(float* s, int64_t rows, int64_t cols, const std::vector<Segment>& tile, const int64_t* qp,
               const int64_t* kp, const Problem& p, const uint8_t* alone,
               std::vector<std::pair<int64_t, int64_t>>* hits) {
  int64_t kmin = kp[0], kmax = kp[0], qmin = qp[0], qmax = qp[0];
  for (int64_t c = 1; c < cols; ++c) kmin = std::min(kmin, kp[c]), kmax = std::max(kmax, kp[c]);
  for (int64_t r = 1; r < rows; ++r) qmin = std::min(qmin, qp[r]), qmax = std::max(qmax, qp[r]);
  const bool overlap = kmin <= qmax && qmin <= kmax;
  const bool band = (p.wl >= 0 && qmax - kmin > p.wl) || (p.wr >= 0 && kmax - qmin > p.wr);
  const bool needed = kmin < 0 || qmin < 0 || (p.causal && kmax > qmin) || (p.self_rule && overlap) || band;
  if (!needed) return;
  if (kmin >= 0 && segments_sorted(kp, tile)) {  // keys in position order per segment (a band, a diagonal, sorted
    const bool capped = p.causal || p.wr >= 0;   // clusters or chunks): each row keeps one column range per
    for (int64_t r = 0; r < rows; ++r) {         // segment, found by binary search, and the rest is filled around it
      float* row = s + r * cols;
      const int64_t q = qp[r];
      if (q < 0) {
        std::fill(row, row + cols, kNegInf);
        continue;
      }
      const bool only_self = alone && alone[r];  // a row that saw only itself keeps its own key
      const int64_t last = p.causal ? (p.wr >= 0 ? std::min(q, q + p.wr) : q) : q + p.wr;
      int64_t at = 0;
      for (const auto& g : tile) {
        const int64_t* kc = kp + at;
        float* sr = row + at;
        const int64_t n = g.count;
        at += n;
        const int64_t lo = p.wl >= 0 ? std::lower_bound(kc, kc + n, q - p.wl) - kc : 0;
        const int64_t hi = std::max(lo, capped ? std::upper_bound(kc, kc + n, last) - kc : n);  // allowed: [lo, hi)
        std::fill(sr, sr + lo, kNegInf);
        std::fill(sr + hi, sr + n, kNegInf);
        if (!p.self_rule || only_self) continue;  // alone: its own keys are all the forward found allowed
        int64_t x0 = std::lower_bound(kc + lo, kc + hi, q) - kc, x1 = x0;  // own keys (Reformer's rule): [x0, x1)
        while (x1 < hi && kc[x1] == q) ++x1;
        for (int64_t c = x0; c < x1; ++c) {
          if (hits) hits->push_back({r, at - n + c});
          else sr[c] = kNegInf;
        }
      }
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * cols;
    const int64_t q = qp[r];
    if (q < 0) {
      std::fill(row, row + cols, kNegInf);
      continue;
    }
    if (alone && alone[r]) {  // a row that saw only itself: its own key alone
      for (int64_t c = 0; c < cols; ++c)
        if (kp[c] != q) row[c] = kNegInf;
      continue;
    }
    // Allowed keys lie in [lo, hi] (padding = -1 falls below): one select per column, no branch.
    int64_t lo = 0, hi = std::numeric_limits<int64_t>::max();
    if (p.causal) hi = q;
    if (p.wr >= 0) hi = std::min(hi, q + p.wr);
    if (p.wl >= 0) lo = std::max<int64_t>(0, q - p.wl);
    for (int64_t c = 0; c < cols; ++c) row[c] = kp[c] < lo || kp[c] > hi ? kNegInf : row[c];
    if (p.self_rule)  // own keys: the forward records them (the caller takes the raw score), the backward drops them
      for (int64_t c = 0; c < cols; ++c)
        if (kp[c] == q) {
          if (hits) hits->push_back({r, c});
          else row[c] = kNegInf;
        }
  }
}

// Query rows [t0, t0 + rows) of one (b, h), all in query block j: o rows, lse and (self rule) alone.
// kpan: the head's key panels (null = pack every tile for the BLAS). With maps, the rows are read and the outputs
// written through them; lse and alone stay in the logical order.
void forward_rows(const float* q, const float* k, const float* v, const float* kpan, float* o, float* lse,
                  uint8_t* alone, int64_t t0, int64_t rows,
                  const std::vector<std::vector<Segment>>& tiles, Positions qpos, Positions kpos, const Problem& p,
                  const HeadMaps& maps, Scratch& w) {
  const int64_t D = p.D;
  const float* qr = pack(q, {{t0, rows}}, D, w.q.data(), maps.q);
  float* acc = maps.o ? w.acc.data() : o + t0 * D;
  std::fill(acc, acc + rows * D, 0.0f);
  std::fill(w.m.begin(), w.m.begin() + rows, kNegInf);
  std::fill(w.l.begin(), w.l.begin() + rows, 0.0f);
  std::fill(w.self_n.begin(), w.self_n.begin() + rows, 0.0f);
  std::fill(w.self_acc.begin(), w.self_acc.begin() + rows * D, 0.0f);
  std::vector<int64_t> qp(rows);
  for (int64_t r = 0; r < rows; ++r) qp[r] = qpos.at(t0 + r);
  const int64_t limit = rows_limit(qp.data(), rows, p);
  for (const auto& whole : tiles) {
    const auto tile = visible_tile(whole, kpos, limit, w.kp.data());
    const int64_t cols = tile_cols(tile);
    if (cols == 0) continue;
    const bool fast = kpan && on_panels(tile);
    const bool in_place = fast && !maps.kv;  // the values' rows read where they are
    const float* vt = in_place ? nullptr : pack(v, tile, D, w.v.data(), maps.kv);
    float* s = w.s.data();
    if (fast) tile_scores(rows, tile, D, p.scale, qr, kpan, s, cols);
    else gemm(false, true, rows, cols, D, p.scale, qr, D, pack(k, tile, D, w.k.data(), maps.kv), D, 0.0f, s, cols);
    w.self_hits.clear();
    mask_tile(s, rows, cols, tile, qp.data(), w.kp.data(), p, nullptr, &w.self_hits);
    for (const auto& hit : w.self_hits) {  // own keys: kept aside, used only if the row sees nothing else
      const int64_t r = hit.first, c = hit.second;
      w.self_s[r] = s[r * cols + c];
      w.self_n[r] += 1.0f;
      const float* vrow = in_place ? tile_row(v, tile, c, D) : vt + c * D;
      for (int64_t d = 0; d < D; ++d) w.self_acc[r * D + d] += vrow[d];
      s[r * cols + c] = kNegInf;
    }
    online_softmax_step(s, rows, cols, w.m.data(), w.l.data(), acc, D);
    if (in_place) tile_times_rows(rows, tile, D, 1.0f, s, cols, v, acc);
    else if (fast) cpu_gemm::gemm_strided(rows, D, cols, 1.0f, s, cols, 1, vt, D, 1.0f, acc, D);
    else gemm(false, false, rows, D, cols, 1.0f, s, cols, vt, D, 1.0f, acc, D);
  }
  for (int64_t r = 0; r < rows; ++r) {
    alone[t0 + r] = 0;
    if (w.l[r] == 0.0f && w.self_n[r] > 0) {  // only its own key: its value, lse over the copies of it
      alone[t0 + r] = 1;
      for (int64_t d = 0; d < D; ++d) acc[r * D + d] = w.self_acc[r * D + d] / w.self_n[r];
      lse[t0 + r] = w.self_s[r] + std::log(w.self_n[r]);
    } else if (w.l[r] == 0.0f) {  // nothing allowed: zeros, and lse = +inf so the backward sees P = 0
      std::fill(acc + r * D, acc + (r + 1) * D, 0.0f);
      lse[t0 + r] = kPosInf;
    } else {
      const float inv = 1.0f / w.l[r];
      for (int64_t d = 0; d < D; ++d) acc[r * D + d] *= inv;
      lse[t0 + r] = w.m[r] + std::log(w.l[r]);
    }
    if (maps.o) std::copy(acc + r * D, acc + (r + 1) * D, o + maps.o[t0 + r] * D);
  }
}

// dS = P (dP - delta) in place of dP (FA2 Algorithm 2, line 14).
void scores_gradient(const float* pm, float* ds, int64_t rows, int64_t cols, const float* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    float* dsr = ds + r * cols;
    const float* pr = pm + r * cols;
    const float dl = delta[r];
    for (int64_t c = 0; c < cols; ++c) dsr[c] = pr[c] * (dsr[c] - dl);
  }
}

// Gradients of one (b, h). o, dout and dlse (the lse output's gradient, null = none) are in the output order, lse
// and alone in the logical order; q, dout, dq and k, v, dk, dv are read and written through the maps (sq, sk: their
// rows). Under a key map each tile's keys and values are packed through it and their
// gradients added back through it; one thread owns a head, so repeated rows accumulate safely.
void backward_head(const float* q, const float* k, const float* v, const float* o, const float* dout,
                   const float* dlse, const float* lse, const uint8_t* alone, float* dq, float* dk, float* dv,
                   int64_t b, int64_t h, int64_t sq, int64_t sk, const Problem& p, const HeadMaps& maps, Scratch& w) {
  const int64_t D = p.D;
  std::fill(dq, dq + sq * D, 0.0f);
  std::fill(dk, dk + sk * D, 0.0f);
  std::fill(dv, dv + sk * D, 0.0f);
  const int64_t *offs = p.row_offsets(b, h), *blks = p.row_blocks(b, h);
  const Positions qpos = p.qpos(b, h), kpos = p.kpos(b, h);
  std::vector<int64_t> qp(kTileQ);
  float delta[kTileQ];
  const bool panels = p.panels;
  const int64_t pan_floats = panels ? cpu_gemm::panel_floats(p.Nk, D) : 0;
  const cpu_softmax::ScratchLease kpan(cpu_softmax::ScratchLease::kKeyPanels, pan_floats),
      vpan(cpu_softmax::ScratchLease::kValuePanels, pan_floats);
  if (panels) {  // this head's keys and values as panels, for S = Q K^T and dP = dO V^T
    cpu_gemm::pack_panels(k, p.Nk, D, D, kpan.get(), maps.kv);
    cpu_gemm::pack_panels(v, p.Nk, D, D, vpan.get(), maps.kv);
  }
  for (int64_t j = 0; j < p.NQ; ++j) {
    const auto tiles = key_tiles(p, offs, blks, j);
    const int64_t j1 = std::min(p.Nq, (j + 1) * p.bq);
    for (int64_t t0 = j * p.bq; t0 < j1; t0 += p.row_step) {
      const int64_t rows = std::min(p.row_step, j1 - t0);
      for (int64_t r = 0; r < rows; ++r) qp[r] = qpos.at(t0 + r);
      const int64_t limit = rows_limit(qp.data(), rows, p);
      const float* qr = pack(q, {{t0, rows}}, D, w.q.data(), maps.q);
      const float* go = pack(dout, {{t0, rows}}, D, w.go.data(), maps.o);
      float* dqr = maps.q ? w.acc.data() : dq + t0 * D;
      if (maps.q) std::fill(dqr, dqr + rows * D, 0.0f);
      for (int64_t r = 0; r < rows; ++r) {  // rowsum(dO * O) - dlse (FA2 Algorithm 2, line 4); 0 where nothing is seen
        const int64_t at = maps.o ? maps.o[t0 + r] : t0 + r;
        const float* orow = o + at * D;
        float sum = 0;
        for (int64_t d = 0; d < D; ++d) sum += go[r * D + d] * orow[d];
        delta[r] = lse[t0 + r] == kPosInf ? 0.0f : sum - (dlse ? dlse[at] : 0.0f);
      }
      for (const auto& whole : tiles) {  // the forward's tiles, cut alike
        const auto tile = visible_tile(whole, kpos, limit, w.kp.data());
        const int64_t cols = tile_cols(tile);
        if (cols == 0) continue;
        float *s = w.s.data(), *ds = w.dp.data();
        if (panels && on_panels(tile)) {  // the same products on the panels; rows in place or, with a map, packed
          tile_scores(rows, tile, D, p.scale, qr, kpan.get(), s, cols);
          mask_tile(s, rows, cols, tile, qp.data(), w.kp.data(), p, alone + t0, nullptr);
          for (int64_t r = 0; r < rows; ++r) exp_shifted(s + r * cols, cols, lse[t0 + r]);
          const std::vector<Segment> at_front{{0, cols}};
          const auto& gtile = maps.kv ? at_front : tile;  // where the tile's gradient rows go
          float* dvt = maps.kv ? w.dv.data() : dv;
          float* dkt = maps.kv ? w.dk.data() : dk;
          if (maps.kv) std::fill(dvt, dvt + cols * D, 0.0f), std::fill(dkt, dkt + cols * D, 0.0f);
          tile_transposed_times(rows, gtile, D, 1.0f, s, cols, go, dvt);
          tile_scores(rows, tile, D, 1.0f, go, vpan.get(), ds, cols);
          scores_gradient(s, ds, rows, cols, delta);
          tile_transposed_times(rows, gtile, D, p.scale, ds, cols, qr, dkt);
          tile_times_rows(rows, gtile, D, p.scale, ds, cols, maps.kv ? pack(k, tile, D, w.k.data(), maps.kv) : k, dqr);
          if (maps.kv) unpack_add(dvt, tile, D, dv, maps.kv), unpack_add(dkt, tile, D, dk, maps.kv);
          continue;
        }
        const bool packed = tile.size() > 1 || maps.kv;
        const float* kt = pack(k, tile, D, w.k.data(), maps.kv);
        const float* vt = pack(v, tile, D, w.v.data(), maps.kv);
        gemm(false, true, rows, cols, D, p.scale, qr, D, kt, D, 0.0f, s, cols);
        mask_tile(s, rows, cols, tile, qp.data(), w.kp.data(), p, alone + t0, nullptr);
        for (int64_t r = 0; r < rows; ++r) exp_shifted(s + r * cols, cols, lse[t0 + r]);  // P = exp(S - lse)
        float* dvt = packed ? w.dv.data() : dv + tile[0].start * D;
        float* dkt = packed ? w.dk.data() : dk + tile[0].start * D;
        const float beta = packed ? 0.0f : 1.0f;
        gemm(true, false, cols, D, rows, 1.0f, s, cols, go, D, beta, dvt, D);  // dV += P^T dO
        gemm(false, true, rows, cols, D, 1.0f, go, D, vt, D, 0.0f, ds, cols);  // dP = dO V^T
        scores_gradient(s, ds, rows, cols, delta);
        gemm(true, false, cols, D, rows, p.scale, ds, cols, qr, D, beta, dkt, D);  // dK += s dS^T Q
        gemm(false, false, rows, D, cols, p.scale, ds, cols, kt, D, 1.0f, dqr, D);  // dQ += s dS K
        if (packed) {
          unpack_add(w.dv.data(), tile, D, dv, maps.kv);
          unpack_add(w.dk.data(), tile, D, dk, maps.kv);
        }
      }
      if (maps.q) unpack_add(dqr, {{t0, rows}}, D, dq, maps.q);
    }
  }
}

// LONGSEQ_PANELS=0 keeps every tile on the BLAS path (to compare the two in one build).
bool panels_disabled() {
  static const bool off = [] {
    const char* e = std::getenv("LONGSEQ_PANELS");
    return e && std::string(e) == "0";
  }();
  return off;
}

// An empty tensor stands for "identity positions": autograd functions take no undefined tensors.
const int64_t* positions_ptr(const torch::Tensor& pos) { return pos.numel() > 0 ? pos.data_ptr<int64_t>() : nullptr; }

// Nq, Nk: the logical rows (the maps' lengths when given, else q's and k's).
Problem make_problem(const torch::Tensor& q, int64_t Nq, int64_t Nk, int64_t bq, int64_t bk,
                     const torch::Tensor& offsets, const torch::Tensor& blocks, const torch::Tensor& q_pos,
                     const torch::Tensor& k_pos, bool causal, double scale, double penalty, int64_t wl, int64_t wr) {
  Problem p{};
  p.B = q.size(0), p.H = q.size(1), p.Nq = Nq, p.Nk = Nk, p.D = q.size(3);
  p.bq = bq, p.bk = bk, p.NQ = offsets.size(2) - 1;
  p.gb = offsets.size(0), p.gh = offsets.size(1), p.nnz = blocks.size(2);
  p.offsets = offsets.data_ptr<int64_t>(), p.blocks = blocks.data_ptr<int64_t>();
  p.q_pos = positions_ptr(q_pos), p.k_pos = positions_ptr(k_pos);
  if (p.q_pos) p.qp_b = q_pos.size(0) == 1 ? 0 : q_pos.stride(0), p.qp_h = q_pos.size(1) == 1 ? 0 : q_pos.stride(1);
  if (p.k_pos) p.kp_b = k_pos.size(0) == 1 ? 0 : k_pos.stride(0), p.kp_h = k_pos.size(1) == 1 ? 0 : k_pos.stride(1);
  p.causal = causal, p.scale = static_cast<float>(scale), p.penalty = static_cast<float>(penalty);
  p.self_rule = penalty != 0.0;
  p.wl = wl, p.wr = wr;
  p.panels = cpu_gemm::available() && p.D % cpu_gemm::kPanel == 0 && !panels_disabled();
  p.row_step = causal ? kCausalRows : kTileQ;
  return p;
}

// The maps of head bh (empty tensors: none).
HeadMaps head_maps(const torch::Tensor& q_map, const torch::Tensor& kv_map, const torch::Tensor& o_map, int64_t bh,
                   int64_t Nq, int64_t Nk) {
  HeadMaps m;
  if (q_map.numel()) m.q = q_map.data_ptr<int64_t>() + bh * Nq;
  if (kv_map.numel()) m.kv = kv_map.data_ptr<int64_t>() + bh * Nk;
  if (o_map.numel()) m.o = o_map.data_ptr<int64_t>() + bh * Nq;
  return m;
}

class BlockSparseFunction : public torch::autograd::Function<BlockSparseFunction> {
 public:
  // q [B, H, Sq, D], k, v [B, H, Sk, D] float32 with contiguous rows; maps [B, H, Nq] (q, o) and [B, H, Nk] (kv)
  // contiguous int64, or empty for identity (then Nq = Sq, Nk = Sk) -> (out [B, H, So, D], lse [B, H, So]) with
  // So = out_rows under an output map (rows no query writes: 0 and -inf), else Nq.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                                                const torch::Tensor& k, const torch::Tensor& v,
                                                const torch::Tensor& offsets, const torch::Tensor& blocks,
                                                const torch::Tensor& q_pos, const torch::Tensor& k_pos,
                                                const torch::Tensor& q_map, const torch::Tensor& kv_map,
                                                const torch::Tensor& o_map, int64_t out_rows, int64_t bq,
                                                int64_t bk, bool causal, double scale, double penalty,
                                                int64_t wl, int64_t wr) {
    const int64_t Nq = q_map.numel() ? q_map.size(2) : q.size(2), Nk = kv_map.numel() ? kv_map.size(2) : k.size(2);
    const Problem p = make_problem(q, Nq, Nk, bq, bk, offsets, blocks, q_pos, k_pos, causal, scale, penalty, wl, wr);
    const int64_t Sq = q.size(2), So = o_map.numel() ? out_rows : Nq;
    // Every output row is written unless an output map leaves some out (it is one-to-one: checked by the caller).
    auto o = So > Nq ? torch::zeros({p.B, p.H, So, p.D}, q.options()) : torch::empty({p.B, p.H, So, p.D}, q.options());
    auto lse = torch::empty({p.B, p.H, p.Nq}, q.options());
    auto alone = torch::empty({p.B, p.H, p.Nq}, q.options().dtype(torch::kByte));
    uint8_t* ap = alone.data_ptr<uint8_t>();
    const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
    float *op = o.data_ptr<float>(), *lp = lse.data_ptr<float>();
    const int64_t per_head = cpu_gemm::panel_floats(p.Nk, p.D);
    // Every head's keys as panels, read by all tasks (written whole by pack_panels: no zeroing first).
    const cpu_softmax::ScratchLease kpan(cpu_softmax::ScratchLease::kAllKeyPanels, p.panels ? p.B * p.H * per_head : 0);
    if (p.panels)
      at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bh = begin; bh < end; ++bh)
          cpu_gemm::pack_panels(kp + (bh / p.H) * k.stride(0) + (bh % p.H) * k.stride(1), p.Nk, p.D, p.D,
                                kpan.get() + bh * per_head, head_maps(q_map, kv_map, o_map, bh, Nq, Nk).kv);
      });
    at::parallel_for(0, p.B * p.H * p.NQ, 1, [&](int64_t begin, int64_t end) {
      Scratch& w = thread_scratch(p.D);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / p.NQ, j = task % p.NQ, b = bh / p.H, h = bh % p.H;
        const auto tiles = key_tiles(p, p.row_offsets(b, h), p.row_blocks(b, h), j);
        const HeadMaps maps = head_maps(q_map, kv_map, o_map, bh, Nq, Nk);
        const int64_t j1 = std::min(p.Nq, (j + 1) * p.bq);
        for (int64_t t0 = j * p.bq; t0 < j1; t0 += p.row_step)
          forward_rows(qp + bh * Sq * p.D, kp + b * k.stride(0) + h * k.stride(1),
                       vp + b * v.stride(0) + h * v.stride(1), p.panels ? kpan.get() + bh * per_head : nullptr,
                       op + bh * So * p.D, lp + bh * p.Nq, ap + bh * p.Nq, t0, std::min(p.row_step, j1 - t0), tiles,
                       p.qpos(b, h), p.kpos(b, h), p, maps, w);
      }
    });
    ctx->save_for_backward({q, k, v, o, lse, offsets, blocks, q_pos, k_pos, alone, q_map, kv_map, o_map});
    ctx->saved_data["bq"] = bq, ctx->saved_data["bk"] = bk, ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale, ctx->saved_data["penalty"] = penalty;
    ctx->saved_data["wl"] = wl, ctx->saved_data["wr"] = wr;
    // The caller's convention: -inf = nothing allowed; a row alone with itself carries the penalty (App. A).
    auto lse_out = lse.masked_fill(lse == kPosInf, kNegInf) - alone.to(lse.dtype()) * static_cast<float>(penalty);
    if (o_map.numel()) lse_out = torch::full({p.B, p.H, So}, kNegInf, lse.options()).scatter_(2, o_map, lse_out);
    return {o, lse_out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &q = s[0], &o = s[3], &lse = s[4], &q_map = s[10], &kv_map = s[11], &o_map = s[12];
    const auto k = s[1].contiguous(), v = s[2].contiguous();  // the forward may have read a cache's strided heads
    const int64_t Nq = lse.size(2), Nk = kv_map.numel() ? kv_map.size(2) : k.size(2);
    const Problem p = make_problem(q, Nq, Nk, ctx->saved_data["bq"].toInt(), ctx->saved_data["bk"].toInt(), s[5],
                                   s[6], s[7], s[8], ctx->saved_data["causal"].toBool(),
                                   ctx->saved_data["scale"].toDouble(), ctx->saved_data["penalty"].toDouble(),
                                   ctx->saved_data["wl"].toInt(), ctx->saved_data["wr"].toInt());
    auto dout = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(o);
    const auto dlse = grads[1].defined() ? grads[1].contiguous() : torch::Tensor();  // [B, H, So]
    auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    const int64_t Sq = q.size(2), Sk = k.size(2), So = o.size(2);
    at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
      Scratch& w = thread_scratch(p.D);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t tq = bh * Sq * p.D, tk = bh * Sk * p.D;
        backward_head(q.data_ptr<float>() + tq, k.data_ptr<float>() + tk, v.data_ptr<float>() + tk,
                      o.data_ptr<float>() + bh * So * p.D, dout.data_ptr<float>() + bh * So * p.D,
                      dlse.defined() ? dlse.data_ptr<float>() + bh * So : nullptr, lse.data_ptr<float>() + bh * p.Nq,
                      s[9].data_ptr<uint8_t>() + bh * p.Nq, dq.data_ptr<float>() + tq, dk.data_ptr<float>() + tk, dv.data_ptr<float>() + tk, bh / p.H,
                      bh % p.H, Sq, Sk, p, head_maps(q_map, kv_map, o_map, bh, Nq, Nk), w);
      }
    });
    torch::Tensor none;
    return {dq, dk, dv, none, none, none, none, none, none, none, none, none, none, none, none, none, none, none};
  }
};

// Nq, Nk: the logical rows the layout and masks index (-1: q's and k's own).
void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const BlockSparseLayout& layout, const BlockSparseMask& mask, int64_t Nq = -1, int64_t Nk = -1) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
                  q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "block_sparse_attention: q must be [B, H, Nq, D] and k, v [B, H, Nk, D] alike; got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  TORCH_CHECK(layout.block_q > 0 && layout.block_k > 0, "block_sparse_attention: block sizes must be positive, got ",
              layout.block_q, " and ", layout.block_k);
  if (Nq < 0) Nq = q.size(2);
  if (Nk < 0) Nk = k.size(2);
  const int64_t B = q.size(0), H = q.size(1), NQ = (Nq + layout.block_q - 1) / layout.block_q;
  TORCH_CHECK(layout.offsets.defined() && layout.offsets.dim() == 3 && layout.offsets.size(2) == NQ + 1 &&
                  (layout.offsets.size(0) == 1 || layout.offsets.size(0) == B) &&
                  (layout.offsets.size(1) == 1 || layout.offsets.size(1) == H),
              "block_sparse_attention: layout.offsets must be [1|B, 1|H, NQ + 1] with B = ", B, ", H = ", H,
              ", NQ = ", NQ, "; got ", layout.offsets.defined() ? layout.offsets.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(layout.blocks.defined() && layout.blocks.dim() == 3 &&
                  layout.blocks.size(0) == layout.offsets.size(0) && layout.blocks.size(1) == layout.offsets.size(1),
              "block_sparse_attention: layout.blocks must be [G_B, G_H, nnz] like offsets");
  auto check_pos = [&](const torch::Tensor& pos, int64_t n, const char* what) {
    if (!pos.defined()) return;
    TORCH_CHECK(pos.dim() == 3 && (pos.size(0) == 1 || pos.size(0) == B) && (pos.size(1) == 1 || pos.size(1) == H) &&
                    pos.size(2) == n && pos.scalar_type() == torch::kLong,
                "block_sparse_attention: ", what, " must be int64 [1|B, 1|H, ", n, "], got ", pos.sizes(), " ",
                pos.scalar_type());
  };
  check_pos(mask.q_pos, Nq, "mask.q_pos");
  check_pos(mask.k_pos, Nk, "mask.k_pos");
  auto offs = layout.offsets.to(torch::kLong);
  auto blks = layout.blocks.to(torch::kLong);
  const int64_t NK = (Nk + layout.block_k - 1) / layout.block_k;
  TORCH_CHECK(offs.select(2, 0).eq(0).all().item<bool>() && (offs.diff(1, 2) >= 0).all().item<bool>() &&
                  (offs.select(2, NQ) <= blks.size(2)).all().item<bool>(),
              "block_sparse_attention: layout.offsets must start at 0, not decrease, and end within blocks");
  TORCH_CHECK(blks.numel() == 0 || (blks.min().item<int64_t>() >= 0 && blks.max().item<int64_t>() < NK),
              "block_sparse_attention: layout.blocks must lie in [0, ", NK, ") (key blocks of ", layout.block_k,
              " rows over Nk = ", Nk, ")");
}

}  // namespace

BlockSparseLayout block_sparse_layout(int64_t block_q, int64_t block_k,
                                      const std::vector<std::vector<std::vector<std::vector<int64_t>>>>& rows) {
  TORCH_CHECK(!rows.empty() && !rows[0].empty(), "block_sparse_layout: rows must be [G_B][G_H][NQ][...]");
  const int64_t gb = static_cast<int64_t>(rows.size()), gh = static_cast<int64_t>(rows[0].size());
  const int64_t NQ = static_cast<int64_t>(rows[0][0].size());
  int64_t nnz = 0;
  for (const auto& bb : rows) {
    TORCH_CHECK(static_cast<int64_t>(bb.size()) == gh, "block_sparse_layout: ragged head groups");
    for (const auto& hh : bb) {
      TORCH_CHECK(static_cast<int64_t>(hh.size()) == NQ, "block_sparse_layout: ragged query blocks");
      int64_t n = 0;
      for (const auto& r : hh) n += static_cast<int64_t>(r.size());
      nnz = std::max(nnz, n);
    }
  }
  BlockSparseLayout out{block_q, block_k, torch::zeros({gb, gh, NQ + 1}, torch::kLong),
                        torch::zeros({gb, gh, nnz}, torch::kLong)};
  auto o = out.offsets.accessor<int64_t, 3>();
  auto bl = out.blocks.accessor<int64_t, 3>();
  for (int64_t g = 0; g < gb; ++g)
    for (int64_t h = 0; h < gh; ++h) {
      int64_t at = 0;
      for (int64_t j = 0; j < NQ; ++j) {
        for (int64_t c : rows[g][h][j]) bl[g][h][at++] = c;
        o[g][h][j + 1] = at;
      }
    }
  return out;
}

double block_sparse_flops(const BlockSparseLayout& layout, int64_t B, int64_t H, int64_t Nq, int64_t Nk, int64_t D,
                          bool causal_diagonal_half) {
  auto offs = layout.offsets.contiguous();
  auto blks = layout.blocks.contiguous();
  const int64_t gb = offs.size(0), gh = offs.size(1), NQ = offs.size(2) - 1, nnz = blks.size(2);
  const int64_t* o = offs.data_ptr<int64_t>();
  const int64_t* bl = blks.data_ptr<int64_t>();
  double pairs = 0;
  for (int64_t g = 0; g < gb * gh; ++g)
    for (int64_t j = 0; j < NQ; ++j) {
      const double rows = static_cast<double>(std::min(layout.block_q, Nq - j * layout.block_q));
      for (int64_t e = o[g * (NQ + 1) + j]; e < o[g * (NQ + 1) + j + 1]; ++e) {
        const int64_t c = bl[g * nnz + e];
        const double cols = static_cast<double>(std::max<int64_t>(0, std::min(layout.block_k, Nk - c * layout.block_k)));
        pairs += causal_diagonal_half && c * layout.block_k == j * layout.block_q ? rows * (cols + 1) / 2 : rows * cols;
      }
    }
  return 4.0 * static_cast<double>(D) * pairs * static_cast<double>(B / gb) * static_cast<double>(H / gh);
}

std::vector<std::string> block_sparse_attention_unsupported_reasons(const torch::Tensor& q, const torch::Tensor& k,
                                                                    const torch::Tensor& v,
                                                                    const BlockSparseLayout& layout,
                                                                    const BlockSparseMask& mask) {
  std::vector<std::string> why;
  if (attention_reference_forced()) why.push_back("LONGSEQ_ATTENTION=reference forces the reference path");
  for (const auto* t : {&q, &k, &v})
    if (!t->device().is_cpu()) {
      why.push_back("inputs are not on the CPU");
      break;
    }
  for (const auto* t : {&q, &k, &v})
    if (t->scalar_type() != torch::kFloat) {
      why.push_back("dtype is not float32");
      break;
    }
  for (const auto* t : {&mask.q_pos, &mask.k_pos})
    if (t->defined() && !t->device().is_cpu()) {
      why.push_back("positions are not on the CPU");
      break;
    }
  if (std::max(layout.block_k, kTileK) * (q.dim() == 4 ? q.size(3) : 0) > std::numeric_limits<int>::max() / 4)
    why.push_back("rows too wide for the BLAS's 32-bit sizes");
  return why;
}

BlockSparseResult block_sparse_attention_reference(const torch::Tensor& q, const torch::Tensor& k,
                                                   const torch::Tensor& v, const BlockSparseLayout& layout,
                                                   const BlockSparseMask& mask, double scale) {
  check_inputs(q, k, v, layout, mask);
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2), D = q.size(3);
  const int64_t bq = layout.block_q, bk = layout.block_k, NQ = (Nq + bq - 1) / bq;
  auto offs = layout.offsets.to(torch::kCPU, torch::kLong).contiguous();
  auto blks = layout.blocks.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t gb = offs.size(0), gh = offs.size(1);
  // Key rows of each query block's slots: [G_B, G_H, NQ, m], -1 = empty.
  int64_t most = 1;
  auto oa = offs.accessor<int64_t, 3>();
  for (int64_t g = 0; g < gb; ++g)
    for (int64_t h = 0; h < gh; ++h)
      for (int64_t j = 0; j < NQ; ++j) most = std::max(most, oa[g][h][j + 1] - oa[g][h][j]);
  const int64_t m = most * bk;
  auto slots = torch::full({gb, gh, NQ, m}, -1, torch::kLong);
  auto sa = slots.accessor<int64_t, 4>();
  auto ba = blks.accessor<int64_t, 3>();
  for (int64_t g = 0; g < gb; ++g)
    for (int64_t h = 0; h < gh; ++h)
      for (int64_t j = 0; j < NQ; ++j)
        for (int64_t e = oa[g][h][j]; e < oa[g][h][j + 1]; ++e)
          for (int64_t i = 0; i < bk; ++i) {
            const int64_t row = ba[g][h][e] * bk + i;
            if (row < Nk) sa[g][h][j][(e - oa[g][h][j]) * bk + i] = row;
          }
  auto lopts = q.options().dtype(torch::kLong);
  slots = slots.to(q.device()).expand({B, H, NQ, m});
  auto idx = slots.clamp_min(0).reshape({B, H, NQ * m, 1});
  auto kg = k.gather(2, idx.expand({B, H, NQ * m, D})).view({B, H, NQ, m, D});
  auto vg = v.gather(2, idx.expand({B, H, NQ * m, D})).view({B, H, NQ, m, D});
  auto qb = NQ * bq > Nq ? torch::cat({q, torch::zeros({B, H, NQ * bq - Nq, D}, q.options())}, 2) : q;
  auto scores = torch::matmul(qb.view({B, H, NQ, bq, D}), kg.transpose(-1, -2)) * scale;  // [B, H, NQ, bq, m]
  auto kpos = mask.k_pos.defined() ? mask.k_pos.to(q.device()).expand({B, H, Nk}) : torch::arange(Nk, lopts).expand({B, H, Nk});
  auto ks = kpos.gather(2, idx.view({B, H, NQ * m})).view({B, H, NQ, 1, m});
  ks = torch::where(slots.unsqueeze(-2) >= 0, ks, torch::full_like(ks, -1));
  auto qpos = mask.q_pos.defined() ? mask.q_pos.to(q.device()).expand({B, H, Nq}) : torch::arange(Nq, lopts).expand({B, H, Nq});
  if (NQ * bq > Nq) qpos = torch::cat({qpos, torch::full({B, H, NQ * bq - Nq}, -1, lopts)}, 2);
  auto qs = qpos.reshape({B, H, NQ, bq, 1});
  auto allowed = (ks >= 0) & (qs >= 0);
  if (mask.causal) allowed = allowed & (ks <= qs);
  if (mask.window_left >= 0) allowed = allowed & (qs - ks <= mask.window_left);
  if (mask.window_right >= 0) allowed = allowed & (ks - qs <= mask.window_right);
  torch::Tensor alone;  // [B, H, NQ, bq, 1]: rows whose only allowed key is their own (self rule)
  if (mask.self_penalty != 0.0) {
    auto self = (ks == qs) & allowed;
    auto others = allowed & ~self;
    alone = self.any(-1, true) & ~others.any(-1, true);
    allowed = others | (self & alone);
  }
  const double lowest = std::numeric_limits<double>::lowest();
  auto sm = scores.masked_fill(~allowed, std::max(lowest, static_cast<double>(std::numeric_limits<float>::lowest())));
  auto mx = std::get<0>(sm.detach().max(-1, true));
  auto e = torch::exp(sm - mx) * allowed.to(scores.dtype());
  auto l = e.sum(-1, true);
  const double tiny = std::numeric_limits<float>::min();
  auto probs = e / l.clamp_min(tiny);
  auto lse = torch::where(l > 0, mx + torch::log(l.clamp_min(tiny)),
                          torch::full_like(l, -std::numeric_limits<double>::infinity()));
  if (alone.defined()) lse = lse - mask.self_penalty * alone.to(lse.dtype());
  auto out = torch::matmul(probs, vg).reshape({B, H, NQ * bq, D}).narrow(2, 0, Nq);
  return {out, lse.reshape({B, H, NQ * bq}).narrow(2, 0, Nq)};
}

namespace {

void check_block_sparse_kernel_name(const std::string& kernel) {
  if (kernel != "auto" && kernel != "fused" && kernel != "reference")
    throw Error("block_sparse_attention: kernel must be auto, fused or reference, got \"" + kernel + "\"");
}

// The fused kernel on checked inputs, through the maps when given (null: rows as they are).
BlockSparseResult run_block_sparse_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const BlockSparseLayout& layout, const BlockSparseMask& mask, double scale,
                                         const BlockSparseRows* rows) {
  const auto none = torch::zeros({0}, torch::kLong).view({0, 0, 0});  // autograd functions take no undefined tensors
  auto pos = [&](const torch::Tensor& p) { return p.defined() ? p.to(torch::kLong).contiguous() : none; };
  // Keys and values need contiguous rows only (a decoding cache's view is read in place).
  auto r = BlockSparseFunction::apply(
      q.contiguous(), cpu_softmax::contiguous_rows(k), cpu_softmax::contiguous_rows(v),
      layout.offsets.to(torch::kLong).contiguous(), layout.blocks.to(torch::kLong).contiguous(), pos(mask.q_pos),
      pos(mask.k_pos), rows ? rows->q.contiguous() : none, rows ? rows->kv.contiguous() : none,
      rows ? rows->out.contiguous() : none, rows ? rows->out_rows : 0, layout.block_q, layout.block_k, mask.causal, scale, mask.self_penalty,
      mask.window_left, mask.window_right);
  return {r[0], r[1]};
}

}  // namespace

BlockSparseResult block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const BlockSparseLayout& layout, const BlockSparseMask& mask, double scale,
                                         const std::string& kernel) {
  check_block_sparse_kernel_name(kernel);
  if (kernel == "reference") return block_sparse_attention_reference(q, k, v, layout, mask, scale);
  auto why = block_sparse_attention_unsupported_reasons(q, k, v, layout, mask);
  if (!why.empty()) {
    if (kernel == "fused") throw Error("block-sparse kernel \"fused\" cannot take this input: " + join(why, "; "));
    return block_sparse_attention_reference(q, k, v, layout, mask, scale);
  }
  check_inputs(q, k, v, layout, mask);
  return run_block_sparse_fused(q, k, v, layout, mask, scale, nullptr);
}

BlockSparseResult block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const BlockSparseRows& rows, const BlockSparseLayout& layout,
                                         const BlockSparseMask& mask, double scale, const std::string& kernel) {
  check_block_sparse_kernel_name(kernel);
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "block_sparse_attention: q, k, v must be [B, H, rows, D]; got ",
              q.sizes(), ", ", k.sizes());
  const int64_t B = q.size(0), H = q.size(1);
  auto check_map = [&](const torch::Tensor& m, int64_t within, const char* what) {
    TORCH_CHECK(m.defined() && m.dim() == 3 && m.size(0) == B && m.size(1) == H && m.scalar_type() == torch::kLong &&
                    m.device().is_cpu(),
                "block_sparse_attention: rows.", what, " must be int64 CPU [B = ", B, ", H = ", H, ", n]; got ",
                m.defined() ? m.sizes() : torch::IntArrayRef{});
    TORCH_CHECK(m.numel() == 0 || (m.min().item<int64_t>() >= 0 && m.max().item<int64_t>() < within),
                "block_sparse_attention: rows.", what, " must lie in [0, ", within, ")");
  };
  check_map(rows.q, q.size(2), "q");
  check_map(rows.kv, k.size(2), "kv");
  check_map(rows.out, rows.out_rows, "out");
  TORCH_CHECK(rows.out.sizes() == rows.q.sizes(), "block_sparse_attention: rows.out must be shaped as rows.q, got ",
              rows.out.sizes(), " and ", rows.q.sizes());
  const int64_t Nq = rows.q.size(2), Nk = rows.kv.size(2);
  auto hits = torch::zeros({B, H, rows.out_rows}, torch::kLong).scatter_add_(2, rows.out, torch::ones_like(rows.out));
  TORCH_CHECK(hits.numel() == 0 || hits.max().item<int64_t>() <= 1,
              "block_sparse_attention: rows.out must send each query row to an output row of its own");
  check_inputs(q, k, v, layout, mask, Nq, Nk);
  if (Nq == 0 || Nk == 0 || B * H == 0)  // nothing attends (the kernel would read maps of no rows as none)
    return {torch::zeros({B, H, rows.out_rows, q.size(3)}, q.options()),
            torch::full({B, H, rows.out_rows}, -std::numeric_limits<double>::infinity(), q.options())};
  auto why = block_sparse_attention_unsupported_reasons(q, k, v, layout, mask);
  if (kernel == "fused" && !why.empty())
    throw Error("block-sparse kernel \"fused\" cannot take this input: " + join(why, "; "));
  if (kernel == "reference" || !why.empty()) {  // the oracle on gathered rows, scattered back
    const int64_t D = q.size(3);
    auto dev = q.device();
    auto qi = rows.q.to(dev), ki = rows.kv.to(dev), oi = rows.out.to(dev);
    auto ref = block_sparse_attention_reference(q.gather(2, qi.unsqueeze(-1).expand({B, H, Nq, D})),
                                                k.gather(2, ki.unsqueeze(-1).expand({B, H, Nk, D})),
                                                v.gather(2, ki.unsqueeze(-1).expand({B, H, Nk, D})), layout, mask, scale);
    auto out = torch::zeros({B, H, rows.out_rows, D}, ref.out.options())
                   .scatter(2, oi.unsqueeze(-1).expand({B, H, Nq, D}), ref.out);
    auto lse = torch::full({B, H, rows.out_rows}, -std::numeric_limits<double>::infinity(), ref.lse.options())
                   .scatter(2, oi, ref.lse);
    return {out, lse};
  }
  return run_block_sparse_fused(q, k, v, layout, mask, scale, &rows);
}

}  // namespace longseq
