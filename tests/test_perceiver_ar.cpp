// Perceiver AR (model.type = perceiver_ar): ../shared/mechanisms/perceiver_ar.md, exact cases 1 (N = T with an
// identity latent map is a causal pre-LN decoder of L + 1 layers, the first with separate LayerNorms for q and k/v),
// 2 (causality), 3 (rotary relativity), 4 (cached decoding after a reset equals a fresh pass with F + k latents),
// 5 (training mode without dropout equals eval mode) and 6 (N = 1), each against a reference written here from the
// paper's equations, plus context dropout (exactly the kept share of the context reaches the latents).
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "longseq/common.h"
#include "longseq/generate.h"
#include "longseq/perceiver_ar.h"
#include "longseq/rotary.h"
#include "longseq/train.h"

namespace perceiver_ar_test {

using namespace longseq;

constexpr int64_t kC = 16, kH = 2, kV = 13, kT = 12;

Json model_json(int64_t latents, int64_t layers = 2) {
  return {{"type", "perceiver_ar"}, {"vocab_size", kV}, {"d_model", kC}, {"n_heads", kH}, {"n_layers", layers},
          {"d_ff", 32}, {"positions", "rotary"}, {"max_len", 64}, {"latents", latents}, {"rotary_fraction", 0.5}};
}

PerceiverAR make(const Json& j) { return PerceiverAR(ModelConfig::from_json(j)); }

// A decoding model in eval mode: `latents` latents, refills with 3 (App. E.3).
PerceiverAR decoding_model(uint64_t seed, int64_t latents = 8) {
  torch::manual_seed(seed);
  auto j = model_json(latents);
  j["reset_latents"] = 3;
  auto m = make(j);
  m->eval();
  return m;
}

torch::Tensor param(torch::nn::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters())
    if (p.key() == name) return p.value();
  throw Error("no parameter " + name);
}

// Rotary from its definition, one pair at a time: channels (2k, 2k + 1), k < R/2 with R = 2 floor(f D / 2), turned
// by p / W^(k / (R/2 - 1)) radians. x: [B, H, T, D] double, positions of the T rows.
torch::Tensor rotate(const torch::Tensor& x, const std::vector<double>& pos, double fraction, double W) {
  auto out = x.clone();
  const int64_t D = x.size(3), R = 2 * static_cast<int64_t>(std::floor(fraction * D / 2)), nb = R / 2;
  for (int64_t t = 0; t < x.size(2); ++t)
    for (int64_t k = 0; k < nb; ++k) {
      const double angle = pos[t] / std::pow(W, nb > 1 ? double(k) / double(nb - 1) : 0.0);
      auto a = x.select(2, t).select(2, 2 * k), b = x.select(2, t).select(2, 2 * k + 1);
      out.select(2, t).select(2, 2 * k).copy_(a * std::cos(angle) - b * std::sin(angle));
      out.select(2, t).select(2, 2 * k + 1).copy_(b * std::cos(angle) + a * std::sin(angle));
    }
  return out;
}

torch::Tensor heads(const torch::Tensor& x) { return x.view({x.size(0), x.size(1), kH, -1}).transpose(1, 2); }
torch::Tensor unheads(const torch::Tensor& x) { return x.transpose(1, 2).reshape({x.size(0), x.size(2), -1}); }

// softmax(q k^T / sqrt(D)) v where query i (key position qpos[i]) sees keys at positions <= qpos[i].
torch::Tensor causal_attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const std::vector<double>& qpos, const std::vector<double>& kpos) {
  auto s = torch::matmul(q, k.transpose(2, 3)) / std::sqrt(double(q.size(3)));
  auto blocked = torch::zeros({q.size(2), k.size(2)}, torch::kBool);
  for (size_t i = 0; i < qpos.size(); ++i)
    for (size_t j = 0; j < kpos.size(); ++j) blocked[i][j] = kpos[j] > qpos[i];
  return torch::matmul(torch::softmax(s.masked_fill(blocked, -INFINITY), -1), v);
}

