// Data: tokenizers, corpus readers, and batching.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "longseq/schema.h"

namespace longseq {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual std::string name() const = 0;
};

// 256 symbols, one per byte value: the standard of character-level benchmarks.
std::unique_ptr<Tokenizer> make_byte_tokenizer();
// Loads a SentencePiece model; throws Error naming the file when it cannot.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);
// Trains a SentencePiece model on a text file; writes PREFIX.model and PREFIX.vocab.
void train_sentencepiece(const std::string& input_file, const std::string& model_prefix,
                         int64_t vocab_size, const std::string& model_type = "unigram");
// The tokenizer a config's data section asks for.
std::unique_ptr<Tokenizer> make_tokenizer(const Json& data_cfg);

struct TextSplits {
  std::string train, valid, test;
};

// A file, or every regular file below a directory in sorted path order.
std::string read_text_path(const std::string& path);
// First (1 - valid - test) of the text for training, then valid, then test.
TextSplits split_by_fraction(const std::string& text, double valid, double test);
// enwik8 / text8: the first 90%, next 5% and last 5% (90M/5M/5M of the 10^8-byte files).
TextSplits read_enwik8(const std::string& file);
// WikiText-103: a directory with wiki.{train,valid,test}.tokens (or .raw).
TextSplits read_wikitext103(const std::string& dir);
// PG-19: a directory with train/, validation/ and test/ folders of books.
TextSplits read_pg19(const std::string& dir);
// The embedded default corpus: Python's documentation sources (Debian's python3.11-doc).
std::string default_pydoc_path();
TextSplits read_pydoc(const std::string& dir);
// Dispatches on data.corpus.
TextSplits read_corpus(const Json& data_cfg);
// "corpus text at PATH": where data.corpus reads from, for messages.
std::string corpus_source(const Json& data_cfg);

struct TokenSplit {
  torch::Tensor tokens;  // [N] int32
  int64_t bytes = 0;     // UTF-8 bytes of the text, for bits per byte
};

struct Corpus {
  TokenSplit train, valid, test;
  const TokenSplit& split(const std::string& name) const;  // train | valid | test
};
Corpus tokenize_corpus(const TextSplits& text, const Tokenizer& tok);

struct Batch {
  torch::Tensor input, target;  // [B, T] long
};
// B contiguous segments of T + 1 tokens at random offsets drawn from `rng`.
Batch sample_batch(const torch::Tensor& tokens, int64_t B, int64_t T, std::mt19937_64& rng);
// Deterministic non-overlapping segments covering the split from its start;
// at most `max_batches` batches of B sequences (0 = all).
std::vector<Batch> eval_batches(const torch::Tensor& tokens, int64_t B, int64_t T, int64_t max_batches);

}  // namespace longseq
