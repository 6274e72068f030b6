// Corpus BLEU as sacreBLEU 2.6.0 computes it (Post 2018, "A Call for Clarity in Reporting BLEU Scores"; Papineni et
// al. 2002): the 13a tokenizer, n-gram statistics summed over the corpus, the closest reference length (ties to the
// shorter), the brevity penalty, and the smoothing methods exp (default), floor, add-k and none. The numbers equal
// sacreBLEU's on the test vectors of ../shared/mechanisms/transformer.md (tests/test_bleu.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace longseq {

// The 13a tokenizer (mteval-v13a's rules, as sacreBLEU's tokenizer_13a): one UTF-8 line -> tokens joined by spaces.
std::string tokenize_13a(const std::string& line);

// Python's str.rstrip() and str.split() whitespace over UTF-8 (the Unicode spaces included, not U+200B).
std::string rstrip_unicode(const std::string& s);
std::vector<std::string> split_unicode_whitespace(const std::string& s);

struct BleuOptions {
  std::string tokenize = "13a";  // 13a | none
  std::string smooth = "exp";    // exp | floor | add-k | none
  double smooth_value = -1;      // floor: 0.1, add-k: 1 when < 0
  bool lowercase = false;
  bool effective_order = false;
};

struct BleuResult {
  double score = 0;                  // percent
  std::array<double, 4> precisions{};  // percent, after smoothing
  std::array<int64_t, 4> counts{}, totals{};
  double bp = 0;
  int64_t sys_len = 0, ref_len = 0;
  std::string signature;  // nrefs:N|case:..|eff:..|tok:..|smooth:..|version:2.6.0
  std::string summary() const;  // "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)"
};

// hyps: one line per segment; refs: one or more streams, each with as many lines as hyps (an Error otherwise).
BleuResult corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs,
                       const BleuOptions& options = {});

// BLEU from summed statistics (sacreBLEU's compute_bleu).
BleuResult compute_bleu(const std::array<int64_t, 4>& correct, const std::array<int64_t, 4>& total, int64_t sys_len,
                        int64_t ref_len, const BleuOptions& options = {});

// A text file's lines as sacreBLEU reads them: split on '\n' only, each rstripped; a missing file is an Error.
std::vector<std::string> read_bleu_lines(const std::string& path);

}  // namespace longseq
