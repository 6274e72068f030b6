// The classification task (model.type = encoder_classifier; LRA, Tay et al. 2021, lra.md sec. 2-3): batches of
// train.batch_size examples, mean softmax cross-entropy, accuracy; validation by accuracy and loss over the
// validation split. Batches follow a shuffled order of the training split per epoch, seeded by (train.seed, epoch),
// so step s's batch is a function of (seed, s, micro-batch) and a resumed run draws the same. tokens/s counts the
// non-pad input tokens read.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/train_task.h"

namespace longseq {

namespace {

class ClassificationTask : public TrainTask {
 public:
  ClassificationTask(const RunConfig& cfg, bool quiet) : t_(cfg.train) {
    B_ = t_["batch_size"], T_ = t_["seq_len"], accum_ = t_["accum"], seed_ = t_["seed"];
    const ModelConfig mc = ModelConfig::from_json(cfg.model);
    splits_ = read_classification_corpus(cfg.data, quiet);
    for (const TokenExamples* s : {&splits_.train, &splits_.valid, &splits_.test}) {
      if (s == &splits_.valid && splits_.valid_is_test) continue;  // IMDB: the same examples as the test split
      for (int64_t i = 0; i < s->size(); ++i)
        truncated_ += s->length(i) > T_ || (s->paired() && s->length(i, 1) > T_);
      for (int64_t label : s->labels)
        if (label < 0 || label >= mc.num_classes)
          throw Error("a label " + std::to_string(label) + " lies outside model.num_classes = " +
                      std::to_string(mc.num_classes));
    }
    torch::manual_seed(t_["seed"].get<uint64_t>());
    model_ = EncoderClassifier(mc);
  }

  torch::nn::Module& model() override { return *model_; }

  std::string summary() const override {
    std::string s = std::to_string(model_->config().n_layers) + " layers, " + std::to_string(splits_.train.size()) +
                    " training, " + std::to_string(splits_.valid.size()) + " validation, " +
                    std::to_string(splits_.test.size()) + " test examples";
    if (truncated_ > 0) s += " (" + std::to_string(truncated_) + " truncated to train.seq_len as LRA does)";
    return s;
  }

  void begin_step(int64_t) override { accuracy_ = 0; }

  MicroResult micro_batch(int64_t step, int64_t micro, int64_t accum, uint64_t, const LossHook& hook) override {
    std::vector<int64_t> indices;
    const int64_t first = ((step - 1) * accum_ + micro) * B_;  // the run's example counter at this micro-batch
    for (int64_t i = 0; i < B_; ++i) indices.push_back(example_at(first + i));
    const ClassificationBatch b = make_classification_batch(splits_.train, indices, T_);
    auto logits = classify_batch(*model_, b);  // [B, classes]
    auto loss = torch::nn::functional::cross_entropy(logits, b.labels);
    if (hook) loss = hook(step, loss);
    auto objective = model_->aux_loss().defined() ? loss + model_->aux_loss() : loss;
    (objective / static_cast<double>(accum)).backward();
    accuracy_ += logits.argmax(-1).eq(b.labels).to(torch::kDouble).mean().item<double>() / static_cast<double>(accum);
    return {loss.item<double>(), b.tokens_read};
  }

  std::vector<double> step_sums() const override { return {accuracy_}; }
  void set_step_sums(const std::vector<double>& sums) override { accuracy_ = sums.at(0); }

  void step_fields(double loss, Json& line, std::string& progress) const override {
    line["accuracy"] = accuracy_;
    char text[64];
    std::snprintf(text, sizeof text, "loss %.4f | acc %.3f", loss, accuracy_);
    progress = text;
  }

  Validation validate(bool final) override {
    const int64_t batches = t_["eval_batches"];
    const int64_t n = final || batches == 0 ? splits_.valid.size() : std::min(splits_.valid.size(), batches * B_);
    const ClassificationScore s = score_classifier(*model_, splits_.valid, n, B_, T_);
    Validation v;
    v.result.loss = s.loss;
    v.result.ppl = std::exp(s.loss);
    v.result.tokens = v.result.split_targets = s.examples;
    v.result.seconds = s.seconds;
    v.fields = {{"valid_loss", s.loss}, {"valid_accuracy", s.accuracy}, {"valid_examples", s.examples}};
    char text[160];
    std::snprintf(text, sizeof text, "valid accuracy %.2f%% (%lld of %lld examples), loss %.4f nats",
                  100 * s.accuracy, static_cast<long long>(s.correct), static_cast<long long>(s.examples), s.loss);
    v.text = text;
    return v;
  }

 private:
  // The g-th training example of the run: epoch g / N in its own shuffled order.
  int64_t example_at(int64_t g) {
    const int64_t N = splits_.train.size(), epoch = g / N;
    if (epoch != epoch_) {
      order_.resize(static_cast<size_t>(N));
      std::iota(order_.begin(), order_.end(), int64_t{0});
      std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch), 0x4c5241));  // "LRA": apart from steps'
      for (int64_t i = N - 1; i > 0; --i)  // Fisher-Yates with our own draws: the same order on every platform
        std::swap(order_[static_cast<size_t>(i)], order_[rng() % static_cast<uint64_t>(i + 1)]);
      epoch_ = epoch;
    }
    return order_[static_cast<size_t>(g % N)];
  }

  Json t_;
  int64_t B_ = 0, T_ = 0, accum_ = 1, truncated_ = 0;
  uint64_t seed_ = 0;
  ClassificationSplits splits_;
  EncoderClassifier model_{nullptr};
  double accuracy_ = 0;
  int64_t epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace

ClassificationScore score_classifier(EncoderClassifierImpl& model, const TokenExamples& split, int64_t examples,
                                     int64_t batch, int64_t max_len) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto t0 = std::chrono::steady_clock::now();
  ClassificationScore s;
  double loss_sum = 0;
  const int64_t n = std::min(examples, split.size());
  for (int64_t first = 0; first < n; first += batch) {  // every example, the last batch smaller (no drop_remainder)
    std::vector<int64_t> indices;
    for (int64_t i = first; i < std::min(n, first + batch); ++i) indices.push_back(i);
    const ClassificationBatch b = make_classification_batch(split, indices, max_len);
    auto logits = classify_batch(model, b);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, b.labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    s.correct += logits.argmax(-1).eq(b.labels).sum().item<int64_t>();
    s.examples += static_cast<int64_t>(indices.size());
  }
  if (was_training) model.train();
  s.loss = s.examples > 0 ? loss_sum / static_cast<double>(s.examples) : 0;
  s.accuracy = s.examples > 0 ? static_cast<double>(s.correct) / static_cast<double>(s.examples) : 0;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

std::unique_ptr<TrainTask> make_classification_task(const RunConfig& cfg, bool quiet) {
  return std::make_unique<ClassificationTask>(cfg, quiet);
}

}  // namespace longseq
