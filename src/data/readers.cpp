#include <algorithm>
#include <filesystem>
#include <map>
#include <random>

#include "longseq/common.h"
#include "longseq/data.h"
#include "longseq/runtime.h"

namespace fs = std::filesystem;

namespace longseq {

namespace {

// Only regular files are read: a device (/dev/zero) or a pipe would never end,
// and a directory would read as an empty text.
std::string read_corpus_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("corpus file " + path + " does not exist");
  if (!fs::is_regular_file(path, ec))
    throw Error("corpus file " + path + " is not a regular file (a directory, device or pipe?)");
  return read_file(path);
}

}  // namespace

std::string read_text_path(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("corpus path " + path + " does not exist");
  if (!fs::is_directory(path, ec)) return read_corpus_file(path);
  std::vector<std::string> files;
  for (auto it = fs::recursive_directory_iterator(path, ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (ec) throw Error("cannot list " + path + ": " + ec.message());
    std::error_code fec;  // dangling links, link loops and special files are skipped
    if (it->is_regular_file(fec)) files.push_back(it->path().generic_string());
  }
  if (ec) throw Error("cannot list " + path + ": " + ec.message());
  if (files.empty()) throw Error("corpus directory " + path + " holds no files");
  std::sort(files.begin(), files.end());  // deterministic across file systems
  std::string out;
  for (const auto& f : files) out += read_corpus_file(f);
  return out;
}

TextSplits split_by_fraction(const std::string& text, double valid, double test) {
  const size_t n = text.size();
  const size_t n_test = static_cast<size_t>(static_cast<double>(n) * test);
  const size_t n_valid = static_cast<size_t>(static_cast<double>(n) * valid);
  const size_t n_train = n - n_valid - n_test;
  return {text.substr(0, n_train), text.substr(n_train, n_valid), text.substr(n_train + n_valid)};
}

TextSplits split_interleaved(const std::string& text, int64_t block) {
  if (block < 1) throw Error("data.split_block must be at least 1, got " + std::to_string(block));
  TextSplits s;
  size_t start = 0;
  for (int64_t i = 0; start < text.size(); ++i) {
    // Each block ends after the first newline at or past `block` bytes, so no line is cut between splits.
    size_t end = std::min(text.size(), start + static_cast<size_t>(block));
    if (end < text.size()) {
      const size_t nl = text.find('\n', end - 1);
      end = nl == std::string::npos ? text.size() : nl + 1;
    }
    std::string& to = i % 20 == 18 ? s.valid : i % 20 == 19 ? s.test : s.train;
    to.append(text, start, end - start);
    start = end;
  }
  return s;
}

TextSplits read_enwik8(const std::string& file) {
  std::error_code ec;
  if (fs::is_directory(file, ec)) throw Error("enwik8/text8: " + file + " is a directory; give the file");
  return split_by_fraction(read_text_path(file), 0.05, 0.05);
}

namespace {

std::string first_existing(const std::string& dir, const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (path_exists(dir + "/" + n)) return dir + "/" + n;
  throw Error("corpus directory " + dir + " lacks " + join(names, " or "));
}

}  // namespace

TextSplits read_wikitext103(const std::string& dir) {
  TextSplits s;
  s.train = read_corpus_file(first_existing(dir, {"wiki.train.tokens", "wiki.train.raw"}));
  s.valid = read_corpus_file(first_existing(dir, {"wiki.valid.tokens", "wiki.valid.raw"}));
  s.test = read_corpus_file(first_existing(dir, {"wiki.test.tokens", "wiki.test.raw"}));
  return s;
}

TextSplits read_pg19(const std::string& dir) {
  TextSplits s;
  s.train = read_text_path(first_existing(dir, {"train"}));
  s.valid = read_text_path(first_existing(dir, {"validation"}));
  s.test = read_text_path(first_existing(dir, {"test"}));
  return s;
}

std::string default_pydoc_path() { return "/usr/share/doc/python3.11/html/_sources"; }

TextSplits read_pydoc(const std::string& dir, int64_t block) {
  if (!path_exists(dir))
    throw Error("the default corpus " + dir +
                " is missing: install it with `apt-get install python3.11-doc` (scripts/setup.sh does),"
                " or set data.path");
  // The sorted files end with whatsnew/ changelogs, unlike the rest: a tail split would validate on those alone.
  return block > 0 ? split_interleaved(read_text_path(dir), block) : split_by_fraction(read_text_path(dir), 0.05, 0.05);
}

std::vector<int64_t> recall_gaps(const Json& cfg) {
  auto gaps = cfg.value("recall_gaps", std::vector<int64_t>{});
  return gaps.empty() ? std::vector<int64_t>{cfg.at("recall_gap").get<int64_t>()} : gaps;
}

std::string corpus_source(const Json& cfg) {
  const std::string corpus = cfg.at("corpus"), path = cfg.at("path");
  if (corpus == "expressions")
    return "corpus expressions (generated: " + std::to_string(cfg.at("expr_bytes").get<int64_t>()) +
           " bytes, depth 1 to " + std::to_string(cfg.at("expr_max_depth").get<int64_t>()) + ")";
  if (corpus == "chains")
    return "corpus chains (generated: " + std::to_string(cfg.at("chain_bytes").get<int64_t>()) +
           " bytes, 1 to " + std::to_string(cfg.at("chain_max_depth").get<int64_t>()) + " lookups)";
  if (corpus == "recall")
    return "corpus recall (generated: " + std::to_string(cfg.at("recall_bytes").get<int64_t>()) + " bytes, gap " +
           [&] {
             std::vector<std::string> gaps;
             for (int64_t g : recall_gaps(cfg)) gaps.push_back(std::to_string(g));
             return join(gaps, ", ");
           }() + ")";
  return "corpus " + corpus + " at " + (path.empty() && corpus == "pydoc" ? default_pydoc_path() : path);
}

std::string recall_text(int64_t bytes, int64_t gap, uint64_t seed) {
  return recall_text(bytes, std::vector<int64_t>{gap}, seed);
}

std::string recall_text(int64_t bytes, const std::vector<int64_t>& gaps, uint64_t seed) {
  if (gaps.empty()) throw Error("recall: no gap to draw from");
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(n)); };
  static const char* const kWords[] = {"the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on",
                                       "with", "as", "by", "at", "from", "this", "be", "or", "an", "are", "not", "but"};
  std::string out;
  out.reserve(static_cast<size_t>(bytes) + static_cast<size_t>(*std::max_element(gaps.begin(), gaps.end())) * 2 + 64);
  while (static_cast<int64_t>(out.size()) < bytes) {
    // One gap drawn per episode (no draw with one gap, so a single-gap corpus is what it always was).
    const int64_t gap = gaps.size() == 1 ? gaps[0] : gaps[static_cast<size_t>(pick(static_cast<int64_t>(gaps.size())))];
    std::string fact(4, 'a'), value(4, '0');
    for (auto& c : fact) c = static_cast<char>('a' + pick(26));
    for (auto& c : value) c = static_cast<char>('0' + pick(10));
    out += "#" + fact + "=" + value + ";";
    const int64_t filler = gap + pick(std::max<int64_t>(1, gap / 8));  // jitter: no fixed period to count
    for (int64_t n = 0; n < filler;) {
      const std::string w = std::string(kWords[pick(24)]) + " ";
      out += w;
      n += static_cast<int64_t>(w.size());
    }
    out += "?" + fact + "=" + value + ";\n";
  }
  return out;
}

