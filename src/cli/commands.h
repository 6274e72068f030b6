// Subcommands of the `longseq` program that live outside main.cpp.
#pragma once
#include <cstdint>
#include <string>

#include "longseq/lra.h"
#include "longseq/translation_run.h"

namespace longseq {

// `longseq eval RUN` on a translation run: loss, perplexity and BLEU of a split, decoded with `decode`.
void eval_translation(const std::string& run_dir, const std::string& split, int64_t bleu_sentences,
                      const DecodeOptions& decode, bool as_json, const std::string& hypotheses_out);
// `longseq translate RUN`: sentences from `input` (a file, or "-" / "" for stdin) to `output` (a file, or stdout).
void translate_command(const std::string& run_dir, const std::string& input, const std::string& output,
                       const DecodeOptions& decode, bool quiet);
// `longseq average RUN --last K --out DIR`: a new run directory with the mean of the run's last K kept checkpoints.
void average_command(const std::string& run_dir, int64_t last, const std::string& out_dir);
// `longseq corpus synthetic_translation --out DIR`: the generated splits as DIR/{train,valid,test}.{de,en}.
void write_translation_corpus(const Json& data_cfg, const std::string& out_dir);
// Whether a run directory holds a translation model (its config's model.type).
bool is_translation_run(const std::string& run_dir);

// LRA (docs/lra.md). The scaled ListOps configuration `longseq lra listops` starts from (JSON text).
const char* lra_listops_config_text();
struct LraOptions {
  std::string out_dir;   // empty: lra_<task>_<mixer>
  std::string data_dir;  // listops: empty = generated in memory; else basic_*.tsv there, generated into it when
                         // absent. text, image, retrieval: the directory of the task's files (data.path).
                         // pathfinder: empty = generated in memory; else metadata/ and imgs/ there, generated into
                         // it when absent
  bool resume = false, quiet = false;
  int threads = 0;  // the program's --threads (0: all cores), passed on to a table's runs
};
// `longseq lra listops`: trains `raw` (the config above with --mixer and --set applied), then scores the test split
// once with the final weights and writes RUN/test.json.
void lra_listops_command(Json raw, const LraOptions& options);
// What every `lra` task ends with: trains `raw` into --out (default lra_<task>_<mixer>), scores the test split once
// with the final weights, prints it beside the chance level and `reference`, writes RUN/test.json.
void lra_train_and_test(const std::string& task, const Json& raw, const LraOptions& options,
                        const std::string& reference);
// `longseq lra TASK --mixers ...` (src/cli/lra_table.cpp): the mixers to tabulate ("all": every mixer with a
// bidirectional mode; else the names, checked), and the command: each mixer trained and tested in its own process
// into options.out_dir/<mixer> (a finished one reused, an unfinished one continued), one table in
// options.out_dir/table.md and table.json with LRA's Table 1 beside it.
std::vector<std::string> lra_table_mixers(const std::vector<std::string>& given);
void lra_table_command(const std::string& task, const std::vector<std::string>& mixers, const LraOptions& options,
                       const std::vector<std::string>& sets);
// `longseq lra text|image|retrieval` (LRA's Text, Image, Retrieval from the files in --data; docs/lra.md): the
// scaled configuration of a task (JSON text), and the command.
const char* lra_file_task_config_text(const std::string& task);
void lra_file_task_command(const std::string& task, Json raw, const LraOptions& options);
// `longseq lra pathfinder`: Pathfinder-32's scaled configuration (JSON text) and the command, which ends with
// lra_train_and_test.
const char* lra_pathfinder_config_text();
void lra_pathfinder_command(Json raw, const LraOptions& options);
// `longseq eval RUN` on a classification run: accuracy and loss of a split in batches of `batch` (0 = the run's),
// the first max_batches of them (0 = all).
void eval_classification(const std::string& run_dir, const std::string& split, int64_t batch, int64_t max_batches,
                         bool as_json);
// Whether a run directory holds a classifier (model.type encoder_classifier).
bool is_classification_run(const std::string& run_dir);
// `longseq corpus listops --out DIR`: the splits as DIR/basic_{train,val,test}.tsv (LRA's layout).
void write_listops_corpus(const ClassificationSplits& splits, const std::string& out_dir);

}  // namespace longseq
