// Training over a stream (Dai et al. 2019's batching): each row reads its own
// contiguous slice, segment after segment; the model's streaming state carries
// between steps with gradients stopped at the boundary; every mixer that
// streams trains this way, and a killed stream run resumes bit for bit.
#include <gtest/gtest.h>

#include <set>

#include <filesystem>
#include <sstream>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/data.h"
#include "longseq/models.h"
#include "longseq/registry.h"
#include "longseq/train.h"

using namespace longseq;

namespace stream_test {

TEST(StreamBatch, RowsAreContiguousSlicesAndSegmentsContinue) {
  auto tokens = torch::arange(1000, torch::kInt);  // token i is i: positions can be read off the batch
  const int64_t rows = 3, T = 16, per_row = 1000 / rows;
  const int64_t S = stream_segments(1000, rows, T);
  EXPECT_EQ(S, (per_row - 1) / T);
  for (int64_t s = 0; s < S; ++s) {
    auto b = stream_batch(tokens, rows, 1, 2, T, s);  // rows 1 and 2
    ASSERT_EQ(b.input.sizes(), (std::vector<int64_t>{2, T}));
    for (int64_t r = 0; r < 2; ++r) {
      EXPECT_EQ(b.input[r][0].item<int64_t>(), (r + 1) * per_row + s * T);
      EXPECT_TRUE(torch::equal(b.target[r].narrow(0, 0, T - 1), b.input[r].narrow(0, 1, T - 1)));
      if (s + 1 < S) {  // the next segment starts where this one's targets end
        auto next = stream_batch(tokens, rows, 1, 2, T, s + 1);
        EXPECT_EQ(next.input[r][0].item<int64_t>(), b.target[r][T - 1].item<int64_t>());
      }
    }
  }
  // The last target of a row's last segment stays inside its slice.
  auto last = stream_batch(tokens, rows, rows - 1, 1, T, S - 1);
  EXPECT_LT(last.target[0][T - 1].item<int64_t>(), rows * per_row);
  EXPECT_THROW(stream_segments(40, 3, 16), Error);  // slices of 13 tokens hold no segment of 17
  EXPECT_THROW(stream_batch(tokens, rows, 2, 2, T, 0), std::exception);  // rows 2..3 of 3
}

// The carried state makes segment s + 1 see segment s: with an exact streaming mixer, the logits of two
// segments in a row through one state equal one causal pass over both.
TEST(StreamState, TwoSegmentsThroughTheStateEqualOnePassAndDifferFromStateless) {
  Json mj = {{"vocab_size", 256}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32},
             {"mixer", {{"name", "linear"}}}};
  torch::manual_seed(5);
  DecoderLM model(ModelConfig::from_json(mj));
  model->eval();
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 256, {2, 48}, torch::kLong);
  auto whole = model->forward(tokens);
  auto state = model->initial_state(2);
  auto a = model->forward(tokens.narrow(1, 0, 24), &state), b = model->forward(tokens.narrow(1, 24, 24), &state);
  EXPECT_TRUE(torch::allclose(torch::cat({a, b}, 1), whole, 1e-4, 1e-5));
  auto alone = model->forward(tokens.narrow(1, 24, 24));
  EXPECT_GT((alone - b).abs().max().item<double>(), 1e-3);  // the state carried something
}

// Stream evaluation with an exact streaming mixer and no reset scores a slice as one causal pass over it;
// its stateless side scores the same segments as non-overlapping windows.
TEST(StreamEval, StatefulEqualsOneLongWindowAndStatelessEqualsWindows) {
  Json mj = {{"vocab_size", 256}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32},
             {"mixer", {{"name", "linear"}}}};
  torch::manual_seed(6);
  DecoderLM model(ModelConfig::from_json(mj));
  const int64_t T = 16, S = 5;
  TokenSplit split;
  split.tokens = torch::randint(0, 256, {S * T + 1}, torch::kInt);
  split.bytes = split.text_bytes = S * T + 1;
  auto r = evaluate_lm_stream(*model, split, 1, T, 0, 0);
  auto one_pass = evaluate_lm(*model, split, 1, S * T, 0);
  auto windows = evaluate_lm(*model, split, 1, T, 0);
  EXPECT_EQ(r.stateful.tokens, S * T);
  EXPECT_NEAR(r.stateful.loss, one_pass.loss, 1e-5);
  EXPECT_NEAR(r.stateless.loss, windows.loss, 1e-5);
  EXPECT_GT(std::abs(r.stateful.loss - r.stateless.loss), 1e-4);  // the state changed the scores
  // A reset every segment is the stateless evaluation.
  auto fresh = evaluate_lm_stream(*model, split, 1, T, 0, 1);
  EXPECT_NEAR(fresh.stateful.loss, fresh.stateless.loss, 1e-6);
  EXPECT_NE(r.stateful.method().find("never reset"), std::string::npos) << r.stateful.method();
}

