#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <sstream>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/registry.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

using namespace longseq;

namespace train_test {

RunConfig tiny_run(const std::string& corpus_file, int64_t steps) {
  Json j = {{"model", {{"d_model", 32}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 64}, {"dropout", 0.1}}},
            {"data", {{"corpus", "text"}, {"path", corpus_file}}},
            {"train", {{"steps", steps}, {"batch_size", 4}, {"seq_len", 32}, {"lr", 3e-3},
                       {"warmup", std::min<int64_t>(5, steps - 1)}, {"eval_every", 5}, {"eval_batches", 2},
                       {"log_every", 1}, {"checkpoint_every", 4}, {"accum", 2}}}};
  return RunConfig::from_json(j);
}

std::string corpus(const std::string& dir) {
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(40000));
  return dir + "/corpus.txt";
}

using longseq_test::logged_losses;
using longseq_test::quiet;

// Every metrics line, parsed.
std::vector<Json> metrics_lines(const std::string& run) {
  std::vector<Json> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) out.push_back(Json::parse(line));
  return out;
}

// Options that put each mechanism's random or carried state to work within a few
// steps at T = 32 (redraws, several hash chunks, several blocks and clusters);
// applied to a mixer only where its schema has the key.
Json small_regime(const MixerInfo& info) {
  static const Json wanted = {{"redraw", 2},      {"chunk_length", 4}, {"block", 4},        {"random_blocks", 1},
                              {"window", {4}},    {"clusters", 4},     {"local_window", 4}, {"features", 8},
                              {"length", 3},      {"chunk", 8},        {"hashes", 4},       {"hash_bits", 4},
                              {"states", 3},      {"segment", 8},      {"basis", 8},        {"samples", 4}};
  Json spec = {{"name", info.name}};
  for (const auto& opt : info.schema)
    if (wanted.contains(opt.name))  // a list where the mixer takes one value per layer, else the value
      spec[opt.name] = opt.type == OptionType::Int && wanted[opt.name].is_array() ? wanted[opt.name][0] : wanted[opt.name];
  return spec;
}

std::string step_of(const std::string& safetensors_path) {
  return load_safetensors(safetensors_path).metadata.at("step");
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

// Issue 10: everything that decides a future draw (redraw counters, private
// generators) must be in the checkpoint, so a killed run resumes bit for bit.
TEST(Resume, EveryCausalMixerResumesBitForBit) {
  auto dir = longseq_test::scratch_dir("resume_mixers");
  auto file = corpus(dir);
  std::vector<std::string> differ;
  for (const auto& info : mixer_registry()) {
    if (!info.supports_causal) continue;  // the decoder LM is causal; Resume.EveryMixerSaves... covers the rest
    Json j = {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32}, {"dropout", 0.1},
                         {"mixer", small_regime(info)}}},
              {"data", {{"corpus", "text"}, {"path", file}}},
              {"train", {{"steps", 7}, {"batch_size", 2}, {"seq_len", 32}, {"warmup", 2}, {"eval_every", 3},
                         {"eval_batches", 1}, {"log_every", 1}, {"checkpoint_every", 2}}}};
    auto cfg = RunConfig::from_json(j);
    const std::string whole = dir + "/" + info.name + "_whole", killed = dir + "/" + info.name + "_killed";
    train_run(&cfg, quiet(whole));
    auto opts = quiet(killed);
    opts.stop_after = 5;  // killed after step 5; its last checkpoint is step 4
    train_run(&cfg, opts);
    train_run(nullptr, quiet(killed, true));
    auto a = logged_losses(whole), b = logged_losses(killed);
    ASSERT_EQ(a.size(), 7u) << info.name;
    ASSERT_EQ(b.size(), 7u) << info.name;
    for (const auto& kv : a)
      if (kv.second != b.at(kv.first)) {
        differ.push_back(info.name + " (from step " + std::to_string(kv.first) + ")");
        break;
      }
  }
  std::string list;
  for (const auto& d : differ) list += " " + d;
  EXPECT_TRUE(differ.empty()) << "resumed losses differ from the uninterrupted run for:" << list;
}