torch::Tensor recall_distances(const torch::Tensor& tokens, std::vector<int64_t> gaps) {
  std::sort(gaps.begin(), gaps.end());
  auto t = tokens.to(torch::kLong).contiguous();
  const int64_t N = t.size(0);
  const int64_t* p = t.data_ptr<int64_t>();
  auto labels = torch::zeros({N}, torch::kLong);
  int64_t* out = labels.data_ptr<int64_t>();
  int64_t fact = -1;  // position of the last '#', the fact of the episode in progress
  for (int64_t q = 0; q + 9 < N; ++q) {
    if (p[q] == '#') fact = q;
    if (p[q] != '?' || p[q + 5] != '=' || fact < 0) continue;
    bool same = true;  // the question asks for the fact's key (the split may have cut the episode's fact)
    for (int64_t k = 1; k <= 4; ++k) same = same && p[fact + k] == p[q + k];
    const int64_t filler = q - fact - 11;  // "#kkkk=dddd;" is 11 bytes
    auto g = std::upper_bound(gaps.begin(), gaps.end(), filler);
    if (!same || g == gaps.begin()) continue;
    for (int64_t o = 6; o < 10; ++o)
      if (p[q + o] >= '0' && p[q + o] <= '9') out[q + o] = *(g - 1);
    fact = -1;
  }
  return labels;
}

