#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/models.h"
#include "longseq/runtime.h"
#include "longseq/safetensors.h"
#include "longseq/train.h"

using namespace longseq;

namespace safetensors_test {

TensorFile sample_file() {
  TensorFile f;
  f.tensors = {{"a.weight", torch::randn({3, 4})},
               {"b", torch::arange(5, torch::kLong)},
               {"c", torch::randn({2, 2}, torch::kDouble)},
               {"flag", torch::tensor({true, false})},
               {"empty", torch::zeros({0, 3})}};
  f.metadata = {{"step", "7"}};
  return f;
}

TEST(Safetensors, RoundTripKeepsNamesDtypesShapesValues) {
  auto f = sample_file();
  auto g = safetensors_parse(safetensors_serialize(f), "mem");
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (const auto& kv : f.tensors) {
    const auto* t = g.find(kv.first);
    ASSERT_TRUE(t) << kv.first;
    EXPECT_EQ(t->scalar_type(), kv.second.scalar_type());
    EXPECT_TRUE(torch::equal(*t, kv.second)) << kv.first;
  }
  EXPECT_EQ(g.metadata.at("step"), "7");
}

TEST(Safetensors, LayoutFollowsTheFormat) {
  TensorFile f;
  f.tensors = {{"x", torch::tensor({1.5f, -2.0f})}};
  auto bytes = safetensors_serialize(f);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);  // little-endian
  ASSERT_EQ((8 + n) % 8, 0u);
  auto header = Json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["x"]["dtype"], "F32");
  EXPECT_EQ(header["x"]["shape"], Json::array({2}));
  EXPECT_EQ(header["x"]["data_offsets"], Json::array({0, 8}));
  ASSERT_EQ(bytes.size(), 8 + n + 8);
  float v[2];
  std::memcpy(v, bytes.data() + 8 + n, 8);
  EXPECT_EQ(v[0], 1.5f);
  EXPECT_EQ(v[1], -2.0f);
}

std::string error_of(const std::string& bytes) {
  try {
    safetensors_parse(bytes, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RejectsTruncatedFiles) {
  auto bytes = safetensors_serialize(sample_file());
  for (size_t cut : {size_t(3), size_t(20), bytes.size() - 1}) {
    auto msg = error_of(bytes.substr(0, cut));
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << "cut at " << cut << ": " << msg;
  }
}

TEST(Safetensors, RejectsCorruptHeaders) {
  auto bytes = safetensors_serialize(sample_file());
  auto corrupt = bytes;
  corrupt[9] = '#';  // inside the JSON header
  EXPECT_NE(error_of(corrupt).find("malformed JSON"), std::string::npos);
  auto huge = bytes;
  huge[7] = 0x7f;  // header length far beyond the file
  EXPECT_NE(error_of(huge).find("exceeds"), std::string::npos);
  auto extra = bytes + "xx";  // bytes no tensor claims
  EXPECT_NE(error_of(extra).find("no tensor claims"), std::string::npos);
}

TEST(Safetensors, RejectsOffsetsThatDisagreeWithShape) {
  Json h = {{"x", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 8}}}}};
  std::string hs = h.dump();
  while ((8 + hs.size()) % 8) hs += ' ';
  std::string bytes(8, '\0');
  uint64_t n = hs.size();
  std::memcpy(&bytes[0], &n, 8);
  bytes += hs + std::string(8, '\0');
  auto msg = error_of(bytes);
  EXPECT_NE(msg.find("tensor x"), std::string::npos) << msg;
}

// A file of the given header text and `data_bytes` zero bytes.
std::string file_with_header(std::string hs, size_t data_bytes) {
  while ((8 + hs.size()) % 8) hs += ' ';
  std::string bytes(8, '\0');
  uint64_t n = hs.size();
  std::memcpy(&bytes[0], &n, 8);
  return bytes + hs + std::string(data_bytes, '\0');
}

TEST(Safetensors, DeeplyNestedHeaderIsAnErrorNotACrash) {
  // The error message once printed the dtype with a recursive dump: a stack overflow.
  const size_t depth = 100000;
  auto msg = error_of(file_with_header(
      "{\"w\": {\"dtype\": " + std::string(depth, '[') + std::string(depth, ']') + ", \"shape\": [], \"data_offsets\": [0, 0]}}", 0));
  EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("deeper than"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 300u) << msg;
}

