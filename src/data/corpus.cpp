#include "longseq/common.h"
#include "longseq/data.h"

namespace longseq {

const TokenSplit& Corpus::split(const std::string& name) const {
  if (name == "train") return train;
  if (name == "valid") return valid;
  if (name == "test") return test;
  throw Error("unknown split \"" + name + "\"; choose one of: train, valid, test");
}

namespace {

TokenSplit tokenize(const std::string& text, const Tokenizer& tok) {
  auto ids = tok.encode(text);
  TokenSplit s;
  s.tokens = torch::empty({static_cast<int64_t>(ids.size())}, torch::kInt32);
  auto* p = s.tokens.data_ptr<int32_t>();
  for (size_t i = 0; i < ids.size(); ++i) p[i] = static_cast<int32_t>(ids[i]);
  s.bytes = static_cast<int64_t>(text.size());
  return s;
}

}  // namespace

Corpus tokenize_corpus(const TextSplits& text, const Tokenizer& tok) {
  return {tokenize(text.train, tok), tokenize(text.valid, tok), tokenize(text.test, tok)};
}

Batch sample_batch(const torch::Tensor& tokens, int64_t B, int64_t T, std::mt19937_64& rng) {
  const int64_t N = tokens.size(0);
  if (N < T + 1)
    throw Error("the split holds " + std::to_string(N) + " tokens, fewer than seq_len + 1 = " +
                std::to_string(T + 1));
  std::uniform_int_distribution<int64_t> pick(0, N - T - 1);
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) rows.push_back(tokens.narrow(0, pick(rng), T + 1));
  auto seg = torch::stack(rows).to(torch::kLong);  // [B, T + 1]
  return {seg.narrow(1, 0, T), seg.narrow(1, 1, T)};
}

std::vector<Batch> eval_batches(const torch::Tensor& tokens, int64_t B, int64_t T, int64_t max_batches) {
  const int64_t N = tokens.size(0);
  if (N < T + 1)
    throw Error("the split holds " + std::to_string(N) + " tokens, fewer than seq_len + 1 = " +
                std::to_string(T + 1));
  const int64_t segments = (N - 1) / T;
  std::vector<Batch> out;
  for (int64_t first = 0; first < segments; first += B) {
    if (max_batches > 0 && static_cast<int64_t>(out.size()) >= max_batches) break;
    std::vector<torch::Tensor> rows;
    for (int64_t s = first; s < std::min(first + B, segments); ++s) rows.push_back(tokens.narrow(0, s * T, T + 1));
    auto seg = torch::stack(rows).to(torch::kLong);
    out.push_back({seg.narrow(1, 0, T), seg.narrow(1, 1, T)});
  }
  return out;
}

}  // namespace longseq
