// Translation runs (model.type = encoder_decoder): config rules, the corpus, training through the shared trainer
// (resume exact, learning), batched decoding, checkpoint averaging, and label smoothing in the LM task.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/safetensors.h"
#include "longseq/synthetic_translation.h"
#include "longseq/train.h"
#include "longseq/translation_run.h"

using namespace longseq;

namespace translation_run_test {

Json tiny_translation(int64_t steps) {
  return {{"model", {{"type", "encoder_decoder"}, {"vocab_size", 259}, {"d_model", 32}, {"n_heads", 2},
                     {"n_layers", 1}, {"d_ff", 64}, {"dropout", 0.1}}},
          {"data", {{"corpus", "synthetic_translation"}, {"pairs", 200}}},
          {"train", {{"steps", steps}, {"batch_tokens", 1200}, {"seq_len", 160}, {"lr", 3e-3}, {"warmup", 2},
                     {"label_smoothing", 0.1}, {"eval_every", 5}, {"log_every", 1}, {"checkpoint_every", 4},
                     {"accum", 2}, {"bleu_sentences", 4}, {"keep_checkpoints", 2}}}};
}

using longseq_test::expect_config_error;

TEST(TranslationConfig, BadCombinationsNameTheKey) {
  RunConfig::from_json(tiny_translation(4));  // the base is valid
  Json j = tiny_translation(4);
  j["data"] = {{"corpus", "pydoc"}};
  expect_config_error(j, "data.corpus must be parallel or synthetic_translation");
  j = tiny_translation(4);
  j["model"]["type"] = "decoder_lm";
  j["model"]["vocab_size"] = 256;
  expect_config_error(j, "it needs model.type = encoder_decoder");
  j = tiny_translation(4);
  j["model"]["vocab_size"] = 256;
  expect_config_error(j, "set model.vocab_size to 259");
  j = tiny_translation(4);
  j["model"]["positions"] = "learned";
  expect_config_error(j, "model.positions");
  j = tiny_translation(4);
  j["model"]["ff"] = "moe";
  expect_config_error(j, "model.ff");
  j = tiny_translation(4);
  j["model"]["layers"] = Json::array({"full"});
  expect_config_error(j, "model.layers");
  j = tiny_translation(4);
  j["model"]["decoder_mixer"] = "routing";  // causal, but clusters drawn over the whole target let later tokens in
  expect_config_error(j, "decoder_mixer");
  j = tiny_translation(4);
  j["model"]["mixer"] = "xl";  // causal only: no bidirectional encoder
  expect_config_error(j, "bidirectional");
  j = tiny_translation(4);
  j["train"]["stream"] = true;
  expect_config_error(j, "train.stream");
  j = tiny_translation(4);
  j["train"]["schedule"] = "noam";  // lr 3e-3 as a factor on the paper's formula
  expect_config_error(j, "train.lr");
  j["train"]["lr"] = 1.0;
  j["train"]["warmup"] = 4000;  // longer than the run: fine for noam, whose warm-up is the paper's
  RunConfig::from_json(j);
}

TEST(TranslationCorpus, SyntheticHeldOutSourcesAreUnseenInTraining) {
  Json d = {{"corpus", "synthetic_translation"}, {"pairs", 2000}, {"pairs_seed", 3}};
  RunConfig c = RunConfig::from_json({{"model", tiny_translation(4)["model"]}, {"data", d}});
  auto s = read_translation_corpus(c.data);
  EXPECT_EQ(s.train.source.size(), 1800u);
  EXPECT_GT(s.valid.source.size(), 0u);
  EXPECT_LE(s.valid.source.size(), 100u);
  const std::set<std::string> seen(s.train.source.begin(), s.train.source.end());
  for (const auto* held : {&s.valid, &s.test}) {
    ASSERT_EQ(held->source.size(), held->target.size());
    for (const auto& src : held->source) EXPECT_FALSE(seen.count(src)) << src;
  }
}

TEST(TranslationCorpus, ParallelDirectoryLayoutAndMissingFiles) {
  const auto dir = longseq_test::scratch_dir("translation_corpus");
  longseq_test::write_text(dir + "/train.de", "ein Hund\nzwei Katzen\n\ndrei\n");
  longseq_test::write_text(dir + "/train.en", "a dog\ntwo cats\nthree\n\n");
  Json j = tiny_translation(4);
  j["data"] = {{"corpus", "parallel"}, {"path", dir}};
  RunConfig c = RunConfig::from_json(j);
  try {
    read_translation_corpus(c.data);
    ADD_FAILURE() << "no error for a missing valid split";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("valid.de"), std::string::npos) << e.what();
  }
  longseq_test::write_text(dir + "/valid.de", "vier Hunde\nfünf\n");
  longseq_test::write_text(dir + "/valid.en", "four dogs\n");
  try {
    read_translation_corpus(c.data);
    ADD_FAILURE() << "no error for misaligned valid files";
  } catch (const Error& e) {  // both files and both counts
    for (const char* part : {"valid.de", "valid.en", "2", "1"})
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir + "/valid.de");
  std::filesystem::remove(dir + "/valid.en");
  longseq_test::write_text(dir + "/valid.de.sgm",
                           "<srcset>\n<doc docid=\"a\">\n<seg id=\"1\"> vier  Hunde </seg>\n</doc>\n");
  longseq_test::write_text(dir + "/valid.en.sgm",
                           "<refset>\n<doc docid=\"a\">\n<seg id=\"1\">four dogs</seg>\n</doc>\n");
  auto s = read_translation_corpus(c.data);
  EXPECT_EQ(s.train.source, (std::vector<std::string>{"ein Hund", "zwei Katzen"}));  // pairs with an empty side go
  EXPECT_EQ(s.valid.source, std::vector<std::string>{"vier Hunde"});
  EXPECT_EQ(s.valid.target, std::vector<std::string>{"four dogs"});
  EXPECT_TRUE(s.test.source.empty());
}

