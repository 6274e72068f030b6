#include <gtest/gtest.h>

#include <filesystem>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/data.h"

using namespace longseq;
using longseq_test::scratch_dir;
using longseq_test::write_text;

namespace {

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

}  // namespace
