#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/config.h"

using namespace longseq;

namespace config_test {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Json embedded() { return parse_json_text(default_config_text(), "default"); }
// The embedded config with standard blocks, so that model.mixer applies.
Json base() {
  Json j = embedded();
  j["model"]["block"] = "standard";
  return j;
}

TEST(Config, DefaultIsValidAndFillsDefaults) {
  auto c = RunConfig::from_json(embedded());
  EXPECT_EQ(c.model["d_model"], 128);
  EXPECT_EQ(c.train["beta2"], 0.95);  // not in the text: filled from the schema
  EXPECT_GE(c.train["seq_len"].get<int64_t>(), 2048);
  auto m = ModelConfig::from_json(c.model);
  ASSERT_EQ(m.blocks.size(), 4u);
  EXPECT_EQ(m.blocks[0].name, "gss");  // the demo's stack (README: chosen by measurement)
  EXPECT_EQ(ModelConfig::from_json(RunConfig::from_json(base()).model).layers[0].name, "full");
  // A mixer named for gss blocks would be ignored: refused, with the way out.
  Json j = embedded();
  j["model"]["mixer"] = "performer";
  try {
    RunConfig::from_json(j);
    FAIL() << "model.mixer accepted where no layer reads it";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.block to standard"), std::string::npos) << e.what();
  }
}

TEST(Config, UnknownKeyIsNamedWithValidKeys) {
  Json j = base();
  j["train"]["stepz"] = 5;
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("train.stepz"), std::string::npos) << msg;
  EXPECT_NE(msg.find("steps"), std::string::npos) << msg;
}

TEST(Config, UnknownSectionIsAnError) {
  Json j = base();
  j["optim"] = Json::object();
  EXPECT_NE(error_of([&] { RunConfig::from_json(j); }).find("optim"), std::string::npos);
}

TEST(Config, WrongTypeNamesKeyAndType) {
  Json j = base();
  j["model"]["d_model"] = "wide";
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("model.d_model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int"), std::string::npos) << msg;
}

TEST(Config, OutOfRangeNamesKeyAndRange) {
  Json j = base();
  j["train"]["lr"] = -1.0;
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("train.lr"), std::string::npos) << msg;
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
}

