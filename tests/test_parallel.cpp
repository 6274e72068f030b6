// Parallel text readers and length batching (src/data/parallel.cpp; ../shared/mechanisms/transformer.md P5, §2).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/parallel.h"

namespace parallel_test {

using namespace longseq;
using longseq_test::scratch_dir;
using longseq_test::write_text;

// The Error message of f(), or "" when it does not throw.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(ParallelFiles, MisalignedFilesNameBothPathsAndCounts) {
  const auto dir = scratch_dir("parallel_misaligned");
  write_text(dir + "/a.de", "eins\nzwei\ndrei\n");
  write_text(dir + "/a.en", "one\ntwo\n");
  const auto msg = error_of([&] { read_parallel_files(dir + "/a.de", dir + "/a.en"); });
  EXPECT_TRUE(contains(msg, dir + "/a.de")) << msg;
  EXPECT_TRUE(contains(msg, dir + "/a.en")) << msg;
  EXPECT_TRUE(contains(msg, "3 lines")) << msg;
  EXPECT_TRUE(contains(msg, "2 lines")) << msg;
  const auto missing = error_of([&] { read_parallel_files(dir + "/a.de", dir + "/nope.en"); });
  EXPECT_TRUE(contains(missing, dir + "/nope.en")) << missing;
}

TEST(ParallelFiles, DropsEmptySidesAndStripsCarriageReturns) {
  const auto dir = scratch_dir("parallel_empty");
  // Line 2 empty on the source side, line 3 only whitespace on the target side; CRLF line ends; no final newline.
  write_text(dir + "/b.de", "Guten Tag\r\n\r\nDanke  \r\nBitte\t\r\nJa");
  write_text(dir + "/b.en", "Good day\r\nhello\r\n \t\r\nPlease\r\nYes");
  const auto p = read_parallel_files(dir + "/b.de", dir + "/b.en");
  EXPECT_EQ(p.source, (std::vector<std::string>{"Guten Tag", "Bitte", "Ja"}));
  EXPECT_EQ(p.target, (std::vector<std::string>{"Good day", "Please", "Yes"}));
  EXPECT_EQ(p.dropped_empty, 2);
}

TEST(ParallelSgm, ReadsSegLinesOnly) {
  const auto dir = scratch_dir("parallel_sgm");
  write_text(dir + "/t-src.de.sgm",
             "<srcset setid=\"newstest2013\" srclang=\"any\">\n"
             "<doc sysid=\"ref\" docid=\"d1\" genre=\"news\" origlang=\"de\">\n"
             "<p>\n"
             "<seg id=\"1\">  Ein   Satz\tmit  Abst&auml;nden  </seg>\n"
             "<seg id=\"2\">A &amp; B</seg>\n"
             "</p>\n"
             "</doc>\n"
             "</srcset>\n");
  write_text(dir + "/t-ref.en.sgm",
             "<refset setid=\"newstest2013\">\n<doc docid=\"d1\">\n<seg id=\"1\">A sentence</seg>\n"
             "<seg id=\"2\">x</seg> trailing</seg>\n</doc>\n</refset>\n");
  EXPECT_EQ(read_sgm_segments(dir + "/t-src.de.sgm"),
            (std::vector<std::string>{"Ein Satz mit Abst&auml;nden", "A &amp; B"}))
      << "whitespace collapsed, entities left escaped";
  EXPECT_EQ(read_sgm_segments(dir + "/t-ref.en.sgm"), (std::vector<std::string>{"A sentence", "x</seg> trailing"}))
      << "the text ends at the last </seg>";
  const auto p = read_parallel_auto(dir + "/t-src.de.sgm", dir + "/t-ref.en.sgm");
  EXPECT_EQ(p.source.size(), 2u);
  write_text(dir + "/bad.sgm", "<doc>\n<seg id=\"1\">no end\n");
  const auto msg = error_of([&] { read_sgm_segments(dir + "/bad.sgm"); });
  EXPECT_TRUE(contains(msg, dir + "/bad.sgm:2")) << msg;
}