torch::Tensor recall_positions(const torch::Tensor& tokens) {
  auto t = tokens.to(torch::kLong).contiguous();
  const int64_t N = t.size(0);
  const int64_t* p = t.data_ptr<int64_t>();
  auto mask = torch::zeros({N}, torch::kBool);
  bool* m = mask.data_ptr<bool>();
  for (int64_t q = 0; q + 9 < N; ++q)
    if (p[q] == '?' && p[q + 5] == '=')
      for (int64_t o = 6; o < 10; ++o) m[q + o] = p[q + o] >= '0' && p[q + o] <= '9';
  return mask;
}

namespace {

// An expression of exactly depth d and its value mod 10.
std::pair<std::string, int> expression(int64_t d, std::mt19937_64& rng) {
  if (d == 0) {
    const int v = static_cast<int>(rng() % 10);
    return {std::string(1, static_cast<char>('0' + v)), v};
  }
  const int64_t other = static_cast<int64_t>(rng() % static_cast<uint64_t>(d));  // the shallower side
  const bool deep_left = rng() % 2 == 0;
  auto a = expression(deep_left ? d - 1 : other, rng), b = expression(deep_left ? other : d - 1, rng);
  const char op = rng() % 2 == 0 ? '+' : '-';  // no '*': a multiplication table is memory, not depth
  const int v = op == '+' ? a.second + b.second : a.second - b.second + 10;
  return {"(" + a.first + op + b.first + ")", v % 10};
}

}  // namespace

std::string expressions_text(int64_t bytes, int64_t max_depth, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out;
  out.reserve(static_cast<size_t>(bytes) + 256);
  while (static_cast<int64_t>(out.size()) < bytes) {
    const int64_t d = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(max_depth));
    auto e = expression(d, rng);
    out += e.first + "=" + static_cast<char>('0' + e.second) + "\n";
  }
  return out;
}

std::string chains_text(int64_t bytes, int64_t max_depth, uint64_t seed) {
  if (max_depth < 1 || max_depth > 12) throw Error("chains: max_depth must be in [1, 12] (two chains of 26 letters)");
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(n)); };
  std::string out;
  out.reserve(static_cast<size_t>(bytes) + 128);
  while (static_cast<int64_t>(out.size()) < bytes) {
    const int64_t d = 1 + pick(max_depth);
    std::string letters = "abcdefghijklmnopqrstuvwxyz";
    for (int64_t i = 25; i > 0; --i) std::swap(letters[i], letters[pick(i + 1)]);  // Fisher-Yates
    const int64_t first = pick(10), second = (first + 1 + pick(9)) % 10;          // two different answers
    std::vector<std::string> statements;
    for (int64_t c = 0; c < 2; ++c)
      for (int64_t i = 0; i < d; ++i) {  // chain c: letters[c d + i] = letters[c d + i + 1] ... = digit
        const char var = letters[c * d + i];
        const char value = i + 1 < d ? letters[c * d + i + 1] : static_cast<char>('0' + (c == 0 ? first : second));
        statements.push_back(std::string{var, '=', value, ';'});
      }
    for (int64_t i = static_cast<int64_t>(statements.size()) - 1; i > 0; --i) std::swap(statements[i], statements[pick(i + 1)]);
    const int64_t asked = pick(2);
    for (const auto& s : statements) out += s;
    out += std::string{'?', letters[asked * d], '=', static_cast<char>('0' + (asked == 0 ? first : second)), '\n'};
  }
  return out;
}

