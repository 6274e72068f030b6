// Long Range Arena data (Tay et al. 2021, arXiv 2011.04006; docs/lra.md): ListOps generated as LRA's generator
// defines it (lra.md sec. 1), its tsv files read with LRA's tokenization, and the classification splits and batches
// the classification training task (train/classification_task.cpp) draws from.
//
// ListOps token ids (fixed and documented, unlike LRA's, which follow Python set order per process):
//   0 = pad, "0".."9" = 1..10, "[MIN" = 11, "[MAX" = 12, "[MED" = 13, "[SM" = 14, "X" (a "]") = 15, OOV = 16;
//   vocab_size 17.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "longseq/config.h"
#include "longseq/models.h"

namespace longseq {

// One split of a token classification task: N examples of variable length, stored end to end (N x 2000 ids padded
// would take 8x the memory of the trees themselves).
struct TokenExamples {
  std::vector<int16_t> ids;        // every example's token ids, one after another
  std::vector<int64_t> offsets{0};  // N + 1: example i is ids[offsets[i], offsets[i + 1])
  std::vector<int64_t> labels;      // N
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t length(int64_t i) const { return offsets[static_cast<size_t>(i) + 1] - offsets[static_cast<size_t>(i)]; }
  void add(const int16_t* tokens, int64_t n, int64_t label);
};

struct ClassificationSplits {
  TokenExamples train, valid, test;
};

struct ClassificationBatch {
  torch::Tensor tokens;        // [B, T] long, right-padded with 0; T = the longest example, truncated to max_len
  torch::Tensor padding_mask;  // [B, T] bool, true at padding
  torch::Tensor labels;        // [B] long
  int64_t tokens_read = 0;     // non-pad tokens
};
// Examples `indices` of `split`, each truncated to max_len tokens (LRA: 2000) and right-padded with 0 to the batch's
// longest. Under the padding mask this equals LRA's padding to max_len (masked keys and pooling ignore the pad).
ClassificationBatch make_classification_batch(const TokenExamples& split, const std::vector<int64_t>& indices,
                                              int64_t max_len);

struct ClassificationScore {
  double loss = 0;      // mean cross-entropy, nats
  double accuracy = 0;  // argmax-correct / examples (lra.md sec. 3)
  int64_t correct = 0, examples = 0;
  double seconds = 0;
};
// The first `examples` of `split` (all of it if larger) in batches of `batch`, the last one smaller (LRA's eval
// drops the remainder of image and matching, lra.md sec. 4; here every example counts); in eval mode, no gradients.
ClassificationScore score_classifier(EncoderClassifierImpl& model, const TokenExamples& split, int64_t examples,
                                     int64_t batch, int64_t max_len);

// ---- ListOps (lra.md sec. 1) ----

constexpr int64_t kListOpsVocab = 17;
constexpr int64_t kListOpsClasses = 10;
constexpr int16_t kListOpsClose = 15, kListOpsOov = 16;

struct ListOpsOptions {
  int64_t examples = 100000;  // split 96/2/2 as LRA's 96,000 / 2,000 / 2,000
  uint64_t seed = 1;
  int64_t min_length = 500;   // accept a tree iff min_length < length < max_length (LRA: 500, 2000)
  int64_t max_length = 2000;
  int64_t max_depth = 10, max_args = 10;  // LRA's generator
};
// The split sizes of `examples` (LRA: 100,000 -> 96,000 / 2,000 / 2,000).
void listops_split_sizes(int64_t examples, int64_t& train, int64_t& valid, int64_t& test);
// Distinct trees drawn as LRA's generator draws them, seeded (LRA's is not), split in drawing order; ids as above.
// Throws Error when the length window admits too few distinct trees to fill the splits.
ClassificationSplits generate_listops(const ListOpsOptions& options);
// The LRA text form of a tree given by its ids: [MAX 2 9] -> "( ( ( [MAX 2 ) 9 ) ] )".
std::string listops_source(const int16_t* ids, int64_t n);
// LRA's tokenization of a Source: "]" -> "X", "(" and ")" deleted, split on whitespace; ids as above (OOV 16).
std::vector<int16_t> listops_tokenize(const std::string& source);
// The value of a Source in the text form, parsed from its parentheses (the tests' oracle, independent of the
// generator): MIN, MAX, MED = int(np.median), SM = sum mod 10. Throws Error on malformed text.
int64_t listops_evaluate(const std::string& source);
// The token names of ids 1..16, in id order ("0".."9", "[MIN", "[MAX", "[MED", "[SM", "X", "<oov>").
const std::vector<std::string>& listops_vocabulary();

// A {task}_{split}.tsv file: header "Source<TAB>Target", then one example a line, target 0..9. A missing file
// is an Error naming the path; a malformed line names the file and the line.
TokenExamples read_listops_tsv(const std::string& path);
// Writes a split as such a file (the generator's output in LRA's layout).
void write_listops_tsv(const std::string& path, const TokenExamples& split);

// The splits a config's data section names: data.corpus listops with data.path a directory of basic_train.tsv,
// basic_val.tsv and basic_test.tsv, or data.path empty = generated with the data.listops_* keys.
ClassificationSplits read_classification_corpus(const Json& data_cfg, bool quiet = true);
// data.corpus values that are classification corpora (model.type encoder_classifier).
inline bool is_classification_corpus(const std::string& corpus) { return corpus == "listops"; }
// The generator options of a data section (data.listops_*).
ListOpsOptions listops_options(const Json& data_cfg);

}  // namespace longseq
