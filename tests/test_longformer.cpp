// Longformer against full attention under a mask built here from the
// pattern's definition (Beltagy et al. 2020, sec. 3.1), and its limits.
#include <gtest/gtest.h>

#include "helpers.h"
#include "mixer_helpers.h"
#include "longseq/common.h"
#include "longseq/registry.h"

using namespace longseq;
using longseq_test::input_and_parameters;
using longseq_test::to_heads;
using longseq_test::param;

namespace longformer_test {

constexpr int64_t kC = 16, kH = 4, kD = kC / kH;

Mixer make(Json opts, int64_t layer = 0) {
  opts["name"] = "longformer";
  torch::manual_seed(3);
  auto m = make_mixer(parse_mixer_spec(opts, "test"), kC, kH, layer);
  m->to(torch::kDouble);
  return m;
}

// The definition: row i (not global) sees j not padded with j global, or
// (j - i) % d == 0 and |j - i| <= d w (and j <= i if causal); a global row sees
// every j not padded (j <= i if causal) through the global projections.
torch::Tensor reference(const Mixer& m, const torch::Tensor& x, const torch::Tensor& pad, const torch::Tensor& glob,
                        int64_t w, int64_t d, int64_t dil_heads, bool causal, bool gproj) {
  const int64_t B = x.size(0), T = x.size(1);
  auto qkv = torch::linear(x, param(*m, "qkv.weight"), param(*m, "qkv.bias")).chunk(3, -1);
  auto i = torch::arange(T).view({T, 1}), j = torch::arange(T).view({1, T}), rel = j - i;
  auto keep = (~pad).view({B, 1, 1, T});
  std::vector<torch::Tensor> per_head;
  for (int64_t h = 0; h < kH; ++h) {
    const int64_t dh = h < dil_heads ? d : 1;
    auto win = (rel.remainder(dh) == 0) & (rel.abs() <= dh * w);
    if (causal) win = win & (rel <= 0);
    per_head.push_back(win);
  }
  auto window = torch::stack(per_head).unsqueeze(0);  // [1, H, T, T]
  auto gcol = glob.view({B, 1, 1, T});
  if (causal) gcol = gcol & (rel <= 0).view({1, 1, T, T});
  auto local = longseq_test::dense_masked_attention(to_heads(qkv[0], kH), to_heads(qkv[1], kH), to_heads(qkv[2], kH),
                                                    (window | gcol) & keep);
  auto gq = qkv;
  if (gproj) gq = torch::linear(x, param(*m, "qkv_global.weight"), param(*m, "qkv_global.bias")).chunk(3, -1);
  auto all = keep.expand({B, 1, T, T});
  if (causal) all = all & (rel <= 0).view({1, 1, T, T});
  auto global = longseq_test::dense_masked_attention(to_heads(gq[0], kH), to_heads(gq[1], kH), to_heads(gq[2], kH), all);
  auto o = torch::where(glob.view({B, 1, T, 1}), global, local);
  o = o.transpose(1, 2).reshape({B, T, kC});
  return torch::linear(o, param(*m, "out.weight"), param(*m, "out.bias"));
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {},
                  const torch::Tensor& glob = {}) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  ctx.global_mask = glob;
  return m->forward(x, ctx);
}

TEST(Longformer, EqualsDenseMaskWithDilationGlobalsAndPadding) {
  for (bool causal : {false, true}) {
    for (int64_t T : {13, 23}) {  // not multiples of the window or the dilation
      const int64_t w = 2, d = 3;
      auto m = make({{"window", {w}}, {"dilation", {d}}, {"dilated_heads", 2}, {"global_positions", {4}}});
      auto x = torch::randn({2, T, kC}, torch::kDouble).requires_grad_(true);
      auto pad = torch::zeros({2, T}, torch::kBool);
      pad[1].narrow(0, T - 3, 3).fill_(true);
      auto glob = torch::zeros({2, T}, torch::kBool);
      glob[0][T - 5] = true;  // from the model's mask, besides position 4 from the config
      auto ref_glob = glob.clone();
      ref_glob.select(1, 4).fill_(true);
      auto diff = longseq_test::max_output_and_grad_diff(
          [&] { return run(m, x, causal, pad, glob); },
          [&] { return reference(m, x, pad, ref_glob, w, d, 2, causal, true); }, input_and_parameters(m, x));
      EXPECT_LT(diff, 1e-10) << "causal=" << causal << " T=" << T;
    }
  }
}

