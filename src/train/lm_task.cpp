// The language models' training task (decoder_lm, perceiver_ar): next-token loss over sampled windows or over a
// stream with the model's state carried (Dai et al. 2019, sec. 3.2); validation by evaluate_lm.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "longseq/common.h"
#include "longseq/train_task.h"
#include "longseq/translation.h"

namespace longseq {

namespace {

class LmTask : public TrainTask {
 public:
  LmTask(const RunConfig& cfg, bool quiet) : t_(cfg.train) {
    B_ = t_["batch_size"], T_ = t_["seq_len"], accum_ = t_["accum"];
    mc_ = ModelConfig::from_json(cfg.model);
    tokenizer_ = make_tokenizer(cfg.data);
    if (tokenizer_->vocab_size() > mc_.vocab_size)
      throw Error("model.vocab_size " + std::to_string(mc_.vocab_size) + " is smaller than the tokenizer's " +
                  std::to_string(tokenizer_->vocab_size()));
    if (!quiet) std::fprintf(stderr, "reading corpus %s ...\n", cfg.data["corpus"].get<std::string>().c_str());
    corpus_ = tokenize_corpus(read_corpus(cfg.data), *tokenizer_);
    for (const char* split : {"train", "valid"})
      if (corpus_.split(split).tokens.size(0) < T_ + 1)
        throw Error(corpus_source(cfg.data) + ": the " + split + " split holds " +
                    std::to_string(corpus_.split(split).tokens.size(0)) + " tokens, fewer than train.seq_len + 1 = " +
                    std::to_string(T_ + 1));
    torch::manual_seed(t_["seed"].get<uint64_t>());
    model_ = make_language_model(mc_);
    stream_ = t_["stream"];
    stream_reset_ = t_["stream_reset"];
    // Training over a stream: B * accum rows, each its own slice; micro-batch m carries rows [m B, (m + 1) B).
    stream_S_ = stream_ ? stream_segments(corpus_.train.tokens.size(0), B_ * accum_, T_) : 0;
    states_.resize(stream_ ? accum_ : 0);
    if (stream_) {
      try {
        model_->initial_state(B_);
      } catch (const Error& e) {
        throw Error(std::string("train.stream needs every layer to stream: ") + e.what());
      }
    }
    scored_ = model_->scored_positions(T_);
    tokens_per_byte_ = static_cast<double>(corpus_.train.tokens.size(0)) /
                       static_cast<double>(std::max<int64_t>(corpus_.train.bytes, 1));
    label_smoothing_ = t_["label_smoothing"];
  }

  torch::nn::Module& model() override { return *model_; }

  std::string summary() const override {
    return std::to_string(mc_.n_layers) + " layers, train split " + std::to_string(corpus_.train.tokens.size(0)) +
           " tokens";
  }

  void begin(int64_t start) override {
    if (stream_ && start % stream_reset_ != 0 && start < t_["steps"].get<int64_t>())
      throw Error("train.stream: the checkpoint is at step " + std::to_string(start) +
                  ", not a multiple of train.stream_reset = " + std::to_string(stream_reset_) +
                  ", where the carried state starts afresh; it cannot be resumed exactly");
  }

  void begin_step(int64_t) override {
    ponder_sum_ = 0;
    aux_sums_.clear();
  }

