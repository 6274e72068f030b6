// The Scaling Transformer's multiplicative dense layer and sparse QKV mixer (src/layers/factored_dense.cpp,
// src/mixers/sparse_qkv.cpp): ../shared/mechanisms/scaling_transformer.md, exact cases 5-8, and the whole mixer
// against a reference written here from sec. 3.2 / Fig. 4b with explicit loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/models.h"
#include "longseq/factored_dense.h"
#include "longseq/registry.h"
#include "mixer_helpers.h"

namespace sparse_qkv_test {

using namespace longseq;
using longseq_test::build_mixer;
using longseq_test::param;
using longseq_test::run_mixer;

constexpr int64_t kC = 16, kH = 4;

struct Config {
  int64_t S = kH, kt = 3, km = 3;
  std::string output = "none";
  Json core;  // null: the default (exact attention)
  Json json() const {
    Json j = {{"modules", S}, {"time_kernel", kt}, {"module_kernel", km}, {"output", output}};
    if (!core.is_null()) j["core"] = core;
    return j;
  }
};

// A mixer with every parameter drawn away from its initial value (conv biases are zero at initialisation).
Mixer make(const Config& c, torch::Dtype dtype = torch::kDouble) {
  auto m = build_mixer("sparse_qkv", c.json(), kC, kH, 5);
  torch::NoGradGuard ng;
  for (auto& p : m->parameters()) p.copy_(torch::randn_like(p) * 0.5);
  m->to(dtype);
  return m;
}

// y[s M + m] = sum_c x_c D[s, c] E[c, m] + b[s M + m] (Fig. 4a), as one einsum.
torch::Tensor factored_ref(const torch::nn::Module& f, const std::string& prefix, const torch::Tensor& x) {
  auto d = param(f, prefix + "d").to(torch::kDouble), e = param(f, prefix + "e").to(torch::kDouble);
  auto y = torch::einsum("btc,sc,cm->btsm", {x, d, e}).flatten(2);
  return y + param(f, prefix + "b").to(torch::kDouble);
}

// A convolution over (time, module) from its definition: out[b, t, s, o] = bias[o] + sum over taps of
// w[dt, ds, i, o] P[b, t - left + dt, s - half + ds, i], rows and modules outside the sequence being zero.
torch::Tensor conv_ref(const torch::Tensor& P, const torch::Tensor& w, const torch::Tensor& bias, int64_t left) {
  const int64_t B = P.size(0), T = P.size(1), S = P.size(2), M = P.size(3), kt = w.size(0), km = w.size(1);
  const int64_t half = (km - 1) / 2;
  auto out = torch::zeros({B, T, S, M}, torch::kDouble);
  auto p = P.accessor<double, 4>();
  auto wa = w.accessor<double, 4>();
  auto ba = bias.accessor<double, 1>();
  auto o = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t oc = 0; oc < M; ++oc) {
          double acc = ba[oc];
          for (int64_t dt = 0; dt < kt; ++dt) {
            const int64_t tt = t - left + dt;
            if (tt < 0 || tt >= T) continue;
            for (int64_t ds = 0; ds < km; ++ds) {
              const int64_t ss = s - half + ds;
              if (ss < 0 || ss >= S) continue;  // zero padding over modules (pitfall 6: not wrapped)
              for (int64_t i = 0; i < M; ++i) acc += wa[dt][ds][i][oc] * p[b][tt][ss][i];
            }
          }
          o[b][t][s][oc] = acc;
        }
  return out;
}

