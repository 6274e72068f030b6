// Block-Recurrent Transformer (Hutchins et al. 2022): the `block_recurrent`
// mixer against a token-by-token reference written here from sec. 3's
// equations (explicit windows, T5 buckets, per-block state updates), and the
// sheet's limiting cases 1-7.
#include <gtest/gtest.h>

#include <cmath>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/models.h"
#include "longseq/registry.h"
#include "mixer_helpers.h"

using namespace longseq;

namespace block_recurrent_test {

using longseq_test::param;

constexpr int64_t C = 8, H = 2, D = 4;

Mixer br_mixer(Json options, uint64_t seed = 5) {
  auto m = longseq_test::build_mixer("block_recurrent", std::move(options), C, H, seed);
  torch::NoGradGuard g;  // nonzero position biases and varied scales, so the test sees them
  if (m->named_parameters().contains("position_bias")) param(*m, "position_bias").normal_(0.0, 0.5);
  for (const auto& n : {"scale_self", "scale_cross", "scale_state", "scale_state_cross"})
    if (m->named_parameters().contains(n)) param(*m, n).uniform_(1.5, 4.0);
  return m;
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, MixerState* st = nullptr) {
  return longseq_test::run_mixer(m, x, true, {}, st);
}

// T5's unidirectional bucket (Raffel et al. 2020, as in the mesh-tensorflow definition): 32 buckets, 128.
int64_t bucket(int64_t n) {
  if (n < 16) return n;
  return std::min<int64_t>(31, 16 + int64_t(std::log(n / 16.0) / std::log(128.0 / 16.0) * 16.0));
}

torch::Tensor unit(const torch::Tensor& x) { return x / torch::sqrt(x.square().sum(-1, true) + 1e-6); }

// softmax over the listed key rows of (scale * q . k + bias), times v; one head, explicit loop over the keys.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& vals,
                     const std::vector<int64_t>& rows, double scale, const std::vector<double>& bias) {
  if (rows.empty()) return torch::zeros({vals.size(1)}, torch::kDouble);
  auto s = torch::zeros({int64_t(rows.size())}, torch::kDouble);
  for (size_t n = 0; n < rows.size(); ++n)
    s[int64_t(n)] = scale * (q.dot(keys[rows[n]]).item<double>() + (bias.empty() ? 0.0 : bias[n]));
  return torch::matmul(torch::softmax(s, 0), vals.index_select(0, torch::tensor(rows, torch::kLong)));
}

struct Reference {
  torch::Tensor y;                  // [T, C]
  std::vector<torch::Tensor> states;  // s_0, s_1, ...: the state before each block, then after the last complete one
  std::vector<torch::Tensor> z;       // W_z h of each complete block
};