  MicroResult micro_batch(int64_t step, int64_t micro, int64_t accum, uint64_t seed, const LossHook& hook) override {
    std::mt19937_64 rng(seed);
    Batch batch;
    ModelState* state = nullptr;
    if (stream_) {  // segment (step - 1) mod S of each row; a fresh state every stream_reset segments and at a wrap
      const int64_t segment = (step - 1) % stream_S_;
      if ((step - 1) % stream_reset_ == 0 || segment == 0) states_[micro] = model_->initial_state(B_);
      batch = stream_batch(corpus_.train.tokens, B_ * accum_, micro * B_, B_, T_, segment);
      state = &states_[micro];
    } else {
      batch = sample_batch(corpus_.train.tokens, B_, T_, rng);
    }
    auto logits = model_->forward(batch.input, state);  // [B, P, V]: the last P positions (Perceiver AR: latents)
    auto target = batch.target.narrow(1, T_ - logits.size(1), logits.size(1));
    auto flat_logits = logits.reshape({-1, logits.size(-1)});
    auto loss = torch::nn::functional::cross_entropy(flat_logits, target.reshape({-1}));
    // The objective: the loss (label-smoothed if asked), plus the auxiliary losses (ACT's ponder cost, z-loss).
    auto objective =
        label_smoothing_ > 0 ? label_smoothed_loss(flat_logits, target.reshape({-1}), label_smoothing_) : loss;
    if (hook) loss = hook(step, loss), objective = label_smoothing_ > 0 ? hook(step, objective) : loss;
    if (model_->aux_loss().defined()) objective = objective + model_->aux_loss();
    if (model_->ponder().defined()) ponder_sum_ += model_->ponder().item<double>() / static_cast<double>(accum);
    for (const auto& kv : model_->aux_metrics()) aux_sums_[kv.first] += kv.second / static_cast<double>(accum);
    (objective / static_cast<double>(accum)).backward();
    return {loss.item<double>(), B_ * scored_};  // targets: Perceiver AR's latents of the T context tokens
  }

  void step_fields(double loss, Json& line, std::string& progress) const override {
    const double bpb = loss * tokens_per_byte_ / std::log(2.0);
    line["bpb"] = bpb;
    if (scored_ != T_ && line.contains("train_tokens_per_s"))  // inputs read per second, T per row
      line["context_tokens_per_s"] = line["train_tokens_per_s"].get<double>() * static_cast<double>(T_) /
                                     static_cast<double>(scored_);
    if (mc_.act) line["ponder"] = ponder_sum_;  // mean steps N + R per position (the cost's term, before tau)
    for (const auto& kv : aux_sums_) line[kv.first] = kv.second;
    char text[64];
    std::snprintf(text, sizeof text, "loss %.4f | bpb %.3f", loss, bpb);
    progress = text;
  }

  std::vector<double> step_sums() const override {
    std::vector<double> out{ponder_sum_};
    for (const auto& kv : aux_sums_) out.push_back(kv.second);  // by name: the same order in every process
    return out;
  }
  void set_step_sums(const std::vector<double>& sums) override {
    ponder_sum_ = sums.at(0);
    size_t i = 1;
    for (auto& kv : aux_sums_) kv.second = sums.at(i++);
  }

  bool may_stop_after(int64_t step) const override { return !stream_ || step % stream_reset_ == 0; }

  Validation validate(bool) override {
    Validation v;
    v.result = evaluate_lm(*model_, corpus_.valid, B_, T_, t_["eval_batches"], t_["eval_stride"]);
    v.fields = {{"valid_loss", v.result.loss}, {"valid_bpb", v.result.bpb}, {"valid_eval", v.result.method()}};
    char text[200];
    std::snprintf(text, sizeof text, "valid loss %.4f nats/token | %.4f bits/byte | ppl %.3f (%s)", v.result.loss,
                  v.result.bpb, v.result.ppl, v.result.method().c_str());
    v.text = text;
    return v;
  }

 private:
  Json t_;
  int64_t B_ = 0, T_ = 0, accum_ = 1, scored_ = 0;
  ModelConfig mc_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Corpus corpus_;
  LanguageModel model_{nullptr};
  bool stream_ = false;
  int64_t stream_reset_ = 1, stream_S_ = 0;
  std::vector<ModelState> states_;
  double tokens_per_byte_ = 1, label_smoothing_ = 0;
  double ponder_sum_ = 0;
  std::map<std::string, double> aux_sums_;  // the layers' losses and metrics by name (sparse experts)
};

}  // namespace

std::unique_ptr<TrainTask> make_lm_task(const RunConfig& cfg, bool quiet) {
  return std::make_unique<LmTask>(cfg, quiet);
}

}  // namespace longseq