// The model by hand (sec. 3): E = embed * sqrt(C); z0 = W_z E[T-N:] + b_z; cross-attention q = LN_q(z0), k/v =
// LN_kv(E), rotary on q and k; z = z0 + W_o attn; z += MLP(LN(z)) with squared ReLU; L pre-LN causal self-attention
// blocks over the latents with rotary; logits = LN(z) E^T. Double precision throughout.
torch::Tensor reference(PerceiverARImpl& m, const torch::Tensor& tokens, int64_t N, int64_t layers,
                        std::vector<int64_t> kept = {}) {
  torch::NoGradGuard ng;
  auto P = [&](const std::string& name) { return param(m, name).to(torch::kDouble); };
  auto lin = [&](const torch::Tensor& x, const std::string& name) {
    return torch::matmul(x, P(name + ".weight").t()) + P(name + ".bias");
  };
  auto ln = [&](const torch::Tensor& x, const std::string& name) {
    return torch::layer_norm(x, {kC}, P(name + ".weight"), P(name + ".bias"), 1e-5);
  };
  auto mlp = [&](const torch::Tensor& x, const std::string& name) {
    return lin(torch::relu(lin(x, name + ".w_in")).square(), name + ".w_out");
  };
  const int64_t T = tokens.size(1);
  const double W = 64;  // max_len
  auto E = P("embed.weight").index_select(0, tokens.flatten()).view({tokens.size(0), T, kC}) * std::sqrt(double(kC));
  // The keys: the kept context positions (all by default) and the latents' own, each at its own position.
  if (kept.empty())
    for (int64_t j = 0; j < T - N; ++j) kept.push_back(j);
  for (int64_t j = T - N; j < T; ++j) kept.push_back(j);
  std::vector<double> kpos, qpos;
  for (int64_t j : kept) kpos.push_back(double(j));
  for (int64_t i = 0; i < N; ++i) qpos.push_back(double(T - N + i));
  auto z = lin(E.narrow(1, T - N, N), "latent_init");
  auto q = rotate(heads(lin(ln(z, "ln_q"), "cross_q")), qpos, 0.5, W);
  auto kv = lin(ln(E.index_select(1, torch::tensor(kept, torch::kLong)), "ln_kv"), "cross_kv").chunk(2, -1);
  auto k = rotate(heads(kv[0]), kpos, 0.5, W), v = heads(kv[1]);
  z = z + lin(unheads(causal_attend(q, k, v, qpos, kpos)), "cross_out");
  z = z + mlp(ln(z, "ln_cross_ff"), "cross_ff");
  for (int64_t l = 0; l < layers; ++l) {
    const std::string b = "block" + std::to_string(l);
    auto qkv = lin(ln(z, b + ".ln_mix"), b + ".mixer.qkv").chunk(3, -1);
    auto a = causal_attend(rotate(heads(qkv[0]), qpos, 0.5, W), rotate(heads(qkv[1]), qpos, 0.5, W), heads(qkv[2]),
                           qpos, qpos);
    z = z + lin(unheads(a), b + ".mixer.out");
    z = z + mlp(ln(z, b + ".ln_ff"), b + ".ff");
  }
  return torch::matmul(ln(z, "ln_final"), P("embed.weight").t());
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// Every LayerNorm away from its identity start, so swapping or sharing two of them shows.
void randomize_norms(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  for (auto& p : m.named_parameters())
    if (p.key().find("ln") != std::string::npos) p.value().normal_(p.key().find("bias") != std::string::npos ? 0.0 : 1.0, 0.3);
}

TEST(PerceiverAR, AllLatentsWithAnIdentityMapAreACausalDecoderOfLPlusOneLayers) {  // case 1
  torch::manual_seed(1);
  auto m = make(model_json(kT));
  m->eval();
  randomize_norms(*m);
  {
    torch::NoGradGuard ng;
    param(*m, "latent_init.weight").copy_(torch::eye(kC));
    param(*m, "latent_init.bias").zero_();
  }
  auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
  auto got = m->forward(tokens);
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, kT, kV}));
  EXPECT_LT(max_diff(got, reference(*m, tokens, kT, 2)), 1e-4);
}

