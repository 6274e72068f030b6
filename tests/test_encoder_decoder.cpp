// The original Transformer's encoder-decoder (src/models/encoder_decoder.cpp; Vaswani et al. 2017, sec. 3): decoder
// causality, source padding, streaming == whole decode, the three-way tie (sec. 3.4), post- vs pre-norm (sec. 3.1),
// greedy == beam 1 over the model, the reordered decoding state, cached == recomputing translation, and config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "longseq/common.h"
#include "longseq/encoder_decoder.h"
#include "longseq/layers.h"

namespace encoder_decoder_test {

using namespace longseq;

constexpr int64_t kV = 13;

EncoderDecoderConfig small_config(bool post_norm = true) {
  EncoderDecoderConfig c;
  c.vocab_size = kV, c.d_model = 16, c.n_heads = 2, c.n_layers = 2, c.d_ff = 32, c.dropout = 0.1;
  c.post_norm = post_norm;
  return c;
}

EncoderDecoder small_model(bool post_norm = true, uint64_t seed = 0) {
  torch::manual_seed(seed);
  EncoderDecoder m(small_config(post_norm));
  m->eval();  // dropout off: the checks compare deterministic outputs
  return m;
}

torch::Tensor tokens(int64_t B, int64_t T) { return torch::randint(2, kV, {B, T}, torch::kLong); }

// Source [2, 7] whose second row ends in three pads, and its mask (true = pad).
std::pair<torch::Tensor, torch::Tensor> padded_source() {
  auto src = tokens(2, 7);
  auto pad = torch::zeros({2, 7}, torch::kBool);
  pad[1].slice(0, 4).fill_(true);
  src[1].slice(0, 4).fill_(0);
  return {src, pad};
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(EncoderDecoder, DecoderIsCausal) {
  for (bool post : {true, false}) {
    auto m = small_model(post, 1);
    torch::NoGradGuard no_grad;
    auto [src, pad] = padded_source();
    auto tgt = tokens(2, 8);
    auto base = m->forward(src, tgt, pad);
    for (int64_t t = 0; t + 1 < 8; ++t) {
      auto changed = tgt.clone();
      // Every later token moved to a different non-special id: (x - 2 + r) mod (V - 2) + 2 with r in [1, V - 3].
      auto r = torch::randint(1, kV - 2, {2, 8 - t - 1}, torch::kLong);
      changed.slice(1, t + 1) = (tgt.slice(1, t + 1) - 2 + r).remainder(kV - 2) + 2;
      auto out = m->forward(src, changed, pad);
      EXPECT_LT(max_diff(out.slice(1, 0, t + 1), base.slice(1, 0, t + 1)), 1e-5) << "t " << t << " post " << post;
      EXPECT_GT(max_diff(out.slice(1, t + 1), base.slice(1, t + 1)), 1e-4) << "t " << t << " post " << post;
    }
  }
}

TEST(EncoderDecoder, SourcePaddingChangesNoLogits) {
  for (bool post : {true, false}) {
    auto m = small_model(post, 2);
    torch::NoGradGuard no_grad;
    auto [src, pad] = padded_source();
    auto tgt = tokens(2, 5);
    auto base = m->forward(src, tgt, pad);
    auto other = src.clone();
    other.masked_scatter_(pad, torch::randint(2, kV, {pad.sum().item<int64_t>()}, torch::kLong));
    ASSERT_GT(max_diff(other.to(torch::kDouble), src.to(torch::kDouble)), 0);
    EXPECT_LT(max_diff(m->forward(other, tgt, pad), base), 1e-5) << "post " << post;
    // The real source tokens do reach the decoder through encoder-decoder attention.
    auto real = src.clone();
    real[1][0] = real[1][0].item<int64_t>() == 2 ? 3 : 2;
    EXPECT_GT(max_diff(m->forward(real, tgt, pad)[1], base[1]), 1e-4);
  }
}

TEST(EncoderDecoder, StreamingEqualsWholeDecode) {
  for (bool post : {true, false}) {
    auto m = small_model(post, 3);
    torch::NoGradGuard no_grad;
    auto [src, pad] = padded_source();
    auto tgt = tokens(2, 9);
    auto memory = m->encode(src, pad);
    auto whole = m->decode(tgt, memory, pad);
    for (int64_t step : {1, 2}) {
      auto state = m->initial_state(memory, pad);
      std::vector<torch::Tensor> parts;
      for (int64_t t = 0; t < 9; t += step) {
        const int64_t n = std::min<int64_t>(step, 9 - t);
        parts.push_back(m->decode(tgt.slice(1, t, t + n), {}, {}, &state));
      }
      EXPECT_EQ(state.offset, 9);
      EXPECT_LT(max_diff(torch::cat(parts, 1), whole), 1e-5) << "step " << step << " post " << post;
    }
  }
}

TEST(EncoderDecoder, OneEmbeddingTiedThreeWays) {
  auto m = small_model(true, 4);
  int64_t with_vocab = 0;
  for (const auto& p : m->named_parameters())
    for (int64_t d = 0; d < p.value().dim(); ++d)
      if (p.value().size(d) == kV) ++with_vocab;
  EXPECT_EQ(with_vocab, 1);  // no separate source, target or output matrix
  auto [src, pad] = padded_source();
  auto tgt = tokens(2, 5);
  auto memory = m->encode(src, pad);
  auto hidden = m->decode_hidden(tgt, memory, pad);
  auto logits = m->decode(tgt, memory, pad);
  EXPECT_LT(max_diff(logits, torch::matmul(hidden, m->embedding()->weight.t())), 1e-6);
  // The one matrix gets gradient from the output projection alone when the inputs do not use a row.
  m->zero_grad();
  const int64_t unused = 2;
  auto s2 = src.masked_fill(src == unused, 3), t2 = tgt.masked_fill(tgt == unused, 3);
  m->forward(s2, t2, pad).select(2, unused).sum().backward();
  auto g = m->embedding()->weight.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_GT(g[unused].abs().sum().item<double>(), 0);  // through the output projection only
}

TEST(EncoderDecoder, PostNormAndPreNorm) {
  auto [src, pad] = padded_source();
  auto tgt = tokens(2, 5);
  for (bool post : {true, false}) {
    auto m = small_model(post, 5);
    torch::NoGradGuard no_grad;
    auto logits = m->forward(src, tgt, pad);
    EXPECT_EQ(logits.sizes(), torch::IntArrayRef({2, 5, kV}));
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
    bool has_final = false;
    for (const auto& p : m->named_parameters()) has_final |= p.key().rfind("encoder_ln", 0) == 0;
    EXPECT_EQ(has_final, !post);  // sec. 3.1 post-norm needs no final LayerNorm; pre-norm does
    if (post) {  // the last encoder layer ends in LN(. + FF(.)): unit-variance rows under default affine weights
      auto memory = m->encode(src, pad);
      EXPECT_LT(memory.mean(-1).abs().max().item<double>(), 1e-5);
      EXPECT_LT((memory.var(-1, false) - 1).abs().max().item<double>(), 1e-3);
    }
  }
  // Same seed, both wirings: different functions.
  auto a = small_model(true, 6), b = small_model(false, 6);
  torch::NoGradGuard no_grad;
  EXPECT_GT(max_diff(a->forward(src, tgt, pad), b->forward(src, tgt, pad)), 1e-3);
}

TEST(EncoderDecoder, GreedyEqualsBeamOne) {
  for (uint64_t seed : {7, 8}) {
    auto m = small_model(seed % 2 == 1, seed);
    auto src = tokens(1, 6)[0];
    BeamOptions o;
    o.beam = 1, o.alpha = 0, o.max_len = 8, o.eos = 2;
    auto greedy = translate_greedy(*m, src, o);
    auto beam = translate_beam(*m, src, o);
    EXPECT_EQ(greedy.tokens, beam.tokens) << seed;
    EXPECT_NEAR(greedy.log_prob, beam.log_prob, 1e-9) << seed;
    // A wider beam runs too.
    o.beam = 3;
    auto wide = translate_beam(*m, src, o);
    EXPECT_FALSE(wide.tokens.empty());
  }
}

EncoderDecoder model_with_decoder(const Json& mixer, uint64_t seed) {
  auto c = small_config(seed % 2 == 0);
  c.decoder_mixer = parse_mixer_spec(mixer, "test");
  torch::manual_seed(seed);
  EncoderDecoder m(c);
  m->eval();
  return m;
}

// A state reordered to rows `index` continues as the selected sentences' decodes from scratch (the source padding and
// the cross keys follow the rows).
TEST(EncoderDecoder, ReorderedStateContinuesTheSelectedSentences) {
  auto m = small_model(true, 4);
  torch::NoGradGuard no_grad;
  auto [src, pad] = padded_source();
  auto tgt = tokens(2, 5), next = tokens(3, 2);
  const auto index = torch::tensor({1, 0, 1}, torch::kLong);
  auto memory = m->encode(src, pad);
  auto state = m->initial_state(memory, pad);
  m->decode(tgt, {}, {}, &state);
  EXPECT_THROW(state.reorder(torch::tensor({2}, torch::kLong)), Error);
  state.reorder(index);
  auto got = m->decode(next, {}, {}, &state);
  auto whole = m->decode(torch::cat({tgt.index_select(0, index), next}, 1), memory.index_select(0, index),
                         pad.index_select(0, index));
  EXPECT_LT(max_diff(got, whole.narrow(1, 5, 2)), 1e-5);
}

// The cached step (one token per hypothesis, the state reordered by the parents) finds what recomputing every prefix
// finds, for full attention and for a streaming linear-time decoder mixer.
TEST(EncoderDecoder, CachedBeamEqualsRecomputingBeam) {
  for (const Json& mixer : {Json{{"name", "full"}}, Json{{"name", "linear"}}}) {
    auto m = model_with_decoder(mixer, 5);
    EXPECT_TRUE(translation_can_cache(*m));
    for (int64_t s = 0; s < 3; ++s) {
      auto src = tokens(1, 5 + s)[0];
      BeamOptions o;
      o.beam = 4, o.alpha = 0.6, o.max_len = 10, o.eos = 2;
      auto cached = translate_beam(*m, src, o, TranslationDecoding::kCached);
      auto recomputed = translate_beam(*m, src, o, TranslationDecoding::kRecompute);
      EXPECT_EQ(cached.tokens, recomputed.tokens) << mixer.dump() << " sentence " << s;
      EXPECT_NEAR(cached.score, recomputed.score, 1e-4) << mixer.dump() << " sentence " << s;
      EXPECT_NEAR(cached.log_prob, recomputed.log_prob, 1e-4) << mixer.dump() << " sentence " << s;
      EXPECT_EQ(translate_beam(*m, src, o).tokens, cached.tokens) << "kAuto takes the cache";
    }
  }
}

// Sentences of different lengths translated together (padded source, one decoder call per position) give what each
// gives alone, cached and recomputing.
TEST(EncoderDecoder, BatchedTranslationEqualsEachSentenceAlone) {
  for (const Json& mixer : {Json{{"name", "full"}}, Json{{"name", "routing"}, {"clusters", 1}}}) {
    auto m = model_with_decoder(mixer, 10);
    std::vector<torch::Tensor> sources = {tokens(1, 6)[0], tokens(1, 3)[0], tokens(1, 8)[0]};
    BeamOptions o;
    o.beam = 3, o.alpha = 0.6, o.max_len = 9, o.eos = 2;
    auto got = translate_batch(*m, sources, o);
    ASSERT_EQ(got.size(), sources.size());
    for (size_t s = 0; s < sources.size(); ++s) {
      auto want = translate_beam(*m, sources[s], o);
      EXPECT_EQ(got[s].tokens, want.tokens) << mixer.dump() << " sentence " << s;
      EXPECT_NEAR(got[s].score, want.score, 1e-4) << mixer.dump() << " sentence " << s;
    }
  }
  auto m = small_model(true, 11);
  EXPECT_THROW(translate_batch(*m, {}, BeamOptions{}), Error);
  EXPECT_THROW(translate_batch(*m, {tokens(2, 3)}, BeamOptions{}), Error);
}

TEST(EncoderDecoder, CachedGreedyEqualsBeamOne) {
  auto m = small_model(false, 9);
  auto src = tokens(1, 6)[0];
  BeamOptions o;
  o.beam = 1, o.alpha = 0, o.max_len = 8, o.eos = 2;
  auto greedy = translate_greedy(*m, src, o, TranslationDecoding::kCached);
  auto beam = translate_beam(*m, src, o, TranslationDecoding::kCached);
  EXPECT_EQ(greedy.tokens, beam.tokens);
  EXPECT_NEAR(greedy.log_prob, beam.log_prob, 1e-9);
  EXPECT_EQ(greedy.tokens, translate_greedy(*m, src, o, TranslationDecoding::kRecompute).tokens);
}

// routing with one cluster is a strictly causal decoder mixer without a streaming state: kAuto recomputes, silently;
// kCached says why it cannot.
TEST(EncoderDecoder, DecoderMixerThatCannotStreamStillTranslates) {
  auto m = model_with_decoder(Json{{"name", "routing"}, {"clusters", 1}}, 6);
  EXPECT_FALSE(translation_can_cache(*m));
  auto src = tokens(1, 6)[0];
  BeamOptions o;
  o.beam = 3, o.max_len = 6, o.eos = 2;
  auto autod = translate_beam(*m, src, o);
  auto recomputed = translate_beam(*m, src, o, TranslationDecoding::kRecompute);
  EXPECT_FALSE(autod.tokens.empty());
  EXPECT_EQ(autod.tokens, recomputed.tokens);
  try {
    translate_beam(*m, src, o, TranslationDecoding::kCached);
    ADD_FAILURE() << "kCached decoded a mixer that cannot stream";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("routing"), std::string::npos) << e.what();
  }
}

void expect_error_naming(const EncoderDecoderConfig& c, const std::string& field) {
  try {
    validate(c);
    ADD_FAILURE() << "no error for " << field;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

TEST(EncoderDecoder, ConfigErrorsNameTheField) {
  EXPECT_NO_THROW(validate(small_config()));
  auto c = small_config();
  c.vocab_size = 2;
  expect_error_naming(c, "vocab_size");
  c = small_config();
  c.d_model = 10, c.n_heads = 3;
  expect_error_naming(c, "d_model");
  EXPECT_THROW(EncoderDecoder{c}, Error);
  c = small_config();
  c.encoder_mixer.name = "no_such_mixer";
  expect_error_naming(c, "encoder_mixer");
  c = small_config();
  c.decoder_mixer.options = Json{{"no_such_option", 1}};
  expect_error_naming(c, "decoder_mixer");
  for (const auto& info : mixer_registry()) {
    if (!info.supports_bidirectional) {
      c = small_config();
      c.encoder_mixer = MixerSpec{info.name, Json::object()};
      expect_error_naming(c, "encoder_mixer");
    }
    if (!info.supports_causal || !info.strictly_causal) {  // lsh and routing: later tokens shape the buckets
      c = small_config();
      c.decoder_mixer = MixerSpec{info.name, Json::object()};
      expect_error_naming(c, "decoder_mixer");
    }
  }
  // lsh with the options that make it strictly causal is accepted.
  c = small_config();
  c.decoder_mixer = parse_mixer_spec(Json{{"name", "lsh"}, {"chunk_length", 1000000000}}, "test");
  EXPECT_NO_THROW(validate(c));
  // A layer over another mixer's core has the core's properties: sparse QKV over routing would leak the target,
  // unless its core spec sets routing's strictly causal options; over yoso it has no causal form at all.
  c = small_config();
  c.decoder_mixer = parse_mixer_spec(Json{{"name", "sparse_qkv"}, {"core", "routing"}}, "test");
  expect_error_naming(c, "decoder_mixer");
  c.decoder_mixer = parse_mixer_spec(Json{{"name", "sparse_qkv"}, {"core", {{"name", "routing"}, {"clusters", 1}}}}, "test");
  EXPECT_NO_THROW(validate(c));
  c.decoder_mixer = parse_mixer_spec(Json{{"name", "sparse_qkv"}, {"core", "yoso"}}, "test");
  expect_error_naming(c, "decoder_mixer");
  c.encoder_mixer = parse_mixer_spec(Json{{"name", "sparse_qkv"}, {"core", "yoso"}}, "test");
  c.decoder_mixer = small_config().decoder_mixer;
  EXPECT_NO_THROW(validate(c));
}

// The Universal Transformer in both stacks (Dehghani et al. 2019, sec. 2.1-2.2).
EncoderDecoderConfig universal_config(bool act) {
  auto c = small_config(false);
  c.recurrence_steps = 3, c.act = act, c.act_bias_init = act ? -1.0 : 1.0;  // ACT: some positions take several steps
  return c;
}

// The paper's definition written out: h_0 = sqrt(d) E[src], h_t = Block(h_{t-1} + P_pos + P_t) with the sinusoids
// of Vaswani et al. 2017, sec. 3.5 (PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i + 1) = cos(...)) for the position and
// for the step; the encoder of one block applied twice must equal it.
TEST(UniversalEncoderDecoder, EncoderIsItsBlockAppliedPerStepWithCoordinates) {
  auto c = small_config(true);
  c.n_layers = 1, c.recurrence_steps = 2;
  torch::manual_seed(5);
  EncoderDecoder m(c);
  m->eval();
  torch::NoGradGuard no_grad;
  auto src = tokens(2, 6);
  auto pe = [&](double p) {
    auto out = torch::empty({c.d_model}, torch::kFloat);
    for (int64_t i = 0; i < c.d_model; i += 2) {
      const double a = p / std::pow(10000.0, static_cast<double>(i) / static_cast<double>(c.d_model));
      out[i] = std::sin(a), out[i + 1] = std::cos(a);
    }
    return out;
  };
  std::vector<torch::Tensor> rows;
  for (int64_t p = 0; p < 6; ++p) rows.push_back(pe(static_cast<double>(p)));
  const auto positions = torch::stack(rows);
  auto block = std::dynamic_pointer_cast<LayerImpl>(m->named_children()["encoder_0"]);
  ASSERT_TRUE(block);
  MixContext ctx;
  auto h = m->embedding()->forward(src) * std::sqrt(static_cast<double>(c.d_model));
  for (int64_t t = 1; t <= 2; ++t) h = block->forward(h + positions + pe(static_cast<double>(t)), ctx);
  EXPECT_LT(max_diff(m->encode(src), h), 1e-5);
  // One set of weights: the parameters of a one-step model (recurrence off, one layer per stack).
  c.recurrence_steps = 0;
  EncoderDecoder plain(c);
  EXPECT_EQ(m->parameters().size(), plain->parameters().size());
}

TEST(UniversalEncoderDecoder, CausalPaddedAndDecodedThroughEveryStepsCache) {
  for (bool act : {false, true}) {
    torch::manual_seed(6);
    EncoderDecoder m(universal_config(act));
    m->eval();
    torch::NoGradGuard no_grad;
    auto [src, pad] = padded_source();
    auto tgt = tokens(2, 7);
    auto memory = m->encode(src, pad);
    auto whole = m->decode(tgt, memory, pad);
    // Causal: later target tokens change no earlier logits.
    auto changed = tgt.clone();
    changed.slice(1, 4) = (tgt.slice(1, 4) - 1).remainder(kV - 2) + 2;
    auto other = m->decode(changed, memory, pad);
    EXPECT_LT(max_diff(other.slice(1, 0, 4), whole.slice(1, 0, 4)), 1e-5) << "act " << act;
    EXPECT_GT(max_diff(other.slice(1, 4), whole.slice(1, 4)), 1e-4) << "act " << act;
    // The source's padding changes nothing.
    auto src2 = src.clone();
    src2.masked_scatter_(pad, torch::randint(2, kV, {pad.sum().item<int64_t>()}, torch::kLong));
    EXPECT_LT(max_diff(m->forward(src2, tgt, pad), m->forward(src, tgt, pad)), 1e-5) << "act " << act;
    // Token by token through the state (a cache per layer and step) equals the whole decode.
    auto state = m->initial_state(memory, pad);
    EXPECT_EQ(state.layers.size(), 2u * 3u);
    std::vector<torch::Tensor> parts;
    for (int64_t t = 0; t < 7; ++t) parts.push_back(m->decode(tgt.slice(1, t, t + 1), {}, {}, &state));
    EXPECT_LT(max_diff(torch::cat(parts, 1), whole), 1e-5) << "act " << act;
  }
}

TEST(UniversalEncoderDecoder, ActPondersInBothStacksAndItsCostTrainsTheHaltingUnits) {
  torch::manual_seed(7);
  EncoderDecoder m(universal_config(true));
  auto [src, pad] = padded_source();
  auto logits = m->forward(src, tokens(2, 5), pad);
  ASSERT_TRUE(m->aux_loss().defined() && m->ponder().defined());
  const double ponder = m->ponder().item<double>();
  EXPECT_GE(ponder, 1.0);
  EXPECT_LE(ponder, 3.0 + 1.0);  // N <= the cap, R <= 1
  EXPECT_GT(ponder, 1.5) << "halting bias -1: positions take more than one step";
  (logits.sum() * 0 + m->aux_loss()).backward();
  for (const char* unit : {"encoder_halting.weight", "decoder_halting.weight"}) {
    auto p = m->named_parameters()[unit];
    ASSERT_TRUE(p.grad().defined()) << unit;
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0) << unit;
  }
  // Without ACT there is no cost.
  EncoderDecoder plain(universal_config(false));
  plain->forward(src, tokens(2, 5), pad);
  EXPECT_FALSE(plain->aux_loss().defined());
  auto c = universal_config(true);
  c.recurrence_steps = 0;
  EXPECT_THROW(validate(c), Error);
}

}  // namespace encoder_decoder_test
