// ListOps (Nangia & Bowman 2018) as Long Range Arena makes it (Tay et al. 2021; lra.md sec. 1): the generator
// tree(depth) with LRA's 0.25 rule, max depth 10, up to 10 arguments and the operators MIN MAX MED SM; trees kept
// iff 500 < length < 2000, duplicates dropped; the nested-pair text form, the tsv files and LRA's tokenization.
// Unlike LRA's (unseeded Python random, a set's iteration order for the splits) this generator is seeded and splits
// in drawing order, so a seed names one data set. Cost: O(tokens drawn); 100,000 trees of ~1,100 tokens in seconds.
#include <algorithm>
#include <array>
#include <cstdio>
#include <deque>
#include <fstream>
#include <random>
#include <string_view>
#include <unordered_set>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"

namespace longseq {

namespace {

constexpr int16_t kFirstOp = 11;  // "[MIN"; ops 11..14 in the order of kOpNames
const char* const kOpNames[4] = {"[MIN", "[MAX", "[MED", "[SM"};
constexpr int64_t kMostArgs = 32;  // bound of the child-value buffer

bool is_digit_id(int16_t id) { return id >= 1 && id <= 10; }
bool is_op_id(int16_t id) { return id >= kFirstOp && id < kFirstOp + 4; }

// MIN, MAX, MED = int(np.median) (an even count: the mean of the middle two, truncated), SM = sum mod 10.
int64_t apply_op(int op, int64_t* vals, int64_t k) {
  switch (op) {
    case 0: return *std::min_element(vals, vals + k);
    case 1: return *std::max_element(vals, vals + k);
    case 2: {
      std::sort(vals, vals + k);
      return k % 2 ? vals[k / 2] : (vals[k / 2 - 1] + vals[k / 2]) / 2;
    }
    default: {
      int64_t s = 0;
      for (int64_t i = 0; i < k; ++i) s += vals[i];
      return s % 10;
    }
  }
}

class ListOpsDrawer {
 public:
  ListOpsDrawer(const ListOpsOptions& o) : o_(o), rng_(o.seed) {}

  // One tree's ids appended to `out`; its value, or -1 once it reaches `cap` ids (too long: the draw is rejected,
  // which keeps the accepted trees' distribution: acceptance depends on the final length only).
  int64_t tree(int64_t depth, std::vector<int16_t>& out, size_t cap) {
    const double r = depth < o_.max_depth ? uniform01() : 1.0;
    if (r > 0.25) {  // a leaf (lra.md sec. 1: the 0.25 rule)
      const int64_t v = static_cast<int64_t>(below(10));
      out.push_back(static_cast<int16_t>(v + 1));
      return out.size() >= cap ? -1 : v;
    }
    const int64_t k = 2 + static_cast<int64_t>(below(static_cast<uint64_t>(o_.max_args - 1)));  // U{2..max_args}
    const int op = static_cast<int>(below(4));
    out.push_back(static_cast<int16_t>(kFirstOp + op));
    std::array<int64_t, kMostArgs> vals{};
    for (int64_t i = 0; i < k; ++i)
      if ((vals[static_cast<size_t>(i)] = tree(depth + 1, out, cap)) < 0) return -1;
    out.push_back(kListOpsClose);
    return out.size() >= cap ? -1 : apply_op(op, vals.data(), k);
  }

