#include <sys/stat.h>

#include <chrono>
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
    if (j.is_discarded() || !j.contains("step")) continue;  // a line cut by a kill
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

void append_line(const std::string& path, const Json& j) {
  std::ofstream out(path, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
}

void save_checkpoint(const std::string& dir, DecoderLMImpl& model, const AdamW& opt, int64_t step) {
  TensorFile state = module_tensors(model, "model.");
  for (auto& kv : opt.state("adamw.").tensors) state.tensors.push_back(kv);
  state.metadata = {{"format", "longseq-trainer-state"}, {"step", std::to_string(step)}};
  save_safetensors(dir + "/trainer_state.safetensors", state);
  TensorFile weights = module_tensors(model);
  weights.metadata = {{"format", "pt"}, {"step", std::to_string(step)}};
  save_safetensors(dir + "/model.safetensors", weights);
}

}  // namespace

TrainResult train_run(const RunConfig* given, const TrainOptions& opts) {
  const std::string dir = opts.out_dir;
  if (dir.empty()) throw Error("train: an output run directory is required (--out)");
  const std::string config_path = dir + "/config.json", state_path = dir + "/trainer_state.safetensors",
                    metrics_path = dir + "/metrics.jsonl";
  RunConfig cfg;
  if (opts.resume) {
    if (!path_exists(config_path)) throw Error("cannot resume: " + dir + " has no config.json");
    if (!path_exists(state_path)) throw Error("cannot resume: " + dir + " has no checkpoint (trainer_state.safetensors)");
    cfg = load_run_config(config_path);
    if (given && given->to_json() != cfg.to_json())
      throw Error("cannot resume: the config given differs from " + config_path + "; resume without --config");
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
                eval_n = t["eval_batches"];
  const double time_limit = t["time_limit"];

  // Everything that can fail on bad input is checked before the run directory is touched.
  ModelConfig mc = ModelConfig::from_json(cfg.model);
  if (mc.type != "decoder_lm")
    throw Error("train: model.type " + mc.type + " is not trainable by `longseq train` yet (decoder_lm only)");
  auto tokenizer = make_tokenizer(cfg.data);
  if (tokenizer->vocab_size() > mc.vocab_size)
    throw Error("model.vocab_size " + std::to_string(mc.vocab_size) + " is smaller than the tokenizer's " +
                std::to_string(tokenizer->vocab_size()));
  if (!opts.quiet) std::fprintf(stderr, "reading corpus %s ...\n", cfg.data["corpus"].get<std::string>().c_str());
  Corpus corpus = tokenize_corpus(read_corpus(cfg.data), *tokenizer);
  for (const char* split : {"train", "valid"})
    if (corpus.split(split).tokens.size(0) < T + 1)
      throw Error(std::string("the ") + split + " split holds " + std::to_string(corpus.split(split).tokens.size(0)) +
                  " tokens, fewer than train.seq_len + 1 = " + std::to_string(T + 1));

  torch::manual_seed(seed);
  DecoderLM model(mc);
  AdamW opt(named_params(*model), t["beta1"], t["beta2"], t["eps"], t["weight_decay"], decayed_parameters(*model));
  int64_t start = 0;
  if (opts.resume) {
    TensorFile state = load_safetensors(state_path);
    auto it = state.metadata.find("step");
    if (it == state.metadata.end()) throw Error(state_path + " lacks the step in its metadata");
    start = std::stoll(it->second);
    load_module_tensors(*model, state, state_path, "model.");
    opt.load_state(state, "adamw.", start, state_path);
    truncate_metrics(metrics_path, start);
  } else {
    ::mkdir(dir.c_str(), 0755);
    if (!path_exists(dir)) throw Error("cannot create run directory " + dir);
    write_file_atomic(config_path, cfg.to_json().dump(2) + "\n");
    if (cfg.data["tokenizer"] == "sentencepiece")
      write_file_atomic(dir + "/tokenizer.model", read_file(cfg.data["spm_model"]));
  }
  if (!opts.quiet)
    std::fprintf(stderr, "model: %lld parameters, %lld layers, train split %lld tokens%s\n",
                 static_cast<long long>(count_parameters(*model)), static_cast<long long>(mc.n_layers),
                 static_cast<long long>(corpus.train.tokens.size(0)),
                 opts.resume ? (", resuming at step " + std::to_string(start)).c_str() : "");

  const double train_tokens_per_byte =
      static_cast<double>(corpus.train.tokens.size(0)) / static_cast<double>(std::max<int64_t>(corpus.train.bytes, 1));
  TrainResult result;
  result.last_step = start;
  Progress progress("train", steps);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_done = 0;
  model->train();
  for (int64_t step = start + 1; step <= steps; ++step) {
    if (opts.stop_after > 0 && step > opts.stop_after) return result;
    torch::manual_seed(mix(seed, static_cast<uint64_t>(step)));
    const double lr = learning_rate(step, steps, t["warmup"], t["lr"], t["min_lr_ratio"]);
    opt.zero_grad();
    double loss_sum = 0;
    for (int64_t micro = 0; micro < accum; ++micro) {
      std::mt19937_64 rng(mix(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(micro) + 1));
      Batch batch = sample_batch(corpus.train.tokens, B, T, rng);
      auto logits = model->forward(batch.input);
      auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), batch.target.reshape({-1}));
      (loss / static_cast<double>(accum)).backward();
      loss_sum += loss.item<double>() / static_cast<double>(accum);
    }
    const double max_norm = t["grad_clip"];
    double grad_norm = max_norm > 0 ? torch::nn::utils::clip_grad_norm_(model->parameters(), max_norm)
                                    : torch::nn::utils::clip_grad_norm_(model->parameters(), 1e30);
    opt.step(lr);
    tokens_done += B * T * accum;
    result.losses.push_back(loss_sum);
    result.last_step = step;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double bpb = loss_sum * train_tokens_per_byte / std::log(2.0);
    const double tps = tokens_done / std::max(elapsed, 1e-9);
    if (step % log_every == 0 || step == 1)
      append_line(metrics_path, {{"step", step}, {"loss", loss_sum}, {"bpb", bpb}, {"lr", lr},
                                 {"grad_norm", grad_norm}, {"tokens_per_s", tps}, {"elapsed_s", elapsed}});
    if (!opts.quiet) {
      char fields[160];
      std::snprintf(fields, sizeof fields, "loss %.4f | bpb %.3f | %.0f tok/s", loss_sum, bpb, tps);
      progress.update(step, fields);
    }
    const bool time_up = time_limit > 0 && elapsed >= time_limit;
    if (eval_every > 0 && step % eval_every == 0 && step != steps && !time_up) {
      auto v = evaluate_lm(*model, corpus.valid, B, T, eval_n, t["eval_stride"]);
      append_line(metrics_path,
                  {{"step", step}, {"valid_loss", v.loss}, {"valid_bpb", v.bpb}, {"valid_eval", v.method()}});
    }
    if (step % ckpt_every == 0 || step == steps || time_up) save_checkpoint(dir, *model, opt, step);
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
  append_line(metrics_path, {{"step", result.last_step}, {"valid_loss", result.valid.loss},
                             {"valid_bpb", result.valid.bpb}, {"valid_eval", result.valid.method()}});
  return result;
}

}  // namespace longseq
