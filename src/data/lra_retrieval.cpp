// LRA Retrieval (Tay et al. 2021; lra.md sec. 1 "Retrieval"): pairs of ACL Anthology Network papers, label 1 when
// one cites the other. Files new_aan_pairs.{train,eval,test}.tsv (lra_release.gz, tsv_data/): no header, five
// tab-separated columns label id1 id2 text1 text2, no quoting (LRA's make_csv_dataset with use_quote_delim off).
// Each text: its first 10,000 bytes, ids byte + 1, the first 4,000 ids (matching/input_pipeline.py). A document
// that recurs in several pairs of a file is stored once. Cost: one streaming pass over each file.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <unordered_map>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"

namespace longseq {

namespace {

constexpr size_t kColumns = 5;

// Document index of `ids` in `out`, appended unless an equal document is there (found by its hash).
int64_t intern_document(TokenExamples& out, std::unordered_multimap<size_t, int64_t>& by_hash,
                        const std::vector<int16_t>& ids) {
  const std::string_view bytes(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int16_t));
  const size_t h = std::hash<std::string_view>()(bytes);
  auto range = by_hash.equal_range(h);
  for (auto it = range.first; it != range.second; ++it) {
    const int64_t d = it->second;
    const auto n = static_cast<size_t>(out.offsets[static_cast<size_t>(d) + 1] - out.offsets[static_cast<size_t>(d)]);
    if (n == ids.size() && std::equal(ids.begin(), ids.end(), out.ids.begin() + out.offsets[static_cast<size_t>(d)]))
      return d;
  }
  const int64_t d = out.add_document(ids.data(), static_cast<int64_t>(ids.size()));
  by_hash.emplace(h, d);
  return d;
}

}  // namespace

TokenExamples read_aan_tsv(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw Error("aan: " + path + " does not exist (data.path must be the tsv_data directory of LRA's "
                "lra_release.gz)");
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("aan: " + path + " is not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("aan: cannot read " + path);
  TokenExamples out;
  std::unordered_multimap<size_t, int64_t> by_hash;
  std::string line;
  int64_t line_no = 0;
  auto fail = [&](const std::string& why) {
    throw Error("aan: " + path + ", line " + std::to_string(line_no) + ": " + why);
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view fields[kColumns];
    size_t n = 0, start = 0;
    for (;;) {
      const size_t tab = line.find('\t', start);
      if (n < kColumns) fields[n] = std::string_view(line).substr(start, tab == std::string::npos ? tab : tab - start);
      ++n;
      if (tab == std::string::npos) break;
      start = tab + 1;
    }
    if (n != kColumns)
      fail(std::to_string(n) + " tab-separated columns, not 5 (label, id1, id2, text1, text2)");
    const std::string label_text(fields[0]);
    char* end = nullptr;
    const double label = label_text.empty() ? NAN : std::strtod(label_text.c_str(), &end);
    if (label_text.empty() || end != label_text.c_str() + label_text.size() || (label != 0.0 && label != 1.0))
      fail("the label is \"" + label_text.substr(0, 20) + "\", not 0 or 1");
    const int64_t a = intern_document(out, by_hash, byte_ids(fields[3].substr(0, 10000), kAanDocumentTokens));
    const int64_t b = intern_document(out, by_hash, byte_ids(fields[4].substr(0, 10000), kAanDocumentTokens));
    out.add_pair(a, b, static_cast<int64_t>(label));
  }
  if (in.bad()) throw Error("aan: error while reading " + path);
  if (out.size() == 0) throw Error("aan: " + path + " holds no pairs");
  return out;
}

ClassificationSplits read_aan(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw Error("aan: data.path " + dir + " does not exist or is not a directory (it must be the tsv_data "
                "directory of LRA's lra_release.gz)");
  ClassificationSplits s;
  s.train = read_aan_tsv(dir + "/new_aan_pairs.train.tsv");  // LRA's names (lra.md sec. 1)
  s.valid = read_aan_tsv(dir + "/new_aan_pairs.eval.tsv");
  s.test = read_aan_tsv(dir + "/new_aan_pairs.test.tsv");
  return s;
}

}  // namespace longseq
