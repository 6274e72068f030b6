// Long Range Arena subcommands (docs/lra.md): `longseq lra listops` and `lra pathfinder`, the training and single
// test every `lra` task ends with, eval on a classification run, and the ListOps files of `longseq corpus listops`
// (see commands.h).
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "commands.h"
#include "longseq/bench.h"
#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

namespace longseq {

namespace {

struct LoadedClassificationRun {
  RunConfig config;
  EncoderClassifier model{nullptr};
};

LoadedClassificationRun load_classification_run(const std::string& dir) {
  const std::string config_path = dir + "/config.json", weights = dir + "/model.safetensors";
  if (!path_exists(config_path)) throw Error(dir + " is not a run directory: it has no config.json");
  LoadedClassificationRun run;
  run.config = load_run_config(config_path);
  if (run.config.model["type"] != "encoder_classifier")
    throw Error(dir + " holds a " + run.config.model["type"].get<std::string>() + " run, not a classifier");
  if (!path_exists(weights)) throw Error(dir + " has no model.safetensors yet (no checkpoint was written)");
  run.model = EncoderClassifier(ModelConfig::from_json(run.config.model));
  load_module_tensors(*run.model, load_safetensors(weights), weights);
  run.model->eval();
  return run;
}

// The share of the most frequent label: the accuracy of always answering it (the chance level reported).
double majority_share(const TokenExamples& split) {
  if (split.size() == 0) return 0;
  std::vector<int64_t> counts;
  for (int64_t l : split.labels) {
    if (l >= static_cast<int64_t>(counts.size())) counts.resize(static_cast<size_t>(l) + 1, 0);
    ++counts[static_cast<size_t>(l)];
  }
  return static_cast<double>(*std::max_element(counts.begin(), counts.end())) / static_cast<double>(split.size());
}

const TokenExamples& split_named(const ClassificationSplits& s, const std::string& split) {
  return split == "train" ? s.train : split == "valid" ? s.valid : s.test;
}

Json score_json(const std::string& split, const ClassificationScore& r, double chance) {
  return Json{{"split", split}, {"accuracy", r.accuracy}, {"loss", r.loss}, {"correct", r.correct},
              {"examples", r.examples}, {"majority_class_accuracy", chance}, {"seconds", r.seconds}};
}

void print_score(const std::string& split, const ClassificationScore& r, double chance) {
  std::printf("%s: accuracy %.2f%% (%lld of %lld), loss %.4f nats; chance (most frequent class) %.2f%%; %.1f s\n",
              split.c_str(), 100 * r.accuracy, static_cast<long long>(r.correct), static_cast<long long>(r.examples),
              r.loss, 100 * chance, r.seconds);
}

}  // namespace

const char* lra_listops_config_text() {
  // LRA's ListOps configuration (lra.md sec. 2: 4 layers, emb 512, mlp 1024, 8 heads, CLS, fixed sinusoids, dropout
  // 0.1, batch 32, 5,000 steps, rsqrt schedule after 1,000 warm-up steps at 0.05, Adam b2 0.98, eps 1e-9, weight
  // decay 0.1, no clipping, length up to 2,000) scaled to a 2-core CPU, where its step measured 90 s (docs/lra.md,
  // "Scaled run"): the same trees' rules with 100 < length < 500 instead of 500 < length < 2000, 2 layers of width
  // 64, mlp 128, 4 heads, 1,200 steps (warm-up 20% as LRA's), 9 minutes at most. noam with lr = 0.05 sqrt(d_model)
  // is LRA's rsqrt schedule, base min(s w^-1.5, s^-0.5).
  return R"({
  "model": {"type": "encoder_classifier", "vocab_size": 17, "num_classes": 10, "d_model": 64, "n_heads": 4,
            "n_layers": 2, "d_ff": 128, "classifier_hidden": 128, "pooling": "cls", "positions": "sinusoidal",
            "dropout": 0.1, "mixer": "full"},
  "data":  {"corpus": "listops", "listops_examples": 100000, "listops_min_length": 100, "listops_max_length": 500},
  "train": {"steps": 1200, "batch_size": 32, "seq_len": 499, "schedule": "noam", "lr": 0.4, "warmup": 240,
            "beta1": 0.9, "beta2": 0.98, "eps": 1e-9, "weight_decay": 0.1, "grad_clip": 0,
            "eval_every": 200, "eval_batches": 16, "log_every": 10, "checkpoint_every": 200, "time_limit": 540}
})";
}