const char* const kWmtXml = R"(<?xml version="1.0" encoding="utf-8"?>
<dataset id="wmttest2021">
  <collection id="general">
    <doc id="a" origlang="de">
      <src lang="de"><p>
        <seg id="10">Zehn &amp; &quot;zehn&quot;</seg>
        <seg id="2">Zwei &#228;&#x00FC;</seg>
        <seg id="3">Drei ohne Referenz</seg>
      </p></src>
      <ref lang="en" translator="A"><p>
        <seg id="2">Two</seg>
        <seg id="10">Ten &lt;&gt;</seg>
        <seg id="3"></seg>
      </p></ref>
      <ref lang="en" translator="B"><p>
        <seg id="2">Zwo</seg>
        <seg id="10">X</seg>
      </p></ref>
    </doc>
    <doc id="challenge" origlang="de" testsuite="robustness">
      <src lang="de"><p><seg id="1">Skip me</seg></p></src>
      <ref lang="en" translator="A"><p><seg id="1">Skipped</seg></p></ref>
    </doc>
    <doc id="b" origlang="en">
      <src lang="de"><p><seg id="1">Eins</seg></p></src>
      <ref lang="en" translator="A"><p><seg id="1">One</seg></p></ref>
    </doc>
  </collection>
</dataset>
)";

TEST(ParallelWmtXml, UnescapesOrdersByIdAndSkipsTestsuites) {
  const auto dir = scratch_dir("parallel_wmt_xml");
  write_text(dir + "/wmttest2021.de-en.xml", kWmtXml);
  const auto set = read_wmt_xml(dir + "/wmttest2021.de-en.xml");
  EXPECT_EQ(set.source, (std::vector<std::string>{"Zwei \u00e4\u00fc", "Zehn & \"zehn\"", "Eins"}))
      << "ids 2 < 10 as integers; id 3 has no reference text; the testsuite doc is left out";
  EXPECT_EQ(set.reference, (std::vector<std::string>{"Two", "Ten <>", "One"}));
  EXPECT_EQ(set.translator, "A");
  EXPECT_EQ(set.translators, (std::vector<std::string>{"A", "B"}));
  const auto b = read_wmt_xml(dir + "/wmttest2021.de-en.xml", "B");
  EXPECT_EQ(b.reference, (std::vector<std::string>{"Zwo", "X", ""})) << "doc b has no translator B: kept, empty";
  EXPECT_TRUE(contains(error_of([&] { read_wmt_xml(dir + "/wmttest2021.de-en.xml", "C"); }), "A, B"));
  // Both sides in one file: the target path is "" or the same path; the empty reference pair is dropped.
  const auto p = read_parallel_auto(dir + "/wmttest2021.de-en.xml", "");
  EXPECT_EQ(p.target, (std::vector<std::string>{"Two", "Ten <>", "One"}));
}

TEST(ParallelWmtXml, MalformedXmlNamesFileAndLine) {
  const auto dir = scratch_dir("parallel_bad_xml");
  write_text(dir + "/bad.xml", "<dataset>\n<doc id=\"a\">\n<src><seg id=\"1\">x</src>\n</doc>\n</dataset>\n");
  const auto msg = error_of([&] { read_wmt_xml(dir + "/bad.xml"); });
  EXPECT_TRUE(contains(msg, dir + "/bad.xml")) << msg;
  EXPECT_TRUE(contains(msg, "line 3")) << msg;
  write_text(dir + "/id.xml", "<dataset><doc id=\"a\"><src><seg id=\"x1\">x</seg></src></doc></dataset>");
  EXPECT_TRUE(contains(error_of([&] { read_wmt_xml(dir + "/id.xml"); }), "x1"));
  EXPECT_TRUE(contains(error_of([&] { read_wmt_xml(dir + "/none.xml"); }), dir + "/none.xml"));
  EXPECT_TRUE(contains(error_of([&] { read_wmt_xml(dir); }), "is a directory"));
  EXPECT_TRUE(contains(error_of([&] { read_parallel_auto(dir + "/id.xml", dir + "/other.xml"); }), "both sides"));
}

