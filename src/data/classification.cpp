// Token classification data (model.type encoder_classifier): split storage, padded batches, and the corpus a
// config names (LRA tasks, docs/lra.md; ListOps in data/lra_listops.cpp, Text, Image and Retrieval in
// data/lra_text.cpp, lra_image.cpp, lra_retrieval.cpp, Pathfinder in data/lra_pathfinder.cpp).
#include <algorithm>
#include <cstdio>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"

namespace longseq {

void TokenExamples::add(const int16_t* tokens, int64_t n, int64_t label) {
  ids.insert(ids.end(), tokens, tokens + n);
  offsets.push_back(static_cast<int64_t>(ids.size()));
  labels.push_back(label);
}

int64_t TokenExamples::add_document(const int16_t* tokens, int64_t n) {
  ids.insert(ids.end(), tokens, tokens + n);
  offsets.push_back(static_cast<int64_t>(ids.size()));
  return static_cast<int64_t>(offsets.size()) - 2;
}

void TokenExamples::add_pair(int64_t a_doc, int64_t b_doc, int64_t label) {
  pairs.push_back(a_doc);
  pairs.push_back(b_doc);
  labels.push_back(label);
}

void TokenExamples::keep_first(int64_t n) {
  labels.resize(static_cast<size_t>(n));
  if (paired()) {
    pairs.resize(static_cast<size_t>(2 * n));  // documents no kept pair names stay stored, unread
  } else {
    offsets.resize(static_cast<size_t>(n) + 1);
    ids.resize(static_cast<size_t>(offsets.back()));
  }
}

namespace {

// One side's documents of `indices`, each truncated to max_len, right-padded with 0: [B, T].
torch::Tensor batch_side(const TokenExamples& split, const std::vector<int64_t>& indices, int64_t max_len, int side,
                         int64_t& tokens_read) {
  const int64_t B = static_cast<int64_t>(indices.size());
  int64_t T = 1;
  for (int64_t i : indices) T = std::max(T, std::min(split.length(i, side), max_len));
  auto tokens = torch::zeros({B, T}, torch::kLong);
  auto tok = tokens.accessor<int64_t, 2>();
  for (int64_t r = 0; r < B; ++r) {
    const int64_t i = indices[static_cast<size_t>(r)];
    const int64_t n = std::min(split.length(i, side), max_len);  // LRA truncates to max_length
    const int16_t* src = split.tokens(i, side);
    for (int64_t t = 0; t < n; ++t) tok[r][t] = src[t];
    tokens_read += n;
  }
  return tokens;
}

}  // namespace

ClassificationBatch make_classification_batch(const TokenExamples& split, const std::vector<int64_t>& indices,
                                              int64_t max_len) {
  ClassificationBatch b;
  b.tokens = batch_side(split, indices, max_len, 0, b.tokens_read);
  b.padding_mask = b.tokens.eq(0);  // id 0 = padding (lra.md sec. 1)
  if (split.paired()) {
    b.tokens2 = batch_side(split, indices, max_len, 1, b.tokens_read);
    b.padding_mask2 = b.tokens2.eq(0);
  }
  b.labels = torch::empty({static_cast<int64_t>(indices.size())}, torch::kLong);
  auto lab = b.labels.accessor<int64_t, 1>();
  for (size_t r = 0; r < indices.size(); ++r)
    lab[static_cast<int64_t>(r)] = split.labels[static_cast<size_t>(indices[r])];
  return b;
}

torch::Tensor classify_batch(EncoderClassifierImpl& model, const ClassificationBatch& b) {
  if (b.tokens2.defined()) return model.forward_pair(b.tokens, b.padding_mask, b.tokens2, b.padding_mask2);
  return model.forward(b.tokens, b.padding_mask);
}

const FileCorpusInfo* find_file_corpus(const std::string& corpus) {
  static const FileCorpusInfo corpora[] = {  // lra.md sec. 1
      {"imdb", kByteVocab, 2, false,
       "the aclImdb directory of aclImdb_v1.tar.gz, with train/pos, train/neg, test/pos and test/neg (docs/lra.md)"},
      {"cifar10", kPixelVocab, kCifarClasses, false,
       "the cifar-10-batches-bin directory of cifar-10-binary.tar.gz, with data_batch_1.bin .. data_batch_5.bin and "
       "test_batch.bin (docs/lra.md)"},
      {"aan", kByteVocab, 2, true,
       "the tsv_data directory of LRA's lra_release.gz, with new_aan_pairs.train.tsv, new_aan_pairs.eval.tsv and "
       "new_aan_pairs.test.tsv (docs/lra.md)"},
  };
  for (const auto& c : corpora)
    if (corpus == c.name) return &c;
  return nullptr;
}

ClassificationSplits read_classification_corpus(const Json& d, bool quiet) {
  const std::string corpus = d["corpus"], path = d["path"];
  if (corpus == "pathfinder") return read_pathfinder_corpus(d, quiet);
  if (const FileCorpusInfo* info = find_file_corpus(corpus)) {
    if (path.empty()) throw Error(std::string("data.corpus ") + corpus + " needs data.path: " + info->files);
    if (!quiet) std::fprintf(stderr, "reading %s from %s ...\n", corpus.c_str(), path.c_str());
    ClassificationSplits s = corpus == "imdb" ? read_imdb(path) : corpus == "cifar10" ? read_cifar10(path)
                                                                                       : read_aan(path);
    const int64_t keep = d["valid_examples"];
    if (keep > 0 && keep < s.valid.size()) {
      s.valid.keep_first(keep);
      s.valid_is_test = false;
    }
    if (s.train.size() == 0 || s.valid.size() == 0)
      throw Error("data.corpus " + corpus + " at " + path + ": the " +
                  (s.train.size() == 0 ? "training" : "validation") + " split is empty");
    return s;
  }
  if (corpus != "listops") throw Error("data.corpus " + corpus + " is not a classification corpus");
  if (path.empty()) {
    const ListOpsOptions o = listops_options(d);
    if (!quiet)
      std::fprintf(stderr, "generating ListOps: %lld trees, %lld < length < %lld, seed %llu ...\n",
                   static_cast<long long>(o.examples), static_cast<long long>(o.min_length),
                   static_cast<long long>(o.max_length), static_cast<unsigned long long>(o.seed));
    return generate_listops(o);
  }
  if (!path_exists(path)) throw Error("data.path " + path + " does not exist (data.corpus listops reads "
                                      "basic_train.tsv, basic_val.tsv and basic_test.tsv there)");
  if (!quiet) std::fprintf(stderr, "reading ListOps from %s ...\n", path.c_str());
  ClassificationSplits s;
  s.train = read_listops_tsv(path + "/basic_train.tsv");
  s.valid = read_listops_tsv(path + "/basic_val.tsv");
  s.test = read_listops_tsv(path + "/basic_test.tsv");
  for (const auto* split : {&s.train, &s.valid})
    if (split->size() == 0)
      throw Error(path + "/basic_" + (split == &s.train ? "train" : "val") + ".tsv holds no examples");
  return s;
}

}  // namespace longseq