// Softmax attention by explicit loops in double: q, k, v [B, T, C] split contiguously into H heads; query t sees
// key j when it is not padding, j <= t if causal, and |t - j| <= window (window < 0: no limit).
torch::Tensor attention_ref(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t H,
                            bool causal, const torch::Tensor& pad, int64_t window = -1) {
  const int64_t B = q.size(0), T = q.size(1), C = q.size(2), D = C / H;
  auto out = torch::zeros({B, T, C}, torch::kDouble);
  auto qa = q.accessor<double, 3>(), ka = k.accessor<double, 3>(), va = v.accessor<double, 3>();
  auto pd = (pad.defined() ? pad : torch::zeros({B, T}, torch::kBool)).contiguous();
  auto pa = pd.accessor<bool, 2>();
  auto o = out.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> score(T, -std::numeric_limits<double>::infinity());
        double top = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < T; ++j) {
          if ((causal && j > t) || pa[b][j] || (window >= 0 && std::abs(t - j) > window)) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qa[b][t][h * D + d] * ka[b][j][h * D + d];
          score[j] = dot / std::sqrt(static_cast<double>(D));
          top = std::max(top, score[j]);
        }
        if (top == -std::numeric_limits<double>::infinity()) continue;  // nothing visible: zeros
        double z = 0;
        for (int64_t j = 0; j < T; ++j) z += std::isinf(score[j]) ? 0 : std::exp(score[j] - top);
        for (int64_t j = 0; j < T; ++j) {
          if (std::isinf(score[j])) continue;
          const double a = std::exp(score[j] - top) / z;
          for (int64_t d = 0; d < D; ++d) o[b][t][h * D + d] += a * va[b][j][h * D + d];
        }
      }
  return out;
}

// Linear attention (Katharopoulos et al. eq. 4-6 with phi = elu + 1) by explicit loops in double, as
// attention_ref: out_t = sum_j phi(q_t).phi(k_j) v_j / (sum_j phi(q_t).phi(k_j) + eps) over the visible keys.
torch::Tensor linear_attention_ref(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t H,
                                   bool causal, const torch::Tensor& pad, double eps) {
  const int64_t B = q.size(0), T = q.size(1), C = q.size(2), D = C / H;
  auto phi = [](double a) { return a > 0 ? a + 1 : std::exp(a); };
  auto out = torch::zeros({B, T, C}, torch::kDouble);
  auto qa = q.accessor<double, 3>(), ka = k.accessor<double, 3>(), va = v.accessor<double, 3>();
  auto pd = (pad.defined() ? pad : torch::zeros({B, T}, torch::kBool)).contiguous();
  auto pa = pd.accessor<bool, 2>();
  auto o = out.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        double z = eps;
        std::vector<double> num(D, 0.0);
        for (int64_t j = 0; j < T; ++j) {
          if ((causal && j > t) || pa[b][j]) continue;
          double w = 0;
          for (int64_t d = 0; d < D; ++d) w += phi(qa[b][t][h * D + d]) * phi(ka[b][j][h * D + d]);
          z += w;
          for (int64_t d = 0; d < D; ++d) num[d] += w * va[b][j][h * D + d];
        }
        for (int64_t d = 0; d < D; ++d) o[b][t][h * D + d] = num[d] / z;
      }
  return out;
}

using AttentionRef = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                                 bool, const torch::Tensor&)>;