TEST(ParallelIwslt, DropsMetadataAndKeepsTitles) {
  const auto dir = scratch_dir("parallel_iwslt");
  write_text(dir + "/train.tags.de-en.de",
             "<doc docid=\"1\" genre=\"lectures\">\n<url>http://www.ted.com/talks/x.html</url>\n"
             "<keywords>talks, science</keywords>\n<speaker>Jane Doe</speaker>\n<talkid>1</talkid>\n"
             "<title>Jane Doe: Ein Titel</title>\n<description>TED Talk: Eine Beschreibung</description>\n"
             "<reviewer href=\"r\">R</reviewer>\n<translator href=\"t\">T</translator>\n"
             "Erster Satz.\n  Zweiter Satz.  \n</doc>\n");
  write_text(dir + "/train.tags.de-en.en",
             "<doc docid=\"1\" genre=\"lectures\">\n<url>http://www.ted.com/talks/x.html</url>\n"
             "<keywords>talks, science</keywords>\n<speaker>Jane Doe</speaker>\n<talkid>1</talkid>\n"
             "<title>Jane Doe: A title</title>\n<description>TED Talk: A description</description>\n"
             "First sentence.\nSecond sentence.\n</doc>\n");
  const auto p = read_parallel_auto(dir + "/train.tags.de-en.de", dir + "/train.tags.de-en.en");
  EXPECT_EQ(p.source, (std::vector<std::string>{"Jane Doe: Ein Titel", "TED Talk: Eine Beschreibung",
                                                "Erster Satz.", "Zweiter Satz."}));
  EXPECT_EQ(p.target, (std::vector<std::string>{"Jane Doe: A title", "TED Talk: A description", "First sentence.",
                                                "Second sentence."}));
}

// Random pairs of source lengths 0..59 and target lengths near them.
std::vector<TranslationExample> random_examples(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<TranslationExample> ex(static_cast<size_t>(n));
  for (auto& e : ex) {
    const int64_t s = static_cast<int64_t>(rng() % 60);
    const int64_t t = std::max<int64_t>(0, s + static_cast<int64_t>(rng() % 9) - 4);
    e.source.assign(static_cast<size_t>(s), 7);
    e.target.assign(static_cast<size_t>(t), 8);
  }
  return ex;
}

// Mean over batches of (max - min source length).
double mean_source_spread(const std::vector<TranslationExample>& ex, const std::vector<std::vector<int64_t>>& batches) {
  double sum = 0;
  for (const auto& b : batches) {
    size_t lo = SIZE_MAX, hi = 0;
    for (int64_t i : b) lo = std::min(lo, ex[i].source.size()), hi = std::max(hi, ex[i].source.size());
    sum += static_cast<double>(hi - lo);
  }
  return sum / static_cast<double>(batches.size());
}

TEST(ParallelBatches, EveryPairOnceUnderTheTokenBudget) {
  const auto ex = random_examples(3000, 1);
  const int64_t max_tokens = 600;
  const auto batches = length_batches(ex, max_tokens, 7, 0);
  std::vector<int> seen(ex.size(), 0);
  for (const auto& b : batches) {
    ASSERT_FALSE(b.empty());
    size_t s = 0, t = 0;
    for (int64_t i : b) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, static_cast<int64_t>(ex.size()));
      ++seen[i];
      s = std::max(s, ex[i].source.size()), t = std::max(t, ex[i].target.size());
    }
    EXPECT_LE(static_cast<int64_t>(b.size() * ((s + 1) + (t + 1))), max_tokens);
    // The padded tensors are exactly that size.
    const auto tb = make_translation_batch(ex, b, 0, 1, 2);
    EXPECT_EQ(tb.src.numel() + tb.tgt_in.numel(), static_cast<int64_t>(b.size() * ((s + 1) + (t + 1))));
  }
  for (int c : seen) ASSERT_EQ(c, 1);
  // Sorted within buckets: batches hold close lengths; a random batching of the same sizes spreads far wider.
  std::vector<int64_t> perm(ex.size());
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(3));
  std::vector<std::vector<int64_t>> random_batches;
  size_t at = 0;
  for (const auto& b : batches) {
    random_batches.emplace_back(perm.begin() + at, perm.begin() + at + b.size());
    at += b.size();
  }
  EXPECT_LT(mean_source_spread(ex, batches), 2.0);
  EXPECT_GT(mean_source_spread(ex, random_batches), 20.0);
}