TEST(TranslationRun, ResumeAfterKillReproducesLossesBitForBit) {
  const auto dir = longseq_test::scratch_dir("translation_resume");
  auto cfg = RunConfig::from_json(tiny_translation(14));
  // The killed run's last checkpoint is step 8; 14 steps x 2 micro-batches run past one epoch.
  auto whole = longseq_test::expect_exact_resume(cfg, dir, 10);
  EXPECT_TRUE(whole.valid_fields.contains("valid_bleu"));
  EXPECT_EQ(whole.valid_fields["valid_bleu_sentences"], 4);
  EXPECT_TRUE(std::isfinite(whole.valid.loss));
  // keep_checkpoints = 2: the last two checkpoints' weights are kept, the older ones removed.
  auto kept = kept_checkpoints(dir + "/whole");
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].first, 12);
  EXPECT_EQ(kept[1].first, 14);
}

TEST(TranslationRun, LossFallsAndTheRunTranslates) {
  const auto dir = longseq_test::scratch_dir("translation_learns");
  Json j = tiny_translation(40);
  j["train"]["eval_every"] = 0;
  auto cfg = RunConfig::from_json(j);
  auto r = train_run(&cfg, longseq_test::quiet(dir + "/run"));
  ASSERT_EQ(r.losses.size(), 40u);
  const double first = (r.losses[0] + r.losses[1]) / 2, last = (r.losses[38] + r.losses[39]) / 2;
  EXPECT_LT(last, first - 1.0) << first << " -> " << last;  // bytes: ln 259 = 5.56 at the start
  auto run = load_translation_run(dir + "/run");
  const std::vector<std::string> src = {"Der Hund sieht die Katze.", ""};
  DecodeOptions o;
  o.beam = 2, o.extra_len = 8;
  auto out = translate_sentences(*run.model, *run.tokenizer, run.ids, src, o);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_LE(out[0].size(), src[0].size() + 1 + 8u);  // at most source + EOS + extra tokens, bytes here
  EXPECT_EQ(out[1], "");
  EXPECT_THROW(load_run(dir + "/run"), Error);  // a translation run is not a language model
}

