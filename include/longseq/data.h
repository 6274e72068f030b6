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
// One vocabulary over several files (the joint source-target vocabulary of translation, Vaswani et al. 2017 sec. 5.1).
void train_sentencepiece(const std::vector<std::string>& input_files, const std::string& model_prefix,
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
// Blocks of about `block` bytes, each extended to the end of its line; of every 20 consecutive blocks the 19th goes
// to valid and the 20th to test (5% each), so both sample the whole text rather than its end.
TextSplits split_interleaved(const std::string& text, int64_t block);
// enwik8 / text8: the first 90%, next 5% and last 5% (90M/5M/5M of the 10^8-byte files).
TextSplits read_enwik8(const std::string& file);
// WikiText-103: a directory with wiki.{train,valid,test}.tokens (or .raw).
TextSplits read_wikitext103(const std::string& dir);
// PG-19: a directory with train/, validation/ and test/ folders of books.
TextSplits read_pg19(const std::string& dir);
// The embedded default corpus: Python's documentation sources (Debian's python3.11-doc).
std::string default_pydoc_path();
// block > 0: split_interleaved (the default, data.split auto); 0: split_by_fraction.
TextSplits read_pydoc(const std::string& dir, int64_t block = 65536);
// The memory task (data.corpus recall): episodes "#kkkk=dddd;" <filler of about `gap` bytes> "?kkkk=dddd;\n",
// random lowercase keys and digit values, filler of lowercase words with none of "#?=;". The value after the
// question can only be predicted from the fact `gap` bytes back. Deterministic in `seed`.
std::string recall_text(int64_t bytes, int64_t gap, uint64_t seed);
// The same with each episode's gap drawn uniformly from `gaps` (one gap: exactly the text above).
std::string recall_text(int64_t bytes, const std::vector<int64_t>& gaps, uint64_t seed);
// data.recall_gaps, or {data.recall_gap} when that list is empty.
std::vector<int64_t> recall_gaps(const Json& data_cfg);
// Byte tokens [N] -> [N] long: at each recalled digit whose fact is in the tokens, the largest of `gaps` not above
// the filler between fact and question (the gap its episode was drawn with); 0 elsewhere.
torch::Tensor recall_distances(const torch::Tensor& tokens, std::vector<int64_t> gaps);
// The recalled targets of byte tokens [N]: true at the four digits that follow a "?kkkk=" question.
torch::Tensor recall_positions(const torch::Tensor& tokens);

// The depth task (data.corpus expressions): lines "<e>=<v>\n" where an expression of depth d >= 1 is
// "(" a o b ")" with o one of + -, one operand of depth d - 1 and the other of a depth drawn in [0, d - 1], a
// depth-0 expression one digit, and v its value mod 10. Depths are drawn uniformly in [1, max_depth], so how
// much computation an answer needs varies from line to line (Dehghani et al. 2019 motivate ACT by such inputs).
std::string expressions_text(int64_t bytes, int64_t max_depth, uint64_t seed);
// Byte tokens [N] -> [N] long: at each answer digit (the byte after "="), the depth of its expression (its
// deepest parenthesis nesting, >= 1); 0 elsewhere.
torch::Tensor expression_depths(const torch::Tensor& tokens);
// The pointer-chasing depth task (data.corpus chains): lines of statements "x=y;" in random order and a question
// "?q=" with its answer digit, e.g. "k=b;q=x;b=7;x=4;?k=7\n". Two chains of d distinct lowercase variables each end in
// different digits; the question asks for the head of one of them, so the answer takes exactly d lookups of
// "variable = ..." and no shortcut (both digits are on the line). d is drawn uniformly in [1, max_depth] (<= 12).
std::string chains_text(int64_t bytes, int64_t max_depth, uint64_t seed);
// Byte tokens [N] -> [N] long: at each answer digit of a whole line, the lookups its question needs (>= 1), found
// by following the line's statements; 0 elsewhere and at lines that do not resolve to their answer.
torch::Tensor chain_depths(const torch::Tensor& tokens);
// Dispatches on data.corpus.
TextSplits read_corpus(const Json& data_cfg);
// "corpus text at PATH": where data.corpus reads from, for messages.
std::string corpus_source(const Json& data_cfg);

// Bits per byte divide by the bytes the tokens decode to, the bytes the model
// really predicts. Tokenizers trained by train_sentencepiece (and the byte
// tokenizer) are lossless, so this is the text's size; a lossy model (e.g. one
// trained with NFKC normalization) is measured on what it keeps.
struct TokenSplit {
  torch::Tensor tokens;    // [N] int32
  int64_t bytes = 0;       // bytes of decode(tokens), the denominator of bits per byte
  int64_t text_bytes = 0;  // bytes of the text that was encoded
  bool lossless() const { return bytes == text_bytes; }
};

struct Corpus {
  TokenSplit train, valid, test;
  const TokenSplit& split(const std::string& name) const;  // train | valid | test
};
Corpus tokenize_corpus(const TextSplits& text, const Tokenizer& tok);

struct Batch {
  torch::Tensor input, target;  // [B, T] long
  torch::Tensor scored;         // [B, T] bool, the targets that count (evaluation); undefined = all
};
// B contiguous segments of T + 1 tokens at random offsets drawn from `rng`.
Batch sample_batch(const torch::Tensor& tokens, int64_t B, int64_t T, std::mt19937_64& rng);

// Training over a stream (Dai et al. 2019's batching): the split is cut into
// `rows` contiguous slices of N / rows tokens; segment s of a row is its tokens
// [s T, s T + T] (inputs and shifted targets), so segment s + 1 continues
// segment s. stream_segments: how many whole segments a slice holds (an Error
// when not one). stream_batch: rows [first_row, first_row + B), segment s.
int64_t stream_segments(int64_t N, int64_t rows, int64_t T);
Batch stream_batch(const torch::Tensor& tokens, int64_t rows, int64_t first_row, int64_t B, int64_t T,
                   int64_t segment);

// One evaluation window: inputs tokens[start, start + T), targets shifted by
// one; only the targets at window positions >= first_scored count.
struct EvalWindow {
  int64_t start = 0, first_scored = 0;
};
// Windows over a split of N tokens that score each of its N - 1 targets exactly
// once. Window k starts at k * stride and scores the targets the previous one
// did not; a last window ends at the split's end for the remainder. With
// stride = T they do not overlap; with stride s < T (the sliding-window
// evaluation of e.g. Baevski & Auli 2019 and Press et al. 2021) every target
// after the first window is predicted from at least T - s + 1 tokens.
std::vector<EvalWindow> eval_windows(int64_t N, int64_t T, int64_t stride);
// Windows [first, first + count) of `windows` as one batch.
Batch eval_batch(const torch::Tensor& tokens, const std::vector<EvalWindow>& windows, size_t first, size_t count,
                 int64_t T);
// eval_windows in batches of B windows; at most `max_batches` batches (0 = all);
// stride 0 = T (non-overlapping).
std::vector<Batch> eval_batches(const torch::Tensor& tokens, int64_t B, int64_t T, int64_t max_batches,
                                int64_t stride = 0);

}  // namespace longseq
