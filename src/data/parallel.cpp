// Readers of parallel text and length batching (see parallel.h; ../shared/mechanisms/transformer.md P5 and §2).
#include "longseq/parallel.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <pugixml.hpp>

#include "longseq/bleu.h"
#include "longseq/common.h"
#include "longseq/recompute.h"
#include "longseq/runtime.h"

namespace longseq {

namespace {

// read_bleu_lines reads as sacreBLEU does (P4a); the existence check gives a message naming the role of the file.
void require_file(const std::string& path, const std::string& role) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw Error(role + " file " + path + " does not exist");
  if (std::filesystem::is_directory(path, ec)) throw Error(role + " file " + path + " is a directory");
}

std::vector<std::string> read_lines(const std::string& path, const std::string& role) {
  require_file(path, role);
  return read_bleu_lines(path);
}

// Line i <-> line i; a pair with an empty side is dropped, as fairseq-preprocess (and Moses' clean-corpus-n.perl,
// which prepare-iwslt14.sh runs) drop them: an empty side teaches nothing and breaks length ratios.
ParallelText align_pairs(std::vector<std::string> source, std::vector<std::string> target,
                         const std::string& source_path, const std::string& target_path, const std::string& unit) {
  if (source.size() != target.size())
    throw Error("parallel text is misaligned: source " + source_path + " has " + std::to_string(source.size()) +
                " " + unit + ", target " + target_path + " has " + std::to_string(target.size()) + " " + unit);
  ParallelText out;
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i].empty() || target[i].empty()) {
      ++out.dropped_empty;
      continue;
    }
    out.source.push_back(std::move(source[i]));
    out.target.push_back(std::move(target[i]));
  }
  return out;
}

std::string collapse_whitespace(const std::string& s) { return join(split_unicode_whitespace(s), " "); }

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string lstrip_ascii(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

void erase_all(std::string& s, const std::string& what) {
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at)) s.erase(at, what.size());
}

// The text of an element: every text and CDATA node below it, in document order.
std::string element_text(const pugi::xml_node& node) {
  std::string out;
  for (auto child : node.children()) {
    if (child.type() == pugi::node_pcdata || child.type() == pugi::node_cdata) out += child.value();
    else if (child.type() == pugi::node_element) out += element_text(child);
  }
  return out;
}

// Every <doc> element in document order (not descending into a doc).
void collect_docs(const pugi::xml_node& node, std::vector<pugi::xml_node>& docs) {
  for (auto child : node.children()) {
    if (child.type() != pugi::node_element) continue;
    if (std::string(child.name()) == "doc") docs.push_back(child);
    else collect_docs(child, docs);
  }
}

// Every <seg> below node, by integer id; a missing, non-integer or repeated id is an Error.
std::map<int64_t, std::string> segments_by_id(const pugi::xml_node& node, const std::string& where) {
  std::map<int64_t, std::string> out;
  std::vector<pugi::xml_node> stack{node};
  while (!stack.empty()) {
    auto n = stack.back();
    stack.pop_back();
    for (auto child = n.last_child(); child; child = child.previous_sibling()) {
      if (child.type() != pugi::node_element) continue;
      if (std::string(child.name()) != "seg") {
        stack.push_back(child);
        continue;
      }
      const std::string id = child.attribute("id").value();
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(id.c_str(), &end, 10);
      if (id.empty() || *end != '\0' || errno == ERANGE)
        throw Error(where + ": <seg> with id \"" + id + "\", not an integer");
      // Newlines inside a segment would split it in a line-based file: one line per segment.
      if (!out.emplace(v, collapse_whitespace(element_text(child))).second)
        throw Error(where + ": two <seg> with id " + id);
    }
  }
  return out;
}

bool is_wmt_xml(const std::string& text) {
  for (size_t at = text.find('<'); at != std::string::npos; at = text.find('<', at + 1)) {
    if (at + 1 < text.size() && (text[at + 1] == '?' || text[at + 1] == '!')) continue;  // declaration, comment
    return text.compare(at, 8, "<dataset") == 0;
  }
  return false;
}

std::string path_extension(const std::string& path) { return std::filesystem::path(path).extension().string(); }

}  // namespace