TEST(PerceiverAR, FewLatentsMatchTheEquationsAndOneLatentReadsEveryInput) {  // the sparse regime N < T; case 6
  torch::manual_seed(2);
  for (int64_t N : {1, 5}) {
    auto m = make(model_json(N));
    m->eval();
    randomize_norms(*m);
    auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
    auto got = m->forward(tokens);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, N, kV}));
    EXPECT_LT(max_diff(got, reference(*m, tokens, N, 2)), 1e-4) << "N = " << N;
    EXPECT_EQ(m->scored_positions(kT), N);
  }
  auto m = make(model_json(1));  // case 6: each input reaches the single latent
  m->eval();
  auto tokens = torch::randint(kV, {1, kT}, torch::kLong);
  auto base = m->forward(tokens);
  for (int64_t j = 0; j < kT; ++j) {
    auto changed = tokens.clone();
    changed[0][j] = (tokens[0][j].item<int64_t>() + 1) % kV;
    EXPECT_GT(max_diff(m->forward(changed), base), 1e-7) << "input " << j;
  }
}

TEST(PerceiverAR, LogitsOfALatentIgnoreEveryLaterInput) {  // case 2, with and without context dropout
  for (double drop : {0.0, 0.5}) {
    torch::manual_seed(3);
    auto j = model_json(6);
    j["context_dropout"] = drop;
    auto m = make(j);
    if (drop > 0) m->train(); else m->eval();
    auto tokens = torch::randint(kV, {1, kT}, torch::kLong);
    auto run = [&](const torch::Tensor& t) {
      torch::manual_seed(7);  // the same dropped positions in both runs
      return m->forward(t);
    };
    auto base = run(tokens);
    for (int64_t pos = kT - 6; pos < kT; ++pos) {  // change position pos: latents before it must not move
      auto changed = tokens.clone();
      changed[0][pos] = (tokens[0][pos].item<int64_t>() + 3) % kV;
      auto out = run(changed);
      const int64_t i = pos - (kT - 6);  // the latent at pos
      if (i > 0) EXPECT_LT(max_diff(out.narrow(1, 0, i), base.narrow(1, 0, i)), 1e-7) << "pos " << pos;
      EXPECT_GT(max_diff(out.narrow(1, i, 1), base.narrow(1, i, 1)), 1e-7) << "pos " << pos;
    }
  }
}

TEST(PerceiverAR, ContextDropoutRemovesExactlyTheDroppedShareOfTheContext) {
  auto j = model_json(4);
  j["context_dropout"] = 0.5;  // prefix 8, floor(0.5 * 8) = 4 dropped
  torch::manual_seed(4);
  auto m = make(j);
  m->train();
  auto tokens = torch::randint(kV, {1, kT}, torch::kLong);
  auto run = [&](const torch::Tensor& t, uint64_t seed) {
    torch::manual_seed(seed);
    return m->forward(t);
  };
  std::set<std::vector<int64_t>> subsets;
  for (uint64_t seed : {11, 12, 13, 14}) {
    auto base = run(tokens, seed);
    std::vector<int64_t> reach;
    for (int64_t pos = 0; pos < kT - 4; ++pos) {
      auto changed = tokens.clone();
      changed[0][pos] = (tokens[0][pos].item<int64_t>() + 5) % kV;
      if (max_diff(run(changed, seed), base) > 1e-7) reach.push_back(pos);
    }
    EXPECT_EQ(reach.size(), 4u) << "seed " << seed;
    subsets.insert(reach);
    // The kept keys keep their own positions: the equations over exactly those keys give the same logits.
    if (reach.size() == 4u) EXPECT_LT(max_diff(base, reference(*m, tokens, 4, 2, reach)), 1e-4) << "seed " << seed;
  }
  EXPECT_GT(subsets.size(), 1u);  // the kept positions are drawn anew
  m->eval();  // evaluation reads the whole context
  auto base = m->forward(tokens);
  for (int64_t pos = 0; pos < kT - 4; ++pos) {
    auto changed = tokens.clone();
    changed[0][pos] = (tokens[0][pos].item<int64_t>() + 5) % kV;
    EXPECT_GT(max_diff(m->forward(changed), base), 1e-7) << pos;
  }
}

