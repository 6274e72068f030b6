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

void check_split_length(int64_t N, int64_t T) {
  if (N < T + 1)
    throw Error("the split holds " + std::to_string(N) + " tokens, fewer than seq_len + 1 = " +
                std::to_string(T + 1));
}

TokenSplit tokenize(const std::string& text, const Tokenizer& tok) {
  auto ids = tok.encode(text);
  TokenSplit s;
  s.tokens = torch::empty({static_cast<int64_t>(ids.size())}, torch::kInt32);
  auto* p = s.tokens.data_ptr<int32_t>();
  for (size_t i = 0; i < ids.size(); ++i) p[i] = static_cast<int32_t>(ids[i]);
  s.text_bytes = static_cast<int64_t>(text.size());
  s.bytes = static_cast<int64_t>(tok.decode(ids).size());
  return s;
}

}  // namespace

Corpus tokenize_corpus(const TextSplits& text, const Tokenizer& tok) {
  return {tokenize(text.train, tok), tokenize(text.valid, tok), tokenize(text.test, tok)};
}

Batch sample_batch(const torch::Tensor& tokens, int64_t B, int64_t T, std::mt19937_64& rng) {
  const int64_t N = tokens.size(0);
  check_split_length(N, T);
  std::uniform_int_distribution<int64_t> pick(0, N - T - 1);
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) rows.push_back(tokens.narrow(0, pick(rng), T + 1));
  auto seg = torch::stack(rows).to(torch::kLong);  // [B, T + 1]
  return {seg.narrow(1, 0, T), seg.narrow(1, 1, T)};
}

int64_t stream_segments(int64_t N, int64_t rows, int64_t T) {
  const int64_t per_row = N / rows;  // each row's own contiguous slice of the split
  if (per_row < T + 1)
    throw Error("stream batching: " + std::to_string(N) + " tokens make " + std::to_string(rows) + " slices of " +
                std::to_string(per_row) + ", shorter than seq_len + 1 = " + std::to_string(T + 1) +
                "; use fewer rows (training: batch_size x accum; eval: --batch-size) or a shorter seq_len");
  return (per_row - 1) / T;
}

Batch stream_batch(const torch::Tensor& tokens, int64_t rows, int64_t first_row, int64_t B, int64_t T,
                   int64_t segment) {
  const int64_t per_row = tokens.size(0) / rows, S = stream_segments(tokens.size(0), rows, T);
  TORCH_CHECK(first_row >= 0 && first_row + B <= rows && segment >= 0 && segment < S,
              "stream_batch: rows [", first_row, ", ", first_row + B, ") of ", rows, ", segment ", segment, " of ", S);
  std::vector<torch::Tensor> out;
  for (int64_t b = first_row; b < first_row + B; ++b) out.push_back(tokens.narrow(0, b * per_row + segment * T, T + 1));
  auto seg = torch::stack(out).to(torch::kLong);  // [B, T + 1]
  return {seg.narrow(1, 0, T), seg.narrow(1, 1, T)};
}

std::vector<EvalWindow> eval_windows(int64_t N, int64_t T, int64_t stride) {
  check_split_length(N, T);
  if (stride <= 0 || stride > T)
    throw Error("evaluation stride " + std::to_string(stride) + " is outside [1, seq_len = " + std::to_string(T) + "]");
  std::vector<EvalWindow> out;
  int64_t scored_to = 0;  // targets tokens[1 .. scored_to] are scored already
  for (int64_t start = 0; scored_to < N - 1; start += stride) {
    const int64_t a = std::min(start, N - 1 - T);  // the last window ends at the split's end
    out.push_back({a, scored_to - a});  // window position j predicts tokens[a + j + 1]
    scored_to = a + T;
  }
  return out;
}

Batch eval_batch(const torch::Tensor& tokens, const std::vector<EvalWindow>& windows, size_t first, size_t count,
                 int64_t T) {
  std::vector<torch::Tensor> rows;
  auto scored = torch::zeros({static_cast<int64_t>(count), T}, torch::kBool);
  for (size_t i = 0; i < count; ++i) {
    const auto& w = windows[first + i];
    rows.push_back(tokens.narrow(0, w.start, T + 1));
    scored[static_cast<int64_t>(i)].narrow(0, w.first_scored, T - w.first_scored).fill_(true);
  }
  auto seg = torch::stack(rows).to(torch::kLong);  // [B, T + 1]
  return {seg.narrow(1, 0, T), seg.narrow(1, 1, T), scored};
}

std::vector<Batch> eval_batches(const torch::Tensor& tokens, int64_t B, int64_t T, int64_t max_batches,
                                int64_t stride) {
  const auto windows = eval_windows(tokens.size(0), T, stride > 0 ? stride : T);
  std::vector<Batch> out;
  for (size_t first = 0; first < windows.size(); first += static_cast<size_t>(B)) {
    if (max_batches > 0 && static_cast<int64_t>(out.size()) >= max_batches) break;
    out.push_back(eval_batch(tokens, windows, first, std::min(windows.size() - first, static_cast<size_t>(B)), T));
  }
  return out;
}

}  // namespace longseq
