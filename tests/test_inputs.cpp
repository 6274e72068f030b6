// Inputs that once crashed or hung the program: the bench's reading of its
// children's output, and corpus paths that are not regular files.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "helpers.h"
#include "longseq/bench.h"
#include "longseq/common.h"
#include "longseq/data.h"

using namespace longseq;

namespace inputs_test {

TEST(BenchChildOutput, LinesWithoutABraceAreNotACrash) {
  // The parent once took substr(find('{')): output without '{' threw std::out_of_range.
  EXPECT_TRUE(parse_bench_child_output("").is_discarded());
  EXPECT_TRUE(parse_bench_child_output("Segmentation fault\n").is_discarded());
  EXPECT_TRUE(parse_bench_child_output("warning: no brace here\nnor here").is_discarded());
  EXPECT_TRUE(parse_bench_child_output("{\"ok\": tru").is_discarded());  // cut by a kill
}

TEST(BenchChildOutput, TakesTheLastJsonLine) {
  auto r = parse_bench_child_output("OpenBLAS warning: {x}\n{\"ok\": true, \"median_s\": 0.5}\n");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["median_s"], 0.5);
  r = parse_bench_child_output("{\"ok\": true, \"median_s\": 1}\n{\"ok\": true, \"median_s\": 2}\nbye\n");
  EXPECT_EQ(r["median_s"], 2);
  // A nested line deeper than the bound is not taken (nor does it overflow the stack).
  r = parse_bench_child_output("{\"ok\": true, \"median_s\": 3}\n{\"a\": " + std::string(100000, '[') + "\n");
  EXPECT_EQ(r["median_s"], 3);
}

TEST(BenchChildOutput, FailuresBecomeOneLineWithoutQuotes) {
  auto r = parse_bench_child_output(
      "{\"ok\": false, \"error\": \"T must be \\\"positive\\\"\\nException raised from x at y.cpp:1\\nframe #0\"}\n");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["ok"], false);
  EXPECT_EQ(r["error"], "T must be 'positive'");
  // A success without a usable time is a failure, not a type error in the parent.
  for (const char* line : {"{\"ok\": true}", "{\"ok\": true, \"median_s\": \"fast\"}", "{\"ok\": true, \"median_s\": 0}"}) {
    r = parse_bench_child_output(line);
    ASSERT_TRUE(r.is_object()) << line;
    EXPECT_EQ(r["ok"], false) << line;
    EXPECT_TRUE(r["error"].is_string()) << line;
  }
  r = parse_bench_child_output("{\"ok\": false, \"error\": [1, 2]}");
  EXPECT_TRUE(r["error"].is_string());
  EXPECT_FALSE(parse_bench_child_output("{\"ok\": false}").contains("error"));
}

std::string reader_error(const Json& cfg) {
  try {
    read_corpus(cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CorpusReaders, OnlyRegularFilesAreRead) {
  // A device or a pipe was once read until it ended (never, for /dev/zero or a pipe
  // without a writer); a directory read as an empty text.
  auto dir = longseq_test::scratch_dir("readers_regular");
  std::filesystem::create_directories(dir + "/wiki/wiki.train.tokens");
  longseq_test::write_text(dir + "/wiki/wiki.valid.tokens", "valid text");
  longseq_test::write_text(dir + "/wiki/wiki.test.tokens", "test text");
  auto msg = reader_error({{"corpus", "wikitext103"}, {"path", dir + "/wiki"}});
  EXPECT_NE(msg.find(dir + "/wiki/wiki.train.tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
  msg = reader_error({{"corpus", "text"}, {"path", "/dev/null"}});
  EXPECT_NE(msg.find("/dev/null"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
  // In a directory, pipes, dangling links and link loops are skipped.
  std::filesystem::create_directories(dir + "/books");
  longseq_test::write_text(dir + "/books/a.txt", "one book");
  ASSERT_EQ(::mkfifo((dir + "/books/pipe").c_str(), 0600), 0);
  std::filesystem::create_symlink("missing", dir + "/books/dangling");
  std::filesystem::create_symlink("loop", dir + "/books/loop");
  auto s = read_corpus({{"corpus", "text"}, {"path", dir + "/books"}});
  EXPECT_EQ(s.train + s.valid + s.test, "one book");
}

TEST(CorpusReaders, SourceNamesThePath) {
  EXPECT_EQ(corpus_source({{"corpus", "text"}, {"path", "/data/x.txt"}}), "corpus text at /data/x.txt");
  EXPECT_NE(corpus_source({{"corpus", "pydoc"}, {"path", ""}}).find(default_pydoc_path()), std::string::npos);
}

}  // namespace inputs_test
