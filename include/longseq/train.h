// Training, checkpoints and evaluation of a decoder LM run.
//
// A run directory holds:
//   config.json                  the validated config (defaults filled)
//   model.safetensors            the weights (safetensors), written before trainer_state,
//                                so it is never a checkpoint behind it
//   trainer_state.safetensors    weights + AdamW moments + step, AdamW updates and the
//                                non-finite streak, one file, so a checkpoint is
//                                replaced by a single atomic rename
//   metrics.jsonl                one JSON line per logged step and evaluation
//   tokenizer.model              the SentencePiece model, when one is used
//
// A step line of metrics.jsonl holds step, loss, bpb, lr, grad_norm,
// train_tokens_per_s (targets trained on over train_s; a model scoring only
// its last P of T positions, Perceiver AR, adds context_tokens_per_s, the
// inputs read), train_s (seconds spent in training
// steps by this invocation: validation and checkpoint time excluded) and
// elapsed_s (wall seconds since this invocation began training, everything
// included). A step with a non-finite loss or gradient is skipped (no update)
// and logged as {"step", "skipped", "lr", "nonfinite_in_a_row"}.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "longseq/config.h"
#include "longseq/data.h"
#include "longseq/models.h"
#include "longseq/safetensors.h"
#include "longseq/weight_decay.h"

namespace longseq {

// AdamW with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2).
// Weight decay applies to the parameters named in `decayed` only (for a model:
// decayed_parameters(model), see weight_decay.h).
class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, double beta1, double beta2, double eps,
        double weight_decay, const std::set<std::string>& decayed = {});
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }
  TensorFile state(const std::string& prefix) const;  // moments as named tensors
  void load_state(const TensorFile& file, const std::string& prefix, int64_t steps, const std::string& source);

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> m_, v_;
  std::vector<bool> decay_;  // per parameter
  double beta1_, beta2_, eps_, weight_decay_;
  int64_t steps_ = 0;
};

// Linear warm-up to lr, then cosine decay to lr * min_ratio at `total` steps.
double learning_rate(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio);

// Scored targets of one label of EvalResult::groups (e.g. the expressions task's answers of one depth).
struct GroupResult {
  int64_t label = 0, targets = 0;
  double loss = 0;      // nats per target
  double accuracy = 0;  // share of targets that are the argmax of their logits
  double ponder = -1;   // mean N + R of the positions predicting them (ACT); -1 without
};

struct EvalResult {
  double loss = 0;  // nats per scored token
  double bpb = 0;   // bits per byte the tokens decode to (TokenSplit::bytes)
  double ppl = 0;   // per token
  int64_t tokens = 0;         // targets scored
  int64_t split_targets = 0;  // targets in the split (its tokens - 1)
  int64_t windows = 0, seq_len = 0, stride = 0;
  int64_t unscored_head = 0;  // the split's first targets a model scoring only its last positions cannot reach
  std::string description;    // set by the stream evaluation: says what it scored (method() returns it)
  int64_t part_tokens = 0;    // targets of the part reported apart (the recall task's values); 0 = none
  double part_loss = 0;       // nats per target of that part
  double seconds = 0;         // wall time of the model's forward passes and their scoring
  std::vector<GroupResult> groups;  // per label of evaluate_lm's `groups`, ascending; empty without
  bool whole() const { return tokens == split_targets; }
  // Which evaluation this was, for the output: coverage, window and stride.
  std::string method() const;
};
// Scores the split through eval_windows (stride 0 = seq_len: non-overlapping; a model that scores only its last
// P positions, Perceiver AR, gets windows at most P apart and leaves the split's first T - P targets unscored),
// in batches of `batch` windows; `max_batches` > 0 stops after that many
// (a prefix of the split), 0 covers the whole split.
// `part` ([N] bool like the split's tokens, optional): targets whose loss is
// also reported apart (part_loss, part_tokens), as the recall task's values.
// `groups` ([N] long, optional, 0 = none): targets reported per label (EvalResult::groups), e.g.
// expression_depths() of the depth task.
EvalResult evaluate_lm(LanguageModelImpl& model, const TokenSplit& split, int64_t batch, int64_t seq_len,
                       int64_t max_batches, int64_t stride = 0, const torch::Tensor& part = {},
                       const torch::Tensor& groups = {});

// Evaluation over a stream (Dai et al. 2019, sec. 3.2): the split is cut into
// `batch` contiguous slices (stream_batch) and each is scored segment after
// segment with the model's state carried, starting afresh every `reset`
// segments (0 = never: the memory spans the whole slice, longer than any
// training reset). The same segments are also scored without state, so the
// two results cover exactly the same targets. max_segments > 0 stops early.
struct StreamEvalResult {
  EvalResult stateful, stateless;
};
// `part` [N] bool (optional): targets whose loss is also reported apart (EvalResult::part_loss), e.g.
// recall_positions() of the memory task.
StreamEvalResult evaluate_lm_stream(LanguageModelImpl& model, const TokenSplit& split, int64_t batch, int64_t seq_len,
                                    int64_t max_segments, int64_t reset, const torch::Tensor& part = {});

struct TrainOptions {
  std::string out_dir;
  bool resume = false;
  bool quiet = false;          // no progress bar
  int64_t stop_after = 0;      // stop after this step without a final checkpoint (tests: a kill)
  // Tests: replaces each micro-batch's loss (and objective) before its backward (fault injection).
  std::function<torch::Tensor(int64_t step, const torch::Tensor& loss)> loss_hook;
};

struct TrainResult {
  int64_t last_step = 0;
  std::vector<double> losses;  // training loss per step run in this call
  EvalResult valid;
  bool stopped_by_time = false;
  double tokens_per_s = 0;     // training tokens per second of this call, validation and checkpoints excluded
  Json valid_fields;           // the final validation's metrics-line fields (translation: valid_bleu, ...)
  std::string valid_text;      // the final validation, one line for the terminal
};

// The weights kept by train.keep_checkpoints: (step, path of checkpoints/step_<N>.safetensors), ascending by step.
std::vector<std::pair<int64_t, std::string>> kept_checkpoints(const std::string& run_dir);

// New run: cfg is the config; resume: cfg is ignored unless set, and must then
// equal the run's own config. Resuming a run that has a config.json but no
// checkpoint yet starts it at step 0; resuming a finished run only validates.
TrainResult train_run(const RunConfig* cfg, const TrainOptions& opts);

// A finished or checkpointed run, loaded for eval or generation.
struct LoadedRun {
  RunConfig config;
  ModelConfig model_config;
  std::unique_ptr<Tokenizer> tokenizer;
  LanguageModel model;
};
// mixer_overrides: options set on every layer whose mixer has them (override_mixer_options), for this load only.
LoadedRun load_run(const std::string& dir, const Json& mixer_overrides = Json::object());

}  // namespace longseq
