// The translation task (model.type = encoder_decoder): being written; see docs/translation.md.
#include "longseq/common.h"
#include "longseq/train_task.h"
namespace longseq {
std::unique_ptr<TrainTask> make_translation_task(const RunConfig&, bool) {
  throw Error("train: model.type = encoder_decoder cannot be trained by `longseq train` in this build yet");
}
}  // namespace longseq