// Sec. 3.2 / Fig. 4b from the definitions: shared P, convolutions for Q, K (kt x km) and V (kt x 1), attention
// (exact softmax unless `attn` says otherwise), then the chosen output layer.
torch::Tensor reference(const Mixer& m, const Config& c, const torch::Tensor& x_in, bool causal,
                        const torch::Tensor& pad = {}, const AttentionRef& attn = {}) {
  torch::NoGradGuard ng;
  auto x = x_in.to(torch::kDouble);
  const int64_t B = x.size(0), T = x.size(1), M = kC / c.S;
  auto P = factored_ref(*m, "factored.", x);
  if (pad.defined()) P = P.masked_fill(pad.unsqueeze(-1), 0);
  P = P.view({B, T, c.S, M}).contiguous();
  const int64_t left = causal ? c.kt - 1 : c.kt / 2;  // causal: the token is the last tap; else centred
  auto w = [&](const std::string& n) { return param(*m, n).to(torch::kDouble).contiguous(); };
  auto q = conv_ref(P, w("conv_q"), w("conv_q_bias"), left).view({B, T, kC});
  auto k = conv_ref(P, w("conv_k"), w("conv_k_bias"), left).view({B, T, kC});
  auto v = conv_ref(P, w("conv_v"), w("conv_v_bias"), left).view({B, T, kC});
  auto y = attn ? attn(q, k, v, causal, pad) : attention_ref(q, k, v, kH, causal, pad);
  if (c.output == "mult") return factored_ref(*m, "out.", y.view({B, T, kC})).view({B, T, kC});
  if (c.output == "dense") return torch::matmul(y, w("out.weight").t()) + w("out.bias");
  return y;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// Case 5: with S = 1 the multiplicative layer is a dense layer with W = diag(D_0) E (+ b).
TEST(SparseQkv, FactoredDenseWithOneModuleIsDense) {
  torch::manual_seed(1);
  FactoredDense f(6, 1, 5, true);
  f->to(torch::kDouble);
  {
    torch::NoGradGuard ng;
    param(*f, "b").normal_();
  }
  auto x = torch::randn({3, 4, 6}, torch::kDouble);
  auto W = torch::diag(param(*f, "d")[0]).matmul(param(*f, "e"));  // [6, 5]
  EXPECT_LT(max_diff(f(x), torch::matmul(x, W) + param(*f, "b")), 1e-12);
  EXPECT_EQ(f(x).sizes(), (std::vector<int64_t>{3, 4, 5}));
}

// Case 6: with a 1 x 1 kernel the convolutions are one dense M -> M map shared by every module and step, so the
// mixer is attention over (P W_q + b_q, P W_k + b_k, P W_v + b_v) applied module by module.
TEST(SparseQkv, OneByOneKernelIsADenseMapSharedAcrossModulesAndSteps) {
  for (bool causal : {true, false}) {
    Config c;
    c.kt = c.km = 1;
    auto m = make(c);
    auto x = torch::randn({2, 7, kC}, torch::kDouble);
    torch::NoGradGuard ng;
    auto P = factored_ref(*m, "factored.", x).view({2, 7, kH, kC / kH});
    auto dense = [&](const std::string& n) {
      auto W = param(*m, n).view({kC / kH, kC / kH});  // [in, out]
      return (torch::matmul(P, W) + param(*m, n + "_bias")).view({2, 7, kC});
    };
    auto q = longseq_test::to_heads(dense("conv_q"), kH), k = longseq_test::to_heads(dense("conv_k"), kH),
         v = longseq_test::to_heads(dense("conv_v"), kH);
    auto allowed = causal ? torch::ones({7, 7}, torch::kBool).tril().view({1, 1, 7, 7})
                          : torch::ones({1, 1, 7, 7}, torch::kBool);
    auto expect = longseq_test::from_heads(longseq_test::dense_masked_attention(q, k, v, allowed));
    EXPECT_LT(max_diff(run_mixer(m, x, causal), expect), 1e-12) << "causal=" << causal;
  }
}

// The whole mixer against the loop reference: modules per head 1 (S = H), 2 (S = 2H) and 1/2 (S = H/2), kernels
// 3 x 3, 2 x 5 and 4 x 1, every output layer, both modes, with left and right padding.
TEST(SparseQkv, MatchesTheLoopReference) {
  std::vector<Config> configs(5);
  configs[1].S = 8, configs[1].kt = 2, configs[1].km = 5, configs[1].output = "mult";
  configs[2].S = 2, configs[2].output = "dense";
  configs[3].kt = 4, configs[3].km = 1;
  configs[4].S = 16, configs[4].output = "mult";  // M = 1: each module one feature
  auto pad = torch::zeros({2, 11}, torch::kBool);
  pad[0].narrow(0, 8, 3).fill_(true);
  pad[1].narrow(0, 0, 2).fill_(true);
  for (const auto& c : configs)
    for (bool causal : {true, false})
      for (auto p : {torch::Tensor(), pad}) {
        const std::string what = c.json().dump() + " causal=" + std::to_string(causal) +
                                 " padded=" + std::to_string(p.defined());
        auto m = make(c);
        auto x = torch::randn({2, 11, kC}, torch::kDouble);
        auto ref = reference(m, c, x, causal, p);
        auto real = p.defined() ? ~p : torch::ones({2, 11}, torch::kBool);
        auto sel = [&](const torch::Tensor& y) { return y.masked_select(real.unsqueeze(-1).expand_as(y)); };
        EXPECT_LT(max_diff(sel(run_mixer(m, x, causal, p)), sel(ref)), 1e-10) << what;
        // float: the fused attention kernel where it applies
        auto mf = make(c, torch::kFloat);
        const double scale = std::max(1.0, ref.abs().max().item<double>());
        EXPECT_LT(max_diff(sel(run_mixer(mf, x.to(torch::kFloat), causal, p)), sel(ref)), 1e-5 * scale) << what;
      }
}

// Case 7: token by token and in uneven chunks, the remembered P rows and the KV cache give the whole causal pass.
TEST(SparseQkv, StreamingEqualsTheWholeCausalPass) {
  Config wide;
  wide.S = 8, wide.kt = 4, wide.km = 5, wide.output = "mult";
  for (const auto& c : {Config{}, wide}) {
    auto m = make(c);
    const int64_t T = 14;
    auto x = torch::randn({2, T, kC}, torch::kDouble);
    auto pad = torch::zeros({2, T}, torch::kBool);
    pad[1].narrow(0, 0, 3).fill_(true);   // left padding across the first chunks
    pad[0].narrow(0, 12, 2).fill_(true);  // right padding
    for (auto p : {torch::zeros({2, T}, torch::kBool), pad}) {
      auto whole = run_mixer(m, x, true, p);
      auto real = (~p).unsqueeze(-1).expand_as(whole);
      const std::vector<std::vector<int64_t>> splits = {std::vector<int64_t>(T, 1), {3, 1, 5, 2, 3}, {1, 2, 11},
                                                        {14}};
      for (const auto& lens : splits) {
        auto streamed = longseq_test::stream_in_chunks(m, x, p, lens);
        EXPECT_LT(max_diff(whole.masked_select(real), streamed.masked_select(real)), 1e-12)
            << c.json().dump() << " chunks " << lens.size();
      }
      auto state = m->initial_state(2);
      run_mixer(m, x.narrow(1, 0, 5), true, p.narrow(1, 0, 5), state.get());
      EXPECT_EQ(state->tensors().at("p_tail").size(1), c.kt - 1) << "the state keeps time_kernel - 1 rows of P";
    }
  }
}

// Case 8: random changes to x after t leave the outputs up to t unchanged (the time pad is left-only) and move
// later outputs.
TEST(SparseQkv, CausalityUnderRandomPerturbations) {
  Config wide;
  wide.S = 8, wide.kt = 3, wide.km = 5, wide.output = "dense";
  for (const auto& c : {Config{}, wide}) {
    auto m = make(c);
    const int64_t T = 12;
    auto x = torch::randn({2, T, kC}, torch::kDouble);
    auto y = run_mixer(m, x, true);
    for (int64_t t : {0, 3, 7, 10}) {
      auto x2 = x.clone();
      x2.narrow(1, t + 1, T - t - 1).normal_();
      auto y2 = run_mixer(m, x2, true);
      EXPECT_LT(max_diff(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1)), 1e-12) << "t=" << t;
      EXPECT_GT(max_diff(y.narrow(1, t + 1, T - t - 1), y2.narrow(1, t + 1, T - t - 1)), 1e-6) << "t=" << t;
    }
  }
}