// The same property at the mixer level, for every mixer including the
// bidirectional-only ones: a mixer rebuilt from the tensors another one saved
// after some training forwards must make the same next training forwards.
TEST(Resume, EveryMixerSavesWhatDecidesItsNextForwards) {
  std::vector<std::string> differ;
  for (const auto& info : mixer_registry()) {
    const auto spec = parse_mixer_spec(small_regime(info), "test");
    torch::manual_seed(3);
    auto x = torch::randn({2, 32, 16});
    MixContext ctx;
    ctx.causal = info.supports_causal;
    torch::manual_seed(11);
    auto ran = make_mixer(spec, 16, 2, 0);
    ran->train();
    for (int i = 0; i < 3; ++i) {
      torch::manual_seed(100 + i);  // what the trainer does: a seed per step
      ran->forward(x, ctx).sum().backward();
    }
    auto saved = safetensors_parse(safetensors_serialize(module_tensors(*ran)), "saved");
    torch::manual_seed(12);  // a fresh process builds the mixer with other draws, then loads
    auto resumed = make_mixer(spec, 16, 2, 0);
    load_module_tensors(*resumed, saved, "saved");
    resumed->train();
    for (int i = 3; i < 6; ++i) {
      torch::manual_seed(100 + i);
      auto ya = ran->forward(x, ctx), yb = resumed->forward(x, ctx);
      if (!torch::equal(ya, yb)) {
        differ.push_back(info.name + " (forward " + std::to_string(i + 1) + ")");
        break;
      }
    }
  }
  std::string list;
  for (const auto& d : differ) list += " " + d;
  EXPECT_TRUE(differ.empty()) << "a mixer rebuilt from its saved tensors draws differently:" << list;
}

TEST(Resume, RunKilledBeforeItsFirstCheckpointStartsFromStepZero) {
  auto dir = longseq_test::scratch_dir("resume_before_ckpt");
  auto cfg = tiny_run(corpus(dir), 6);
  train_run(&cfg, quiet(dir + "/whole"));
  auto opts = quiet(dir + "/killed");
  opts.stop_after = 3;  // the first checkpoint would be at step 4
  train_run(&cfg, opts);
  ASSERT_FALSE(path_exists(dir + "/killed/trainer_state.safetensors"));
  EXPECT_THROW(train_run(&cfg, quiet(dir + "/killed")), Error);  // a new run still refuses the directory
  auto r = train_run(nullptr, quiet(dir + "/killed", true));
  EXPECT_EQ(r.losses.size(), 6u);
  auto a = logged_losses(dir + "/whole"), b = logged_losses(dir + "/killed");
  ASSERT_EQ(b.size(), 6u);
  for (const auto& kv : a) EXPECT_EQ(kv.second, b.at(kv.first)) << "step " << kv.first;
  EXPECT_EQ(metrics_lines(dir + "/killed").size(), metrics_lines(dir + "/whole").size());
}

TEST(Resume, FinishedRunAddsNoValidationLine) {
  auto dir = longseq_test::scratch_dir("resume_finished");
  auto cfg = tiny_run(corpus(dir), 4);
  auto first = train_run(&cfg, quiet(dir + "/run"));
  const auto before = read_file(dir + "/run/metrics.jsonl");
  auto again = train_run(nullptr, quiet(dir + "/run", true));
  EXPECT_TRUE(again.losses.empty());
  EXPECT_EQ(read_file(dir + "/run/metrics.jsonl"), before);
  EXPECT_EQ(again.valid.loss, first.valid.loss);  // still reports the run's validation
}