// Sec. 3.1-3.5 for one sequence (B = 1, skip or dual config, fixed or lstm gate), masked document start:
// token p attends to tokens p - W .. p - 1 and to the state of its block; after every complete block the state
// is updated from [state self-attention, cross-attention to the tokens of that block and the one before].
Reference reference(const Mixer& m, const torch::Tensor& x, int64_t W, bool recurrent, const std::string& cfg = "skip",
                    const std::string& gate = "fixed") {
  auto P = [&](const std::string& n) { return param(*m, n).to(torch::kDouble); };
  const int64_t T = x.size(1);
  auto xt = x[0].to(torch::kDouble);
  auto proj = torch::matmul(xt, P("tokens.weight").t());
  auto heads = [&](const torch::Tensor& t, int64_t i) { return t.narrow(1, i * C, C).view({t.size(0), H, D}); };
  auto k = unit(heads(proj, 0)), v = heads(proj, 1), q = unit(heads(proj, 2));
  auto self = torch::zeros({T, H, D}, torch::kDouble), cross = torch::zeros({T, H, D}, torch::kDouble);
  auto bias_of = [&](int64_t h, int64_t dist) { return P("position_bias")[bucket(dist)][h].item<double>(); };
  for (int64_t p = 0; p < T; ++p)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<int64_t> rows;
      std::vector<double> bias;
      for (int64_t j = std::max<int64_t>(0, p - W); j < p; ++j) rows.push_back(j), bias.push_back(bias_of(h, p - j));
      self[p][h] = attend(q[p][h], k.select(1, h), v.select(1, h), rows, P("scale_self")[h].item<double>(), bias);
    }
  Reference ref;
  if (!recurrent) {
    ref.y = torch::matmul(self.reshape({T, C}), P("out.weight").t());
    return ref;
  }
  auto qc = unit(heads(proj, 3));
  auto s = P("initial_state");
  for (int64_t b0 = 0; b0 < T; b0 += W) {
    ref.states.push_back(s);
    auto w = torch::layer_norm(s, {C}, P("state_norm.weight"), P("state_norm.bias")) + P("state_ids");
    auto sp = torch::matmul(w, P("state.weight").t());
    auto ks = unit(heads(sp, 0)), vs = heads(sp, 1), qss = unit(heads(sp, 2)), qse = unit(heads(sp, 3));
    const int64_t S = s.size(0);
    std::vector<int64_t> all(static_cast<size_t>(S));
    for (int64_t i = 0; i < S; ++i) all[size_t(i)] = i;
    for (int64_t p = b0; p < std::min(T, b0 + W); ++p)
      for (int64_t h = 0; h < H; ++h)
        cross[p][h] = attend(qc[p][h], ks.select(1, h), vs.select(1, h), all, P("scale_cross")[h].item<double>(), {});
    if (b0 + W > T) break;  // an incomplete block does not update the state
    std::vector<int64_t> window;
    for (int64_t j = std::max<int64_t>(0, b0 - W); j < b0 + W; ++j) window.push_back(j);
    auto hs = torch::zeros({S, H, D}, torch::kDouble), hc = torch::zeros({S, H, D}, torch::kDouble);
    for (int64_t i = 0; i < S; ++i)
      for (int64_t h = 0; h < H; ++h) {
        hs[i][h] = attend(qss[i][h], ks.select(1, h), vs.select(1, h), all, P("scale_state")[h].item<double>(), {});
        hc[i][h] = attend(qse[i][h], k.select(1, h), v.select(1, h), window, P("scale_state_cross")[h].item<double>(), {});
      }
    auto hcat = torch::cat({hs.reshape({S, C}), hc.reshape({S, C})}, 1);
    auto apply_gate = [&](const std::string& prefix, const torch::Tensor& old, const torch::Tensor& z,
                          const torch::Tensor& in) {
      if (gate == "fixed") {
        auto g = torch::sigmoid(P(prefix + ".bias"));
        return old * g + z * (1 - g);
      }
      auto f = torch::sigmoid(torch::matmul(in, P(prefix + ".forget.weight").t()) + P(prefix + ".forget.bias") + 1);
      auto i = torch::sigmoid(torch::matmul(in, P(prefix + ".input.weight").t()) + P(prefix + ".input.bias") - 1);
      return old * f + z * i;
    };
    ref.z.push_back(torch::matmul(hcat, P("z.weight").t()));
    auto c = apply_gate("gate", s, ref.z.back(), hcat);
    if (cfg == "dual") {
      auto hid = torch::relu(torch::matmul(torch::layer_norm(c, {C}, P("ff_norm.weight"), P("ff_norm.bias")),
                                           P("ff_in.weight").t()));
      c = apply_gate("gate_ff", c, torch::matmul(hid, P("ff_out.weight").t()), hid);
    }
    s = c;
  }
  if (T % W == 0) ref.states.push_back(s);
  ref.y = torch::matmul(torch::cat({self.reshape({T, C}), cross.reshape({T, C})}, 1), P("out.weight").t());
  return ref;
}

double err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// Sheet case 2 and the layer's definition: one pass, and the same tokens streamed in pieces that cut blocks
// anywhere, equal the token-by-token reference (window of exactly W earlier tokens, T5 bias, state per block),
// for the Slide layer and every recurrent cell.
TEST(BlockRecurrent, OnePassAndStreamedPiecesEqualTheDefinition) {
  const int64_t W = 4, T = 14;
  struct Case {
    bool recurrent;
    std::string cfg, gate;
  };
  for (const auto& c : std::vector<Case>{{false, "skip", "fixed"}, {true, "skip", "fixed"}, {true, "skip", "lstm"},
                                         {true, "dual", "lstm"}, {true, "dual", "fixed"}}) {
    SCOPED_TRACE(testing::Message() << "recurrent=" << c.recurrent << " " << c.cfg << " " << c.gate);
    auto m = br_mixer({{"window", W}, {"states", 3}, {"recurrent", c.recurrent}, {"config", c.cfg}, {"gate", c.gate}});
    torch::manual_seed(1);
    auto x = torch::randn({1, T, C}, torch::kDouble);
    auto want = reference(m, x, W, c.recurrent, c.cfg, c.gate).y;
    EXPECT_LT(err(run(m, x)[0], want), 1e-10);
    EXPECT_LT(err(longseq_test::stream_in_chunks(m, x, torch::zeros({1, T}, torch::kBool), {5, 3, 1, 4, 1})[0], want),
              1e-10);
    m->to(torch::kFloat);  // the fused kernels
    EXPECT_LT(err(run(m, x.to(torch::kFloat))[0], want), 1e-5);
  }
}

