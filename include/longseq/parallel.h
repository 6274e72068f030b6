// Parallel text for translation (../shared/mechanisms/transformer.md, P5 file formats and §2 batching): readers of
// the WMT and IWSLT layouts, and batches of sentence pairs cut by length under a token budget.
// Letters: B sentence pairs in a batch, S source length (incl. EOS), T target length (incl. BOS or EOS).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace longseq {

// Aligned sentence pairs: source[i] translates to target[i].
struct ParallelText {
  std::vector<std::string> source, target;
  int64_t dropped_empty = 0;  // pairs left out because one side was empty
};

// Two UTF-8 files, line i <-> line i (news-commentary-v8.de-en.{de,en}, europarl-v7.de-en.*). Lines split on '\n'
// only, each rstripped of Unicode whitespace ('\r' included) as sacreBLEU reads files; pairs with an empty side are
// dropped as fairseq's preprocessing does. A missing file, or files of different line counts, is an Error naming
// both files (and both counts).
ParallelText read_parallel_files(const std::string& source_path, const std::string& target_path);

// The one-segment-per-line layout of WMT <= 2020 (".sgm", "fake SGML") and of IWSLT dev/test ".xml": the text of
// each line starting with "<seg " (leading blanks allowed), between the first '>' and the last "</seg>", stripped,
// whitespace runs collapsed to one space. Entities stay escaped (the 13a tokenizer undoes them). A <seg line
// without "</seg>" is an Error naming file and line.
std::vector<std::string> read_sgm_segments(const std::string& path);

// A WMT >= 2021 test set: one real XML file holds both sides
// (<dataset><collection><doc><src><p><seg id=N>..</seg>..</src><ref translator=X>..</ref></doc>..).
struct XmlTestSet {
  std::vector<std::string> source, reference;  // reference: the chosen translator's
  std::string translator;                      // the chosen one
  std::vector<std::string> translators;        // every translator in the file, in order of first appearance
};
// Entities (named and numeric) unescaped by the XML parser; docs with a testsuite attribute skipped; segments of
// a doc ordered by integer id; a segment is kept when some translator has text for it (so the segments are
// sacreBLEU's), its reference then being the chosen translator's text, possibly "". translator "" = the first
// <ref> in the file. Malformed XML is an Error naming the file, line and byte offset; an unknown translator one
// listing those present.
XmlTestSet read_wmt_xml(const std::string& path, const std::string& translator = "");

// IWSLT / WIT3 training files train.tags.<l1>-<l2>.{l1,l2}: metadata lines dropped (those containing <url>,
// <talkid> or <keywords>, as fairseq's prepare-iwslt14.sh, and those starting with <speaker, <reviewer,
// <translator, <doc, </doc, <transcript), <title>/<description> kept without their tags; then aligned and
// emptiness-filtered as read_parallel_files.
ParallelText read_iwslt_tags(const std::string& source_path, const std::string& target_path);

// Picks the reader by name and content: a WMT >= 2021 XML file (root <dataset>) when target_path is "" or the same
// path (source = <src>, target = the first translator's <ref>); ".sgm", or ".xml" in the <seg> layout, for both
// files; a basename starting with "train.tags." for IWSLT training files; anything else as plain text.
ParallelText read_parallel_auto(const std::string& source_path, const std::string& target_path);

// One sentence pair as token ids, without BOS or EOS.
struct TranslationExample {
  std::vector<int64_t> source, target;
};

// Indices of the pairs whose two sides both have at most max_len tokens (BOS/EOS not counted), in order.
std::vector<int64_t> filter_by_length(const std::vector<TranslationExample>& examples, int64_t max_len);

// Batches of example indices (transformer.md §2: "pairs batched by length"). The padded size of a batch of n
// pairs is n * ((max source len + 1) + (max target len + 1)) = B*S + B*T of make_translation_batch's tensors;
// every batch keeps it <= max_tokens (so max_tokens ~ 2 x 25k for the paper's 25k source + 25k target tokens).
// Rule: the pairs are shuffled (seed, epoch), cut into buckets of ~100 batches' worth, each bucket sorted by
// (source len, target len), then filled greedily in that order (a batch never spans two buckets); the batch order
// is shuffled (seed, epoch). A pair that alone exceeds max_tokens is an Error naming its index and lengths
// (filter_by_length first). Deterministic: same inputs, same batches, on every platform.
std::vector<std::vector<int64_t>> length_batches(const std::vector<TranslationExample>& examples, int64_t max_tokens,
                                                 uint64_t seed, int64_t epoch);

struct TranslationBatch {
  torch::Tensor src, src_pad;                // [B, S] long, bool (true = pad): source + EOS
  torch::Tensor tgt_in, tgt_out, tgt_pad;    // [B, T] long, long, bool: BOS + target, target + EOS
  int64_t src_tokens = 0, tgt_tokens = 0;    // non-pad positions of src and of tgt_out
};
// The pairs `indices` of `examples`, padded with pad_id to the longest of the batch.
TranslationBatch make_translation_batch(const std::vector<TranslationExample>& examples,
                                        const std::vector<int64_t>& indices, int64_t pad_id, int64_t bos_id,
                                        int64_t eos_id);

}  // namespace longseq