// Garbage in padded positions changes no real token, whether the padding sits left or right, in both modes.
TEST(SparseQkv, PaddingDoesNotChangeRealTokens) {
  auto m = make(Config{});
  longseq_test::expect_padding_length_invariance(m, torch::randn({1, 9, kC}, torch::kDouble), "sparse_qkv");
  for (bool causal : {true, false}) {
    auto x = torch::randn({2, 10, kC}, torch::kDouble);
    auto pad = torch::zeros({2, 10}, torch::kBool);
    pad[0].narrow(0, 0, 3).fill_(true);
    pad[1].narrow(0, 6, 4).fill_(true);
    auto x2 = x.clone();
    x2.masked_scatter_(pad.unsqueeze(-1).expand_as(x2), torch::randn({2, 10, kC}, torch::kDouble) * 9);
    auto real = (~pad).unsqueeze(-1).expand({2, 10, kC});
    auto y = run_mixer(m, x, causal, pad), y2 = run_mixer(m, x2, causal, pad);
    EXPECT_LT(max_diff(y.masked_select(real), y2.masked_select(real)), 1e-12)
        << "causal=" << causal;
  }
}

// Configuration errors name the option at fault.
TEST(SparseQkv, OptionErrorsNameTheOption) {
  auto expect_error = [](Json o, const std::string& option) {
    o["name"] = "sparse_qkv";
    try {
      make_mixer(parse_mixer_spec(o, "test"), kC, kH, 0);
      ADD_FAILURE() << "no error for " << o.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(option), std::string::npos) << e.what();
    }
  };
  expect_error({{"modules", 3}}, "modules");  // 16 is not a multiple of 3
  expect_error({{"module_kernel", 2}}, "module_kernel");
  expect_error({{"time_kernel", 0}}, "time_kernel");
  expect_error({{"output", "conv"}}, "output");
}

