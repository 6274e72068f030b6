// The translation task (model.type = encoder_decoder; Vaswani et al. 2017, sec. 5): sentence pairs batched by
// length under train.batch_tokens, label-smoothed cross-entropy over the non-pad targets (sec. 5.4), validation by
// loss, perplexity and greedy-decoded sacreBLEU.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "longseq/common.h"
#include "longseq/train_task.h"
#include "longseq/translation.h"
#include "longseq/translation_run.h"

namespace longseq {

namespace {

class TranslationTask : public TrainTask {
 public:
  TranslationTask(const RunConfig& cfg, bool quiet) : t_(cfg.train) {
    const ModelConfig mc = ModelConfig::from_json(cfg.model);
    tokenizer_ = make_tokenizer(cfg.data);
    ids_ = SpecialIds::after(tokenizer_->vocab_size());
    const EncoderDecoderConfig ec = encoder_decoder_config(mc, tokenizer_->vocab_size());
    if (!quiet) std::fprintf(stderr, "reading corpus %s ...\n", cfg.data["corpus"].get<std::string>().c_str());
    splits_ = read_translation_corpus(cfg.data);
    // Pairs with a side longer than train.seq_len tokens are left out of training (t2t's max_length), and said so.
    const int64_t max_len = t_["seq_len"], budget = t_["batch_tokens"];
    const auto all = tokenize_pairs(splits_.train, *tokenizer_);
    for (int64_t i : filter_by_length(all, max_len))
      if (static_cast<int64_t>(all[i].source.size() + all[i].target.size()) + 2 <= budget)  // + EOS and BOS
        train_.push_back(all[static_cast<size_t>(i)]);
    skipped_ = static_cast<int64_t>(all.size() - train_.size());
    if (train_.empty())
      throw Error("the translation corpus has no training pair with both sides within train.seq_len = " +
                  std::to_string(max_len) + " tokens and within train.batch_tokens = " + std::to_string(budget));
    torch::manual_seed(t_["seed"].get<uint64_t>());
    model_ = EncoderDecoder(ec);
    label_smoothing_ = t_["label_smoothing"];
    seed_ = t_["seed"];
  }

  torch::nn::Module& model() override { return *model_; }

  std::string summary() const override {
    std::string s = std::to_string(model_->config().n_layers) + " + " + std::to_string(model_->config().n_layers) +
                    " layers, " + std::to_string(train_.size()) + " training pairs";
    if (skipped_ > 0) s += " (" + std::to_string(skipped_) + " over train.seq_len or train.batch_tokens left out)";
    return s + ", " + std::to_string(splits_.valid.source.size()) + " validation pairs";
  }

  void begin_step(int64_t) override { targets_ = 0, ponder_sum_ = 0; }

  MicroResult micro_batch(int64_t step, int64_t micro, int64_t accum, uint64_t, const LossHook& hook) override {
    const auto& indices = batch_at((step - 1) * accum + micro);
    TranslationBatch b = make_translation_batch(train_, indices, ids_.pad, ids_.bos, ids_.eos);
    auto logits = model_->forward(b.src, b.tgt_in, b.src_pad);
    auto flat = logits.reshape({-1, logits.size(-1)});
    auto target = b.tgt_out.reshape({-1});
    // Loss and objective over the non-pad targets, normalised by their count (tensor2tensor, transformer.md sec. 1).
    auto loss = torch::nn::functional::cross_entropy(
        flat, target, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ids_.pad));
    auto objective = label_smoothing_ > 0 ? label_smoothed_loss(flat, target, label_smoothing_, ids_.pad) : loss;
    if (hook) loss = hook(step, loss), objective = label_smoothing_ > 0 ? hook(step, objective) : loss;
    if (model_->aux_loss().defined()) objective = objective + model_->aux_loss();  // ACT's ponder cost
    if (model_->ponder().defined()) ponder_sum_ += model_->ponder().item<double>() / static_cast<double>(accum);
    (objective / static_cast<double>(accum)).backward();
    targets_ += b.tgt_tokens;
    return {loss.item<double>(), b.tgt_tokens};
  }

