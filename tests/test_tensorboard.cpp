// TensorBoard event files (src/metrics/tensorboard.cpp) read back by a reader written here from the formats'
// definitions: TFRecord framing (uint64 length, masked CRC32C of it, data, masked CRC32C of the data), CRC32C by
// the bitwise definition, and the Event / Summary protocol buffers decoded field by field.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "helpers.h"
#include "longseq/config.h"
#include "longseq/tensorboard.h"
#include "longseq/train.h"

using namespace longseq;

namespace tensorboard_test {

// CRC-32C bit by bit (reflected, polynomial 0x82F63B78, init and final xor 0xFFFFFFFF).
uint32_t crc_bitwise(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}
uint32_t mask(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::map<std::string, float> scalars;
  bool session_start = false;
};

uint64_t read_varint(const std::string& s, size_t& i) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    const auto b = static_cast<unsigned char>(s.at(i++));
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
}

// Calls f(field, wire, payload, varint) for each field of message `s`.
template <typename F>
void fields(const std::string& s, F f) {
  size_t i = 0;
  while (i < s.size()) {
    const uint64_t k = read_varint(s, i);
    const int field = static_cast<int>(k >> 3), wire = static_cast<int>(k & 7);
    std::string payload;
    uint64_t v = 0;
    if (wire == 0) v = read_varint(s, i);
    else if (wire == 1) payload = s.substr(i, 8), i += 8;
    else if (wire == 5) payload = s.substr(i, 4), i += 4;
    else if (wire == 2) {
      const uint64_t n = read_varint(s, i);
      payload = s.substr(i, n), i += n;
    } else {
      ADD_FAILURE() << "wire type " << wire;
      return;
    }
    f(field, wire, payload, v);
  }
}

std::vector<Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string all = ss.str();
  std::vector<Event> out;
  size_t at = 0;
  while (at < all.size()) {
    uint64_t n;
    uint32_t len_crc, data_crc;
    std::memcpy(&n, all.data() + at, 8);
    std::memcpy(&len_crc, all.data() + at + 8, 4);
    EXPECT_EQ(len_crc, mask(crc_bitwise(all.substr(at, 8)))) << "length CRC at " << at;
    const std::string data = all.substr(at + 12, n);
    std::memcpy(&data_crc, all.data() + at + 12 + n, 4);
    EXPECT_EQ(data_crc, mask(crc_bitwise(data))) << "data CRC at " << at;
    at += 12 + n + 4;
    Event e;
    fields(data, [&](int field, int, const std::string& p, uint64_t v) {
      if (field == 1) std::memcpy(&e.wall_time, p.data(), 8);
      if (field == 2) e.step = static_cast<int64_t>(v);
      if (field == 3) e.file_version = p;
      if (field == 5)
        fields(p, [&](int, int, const std::string& value, uint64_t) {  // Summary.value
          std::string tag;
          float x = 0;
          fields(value, [&](int f, int, const std::string& q, uint64_t) {
            if (f == 1) tag = q;
            if (f == 2) std::memcpy(&x, q.data(), 4);
          });
          e.scalars[tag] = x;
        });
      if (field == 6)
        fields(p, [&](int f, int, const std::string&, uint64_t s) { e.session_start = f == 1 && s == 1; });
    });
    out.push_back(e);
  }
  return out;
}

TEST(TensorBoard, Crc32cMatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // RFC 3720's check value for CRC-32C
  const std::string s = "longseq \x01\xff events";
  EXPECT_EQ(crc32c(s.data(), s.size()), crc_bitwise(s));
  EXPECT_EQ(masked_crc32c(s.data(), s.size()), mask(crc_bitwise(s)));
}

TEST(TensorBoard, EventsReadBackWithTheirStepsTagsAndValues) {
  const std::string dir = longseq_test::scratch_dir("tensorboard_events");
  std::string path;
  {
    EventWriter w(dir);
    path = w.path();
    EXPECT_NE(path.find("events.out.tfevents."), std::string::npos);
    w.scalars(Json{{"step", 7}, {"loss", 2.5}, {"lr", 1e-3}, {"note", "text is skipped"}}, "train/");
    w.scalars(Json{{"step", 9}, {"valid_bpb", 1.25}, {"valid_eval", "prefix"}}, "valid/");
  }
  auto events = read_events(path);
  ASSERT_EQ(events.size(), 4u);  // the version, two train scalars, one valid scalar
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_GT(events[0].wall_time, 1.7e9);
  EXPECT_EQ(events[1].step, 7);
  std::map<std::string, float> all;
  for (const auto& e : events) all.insert(e.scalars.begin(), e.scalars.end());
  EXPECT_FLOAT_EQ(all.at("train/loss"), 2.5f);
  EXPECT_FLOAT_EQ(all.at("train/lr"), 1e-3f);
  EXPECT_FLOAT_EQ(all.at("valid/bpb"), 1.25f);
  EXPECT_EQ(all.count("train/note"), 0u);
  EXPECT_EQ(events[3].step, 9);
  // A resumed writer: a new file that starts with the version and a SessionLog START at the resumed step.
  EventWriter again(dir, 40);
  EXPECT_NE(again.path(), path);
  auto resumed = read_events(again.path());
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_TRUE(resumed[1].session_start);
  EXPECT_EQ(resumed[1].step, 40);
}

// A run with train.tensorboard writes every logged number of metrics.jsonl as a scalar at its step.
TEST(TensorBoard, ATrainingRunWritesItsMetricsAsScalars) {
  const std::string dir = longseq_test::scratch_dir("tensorboard_run");
  const std::string corpus = dir + "/c.txt";
  {
    std::ofstream f(corpus);
    for (int i = 0; i < 400; ++i) f << "line " << i << " of a small corpus\n";
  }
  Json raw = {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"block", "standard"}, {"mixer", "full"}}},
              {"data", {{"corpus", "text"}, {"path", corpus}}},
              {"train", {{"steps", 4}, {"batch_size", 2}, {"seq_len", 16}, {"warmup", 1}, {"log_every", 2},
                         {"eval_every", 2}, {"eval_batches", 1}, {"tensorboard", true}}}};
  auto cfg = RunConfig::from_json(raw);
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.quiet = true;
  train_run(&cfg, o);
  std::string path;
  for (const auto& f : std::filesystem::directory_iterator(o.out_dir))
    if (f.path().filename().string().rfind("events.out.tfevents.", 0) == 0) path = f.path().string();
  ASSERT_FALSE(path.empty());
  std::map<std::pair<std::string, int64_t>, float> got;
  for (const auto& e : read_events(path))
    for (const auto& [tag, x] : e.scalars) got[{tag, e.step}] = x;
  std::ifstream metrics(o.out_dir + "/metrics.jsonl");
  std::string line;
  int checked = 0;
  while (std::getline(metrics, line)) {
    const Json j = Json::parse(line);
    const bool valid = j.contains("valid_loss");
    const std::string key = valid ? "valid_loss" : "loss", tag = valid ? "valid/loss" : "train/loss";
    ASSERT_TRUE(got.count({tag, j["step"].get<int64_t>()})) << line;
    EXPECT_FLOAT_EQ(got.at({tag, j["step"].get<int64_t>()}), j[key].get<float>()) << line;
    ++checked;
  }
  EXPECT_GE(checked, 4);  // steps 1, 2, 4 and the validations at 2 and 4
}

}  // namespace tensorboard_test
