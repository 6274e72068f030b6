// Subcommands of the `longseq` program that live outside main.cpp.
#pragma once
#include <cstdint>
#include <string>

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

}  // namespace longseq
