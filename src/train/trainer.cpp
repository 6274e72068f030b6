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
#include <iostream>
#include <sstream>

#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

namespace longseq {

namespace {

// splitmix64: independent seeds for each (seed, step, micro-batch), so a
// resumed run draws the same batches and dropout masks without saved RNG state.
uint64_t mix(uint64_t a, uint64_t b, uint64_t c = 0) {
  uint64_t z = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL) * 0xBF58476D1CE4E5B9ULL ^
               (c + 1) * 0x94D049BB133111EBULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

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
void save_checkpoint(const std::string& dir, LanguageModelImpl& model, const AdamW& opt, const Carried& c) {
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

}  // namespace

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
  const int64_t steps = t["steps"], B = t["batch_size"], T = t["seq_len"], accum = t["accum"];
  const uint64_t seed = t["seed"];
  const int64_t log_every = t["log_every"], eval_every = t["eval_every"], ckpt_every = t["checkpoint_every"],
                eval_n = t["eval_batches"], max_nonfinite = t["max_nonfinite_steps"];
  const double time_limit = t["time_limit"];

  // Everything that can fail on bad input is checked before the run directory is touched.
  ModelConfig mc = ModelConfig::from_json(cfg.model);
  const auto lm_types = language_model_types();
  if (std::find(lm_types.begin(), lm_types.end(), mc.type) == lm_types.end())
    throw Error("train: model.type " + mc.type + " is not trainable by `longseq train` yet (language models: " +
                join(lm_types) + ")");
  auto tokenizer = make_tokenizer(cfg.data);
  if (tokenizer->vocab_size() > mc.vocab_size)
    throw Error("model.vocab_size " + std::to_string(mc.vocab_size) + " is smaller than the tokenizer's " +
                std::to_string(tokenizer->vocab_size()));
  if (!opts.quiet) std::fprintf(stderr, "reading corpus %s ...\n", cfg.data["corpus"].get<std::string>().c_str());
  Corpus corpus = tokenize_corpus(read_corpus(cfg.data), *tokenizer);
  for (const char* split : {"train", "valid"})
    if (corpus.split(split).tokens.size(0) < T + 1)
      throw Error(corpus_source(cfg.data) + ": the " + split + " split holds " + std::to_string(corpus.split(split).tokens.size(0)) +
                  " tokens, fewer than train.seq_len + 1 = " + std::to_string(T + 1));

