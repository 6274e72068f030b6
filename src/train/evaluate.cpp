#include <chrono>
#include <cmath>

#include "longseq/common.h"
#include "longseq/data.h"
#include "longseq/models.h"
#include "longseq/train.h"

namespace longseq {

std::string EvalResult::method() const {
  if (!description.empty()) return description;
  std::string s = whole() ? "whole split (" + std::to_string(split_targets) + " targets)"
                          : "prefix of the split: " + std::to_string(tokens) + " of " + std::to_string(split_targets) +
                                " targets";
  s += ", " + std::to_string(windows) + " windows of " + std::to_string(seq_len) + " tokens";
  if (unscored_head > 0)
    s += " (the model scores the last " + std::to_string(seq_len - unscored_head) + " positions of a window: the " +
         "split's first " + std::to_string(unscored_head) + " targets are not scored)";
  if (stride >= seq_len) return s + ", non-overlapping";
  return s + " with stride " + std::to_string(stride) + ": each target is predicted from at least " +
         std::to_string(seq_len - stride + 1) + " tokens (or all before it)";
}

namespace {

// The part mask [N] as ints (stream_batch and eval_batch slice it like the tokens), or undefined.
torch::Tensor part_ids_of(const torch::Tensor& part, int64_t N, const char* who) {
  if (!part.defined()) return {};
  if (part.dim() != 1 || part.size(0) != N)
    throw Error(std::string(who) + ": the part mask must be [" + std::to_string(N) + "] like the split's tokens");
  return part.to(torch::kInt);
}

}  // namespace

EvalResult evaluate_lm(LanguageModelImpl& model, const TokenSplit& split, int64_t batch, int64_t seq_len,
                       int64_t max_batches, int64_t stride, const torch::Tensor& part, const torch::Tensor& groups) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  // A model that scores only its last P positions (Perceiver AR's latents) needs windows at most P apart.
  const int64_t N = split.tokens.size(0), T = seq_len, P = model.scored_positions(T),
                s = std::min(stride > 0 ? stride : seq_len, P);
  const torch::Tensor part_ids = part_ids_of(part, N, "evaluate_lm");
  if (groups.defined() && (groups.dim() != 1 || groups.size(0) != N))
    throw Error("evaluate_lm: the group labels must be [" + std::to_string(N) + "] like the split's tokens");
  // Per label: targets, nats, correct answers and ponder time, summed over the windows.
  const int64_t labels = groups.defined() ? groups.max().item<int64_t>() + 1 : 0;
  auto group_sums = torch::zeros({4, labels}, torch::kDouble);
  bool pondered = false;
  const auto windows = eval_windows(N, T, s);
  double nats = 0, seconds = 0, part_nats = 0;
  int64_t tokens = 0, used = 0, part_n = 0;
  // Batches are built as they are scored: a sliding-window pass over a long split holds T / s copies of it.
  for (size_t first = 0, b = 0; first < windows.size(); first += static_cast<size_t>(batch), ++b) {
    if (max_batches > 0 && static_cast<int64_t>(b) >= max_batches) break;
    const size_t count = std::min(windows.size() - first, static_cast<size_t>(batch));
    Batch bt = eval_batch(split.tokens, windows, first, count, T);
    const auto t0 = std::chrono::steady_clock::now();
    auto logits = model.forward(bt.input);  // [B, P, V]: the targets of the last P positions
    const auto flat = logits.reshape({-1, logits.size(-1)});
    const auto target = bt.target.narrow(1, T - P, P).reshape({-1});
    auto loss = torch::nn::functional::cross_entropy(
        flat, target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    auto keep = bt.scored.narrow(1, T - P, P).reshape({-1}).to(loss.device());
    nats += loss.masked_select(keep).sum().item<double>();
    tokens += keep.sum().item<int64_t>();
    if (part.defined()) {  // the mask read through the same windows: scored targets that belong to the part
      auto in_part = eval_batch(part_ids, windows, first, count, T).target.narrow(1, T - P, P).reshape({-1}).to(torch::kBool) & keep;
      part_nats += loss.masked_select(in_part).sum().item<double>();
      part_n += in_part.sum().item<int64_t>();
    }
    if (groups.defined()) {  // labels read through the same windows, per scored target
      auto label = eval_batch(groups, windows, first, count, T).target.narrow(1, T - P, P).reshape({-1}).to(torch::kLong);
      const auto hit = (label > 0) & keep;
      const auto l = label.masked_select(hit);
      auto sum_by_label = [&](const torch::Tensor& values) {
        return torch::bincount(l, values.masked_select(hit).to(torch::kDouble), labels);
      };
      const auto ponder = model.ponder_positions();  // [B, P] with ACT
      pondered = ponder.defined();
      group_sums += torch::stack({torch::bincount(l, {}, labels).to(torch::kDouble), sum_by_label(loss),
                                  sum_by_label(flat.argmax(-1) == target),
                                  pondered ? sum_by_label(ponder.reshape({-1})) : torch::zeros({labels}, torch::kDouble)});
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    used += static_cast<int64_t>(count);
  }
  model.train(was_training);
  EvalResult r;
  r.tokens = tokens;
  r.split_targets = N - 1;
  r.unscored_head = T - P;
  r.windows = used;
  r.seq_len = T;
  r.stride = s;
  r.seconds = seconds;
  r.part_tokens = part_n;
  r.part_loss = part_n > 0 ? part_nats / static_cast<double>(part_n) : 0.0;
  for (int64_t label = 1; label < labels; ++label) {
    const double n = group_sums[0][label].item<double>();
    if (n == 0) continue;
    r.groups.push_back({label, static_cast<int64_t>(n), group_sums[1][label].item<double>() / n,
                        group_sums[2][label].item<double>() / n,
                        pondered ? group_sums[3][label].item<double>() / n : -1.0});
  }
  r.loss = nats / static_cast<double>(std::max<int64_t>(tokens, 1));
  // Bits per byte: the split's tokens per decoded byte converts nats/token to bits/byte.
  const double tokens_per_byte = static_cast<double>(N) / static_cast<double>(std::max<int64_t>(split.bytes, 1));
  r.bpb = r.loss * tokens_per_byte / std::log(2.0);
  r.ppl = std::exp(r.loss);
  return r;
}

StreamEvalResult evaluate_lm_stream(LanguageModelImpl& model, const TokenSplit& split, int64_t batch, int64_t seq_len,
                                    int64_t max_segments, int64_t reset, const torch::Tensor& part) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const int64_t N = split.tokens.size(0), T = seq_len;
  int64_t S = stream_segments(N, batch, T);
  if (max_segments > 0) S = std::min(S, max_segments);
  if (model.scored_positions(T) != T)
    throw Error("evaluation over a stream needs a model that scores every position; model.type = " +
                model.config().type + " scores " + std::to_string(model.scored_positions(T)) + " of " +
                std::to_string(T));
  ModelState state;
  try {
    state = model.initial_state(batch);
  } catch (const Error& e) {
    throw Error(std::string("evaluation over a stream needs every layer to stream: ") + e.what());
  }
  const torch::Tensor part_ids = part_ids_of(part, N, "evaluate_lm_stream");
  double nats[2] = {0, 0}, part_nats[2] = {0, 0}, seconds[2] = {0, 0};
  int64_t part_n = 0;
  for (int64_t s = 0; s < S; ++s) {
    if (s > 0 && reset > 0 && s % reset == 0) state = model.initial_state(batch);
    Batch bt = stream_batch(split.tokens, batch, 0, batch, T, s);
    // The mask read through the same slicing gives, per target, whether it belongs to the part.
    const torch::Tensor in_part =
        part.defined() ? stream_batch(part_ids, batch, 0, batch, T, s).target.reshape({-1}).to(torch::kBool) : torch::Tensor();
    if (in_part.defined()) part_n += in_part.sum().item<int64_t>();
    for (int with_state = 0; with_state < 2; ++with_state) {
      const auto t0 = std::chrono::steady_clock::now();
      auto logits = model.forward(bt.input, with_state ? &state : nullptr);
      auto ce = torch::nn::functional::cross_entropy(
          logits.reshape({-1, logits.size(-1)}), bt.target.reshape({-1}),
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
      nats[with_state] += ce.sum().item<double>();
      if (in_part.defined()) part_nats[with_state] += ce.masked_select(in_part).sum().item<double>();
      seconds[with_state] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  model.train(was_training);
  const double tokens_per_byte = static_cast<double>(N) / static_cast<double>(std::max<int64_t>(split.bytes, 1));
  const int64_t scored = batch * S * T;
  const std::string span = batch == 1 ? "one slice" : std::to_string(batch) + " contiguous slices";
  auto result = [&](double total, const std::string& how) {
    EvalResult r;
    r.tokens = scored;
    r.split_targets = N - 1;
    r.windows = batch * S;
    r.seq_len = r.stride = T;
    r.loss = total / static_cast<double>(std::max<int64_t>(scored, 1));
    r.bpb = r.loss * tokens_per_byte / std::log(2.0);
    r.ppl = std::exp(r.loss);
    r.description = how;
    return r;
  };
  const std::string segs = span + " x " + std::to_string(S) + " segments of " + std::to_string(T) + " tokens (" +
                           std::to_string(scored) + " of " + std::to_string(N - 1) + " targets)";
  const std::string memory = reset > 0 ? "state reset every " + std::to_string(reset) + " segments (context up to " +
                                             std::to_string(reset * T) + " tokens)"
                                       : "state never reset (context: the whole slice so far)";
  StreamEvalResult out{result(nats[1], "stream: " + segs + ", " + memory),
                       result(nats[0], "the same segments without state")};
  out.stateful.seconds = seconds[1], out.stateless.seconds = seconds[0];
  for (auto [r, n] : {std::pair<EvalResult*, double>{&out.stateful, part_nats[1]}, {&out.stateless, part_nats[0]}}) {
    r->part_tokens = part_n;
    r->part_loss = part_n > 0 ? n / static_cast<double>(part_n) : 0.0;
  }
  return out;
}

}  // namespace longseq
