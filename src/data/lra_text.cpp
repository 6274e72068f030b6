// LRA Text (Tay et al. 2021; lra.md sec. 1 "Text"): IMDB reviews as bytes, read from the aclImdb directory of
// aclImdb_v1.tar.gz ({train,test}/{pos,neg}/*.txt) as tfds imdb_reviews reads it (file bytes, ASCII whitespace
// stripped at both ends; neg 0, pos 1), ids = byte + 1 as tfds ByteTextEncoder (pad 0, vocab 257). IMDB has no
// validation split: LRA validates on the test split, and so does this reader. Cost: one read of 50,000 files.
#include <algorithm>
#include <filesystem>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"

namespace fs = std::filesystem;

namespace longseq {

namespace {

// Python's bytes.strip() set (tfds imdb_reviews strips each review).
bool is_ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// The *.txt files of one class folder, sorted by name (directory order differs across file systems).
std::vector<std::string> review_files(const std::string& folder) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw Error("imdb: " + folder + " does not exist or is not a directory (data.path must be the aclImdb "
                "directory of aclImdb_v1.tar.gz, holding train/ and test/ with pos/ and neg/ in each)");
  std::vector<std::string> files;
  for (auto it = fs::directory_iterator(folder, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code fec;
    const std::string name = it->path().filename().string();
    if (it->is_regular_file(fec) && name.size() > 4 && name.compare(name.size() - 4, 4, ".txt") == 0)
      files.push_back(it->path().string());
  }
  if (ec) throw Error("imdb: cannot list " + folder + ": " + ec.message());
  if (files.empty()) throw Error("imdb: " + folder + " holds no .txt reviews");
  std::sort(files.begin(), files.end());
  return files;
}

TokenExamples read_imdb_split(const std::string& dir, const std::string& split) {
  const auto neg = review_files(dir + "/" + split + "/neg"), pos = review_files(dir + "/" + split + "/pos");
  TokenExamples out;
  auto add = [&](const std::string& path, int64_t label) {
    const std::string text = read_file(path);
    size_t a = 0, b = text.size();
    while (a < b && is_ascii_space(text[a])) ++a;
    while (b > a && is_ascii_space(text[b - 1])) --b;
    const auto ids = byte_ids(std::string_view(text).substr(a, b - a));
    out.add(ids.data(), static_cast<int64_t>(ids.size()), label);
  };
  // Alternating classes: any prefix of the split (a partial validation) holds both classes nearly equally.
  for (size_t k = 0; k < std::max(neg.size(), pos.size()); ++k) {
    if (k < neg.size()) add(neg[k], 0);
    if (k < pos.size()) add(pos[k], 1);
  }
  return out;
}

}  // namespace

std::vector<int16_t> byte_ids(std::string_view text, int64_t max_tokens) {
  const size_t n = max_tokens < 0 ? text.size() : std::min(text.size(), static_cast<size_t>(max_tokens));
  std::vector<int16_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int16_t>(static_cast<unsigned char>(text[i]) + 1);
  return ids;
}

ClassificationSplits read_imdb(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw Error("imdb: data.path " + dir + " does not exist or is not a directory (it must be the aclImdb "
                "directory of aclImdb_v1.tar.gz)");
  if (!fs::exists(dir + "/train", ec) && fs::is_directory(dir + "/aclImdb", ec))
    throw Error("imdb: " + dir + " has no train/ but holds aclImdb/: set data.path to " + dir + "/aclImdb");
  ClassificationSplits s;
  s.train = read_imdb_split(dir, "train");
  s.test = read_imdb_split(dir, "test");
  s.valid = s.test;  // LRA: "use test set for validation because IMDb doesn't have val set"
  s.valid_is_test = true;
  return s;
}

}  // namespace longseq
