// Long Range Arena Text, Image and Retrieval read from small files written here in each real format (aclImdb,
// cifar-10-batches-bin, new_aan_pairs tsv): token ids checked against lra.md sec. 1 and 5 computed in the test
// (bytes + 1, TensorFlow's grayscale in exact arithmetic, truncation), errors naming the path and the fault, the
// two-tower classifier against its definition, and a paired run through the shared trainer.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

using namespace longseq;

namespace lra_files_test {

namespace fs = std::filesystem;

std::vector<int16_t> ids_of(const TokenExamples& s, int64_t i, int side = 0) {
  return std::vector<int16_t>(s.tokens(i, side), s.tokens(i, side) + s.length(i, side));
}

// The definition: every byte's value plus one (pad 0), written out by hand from the bytes' values.
std::vector<int16_t> plus_one(const std::string& bytes) {
  std::vector<int16_t> out;
  for (unsigned char c : bytes) out.push_back(static_cast<int16_t>(int{c} + 1));
  return out;
}

// Runs f, which must throw an Error whose message holds every one of `parts`.
template <typename F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one with " << parts.front();
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

Json data_section(const std::string& corpus, const std::string& path) {
  return validate_options(Json{{"corpus", corpus}, {"path", path}}, data_schema(), "data");
}

// ---- Text (IMDB) ----

TEST(LraText, BytesPlusOneStrippedAlternatingClassesValidationIsTest) {
  const std::string dir = longseq_test::scratch_dir("lra_imdb") + "/aclImdb";
  for (const char* sub : {"train/pos", "train/neg", "test/pos", "test/neg", "train/unsup"})
    fs::create_directories(dir + "/" + sub);
  // "é" is 0xC3 0xA9 in UTF-8: ids 196, 170 (lra.md sec. 5); "<br />" stays; whitespace at the ends goes.
  const std::string caf = "Caf\xC3\xA9 <br />great\tfilm";
  longseq_test::write_text(dir + "/train/pos/0_9.txt", " \n" + caf + " \r\n");
  longseq_test::write_text(dir + "/train/pos/1_7.txt", "ok");
  longseq_test::write_text(dir + "/train/neg/0_2.txt", "bad\x0b\x0c");
  longseq_test::write_text(dir + "/train/neg/1_1.txt", "\xE2\x82\xAC 5");  // the euro sign: 3 bytes
  longseq_test::write_text(dir + "/train/neg/2_3.txt", "worst");
  longseq_test::write_text(dir + "/train/neg/notes.md", "not a review");  // not *.txt: ignored
  longseq_test::write_text(dir + "/train/unsup/0_0.txt", "unlabeled");    // LRA reads pos and neg only
  longseq_test::write_text(dir + "/test/pos/0_10.txt", "yes");
  longseq_test::write_text(dir + "/test/neg/0_4.txt", "no");

  const ClassificationSplits s = read_classification_corpus(data_section("imdb", dir));
  // neg, pos alternate in file-name order; the surplus class at the end.
  ASSERT_EQ(s.train.size(), 5);
  EXPECT_EQ(s.train.labels, (std::vector<int64_t>{0, 1, 0, 1, 0}));
  EXPECT_EQ(ids_of(s.train, 0), plus_one("bad"));
  EXPECT_EQ(ids_of(s.train, 1), plus_one(caf));
  EXPECT_EQ(ids_of(s.train, 1)[3], 196);
  EXPECT_EQ(ids_of(s.train, 1)[4], 170);
  EXPECT_EQ(ids_of(s.train, 2), (std::vector<int16_t>{0xE2 + 1, 0x82 + 1, 0xAC + 1, ' ' + 1, '5' + 1}));
  EXPECT_EQ(ids_of(s.train, 3), plus_one("ok"));
  EXPECT_EQ(ids_of(s.train, 4), plus_one("worst"));
  EXPECT_TRUE(s.valid_is_test);  // LRA validates on IMDB's test split
  EXPECT_EQ(s.valid.ids, s.test.ids);
  EXPECT_EQ(s.test.labels, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(ids_of(s.test, 1), plus_one("yes"));
  // data.valid_examples keeps a prefix of the validation split: no longer the test split itself.
  Json d = data_section("imdb", dir);
  d["valid_examples"] = 1;
  const ClassificationSplits kept = read_classification_corpus(d);
  EXPECT_FALSE(kept.valid_is_test);
  EXPECT_EQ(kept.valid.size(), 1);
  EXPECT_EQ(ids_of(kept.valid, 0), plus_one("no"));
  EXPECT_EQ(kept.test.size(), 2);

  // Truncation to train.seq_len and right-padding with 0 in a batch.
  const ClassificationBatch b = make_classification_batch(s.train, {1, 3}, 4);
  EXPECT_EQ(b.tokens.sizes(), (std::vector<int64_t>{2, 4}));
  const auto row0 = plus_one(caf.substr(0, 4)), row1 = plus_one("ok");
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(b.tokens[0][t].item<int64_t>(), row0[static_cast<size_t>(t)]);
    EXPECT_EQ(b.tokens[1][t].item<int64_t>(), t < 2 ? row1[static_cast<size_t>(t)] : 0);
    EXPECT_EQ(b.padding_mask[1][t].item<bool>(), t >= 2);
  }
  EXPECT_EQ(b.tokens_read, 6);
  EXPECT_FALSE(b.tokens2.defined());
  // byte_ids: every byte value 0..255 -> 1..256, and the cap.
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  const auto ids = byte_ids(all);
  for (int c = 0; c < 256; ++c) EXPECT_EQ(ids[static_cast<size_t>(c)], c + 1);
  EXPECT_EQ(byte_ids(all, 3), (std::vector<int16_t>{1, 2, 3}));
}

TEST(LraText, MissingOrEmptyFoldersNameThePath) {
  const std::string root = longseq_test::scratch_dir("lra_imdb_bad"), dir = root + "/aclImdb";
  for (const char* sub : {"train/pos", "train/neg", "test/pos"}) fs::create_directories(dir + "/" + sub);
  longseq_test::write_text(dir + "/train/pos/0_9.txt", "a");
  longseq_test::write_text(dir + "/train/neg/0_1.txt", "b");
  longseq_test::write_text(dir + "/test/pos/0_9.txt", "c");
  expect_error([&] { read_imdb(dir); }, {dir + "/test/neg", "does not exist"});
  fs::create_directories(dir + "/test/neg");
  expect_error([&] { read_imdb(dir); }, {dir + "/test/neg", "no .txt reviews"});
  expect_error([&] { read_imdb(root); }, {"set data.path to " + dir});
  expect_error([&] { read_imdb(root + "/nowhere"); }, {root + "/nowhere", "does not exist"});
  expect_error([&] { read_classification_corpus(data_section("imdb", "")); }, {"needs data.path", "aclImdb"});
}

// ---- Image (CIFAR-10) ----

// TensorFlow's rgb_to_grayscale (lra.md sec. 1) in exact real arithmetic, before the truncation.
double gray_exact(int r, int g, int b) { return (0.2989 * r + 0.5870 * g + 0.1140 * b) / 255.0 * 255.5; }

TEST(LraImage, GrayscaleIsTensorFlowsTruncation) {
  // lra.md sec. 5's values (TF truncates: pure green 149, where PIL's rounding gives 150).
  EXPECT_EQ(lra_grayscale(255, 255, 255), 255);
  EXPECT_EQ(lra_grayscale(255, 0, 0), 76);
  EXPECT_EQ(lra_grayscale(0, 255, 0), 149);
  EXPECT_EQ(lra_grayscale(0, 0, 255), 29);
  EXPECT_EQ(lra_grayscale(128, 128, 128), 128);
  EXPECT_EQ(lra_grayscale(10, 200, 30), 124);
  EXPECT_EQ((0 * 19595 + 255 * 38470 + 0 * 7471 + 32768) >> 16, 150);  // PIL "L" differs here
  // Grays map to themselves: the weights sum to 0.9999, so k x 0.9999 x 255.5 / 255 lies in [k, k + 1).
  for (int k = 0; k < 256; ++k) EXPECT_EQ(lra_grayscale(k, k, k), k) << k;
  // Every colour: the truncated exact value, except where that value lies within 1e-4 of an integer, where
  // float32's rounding decides (TF computes in float32) and either neighbour is accepted.
  int64_t wrong = 0, near_integer = 0;
  for (int r = 0; r < 256; ++r)
    for (int g = 0; g < 256; ++g)
      for (int b = 0; b < 256; ++b) {
        const double x = gray_exact(r, g, b);
        const int got = lra_grayscale(static_cast<uint8_t>(r), static_cast<uint8_t>(g), static_cast<uint8_t>(b));
        if (std::abs(x - std::round(x)) < 1e-4) {
          ++near_integer;
          wrong += got != static_cast<int>(std::floor(x - 1e-4)) && got != static_cast<int>(std::floor(x + 1e-4));
        } else {
          wrong += got != static_cast<int>(std::floor(x));
        }
      }
  EXPECT_EQ(wrong, 0);
  EXPECT_LT(near_integer, 4000);  // measured 3,352 of 16.7 million
}

// Six colours with the known gray values above; pixel (y, x) of image `k` gets colour (2y + x + k) mod 6, so a
// swapped plane order or a column-major flattening changes the tokens.
const int kColours[6][3] = {{255, 255, 255}, {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {128, 128, 128}, {10, 200, 30}};
const int16_t kGray[6] = {255, 76, 149, 29, 128, 124};

std::string cifar_record(int label, int k) {
  std::string rec(1 + 3072, '\0');
  rec[0] = static_cast<char>(label);
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x)
      for (int c = 0; c < 3; ++c)  // plane c (R, G, B), row-major within the plane
        rec[static_cast<size_t>(1 + c * 1024 + y * 32 + x)] = static_cast<char>(kColours[(2 * y + x + k) % 6][c]);
  return rec;
}

std::vector<int16_t> cifar_tokens(int k) {
  std::vector<int16_t> out;
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x) out.push_back(kGray[(2 * y + x + k) % 6]);
  return out;
}

