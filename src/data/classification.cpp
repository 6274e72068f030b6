// Token classification data (model.type encoder_classifier): split storage, padded batches, and the corpus a
// config names (LRA tasks, docs/lra.md; ListOps in data/lra_listops.cpp, Pathfinder in data/lra_pathfinder.cpp).
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

ClassificationBatch make_classification_batch(const TokenExamples& split, const std::vector<int64_t>& indices,
                                              int64_t max_len) {
  const int64_t B = static_cast<int64_t>(indices.size());
  int64_t T = 1;
  for (int64_t i : indices) T = std::max(T, std::min(split.length(i), max_len));
  ClassificationBatch b;
  b.tokens = torch::zeros({B, T}, torch::kLong);
  b.labels = torch::empty({B}, torch::kLong);
  auto tok = b.tokens.accessor<int64_t, 2>();
  auto lab = b.labels.accessor<int64_t, 1>();
  for (int64_t r = 0; r < B; ++r) {
    const int64_t i = indices[static_cast<size_t>(r)];
    const int64_t n = std::min(split.length(i), max_len);  // LRA truncates to max_length
    const int16_t* src = split.ids.data() + split.offsets[static_cast<size_t>(i)];
    for (int64_t t = 0; t < n; ++t) tok[r][t] = src[t];
    lab[r] = split.labels[static_cast<size_t>(i)];
    b.tokens_read += n;
  }
  b.padding_mask = b.tokens.eq(0);  // id 0 = padding (lra.md sec. 1)
  return b;
}

ClassificationSplits read_classification_corpus(const Json& d, bool quiet) {
  const std::string corpus = d["corpus"], path = d["path"];
  if (corpus == "pathfinder") return read_pathfinder_corpus(d, quiet);
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
