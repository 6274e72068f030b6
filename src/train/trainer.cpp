#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>

#include "longseq/common.h"
#include "longseq/distributed.h"
#include "longseq/runtime.h"
#include "longseq/tensorboard.h"
#include "longseq/train.h"
#include "longseq/train_task.h"
#include "longseq/translation.h"

namespace longseq {

namespace {

}  // namespace

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t z = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL) * 0xBF58476D1CE4E5B9ULL ^
               (c + 1) * 0x94D049BB133111EBULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

namespace {

std::vector<std::pair<std::string, torch::Tensor>> named_params(torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) out.push_back({p.key(), p.value()});
  return out;
}

int64_t count_parameters(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

// Keeps the metrics lines a resumed run has not yet re-done (step <= `step`).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!path_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    Json j = Json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step") || !j["step"].is_number_integer()) continue;  // a line cut by a kill
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// Whether metrics.jsonl already holds a validation line for `step`.
bool has_validation_at(const std::string& path, int64_t step) {
  if (!path_exists(path)) return false;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    Json j = Json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains("valid_loss") && j.value("step", Json()) == step) return true;
  }
  return false;
}

void append_line(const std::string& path, const Json& j) {
  std::ofstream out(path, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
}

// Removes temporary files that a killed run left behind (name.tmp.<pid> of a
// process that no longer exists), so a resumed run directory holds only its files.
void remove_stale_temporaries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> stale;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    const auto at = name.rfind(".tmp.");
    if (at == std::string::npos || at + 5 >= name.size()) continue;
    const std::string pid = name.substr(at + 5);
    if (pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) continue;
    const pid_t p = static_cast<pid_t>(std::stol(pid));
    if (p != ::getpid() && ::kill(p, 0) != 0 && errno == ESRCH) stale.push_back(dir + "/" + name);
  }
  ::closedir(d);
  for (const auto& f : stale) std::remove(f.c_str());
}

// A count in a checkpoint's metadata: decimal digits only, within [0, max].
int64_t metadata_count(const TensorFile& state, const std::string& path, const std::string& key, int64_t max,
                       const std::string& max_name, int64_t fallback) {
  auto it = state.metadata.find(key);
  if (it == state.metadata.end()) {
    if (fallback >= 0) return fallback;
    throw Error(path + " lacks the " + key + " in its metadata");
  }
  const std::string& v = it->second;
  if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
    throw Error(path + ": the " + key + " in its metadata is \"" + v +
                "\", not a whole number >= 0; the checkpoint is corrupt");
  const int64_t n = std::stoll(v);
  if (n > max)
    throw Error(path + ": the " + key + " in its metadata is \"" + v + "\", beyond " + max_name + " = " +
                std::to_string(max) + "; the checkpoint is corrupt or belongs to another run");
  return n;
}

// What a checkpoint carries besides tensors: everything that decides the rest of the run.
struct Carried {
  int64_t step = 0;
  int64_t adamw_steps = 0;       // AdamW updates done (fewer than step when steps were skipped)
  int64_t nonfinite_streak = 0;  // non-finite steps in a row just before `step`
};

// model.safetensors first: a kill between the two writes leaves the export copy
// that eval and generate read ahead of trainer_state, never behind it.
void save_checkpoint(const std::string& dir, torch::nn::Module& model, const AdamW& opt, const Carried& c) {
  TensorFile weights = module_tensors(model);
  weights.metadata = {{"format", "pt"}, {"step", std::to_string(c.step)}};
  save_safetensors(dir + "/model.safetensors", weights);
  TensorFile state = module_tensors(model, "model.");
  for (auto& kv : opt.state("adamw.").tensors) state.tensors.push_back(kv);
  state.metadata = {{"format", "longseq-trainer-state"},
                    {"step", std::to_string(c.step)},
                    {"adamw_steps", std::to_string(c.adamw_steps)},
                    {"nonfinite_streak", std::to_string(c.nonfinite_streak)}};
  save_safetensors(dir + "/trainer_state.safetensors", state);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The learning rate of optimizer update s (1-based).
using Schedule = std::function<double(int64_t)>;
Schedule schedule_of(const RunConfig& cfg) {
  const Json& t = cfg.train;
  const int64_t steps = t["steps"], warmup = t["warmup"];
  const double lr = t["lr"], min_ratio = t["min_lr_ratio"];
  if (t["schedule"] == "noam") {  // Vaswani et al. 2017, sec. 5.3, eq. 3, scaled by train.lr
    const int64_t d = cfg.model["d_model"];
    return [=](int64_t s) { return lr * noam_learning_rate(s, d, std::max<int64_t>(warmup, 1)); };
  }
  return [=](int64_t s) { return learning_rate(s, steps, warmup, lr, min_ratio); };
}

// train.keep_checkpoints: the weights of the last `keep` checkpoints as checkpoints/step_<N>.safetensors, for
// `longseq average` (Vaswani et al. 2017, sec. 6.1: the mean of the last 5 or 20).
void keep_weights(const std::string& dir, torch::nn::Module& model, int64_t step, int64_t keep) {
  const std::string sub = dir + "/checkpoints";
  ::mkdir(sub.c_str(), 0755);
  TensorFile weights = module_tensors(model);
  weights.metadata = {{"format", "pt"}, {"step", std::to_string(step)}};
  save_safetensors(sub + "/step_" + std::to_string(step) + ".safetensors", weights);
  auto kept = kept_checkpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < kept.size(); ++i) std::remove(kept[i].second.c_str());
}

}  // namespace