// The FLOP count charges every multiply-add the layers make: the factored dense C S + C^2 per token, each conv
// its weights times S modules, attention 4 T^2 C (halved when causal), the output layer.
TEST(SparseQkv, FlopsCountTheLayersWeights) {
  for (const auto& output : {"none", "mult", "dense"}) {
    Config c;
    c.S = 8, c.kt = 2, c.km = 5, c.output = output;
    auto m = make(c);
    double conv_macs = 0;
    for (const auto& n : {"conv_q", "conv_k", "conv_v"}) conv_macs += static_cast<double>(param(*m, n).numel()) * c.S;
    const double factored = kC * c.S + kC * kC;
    const double out = c.output == "mult" ? factored : c.output == "dense" ? kC * kC : 0;
    const int64_t B = 2, T = 10;
    Json spec = c.json();
    spec["name"] = "sparse_qkv";
    FlopQuery q{B, T, kC, kH, true, parse_mixer_spec(spec, "test").options};
    const double expect = 2.0 * B * T * (factored + conv_macs + out) + 4.0 * B * T * T * kC / 2;
    EXPECT_DOUBLE_EQ(find_mixer("sparse_qkv").flops(q), expect) << output;
  }
}

// Sparse QKV with another mixer's attention core (sec. 3.2: the layer is usable with any attention): the core sees
// the convolutions' Q, K and V. Longformer's window (w = 2, 11 tokens: 5 keys of 11 at most) against the banded
// softmax of the loop reference, and linear attention against phi = elu + 1 by loops, both modes, both paddings.
TEST(SparseQkv, AnotherMixersCoreAttendsOverTheLayersQKV) {
  struct Case {
    Json core;
    AttentionRef attn;
  };
  const std::vector<Case> cases = {
      {{{"name", "longformer"}, {"window", {2}}},
       [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal, const torch::Tensor& pad) {
         return attention_ref(q, k, v, kH, causal, pad, 2);
       }},
      {{{"name", "linear"}, {"chunk", 3}},
       [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal, const torch::Tensor& pad) {
         return linear_attention_ref(q, k, v, kH, causal, pad, 1e-6);
       }},
  };
  auto pad = torch::zeros({2, 11}, torch::kBool);
  pad[0].narrow(0, 8, 3).fill_(true);
  pad[1].narrow(0, 0, 2).fill_(true);
  for (const auto& cs : cases)
    for (const char* output : {"none", "mult"}) {
      Config c;
      c.S = 8, c.kt = 2, c.km = 3, c.output = output, c.core = cs.core;
      for (bool causal : {true, false})
        for (auto p : {torch::Tensor(), pad}) {
          const std::string what = c.json().dump() + " causal=" + std::to_string(causal) +
                                   " padded=" + std::to_string(p.defined());
          auto m = make(c);
          auto x = torch::randn({2, 11, kC}, torch::kDouble);
          auto real = p.defined() ? ~p : torch::ones({2, 11}, torch::kBool);
          auto sel = [&](const torch::Tensor& y) { return y.masked_select(real.unsqueeze(-1).expand_as(y)); };
          auto got = sel(run_mixer(m, x, causal, p));
          EXPECT_LT(max_diff(got, sel(reference(m, c, x, causal, p, cs.attn))), 1e-10) << what;
          // And it is not exact attention: the core changes the layer.
          EXPECT_GT(max_diff(got, sel(reference(m, c, x, causal, p))), 1e-3) << what;
        }
    }
}

// The core is built without projections of its own: its parameters are only those of its mechanism.
TEST(SparseQkv, TheCoreHasNoProjectionsOfItsOwn) {
  for (const std::string core : {"full", "longformer", "learned_kernel", "routing"}) {
    Config c;
    c.core = core;
    auto m = make(c);
    for (const auto& p : m->named_parameters())
      EXPECT_TRUE(p.key().rfind("core.", 0) != 0 || p.key().find("qkv") == std::string::npos &&
                                                        p.key().find("out") == std::string::npos)
          << core << ": " << p.key();
    const auto names = m->named_parameters().keys();
    const bool learned = std::any_of(names.begin(), names.end(), [](const std::string& n) { return n == "core.mean"; });
    EXPECT_EQ(learned, core == "learned_kernel") << core << ": its kernel's own parameters stay";
  }
}