TEST(Config, BadChoiceListsChoices) {
  Json j = base();
  j["model"]["positions"] = "rotary";
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("model.positions"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sinusoidal"), std::string::npos) << msg;
}

TEST(Config, UnknownMixerListsRegisteredOnes) {
  Json j = base();
  j["model"]["mixer"] = "flashy";
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("flashy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("full"), std::string::npos) << msg;
}

TEST(Config, UnknownMixerOptionIsNamed) {
  Json j = base();
  j["model"]["layers"] = Json::array({"full", Json{{"name", "full"}, {"window", 3}}});
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("model.layers[1].window"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dropout"), std::string::npos) << msg;
}

TEST(Config, PerLayerMixersOverrideLayerCount) {
  Json j = base();
  j["model"]["layers"] = Json::array({"full", Json{{"name", "full"}, {"dropout", 0.1}}});
  auto m = ModelConfig::from_json(RunConfig::from_json(j).model);
  ASSERT_EQ(m.n_layers, 2);
  EXPECT_DOUBLE_EQ(m.layers[1].options["dropout"].get<double>(), 0.1);
}

TEST(Config, HeadsMustDivideWidth) {
  Json j = base();
  j["model"]["n_heads"] = 3;
  EXPECT_NE(error_of([&] { RunConfig::from_json(j); }).find("n_heads"), std::string::npos);
}

TEST(Config, MalformedJsonGivesLineAndColumn) {
  auto msg = error_of([] { parse_json_text("{\n  \"model\": {\n    \"d_model\": 12,,\n  }\n}", "c.json"); });
  EXPECT_NE(msg.find("c.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("column"), std::string::npos) << msg;
}

TEST(Config, NumberBeyondADoubleIsNamed) {
  // Found by fuzz_safetensors: nlohmann throws out_of_range, not parse_error, for 1e400.
  auto msg = error_of([] { parse_json_text("{\"train\": {\"lr\": 1e400}}", "big.json"); });
  EXPECT_NE(msg.find("big.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1e400"), std::string::npos) << msg;
}

TEST(Config, MissingFileIsNamed) {
  auto msg = error_of([] { load_run_config("/nonexistent/dir/c.json"); });
  EXPECT_NE(msg.find("/nonexistent/dir/c.json"), std::string::npos) << msg;
}

TEST(Config, SentencePieceNeedsModelPath) {
  Json j = base();
  j["data"]["tokenizer"] = "sentencepiece";
  EXPECT_NE(error_of([&] { RunConfig::from_json(j); }).find("data.spm_model"), std::string::npos);
}

TEST(Config, DeepNestingIsAnErrorNotACrash) {
  // A value nested 200,000 deep once parsed, then overflowed the stack when copied.
  const size_t depth = 200000;
  const std::string text =
      "{\"model\": {\"mixer\": " + std::string(depth, '[') + std::string(depth, ']') + "}}";
  auto msg = error_of([&] { RunConfig::from_json(parse_json_text(text, "deep.json")); });
  EXPECT_NE(msg.find("deep.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("deeper than"), std::string::npos) << msg;
  EXPECT_NE(msg.find("column"), std::string::npos) << msg;
  // Brackets inside strings are text, not nesting.
  const std::string quoted = "{\"data\": {\"path\": \"" + std::string(depth, '[') + "\"}}";
  EXPECT_NO_THROW(parse_json_text(quoted, "quoted.json"));
  // As deep as allowed parses.
  const std::string ok = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_NO_THROW(parse_json_text(ok, "ok.json"));
  EXPECT_NE(error_of([&] { parse_json_text("[" + ok + "]", "x.json"); }).find("deeper than"), std::string::npos);
}

TEST(Config, ErrorsQuoteLargeValuesBriefly) {
  Json j = base();
  j["model"]["d_model"] = Json::array();
  for (int i = 0; i < 10000; ++i) j["model"]["d_model"].push_back(i);
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("model.d_model"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 200u) << msg;
}

TEST(Config, ByteTokenizerNeedsVocab256) {
  // A larger vocabulary once trained to the end, then failed when the sample drew an id above 255.
  for (int64_t v : {300, 257, 100}) {
    Json j = base();
    j["model"]["vocab_size"] = v;
    auto msg = error_of([&] { RunConfig::from_json(j); });
    EXPECT_NE(msg.find("model.vocab_size = " + std::to_string(v)), std::string::npos) << msg;
    EXPECT_NE(msg.find("byte"), std::string::npos) << msg;
  }
  Json sp = base();
  sp["model"]["vocab_size"] = 300;
  sp["data"]["tokenizer"] = "sentencepiece";
  sp["data"]["spm_model"] = "x.model";
  EXPECT_NO_THROW(RunConfig::from_json(sp));
}

TEST(Config, PerLayerListMustFitTheLayers) {
  // A list longer than the model's layers was once cut silently.
  Json j = base();
  j["model"]["n_layers"] = 2;
  j["model"]["mixer"] = Json{{"name", "longformer"}, {"window", {2, 4, 8}}};
  auto msg = error_of([&] { RunConfig::from_json(j); });
  EXPECT_NE(msg.find("model.mixer.window"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3 entries"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2 layers"), std::string::npos) << msg;
  j["model"]["mixer"] = Json{{"name", "longformer"}, {"dilation", {1, 2, 2}}};
  EXPECT_NE(error_of([&] { RunConfig::from_json(j); }).find("model.mixer.dilation"), std::string::npos);
  j["model"]["mixer"] = Json{{"name", "longformer"}, {"window", Json::array()}};
  EXPECT_NE(error_of([&] { RunConfig::from_json(j); }).find("model.mixer.window has 0 entries"), std::string::npos);
  // One value, or one per layer, is accepted; a list that is not per layer keeps any length.
  j["model"]["mixer"] = Json{{"name", "longformer"}, {"window", {2, 4}}, {"dilation", 3}, {"global_positions", {0, 1, 2}}};
  EXPECT_NO_THROW(RunConfig::from_json(j));
  j["model"]["layers"] = Json::array({"full", Json{{"name", "longformer"}, {"window", {2, 4, 8}}}});
  EXPECT_NE(error_of([&] { RunConfig::from_json(j); }).find("model.layers[1].window"), std::string::npos);
}

// Test-time mixer options (Transformer-XL's longer memory): set where the mixer has the option, validated by its
// schema, and an option no layer has is named with the layers' mixers.
TEST(Config, MixerOverridesReachTheLayersThatHaveTheOption) {
  Json model = {{"d_model", 16}, {"n_heads", 2}, {"layers", Json::array({{{"name", "xl"}, {"mem_len", 8}}, "full"})}};
  auto cfg = ModelConfig::from_json(model);
  override_mixer_options(cfg, {{"mem_len", 64}, {"same_length", true}}, "--mixer-option");
  EXPECT_EQ(cfg.layers[0].options["mem_len"].get<int64_t>(), 64);
  EXPECT_TRUE(cfg.layers[0].options["same_length"].get<bool>());
  EXPECT_FALSE(cfg.layers[1].options.contains("mem_len"));
  auto e = error_of([&] { override_mixer_options(cfg, {{"window", 4}}, "--mixer-option"); });
  EXPECT_NE(e.find("window"), std::string::npos) << e;
  EXPECT_NE(e.find("xl, full"), std::string::npos) << e;
  EXPECT_THROW(override_mixer_options(cfg, {{"mem_len", -3}}, "--mixer-option"), Error);
  EXPECT_EQ(cfg.layers[0].options["mem_len"].get<int64_t>(), 64) << "a refused override changes nothing";
  EXPECT_EQ(parse_option_assignment("mem_len=3800", "--mixer-option"), (Json{{"mem_len", 3800}}));
  EXPECT_EQ(parse_option_assignment("kernel=fused", "--mixer-option"), (Json{{"kernel", "fused"}}));
  EXPECT_THROW(parse_option_assignment("mem_len", "--mixer-option"), Error);
  EXPECT_THROW(parse_option_assignment("=4", "--mixer-option"), Error);
}

}  // namespace config_test
