// Corpus BLEU as sacreBLEU 2.6.0 (see bleu.h): text handled as Unicode code points decoded from UTF-8, so the
// tokenizer's character classes and the whitespace sets are Python's.
#include "longseq/bleu.h"

#include <locale.h>
#include <wctype.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "longseq/common.h"

namespace longseq {

namespace {

std::u32string decode(const std::string& s) {  // invalid bytes pass through as U+FFFD
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
      out.push_back(0xFFFD), ++i;
      continue;
    }
    char32_t cp = n == 1 ? c : c & (0x7F >> n);
    bool ok = true;
    for (int k = 1; k < n; ++k) {
      const unsigned char d = s[i + k];
      ok = ok && (d >> 6) == 2;
      cp = (cp << 6) | (d & 0x3F);
    }
    out.push_back(ok ? cp : 0xFFFD);
    i += ok ? n : 1;
  }
  return out;
}

std::string encode(const std::u32string& s) {
  std::string out;
  for (char32_t cp : s) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

// Python's str.isspace() set (what split() and rstrip() use).
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
}

// One left-to-right, non-overlapping pass of a two-character pattern (first, second) -> replacement.
template <class First, class Second, class Emit>
std::u32string pass2(const std::u32string& in, First first, Second second, Emit emit) {
  std::u32string out;
  for (size_t i = 0; i < in.size();) {
    if (i + 1 < in.size() && first(in[i]) && second(in[i + 1])) {
      emit(out, in[i], in[i + 1]);
      i += 2;
    } else {
      out.push_back(in[i++]);
    }
  }
  return out;
}

std::string lowercase(const std::string& s) {  // Unicode simple case mapping (Python's lower() for nearly all text)
  static locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
  auto cps = decode(s);
  for (auto& c : cps) c = utf8 ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), utf8))
                               : (c < 0x80 ? static_cast<char32_t>(std::tolower(static_cast<int>(c))) : c);
  return encode(cps);
}

std::string fixed(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

}  // namespace

std::string rstrip_unicode(const std::string& s) {
  auto cps = decode(s);
  while (!cps.empty() && is_space(cps.back())) cps.pop_back();
  return encode(cps);
}

std::vector<std::string> split_unicode_whitespace(const std::string& s) {
  std::vector<std::string> out;
  std::u32string word;
  for (char32_t c : decode(s)) {
    if (is_space(c)) {
      if (!word.empty()) out.push_back(encode(word)), word.clear();
    } else {
      word.push_back(c);
    }
  }
  if (!word.empty()) out.push_back(encode(word));
  return out;
}

std::string tokenize_13a(const std::string& line) {
  std::string s = line;
  replace_all(s, "<skipped>", "");
  replace_all(s, "-\n", "");
  for (auto& c : s)
    if (c == '\n') c = ' ';
  if (s.find('&') != std::string::npos) {  // in this order, each over the whole line: "&amp;lt;" ends as '<'
    replace_all(s, "&quot;", "\"");
    replace_all(s, "&amp;", "&");
    replace_all(s, "&lt;", "<");
    replace_all(s, "&gt;", ">");
  }
  const std::u32string punct = U" !\"#$%&()*+/:;<=>?@[\\]^_`{|}~";
  std::u32string in(1, U' '), out;  // appended, not `U" " + ...`: GCC 12 misreads that as an overflow in C++20
  in += decode(s);
  in += U' ';
  for (char32_t c : in) {  // R1: each of these characters stands alone
    if (punct.find(c) != std::u32string::npos) out += U' ', out.push_back(c), out += U' ';
    else out.push_back(c);
  }
  auto period = [](char32_t c) { return c == '.' || c == ','; };
  auto non_digit = [](char32_t c) { return !is_digit(c); };
  out = pass2(out, non_digit, period, [](std::u32string& o, char32_t a, char32_t b) {  // R2: "\1 \2 "
    o.push_back(a), o.push_back(' '), o.push_back(b), o.push_back(' ');
  });
  out = pass2(out, period, non_digit, [](std::u32string& o, char32_t a, char32_t b) {  // R3: " \1 \2"
    o.push_back(' '), o.push_back(a), o.push_back(' '), o.push_back(b);
  });
  out = pass2(out, is_digit, [](char32_t c) { return c == '-'; }, [](std::u32string& o, char32_t a, char32_t b) {
    o.push_back(a), o.push_back(' '), o.push_back(b), o.push_back(' ');  // R4: "\1 \2 "
  });
  std::string joined;
  for (const auto& w : split_unicode_whitespace(encode(out))) joined += (joined.empty() ? "" : " ") + w;
  return joined;
}

