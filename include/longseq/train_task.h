// What the trainer needs of a kind of training (a model kind with its data, loss and validation). The trainer
// (train/trainer.cpp) owns the loop, the optimizer, the schedule, checkpoints, resume, the non-finite guard and
// logging for every task alike (DESIGN.md: a model-agnostic trainer); a task owns its model, its batches and what
// its metrics lines say. Tasks: the language models (train/lm_task.cpp), translation (train/translation_task.cpp)
// and classification (train/classification_task.cpp, LRA).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "longseq/config.h"
#include "longseq/train.h"

namespace longseq {

// Tests: replaces a micro-batch's loss before its backward (fault injection).
using LossHook = std::function<torch::Tensor(int64_t step, const torch::Tensor& loss)>;

struct MicroResult {
  double loss = 0;      // the logged loss of the micro-batch: nats per target, before label smoothing
  int64_t targets = 0;  // targets trained on (tokens/s counts these)
};

struct Validation {
  EvalResult result;  // loss (nats per target), ppl, tokens; bpb where the task has bytes
  Json fields;        // the metrics line's validation fields: {"valid_loss", ...}
  std::string text;   // one line for the terminal
};

class TrainTask {
 public:
  virtual ~TrainTask() = default;
  virtual torch::nn::Module& model() = 0;
  // For the start line: "train split N tokens", "N sentence pairs".
  virtual std::string summary() const = 0;
  // Before the first step of this invocation; start = the step the run resumes after (0 = a new run).
  virtual void begin(int64_t start) { (void)start; }
  // Before the micro-batches of optimizer step `step`: per-step sums start afresh.
  virtual void begin_step(int64_t step) { (void)step; }
  // Micro-batch `micro` of step `step`: forward, then backward of (objective / accum); `seed` draws its batch and
  // masks (the same on resume). `hook` (tests) replaces the loss before the backward.
  virtual MicroResult micro_batch(int64_t step, int64_t micro, int64_t accum, uint64_t seed,
                                  const LossHook& hook) = 0;
  // The step's metrics-line fields beyond step, loss, lr, grad_norm and the timings (bpb, ponder, aux metrics), and
  // the progress display's text; loss = the step's mean logged loss.
  virtual void step_fields(double loss, Json& line, std::string& progress) const = 0;
  // The step's sums behind step_fields (ponder, accuracy, auxiliary metrics: each a sum over this process's
  // micro-batches of a value / accum), and the group's totals written back (data parallel, distributed.h).
  virtual std::vector<double> step_sums() const { return {}; }
  virtual void set_step_sums(const std::vector<double>& sums) { (void)sums; }
  // Whether a time limit may stop the run after `step` and still resume exactly (a stream: where its state resets).
  virtual bool may_stop_after(int64_t step) const {
    (void)step;
    return true;
  }
  // Validation on the task's validation split; final = the run's last, which may cover more.
  virtual Validation validate(bool final) = 0;
};

// The task of a run's config (by model.type): reads and checks its data; throws Error on bad input before anything
// is written. quiet: no progress output while reading.
std::unique_ptr<TrainTask> make_train_task(const RunConfig& cfg, bool quiet);

// Per task kind, in their files.
std::unique_ptr<TrainTask> make_lm_task(const RunConfig& cfg, bool quiet);
std::unique_ptr<TrainTask> make_translation_task(const RunConfig& cfg, bool quiet);
std::unique_ptr<TrainTask> make_classification_task(const RunConfig& cfg, bool quiet);

// splitmix64 of (a, b, c): independent seeds for each (seed, step, micro-batch), so a resumed run draws the same
// batches and dropout masks without saved RNG state.
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0);

}  // namespace longseq