 private:
  double uniform01() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }
  uint64_t below(uint64_t n) {  // uniform in [0, n) by rejection: the same draws on every platform
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = rng_(); while (x >= limit);
    return x % n;
  }
  ListOpsOptions o_;
  std::mt19937_64 rng_;
};

// Each operator's number of children, at the operator's position (one pass with a stack).
std::vector<int64_t> child_counts(const int16_t* ids, int64_t n) {
  std::vector<int64_t> counts(static_cast<size_t>(n), 0), open;
  for (int64_t p = 0; p < n; ++p) {
    if (!open.empty() && ids[p] != kListOpsClose) ++counts[static_cast<size_t>(open.back())];
    if (is_op_id(ids[p])) open.push_back(p);
    else if (ids[p] == kListOpsClose && !open.empty()) open.pop_back();
  }
  return counts;
}

int64_t render(const int16_t* ids, int64_t n, int64_t p, const std::vector<int64_t>& counts, std::string& out) {
  if (p >= n) throw Error("listops: a tree's ids end inside an operator");
  const int16_t id = ids[p];
  if (is_digit_id(id)) {
    out += static_cast<char>('0' + id - 1);
    return p + 1;
  }
  if (!is_op_id(id)) throw Error("listops: id " + std::to_string(id) + " at position " + std::to_string(p) +
                                 " is neither a digit nor an operator");
  const int64_t k = counts[static_cast<size_t>(p)];
  for (int64_t i = 0; i <= k; ++i) out += "( ";  // ((((op, c1), c2) ... ck), "]"): k + 1 pairs
  out += kOpNames[id - kFirstOp];
  ++p;
  for (int64_t i = 0; i < k; ++i) {
    out += ' ';
    p = render(ids, n, p, counts, out);
    out += " )";
  }
  if (p >= n || ids[p] != kListOpsClose) throw Error("listops: an operator's children are not closed by X");
  out += " ] )";
  return p + 1;
}

bool is_python_space(char c) {  // str.split()'s ASCII whitespace, \x1c-\x1f included
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

int16_t token_id(std::string_view t) {
  if (t.size() == 1 && t[0] >= '0' && t[0] <= '9') return static_cast<int16_t>(t[0] - '0' + 1);
  if (t == "X") return kListOpsClose;
  for (int i = 0; i < 4; ++i)
    if (t == kOpNames[i]) return static_cast<int16_t>(kFirstOp + i);
  return kListOpsOov;
}

// The text form as nested pairs; a partial node is an operator with the values of its children so far.
struct Parsed {
  enum Kind { Value, Op, Close } kind = Value;
  int op = 0;
  int64_t value = 0;
  std::vector<int64_t> vals;
};

class SourceParser {
 public:
  explicit SourceParser(const std::string& s) : s_(s) {}
  int64_t run() {
    Parsed p = parse(0);
    skip();
    if (pos_ != s_.size()) fail("text after the tree");
    if (p.kind != Parsed::Value) fail("the whole text is not a complete tree");
    return p.value;
  }

 private:
  void fail(const std::string& why) const {
    throw Error("listops: malformed tree at character " + std::to_string(pos_) + ": " + why);
  }
  void skip() {
    while (pos_ < s_.size() && is_python_space(s_[pos_])) ++pos_;
  }
  Parsed parse(int depth) {
    if (depth > 10000) fail("nested too deeply");
    skip();
    if (pos_ >= s_.size()) fail("the text ends early");
    if (s_[pos_] == '(') {
      ++pos_;
      Parsed a = parse(depth + 1), b = parse(depth + 1);
      skip();
      if (pos_ >= s_.size() || s_[pos_] != ')') fail("a pair is not closed by \")\"");
      ++pos_;
      if (a.kind != Parsed::Op) fail("a pair does not begin with an operator");
      if (b.kind == Parsed::Close) {
        if (a.vals.empty()) fail("an operator without arguments");
        Parsed v;
        v.value = apply_op(a.op, a.vals.data(), static_cast<int64_t>(a.vals.size()));
        return v;
      }
      if (b.kind != Parsed::Value) fail("an operator's argument is an operator");
      a.vals.push_back(b.value);
      return a;
    }
    const size_t start = pos_;
    while (pos_ < s_.size() && !is_python_space(s_[pos_]) && s_[pos_] != '(' && s_[pos_] != ')') ++pos_;
    const std::string_view t(s_.data() + start, pos_ - start);
    Parsed p;
    if (t == "]") {
      p.kind = Parsed::Close;
    } else if (t.size() == 1 && t[0] >= '0' && t[0] <= '9') {
      p.value = t[0] - '0';
    } else {
      const int16_t id = token_id(t);
      if (!is_op_id(id)) fail("unknown token \"" + std::string(t.substr(0, 20)) + "\"");
      p.kind = Parsed::Op;
      p.op = id - kFirstOp;
    }
    return p;
  }
  const std::string& s_;
  size_t pos_ = 0;
};

}  // namespace

void listops_split_sizes(int64_t examples, int64_t& train, int64_t& valid, int64_t& test) {
  valid = test = std::max<int64_t>(1, examples / 50);  // LRA: 2,000 of 100,000 each
  train = examples - valid - test;
}

ClassificationSplits generate_listops(const ListOpsOptions& o) {
  if (o.max_args < 2 || o.max_args > kMostArgs) throw Error("listops: max_args must be in [2, 32]");
  if (o.min_length + 1 >= o.max_length)
    throw Error("listops: no length lies strictly between the minimum " + std::to_string(o.min_length) +
                " and the maximum " + std::to_string(o.max_length));
  int64_t n_train, n_valid, n_test;
  listops_split_sizes(o.examples, n_train, n_valid, n_test);
  if (n_train < 1) throw Error("listops: " + std::to_string(o.examples) + " examples leave none for training");
  ListOpsDrawer draw(o);
  std::deque<std::string> kept;  // a deque never moves its elements, so the set's views stay valid
  std::unordered_set<std::string_view> seen;
  std::vector<int64_t> labels;
  std::vector<int16_t> ids;
  // Trees are rare at the edges of the window; a window that admits too few distinct trees fails instead of looping.
  const int64_t max_draws = 1000 * o.examples + 1000000;
  for (int64_t draws = 0; static_cast<int64_t>(kept.size()) < o.examples; ++draws) {
    if (draws >= max_draws)
      throw Error("listops: " + std::to_string(draws) + " draws gave only " + std::to_string(kept.size()) + " of " +
                  std::to_string(o.examples) + " distinct trees with " + std::to_string(o.min_length) +
                  " < length < " + std::to_string(o.max_length) + "; widen the window or ask for fewer");
    ids.clear();
    const int64_t v = draw.tree(1, ids, static_cast<size_t>(o.max_length));  // the root's depth is 1
    if (v < 0 || static_cast<int64_t>(ids.size()) <= o.min_length) continue;
    std::string key(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int16_t));
    if (seen.count(key)) continue;  // the token sequence determines the tree, so equal ids = equal Source
    kept.push_back(std::move(key));
    seen.insert(kept.back());
    labels.push_back(v);
  }
  ClassificationSplits out;
  for (size_t i = 0; i < kept.size(); ++i) {
    const auto* p = reinterpret_cast<const int16_t*>(kept[i].data());
    const int64_t n = static_cast<int64_t>(kept[i].size() / sizeof(int16_t));
    const int64_t at = static_cast<int64_t>(i);
    TokenExamples& split = at < n_train ? out.train : at < n_train + n_valid ? out.valid : out.test;
    split.add(p, n, labels[i]);
  }
  return out;
}