// Sheet case 1: a fixed gate at sigma = 1 keeps the state exactly; the skip cell at sigma = 0 sets it to W_z h.
TEST(BlockRecurrent, SaturatedFixedGateKeepsOrReplacesTheState) {
  const int64_t W = 3;
  auto x = torch::randn({1, 3 * W, C}, torch::kDouble);
  for (double b : {100.0, -1000.0}) {  // sigma = 1 and 0 exactly in float64
    auto m = br_mixer({{"window", W}, {"states", 2}});
    {
      torch::NoGradGuard g;
      param(*m, "gate.bias").fill_(b);
    }
    auto st = m->initial_state(1);
    run(m, x, st.get());
    auto s = st->tensors().at("s")[0];
    if (b > 0) {
      EXPECT_TRUE(torch::equal(s, param(*m, "initial_state").detach())) << "sigma = 1 must leave s_0 unchanged";
    } else {
      auto ref = reference(m, x, W, true);
      EXPECT_LT(err(s, ref.z.back()), 1e-12) << "sigma = 0: the state is W_z h of the last block";
      EXPECT_GT(err(s, ref.states[2]), 1e-3) << "and not the state before it";
    }
  }
}

// Sheet case 3: without the tokens' cross-attention to the state (its half of W_o zeroed) the recurrent layer is
// the Slide layer with the same token weights.
TEST(BlockRecurrent, WithoutTheStatePathTheLayerIsTheSlideLayer) {
  const int64_t W = 4;
  auto rec = br_mixer({{"window", W}, {"states", 3}});
  auto slide = br_mixer({{"window", W}, {"recurrent", false}});
  {
    torch::NoGradGuard g;
    param(*rec, "out.weight").narrow(1, C, C).zero_();
    param(*slide, "out.weight").copy_(param(*rec, "out.weight").narrow(1, 0, C));
    param(*slide, "tokens.weight").copy_(param(*rec, "tokens.weight").narrow(0, 0, 3 * C));
    param(*slide, "scale_self").copy_(param(*rec, "scale_self"));
    param(*slide, "position_bias").copy_(param(*rec, "position_bias"));
  }
  auto x = torch::randn({2, 11, C}, torch::kDouble);
  EXPECT_LT(err(run(rec, x), run(slide, x)), 1e-12);
}

// Sheet case 4: changing the tokens of block t + 1 leaves the outputs of blocks <= t unchanged, and the state
// after block t too; it changes the state after block t + 1.
TEST(BlockRecurrent, LaterBlocksChangeNeitherEarlierOutputsNorEarlierStates) {
  const int64_t W = 4;
  auto m = br_mixer({{"window", W}, {"states", 3}});
  auto x = torch::randn({1, 3 * W, C}, torch::kDouble), x2 = x.clone();
  x2.narrow(1, 2 * W, W).normal_();
  auto a = m->initial_state(1), b = m->initial_state(1);
  auto ya = run(m, x.narrow(1, 0, 2 * W), a.get()), yb = run(m, x2.narrow(1, 0, 2 * W), b.get());
  EXPECT_TRUE(torch::equal(a->tensors().at("s"), b->tensors().at("s")));
  EXPECT_LT(err(run(m, x).narrow(1, 0, 2 * W), run(m, x2).narrow(1, 0, 2 * W)), 1e-14);
  run(m, x.narrow(1, 2 * W, W), a.get()), run(m, x2.narrow(1, 2 * W, W), b.get());
  EXPECT_GT(err(a->tensors().at("s"), b->tensors().at("s")), 1e-4);
}

// Sheet case 5: permuting the rows of s_0 and of the state IDs together permutes the state and leaves the tokens'
// outputs unchanged; permuting s_0 alone changes them.
TEST(BlockRecurrent, StateRowsArePermutationEquivariantOnlyWithTheirIds) {
  const int64_t W = 3, S = 4;
  auto x = torch::randn({1, 3 * W + 1, C}, torch::kDouble);
  auto perm = torch::tensor({2, 0, 3, 1}, torch::kLong);
  auto base = br_mixer({{"window", W}, {"states", S}, {"gate", "lstm"}});
  auto st = base->initial_state(1);
  auto y = run(base, x, st.get());
  for (bool with_ids : {true, false}) {
    auto m = br_mixer({{"window", W}, {"states", S}, {"gate", "lstm"}});
    {
      torch::NoGradGuard g;
      param(*m, "initial_state").copy_(param(*base, "initial_state").index_select(0, perm));
      if (with_ids) param(*m, "state_ids").copy_(param(*base, "state_ids").index_select(0, perm));
    }
    auto st2 = m->initial_state(1);
    auto y2 = run(m, x, st2.get());
    if (with_ids) {
      EXPECT_LT(err(y, y2), 1e-12);
      EXPECT_LT(err(st->tensors().at("s").index_select(1, perm), st2->tensors().at("s")), 1e-12);
    } else {
      EXPECT_GT(err(y, y2), 1e-4) << "the state IDs are what tell the state vectors apart";
    }
  }
}