ParallelText read_parallel_files(const std::string& source_path, const std::string& target_path) {
  return align_pairs(read_lines(source_path, "source"), read_lines(target_path, "target"), source_path, target_path,
                     "lines");
}

std::vector<std::string> read_sgm_segments(const std::string& path) {
  const auto lines = read_lines(path, "sgm");
  std::vector<std::string> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string line = lstrip_ascii(lines[i]);
    if (!starts_with(line, "<seg ")) continue;
    const size_t open = line.find('>'), close = line.rfind("</seg>");
    if (open == std::string::npos || close == std::string::npos || close < open + 1)
      throw Error(path + ":" + std::to_string(i + 1) + ": a <seg> line without \"...>text</seg>\"");
    out.push_back(collapse_whitespace(line.substr(open + 1, close - open - 1)));
  }
  return out;
}

XmlTestSet read_wmt_xml(const std::string& path, const std::string& translator) {
  require_file(path, "wmt xml");
  const std::string text = read_file(path);
  pugi::xml_document xml;
  const auto parsed = xml.load_buffer(text.data(), text.size());
  if (!parsed) {
    const size_t offset = std::min(static_cast<size_t>(std::max<ptrdiff_t>(parsed.offset, 0)), text.size());
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(offset), '\n');
    throw Error("wmt xml " + path + ": " + parsed.description() + " at line " + std::to_string(line) +
                " (byte offset " + std::to_string(offset) + ")");
  }
  std::vector<pugi::xml_node> docs;
  collect_docs(xml, docs);
  XmlTestSet out;
  struct Doc {
    std::map<int64_t, std::string> source;
    std::map<std::string, std::map<int64_t, std::string>> refs;  // translator -> segments
  };
  std::vector<Doc> kept;
  for (const auto& doc : docs) {
    if (doc.attribute("testsuite")) continue;  // challenge sets, not the news test (sacreBLEU skips them too)
    const std::string where = path + ": doc \"" + doc.attribute("id").value() + "\"";
    Doc d;
    if (auto src = doc.child("src")) d.source = segments_by_id(src, where + " <src>");
    for (auto ref = doc.child("ref"); ref; ref = ref.next_sibling("ref")) {
      const std::string name = ref.attribute("translator").value();
      if (std::find(out.translators.begin(), out.translators.end(), name) == out.translators.end())
        out.translators.push_back(name);
      d.refs[name] = segments_by_id(ref, where + " <ref translator=\"" + name + "\">");
    }
    kept.push_back(std::move(d));
  }
  if (translator.empty()) {
    out.translator = out.translators.empty() ? "" : out.translators.front();
  } else {
    if (std::find(out.translators.begin(), out.translators.end(), translator) == out.translators.end())
      throw Error("wmt xml " + path + " has no translator \"" + translator + "\"; it has: " +
                  (out.translators.empty() ? std::string("none") : join(out.translators)));
    out.translator = translator;
  }
  for (const auto& d : kept) {
    for (const auto& [id, src] : d.source) {  // std::map: ordered by integer id
      bool any = false;
      for (const auto& ref : d.refs) {
        auto it = ref.second.find(id);
        any = any || (it != ref.second.end() && !it->second.empty());
      }
      if (!any) continue;  // no reference text: not scored (sacreBLEU's rule)
      auto chosen = d.refs.find(out.translator);
      std::string ref_text;
      if (chosen != d.refs.end()) {
        auto it = chosen->second.find(id);
        if (it != chosen->second.end()) ref_text = it->second;
      }
      out.source.push_back(src);
      out.reference.push_back(ref_text);
    }
  }
  return out;
}

