#include <gtest/gtest.h>

#include <filesystem>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/data.h"

using namespace longseq;
using longseq_test::scratch_dir;
using longseq_test::write_text;

namespace data_test {

TEST(ByteTokenizer, RoundTripsEveryByte) {
  auto tok = make_byte_tokenizer();
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  auto ids = tok->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(ids[i], i);
  EXPECT_EQ(tok->decode(ids), all);
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_THROW(tok->decode({300}), Error);
}

TEST(SentencePiece, TrainsLoadsAndRoundTrips) {
  auto dir = scratch_dir("spm");
  write_text(dir + "/corpus.txt", longseq_test::sample_text(60000));
  train_sentencepiece(dir + "/corpus.txt", dir + "/sp", 300);  // 256 byte-fallback pieces + text
  auto tok = load_sentencepiece(dir + "/sp.model");
  EXPECT_EQ(tok->vocab_size(), 300);
  const std::string text = "the lazy fox attends to a long sequence";
  auto ids = tok->encode(text);
  EXPECT_LT(ids.size(), text.size());  // subwords are longer than bytes
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_THROW(load_sentencepiece(dir + "/missing.model"), Error);
  write_text(dir + "/corrupt.model", "not a model");
  EXPECT_THROW(load_sentencepiece(dir + "/corrupt.model"), Error);
}

// The tokenizers longseq trains are lossless, so bits per byte count every
// byte of the text and generated text keeps its layout. SentencePiece's
// defaults (NFKC, whitespace runs collapsed, newlines to spaces, a dummy
// prefix space) fail this.
TEST(SentencePiece, DecodingAnEncodingGivesTheTextBackByteForByte) {
  auto dir = scratch_dir("spm_lossless");
  std::string corpus = longseq_test::sample_text(60000);
  corpus += "\n    def f(x):\n        return x  # indented\n\tTab\there\n";
  write_text(dir + "/corpus.txt", corpus);
  for (const char* type : {"unigram", "bpe"}) {
    train_sentencepiece(dir + "/corpus.txt", dir + "/sp_" + type, 320, type);
    auto tok = load_sentencepiece(dir + "/sp_" + type + ".model");
    const std::vector<std::string> texts = {
        "the lazy fox.\nattends to\n\n\na long sequence\n",  // newlines, blank lines
        "  leading spaces, runs   of    spaces, trailing  ",       // whitespace kept as it is
        "\tindented\n    code\r\nwith CRLF\n",                   // tabs, indentation, carriage return
        "\xef\xac\x81 ligature, \xef\xbc\xa1 full width, \xe2\x91\xa0 circled, e\xcc\x81 combining",  // NFKC would rewrite
        "caf\xc3\xa9 \xe2\x82\xac \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x99\x82",  // outside the vocabulary: byte pieces
        " ",
        "\n",
        corpus.substr(0, 3000),
    };
    for (const auto& text : texts) {
      auto ids = tok->encode(text);
      EXPECT_EQ(tok->decode(ids), text) << type << ": " << text;
    }
    // The corpus's splits count the bytes their tokens decode to, here all of them.
    auto c = tokenize_corpus(TextSplits{corpus, texts[0] + texts[2], texts[3] + texts[4]}, *tok);
    for (const auto* split : {&c.train, &c.valid, &c.test}) {
      EXPECT_TRUE(split->lossless()) << type;
      EXPECT_EQ(split->bytes, split->text_bytes) << type;
    }
    EXPECT_EQ(c.valid.text_bytes, static_cast<int64_t>((texts[0] + texts[2]).size()));
  }
}

TEST(Readers, DirectoryIsReadInSortedPathOrder) {
  auto dir = scratch_dir("reader_dir");
  std::filesystem::create_directories(dir + "/b");
  write_text(dir + "/b/1.txt", "B1");
  write_text(dir + "/a.txt", "A");
  write_text(dir + "/c.txt", "C");
  EXPECT_EQ(read_text_path(dir), "AB1C");
  EXPECT_EQ(read_text_path(dir + "/c.txt"), "C");
  EXPECT_THROW(read_text_path(dir + "/nope"), Error);
}

TEST(Readers, Enwik8SplitIsNinetyFiveFive) {
  auto dir = scratch_dir("enwik8");
  std::string text;
  for (int i = 0; i < 2000; ++i) text.push_back(static_cast<char>('a' + i % 26));
  write_text(dir + "/enwik8", text);
  auto s = read_enwik8(dir + "/enwik8");
  EXPECT_EQ(s.train.size(), 1800u);
  EXPECT_EQ(s.valid.size(), 100u);
  EXPECT_EQ(s.test.size(), 100u);
  EXPECT_EQ(s.train + s.valid + s.test, text);
  // At the real size the split is exactly 90M / 5M / 5M.
  auto big = split_by_fraction(std::string(100000000, 'x'), 0.05, 0.05);
  EXPECT_EQ(big.train.size(), 90000000u);
  EXPECT_EQ(big.test.size(), 5000000u);
}

TEST(Readers, WikiText103Layout) {
  auto dir = scratch_dir("wt103");
  write_text(dir + "/wiki.train.tokens", " = Title = \n train text \n");
  write_text(dir + "/wiki.valid.tokens", " valid \n");
  write_text(dir + "/wiki.test.tokens", " test \n");
  auto s = read_wikitext103(dir);
  EXPECT_EQ(s.valid, " valid \n");
  EXPECT_EQ(s.test, " test \n");
  std::filesystem::remove(dir + "/wiki.test.tokens");
  EXPECT_THROW(read_wikitext103(dir), Error);
}

TEST(Readers, PG19Layout) {
  auto dir = scratch_dir("pg19");
  for (auto split : {"train", "validation", "test"}) std::filesystem::create_directories(dir + "/" + split);
  write_text(dir + "/train/200.txt", "second book");
  write_text(dir + "/train/100.txt", "first book ");
  write_text(dir + "/validation/300.txt", "v");
  write_text(dir + "/test/400.txt", "t");
  auto s = read_pg19(dir);
  EXPECT_EQ(s.train, "first book second book");
  EXPECT_EQ(s.valid, "v");
  EXPECT_EQ(s.test, "t");
}

TEST(Readers, CorpusDispatchAndMissingCorpus) {
  auto dir = scratch_dir("dispatch");
  write_text(dir + "/t.txt", std::string(1000, 'z'));
  Json cfg = {{"corpus", "text"}, {"path", dir + "/t.txt"}, {"tokenizer", "byte"}, {"spm_model", ""}};
  auto s = read_corpus(cfg);
  EXPECT_EQ(s.train.size() + s.valid.size() + s.test.size(), 1000u);
  cfg["path"] = dir + "/missing.txt";
  EXPECT_THROW(read_corpus(cfg), Error);
  cfg["corpus"] = "pydoc";
  try {
    read_corpus(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
}

TEST(Batching, TargetsAreInputsShiftedByOne) {
  auto tokens = torch::arange(1000, torch::kInt32);
  std::mt19937_64 rng(3);
  auto b = sample_batch(tokens, 4, 16, rng);
  ASSERT_EQ(b.input.sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_TRUE(torch::equal(b.input + 1, b.target));
  EXPECT_TRUE(torch::equal(b.input.select(1, 1) - b.input.select(1, 0), torch::ones({4}, torch::kLong)));
  std::mt19937_64 same(3);
  EXPECT_TRUE(torch::equal(sample_batch(tokens, 4, 16, same).input, b.input));  // seeded
  std::mt19937_64 other(4);
  EXPECT_FALSE(torch::equal(sample_batch(tokens, 4, 16, other).input, b.input));
  EXPECT_THROW(sample_batch(torch::arange(10, torch::kInt32), 1, 16, rng), Error);
}

TEST(Batching, EvalSegmentsAreContiguousAndDisjoint) {
  auto tokens = torch::arange(101, torch::kInt32);
  auto batches = eval_batches(tokens, 3, 10, 0);
  int64_t n = 0, expect = 0;
  for (const auto& b : batches)
    for (int64_t i = 0; i < b.input.size(0); ++i) {
      EXPECT_EQ(b.input[i][0].item<int64_t>(), expect);
      expect += 10;
      ++n;
    }
  EXPECT_EQ(n, 10);
  EXPECT_EQ(eval_batches(tokens, 3, 10, 2).size(), 2u);
}

// The targets each evaluation scores, counted per target index: tokens are
// arange(N), so a target's value is its index in the split.
std::vector<int> scored_count(int64_t N, int64_t B, int64_t T, int64_t stride) {
  std::vector<int> count(static_cast<size_t>(N), 0);
  for (const auto& b : eval_batches(torch::arange(N, torch::kInt32), B, T, 0, stride)) {
    EXPECT_TRUE(torch::equal(b.input + 1, b.target));
    auto t = b.target.masked_select(b.scored);
    for (int64_t i = 0; i < t.numel(); ++i) ++count[static_cast<size_t>(t[i].item<int64_t>())];
  }
  return count;
}

TEST(Batching, WholeSplitEvaluationScoresEveryTargetExactlyOnce) {
  // N - 1 a multiple of T, not a multiple (a tail), and barely longer than one window.
  for (int64_t N : {101, 107, 12, 11})
    for (int64_t B : {1, 3})
      for (int64_t stride : {0, 10, 7, 3, 1}) {
        auto count = scored_count(N, B, 10, stride);
        EXPECT_EQ(count[0], 0);  // the first token is never a target
        for (int64_t t = 1; t < N; ++t)
          EXPECT_EQ(count[static_cast<size_t>(t)], 1)
              << "N " << N << " B " << B << " stride " << stride << " target " << t;
      }
  EXPECT_THROW(eval_batches(torch::arange(10, torch::kInt32), 2, 10, 0), Error);      // shorter than T + 1
  EXPECT_THROW(eval_batches(torch::arange(100, torch::kInt32), 2, 10, 0, 11), Error);  // stride beyond T
}

// Sliding windows of T with stride s, from the definition: windows start at
// 0, s, 2s, ... (the last one moved back to end at the split's end) and a
// target is scored by the first window that reaches it, so it sees the
// tokens from that window's start up to itself.
TEST(Batching, SlidingWindowContextMatchesBruteForce) {
  const int64_t T = 10;
  for (int64_t N : {60, 64, 11})
    for (int64_t s : {1, 3, 4, 10}) {
      const int64_t last = N - 1 - T;
      std::vector<int64_t> starts;
      for (int64_t a = 0; a < last; a += s) starts.push_back(a);
      starts.push_back(last);
      std::vector<int64_t> want(static_cast<size_t>(N), -1);  // context of each target, brute force
      for (int64_t t = 1; t < N; ++t)
        for (int64_t a : starts)
          if (a + T >= t) {
            want[static_cast<size_t>(t)] = t - a;
            break;
          }
      std::vector<int64_t> got(static_cast<size_t>(N), -1);
      for (const auto& b : eval_batches(torch::arange(N, torch::kInt32), 4, T, 0, s))
        for (int64_t r = 0; r < b.target.size(0); ++r)
          for (int64_t j = 0; j < T; ++j)
            if (b.scored[r][j].item<bool>()) {
              const int64_t t = b.target[r][j].item<int64_t>();
              EXPECT_EQ(b.input[r][0].item<int64_t>() + j + 1, t);
              got[static_cast<size_t>(t)] = j + 1;  // window tokens up to the target: positions 0..j
            }
      for (int64_t t = 1; t < N; ++t) {
        EXPECT_EQ(got[static_cast<size_t>(t)], want[static_cast<size_t>(t)]) << "N " << N << " s " << s << " t " << t;
        // At least T - s + 1 tokens, or everything before the target.
        EXPECT_GE(got[static_cast<size_t>(t)], std::min(t, T - s + 1)) << "N " << N << " s " << s << " t " << t;
      }
    }
}

}  // namespace data_test

namespace data_test {

TEST(Readers, InterleavedSplitSamplesTheWholeTextAtLineBoundaries) {
  std::string text;
  for (int i = 0; i < 4000; ++i) text += "line " + std::to_string(i) + " of the corpus\n";
  auto s = longseq::split_interleaved(text, 1000);
  EXPECT_EQ(s.train.size() + s.valid.size() + s.test.size(), text.size());
  const double n = static_cast<double>(text.size());
  EXPECT_NEAR(static_cast<double>(s.valid.size()) / n, 0.05, 0.01);
  EXPECT_NEAR(static_cast<double>(s.test.size()) / n, 0.05, 0.01);
  for (const auto* part : {&s.train, &s.valid, &s.test}) {
    ASSERT_FALSE(part->empty());
    EXPECT_EQ(part->back(), '\n');  // whole lines only
    EXPECT_EQ(part->compare(0, 5, "line "), 0);
  }
  // Validation holds lines from the first quarter of the text and from the last, not only from its end.
  auto line_numbers = [](const std::string& part) {
    std::vector<int> n;
    for (size_t at = part.find("line "); at != std::string::npos; at = part.find("line ", at + 1))
      n.push_back(std::stoi(part.substr(at + 5)));
    return n;
  };
  const auto valid = line_numbers(s.valid);
  EXPECT_LT(*std::min_element(valid.begin(), valid.end()), 1000);
  EXPECT_GT(*std::max_element(valid.begin(), valid.end()), 3000);
  auto tail = line_numbers(longseq::split_by_fraction(text, 0.05, 0.05).valid);
  tail.pop_back();  // a byte split may cut its last line's number short
  EXPECT_GT(*std::min_element(tail.begin(), tail.end()), 3000);  // the tail split's: its end only
  EXPECT_THROW(longseq::split_interleaved(text, 0), longseq::Error);
  Json cfg = {{"corpus", "enwik8"}, {"path", "/nonexistent"}, {"split", "interleaved"}};
  EXPECT_THROW(longseq::read_corpus(cfg), longseq::Error);
}

}  // namespace data_test