TEST(TranslationRun, BatchedGreedyEqualsOneSentenceAtATime) {
  torch::manual_seed(5);
  EncoderDecoderConfig c;
  c.vocab_size = 259, c.d_model = 32, c.n_heads = 2, c.n_layers = 2, c.d_ff = 64, c.dropout = 0;
  c.pad_id = 256, c.bos_id = 257;
  EncoderDecoder model(c);
  model->eval();
  auto tok = make_byte_tokenizer();
  const SpecialIds ids = SpecialIds::after(256);
  const auto pairs = synthetic_translation_corpus(7, 2);
  DecodeOptions o;
  o.beam = 1, o.extra_len = 12, o.batch = 3;  // batches of mixed lengths, padded
  auto batched = translate_sentences(*model, *tok, ids, pairs.source, o);
  ASSERT_EQ(batched.size(), pairs.source.size());
  for (size_t i = 0; i < pairs.source.size(); ++i) {
    auto s = tok->encode(pairs.source[i]);
    s.push_back(ids.eos);
    BeamOptions bo;
    bo.eos = ids.eos, bo.max_len = static_cast<int64_t>(s.size()) + o.extra_len;
    auto h = translate_greedy(*model, torch::tensor(s, torch::kLong), bo);
    std::vector<int64_t> text;
    for (int64_t t : h.tokens)
      if (t < 256) text.push_back(t);
      else if (t == ids.eos) break;
    EXPECT_EQ(batched[i], tok->decode(text)) << "sentence " << i;
  }
}

TEST(TranslationRun, AverageIsTheElementwiseMean) {
  const auto dir = longseq_test::scratch_dir("translation_average");
  TensorFile a, b, c;
  a.tensors = {{"w", torch::tensor({1.0f, 10.0f})}, {"v", torch::tensor({0.5f})}};
  b.tensors = {{"v", torch::tensor({1.5f})}, {"w", torch::tensor({3.0f, 20.0f})}};  // order need not match
  c.tensors = {{"w", torch::tensor({1.0f, 2.0f, 3.0f})}, {"v", torch::tensor({0.5f})}};
  save_safetensors(dir + "/a.safetensors", a);
  save_safetensors(dir + "/b.safetensors", b);
  save_safetensors(dir + "/c.safetensors", c);
  auto m = average_weights({dir + "/a.safetensors", dir + "/b.safetensors"});
  EXPECT_TRUE(torch::equal(*m.find("w"), torch::tensor({2.0f, 15.0f})));
  EXPECT_TRUE(torch::equal(*m.find("v"), torch::tensor({1.0f})));
  EXPECT_THROW(average_weights({dir + "/a.safetensors", dir + "/c.safetensors"}), Error);  // shapes differ
  EXPECT_THROW(average_weights({}), Error);
}

TEST(LmTask, LabelSmoothingChangesTheObjectiveNotTheLoggedLoss) {
  const auto dir = longseq_test::scratch_dir("lm_label_smoothing");
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(20000));
  Json j = {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}}},
            {"data", {{"corpus", "text"}, {"path", dir + "/corpus.txt"}}},
            {"train", {{"steps", 3}, {"batch_size", 2}, {"seq_len", 32}, {"warmup", 1}, {"eval_every", 0},
                       {"eval_batches", 1}, {"log_every", 1}}}};
  auto plain = RunConfig::from_json(j);
  j["train"]["label_smoothing"] = 0.1;
  auto smoothed = RunConfig::from_json(j);
  auto a = train_run(&plain, longseq_test::quiet(dir + "/plain"));
  auto b = train_run(&smoothed, longseq_test::quiet(dir + "/smoothed"));
  EXPECT_EQ(a.losses[0], b.losses[0]);  // step 1: same weights, same batch, the same plain cross-entropy logged
  EXPECT_NE(a.losses[2], b.losses[2]);  // the smoothed objective's gradients moved the weights elsewhere
}

}  // namespace translation_run_test