TEST(Resume, CorruptStepInTrainerStateIsRefused) {
  auto dir = longseq_test::scratch_dir("resume_bad_step");
  auto cfg = tiny_run(corpus(dir), 8);
  auto opts = quiet(dir + "/run");
  opts.stop_after = 5;
  train_run(&cfg, opts);
  const std::string state_path = dir + "/run/trainer_state.safetensors";
  const auto good = load_safetensors(state_path);
  const auto metrics = read_file(dir + "/run/metrics.jsonl"), model = read_file(dir + "/run/model.safetensors");
  for (const std::string bad : {"-3", "2abc", "9", "", " 4", "+4", "99999999999999999999999"}) {
    auto state = good;
    state.metadata["step"] = bad;
    save_safetensors(state_path, state);
    const auto written = read_file(state_path);
    try {
      train_run(nullptr, quiet(dir + "/run", true));
      ADD_FAILURE() << "resumed from step \"" << bad << "\"";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(state_path), std::string::npos) << msg;
      EXPECT_NE(msg.find("\"" + bad + "\""), std::string::npos) << msg;
    }
    EXPECT_EQ(read_file(state_path), written) << bad;
    EXPECT_EQ(read_file(dir + "/run/metrics.jsonl"), metrics) << bad;
    EXPECT_EQ(read_file(dir + "/run/model.safetensors"), model) << bad;
  }
}

TEST(Train, ModelFileIsNeverBehindTrainerState) {
  auto dir = longseq_test::scratch_dir("train_write_order");
  auto cfg = tiny_run(corpus(dir), 8);
  auto opts = quiet(dir + "/run");
  opts.stop_after = 5;  // checkpoint at step 4
  train_run(&cfg, opts);
  // The next checkpoint (step 8) cannot write model.safetensors: as if killed inside that write.
  std::filesystem::create_directory(dir + "/run/model.safetensors.tmp." + std::to_string(::getpid()));
  EXPECT_THROW(train_run(nullptr, quiet(dir + "/run", true)), Error);
  EXPECT_GE(std::stoll(step_of(dir + "/run/model.safetensors")), std::stoll(step_of(dir + "/run/trainer_state.safetensors")));
}

TEST(Train, TokensPerSecondCountsTrainingTimeOnly) {
  auto dir = longseq_test::scratch_dir("train_tps");
  // A validation split of 20000 bytes, so its 300 batches take many times a step even on a busy machine.
  longseq_test::write_text(dir + "/big.txt", longseq_test::sample_text(400000));
  Json j = {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}}},
            {"data", {{"corpus", "text"}, {"path", dir + "/big.txt"}}},
            {"train", {{"steps", 4}, {"batch_size", 1}, {"seq_len", 32}, {"warmup", 1}, {"eval_every", 1},
                       {"eval_batches", 300}, {"log_every", 1}, {"checkpoint_every", 1}}}};
  auto cfg = RunConfig::from_json(j);
  train_run(&cfg, quiet(dir + "/run"));
  // Each step validates on 300 batches, far longer than the step itself: a rate over
  // the wall time would make the training time it implies nearly the whole elapsed time.
  int checked = 0;
  for (const auto& m : metrics_lines(dir + "/run")) {
    if (!m.contains("loss")) continue;
    const double rate = m["train_tokens_per_s"], elapsed = m["elapsed_s"], train_s = m["train_s"];
    const double tokens = m["step"].get<double>() * 32;
    EXPECT_NEAR(tokens / rate, train_s, 1e-6 * train_s);
    if (m["step"] > 1) EXPECT_LT(train_s, 0.5 * elapsed) << m.dump();
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

// A loss that is NaN (and so are its gradients) at the steps in `bad`.
TrainOptions poisoned(const std::string& dir, std::set<int64_t> bad) {
  auto o = quiet(dir);
  o.loss_hook = [bad](int64_t step, const torch::Tensor& loss) {
    return bad.count(step) ? loss * std::numeric_limits<double>::quiet_NaN() : loss;
  };
  return o;
}

bool all_finite(const std::string& safetensors_path) {
  for (const auto& kv : load_safetensors(safetensors_path).tensors)
    if (kv.second.is_floating_point() && !torch::isfinite(kv.second).all().item<bool>()) return false;
  return true;
}

TEST(Train, NonFiniteStepIsSkippedAndLogged) {
  auto dir = longseq_test::scratch_dir("train_nonfinite_skip");
  auto cfg = tiny_run(corpus(dir), 8);
  testing::internal::CaptureStderr();
  auto r = train_run(&cfg, poisoned(dir + "/run", {3}));
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("step 3: non-finite loss"), std::string::npos) << err;
  EXPECT_EQ(r.last_step, 8);
  EXPECT_TRUE(std::isfinite(r.valid.loss));
  EXPECT_TRUE(all_finite(dir + "/run/model.safetensors"));
  EXPECT_TRUE(all_finite(dir + "/run/trainer_state.safetensors"));
  int skipped = 0;
  for (const auto& m : metrics_lines(dir + "/run"))
    if (m.contains("skipped")) {
      EXPECT_EQ(m["step"], 3);
      EXPECT_EQ(m["skipped"], "non-finite loss");
      ++skipped;
    }
  EXPECT_EQ(skipped, 1);
  // The gradient alone non-finite: sqrt'(0) = inf times 0 poisons every gradient, the loss stays finite.
  auto opts = quiet(dir + "/grad");
  opts.loss_hook = [](int64_t step, const torch::Tensor& loss) {
    return step == 2 ? loss + torch::sqrt((loss - loss.detach()).abs()) : loss;
  };
  testing::internal::CaptureStderr();
  train_run(&cfg, opts);
  const std::string err2 = testing::internal::GetCapturedStderr();
  EXPECT_NE(err2.find("step 2: non-finite gradient"), std::string::npos) << err2;
  EXPECT_TRUE(all_finite(dir + "/grad/trainer_state.safetensors"));
}