TEST(PerceiverAR, RotaryMatchesItsDefinitionAndDependsOnPositionDifferencesOnly) {  // case 3
  torch::manual_seed(5);
  const RotarySpec spec{0.5, 64};
  auto q = torch::randn({1, 2, 5, 12}), k = torch::randn({1, 2, 7, 12});
  auto at = [](int64_t n, double offset, double sign) {
    std::vector<double> p;
    for (int64_t i = 0; i < n; ++i) p.push_back(sign * (3.0 * i + 1) + offset);
    return p;
  };
  auto scores = [&](double offset, double sign) {
    auto pq = at(5, offset, sign), pk = at(7, offset, sign);
    auto rq = apply_rotary(q, torch::tensor(pq, torch::kDouble), spec);
    auto rk = apply_rotary(k, torch::tensor(pk, torch::kDouble), spec);
    EXPECT_LT(max_diff(rq, rotate(q.to(torch::kDouble), pq, 0.5, 64)), 1e-5);
    EXPECT_LT(max_diff(rk, rotate(k.to(torch::kDouble), pk, 0.5, 64)), 1e-5);
    EXPECT_LT(max_diff(rq.narrow(3, 6, 6), q.narrow(3, 6, 6)), 0.0 + 1e-12);  // channels past the fraction untouched
    return torch::matmul(rq, rk.transpose(2, 3));
  };
  auto base = scores(0, 1);
  EXPECT_LT(max_diff(scores(1000, 1), base), 1e-3);  // a common offset: unchanged
  EXPECT_GT(max_diff(scores(0, -1), base), 1e-2);    // negated positions: a different function
  // Per-example positions [B, T] rotate each row at its own positions.
  auto two = torch::randn({2, 1, 3, 8});
  auto pos = torch::tensor({{0, 1, 2}, {5, 9, 20}}, torch::kLong);
  auto got = apply_rotary(two, pos, RotarySpec{1.0, 100});
  EXPECT_LT(max_diff(got.narrow(0, 1, 1), rotate(two.narrow(0, 1, 1).to(torch::kDouble), {5, 9, 20}, 1.0, 100)), 1e-5);
}

TEST(PerceiverAR, CachedDecodingAfterAResetEqualsAFreshPassWithFPlusKLatents) {  // case 4
  auto m = decoding_model(6);
  torch::NoGradGuard ng;
  auto seq = torch::randint(kV, {1, 30}, torch::kLong);
  ModelState st = m->initial_state(1);
  const int64_t prompt = 10;
  auto first = m->forward(seq.narrow(1, 0, prompt), &st);  // empty caches: a pass with max(3, min(10, 8)) = 8 latents
  ASSERT_EQ(first.size(1), 8);
  EXPECT_LT(max_diff(first, m->forward_latents(seq.narrow(1, 0, prompt), 8)), 1e-5);
  int64_t latents = 8, resets = 0;
  for (int64_t L = prompt + 1; L <= 30; ++L) {
    auto step = m->forward(seq.narrow(1, L - 1, 1), &st);
    latents = latents + 1 > 8 ? 3 : latents + 1;  // full caches: refill with 3 latents (the new token's among them)
    resets += latents == 3;
    auto fresh = m->forward_latents(seq.narrow(1, 0, L), latents);
    EXPECT_LT(max_diff(step[0][0], fresh[0][latents - 1]), 1e-5) << "length " << L << ", " << latents << " latents";
  }
  EXPECT_GE(resets, 3);
  // Through generate(): greedy tokens drawn from the cached logits.
  std::vector<torch::Tensor> logits;
  SampleOptions o;
  o.temperature = 0;
  auto ids = generate(*m, {1, 2, 3, 4, 5, 6, 7, 8, 9}, 12, o, &logits);
  ASSERT_EQ(ids.size(), 12u);
  std::vector<int64_t> all = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  all.insert(all.end(), ids.begin(), ids.end());
  auto whole = torch::tensor(all, torch::kLong).unsqueeze(0);
  EXPECT_EQ(ids[0], m->forward_latents(whole.narrow(1, 0, 9), 8)[0][7].argmax().item<int64_t>());
  EXPECT_LT(max_diff(logits[0], m->forward_latents(whole.narrow(1, 0, 9), 8)[0][7]), 1e-5);
}