// A core that cannot stream (routing) makes the layer decode by recomputing: no state.
TEST(SparseQkv, ACoreThatCannotStreamGivesNoState) {
  Config c;
  c.core = "routing";
  EXPECT_FALSE(make(c)->initial_state(2));
  c.core = "linear";
  EXPECT_TRUE(make(c)->initial_state(2));
}

TEST(SparseQkv, CoreErrorsNameTheCoreAndTheWayOut) {
  auto expect_error = [](Json o, const std::vector<std::string>& parts) {
    o["name"] = "sparse_qkv";
    try {
      make_mixer(parse_mixer_spec(o, "test"), kC, kH, 0);
      ADD_FAILURE() << "no error for " << o.dump();
    } catch (const Error& e) {
      for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error({{"core", "lsh"}}, {"sparse_qkv.core", "lsh", "longformer"});  // shared QK: not a core; lists cores
  expect_error({{"core", "luna"}}, {"luna", "attention core"});
  expect_error({{"core", "nonesuch"}}, {"nonesuch"});
  expect_error({{"core", {{"name", "linear"}, {"chunk", 0}}}}, {"sparse_qkv.core", "chunk"});
  expect_error({{"core", {{"name", "linear"}}}, {"dropout", 0.1}}, {"dropout", "core"});
  expect_error({{"core", 7}}, {"sparse_qkv.core"});
}

// With another core the FLOPs are the layer's own plus the core's mixer count less the projections that mixer makes:
// q, k, v and out (4 C^2 multiply-adds a token) for linear; for routing with shared QK, q, v, out and the local
// heads' keys only (3 C^2 + C^2 / 2 with half the heads local).
TEST(SparseQkv, FlopsWithACoreCountTheCoresAttention) {
  const int64_t B = 2, T = 10;
  FlopQuery qe{B, T, kC, kH, true, parse_mixer_spec(Json{{"name", "sparse_qkv"}}, "test").options};
  const double layer = find_mixer("sparse_qkv").flops(qe) - 4.0 * B * T * T * kC / 2;
  const std::vector<std::pair<Json, double>> cores = {
      {{{"name", "linear"}, {"chunk", 4}}, 2.0 * B * T * 4 * kC * kC},
      {{{"name", "routing"}}, 2.0 * B * T * (3 * kC * kC + kC * kC / 2)},
  };
  for (const auto& [core, projections] : cores) {
    FlopQuery q{B, T, kC, kH, true, parse_mixer_spec(Json{{"name", "sparse_qkv"}, {"core", core}}, "test").options};
    FlopQuery qc{B, T, kC, kH, true, parse_mixer_spec(core, "test").options};
    EXPECT_DOUBLE_EQ(find_mixer("sparse_qkv").flops(q), layer + find_mixer(core["name"]).flops(qc) - projections)
        << core.dump();
  }
}

// A layer over a core declares what both have (mixer_properties), which the model's checks read.
TEST(SparseQkv, PropertiesAreThoseTheLayerAndItsCoreHave) {
  auto props = [](const Json& core) {
    return mixer_properties(parse_mixer_spec(Json{{"name", "sparse_qkv"}, {"core", core}}, "test"));
  };
  EXPECT_TRUE(props("full").strictly_causal);
  EXPECT_TRUE(props("full").streams);
  EXPECT_FALSE(props("routing").strictly_causal);
  EXPECT_FALSE(props("routing").streams);
  EXPECT_TRUE(props(Json{{"name", "routing"}, {"clusters", 1}}).strictly_causal);
  EXPECT_FALSE(props("yoso").supports_causal);
  EXPECT_TRUE(props("yoso").supports_bidirectional);
  EXPECT_EQ(mixer_properties(parse_mixer_spec(Json("routing"), "test")).streams, false);
  // The decoder LM refuses a layer with no causal form by the layer's name.
  Json cfg = {{"type", "decoder_lm"}, {"mixer", {{"name", "sparse_qkv"}, {"core", "yoso"}}}, {"block", "standard"}};
  try {
    ModelConfig::from_json(validate_options(cfg, model_schema(), "model"));
    ADD_FAILURE() << "a yoso core was accepted in a causal model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("causal"), std::string::npos) << e.what();
  }
}

}  // namespace sparse_qkv_test