torch::Tensor chain_depths(const torch::Tensor& tokens) {
  auto t = tokens.to(torch::kLong).contiguous();
  const int64_t N = t.size(0);
  const int64_t* p = t.data_ptr<int64_t>();
  auto depths = torch::zeros({N}, torch::kLong);
  int64_t* out = depths.data_ptr<int64_t>();
  int64_t start = -1;  // the first byte of the current whole line; -1 until the first newline
  for (int64_t i = 0; i < N; ++i) {
    if (p[i] == '\n') {
      start = i + 1;
      continue;
    }
    if (start < 0 || p[i] != '?' || i + 3 >= N || p[i + 2] != '=') continue;
    std::map<int64_t, int64_t> value;  // variable -> what its statement binds it to
    for (int64_t j = start; j + 4 <= i; j += 4)
      if (p[j + 1] == '=' && p[j + 3] == ';') value[p[j]] = p[j + 2];
    int64_t at = p[i + 1], hops = 0;
    while (!(at >= '0' && at <= '9') && value.count(at) && hops <= 26) at = value[at], ++hops;
    if (at == p[i + 3] && hops >= 1) out[i + 3] = hops;
  }
  return depths;
}

torch::Tensor expression_depths(const torch::Tensor& tokens) {
  auto t = tokens.to(torch::kLong).contiguous();
  const int64_t N = t.size(0);
  const int64_t* p = t.data_ptr<int64_t>();
  auto depths = torch::zeros({N}, torch::kLong);
  int64_t* out = depths.data_ptr<int64_t>();
  int64_t open = 0, deepest = 0;
  bool whole = false;  // the line began inside the split: a cut first line is not scored
  for (int64_t i = 0; i < N; ++i) {
    if (p[i] == '(') deepest = std::max(deepest, ++open);
    else if (p[i] == ')') --open;
    else if (p[i] == '=' && whole && i + 1 < N && p[i + 1] >= '0' && p[i + 1] <= '9') out[i + 1] = deepest;
    else if (p[i] == '\n') whole = true, open = 0, deepest = 0;
  }
  return depths;
}

TextSplits read_corpus(const Json& cfg) {
  const std::string corpus = cfg.at("corpus");
  const std::string path = cfg.at("path");
  if (corpus == "recall") {  // three independent draws, 90/5/5 of the bytes
    const int64_t bytes = cfg.at("recall_bytes");
    const auto gaps = recall_gaps(cfg);
    const uint64_t seed = cfg.at("recall_seed");
    return {recall_text(bytes * 9 / 10, gaps, seed * 3 + 1), recall_text(bytes / 20, gaps, seed * 3 + 2),
            recall_text(bytes / 20, gaps, seed * 3 + 3)};
  }
  if (corpus == "chains") {
    const int64_t bytes = cfg.at("chain_bytes"), depth = cfg.at("chain_max_depth");
    const uint64_t seed = cfg.at("chain_seed");
    return {chains_text(bytes * 9 / 10, depth, seed * 3 + 1), chains_text(bytes / 20, depth, seed * 3 + 2),
            chains_text(bytes / 20, depth, seed * 3 + 3)};
  }
  if (corpus == "expressions") {
    const int64_t bytes = cfg.at("expr_bytes"), depth = cfg.at("expr_max_depth");
    const uint64_t seed = cfg.at("expr_seed");
    return {expressions_text(bytes * 9 / 10, depth, seed * 3 + 1), expressions_text(bytes / 20, depth, seed * 3 + 2),
            expressions_text(bytes / 20, depth, seed * 3 + 3)};
  }
  const std::string split = cfg.value("split", std::string("auto"));
  const int64_t block = cfg.value("split_block", int64_t{65536});
  const bool interleaved = split == "interleaved" || (split == "auto" && corpus == "pydoc");
  if (split == "interleaved" && corpus != "pydoc" && corpus != "text")
    throw Error("data.split interleaved applies to data.corpus pydoc and text; " + corpus + " has its own splits");
  if (corpus == "pydoc") return read_pydoc(path.empty() ? default_pydoc_path() : path, interleaved ? block : 0);
  if (path.empty()) throw Error("data.path must name the " + corpus + " corpus");
  if (corpus == "text")
    return interleaved ? split_interleaved(read_text_path(path), block) : split_by_fraction(read_text_path(path), 0.05, 0.05);
  if (corpus == "enwik8" || corpus == "text8") return read_enwik8(path);
  if (corpus == "wikitext103") return read_wikitext103(path);
  if (corpus == "pg19") return read_pg19(path);
  throw Error("unknown data.corpus " + corpus);
}

}  // namespace longseq