  torch::manual_seed(seed);
  LanguageModel model = make_language_model(mc);
  // Training over a stream: B * accum rows, each its own slice; micro-batch m carries rows [m B, (m + 1) B).
  const bool stream = t["stream"];
  const int64_t stream_reset = t["stream_reset"];
  const int64_t stream_S = stream ? stream_segments(corpus.train.tokens.size(0), B * accum, T) : 0;
  std::vector<ModelState> states(stream ? accum : 0);
  if (stream) {
    try {
      model->initial_state(B);
    } catch (const Error& e) {
      throw Error(std::string("train.stream needs every layer to stream: ") + e.what());
    }
  }
  AdamW opt(named_params(*model), t["beta1"], t["beta2"], t["eps"], t["weight_decay"], decayed_parameters(*model));
  Carried carried;
  if (has_checkpoint) {
    TensorFile state = load_safetensors(state_path);
    carried.step = metadata_count(state, state_path, "step", steps, "train.steps", -1);
    // Older checkpoints lack these two: no step was skipped before them.
    carried.adamw_steps = metadata_count(state, state_path, "adamw_steps", carried.step, "its step", carried.step);
    carried.nonfinite_streak =
        metadata_count(state, state_path, "nonfinite_streak", carried.step, "its step", 0);
    load_module_tensors(*model, state, state_path, "model.");
    opt.load_state(state, "adamw.", carried.adamw_steps, state_path);
  }
  const int64_t start = carried.step;
  if (stream && start % stream_reset != 0 && start < steps)
    throw Error("train.stream: the checkpoint in " + dir + " is at step " + std::to_string(start) +
                ", not a multiple of train.stream_reset = " + std::to_string(stream_reset) +
                ", where the carried state starts afresh; it cannot be resumed exactly");
  if (opts.resume) {
    remove_stale_temporaries(dir);
    truncate_metrics(metrics_path, start);
  } else {
    ::mkdir(dir.c_str(), 0755);
    if (!path_exists(dir)) throw Error("cannot create run directory " + dir);
    remove_stale_temporaries(dir);
  }
  // The tokenizer before config.json: a directory with a config holds all a resume needs.
  const std::string spm_copy = dir + "/tokenizer.model";
  if (cfg.data["tokenizer"] == "sentencepiece" && (!opts.resume || !path_exists(spm_copy)))
    write_file_atomic(spm_copy, read_file(cfg.data["spm_model"]));
  if (!opts.resume) write_file_atomic(config_path, cfg.to_json().dump(2) + "\n");
  if (!opts.quiet) {
    std::string how;
    if (opts.resume) how = has_checkpoint ? ", resuming at step " + std::to_string(start)
                                          : ", resuming a run that has no checkpoint yet: starting at step 0";
    std::fprintf(stderr, "model: %lld parameters, %lld layers, train split %lld tokens%s\n",
                 static_cast<long long>(count_parameters(*model)), static_cast<long long>(mc.n_layers),
                 static_cast<long long>(corpus.train.tokens.size(0)), how.c_str());
  }