TEST(PerceiverAR, TrainingModeWithoutDropoutEqualsEvalMode) {  // case 5, and the z-loss
  torch::manual_seed(8);
  auto j = model_json(5);
  j["context_dropout"] = 0.0;
  j["dropout"] = 0.0;
  j["z_loss"] = 0.01;
  auto m = make(j);
  auto tokens = torch::randint(kV, {2, kT}, torch::kLong);
  m->train();
  auto a = m->forward(tokens);
  ASSERT_TRUE(m->aux_loss().defined());  // training only: 0.01 * mean over latents of (log sum exp logits)^2
  EXPECT_NEAR(m->aux_loss().item<double>(), 0.01 * torch::logsumexp(a, -1).square().mean().item<double>(), 1e-6);
  m->eval();
  auto b = m->forward(tokens);
  EXPECT_FALSE(m->aux_loss().defined());
  EXPECT_LT(max_diff(a, b), 1e-7);
  // With residual dropout: eval mode is deterministic and the equations; training mode drops.
  j["dropout"] = 0.3;
  torch::manual_seed(8);
  auto d = make(j);
  d->eval();
  auto e1 = d->forward(tokens), e2 = d->forward(tokens);
  EXPECT_LT(max_diff(e1, e2), 0.0 + 1e-12);
  EXPECT_LT(max_diff(e1, reference(*d, tokens, 5, 2)), 1e-4);
  d->train();
  EXPECT_GT(max_diff(d->forward(tokens), e1), 1e-4);
}

TEST(PerceiverAR, TheUntiedHeadStartsAtZeroAndEvaluationScoresTheLatentTargets) {
  torch::manual_seed(10);
  auto j = model_json(4);
  j["tie_embeddings"] = false;  // the paper's code: a separate output layer initialised to zeros
  auto m = make(j);
  m->eval();
  auto tokens = torch::randint(kV, {1, kT}, torch::kLong);
  EXPECT_LT(m->forward(tokens).abs().max().item<double>(), 1e-12);
  // evaluate_lm over one window of kT + 1 tokens scores exactly the targets of the last 4 positions.
  auto tied = make(model_json(4));
  tied->eval();
  auto seq = torch::randint(kV, {kT + 1}, torch::kLong);
  TokenSplit split;
  split.tokens = seq.to(torch::kInt);
  split.bytes = split.text_bytes = kT + 1;
  auto r = evaluate_lm(*tied, split, 1, kT, 0);
  EXPECT_EQ(r.tokens, 4);
  EXPECT_EQ(r.unscored_head, kT - 4);
  auto logits = tied->forward(seq.narrow(0, 0, kT).unsqueeze(0))[0];  // [4, V] for inputs kT-4 .. kT-1
  auto expect = torch::nn::functional::cross_entropy(logits, seq.narrow(0, kT - 3, 4)).item<double>();
  EXPECT_NEAR(r.loss, expect, 1e-5);
}

