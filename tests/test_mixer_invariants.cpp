// The invariants of DESIGN.md, run over every registered mixer: a mechanism
// is covered the moment it is registered. Each check runs on the mixer's
// defaults and on the small configuration it declares for its sparse or
// approximate regime (MixerInfo::sparse_options, invariant 7), at lengths of
// several blocks, one of them (13, 17) a multiple of no block size. A mixer with a `core` option (sparse_qkv) runs
// them once more with every mixer that has an attention core, both in their sparse regimes.
#include <gtest/gtest.h>

#include <algorithm>

#include "helpers.h"
#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/registry.h"

using namespace longseq;

namespace mixer_invariants_test {

constexpr int64_t kC = 16, kH = 4;

struct Variant {
  std::string mixer;
  bool sparse = false;  // the declared sparse configuration instead of the defaults
  std::string core;     // a host's attention core (its sparse configuration); empty = the host's default
};

void PrintTo(const Variant& v, std::ostream* os) {
  *os << v.mixer << (v.core.empty() ? "" : " with core " + v.core) << (v.sparse ? " (sparse options)" : " (defaults)");
}

bool hosts_cores(const MixerInfo& m) {
  return std::any_of(m.schema.begin(), m.schema.end(), [](const OptionSpec& o) { return o.name == "core"; });
}

std::vector<Variant> variants() {
  std::vector<Variant> out;
  for (const auto& m : mixer_registry()) {
    out.push_back({m.name, false});
    if (!m.sparse_options.is_null()) out.push_back({m.name, true});
    if (hosts_cores(m))
      for (const auto& c : mixer_registry())
        if (c.attends) out.push_back({m.name, true, c.name});
  }
  return out;
}


torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {}) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  return m->forward(x, ctx);
}

// The entries of a [B, T, C] output at the positions where `real` [B, T] is true, flattened.
torch::Tensor real_rows(const torch::Tensor& y, const torch::Tensor& real) {
  return y.masked_select(real.unsqueeze(-1).expand_as(y));
}

bool close(const torch::Tensor& a, const torch::Tensor& b) { return torch::allclose(a, b, 1e-9, 1e-9); }

class MixerInvariants : public ::testing::TestWithParam<Variant> {
 protected:
  const MixerInfo& info() {
    if (GetParam().core.empty()) return find_mixer(GetParam().mixer);
    if (!hosted_) {  // the properties both have (registry.h); strictly causal as the core's sparse options make it
      Json spec = options(false);
      spec["name"] = GetParam().mixer;
      hosted_ = std::make_unique<MixerInfo>(mixer_properties(parse_mixer_spec(spec, "test")));
      hosted_->strictly_causal_options = Json::object();  // options(true) puts the core's into the core's spec
    }
    return *hosted_;
  }
  // The variant's options; `strict` adds the options of the strictly causal limit.
  Json options(bool strict) {
    const auto& own = find_mixer(GetParam().mixer);
    Json spec = GetParam().sparse ? own.sparse_options : Json::object();
    if (strict) spec.update(own.strictly_causal_options);
    if (!GetParam().core.empty()) {
      const auto& core = find_mixer(GetParam().core);
      Json c = core.sparse_options.is_null() ? Json::object() : core.sparse_options;
      if (strict) c.update(core.strictly_causal_options);
      c["name"] = core.name;
      spec["core"] = c;
    }
    return spec;
  }
  Mixer build(bool strict, torch::ScalarType dtype = torch::kDouble) {
    Json spec = options(strict);
    spec["name"] = GetParam().mixer;
    torch::manual_seed(7);
    auto m = make_mixer(parse_mixer_spec(spec, "test"), kC, kH, 0);
    m->to(dtype);
    m->eval();  // dropout off, rotations fixed
    return m;
  }
  std::unique_ptr<MixerInfo> hosted_;
  std::vector<bool> modes() {
    std::vector<bool> out;
    if (info().supports_bidirectional) out.push_back(false);
    if (info().supports_causal) out.push_back(true);
    return out;
  }
};