std::vector<std::pair<int64_t, std::string>> kept_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  const std::string sub = run_dir + "/checkpoints";
  DIR* d = ::opendir(sub.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name, prefix = "step_", suffix = ".safetensors";
    if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    out.push_back({std::stoll(digits), sub + "/" + name});
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::unique_ptr<TrainTask> make_train_task(const RunConfig& cfg, bool quiet) {
  const std::string type = cfg.model["type"];
  if (type == "encoder_decoder") return make_translation_task(cfg, quiet);
  if (type == "encoder_classifier") return make_classification_task(cfg, quiet);
  const auto lm_types = language_model_types();
  if (std::find(lm_types.begin(), lm_types.end(), type) == lm_types.end())
    throw Error("train: model.type " + type + " is not trainable by `longseq train` yet (language models: " +
                join(lm_types) + "; translation: encoder_decoder; classification: encoder_classifier)");
  return make_lm_task(cfg, quiet);
}


TrainResult train_run(const RunConfig* given, const TrainOptions& opts) {
  const std::string dir = opts.out_dir;
  if (dir.empty()) throw Error("train: an output run directory is required (--out)");
  const std::string config_path = dir + "/config.json", state_path = dir + "/trainer_state.safetensors",
                    metrics_path = dir + "/metrics.jsonl";
  RunConfig cfg;
  bool has_checkpoint = false;
  if (opts.resume) {
    if (!path_exists(dir)) throw Error("cannot resume: run directory " + dir + " does not exist");
    if (!path_exists(config_path)) throw Error("cannot resume: " + dir + " has no config.json");
    cfg = load_run_config(config_path);
    if (given && given->to_json() != cfg.to_json())
      throw Error("cannot resume: the config given differs from " + config_path + "; resume without --config");
    has_checkpoint = path_exists(state_path);  // a run killed before its first checkpoint restarts at step 0
  } else {
    if (!given) throw Error("train: a config is required for a new run");
    if (path_exists(config_path) || path_exists(state_path))
      throw Error(dir + " already holds a run; use --resume to continue it or choose another --out");
    cfg = *given;
  }
  const Json& t = cfg.train;
  const int64_t steps = t["steps"], accum = t["accum"];
  const uint64_t seed = t["seed"];
  const int64_t log_every = t["log_every"], eval_every = t["eval_every"], ckpt_every = t["checkpoint_every"],
                max_nonfinite = t["max_nonfinite_steps"], keep = t["keep_checkpoints"];
  const double time_limit = t["time_limit"];
  const Schedule schedule = schedule_of(cfg);
  // Data parallel (distributed.h): the processes split each step's accum micro-batches and sum their gradients;
  // rank 0 alone writes the run directory.
  const int64_t world = world_size_from_environment();
  if (accum % world != 0)
    throw Error("train.accum = " + std::to_string(accum) + " is not a multiple of WORLD_SIZE = " +
                std::to_string(world) + ": the group splits each step's accum micro-batches among its processes "
                "(set train.accum = " + std::to_string(world) + " for steps of " + std::to_string(world) +
                " x train.batch_size rows)");
  std::unique_ptr<ProcessGroup> group = process_group_from_environment();
  const int64_t rank = group ? group->rank() : 0;
  const bool writer = rank == 0;

  // Everything that can fail on bad input is checked before the run directory is touched.
  std::unique_ptr<TrainTask> task = make_train_task(cfg, opts.quiet);
  torch::nn::Module& model = task->model();
  AdamW opt(named_params(model), t["beta1"], t["beta2"], t["eps"], t["weight_decay"], decayed_parameters(model));
  Carried carried;
  if (has_checkpoint) {
    TensorFile state = load_safetensors(state_path);
    carried.step = metadata_count(state, state_path, "step", steps, "train.steps", -1);
    // Older checkpoints lack these two: no step was skipped before them.
    carried.adamw_steps = metadata_count(state, state_path, "adamw_steps", carried.step, "its step", carried.step);
    carried.nonfinite_streak =
        metadata_count(state, state_path, "nonfinite_streak", carried.step, "its step", 0);
    load_module_tensors(model, state, state_path, "model.");
    opt.load_state(state, "adamw.", carried.adamw_steps, state_path);
  }
  const int64_t start = carried.step;
  try {
    task->begin(start);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (run " + dir + ")");
  }
  if (group) {  // every process has checked the directory before rank 0 writes to it; all start from rank 0's weights
    group->barrier();
    std::vector<torch::Tensor> params;
    for (auto& p : model.parameters()) params.push_back(p.detach());
    group->broadcast(params);
  }
  std::unique_ptr<OverlappedGradientSum> grad_sum;
  if (group)
    grad_sum = std::make_unique<OverlappedGradientSum>(
        *group, model.parameters(), static_cast<int64_t>(t["allreduce_bucket_mb"].get<double>() * (1 << 20)));
  if (!writer) {  // the other ranks train and validate alike and write nothing
  } else if (opts.resume) {
    remove_stale_temporaries(dir);
    truncate_metrics(metrics_path, start);
  } else {
    ::mkdir(dir.c_str(), 0755);
    if (!path_exists(dir)) throw Error("cannot create run directory " + dir);
    remove_stale_temporaries(dir);
  }
  std::unique_ptr<EventWriter> events;
  if (writer && cfg.train.value("tensorboard", false)) events = std::make_unique<EventWriter>(dir, start);
  auto log_line = [&](const Json& j, const std::string& prefix) {
    if (!writer) return;
    append_line(metrics_path, j);
    if (events) events->scalars(j, prefix);
  };
  // The tokenizer before config.json: a directory with a config holds all a resume needs.
  const std::string spm_copy = dir + "/tokenizer.model";
  if (writer && cfg.data["tokenizer"] == "sentencepiece" && (!opts.resume || !path_exists(spm_copy)))
    write_file_atomic(spm_copy, read_file(cfg.data["spm_model"]));
  if (writer && !opts.resume) write_file_atomic(config_path, cfg.to_json().dump(2) + "\n");
  const bool quiet = opts.quiet || !writer;
  if (!quiet) {
    std::string how;
    if (opts.resume) how = has_checkpoint ? ", resuming at step " + std::to_string(start)
                                          : ", resuming a run that has no checkpoint yet: starting at step 0";
    std::fprintf(stderr, "model: %lld parameters, %s%s%s\n", static_cast<long long>(count_parameters(model)),
                 task->summary().c_str(), how.c_str(),
                 group ? (", data parallel over " + std::to_string(world) + " processes").c_str() : "");
  }

  TrainResult result;
  result.last_step = start;
  Progress progress("train", steps);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_done = 0;
  double train_s = 0;  // time in training steps only: validation and checkpoints excluded
  model.train();
  for (int64_t step = start + 1; step <= steps; ++step) {
    if (opts.stop_after > 0 && step > opts.stop_after) return result;
    const auto step_t0 = std::chrono::steady_clock::now();
    torch::manual_seed(mix_seed(seed, static_cast<uint64_t>(step)));
    // The schedule counts optimizer updates (transformer.md P1), so skipped steps do not advance it.
    const double lr = schedule(step);
    opt.zero_grad();
    task->begin_step(step);
    double loss_sum = 0;
    int64_t step_tokens = 0;
    for (int64_t micro = rank; micro < accum; micro += world) {  // this process's share of the micro-batches
      // Each micro-batch's own random stream (dropout, LSH's rotations): what a process draws for micro-batch m does
      // not depend on which others it ran.
      const uint64_t micro_seed = mix_seed(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(micro) + 1);
      torch::manual_seed(micro_seed);
      if (grad_sum && micro + world >= accum) grad_sum->arm();  // this process's last backward of the step
      const MicroResult m = task->micro_batch(step, micro, accum, micro_seed, opts.loss_hook);
      loss_sum += m.loss / static_cast<double>(accum);
      step_tokens += m.targets;
    }
    bool time_up_here = time_limit > 0 && seconds_since(t0) >= time_limit;
    if (group) {  // the gradient and the step's numbers summed over the group, so every process takes the same update
      grad_sum->finish();  // most buckets were started by the backward itself
      std::vector<double> sums = task->step_sums();
      sums.insert(sums.end(), {loss_sum, static_cast<double>(step_tokens), time_up_here ? 1.0 : 0.0});
      auto packed = torch::tensor(sums, torch::kDouble);
      group->sum({packed});
      sums.assign(packed.data_ptr<double>(), packed.data_ptr<double>() + packed.numel());
      time_up_here = sums.back() > 0;
      step_tokens = static_cast<int64_t>(sums[sums.size() - 2]);
      loss_sum = sums[sums.size() - 3];
      sums.resize(sums.size() - 3);
      task->set_step_sums(sums);
    }
    tokens_done += step_tokens;
    const double max_norm = t["grad_clip"];
    double grad_norm = max_norm > 0 ? torch::nn::utils::clip_grad_norm_(model.parameters(), max_norm)
                                    : torch::nn::utils::clip_grad_norm_(model.parameters(), 1e30);
    const bool finite = std::isfinite(loss_sum) && std::isfinite(grad_norm);
    if (finite) {
      opt.step(lr);
      carried.nonfinite_streak = 0;
    } else {
      ++carried.nonfinite_streak;  // the update is skipped: weights and moments stay as they were
    }
    carried.step = step;
    carried.adamw_steps = opt.steps();
    train_s += seconds_since(step_t0);
    result.losses.push_back(loss_sum);
    result.last_step = step;
    const double elapsed = seconds_since(t0);
    const double tps = tokens_done / std::max(train_s, 1e-9);
    result.tokens_per_s = tps;
    if (!finite) {
      const std::string what = !std::isfinite(loss_sum) ? "loss" : "gradient";
      if (writer)
        append_line(metrics_path, {{"step", step}, {"skipped", "non-finite " + what}, {"lr", lr},
                                   {"nonfinite_in_a_row", carried.nonfinite_streak}});
      std::fprintf(stderr, "%sstep %lld: non-finite %s (loss %g, gradient norm %g); update skipped, %lld in a row "
                   "(train.max_nonfinite_steps = %lld)\n", opts.quiet ? "" : "\n", static_cast<long long>(step),
                   what.c_str(), loss_sum, grad_norm, static_cast<long long>(carried.nonfinite_streak),
                   static_cast<long long>(max_nonfinite));
      if (carried.nonfinite_streak >= max_nonfinite) {
        const bool saved = path_exists(state_path);
        throw Error("training stopped at step " + std::to_string(step) + ": " +
                    std::to_string(carried.nonfinite_streak) + " steps in a row had a non-finite loss or gradient "
                    "(train.max_nonfinite_steps = " + std::to_string(max_nonfinite) + "); " +
                    (saved ? "the last checkpoint in " + dir + " is kept as it was"
                           : "no checkpoint was written") +
                    "; a lower train.lr or a tighter train.grad_clip may help");
      }
    }
    Json line = {{"step", step}, {"loss", loss_sum}, {"lr", lr}, {"grad_norm", grad_norm},
                 {"train_tokens_per_s", tps}, {"train_s", train_s}, {"elapsed_s", elapsed}};
    std::string progress_text;
    task->step_fields(loss_sum, line, progress_text);
    if (finite && (step % log_every == 0 || step == 1)) log_line(line, "train/");
    if (!quiet) {
      char rate[48];
      std::snprintf(rate, sizeof rate, " | %.0f tok/s", tps);
      progress.update(step, progress_text + rate);
    }
    const bool time_up = time_up_here && task->may_stop_after(step);  // decided by the group together
    if (eval_every > 0 && step % eval_every == 0 && step != steps && !time_up) {
      Validation v = task->validate(false);
      v.fields["step"] = step;
      log_line(v.fields, "valid/");
    }
    if (writer && (step % ckpt_every == 0 || step == steps || time_up)) {
      save_checkpoint(dir, model, opt, carried);
      if (keep > 0) keep_weights(dir, model, step, keep);
    }
    if (time_up) {
      result.stopped_by_time = true;
      if (!quiet)
        std::fprintf(stderr, "\ntime limit of %.0f s reached at step %lld; checkpoint saved, --resume continues\n",
                     time_limit, static_cast<long long>(step));
      break;
    }
  }
  if (!quiet) progress.finish();
  Validation v = task->validate(true);
  result.valid = v.result;
  result.valid_fields = v.fields;
  result.valid_text = v.text;
  // A finished run that is resumed again already holds its final validation line.
  if (!writer || (start == steps && has_validation_at(metrics_path, steps))) return result;
  v.fields["step"] = result.last_step;
  log_line(v.fields, "valid/");
  return result;
}

}  // namespace longseq