TEST(Longformer, PerLayerWindowsAndSharedGlobalProjections) {
  auto opts = Json{{"window", {1, 3, 5}}, {"global_first", true}, {"global_projections", false}};
  auto m = make(opts, /*layer=*/2);  // the third entry: w = 5
  EXPECT_EQ(m->named_parameters().find("qkv_global.weight"), nullptr);
  auto x = torch::randn({2, 19, kC}, torch::kDouble).requires_grad_(true);
  auto pad = torch::zeros({2, 19}, torch::kBool);
  auto glob = torch::zeros({2, 19}, torch::kBool);
  glob.select(1, 0).fill_(true);
  for (bool causal : {false, true}) {
    auto diff = longseq_test::max_output_and_grad_diff([&] { return run(m, x, causal); },
                                                       [&] { return reference(m, x, pad, glob, 5, 1, 0, causal, false); },
                                                       input_and_parameters(m, x));
    EXPECT_LT(diff, 1e-10) << "causal=" << causal;
  }
  EXPECT_THROW(make(opts, 3), Error);  // three entries, layer 3
}

TEST(Longformer, WideWindowIsFullAttention) {
  auto m = make({{"window", {40}}});
  Json full_spec = {{"name", "full"}};
  auto full = make_mixer(parse_mixer_spec(full_spec, "test"), kC, kH, 0);
  full->to(torch::kDouble);
  {
    torch::NoGradGuard ng;
    param(*full, "qkv.weight").copy_(param(*m, "qkv.weight"));
    param(*full, "qkv.bias").copy_(param(*m, "qkv.bias"));
    param(*full, "out.weight").copy_(param(*m, "out.weight"));
    param(*full, "out.bias").copy_(param(*m, "out.bias"));
  }
  auto x = torch::randn({2, 17, kC}, torch::kDouble);
  for (bool causal : {false, true})
    EXPECT_TRUE(torch::allclose(run(m, x, causal), run(full, x, causal), 1e-10, 1e-10)) << "causal=" << causal;
  // Every token global: every row is full attention through the global projections (copies at init).
  auto all = torch::ones({2, 17}, torch::kBool);
  auto narrow = make({{"window", {1}}});
  EXPECT_TRUE(torch::allclose(run(narrow, x, false, {}, all), run(full, x, false), 1e-10, 1e-10));
}

TEST(Longformer, ZeroWindowReturnsOwnValue) {
  auto m = make({{"window", {0}}, {"bias", false}});
  auto x = torch::randn({1, 9, kC}, torch::kDouble);
  auto v = torch::linear(x, param(*m, "qkv.weight")).chunk(3, -1)[2];
  auto expect = torch::linear(v, param(*m, "out.weight"));
  for (bool causal : {false, true}) EXPECT_TRUE(torch::allclose(run(m, x, causal), expect, 1e-10, 1e-10));
}

TEST(Longformer, DilatedAndGlobalStreamingEqualsWholeAndAGlobalMaskIsRefused) {
  auto m = make({{"window", {2}}, {"dilation", {2}}, {"dilated_heads", 1}});
  auto x = torch::randn({1, 15, kC}, torch::kDouble);
  auto whole = run(m, x, true);
  auto state = m->initial_state(1);
  std::vector<torch::Tensor> parts;
  for (int64_t at = 0; at < 15; at += 3) {
    MixContext ctx;
    ctx.causal = true;
    ctx.state = state.get();
    parts.push_back(m->forward(x.narrow(1, at, 3), ctx));
  }
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), whole, 1e-10, 1e-10));
  // Configured global tokens stream too (by recomputing the prefix); a global-token mask does not.
  auto g = make({{"global_first", true}, {"global_positions", {6}}, {"dilation", {2}}});
  auto gwhole = run(g, x, true);
  auto gs = g->initial_state(1);
  for (int64_t at = 0; at < 15; at += 5) {
    MixContext ctx;
    ctx.causal = true;
    ctx.state = gs.get();
    EXPECT_TRUE(torch::allclose(g->forward(x.narrow(1, at, 5), ctx), gwhole.narrow(1, at, 5), 1e-10, 1e-10)) << at;
  }
  auto ms = m->initial_state(1);
  MixContext ctx;
  ctx.causal = true;
  ctx.state = ms.get();
  ctx.global_mask = torch::ones({1, 15}, torch::kBool);
  EXPECT_THROW(m->forward(x, ctx), Error);
}

TEST(Longformer, ConfiguredGlobalPositionsCountRealTokens) {
  // global_first and global_positions name the sequence's first and seventh real token under left padding.
  auto m = make({{"window", {1}}, {"global_first", true}, {"global_positions", {6}}});
  auto x = torch::randn({1, 12, kC}, torch::kDouble);
  auto alone = run(m, x, false);
  auto xp = torch::cat({torch::randn({1, 5, kC}, torch::kDouble), x}, 1);
  auto pad = torch::zeros({1, 17}, torch::kBool);
  pad.narrow(1, 0, 5).fill_(true);
  EXPECT_TRUE(torch::allclose(run(m, xp, false, pad).narrow(1, 5, 12), alone, 1e-10, 1e-10));
}

TEST(Longformer, BadOptionsNameTheKey) {
  try {
    make({{"window", {-1}}});
    FAIL() << "negative window accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("window"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make({{"dilation", {0}}}), Error);
  EXPECT_THROW(make({{"window", Json::array()}}), Error);
}

}  // namespace longformer_test