TEST(MixerRegistry, EveryMixerDeclaresItsSparseRegimeOrWhyItHasNone) {
  for (const auto& m : mixer_registry()) {
    EXPECT_NE(m.sparse_options.is_null(), m.no_sparse_regime.empty())
        << m.name << ": declare sparse_options (the small configuration of its sparse regime) or no_sparse_regime";
    if (!m.sparse_options.is_null()) {
      Json spec = m.sparse_options;
      spec["name"] = m.name;
      EXPECT_NO_THROW(parse_mixer_spec(spec, "sparse_options")) << m.name;
    }
  }
}

TEST_P(MixerInvariants, ShapeDtypeAndFinite) {
  for (bool causal : modes())
    for (auto dtype : {torch::kFloat, torch::kDouble})
      for (int64_t T : {12, 17}) {
        auto m = build(false, dtype);
        auto x = torch::randn({2, T, kC}, torch::TensorOptions().dtype(dtype));
        auto pad = torch::zeros({2, T}, torch::kBool);
        pad[1].narrow(0, 0, 3).fill_(true);
        for (auto p : {torch::Tensor(), pad}) {
          auto y = run(m, x, causal, p);
          EXPECT_EQ(y.sizes(), x.sizes()) << "causal=" << causal;
          EXPECT_EQ(y.scalar_type(), dtype);
          EXPECT_EQ(y.device(), x.device());
          EXPECT_TRUE(torch::isfinite(y).all().item<bool>())
              << "causal=" << causal << " T=" << T << " padded=" << p.defined();
        }
      }
}

// Degenerate input is answered, not crashed on: an empty sequence gives an empty output or an exception (lsh and
// routing died of a division by a chunk or cluster size of 0), and a padding mask of another length is refused
// (bigbird's exact fallback broadcast it).
TEST_P(MixerInvariants, EmptySequenceAndMisshapenPaddingAreAnswered) {
  for (bool causal : modes()) {
    auto m = build(false, torch::kFloat);
    auto x = torch::randn({2, 0, kC});
    try {
      EXPECT_EQ(run(m, x, causal, torch::Tensor()).sizes(), x.sizes()) << "causal=" << causal;
    } catch (const std::exception&) {  // refused: an answer too
    }
    EXPECT_ANY_THROW(run(m, torch::randn({2, 9, kC}), causal, torch::zeros({2, 7}, torch::kBool)))
        << "causal=" << causal << ": a [2, 7] padding mask for T = 9 was taken";
  }
}

TEST_P(MixerInvariants, CausalityFutureTokensDoNotLeak) {
  if (!info().supports_causal) GTEST_SKIP() << "bidirectional only";
  auto m = build(/*strict=*/true);
  for (int64_t T : {12, 17}) {
    auto x = torch::randn({2, T, kC}, torch::kDouble);
    auto y = run(m, x, true);
    for (int64_t t : {int64_t{0}, int64_t{5}, T - 6, T - 2}) {
      auto x2 = x.clone();
      x2.narrow(1, t + 1, T - t - 1).normal_();
      auto y2 = run(m, x2, true);
      EXPECT_TRUE(close(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1)))
          << "T=" << T << ": output at or before " << t << " changed when later tokens changed";
      // Later outputs must move (a mixer may ignore its own token, as LSH attention does when others are visible).
      EXPECT_FALSE(close(y.narrow(1, t + 1, T - t - 1), y2.narrow(1, t + 1, T - t - 1)))
          << "T=" << T << ": positions after " << t << " ignore the changed tokens: the test would not catch a leak";
    }
  }
}

TEST_P(MixerInvariants, PaddedPositionsDoNotChangeOthers) {
  for (bool causal : modes())
    for (int64_t T : {13, 16}) {
      auto m = build(false);
      auto x = torch::randn({2, T, kC}, torch::kDouble);
      auto pad = torch::zeros({2, T}, torch::kBool);
      pad[0].narrow(0, T - 4, 4).fill_(true);  // right padding
      pad[1].narrow(0, 0, 3).fill_(true);      // left padding
      auto y = run(m, x, causal, pad);
      auto x2 = x.clone();
      x2.masked_scatter_(pad.unsqueeze(-1).expand_as(x2), torch::randn({2, T, kC}, torch::kDouble) * 5);
      auto y2 = run(m, x2, causal, pad);
      EXPECT_TRUE(close(real_rows(y, ~pad), real_rows(y2, ~pad))) << "causal=" << causal << " T=" << T;
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
    }
}

