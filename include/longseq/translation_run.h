// Translation runs (model.type = encoder_decoder; docs/translation.md): the corpus a config names, sentence pairs as
// token ids, a trained run loaded for decoding, batched decoding, and evaluation (loss, perplexity, sacreBLEU).
//
// Token ids: the tokenizer's n symbols, then pad = n, bos = n + 1, eos = n + 2 (model.vocab_size = n + 3), so the
// byte tokenizer and any SentencePiece model work alike and no text id is taken by a special.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "longseq/bleu.h"
#include "longseq/config.h"
#include "longseq/data.h"
#include "longseq/encoder_decoder.h"
#include "longseq/parallel.h"
#include "longseq/safetensors.h"

namespace longseq {

struct TranslationSplits {
  ParallelText train, valid, test;  // test may be empty (data.corpus parallel without test files)
};
// data.corpus synthetic_translation: data.pairs generated pairs, 90/5/5, held-out pairs whose source occurs in
// training removed (so the held-out BLEU measures generalisation). data.corpus parallel: data.path holds
// <split>.<lang> for split train, valid (required) and test (optional), lang data.source_lang / data.target_lang,
// each plain text or <split>.<lang>.sgm / .xml in the one-<seg>-per-line layout (read_parallel_auto).
TranslationSplits read_translation_corpus(const Json& data_cfg);

struct SpecialIds {
  int64_t pad = 0, bos = 1, eos = 2;
  static SpecialIds after(int64_t tokenizer_vocab) { return {tokenizer_vocab, tokenizer_vocab + 1, tokenizer_vocab + 2}; }
};

std::vector<TranslationExample> tokenize_pairs(const ParallelText& text, const Tokenizer& tokenizer);

// A trained (or averaged) translation run, in eval mode.
struct LoadedTranslationRun {
  RunConfig config;
  ModelConfig model_config;
  std::unique_ptr<Tokenizer> tokenizer;
  SpecialIds ids;
  EncoderDecoder model{nullptr};
};
// Errors name the directory and what is missing or does not match (another model kind, mismatched weights).
LoadedTranslationRun load_translation_run(const std::string& dir);

struct DecodeOptions {
  int64_t beam = 4;         // 1 = greedy
  double alpha = 0.6;       // GNMT length penalty (beam > 1)
  int64_t extra_len = 50;   // at most source tokens + extra_len target tokens (Vaswani et al. 2017, sec. 6.1)
  int64_t batch = 32;       // sentences decoded together (beam search: the batch's longest source sets the limit)
};
// Source sentences -> detokenized translations, one per sentence (an empty source gives ""). progress(done) is
// called as sentences finish, when given.
std::vector<std::string> translate_sentences(EncoderDecoderImpl& model, const Tokenizer& tokenizer, SpecialIds ids,
                                             const std::vector<std::string>& sources, const DecodeOptions& options,
                                             const std::function<void(int64_t)>& progress = {});

struct TranslationEval {
  double loss = 0;   // nats per target token (EOS included), plain cross-entropy
  double ppl = 0;
  int64_t targets = 0, pairs = 0;
  double seconds = 0;
  bool has_bleu = false;
  BleuResult bleu;   // of the first bleu_sentences pairs (all when 0)
  int64_t bleu_sentences = 0;
  std::vector<std::string> hypotheses;  // the decoded sentences
};
// Loss over every pair (batched by length under batch_tokens), then BLEU of the decoded first bleu_sentences pairs
// (0 = all, < 0 = no BLEU) against their references.
TranslationEval evaluate_translation(EncoderDecoderImpl& model, const Tokenizer& tokenizer, SpecialIds ids,
                                     const ParallelText& pairs, int64_t batch_tokens, int64_t bleu_sentences,
                                     const DecodeOptions& decode);

// The element-wise mean of the weights of checkpoint files (Vaswani et al. 2017, sec. 6.1; transformer.md P3),
// accumulated in double; every file must hold the same tensor names and shapes (an Error naming the first that
// differs).
TensorFile average_weights(const std::vector<std::string>& paths);

}  // namespace longseq