  std::vector<double> step_sums() const override { return {static_cast<double>(targets_), ponder_sum_}; }
  void set_step_sums(const std::vector<double>& sums) override {
    targets_ = static_cast<int64_t>(sums.at(0)), ponder_sum_ = sums.at(1);
  }

  void step_fields(double loss, Json& line, std::string& progress) const override {
    line["ppl"] = std::exp(loss);
    line["targets"] = targets_;
    if (model_->config().act) line["ponder"] = ponder_sum_;  // mean N + R over both stacks' positions
    char text[64];
    std::snprintf(text, sizeof text, "loss %.4f | ppl %.2f", loss, std::exp(loss));
    progress = text;
  }

  Validation validate(bool) override {
    DecodeOptions greedy;
    greedy.beam = 1;  // in training: greedy and batched, so validation stays cheap; `longseq eval` runs the beam
    const int64_t n = t_["bleu_sentences"];
    const TranslationEval e =
        evaluate_translation(*model_, *tokenizer_, ids_, splits_.valid, t_["batch_tokens"], n, greedy);
    Validation v;
    v.result.loss = e.loss;
    v.result.ppl = e.ppl;
    v.result.tokens = v.result.split_targets = e.targets;
    v.result.seconds = e.seconds;
    v.fields = {{"valid_loss", e.loss}, {"valid_ppl", e.ppl}, {"valid_bleu", e.bleu.score},
                {"valid_bleu_sentences", e.bleu_sentences}, {"valid_bleu_decoding", "greedy"},
                {"valid_bleu_signature", e.bleu.signature}};
    char text[240];
    std::snprintf(text, sizeof text, "valid loss %.4f nats/token, perplexity %.3f over %lld pairs; BLEU %.2f (greedy, "
                  "first %lld sentences; %s)", e.loss, e.ppl, static_cast<long long>(e.pairs), e.bleu.score,
                  static_cast<long long>(e.bleu_sentences), e.bleu.signature.c_str());
    v.text = text;
    return v;
  }

 private:
  // The g-th micro-batch of the run: epochs of length_batches follow one another, each drawn with (seed, epoch).
  const std::vector<int64_t>& batch_at(int64_t g) {
    if (g < epoch_first_) epoch_ = -1, epoch_first_ = 0, epoch_batches_.clear();  // never happens going forward
    if (epoch_ < 0) epoch_ = 0, epoch_batches_ = length_batches(train_, t_["batch_tokens"], seed_, 0);
    while (g >= epoch_first_ + static_cast<int64_t>(epoch_batches_.size())) {
      epoch_first_ += static_cast<int64_t>(epoch_batches_.size());
      epoch_batches_ = length_batches(train_, t_["batch_tokens"], seed_, ++epoch_);
    }
    return epoch_batches_[static_cast<size_t>(g - epoch_first_)];
  }

  Json t_;
  std::unique_ptr<Tokenizer> tokenizer_;
  SpecialIds ids_;
  TranslationSplits splits_;
  std::vector<TranslationExample> train_;
  int64_t skipped_ = 0;
  EncoderDecoder model_{nullptr};
  double label_smoothing_ = 0;
  uint64_t seed_ = 0;
  int64_t targets_ = 0;
  double ponder_sum_ = 0;  // ACT: the step's mean N + R, averaged over its micro-batches
  int64_t epoch_ = -1, epoch_first_ = 0;  // the cached epoch and the index of its first micro-batch
  std::vector<std::vector<int64_t>> epoch_batches_;
};

}  // namespace

std::unique_ptr<TrainTask> make_translation_task(const RunConfig& cfg, bool quiet) {
  return std::make_unique<TranslationTask>(cfg, quiet);
}

}  // namespace longseq