// ModelState::reorder (a beam's pruning) reorders the cross cache, the token window and the latent layers' states: the
// continuation equals decoding the selected rows from scratch, across refills.
TEST(PerceiverAR, ReorderedStateContinuesTheSelectedRows) {
  auto m = decoding_model(15);
  torch::NoGradGuard ng;
  auto seq = torch::randint(kV, {3, 10}, torch::kLong), next = torch::randint(kV, {4, 8}, torch::kLong);
  const auto index = torch::tensor({2, 0, 0, 1}, torch::kLong);
  ModelState st = m->initial_state(3), ref = m->initial_state(4);
  m->forward(seq, &st);
  EXPECT_THROW(st.reorder(torch::tensor({3}, torch::kLong)), Error);
  st.reorder(index);
  m->forward(seq.index_select(0, index), &ref);
  for (int64_t t = 0; t < 8; ++t)  // past 8 latents: refills
    EXPECT_LT(max_diff(m->forward(next.narrow(1, t, 1), &st), m->forward(next.narrow(1, t, 1), &ref)), 1e-6) << t;
}

TEST(PerceiverAR, DecodingPastMaxLenReadsTheLastMaxLenInputsAtEachRefill) {
  torch::manual_seed(14);
  auto j = model_json(8);
  j["reset_latents"] = 3;
  j["max_len"] = 20;
  j["rotary_max_wavelength"] = 64;  // the same function as the reference's W, whatever the window
  auto m = make(j);
  m->eval();
  torch::NoGradGuard ng;
  auto seq = torch::randint(kV, {1, 60}, torch::kLong);
  ModelState st = m->initial_state(1);
  m->forward(seq.narrow(1, 0, 10), &st);
  int64_t latents = 8, start = 0;  // the window's first input
  for (int64_t L = 11; L <= 60; ++L) {
    auto step = m->forward(seq.narrow(1, L - 1, 1), &st);
    if (latents + 1 > 8) latents = 3, start = std::max<int64_t>(start, L - 20);  // a refill trims the window
    else ++latents;
    // Rotary logits depend on position differences only: a fresh pass over the window, positions from 0.
    auto fresh = m->forward_latents(seq.narrow(1, start, L - start), latents);
    EXPECT_LT(max_diff(step[0][0], fresh[0][latents - 1]), 1e-4) << "length " << L;
  }
  EXPECT_GT(start, 30);
}

TEST(PerceiverAR, PaddedContextKeysDoNotReachTheLatents) {
  torch::manual_seed(9);
  auto m = make(model_json(4));
  m->eval();
  auto tokens = torch::randint(kV, {1, kT}, torch::kLong);
  auto pad = torch::zeros({1, kT}, torch::kBool);
  pad.narrow(1, 0, 3).fill_(true);
  auto base = m->forward(tokens, nullptr, pad);
  auto changed = tokens.clone();
  changed.narrow(1, 0, 3).fill_(0);
  EXPECT_LT(max_diff(m->forward(changed, nullptr, pad), base), 1e-7);
  EXPECT_GT(max_diff(m->forward(changed), base), 1e-7);
}

TEST(PerceiverAR, ConfigErrorsNameTheKey) {
  auto expect_error = [](Json j, const std::string& needle) {
    try {
      ModelConfig c = ModelConfig::from_json(j);
      PerceiverAR m(c);
      ADD_FAILURE() << "no error for " << j.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto j = model_json(4);
  j["reset_latents"] = 4;
  expect_error(j, "reset_latents");
  j = model_json(4);
  j["mixer"] = "linear";  // rotary positions need a mixer that applies them
  expect_error(j, "rotary");
  j = model_json(4);
  j["recurrence_steps"] = 2;
  expect_error(j, "perceiver_ar");
  expect_error({{"type", "decoder_lm"}, {"positions", "rotary"}}, "rotary");
  j = model_json(4);
  j["positions"] = "sinusoidal";
  j["mixer"] = "linear";  // any causal mixer with absolute positions
  auto m = make(j);
  m->eval();
  EXPECT_EQ(m->forward(torch::randint(kV, {1, kT}, torch::kLong)).size(1), 4);
}

}  // namespace perceiver_ar_test