BleuResult compute_bleu(const std::array<int64_t, 4>& correct, const std::array<int64_t, 4>& total, int64_t sys_len,
                        int64_t ref_len, const BleuOptions& o) {
  BleuResult r;
  r.counts = correct, r.totals = total, r.sys_len = sys_len, r.ref_len = ref_len;
  r.bp = sys_len >= ref_len ? 1.0 : sys_len > 0 ? std::exp(1.0 - static_cast<double>(ref_len) / sys_len) : 0.0;
  bool any = false;
  for (auto c : correct) any = any || c > 0;
  if (!any) return r;  // score 0, precisions 0
  const double k = o.smooth_value >= 0 ? o.smooth_value : o.smooth == "floor" ? 0.1 : 1.0;
  double m = 1.0;  // exp smoothing: 1 / 2^m for each order with no match
  int eff = 4;
  for (int n = 1; n <= 4; ++n) {
    double c = static_cast<double>(correct[n - 1]), t = static_cast<double>(total[n - 1]);
    if (o.smooth == "add-k" && n > 1) c += k, t += k;
    if (t == 0) break;
    if (o.effective_order) eff = n;
    if (c == 0) {
      if (o.smooth == "exp") m *= 2, r.precisions[n - 1] = 100.0 / (m * t);
      else if (o.smooth == "floor") r.precisions[n - 1] = 100.0 * k / t;
    } else {
      r.precisions[n - 1] = 100.0 * c / t;
    }
  }
  double logs = 0;
  for (int n = 0; n < eff; ++n) logs += r.precisions[n] > 0 ? std::log(r.precisions[n]) : -9999999999.0;
  r.score = r.bp * std::exp(logs / eff);
  return r;
}

BleuResult corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs,
                       const BleuOptions& o) {
  if (o.tokenize != "13a" && o.tokenize != "none") throw Error("bleu: tokenize \"" + o.tokenize + "\" is not 13a or none");
  if (o.smooth != "exp" && o.smooth != "floor" && o.smooth != "add-k" && o.smooth != "none")
    throw Error("bleu: smooth \"" + o.smooth + "\" is not one of exp, floor, add-k, none");
  if (refs.empty()) throw Error("bleu: no reference stream given");
  for (size_t i = 0; i < refs.size(); ++i)
    if (refs[i].size() != hyps.size())
      throw Error("bleu: reference stream " + std::to_string(i + 1) + " has " + std::to_string(refs[i].size()) +
                  " lines, the hypotheses " + std::to_string(hyps.size()));
  auto prep = [&](const std::string& s) {
    const std::string t = rstrip_unicode(o.lowercase ? lowercase(s) : s);
    return split_unicode_whitespace(o.tokenize == "13a" ? tokenize_13a(t) : t);
  };
  using Counts = std::map<std::vector<std::string>, int64_t>;
  auto ngrams = [](const std::vector<std::string>& w, Counts* by_order) {
    for (size_t n = 1; n <= 4; ++n)
      for (size_t i = 0; i + n <= w.size(); ++i) ++by_order[n - 1][std::vector<std::string>(w.begin() + i, w.begin() + i + n)];
  };
  std::array<int64_t, 4> correct{}, total{};
  int64_t sys_len = 0, ref_len = 0;
  for (size_t s = 0; s < hyps.size(); ++s) {
    const auto h = prep(hyps[s]);
    Counts hc[4], rc[4];
    ngrams(h, hc);
    int64_t closest = -1;
    for (const auto& stream : refs) {
      const auto r = prep(stream[s]);
      const int64_t len = static_cast<int64_t>(r.size()), hl = static_cast<int64_t>(h.size());
      if (closest < 0 || std::llabs(len - hl) < std::llabs(closest - hl) ||
          (std::llabs(len - hl) == std::llabs(closest - hl) && len < closest))
        closest = len;  // the closest reference length, ties to the shorter
      Counts one[4];
      ngrams(r, one);
      for (int n = 0; n < 4; ++n)
        for (const auto& kv : one[n]) rc[n][kv.first] = std::max(rc[n][kv.first], kv.second);
    }
    sys_len += static_cast<int64_t>(h.size()), ref_len += closest;
    for (int n = 0; n < 4; ++n) {
      for (const auto& kv : hc[n]) {
        auto it = rc[n].find(kv.first);
        if (it != rc[n].end()) correct[n] += std::min(kv.second, it->second);
      }
      total[n] += std::max<int64_t>(0, static_cast<int64_t>(h.size()) - n);
    }
  }
  auto r = compute_bleu(correct, total, sys_len, ref_len, o);
  r.signature = "nrefs:" + std::to_string(refs.size()) + "|case:" + (o.lowercase ? "lc" : "mixed") +
                "|eff:" + (o.effective_order ? "yes" : "no") + "|tok:" + o.tokenize + "|smooth:" + o.smooth +
                "|version:2.6.0";
  return r;
}

std::string BleuResult::summary() const {
  std::string p;
  for (int n = 0; n < 4; ++n) {
    if (n) p += '/';
    p += fixed(precisions[n], 1);
  }
  return "BLEU = " + fixed(score, 2) + " " + p + " (BP = " + fixed(bp, 3) + " ratio = " +
         fixed(ref_len > 0 ? static_cast<double>(sys_len) / ref_len : 0.0, 3) + " hyp_len = " + std::to_string(sys_len) +
         " ref_len = " + std::to_string(ref_len) + ")";
}

std::vector<std::string> read_bleu_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("bleu: cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t at = text.find('\n'); at != std::string::npos; start = at + 1, at = text.find('\n', start))
    lines.push_back(rstrip_unicode(text.substr(start, at - start)));
  if (start < text.size()) lines.push_back(rstrip_unicode(text.substr(start)));  // no newline at the end
  return lines;
}

}  // namespace longseq