TEST(Safetensors, ShapeWhoseSizeOverflowsIsNamed) {
  // 2^62 floats are 2^64 bytes, which wraps to 0 and once matched offsets [0, 0];
  // LibTorch then failed with "Storage size calculation overflowed", naming no file.
  for (const char* shape : {"[4611686018427387904]", "[4294967296, 4294967296, 0]", "[18446744073709551615]"}) {
    auto msg = error_of(file_with_header(
        std::string("{\"w\": {\"dtype\": \"F32\", \"shape\": ") + shape + ", \"data_offsets\": [0, 0]}}", 0));
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << shape << ": " << msg;
    EXPECT_NE(msg.find("tensor w"), std::string::npos) << shape << ": " << msg;
  }
}

TEST(Safetensors, ErrorsQuoteLargeValuesBriefly) {
  Json h = {{"x", {{"dtype", Json::array()}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  for (int i = 0; i < 5000; ++i) h["x"]["dtype"].push_back(i);
  auto msg = error_of(file_with_header(h.dump(), 4));
  EXPECT_NE(msg.find("unsupported dtype"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 300u);
}

ModelConfig tiny(int64_t d_model) {
  Json m = {{"d_model", d_model}, {"n_heads", 2}, {"n_layers", 1}};
  return ModelConfig::from_json(m);
}

TEST(Safetensors, ModelRoundTripAndMismatchLeavesModelUnchanged) {
  auto dir = longseq_test::scratch_dir("safetensors_model");
  DecoderLM a(tiny(16)), b(tiny(16)), wide(tiny(32));
  save_safetensors(dir + "/m.safetensors", module_tensors(*a));
  load_module_tensors(*b, load_safetensors(dir + "/m.safetensors"), "m");
  for (const auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), b->named_parameters()[p.key()]));

  auto before = module_tensors(*wide);
  std::vector<torch::Tensor> copies;
  for (auto& kv : before.tensors) copies.push_back(kv.second.clone());
  try {
    load_module_tensors(*wide, load_safetensors(dir + "/m.safetensors"), "m.safetensors");
    FAIL() << "a checkpoint of another width loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match the model"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("shape"), std::string::npos) << e.what();
  }
  for (size_t i = 0; i < copies.size(); ++i) EXPECT_TRUE(torch::equal(copies[i], before.tensors[i].second));

  auto f = module_tensors(*a);
  f.tensors.push_back({"extra.weight", torch::zeros({1})});
  EXPECT_THROW(load_module_tensors(*b, f, "x"), Error);
  f.tensors.erase(f.tensors.begin());
  EXPECT_THROW(load_module_tensors(*b, f, "x"), Error);
}

TEST(Safetensors, DtypeMismatchSaysDtype) {
  // A checkpoint whose tensors have the model's shapes but another dtype: the message
  // once said "has shape [512], the model expects [512]" for the optimizer's tensors.
  auto dir = longseq_test::scratch_dir("safetensors_dtype");
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(20000));
  Json j = {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}}},
            {"data", {{"corpus", "text"}, {"path", dir + "/corpus.txt"}}},
            {"train", {{"steps", 2}, {"batch_size", 2}, {"seq_len", 16}, {"eval_batches", 1}, {"checkpoint_every", 1},
                       {"warmup", 1}}}};
  RunConfig cfg = RunConfig::from_json(j);
  TrainOptions opts;
  opts.out_dir = dir + "/run";
  opts.quiet = true;
  opts.stop_after = 1;
  train_run(&cfg, opts);
  const std::string state = dir + "/run/trainer_state.safetensors";
  // The optimizer's tensors first: the model's are checked before them.
  for (const std::string which : {"adamw.", "model."}) {
    auto f = load_safetensors(state);
    bool changed = false;
    for (auto& kv : f.tensors)
      if (!changed && kv.first.rfind(which, 0) == 0 && kv.second.scalar_type() == torch::kFloat) {
        kv.second = kv.second.to(torch::kDouble);
        changed = true;
      }
    ASSERT_TRUE(changed) << which;
    save_safetensors(dir + "/bad.safetensors", f);
    std::rename((dir + "/bad.safetensors").c_str(), state.c_str());
    TrainOptions resume = opts;
    resume.resume = true;
    resume.stop_after = 0;
    try {
      train_run(nullptr, resume);
      ADD_FAILURE() << which << ": a checkpoint of another dtype resumed";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("dtype Double"), std::string::npos) << which << ": " << msg;
      EXPECT_NE(msg.find("expects Float"), std::string::npos) << which << ": " << msg;
      EXPECT_NE(msg.find(state), std::string::npos) << which << ": " << msg;
    }
  }
}

TEST(Safetensors, MissingFileIsNamed) {
  try {
    load_safetensors("/nonexistent/model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.safetensors"), std::string::npos);
  }
}

}  // namespace safetensors_test