// A sequence's real tokens give the same outputs alone and in batches carrying
// more or less padding, on the left or on the right.
TEST_P(MixerInvariants, PaddingAmountDoesNotChangeRealTokens) {
  const std::vector<int64_t> lengths = {13, 9, 11};
  for (bool causal : modes()) {
    auto m = build(false);
    std::vector<torch::Tensor> xs, alone;
    for (int64_t L : lengths) {
      xs.push_back(torch::randn({1, L, kC}, torch::kDouble));
      alone.push_back(run(m, xs.back(), causal));
    }
    enum Side { kRight, kLeft, kMixed };
    for (int64_t T : {13, 16, 23})
      for (Side side : {kRight, kLeft, kMixed}) {
        if (side != kRight && !info().left_padding_changes.empty()) continue;  // declared: right padding only
        const int64_t B = static_cast<int64_t>(lengths.size());
        auto x = torch::randn({B, T, kC}, torch::kDouble) * 5;  // padding: large garbage
        auto pad = torch::ones({B, T}, torch::kBool);
        std::vector<int64_t> first(B);
        for (int64_t b = 0; b < B; ++b) {
          const bool left = side == kLeft || (side == kMixed && b % 2 == 1);
          first[b] = left ? T - lengths[b] : 0;
          x[b].narrow(0, first[b], lengths[b]).copy_(xs[b][0]);
          pad[b].narrow(0, first[b], lengths[b]).fill_(false);
        }
        auto y = run(m, x, causal, pad);
        EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << "causal=" << causal << " T=" << T << " side=" << side;
        for (int64_t b = 0; b < B; ++b)
          EXPECT_TRUE(close(y[b].narrow(0, first[b], lengths[b]), alone[b][0]))
              << "causal=" << causal << ": the sequence of length " << lengths[b] << " in a batch of length " << T
              << " padded on the " << (first[b] > 0 ? "left" : "right") << " differs from the sequence alone by "
              << (y[b].narrow(0, first[b], lengths[b]) - alone[b][0]).abs().max().item<double>();
      }
  }
}

TEST_P(MixerInvariants, GradientsMatchFiniteDifferences) {
  if (!info().exact_gradients) GTEST_SKIP() << "surrogate backward, tested in the mechanism's own tests";
  const int64_t T = GetParam().sparse ? 11 : 6;  // sparse: enough blocks that no fallback to exact attention applies
  for (bool causal : modes()) {
    auto m = build(false);
    auto x = torch::randn({1, T, kC}, torch::kDouble).requires_grad_(true);
    auto w = torch::randn({1, T, kC}, torch::kDouble);
    auto f = [&]() { return (run(m, x, causal) * w).sum(); };
    EXPECT_LT(longseq_test::gradcheck_error(f, x), 1e-6) << "input gradient, causal=" << causal;
    for (auto& p : m->named_parameters()) {
      auto fp = [&]() { return (run(m, x.detach(), causal) * w).sum(); };
      EXPECT_LT(longseq_test::gradcheck_error(fp, p.value()), 1e-6) << p.key() << ", causal=" << causal;
    }
  }
}