// The part reported apart is aligned with the targets: with the part = the targets whose token is even, the
// stateless part loss equals the cross-entropy of those targets summed here segment by segment.
TEST(StreamEval, ThePartReportedApartIsTheMaskedTargets) {
  Json mj = {{"vocab_size", 256}, {"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32},
             {"mixer", {{"name", "linear"}}}};
  torch::manual_seed(8);
  DecoderLM model(ModelConfig::from_json(mj));
  model->eval();
  const int64_t T = 8, S = 4, B = 2;
  TokenSplit split;
  split.tokens = torch::randint(0, 256, {B * (S * T + 1) + 3}, torch::kInt);
  split.bytes = split.text_bytes = split.tokens.size(0);
  auto part = split.tokens.remainder(2) == 0;
  auto r = evaluate_lm_stream(*model, split, B, T, 0, 0, part);
  torch::NoGradGuard ng;
  double nats = 0;
  int64_t n = 0;
  for (int64_t s = 0; s < stream_segments(split.tokens.size(0), B, T); ++s) {
    auto bt = stream_batch(split.tokens, B, 0, B, T, s);
    auto logits = model->forward(bt.input);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t y = bt.target[b][t].item<int64_t>();
        if (y % 2 != 0) continue;
        nats -= torch::log_softmax(logits[b][t], -1)[y].item<double>(), ++n;
      }
  }
  ASSERT_GT(n, 0);
  EXPECT_EQ(r.stateless.part_tokens, n);
  EXPECT_NEAR(r.stateless.part_loss, nats / n, 1e-5);
  EXPECT_THROW(evaluate_lm_stream(*model, split, B, T, 0, 0, part.narrow(0, 0, 5)), Error);

  // The window evaluation with a stride scores each target once, from the window that first scores it: its part
  // loss is the cross-entropy of the part's targets under those windows, summed here from the definition.
  const int64_t W = 12, stride = 5, N = split.tokens.size(0);
  auto w = evaluate_lm(*model, split, 3, W, 0, stride, part);
  double wnats = 0;
  int64_t wn = 0;
  for (int64_t target = 1; target < N; ++target) {  // target j is predicted from the window [start, start + W)
    const int64_t start = target <= W ? 0 : std::min(((target - W) + stride - 1) / stride * stride, N - 1 - W);
    if (split.tokens[target].item<int64_t>() % 2 != 0) continue;
    auto logits = model->forward(split.tokens.narrow(0, start, W).to(torch::kLong).unsqueeze(0));
    wnats -= torch::log_softmax(logits[0][target - 1 - start], -1)[split.tokens[target].item<int64_t>()].item<double>();
    ++wn;
  }
  EXPECT_EQ(w.part_tokens, wn);
  EXPECT_NEAR(w.part_loss, wnats / wn, 1e-5);
  EXPECT_THROW(evaluate_lm(*model, split, 3, W, 0, stride, part.narrow(0, 0, 5)), Error);
}