  const double train_tokens_per_byte =
      static_cast<double>(corpus.train.tokens.size(0)) / static_cast<double>(std::max<int64_t>(corpus.train.bytes, 1));
  TrainResult result;
  result.last_step = start;
  Progress progress("train", steps);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_done = 0;
  const int64_t scored = model->scored_positions(T);
  double train_s = 0;  // time in training steps only: validation and checkpoints excluded
  model->train();
  for (int64_t step = start + 1; step <= steps; ++step) {
    if (opts.stop_after > 0 && step > opts.stop_after) return result;
    const auto step_t0 = std::chrono::steady_clock::now();
    torch::manual_seed(mix(seed, static_cast<uint64_t>(step)));
    const double lr = learning_rate(step, steps, t["warmup"], t["lr"], t["min_lr_ratio"]);
    opt.zero_grad();
    double loss_sum = 0, ponder_sum = 0;
    std::map<std::string, double> aux_sums;  // the layers' losses and metrics by name (sparse experts)
    for (int64_t micro = 0; micro < accum; ++micro) {
      std::mt19937_64 rng(mix(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(micro) + 1));
      Batch batch;
      ModelState* state = nullptr;
      if (stream) {  // segment (step - 1) mod S of each row; a fresh state every stream_reset segments and at a wrap
        const int64_t segment = (step - 1) % stream_S;
        if ((step - 1) % stream_reset == 0 || segment == 0) states[micro] = model->initial_state(B);
        batch = stream_batch(corpus.train.tokens, B * accum, micro * B, B, T, segment);
        state = &states[micro];
      } else {
        batch = sample_batch(corpus.train.tokens, B, T, rng);
      }
      auto logits = model->forward(batch.input, state);  // [B, P, V]: the last P positions (Perceiver AR: latents)
      auto target = batch.target.narrow(1, T - logits.size(1), logits.size(1));
      auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), target.reshape({-1}));
      if (opts.loss_hook) loss = opts.loss_hook(step, loss);
      auto objective = loss;  // the language-model loss, plus the auxiliary losses (ACT's ponder cost, z-loss)
      if (model->aux_loss().defined()) objective = loss + model->aux_loss();
      if (model->ponder().defined()) ponder_sum += model->ponder().item<double>() / static_cast<double>(accum);
      for (const auto& kv : model->aux_metrics()) aux_sums[kv.first] += kv.second / static_cast<double>(accum);
      (objective / static_cast<double>(accum)).backward();
      loss_sum += loss.item<double>() / static_cast<double>(accum);
    }
    const double max_norm = t["grad_clip"];
    double grad_norm = max_norm > 0 ? torch::nn::utils::clip_grad_norm_(model->parameters(), max_norm)
                                    : torch::nn::utils::clip_grad_norm_(model->parameters(), 1e30);
    const bool finite = std::isfinite(loss_sum) && std::isfinite(grad_norm);
    if (finite) {
      opt.step(lr);
      carried.nonfinite_streak = 0;
    } else {
      ++carried.nonfinite_streak;  // the update is skipped: weights and moments stay as they were
    }
    carried.step = step;
    carried.adamw_steps = opt.steps();
    tokens_done += B * scored * accum;  // targets trained on (Perceiver AR: its latents of the T context tokens)
    train_s += seconds_since(step_t0);
    result.losses.push_back(loss_sum);
    result.last_step = step;
    const double elapsed = seconds_since(t0);
    const double bpb = loss_sum * train_tokens_per_byte / std::log(2.0);
    const double tps = tokens_done / std::max(train_s, 1e-9);
    const double context_tps = tps * static_cast<double>(T) / static_cast<double>(scored);
    result.tokens_per_s = tps;
    if (!finite) {
      const std::string what = !std::isfinite(loss_sum) ? "loss" : "gradient";
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
    } else if (step % log_every == 0 || step == 1) {
      Json line = {{"step", step}, {"loss", loss_sum}, {"bpb", bpb}, {"lr", lr}, {"grad_norm", grad_norm},
                   {"train_tokens_per_s", tps}, {"train_s", train_s}, {"elapsed_s", elapsed}};
      if (scored != T) line["context_tokens_per_s"] = context_tps;  // inputs read per second, T per row
      if (mc.act) line["ponder"] = ponder_sum;  // mean steps N + R per position (the cost's term, before tau)
      for (const auto& kv : aux_sums) line[kv.first] = kv.second;
      append_line(metrics_path, line);
    }
    if (!opts.quiet) {
      char fields[160];
      std::snprintf(fields, sizeof fields, "loss %.4f | bpb %.3f | %.0f tok/s", loss_sum, bpb, tps);
      progress.update(step, fields);
    }
    // A stream run stops for time only where its state starts afresh, so the checkpoint resumes exactly.
    const bool time_up = time_limit > 0 && elapsed >= time_limit && (!stream || step % stream_reset == 0);
    if (eval_every > 0 && step % eval_every == 0 && step != steps && !time_up) {
      auto v = evaluate_lm(*model, corpus.valid, B, T, eval_n, t["eval_stride"]);
      append_line(metrics_path,
                  {{"step", step}, {"valid_loss", v.loss}, {"valid_bpb", v.bpb}, {"valid_eval", v.method()}});
    }
    if (step % ckpt_every == 0 || step == steps || time_up) save_checkpoint(dir, *model, opt, carried);
    if (time_up) {
      result.stopped_by_time = true;
      if (!opts.quiet)
        std::fprintf(stderr, "\ntime limit of %.0f s reached at step %lld; checkpoint saved, --resume continues\n",
                     time_limit, static_cast<long long>(step));
      break;
    }
  }
  if (!opts.quiet) progress.finish();
  result.valid = evaluate_lm(*model, corpus.valid, B, T, eval_n, t["eval_stride"]);
  // A finished run that is resumed again already holds its final validation line.
  if (start == steps && has_validation_at(metrics_path, steps)) return result;
  append_line(metrics_path, {{"step", result.last_step}, {"valid_loss", result.valid.loss},
                             {"valid_bpb", result.valid.bpb}, {"valid_eval", result.valid.method()}});
  return result;
}

}  // namespace longseq