// Chunks fed through the state give what the whole computation gives: for a
// strictly causal mixer the rows of the whole sequence; otherwise (LSH) the
// last rows of the whole computation on each prefix, which is what it streams.
TEST_P(MixerInvariants, StreamingInChunksEqualsWhole) {
  if (!info().streams) GTEST_SKIP() << "does not stream";
  auto m = build(false);
  const int64_t T = 13;
  struct Case {
    const char* what;
    std::vector<int64_t> left, right;  // padding per row
  };
  const std::vector<Case> cases = {
      {"no padding", {0, 0}, {0, 0}},
      {"left and right padding, a row's chunks all padding", {0, 5, 0}, {0, 0, 6}},
      {"a first chunk that is padding in every row", {4, 6}, {0, 1}},
  };
  for (const auto& c : cases) {
    const int64_t B = static_cast<int64_t>(c.left.size());
    auto x = torch::randn({B, T, kC}, torch::kDouble);
    auto pad = torch::zeros({B, T}, torch::kBool);
    for (int64_t b = 0; b < B; ++b) {
      pad[b].narrow(0, 0, c.left[b]).fill_(true);
      pad[b].narrow(0, T - c.right[b], c.right[b]).fill_(true);
    }
    const bool padded = pad.any().item<bool>();
    auto p = padded ? pad : torch::Tensor();
    auto whole = run(m, x, true, p);
    auto state = m->initial_state(B);
    ASSERT_TRUE(state) << "declares streams but gives no state";
    int64_t at = 0;
    for (int64_t len : {4, 1, 1, 5, 2}) {
      MixContext ctx;
      ctx.causal = true;
      ctx.offset = at;
      ctx.state = state.get();
      ctx.padding_mask = padded ? pad.narrow(1, at, len) : torch::Tensor();
      auto part = m->forward(x.narrow(1, at, len), ctx);
      EXPECT_TRUE(torch::isfinite(part).all().item<bool>()) << c.what << ": chunk at " << at;
      auto expect = info().strictly_causal
                        ? whole.narrow(1, at, len)
                        : run(m, x.narrow(1, 0, at + len), true, padded ? pad.narrow(1, 0, at + len) : torch::Tensor())
                              .narrow(1, at, len);
      auto real = ~pad.narrow(1, at, len);
      EXPECT_TRUE(close(real_rows(part, real), real_rows(expect, real)))
          << c.what << ": chunk at " << at << " of length " << len << " differs by "
          << (real_rows(part, real) - real_rows(expect, real)).abs().max().item<double>();
      at += len;
    }
    ASSERT_EQ(at, T);
  }
}

// A state reordered to rows `index` (a beam's pruning: more rows than before, one repeated, one dropped) continues
// as the streams of the selected rows' prefixes from scratch do; at prefix 0 the state holds nothing yet.
// `m`: a mixer or a layer (forward(x, ctx) -> [B, T, C], initial_state(B)).
template <typename Module>
void expect_reorder_continues_selected_rows(const Module& m) {
  auto run = [&](const torch::Tensor& x, const torch::Tensor& pad, MixerState* st, int64_t offset) {
    MixContext ctx;
    ctx.causal = true, ctx.padding_mask = pad, ctx.state = st, ctx.offset = offset;
    return m->forward(x, ctx);
  };
  const auto index = torch::tensor({2, 0, 0, 1}, torch::kLong);
  for (int64_t prefix : {0, 8}) {
    auto x = torch::randn({3, prefix, kC}, torch::kDouble);
    auto pad = torch::zeros({3, prefix}, torch::kBool);
    if (prefix > 0) pad[1].narrow(0, 0, 3).fill_(true);  // left padding in a row that is kept
    auto next = torch::randn({4, 5, kC}, torch::kDouble);
    auto next_pad = torch::zeros({4, 5}, torch::kBool);
    next_pad[1][4] = true;  // right padding after the reorder
    auto continue_from = [&](MixerState* st) {
      std::vector<torch::Tensor> parts;
      int64_t at = 0;
      for (int64_t len : {1, 4}) {
        parts.push_back(run(next.narrow(1, at, len), next_pad.narrow(1, at, len), st, prefix + at));
        at += len;
      }
      return torch::cat(parts, 1);
    };
    auto st = m->initial_state(3);
    ASSERT_TRUE(st);
    if (prefix > 0) run(x, pad, st.get(), 0);
    if (prefix > 0) EXPECT_THROW(st->reorder(torch::tensor({0, 3}, torch::kLong)), Error) << "row 3 of 3";
    EXPECT_THROW(st->reorder(torch::tensor({-1}, torch::kLong)), Error);
    EXPECT_THROW(st->reorder(torch::zeros({2, 2}, torch::kLong)), Error);
    st->reorder(index);
    torch::Tensor got = continue_from(st.get());
    auto ref = m->initial_state(4);
    if (prefix > 0) run(x.index_select(0, index), pad.index_select(0, index), ref.get(), 0);
    torch::Tensor want = continue_from(ref.get());
    auto real = ~next_pad;
    EXPECT_TRUE(close(real_rows(got, real), real_rows(want, real)))
        << "prefix " << prefix << ": differs by "
        << (real_rows(got, real) - real_rows(want, real)).abs().max().item<double>();
  }
}