ParallelText read_iwslt_tags(const std::string& source_path, const std::string& target_path) {
  auto clean = [](const std::vector<std::string>& lines) {
    static const char* const kDropIfContains[] = {"<url>", "<talkid>", "<keywords>"};  // fairseq prepare-iwslt14.sh
    static const char* const kDropIfStarts[] = {"<speaker", "<reviewer", "<translator", "<doc", "</doc",
                                                "<transcript"};  // pure metadata lines of WIT3
    std::vector<std::string> out;
    for (const auto& raw : lines) {
      const std::string line = lstrip_ascii(raw);
      bool drop = false;
      for (const char* tag : kDropIfContains) drop = drop || line.find(tag) != std::string::npos;
      for (const char* tag : kDropIfStarts) drop = drop || starts_with(line, tag);
      if (drop) continue;
      std::string kept = line;
      for (const char* tag : {"<title>", "</title>", "<description>", "</description>"}) erase_all(kept, tag);
      out.push_back(rstrip_unicode(lstrip_ascii(kept)));
    }
    return out;
  };
  return align_pairs(clean(read_lines(source_path, "source")), clean(read_lines(target_path, "target")),
                     source_path, target_path, "lines after dropping metadata");
}

ParallelText read_parallel_auto(const std::string& source_path, const std::string& target_path) {
  const std::string ext = path_extension(source_path);
  if (ext == ".xml" && (target_path.empty() || target_path == source_path)) {
    require_file(source_path, "source");
    if (!is_wmt_xml(read_file(source_path)))
      throw Error(source_path + " is not a WMT >= 2021 XML test set (no <dataset> root): give the target file too");
    auto set = read_wmt_xml(source_path);
    return align_pairs(std::move(set.source), std::move(set.reference), source_path, source_path, "segments");
  }
  if (target_path.empty()) throw Error("parallel text " + source_path + ": the target file is missing");
  if (ext == ".sgm" || ext == ".xml") {
    require_file(source_path, "source");
    if (ext == ".xml" && is_wmt_xml(read_file(source_path)))
      throw Error(source_path + " is a WMT >= 2021 XML test set holding both sides: give it as the source with an"
                  " empty target (or the same path twice), not with " + target_path);
    if (path_extension(target_path) != ext)
      throw Error("parallel text: source " + source_path + " and target " + target_path + " differ in format");
    return align_pairs(read_sgm_segments(source_path), read_sgm_segments(target_path), source_path, target_path,
                       "segments");
  }
  if (starts_with(std::filesystem::path(source_path).filename().string(), "train.tags."))
    return read_iwslt_tags(source_path, target_path);
  return read_parallel_files(source_path, target_path);
}

// ---- batching (transformer.md §2) ----

namespace {

// Fisher-Yates with a plain modulo: std::shuffle's draws differ between standard libraries.
template <typename T>
void shuffle_in_place(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

int64_t padded_cost(int64_t n, int64_t max_src, int64_t max_tgt) { return n * ((max_src + 1) + (max_tgt + 1)); }

}  // namespace

std::vector<int64_t> filter_by_length(const std::vector<TranslationExample>& examples, int64_t max_len) {
  if (max_len < 0) throw Error("filter_by_length: max_len must be >= 0, got " + std::to_string(max_len));
  std::vector<int64_t> kept;
  for (size_t i = 0; i < examples.size(); ++i)
    if (static_cast<int64_t>(examples[i].source.size()) <= max_len &&
        static_cast<int64_t>(examples[i].target.size()) <= max_len)
      kept.push_back(static_cast<int64_t>(i));
  return kept;
}

std::vector<std::vector<int64_t>> length_batches(const std::vector<TranslationExample>& examples, int64_t max_tokens,
                                                 uint64_t seed, int64_t epoch) {
  if (max_tokens < 2) throw Error("length_batches: max_tokens must be >= 2, got " + std::to_string(max_tokens));
  const int64_t n = static_cast<int64_t>(examples.size());
  int64_t total_cost = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = static_cast<int64_t>(examples[i].source.size());
    const int64_t t = static_cast<int64_t>(examples[i].target.size());
    if (padded_cost(1, s, t) > max_tokens)
      throw Error("length_batches: pair " + std::to_string(i) + " (source " + std::to_string(s) + " tokens, target " +
                  std::to_string(t) + ") needs " + std::to_string(padded_cost(1, s, t)) +
                  " padded tokens with EOS/BOS, more than max_tokens " + std::to_string(max_tokens) +
                  "; filter_by_length first");
    total_cost += padded_cost(1, s, t);
  }
  if (n == 0) return {};
  std::mt19937_64 rng(draw_seed(seed, static_cast<uint64_t>(epoch)));  // splitmix64 of both: epochs differ
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  shuffle_in_place(order, rng);
  // ~100 batches per bucket: sorted runs long enough to batch similar lengths, short enough to keep randomness.
  const int64_t per_batch = std::max<int64_t>(1, max_tokens / std::max<int64_t>(1, total_cost / n));
  const int64_t bucket = 100 * per_batch;
  auto len = [&](int64_t i, bool source) {
    return static_cast<int64_t>(source ? examples[i].source.size() : examples[i].target.size());
  };
  std::vector<std::vector<int64_t>> batches;
  for (int64_t start = 0; start < n; start += bucket) {
    const auto first = order.begin() + start, last = order.begin() + std::min(n, start + bucket);
    std::stable_sort(first, last, [&](int64_t a, int64_t b) {
      return len(a, true) != len(b, true) ? len(a, true) < len(b, true) : len(a, false) < len(b, false);
    });
    std::vector<int64_t> batch;
    int64_t max_src = 0, max_tgt = 0;
    for (auto it = first; it != last; ++it) {
      const int64_t s = std::max(max_src, len(*it, true)), t = std::max(max_tgt, len(*it, false));
      if (!batch.empty() && padded_cost(static_cast<int64_t>(batch.size()) + 1, s, t) > max_tokens) {
        batches.push_back(std::move(batch));
        batch.clear();
        max_src = max_tgt = 0;
      }
      batch.push_back(*it);
      max_src = std::max(max_src, len(*it, true));
      max_tgt = std::max(max_tgt, len(*it, false));
    }
    if (!batch.empty()) batches.push_back(std::move(batch));
  }
  shuffle_in_place(batches, rng);
  return batches;
}

