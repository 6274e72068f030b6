#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

using namespace longseq;

namespace {

RunConfig tiny_run(const std::string& corpus_file, int64_t steps) {
  Json j = {{"model", {{"d_model", 32}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 64}, {"dropout", 0.1}}},
            {"data", {{"corpus", "text"}, {"path", corpus_file}}},
            {"train", {{"steps", steps}, {"batch_size", 4}, {"seq_len", 32}, {"lr", 3e-3}, {"warmup", 5},
                       {"eval_every", 5}, {"eval_batches", 2}, {"log_every", 1}, {"checkpoint_every", 4},
                       {"accum", 2}}}};
  return RunConfig::from_json(j);
}

std::string corpus(const std::string& dir) {
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(40000));
  return dir + "/corpus.txt";
}

std::map<int64_t, double> logged_losses(const std::string& run) {
  std::map<int64_t, double> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    auto j = Json::parse(line);
    if (j.contains("loss")) out[j["step"]] = j["loss"];
  }
  return out;
}

TrainOptions quiet(const std::string& dir, bool resume = false) {
  TrainOptions o;
  o.out_dir = dir;
  o.resume = resume;
  o.quiet = true;
  return o;
}

TEST(Train, LossFallsOnTinyCorpus) {
  auto dir = longseq_test::scratch_dir("train_falls");
  auto cfg = tiny_run(corpus(dir), 40);
  auto r = train_run(&cfg, quiet(dir + "/run"));
  ASSERT_EQ(r.losses.size(), 40u);
  double first = (r.losses[0] + r.losses[1]) / 2, last = (r.losses[38] + r.losses[39]) / 2;
  EXPECT_LT(last, first - 1.0) << "first " << first << " last " << last;
  EXPECT_TRUE(std::isfinite(r.valid.bpb));
  for (auto f : {"config.json", "model.safetensors", "trainer_state.safetensors", "metrics.jsonl"})
    EXPECT_TRUE(path_exists(dir + "/run/" + f)) << f;
  auto run = load_run(dir + "/run");  // the run loads back as written
  EXPECT_EQ(run.model_config.d_model, 32);
}

TEST(Train, ResumeAfterKillReproducesLossesBitForBit) {
  auto dir = longseq_test::scratch_dir("train_resume");
  auto file = corpus(dir);
  auto cfg = tiny_run(file, 14);
  train_run(&cfg, quiet(dir + "/whole"));
  auto opts = quiet(dir + "/killed");
  opts.stop_after = 10;  // dies after step 10; its last checkpoint is step 8
  train_run(&cfg, opts);
  auto resumed = train_run(nullptr, quiet(dir + "/killed", true));
  EXPECT_EQ(resumed.losses.size(), 6u);  // steps 9..14 redone
  auto a = logged_losses(dir + "/whole"), b = logged_losses(dir + "/killed");
  ASSERT_EQ(a.size(), 14u);
  ASSERT_EQ(b.size(), 14u);
  for (const auto& kv : a) EXPECT_EQ(kv.second, b.at(kv.first)) << "step " << kv.first;
}

TEST(Train, ExistingRunIsNeverOverwritten) {
  auto dir = longseq_test::scratch_dir("train_exists");
  auto cfg = tiny_run(corpus(dir), 4);
  train_run(&cfg, quiet(dir + "/run"));
  const auto before = read_file(dir + "/run/model.safetensors");
  EXPECT_THROW(train_run(&cfg, quiet(dir + "/run")), Error);
  EXPECT_EQ(read_file(dir + "/run/model.safetensors"), before);
  auto other = tiny_run(dir + "/corpus.txt", 8);
  try {
    train_run(&other, quiet(dir + "/run", true));
    FAIL() << "resumed with a different config";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("differs"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir + "/run/model.safetensors"), before);
}

TEST(Train, CorruptCheckpointIsReportedAndKept) {
  auto dir = longseq_test::scratch_dir("train_corrupt");
  auto cfg = tiny_run(corpus(dir), 4);
  train_run(&cfg, quiet(dir + "/run"));
  auto state = read_file(dir + "/run/trainer_state.safetensors");
  auto cut = state.substr(0, state.size() / 2);
  longseq_test::write_text(dir + "/run/trainer_state.safetensors", cut);
  try {
    train_run(nullptr, quiet(dir + "/run", true));
    FAIL() << "resumed from a truncated checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("trainer_state.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir + "/run/trainer_state.safetensors"), cut);
}

TEST(Train, CheckpointThatDoesNotMatchConfigIsRejected) {
  auto dir = longseq_test::scratch_dir("train_mismatch");
  auto cfg = tiny_run(corpus(dir), 2);
  train_run(&cfg, quiet(dir + "/run"));
  auto j = Json::parse(read_file(dir + "/run/config.json"));
  j["model"]["d_ff"] = 48;
  write_file_atomic(dir + "/run/config.json", j.dump());
  try {
    load_run(dir + "/run");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match the model"), std::string::npos) << e.what();
  }
}

TEST(Train, MissingCorpusFailsBeforeWritingAnything) {
  auto dir = longseq_test::scratch_dir("train_missing");
  auto cfg = tiny_run(dir + "/no_such_corpus.txt", 2);
  EXPECT_THROW(train_run(&cfg, quiet(dir + "/run")), Error);
  EXPECT_FALSE(path_exists(dir + "/run"));
}

TEST(Schedule, WarmupThenCosineToFloor) {
  EXPECT_DOUBLE_EQ(learning_rate(5, 100, 10, 1.0, 0.1), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(10, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_NEAR(learning_rate(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);
}

TEST(AdamWTest, MatchesClosedFormFirstStep) {
  auto p = torch::tensor({{1.0, -2.0}}, torch::kDouble).requires_grad_(true);
  AdamW opt({{"p", p}}, 0.9, 0.999, 1e-8, 0.1, {"p"});
  (p * torch::tensor({{3.0, -4.0}}, torch::kDouble)).sum().backward();
  opt.step(0.01);
  // First step: decay by (1 - lr*wd), then move lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|).
  EXPECT_NEAR(p[0][0].item<double>(), 1.0 * (1 - 0.001) - 0.01, 1e-9);
  EXPECT_NEAR(p[0][1].item<double>(), -2.0 * (1 - 0.001) + 0.01, 1e-9);
}

}  // namespace