TEST(LraImage, BinaryBatchesGrayRowMajorAndSplits) {
  const std::string dir = longseq_test::scratch_dir("lra_cifar") + "/cifar-10-batches-bin";
  fs::create_directories(dir);
  // 5 training batches of 4 images (labels 0..9 cycling), a test batch of 3.
  int n = 0;
  for (int f = 1; f <= 5; ++f) {
    std::string bytes;
    for (int i = 0; i < 4; ++i, ++n) bytes += cifar_record(n % 10, n);
    longseq_test::write_text(dir + "/data_batch_" + std::to_string(f) + ".bin", bytes);
  }
  longseq_test::write_text(dir + "/test_batch.bin", cifar_record(9, 100) + cifar_record(3, 101) + cifar_record(0, 102));
  const ClassificationSplits s = read_classification_corpus(data_section("cifar10", dir));
  ASSERT_EQ(s.train.size(), 18);  // 90% of 20 in file order; the last 10% validate
  ASSERT_EQ(s.valid.size(), 2);
  ASSERT_EQ(s.test.size(), 3);
  EXPECT_FALSE(s.valid_is_test);
  for (int i = 0; i < 18; ++i) {
    EXPECT_EQ(s.train.labels[static_cast<size_t>(i)], i % 10);
    EXPECT_EQ(ids_of(s.train, i), cifar_tokens(i)) << i;
  }
  EXPECT_EQ(ids_of(s.valid, 1), cifar_tokens(19));
  EXPECT_EQ(s.valid.labels, (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(ids_of(s.test, 1), cifar_tokens(101));
  EXPECT_EQ(s.test.labels, (std::vector<int64_t>{9, 3, 0}));
  EXPECT_EQ(s.train.length(0), 1024);

  // Faults: a short file, a label past 9, a missing batch, each naming the file.
  longseq_test::write_text(dir + "/data_batch_2.bin", cifar_record(1, 0) + cifar_record(2, 0).substr(0, 3000));
  expect_error([&] { read_cifar10(dir); }, {dir + "/data_batch_2.bin", "6073 bytes", "3073-byte records"});
  longseq_test::write_text(dir + "/data_batch_2.bin", cifar_record(1, 0) + cifar_record(10, 0));
  expect_error([&] { read_cifar10(dir); }, {dir + "/data_batch_2.bin", "record 1", "label 10"});
  longseq_test::write_text(dir + "/data_batch_2.bin", "");
  expect_error([&] { read_cifar10(dir); }, {dir + "/data_batch_2.bin", "0 bytes"});
  fs::remove(dir + "/data_batch_2.bin");
  expect_error([&] { read_cifar10(dir); }, {dir + "/data_batch_2.bin", "does not exist"});
}

// ---- Retrieval (AAN) ----

TEST(LraRetrieval, PairsTruncatedTo4000BytesSharedDocumentsOnce) {
  const std::string dir = longseq_test::scratch_dir("lra_aan") + "/tsv_data";
  fs::create_directories(dir);
  std::string long_text;
  for (int i = 0; i < 12000; ++i) long_text += static_cast<char>('a' + i % 26);
  const std::string uni = "na\xC3\xAFve r\xC3\xA9sum\xC3\xA9";
  // label id1 id2 text1 text2; CRLF on one line; the long text in two pairs.
  longseq_test::write_text(dir + "/new_aan_pairs.train.tsv",
                           "1.0\tP1\tP2\t" + long_text + "\t" + uni + "\n" +
                           "0\tP3\tP1\tshort\t" + long_text + "\r\n" +
                           "1\tP4\tP5\t\tempty first\n");
  longseq_test::write_text(dir + "/new_aan_pairs.eval.tsv", "0.0\tA\tB\tx\ty\n");
  longseq_test::write_text(dir + "/new_aan_pairs.test.tsv", "1\tA\tA\tsame\tsame\n");
  const ClassificationSplits s = read_classification_corpus(data_section("aan", dir));
  ASSERT_EQ(s.train.size(), 3);
  EXPECT_TRUE(s.train.paired());
  EXPECT_EQ(s.train.labels, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(ids_of(s.train, 0, 0), plus_one(long_text.substr(0, 4000)));  // first 10,000 bytes, then 4,000 ids
  EXPECT_EQ(ids_of(s.train, 0, 1), plus_one(uni));
  EXPECT_EQ(ids_of(s.train, 1, 0), plus_one("short"));
  EXPECT_EQ(ids_of(s.train, 1, 1), plus_one(long_text.substr(0, 4000)));
  EXPECT_EQ(s.train.document(1, 1), s.train.document(0, 0));  // stored once
  EXPECT_EQ(s.train.length(2, 0), 0);
  EXPECT_EQ(ids_of(s.train, 2, 1), plus_one("empty first"));
  EXPECT_EQ(s.train.ids.size(), 4000u + uni.size() + 5 + 0 + 11);
  EXPECT_EQ(s.test.document(0, 0), s.test.document(0, 1));

  // A batch carries both documents, each truncated and padded on its own.
  const ClassificationBatch b = make_classification_batch(s.train, {1, 2}, 6);
  ASSERT_TRUE(b.tokens2.defined());
  EXPECT_EQ(b.tokens.sizes(), (std::vector<int64_t>{2, 5}));  // "short" and "" (empty: all padding)
  EXPECT_EQ(b.tokens2.sizes(), (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(b.tokens[1].sum().item<int64_t>(), 0);
  EXPECT_TRUE(b.padding_mask[1].all().item<bool>());
  const auto first6 = plus_one(long_text.substr(0, 6));
  for (int t = 0; t < 6; ++t) EXPECT_EQ(b.tokens2[0][t].item<int64_t>(), first6[static_cast<size_t>(t)]);
  EXPECT_EQ(b.tokens_read, 5 + 0 + 6 + 6);
}

TEST(LraRetrieval, MalformedLinesAndMissingFilesNameThem) {
  const std::string dir = longseq_test::scratch_dir("lra_aan_bad");
  longseq_test::write_text(dir + "/cols.tsv", "1\ta\tb\tx\ty\n0\ta\tb\tx\n");
  expect_error([&] { read_aan_tsv(dir + "/cols.tsv"); }, {dir + "/cols.tsv", "line 2", "4 tab-separated columns"});
  longseq_test::write_text(dir + "/tab.tsv", "1\ta\tb\tx\ty\tz\n");
  expect_error([&] { read_aan_tsv(dir + "/tab.tsv"); }, {"tab.tsv", "line 1", "6 tab-separated columns"});
  longseq_test::write_text(dir + "/label.tsv", "1\ta\tb\tx\ty\n0.5\ta\tb\tx\ty\n");
  expect_error([&] { read_aan_tsv(dir + "/label.tsv"); }, {"label.tsv", "line 2", "\"0.5\"", "not 0 or 1"});
  longseq_test::write_text(dir + "/word.tsv", "yes\ta\tb\tx\ty\n");
  expect_error([&] { read_aan_tsv(dir + "/word.tsv"); }, {"word.tsv", "line 1", "\"yes\""});
  longseq_test::write_text(dir + "/empty.tsv", "");
  expect_error([&] { read_aan_tsv(dir + "/empty.tsv"); }, {"empty.tsv", "no pairs"});
  longseq_test::write_text(dir + "/new_aan_pairs.train.tsv", "1\ta\tb\tx\ty\n");
  longseq_test::write_text(dir + "/new_aan_pairs.test.tsv", "1\ta\tb\tx\ty\n");
  expect_error([&] { read_aan(dir); }, {dir + "/new_aan_pairs.eval.tsv", "does not exist"});
}

// ---- The two-tower classifier (model.dual_encoder) ----

Json dual_model(int64_t hidden) {
  return {{"type", "encoder_classifier"}, {"vocab_size", 257}, {"num_classes", 2}, {"d_model", 16}, {"n_heads", 2},
          {"n_layers", 2}, {"d_ff", 32}, {"pooling", "cls"}, {"classifier_hidden", hidden}, {"dual_encoder", true}};
}

TEST(DualEncoder, EachTowerIsTheDocumentEncodedAloneAndTheHeadIsLras) {
  torch::manual_seed(3);
  EncoderClassifier model(ModelConfig::from_json(dual_model(24)));
  model->eval();
  using longseq_test::param;
  EXPECT_EQ(param(*model, "hidden.weight").sizes(), (std::vector<int64_t>{24, 64}));  // [u, v, u*v, u-v]: 4 x 16
  EXPECT_EQ(param(*model, "hidden2.weight").sizes(), (std::vector<int64_t>{12, 24}));
  EXPECT_EQ(param(*model, "classifier.weight").sizes(), (std::vector<int64_t>{2, 12}));
  // Two pairs: documents of 3 and 6 tokens, the second pair's first document padded.
  auto a = torch::tensor({{5, 9, 200, 7}, {66, 67, 0, 0}}, torch::kLong);
  auto b = torch::tensor({{3, 4, 5, 6, 7, 8}, {256, 1, 2, 0, 0, 0}}, torch::kLong);
  auto logits = model->forward_pair(a, a.eq(0), b, b.eq(0));
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 2}));
  // The definition: u, v = each document encoded alone (no padding, a batch of one); Dense -> ReLU -> Dense ->
  // ReLU -> Dense on [u, v, u*v, u-v], written out from the parameters.
  auto dense = [&](const std::string& name, const torch::Tensor& x) {
    return torch::matmul(x, param(*model, name + ".weight").t()) + param(*model, name + ".bias");
  };
  const std::vector<std::pair<torch::Tensor, torch::Tensor>> alone = {
      {a.slice(0, 0, 1), b.slice(0, 0, 1)}, {a.slice(0, 1, 2).slice(1, 0, 2), b.slice(0, 1, 2).slice(1, 0, 3)}};
  for (int64_t r = 0; r < 2; ++r) {
    const auto& docs = alone[static_cast<size_t>(r)];
    auto u = model->encode(docs.first), v = model->encode(docs.second);
    auto features = torch::cat({u, v, u * v, u - v}, -1);
    auto want = dense("classifier", torch::relu(dense("hidden2", torch::relu(dense("hidden", features)))));
    EXPECT_LT((want - logits.slice(0, r, r + 1)).abs().max().item<double>(), 1e-5) << r;
  }
  // Identical documents give u = v exactly (lra.md sec. 5: shared weights, eval mode).
  auto same = torch::tensor({{5, 9, 200}}, torch::kLong);
  auto uu = model->encode(same);
  auto same_features = torch::cat({uu, uu, uu * uu, torch::zeros_like(uu)}, -1);
  auto want_same = dense("classifier", torch::relu(dense("hidden2", torch::relu(dense("hidden", same_features)))));
  EXPECT_LT((model->forward_pair(same, {}, same, {}) - want_same).abs().max().item<double>(), 1e-6);
  // Not symmetric: swapping the documents changes u - v's sign and the order of u, v.
  auto swapped = model->forward_pair(b, b.eq(0), a, a.eq(0));
  EXPECT_GT((swapped - logits).abs().max().item<double>(), 1e-4);
  // Gradients reach the shared encoder from both documents.
  model->train();
  model->zero_grad();
  model->forward_pair(a, a.eq(0), b, b.eq(0)).sum().backward();
  EXPECT_GT(param(*model, "trunk.embed.weight").grad().abs().sum().item<double>(), 0);
  // A single-document forward on the two-tower model, and a pair on a one-tower model, are errors.
  EXPECT_THROW(model->forward(a, a.eq(0)), Error);
  Json single = dual_model(24);
  single["dual_encoder"] = false;
  EncoderClassifier one(ModelConfig::from_json(single));
  EXPECT_THROW(one->forward_pair(a, a.eq(0), b, b.eq(0)), Error);
  // classifier_hidden = 0: one linear layer on [u, v, u*v, u-v].
  EncoderClassifier linear(ModelConfig::from_json(dual_model(0)));
  EXPECT_EQ(param(*linear, "classifier.weight").sizes(), (std::vector<int64_t>{2, 64}));
}

// ---- Configs and a run ----

Json tiny_aan(const std::string& dir, int64_t steps) {
  Json m = dual_model(16);
  m["dropout"] = 0.1;
  return {{"model", m}, {"data", {{"corpus", "aan"}, {"path", dir}}},
          {"train", {{"steps", steps}, {"batch_size", 4}, {"seq_len", 24}, {"lr", 3e-3}, {"warmup", 2},
                     {"eval_every", 3}, {"eval_batches", 1}, {"log_every", 1}, {"checkpoint_every", 4}}}};
}

TEST(LraFileConfig, BadCombinationsNameTheKey) {
  const std::string dir = "unused";
  RunConfig::from_json(tiny_aan(dir, 4));
  const std::vector<std::pair<Json, std::string>> cases = {
      {{{"model", {{"dual_encoder", false}}}}, "set model.dual_encoder to true"},
      {{{"model", {{"vocab_size", 256}}}}, "set model.vocab_size to 257"},
      {{{"model", {{"num_classes", 10}}}}, "set model.num_classes to 2"},
      {{{"data", {{"corpus", "imdb"}}}}, "set model.dual_encoder to false"},
      {{{"data", {{"corpus", "cifar10"}}}}, "set model.vocab_size to 256"},
      {{{"data", {{"corpus", "listops"}, {"path", ""}}}, {"model", {{"vocab_size", 17}, {"num_classes", 10}}},
        {"train", {{"seq_len", 2000}}}}, "set model.dual_encoder to false"},
      {{{"data", {{"tokenizer", "sentencepiece"}, {"spm_model", "x.model"}}}}, "data.tokenizer is not read"},
      {{{"model", {{"classifier_hidden", 1}}}}, "model.classifier_hidden = 1"},
      {{{"model", {{"type", "decoder_lm"}}}}, "model.dual_encoder is an option of model.type = encoder_classifier"},
      {{{"model", {{"positions", "learned"}, {"max_len", 24}}}}, "model.pooling = cls prepends one position"},
  };
  for (const auto& c : cases) {
    Json j = tiny_aan(dir, 4);
    j.merge_patch(c.first);
    longseq_test::expect_config_error(j, c.second);
  }
}

TEST(LraFileRun, PairedRunResumesBitForBit) {
  const std::string root = longseq_test::scratch_dir("lra_aan_run"), dir = root + "/tsv_data";
  fs::create_directories(dir);
  // Label 1 when both documents name the same topic word; 40 training pairs, 8 validation, 8 test.
  const char* topics[] = {"parsing", "translation", "speech", "retrieval"};
  auto lines = [&](int n, int salt) {
    std::string out;
    for (int i = 0; i < n; ++i) {
      const int t1 = (i * 7 + salt) % 4, t2 = i % 2 ? t1 : (t1 + 1) % 4;
      out += std::to_string(i % 2) + "\tA" + std::to_string(i) + "\tB" + std::to_string(i) + "\tpaper on " +
             topics[t1] + " number " + std::to_string(i) + "\twe study " + topics[t2] + "\n";
    }
    return out;
  };
  longseq_test::write_text(dir + "/new_aan_pairs.train.tsv", lines(40, 0));
  longseq_test::write_text(dir + "/new_aan_pairs.eval.tsv", lines(8, 1));
  longseq_test::write_text(dir + "/new_aan_pairs.test.tsv", lines(8, 2));
  Json j = tiny_aan(dir, 14);
  j["data"]["valid_examples"] = 5;  // the first 5 of the 8 eval pairs
  auto cfg = RunConfig::from_json(j);
  // 14 steps x 4 pairs pass the 40-pair epoch; the killed run's last checkpoint is step 8.
  auto whole = longseq_test::expect_exact_resume(cfg, root, 10);
  EXPECT_EQ(whole.valid_fields["valid_examples"], 5);
  const std::string metrics = read_file(root + "/whole/metrics.jsonl");
  EXPECT_NE(metrics.find("\"valid_accuracy\""), std::string::npos);
}

}  // namespace lra_files_test