// Sheet case 6: two segments through the cache equal one segment of twice the length, and the second segment's
// loss sends no gradient into the first (truncated backprop at the segment boundary) but trains the weights.
TEST(BlockRecurrent, SegmentsThroughTheCacheEqualOnePassWithGradientsStopped) {
  const int64_t W = 4, N = 8;
  auto m = br_mixer({{"window", W}, {"states", 3}, {"config", "dual"}});
  auto x = torch::randn({2, 2 * N, C}, torch::kDouble);
  auto x1 = x.narrow(1, 0, N).clone().requires_grad_(true);
  auto st = m->initial_state(2);
  auto y1 = run(m, x1, st.get());
  EXPECT_FALSE(st->tensors().at("s").requires_grad());
  EXPECT_FALSE(st->tensors().at("k").requires_grad());
  auto y2 = run(m, x.narrow(1, N, N), st.get());
  EXPECT_LT(err(torch::cat({y1, y2}, 1), run(m, x)), 1e-12);
  y2.sum().backward();
  EXPECT_FALSE(x1.grad().defined() && x1.grad().abs().sum().item<double>() != 0.0);
  EXPECT_TRUE(param(*m, "state.weight").grad().defined());
}

// Sheet case 7: the first token of a document sees no earlier token: its window output is exactly 0, with the
// start masked and with the official code's attended zero cache.
TEST(BlockRecurrent, TheFirstTokenOfADocumentReadsNothingFromTheWindow) {
  auto x = torch::randn({2, 6, C}, torch::kDouble);
  for (const char* start : {"masked", "zeros"}) {
    auto m = br_mixer({{"window", 4}, {"recurrent", false}, {"initial_cache", start}});
    auto y = run(m, x);
    EXPECT_EQ(y.select(1, 0).abs().max().item<double>(), 0.0) << start;
    EXPECT_GT(y.select(1, 1).abs().max().item<double>(), 0.0) << start;
  }
  // The zero cache is attended: it dilutes the second token's attention, so the two starts differ there.
  auto a = br_mixer({{"window", 4}, {"recurrent", false}}), b = br_mixer({{"window", 4}, {"recurrent", false},
                                                                         {"initial_cache", "zeros"}});
  EXPECT_GT(err(run(a, x).select(1, 1), run(b, x).select(1, 1)), 1e-6);
}

// The paper's stack: Slide layers and one recurrent layer in a decoder; segments and token-by-token decoding equal
// one causal pass, on float32 (the fused kernels).
TEST(BlockRecurrentModel, SegmentsAndTokenByTokenDecodingEqualOnePass) {
  Json slide = {{"name", "block_recurrent"}, {"window", 5}, {"recurrent", false}};
  Json rec = {{"name", "block_recurrent"}, {"window", 5}, {"states", 4}, {"gate", "lstm"}};
  Json cfg = {{"vocab_size", 64}, {"d_model", 16}, {"n_heads", 2}, {"d_ff", 32}, {"positions", "none"},
              {"layers", {slide, rec, slide}}};
  torch::manual_seed(2);
  DecoderLM model(ModelConfig::from_json(cfg));
  model->eval();
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 64, {2, 23}, torch::kLong);
  auto whole = model->forward(tokens);
  auto st = model->initial_state(2);
  std::vector<torch::Tensor> parts;
  for (auto [at, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 10}, {10, 7}, {17, 6}})
    parts.push_back(model->forward(tokens.narrow(1, at, n), &st));
  EXPECT_LT((torch::cat(parts, 1) - whole).abs().max().item<double>(), 1e-4);
  auto dec = model->initial_state(2);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 23; ++t) steps.push_back(model->forward(tokens.narrow(1, t, 1), &dec));
  EXPECT_LT((torch::cat(steps, 1) - whole).abs().max().item<double>(), 1e-4);
}

TEST(BlockRecurrent, BadOptionsAndInputsAreNamed) {
  auto bad = [](Json o) {
    try {
      br_mixer(std::move(o));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(bad({{"position_buckets", 32}, {"position_max_distance", 10}}).find("position_max_distance"),
            std::string::npos);
  EXPECT_NE(bad({{"gate", "gru"}}).find("gate"), std::string::npos);
  EXPECT_NE(bad({{"window", 0}}).find("window"), std::string::npos);
  auto m = br_mixer({{"window", 4}});
  EXPECT_THROW(longseq_test::run_mixer(m, torch::randn({1, 5, C}, torch::kDouble), false), std::exception);
  EXPECT_THROW(run(m, torch::randn({1, 5, C + 1}, torch::kDouble)), std::exception);
}

}  // namespace block_recurrent_test