TranslationBatch make_translation_batch(const std::vector<TranslationExample>& examples,
                                        const std::vector<int64_t>& indices, int64_t pad_id, int64_t bos_id,
                                        int64_t eos_id) {
  if (indices.empty()) throw Error("make_translation_batch: no pairs given");
  int64_t S = 0, T = 0;
  for (int64_t i : indices) {
    if (i < 0 || i >= static_cast<int64_t>(examples.size()))
      throw Error("make_translation_batch: pair index " + std::to_string(i) + " out of range [0, " +
                  std::to_string(examples.size()) + ")");
    S = std::max(S, static_cast<int64_t>(examples[i].source.size()) + 1);  // + EOS
    T = std::max(T, static_cast<int64_t>(examples[i].target.size()) + 1);  // + BOS (in) or EOS (out)
  }
  const int64_t B = static_cast<int64_t>(indices.size());
  TranslationBatch b;
  b.src = torch::full({B, S}, pad_id, torch::kLong);
  b.tgt_in = torch::full({B, T}, pad_id, torch::kLong);
  b.tgt_out = torch::full({B, T}, pad_id, torch::kLong);
  auto src = b.src.accessor<int64_t, 2>(), tin = b.tgt_in.accessor<int64_t, 2>();
  auto tout = b.tgt_out.accessor<int64_t, 2>();
  b.src_pad = torch::ones({B, S}, torch::kBool);
  b.tgt_pad = torch::ones({B, T}, torch::kBool);
  auto spad = b.src_pad.accessor<bool, 2>(), tpad = b.tgt_pad.accessor<bool, 2>();
  for (int64_t r = 0; r < B; ++r) {
    const auto& ex = examples[indices[r]];
    const int64_t s = static_cast<int64_t>(ex.source.size()), t = static_cast<int64_t>(ex.target.size());
    for (int64_t j = 0; j < s; ++j) src[r][j] = ex.source[j];
    src[r][s] = eos_id;
    for (int64_t j = 0; j <= s; ++j) spad[r][j] = false;
    tin[r][0] = bos_id;
    for (int64_t j = 0; j < t; ++j) tin[r][j + 1] = tout[r][j] = ex.target[j];
    tout[r][t] = eos_id;
    for (int64_t j = 0; j <= t; ++j) tpad[r][j] = false;
    b.src_tokens += s + 1;
    b.tgt_tokens += t + 1;
  }
  return b;
}

}  // namespace longseq