std::string listops_source(const int16_t* ids, int64_t n) {
  const auto counts = child_counts(ids, n);
  std::string out;
  out.reserve(static_cast<size_t>(n) * 5);
  if (render(ids, n, 0, counts, out) != n) throw Error("listops: ids continue after the tree's last X");
  return out;
}

std::vector<int16_t> listops_tokenize(const std::string& source) {
  std::vector<int16_t> out;
  std::string token;
  auto flush = [&] {
    if (!token.empty()) out.push_back(token_id(token)), token.clear();
  };
  for (char c : source) {
    if (c == '(' || c == ')') continue;  // LRA deletes parentheses before splitting
    if (is_python_space(c)) flush();
    else token += c == ']' ? 'X' : c;
  }
  flush();
  return out;
}

int64_t listops_evaluate(const std::string& source) { return SourceParser(source).run(); }

const std::vector<std::string>& listops_vocabulary() {
  static const std::vector<std::string> v = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
                                             "[MIN", "[MAX", "[MED", "[SM", "X", "<oov>"};
  return v;
}

TokenExamples read_listops_tsv(const std::string& path) {
  if (!path_exists(path)) throw Error("listops: " + path + " does not exist");
  const std::string text = read_file(path);
  TokenExamples out;
  size_t pos = 0;
  int64_t line_no = 0;
  auto fail = [&](const std::string& why) {
    throw Error(path + ", line " + std::to_string(line_no) + ": " + why);
  };
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1) {
      if (line != "Source\tTarget")
        fail("the header is not \"Source<TAB>Target\" (got \"" + std::string(line.substr(0, 40)) + "\")");
      continue;
    }
    const size_t tab = line.find('\t');
    if (tab == std::string_view::npos) fail("no tab between Source and Target");
    if (line.find('\t', tab + 1) != std::string_view::npos) fail("more than two tab-separated columns");
    const std::string_view target = line.substr(tab + 1);
    if (target.size() != 1 || target[0] < '0' || target[0] > '9')
      fail("the Target is \"" + std::string(target.substr(0, 20)) + "\", not a class 0..9");
    const auto ids = listops_tokenize(std::string(line.substr(0, tab)));
    if (ids.empty()) fail("the Source has no tokens");
    out.add(ids.data(), static_cast<int64_t>(ids.size()), target[0] - '0');
  }
  if (line_no == 0) throw Error(path + " is empty: it lacks even the header \"Source<TAB>Target\"");
  return out;
}

void write_listops_tsv(const std::string& path, const TokenExamples& split) {
  std::string text = "Source\tTarget\n";
  for (int64_t i = 0; i < split.size(); ++i) {
    text += listops_source(split.ids.data() + split.offsets[static_cast<size_t>(i)], split.length(i));
    text += '\t' + std::to_string(split.labels[static_cast<size_t>(i)]) + '\n';
  }
  write_file_atomic(path, text);
}

ListOpsOptions listops_options(const Json& d) {
  ListOpsOptions o;
  o.examples = d["listops_examples"];
  o.seed = d["listops_seed"];
  o.min_length = d["listops_min_length"];
  o.max_length = d["listops_max_length"];
  return o;
}

}  // namespace longseq