bool is_classification_run(const std::string& run_dir) {
  const std::string config_path = run_dir + "/config.json";
  if (!path_exists(config_path)) return false;
  return load_run_config(config_path).model["type"] == "encoder_classifier";
}

void eval_classification(const std::string& run_dir, const std::string& split, int64_t batch, int64_t max_batches,
                         bool as_json) {
  auto run = load_classification_run(run_dir);
  const ClassificationSplits splits = read_classification_corpus(run.config.data, as_json);
  const TokenExamples& data = split_named(splits, split);
  if (data.size() == 0) throw Error("eval: the " + split + " split of " + run_dir + "'s corpus is empty");
  const int64_t B = batch > 0 ? batch : run.config.train["batch_size"].get<int64_t>();
  const ClassificationScore r = score_classifier(*run.model, data, max_batches > 0 ? max_batches * B : data.size(), B,
                                                 run.config.train["seq_len"]);
  if (as_json) {
    std::printf("%s\n", score_json(split, r, majority_share(data)).dump().c_str());
    return;
  }
  print_score(split, r, majority_share(data));
}

void lra_listops_command(Json raw, const LraOptions& o) {
  if (!o.data_dir.empty()) {
    const bool have = path_exists(o.data_dir + "/basic_train.tsv");
    if (!have) {  // generated once with the config's data keys, then read like LRA's released files
      const RunConfig gen = RunConfig::from_json(raw);
      const ClassificationSplits s = read_classification_corpus(gen.data, o.quiet);
      write_listops_corpus(s, o.data_dir);
    }
    raw["data"]["path"] = o.data_dir;
  }
  lra_train_and_test("listops", raw, o, "LRA Transformer (Table 1, full length 2K): 36.37%");
}

void lra_train_and_test(const std::string& task, const Json& raw, const LraOptions& o, const std::string& reference) {
  RunConfig cfg;
  try {
    cfg = RunConfig::from_json(raw);
  } catch (const Error& e) {
    throw Error("lra " + task + ": " + e.what());
  }
  TrainOptions opts;
  const Json& mixer = cfg.model["mixer"];
  opts.out_dir = !o.out_dir.empty() ? o.out_dir
                 : "lra_" + task + "_" + (mixer.is_string() ? mixer.get<std::string>() : std::string("custom"));
  opts.resume = o.resume;
  opts.quiet = o.quiet;
  const TrainResult r = train_run(o.resume ? nullptr : &cfg, opts);
  std::printf("step %lld: %s\n", static_cast<long long>(r.last_step), r.valid_text.c_str());
  // LRA's protocol (lra.md sec. 3): test once, with the final weights, not a reloaded best checkpoint (#15/#60).
  auto run = load_classification_run(opts.out_dir);
  const ClassificationSplits splits = read_classification_corpus(run.config.data, true);
  ClassificationScore t;
  const Json& v = r.valid_fields;
  if (splits.valid_is_test && v.contains("valid_examples") && v["valid_examples"] == splits.test.size()) {
    // IMDB validates on its test split: the final validation (whole split, final weights) is the test score.
    t.examples = v["valid_examples"];
    t.accuracy = v["valid_accuracy"], t.loss = v["valid_loss"];
    t.correct = std::llround(t.accuracy * static_cast<double>(t.examples));
    t.seconds = r.valid.seconds;
  } else {
    t = score_classifier(*run.model, splits.test, splits.test.size(), run.config.train["batch_size"],
                         run.config.train["seq_len"]);
  }
  const double chance = majority_share(splits.test);
  print_score("test", t, chance);
  std::printf("%s\n", reference.c_str());
  Json j = score_json("test", t, chance);
  j["step"] = r.last_step;
  j["peak_mib"] = peak_memory_mib();  // this process's whole run (a table of mixers reads it)
  j["train_tokens_per_s"] = r.tokens_per_s;
  write_file_atomic(opts.out_dir + "/test.json", j.dump(2) + "\n");
}