// A skipped step does not advance AdamW's bias correction: the resumed run must know.
TEST(Train, RunWithASkippedStepResumesBitForBit) {
  auto dir = longseq_test::scratch_dir("train_nonfinite_resume");
  auto cfg = tiny_run(corpus(dir), 10);
  testing::internal::CaptureStderr();
  train_run(&cfg, poisoned(dir + "/whole", {2}));
  auto killed = poisoned(dir + "/killed", {2});
  killed.stop_after = 6;  // checkpoint at 4
  train_run(&cfg, killed);
  auto resumed = poisoned(dir + "/killed", {2});
  resumed.resume = true;
  train_run(nullptr, resumed);
  testing::internal::GetCapturedStderr();
  auto a = logged_losses(dir + "/whole"), b = logged_losses(dir + "/killed");
  ASSERT_EQ(a.size(), 9u);
  ASSERT_EQ(b.size(), 9u);
  for (const auto& kv : a) EXPECT_EQ(kv.second, b.at(kv.first)) << "step " << kv.first;
}

TEST(Train, NonFiniteStepsInARowStopTheRunAndKeepTheLastCheckpoint) {
  auto dir = longseq_test::scratch_dir("train_nonfinite_stop");
  auto j = tiny_run(corpus(dir), 12).to_json();
  j["train"]["max_nonfinite_steps"] = 3;
  auto cfg = RunConfig::from_json(j);
  auto good = quiet(dir + "/good");
  good.stop_after = 5;  // the run below diverges from step 5 on; its last good checkpoint is step 4
  train_run(&cfg, good);
  testing::internal::CaptureStderr();
  try {
    train_run(&cfg, poisoned(dir + "/run", {5, 6, 7, 8, 9, 10, 11, 12}));
    ADD_FAILURE() << "a run whose every step is non-finite finished";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step 7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("train.max_nonfinite_steps = 3"), std::string::npos) << msg;
  }
  testing::internal::GetCapturedStderr();
  for (auto f : {"/trainer_state.safetensors", "/model.safetensors"})
    EXPECT_EQ(read_file(dir + "/run" + f), read_file(dir + "/good" + f)) << f;
  EXPECT_EQ(step_of(dir + "/run/trainer_state.safetensors"), "4");
}

TEST(Schedule, WarmupOfTheWholeRunIsRefused) {
  Json j = {{"train", {{"steps", 20}, {"warmup", 20}}}};
  try {
    RunConfig::from_json(j);
    FAIL() << "warm-up as long as the run accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("train.warmup = 20"), std::string::npos) << msg;
    EXPECT_NE(msg.find("train.steps = 20"), std::string::npos) << msg;
  }
  j["train"]["warmup"] = 19;
  auto cfg = RunConfig::from_json(j);
  // The last step then runs at the documented floor.
  EXPECT_NEAR(learning_rate(20, 20, 19, 1.0, 0.1), 0.1, 1e-12);
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

}  // namespace train_test