TEST(ParallelBatches, DeterministicAndEpochReshuffles) {
  const auto ex = random_examples(2000, 2);
  const auto a = length_batches(ex, 500, 11, 3), b = length_batches(ex, 500, 11, 3);
  EXPECT_EQ(a, b);
  const auto c = length_batches(ex, 500, 11, 4);
  EXPECT_NE(a, c);
  const auto d = length_batches(ex, 500, 12, 3);
  EXPECT_NE(a, d);
  EXPECT_TRUE(length_batches({}, 500, 1, 0).empty());
}

TEST(ParallelBatches, OversizedPairIsAnErrorUnlessFiltered) {
  auto ex = random_examples(50, 3);
  ex[17].source.assign(300, 5);
  const auto msg = error_of([&] { length_batches(ex, 200, 1, 0); });
  EXPECT_TRUE(contains(msg, "pair 17")) << msg;
  EXPECT_TRUE(contains(msg, "source 300")) << msg;
  const auto kept = filter_by_length(ex, 90);
  EXPECT_EQ(kept.size(), 49u);
  EXPECT_TRUE(std::find(kept.begin(), kept.end(), 17) == kept.end());
  std::vector<TranslationExample> filtered;
  for (int64_t i : kept) filtered.push_back(ex[i]);
  EXPECT_NO_THROW(length_batches(filtered, 200, 1, 0));
  EXPECT_THROW(length_batches(ex, 0, 1, 0), Error);
  EXPECT_THROW(filter_by_length(ex, -1), Error);
}

TEST(ParallelBatches, MakeBatchPlacesBosEosAndPads) {
  std::vector<TranslationExample> ex = {{{10, 11, 12}, {20}}, {{13}, {21, 22, 23, 24}}, {{}, {}}};
  const int64_t pad = 0, bos = 1, eos = 2;
  const auto b = make_translation_batch(ex, {0, 1, 2}, pad, bos, eos);
  EXPECT_EQ(b.src.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(b.tgt_in.sizes(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(b.src.scalar_type(), torch::kLong);
  EXPECT_EQ(b.src_pad.scalar_type(), torch::kBool);
  auto rows = [](const torch::Tensor& t) {
    std::vector<std::vector<int64_t>> out;
    for (int64_t r = 0; r < t.size(0); ++r) {
      auto row = t[r].to(torch::kLong).contiguous();
      out.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
    }
    return out;
  };
  using Rows = std::vector<std::vector<int64_t>>;
  EXPECT_EQ(rows(b.src), (Rows{{10, 11, 12, 2}, {13, 2, 0, 0}, {2, 0, 0, 0}}));
  EXPECT_EQ(rows(b.src_pad), (Rows{{0, 0, 0, 0}, {0, 0, 1, 1}, {0, 1, 1, 1}}));
  EXPECT_EQ(rows(b.tgt_in), (Rows{{1, 20, 0, 0, 0}, {1, 21, 22, 23, 24}, {1, 0, 0, 0, 0}}));
  EXPECT_EQ(rows(b.tgt_out), (Rows{{20, 2, 0, 0, 0}, {21, 22, 23, 24, 2}, {2, 0, 0, 0, 0}}));
  EXPECT_EQ(rows(b.tgt_pad), (Rows{{0, 0, 1, 1, 1}, {0, 0, 0, 0, 0}, {0, 1, 1, 1, 1}}));
  EXPECT_EQ(b.src_tokens, 4 + 2 + 1);
  EXPECT_EQ(b.tgt_tokens, 2 + 5 + 1);
  EXPECT_TRUE(contains(error_of([&] { make_translation_batch(ex, {0, 3}, pad, bos, eos); }), "index 3"));
  EXPECT_THROW(make_translation_batch(ex, {}, pad, bos, eos), Error);
}

}  // namespace parallel_test