TEST_P(MixerInvariants, ReorderedStateContinuesTheSelectedRows) {
  if (!info().streams) GTEST_SKIP() << "does not stream";
  expect_reorder_continues_selected_rows(build(false));
}

// The same for the block kinds with a state of their own (gss, mega), at their defaults.
TEST(BlockInvariants, ReorderedStateContinuesTheSelectedRows) {
  int tested = 0;
  for (const auto& b : block_registry()) {
    if (!b.streams || b.uses_mixer) continue;
    ++tested;
    SCOPED_TRACE("block " + b.name);
    torch::manual_seed(7);
    BlockArgs a;
    a.d_model = kC, a.n_heads = kH, a.d_ff = 2 * kC;
    auto layer = make_layer(parse_block_spec(Json{{"name", b.name}}, "test"), a);
    layer->to(torch::kDouble);
    layer->eval();
    expect_reorder_continues_selected_rows(layer);
  }
  EXPECT_GE(tested, 2) << "gss and mega stream with states of their own";
}

// A state without reorder refuses with an Error naming it.
TEST(MixerStateReorder, DefaultRefusesNamingTheState) {
  struct OpaqueState : MixerState {};
  OpaqueState st;
  try {
    st.reorder(torch::zeros({1}, torch::kLong));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("OpaqueState"), std::string::npos) << e.what();
  }
}

// The bench times each kernel of a mechanism's core alone: under one seed every kernel must compute
// the same function of the same drawn inputs, forward and gradients, in the sparse regime too.
TEST_P(MixerInvariants, CoreKernelsComputeTheSameFunction) {
  const auto& m = info();
  ASSERT_EQ(m.core_kernels.empty(), !m.core) << m.name << ": core_kernels and core come together";
  if (!m.core) GTEST_SKIP() << m.name << " has no attention core apart from the mixer";
  Json spec = options(false);
  spec["name"] = m.name;
  const Json opts = parse_mixer_spec(spec, "test").options;
  for (bool causal : modes())
    for (int64_t T : {13, 40}) {
      std::vector<torch::Tensor> outs, grads;
      for (const auto& kernel : m.core_kernels) {
        torch::manual_seed(11);
        auto c = m.core(CoreQuery{2, 2, T, 8, causal, opts, kernel});
        ASSERT_FALSE(c.inputs.empty()) << kernel;
        for (auto& x : c.inputs) x.requires_grad_(true);
        auto y = c.run();
        ASSERT_TRUE(torch::isfinite(y).all().item<bool>()) << kernel;
        auto g = torch::autograd::grad({y}, c.inputs, {torch::ones_like(y)}, false, false, true);
        std::vector<torch::Tensor> flat;
        for (auto& t : g) flat.push_back(t.defined() ? t.flatten() : torch::zeros({0}));
        outs.push_back(y.detach());
        grads.push_back(torch::cat(flat));
        EXPECT_GT(c.flops, 0) << kernel << ": state the core's useful FLOPs";
      }
      for (size_t i = 1; i < outs.size(); ++i) {
        const std::string what = m.core_kernels[i] + " vs " + m.core_kernels[0] + (causal ? " causal" : " bidirectional") +
                                 " T=" + std::to_string(T);
        ASSERT_EQ(outs[i].sizes(), outs[0].sizes()) << what;
        const double scale = std::max(1.0, outs[0].abs().max().item<double>());
        EXPECT_LT((outs[i] - outs[0]).abs().max().item<double>(), 1e-4 * scale) << what;
        const double gscale = std::max(1.0, grads[0].abs().max().item<double>());
        EXPECT_LT((grads[i] - grads[0]).abs().max().item<double>(), 1e-4 * gscale) << what << " (gradients)";
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Registry, MixerInvariants, ::testing::ValuesIn(variants()),
                         [](const ::testing::TestParamInfo<Variant>& p) {
                           return p.param.mixer + (p.param.sparse ? "_sparse" : "") +
                                  (p.param.core.empty() ? "" : "_core_" + p.param.core);
                         });

}  // namespace mixer_invariants_test