// The memory task: deterministic, every question's value is the value its fact stated about `gap` bytes
// earlier, and recall_positions marks exactly those four digits after each question.
TEST(RecallCorpus, QuestionsRepeatTheirFactAGapLaterAndOnlyTheirValuesAreMarked) {
  const int64_t gap = 300;
  const std::string text = recall_text(20000, gap, 4);
  EXPECT_EQ(text, recall_text(20000, gap, 4));
  EXPECT_NE(text, recall_text(20000, gap, 5));
  auto tokens = torch::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, torch::kChar)
                    .to(torch::kInt).bitwise_and(255);
  auto mask = recall_positions(tokens);
  int64_t questions = 0;
  for (size_t q = text.find('?'); q != std::string::npos; q = text.find('?', q + 1)) {
    ++questions;
    const std::string key = text.substr(q + 1, 4), value = text.substr(q + 6, 4);
    const size_t fact = text.rfind("#" + key + "=", q);
    ASSERT_NE(fact, std::string::npos);
    EXPECT_EQ(text.substr(fact + 6, 4), value);
    EXPECT_GE(static_cast<int64_t>(q - fact), gap);
    EXPECT_LT(static_cast<int64_t>(q - fact), gap + gap / 8 + 32);
    for (size_t o = 6; o < 10; ++o) EXPECT_TRUE(mask[q + o].item<bool>());
  }
  EXPECT_GT(questions, 40);
  EXPECT_EQ(mask.sum().item<int64_t>(), 4 * questions) << "only the values after questions are marked";
  // As a corpus: a 90/5/5 split of independent draws, and it must be read byte by byte.
  Json cfg = {{"data", {{"corpus", "recall"}, {"recall_bytes", 20000}, {"recall_gap", gap}}}};
  auto rc = RunConfig::from_json(cfg);
  auto splits = read_corpus(rc.data);
  EXPECT_GE(splits.train.size(), 18000u);
  EXPECT_GE(splits.valid.size(), 1000u);
  EXPECT_NE(splits.valid.substr(0, 50), splits.test.substr(0, 50));
  cfg["data"]["tokenizer"] = "sentencepiece";
  cfg["data"]["spm_model"] = "x.model";
  EXPECT_THROW(RunConfig::from_json(cfg), Error);
  Json with_path = {{"data", {{"corpus", "recall"}, {"path", "somewhere"}}}};
  EXPECT_THROW(RunConfig::from_json(with_path), Error);
}

// Several gaps: each episode's filler is one of them plus its jitter (below gap / 8 + 1 and the last word), every gap
// occurs, recall_distances labels the four recalled digits with that gap (found here from the filler's length), and
// a one-gap list is the single-gap text.
TEST(RecallCorpus, GapsAreDrawnPerEpisodeAndLabelTheRecalledDigits) {
  const std::vector<int64_t> gaps = {300, 16, 64};
  const std::string text = recall_text(30000, gaps, 4);
  EXPECT_EQ(recall_text(5000, std::vector<int64_t>{300}, 4), recall_text(5000, 300, 4));
  auto tokens = torch::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, torch::kChar)
                    .to(torch::kLong).bitwise_and(255);
  auto labels = recall_distances(tokens, gaps);
  std::set<int64_t> seen;
  int64_t labelled = 0;
  for (size_t q = text.find('?'); q != std::string::npos; q = text.find('?', q + 1)) {
    const size_t fact = text.rfind('#', q);
    ASSERT_NE(fact, std::string::npos);
    const int64_t filler = static_cast<int64_t>(q - fact) - 11;
    int64_t gap = 0;  // the episode's gap: the one whose range [g, g + g / 8 + 6] holds the filler
    for (int64_t g : gaps)
      if (filler >= g && filler <= g + g / 8 + 6) gap = g;
    ASSERT_GT(gap, 0) << "filler " << filler;
    seen.insert(gap);
    for (size_t o = 6; o < 10; ++o) EXPECT_EQ(labels[static_cast<int64_t>(q + o)].item<int64_t>(), gap) << q;
    labelled += 4;
  }
  EXPECT_EQ(seen, (std::set<int64_t>{16, 64, 300}));
  EXPECT_EQ(labels.gt(0).sum().item<int64_t>(), labelled) << "only recalled digits are labelled";
  // A question whose fact was cut off by the split's start is not labelled.
  auto cut = labels.narrow(0, 3, labels.size(0) - 3);
  auto relabelled = recall_distances(tokens.narrow(0, 3, tokens.size(0) - 3), gaps);
  const size_t first_q = text.find('?');
  EXPECT_EQ(relabelled[static_cast<int64_t>(first_q - 3 + 6)].item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(relabelled.narrow(0, first_q + 20, 1000), cut.narrow(0, first_q + 20, 1000)));
  Json cfg = {{"data", {{"corpus", "recall"}, {"recall_bytes", 20000}, {"recall_gaps", {16, 64}}}}};
  EXPECT_EQ(recall_gaps(RunConfig::from_json(cfg).data), (std::vector<int64_t>{16, 64}));
}

