// Corpus BLEU (src/metrics/bleu.cpp) on the test vectors of ../shared/mechanisms/transformer.md, sec. 5: values
// computed by sacreBLEU 2.6.0's own source, to the digits given there.
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/bleu.h"
#include "longseq/common.h"

namespace bleu_test {

using namespace longseq;

TEST(Bleu, Tokenizer13a) {
  EXPECT_EQ(tokenize_13a("Mr. Smith paid $1,000.50 on 3-4 May."), "Mr . Smith paid $ 1,000.50 on 3 - 4 May .");
  EXPECT_EQ(tokenize_13a("It's a well-known \"fact\" (really)!"), "It's a well-known \" fact \" ( really ) !");
  EXPECT_EQ(tokenize_13a("a.b,c 1.5 1,5 x-1 1-x"), "a . b , c 1.5 1,5 x-1 1 - x");
  EXPECT_EQ(tokenize_13a("A&amp;B &quot;q&quot; &lt;x&gt;"), "A & B \" q \" < x >");
  EXPECT_EQ(tokenize_13a("Preis:\u00A010\u202F\u20AC"), "Preis : 10 \u20AC");
  EXPECT_EQ(tokenize_13a("e-mail, Stra\u00DFe."), "e-mail , Stra\u00DFe .");
  EXPECT_EQ(tokenize_13a("a..b"), "a . . b");
  EXPECT_EQ(tokenize_13a("<skipped> end"), "end");
  EXPECT_EQ(tokenize_13a("&amp;lt;"), "<") << "the entities are replaced in order";
  EXPECT_EQ(split_unicode_whitespace("a\u200Bb c").size(), 2u) << "U+200B is not whitespace to Python";
}

const std::vector<std::string> kHyps = {"The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."};
const std::vector<std::string> kR1 = {"The dog bit the man.", "It was not unexpected.", "The man bit him first."};
const std::vector<std::string> kR2 = {"The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."};

TEST(Bleu, CorpusScoresEqualSacreBleu) {
  auto r = corpus_bleu(kHyps, {kR1, kR2});
  EXPECT_EQ(r.counts, (std::array<int64_t, 4>{14, 7, 5, 3}));
  EXPECT_EQ(r.totals, (std::array<int64_t, 4>{17, 14, 11, 8}));
  EXPECT_EQ(r.sys_len, 17);
  EXPECT_EQ(r.ref_len, 18);
  EXPECT_NEAR(r.bp, 0.9428731, 1e-7);
  EXPECT_NEAR(r.score, 48.530827, 1e-6);
  EXPECT_EQ(r.summary().substr(0, 32), "BLEU = 48.53 82.4/50.0/45.5/37.5");
  EXPECT_EQ(r.signature, "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
  BleuOptions none;
  none.tokenize = "none";
  EXPECT_NEAR(corpus_bleu(kHyps, {kR1, kR2}, none).score, 49.1919566, 1e-6);
  auto one = corpus_bleu(kHyps, {kR1});
  EXPECT_EQ(one.counts, (std::array<int64_t, 4>{12, 6, 4, 3}));
  EXPECT_DOUBLE_EQ(one.bp, 1.0);
  EXPECT_NEAR(one.score, 45.0675063, 1e-6);
  EXPECT_DOUBLE_EQ(corpus_bleu({"", "", ""}, {kR1, kR2}).score, 0.0);
}

TEST(Bleu, SmoothingAndBrevity) {
  auto r = corpus_bleu({"a b c d e f"}, {{"a b c x e f g h"}});
  EXPECT_EQ(r.counts, (std::array<int64_t, 4>{5, 3, 1, 0}));
  EXPECT_EQ(r.totals, (std::array<int64_t, 4>{6, 5, 4, 3}));
  EXPECT_NEAR(r.bp, 0.7165313, 1e-7);
  EXPECT_NEAR(r.precisions[3], 100.0 / 6.0, 1e-9) << "exp smoothing: 100 / (2 total)";
  EXPECT_EQ(r.summary().substr(0, 12), "BLEU = 27.22");
  for (const std::string smooth : {"exp", "floor", "none"}) {
    BleuOptions o;
    o.smooth = smooth;
    EXPECT_NEAR(corpus_bleu({"The cat sat on the mat."}, {{"The cat is on the mat."}}, o).score, 48.8923022, 1e-6)
        << smooth;
  }
  BleuOptions addk;
  addk.smooth = "add-k";
  EXPECT_NEAR(corpus_bleu({"The cat sat on the mat."}, {{"The cat is on the mat."}}, addk).score, 59.1546369, 1e-6);
  EXPECT_NEAR(corpus_bleu({"THE cat sat on the mat."}, {{"The cat is on the mat."}}).score, 43.4720872, 1e-6);
  BleuOptions lc;
  lc.lowercase = true;
  EXPECT_NEAR(corpus_bleu({"THE cat sat on the mat."}, {{"The cat is on the mat."}}, lc).score, 48.8923022, 1e-6);
  EXPECT_NEAR(compute_bleu({9, 7, 5, 3}, {10, 8, 6, 4}, 11, 11).score, 83.75922397, 1e-7);
}

TEST(Bleu, FilesAndMisalignment) {
  const auto dir = longseq_test::scratch_dir("bleu");
  longseq_test::write_text(dir + "/hyp.txt", "The dog bit the man.  \r\nIt wasn't surprising.\nThe man had just bitten him.");
  longseq_test::write_text(dir + "/ref.txt", "The dog bit the man.\nIt was not unexpected.\nThe man bit him first.\n");
  const auto hyps = read_bleu_lines(dir + "/hyp.txt");
  ASSERT_EQ(hyps.size(), 3u);
  EXPECT_EQ(hyps[0], "The dog bit the man.") << "rstripped, '\\r' included";
  EXPECT_NEAR(corpus_bleu(hyps, {read_bleu_lines(dir + "/ref.txt")}).score, 45.0675063, 1e-6);
  try {
    corpus_bleu(hyps, {{"only one line"}});
    FAIL() << "misaligned streams must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has 1 lines, the hypotheses 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_bleu_lines(dir + "/missing.txt"), Error);
}

}  // namespace bleu_test