const char* lra_pathfinder_config_text() {
  // LRA's Pathfinder-32 configuration (lra.md sec. 2: 4 layers, emb 32, mlp 32, 4 heads, MEAN pooling, fixed
  // positions, dropout 0.2, batch 512, 62,400 steps, lr 1e-3 with linear warm-up over 312 steps then cosine decay to
  // 0, no weight decay, 160,000 training images) scaled to a 2-core CPU, where a step of 512 images takes about
  // 34 s (docs/lra.md, "Pathfinder"): the same model and schedule shape with batch 32, 150 steps (warm-up 15),
  // 20,000 generated images; about 6 minutes.
  return R"({
  "model": {"type": "encoder_classifier", "vocab_size": 256, "num_classes": 2, "d_model": 32, "n_heads": 4,
            "n_layers": 4, "d_ff": 32, "classifier_hidden": 32, "pooling": "mean", "positions": "sinusoidal",
            "dropout": 0.2, "mixer": "full"},
  "data":  {"corpus": "pathfinder", "pathfinder_examples": 20000, "pathfinder_size": 32,
            "pathfinder_difficulty": "hard"},
  "train": {"steps": 150, "batch_size": 32, "seq_len": 1024, "schedule": "cosine", "lr": 1e-3, "warmup": 15,
            "min_lr_ratio": 0, "beta1": 0.9, "beta2": 0.98, "eps": 1e-9, "weight_decay": 0, "grad_clip": 0,
            "eval_every": 50, "eval_batches": 16, "log_every": 10, "checkpoint_every": 50, "time_limit": 420}
})";
}

void lra_pathfinder_command(Json raw, const LraOptions& o) {
  if (!o.data_dir.empty()) {
    if (!path_exists(o.data_dir + "/metadata")) {  // generated once with the config's data keys, then read
      const RunConfig gen = RunConfig::from_json(raw);
      const Json& d = gen.data;
      write_pathfinder_dir(o.data_dir, pathfinder_options(d["pathfinder_size"], d["pathfinder_difficulty"],
                                                          d["pathfinder_seed"]),
                           d["pathfinder_examples"]);
    }
    raw["data"]["path"] = o.data_dir;
  }
  lra_train_and_test("pathfinder", raw, o,
                     "LRA Transformer (Table 1, Pathfinder-32 hard, 62,400 steps of 512): 71.40%");
}

void write_listops_corpus(const ClassificationSplits& s, const std::string& out_dir) {
  if (path_exists(out_dir + "/basic_train.tsv")) throw Error(out_dir + " already holds basic_train.tsv");
  ::mkdir(out_dir.c_str(), 0755);
  if (!path_exists(out_dir)) throw Error("cannot create " + out_dir);
  write_listops_tsv(out_dir + "/basic_train.tsv", s.train);  // LRA's names (lra.md sec. 1)
  write_listops_tsv(out_dir + "/basic_val.tsv", s.valid);
  write_listops_tsv(out_dir + "/basic_test.tsv", s.test);
  std::fprintf(stderr, "wrote %s/basic_{train,val,test}.tsv: %lld / %lld / %lld examples\n", out_dir.c_str(),
               static_cast<long long>(s.train.size()), static_cast<long long>(s.valid.size()),
               static_cast<long long>(s.test.size()));
}

}  // namespace longseq