std::string corpus(const std::string& dir) {
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(40000));
  return dir + "/corpus.txt";
}

Json stream_run(const std::string& file, const Json& mixer, int64_t steps) {
  return {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32}, {"dropout", 0.1},
                     {"mixer", mixer}}},
          {"data", {{"corpus", "text"}, {"path", file}}},
          {"train", {{"steps", steps}, {"batch_size", 2}, {"seq_len", 16}, {"accum", 2}, {"warmup", 2},
                     {"eval_every", 0}, {"eval_batches", 1}, {"log_every", 1}, {"checkpoint_every", 4},
                     {"stream", true}, {"stream_reset", 2}}}};
}

using longseq_test::logged_losses;
using longseq_test::quiet;

// Every streaming mixer trains statefully (a carried cache that kept its graph would fail the second
// backward), and a killed run resumes from its boundary checkpoint bit for bit.
TEST(StreamTrain, EveryStreamingMixerTrainsStatefullyAndResumesBitForBit) {
  auto dir = longseq_test::scratch_dir("stream_train");
  auto file = corpus(dir);
  int trained = 0;
  for (const auto& info : mixer_registry()) {
    if (!info.streams || !info.supports_causal) continue;
    SCOPED_TRACE(info.name);
    Json mixer = {{"name", info.name}};
    if (info.name == "longformer") mixer["window"] = Json::array({4});
    auto cfg = RunConfig::from_json(stream_run(file, mixer, 6));
    const std::string whole = dir + "/" + info.name + "_whole", killed = dir + "/" + info.name + "_killed";
    TrainResult r;
    try {
      r = train_run(&cfg, quiet(whole));
    } catch (const std::exception& e) {
      ADD_FAILURE() << info.name << " cannot be trained over a stream: " << std::string(e.what()).substr(0, 200);
      continue;
    }
    ASSERT_EQ(r.losses.size(), 6u) << info.name;
    for (double l : r.losses) EXPECT_TRUE(std::isfinite(l)) << info.name;
    auto opts = quiet(killed);
    opts.stop_after = 5;  // killed after step 5; its last checkpoint is step 4, a state boundary
    train_run(&cfg, opts);
    train_run(nullptr, quiet(killed, true));
    auto a = logged_losses(whole), b = logged_losses(killed);
    ASSERT_EQ(b.size(), 6u) << info.name;
    for (const auto& kv : a) EXPECT_EQ(kv.second, b.at(kv.first)) << info.name << " step " << kv.first;
    ++trained;
  }
  EXPECT_GE(trained, 5);
}

TEST(StreamTrain, BadStreamConfigsAreRefusedBeforeAnythingIsWritten) {
  auto dir = longseq_test::scratch_dir("stream_bad");
  auto file = corpus(dir);
  Json j = stream_run(file, {{"name", "full"}}, 6);
  j["train"]["checkpoint_every"] = 3;  // not a multiple of stream_reset = 2
  try {
    RunConfig::from_json(j);
    FAIL() << "checkpoint_every off the state boundaries accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stream_reset"), std::string::npos) << e.what();
  }
  // The defaults go together: stream_reset divides the schema's and the embedded config's checkpoint_every.
  Json d = parse_json_text(default_config_text(), "default");
  d["train"]["stream"] = true;
  EXPECT_NO_THROW(RunConfig::from_json(d));
  Json plain = {{"model", Json::object()}, {"data", {{"corpus", "text"}, {"path", file}}}, {"train", {{"stream", true}}}};
  EXPECT_NO_THROW(RunConfig::from_json(plain));
  auto cfg = RunConfig::from_json(stream_run(file, {{"name", "routing"}}, 6));  // routing does not stream
  try {
    train_run(&cfg, quiet(dir + "/routing"));
    FAIL() << "a mixer that cannot stream was trained over a stream";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.stream"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/routing"));
}

}  // namespace stream_test
