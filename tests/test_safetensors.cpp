#include <gtest/gtest.h>

#include <cstring>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/models.h"
#include "longseq/runtime.h"
#include "longseq/safetensors.h"

using namespace longseq;

namespace {

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
  EXPECT_NE(error_of(corrupt).find("not JSON"), std::string::npos);
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

TEST(Safetensors, MissingFileIsNamed) {
  try {
    load_safetensors("/nonexistent/model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.safetensors"), std::string::npos);
  }
}

}  // namespace
